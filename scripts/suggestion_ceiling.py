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
of relabelled suspects would leave (with that number, as a fraction).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from poi_cli.data.store import PreparedDataset, SplitData
from poi_cli.inference.audit import objective_inference, suspicion_score
from poi_cli.inference.clean import choose_fraction, noise_after_selection
from poi_cli.model.checkpoint import load_model, resolve_checkpoint
from poi_cli.model.predictions import predict_split


def objective_and_w(run: str, faces: np.ndarray, data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """One model's p* at T = 1 and w on `data`, on the CPU, in `data`'s order."""
    checkpoint_path = resolve_checkpoint(run)
    model, checkpoint = load_model(checkpoint_path, torch.device("cpu"))
    predictions = predict_split(model, faces, data.store_rows, data.labels, int(checkpoint["model_config"]["input_size"]),
                                256, torch.device("cpu"))
    return objective_inference(predictions, checkpoint_path), predictions.consistency


def scorer_outputs(scorer: str, dataset: PreparedDataset, data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """p* and w of a SCORER (see the module doc), averaged over its runs (and mirror images)."""
    runs, _, option = scorer.partition("@")
    views = [dataset.faces, dataset.faces[:, :, ::-1].copy()] if option == "flip" else [dataset.faces]
    outputs = [objective_and_w(run, faces, data) for run in runs.split("+") for faces in views]
    return np.mean([o for o, _ in outputs], axis=0), np.mean([w for _, w in outputs], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared_dir")
    parser.add_argument("noisy_labels")
    parser.add_argument("scorers", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = PreparedDataset(args.prepared_dir)
    train = dataset.split("train", args.noisy_labels)
    valid = dataset.split(dataset.validation_split())
    given, clean = train.labels, train.clean_labels
    flipped = given != clean
    print(f"{len(given)} images, {flipped.sum()} flipped ({flipped.mean():.2%}); valid: {len(valid.labels)} images")
    print("scorer | valid accuracy | suggestion = clean label on flipped | rho^ (--auto) | noise after --auto "
          "| least noise reachable (at fraction)")
    for scorer in args.scorers:
        train_objective, train_w = scorer_outputs(scorer, dataset, train)
        valid_objective, valid_w = scorer_outputs(scorer, dataset, valid)
        suggested = train_objective.argmax(1)
        curve = noise_after_selection(suspicion_score(train_objective, train_w, given), suggested, given, clean)
        auto = choose_fraction(given, suggested, valid_objective, valid_w, valid.labels)
        chosen = int(round(auto["fraction"] * len(given)))
        print(f"{scorer} | {auto['suggestion_accuracy_valid']:.2%} | {(suggested[flipped] == clean[flipped]).mean():.2%} "
              f"| {auto['estimated_noise_rate']:.2%} | {curve[chosen]:.2%} "
              f"| {curve.min():.2%} ({curve.argmin() / len(given):.2%})", flush=True)


if __name__ == "__main__":
    main()
