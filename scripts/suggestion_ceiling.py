"""How far relabelling to a model's suggestion can clean a noisy label file: an analysis for
issue 13 (docs/results/ferplus.md, "Seventh session"). It uses the known clean labels, so it
measures, it does not choose.

    python scripts/suggestion_ceiling.py PREPARED_DIR NOISY.csv SCORER [SCORER ...] [--threads N]

A SCORER is a POI run folder (its best.pt), several joined by '+' (their objective inferences
averaged, an ensemble), with '@flip' appended to average each over the image and its mirror.
For each it scores the images of NOISY.csv and the validation split as `poi audit` and
`poi clean --auto` do (p* at T = 1, suspicion w (1 - p*_y)) and prints: the suggestion's
accuracy on valid, how many flipped images it suggests the clean label for, the noise rate
--auto estimates, the noise left after --auto's relabelling, and the least noise any number
of relabelled suspects would leave (with that number, as a fraction); then why --auto's
estimate is what it is: the suggestion's accuracy on the training images' clean labels
(--auto assumes it equals valid's) and how often it equals the given label on the clean
and on the flipped images (a model that fitted its training images agrees more on both).
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch

from poi_cli.core.errors import PoiError
from poi_cli.data.store import PreparedDataset, SplitData
from poi_cli.study.audit import suspicion_score
from poi_cli.study.clean import choose_fraction, noise_after_selection, objective_of


def mirrored(dataset: PreparedDataset) -> PreparedDataset:
    """The same prepared folder with every face mirrored (read into memory once)."""
    flipped = copy.copy(dataset)
    flipped.faces = np.ascontiguousarray(dataset.faces[:, :, ::-1])
    return flipped


def scorer_outputs(scorer: str, views: list[PreparedDataset], data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """p* and w of a SCORER (see the module doc), averaged over its runs and, with '@flip',
    over `views` (the faces and their mirror images)."""
    runs, _, option = scorer.partition("@")
    used = views if option == "flip" else views[:1]
    outputs = [objective_of(run, view, data, "cpu") for run in runs.split("+") for view in used]
    return np.mean([o for o, _ in outputs], axis=0), np.mean([w for _, w in outputs], axis=0)


def scorer_row(scorer: str, views: list[PreparedDataset], train: SplitData, valid: SplitData) -> str:
    """One line of the table (see the module doc)."""
    given, clean = train.labels, train.clean_labels
    flipped = given != clean
    train_objective, train_w = scorer_outputs(scorer, views, train)
    valid_objective, valid_w = scorer_outputs(scorer, views, valid)
    suggested = train_objective.argmax(1)
    curve = noise_after_selection(suspicion_score(train_objective, train_w, given), suggested, given, clean)
    auto = choose_fraction(given, suggested, valid_objective, valid_w, valid.labels)
    chosen = int(round(auto["fraction"] * len(given)))
    agrees = suggested == given
    return (f"{scorer} | {auto['suggestion_accuracy_valid']:.2%} | {(suggested[flipped] == clean[flipped]).mean():.2%} "
            f"| {auto['estimated_noise_rate']:.2%} | {curve[chosen]:.2%} "
            f"| {curve.min():.2%} ({curve.argmin() / len(given):.2%}) "
            f"| {(suggested == clean).mean():.2%} | {agrees[~flipped].mean():.2%} / {agrees[flipped].mean():.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared_dir")
    parser.add_argument("noisy_labels")
    parser.add_argument("scorers", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        dataset = PreparedDataset(args.prepared_dir)
        train = dataset.split("train", args.noisy_labels)
        valid = dataset.split(dataset.validation_split())
    except (PoiError, OSError) as error:
        sys.exit(f"suggestion_ceiling: {error}")
    flipped = train.labels != train.clean_labels
    print(f"{len(flipped)} images, {flipped.sum()} flipped ({flipped.mean():.2%}); valid: {len(valid.labels)} images")
    print("scorer | valid accuracy | suggestion = clean label on flipped | rho^ (--auto) | noise after --auto "
          "| least noise reachable (at fraction) | train accuracy (clean labels) | = given label: clean / flipped")
    views = [dataset] + ([mirrored(dataset)] if any(s.endswith("@flip") for s in args.scorers) else [])
    failed = 0
    for scorer in args.scorers:  # a bad scorer is reported and skipped
        try:
            print(scorer_row(scorer, views, train, valid), flush=True)
        except (PoiError, OSError) as error:
            print(f"{scorer}: skipped: {error}", file=sys.stderr)
            failed += 1
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
