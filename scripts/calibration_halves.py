"""ECE of `confidence` over several seeded halves of a labelled split: how much of a model's
calibration figure is the half `poi evaluate` happens to measure on (issue 25's "ECE at most
2 % on the half of FERPlus valid not used to fit it"), beside the ECE that a perfectly
calibrated score would measure on as many images (model.calibration.ece_sampling_floor).

    python scripts/calibration_halves.py PREPARED_DIR MODEL [MODEL ...] [--split val] [--seeds 10] [--threads 1]

For each model: its recipe's log p on the split (float32, as `poi evaluate --amp off`, classes
matched by name as there), then
for seeds 0..N-1 the calibration study of `poi evaluate` (calibration_study: T_cal fitted on
one seeded half, ECE measured on the other; seed 0 is `poi evaluate`'s own half). Prints
aggregate figures only.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from poi_cli.model.calibration import calibration_study
from poi_cli.study.evaluate import predict_mapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared")
    parser.add_argument("models", nargs="+", help="checkpoints (.pt) or run folders (their best.pt)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model in args.models:
        mapped = predict_mapped(model, args.prepared, args.split, device="cpu", amp="off")
        log_probs, labels, recipe = mapped.log_probs, mapped.targets, mapped.recipe
        studies = [calibration_study(log_probs, labels, seed=seed)["scores"]["confidence"] for seed in range(args.seeds)]
        ece = np.array([s["ece"] for s in studies]) * 100
        floor = np.array([s["ece_floor"] for s in studies]) * 100
        print(f"{model} ({recipe.describe()}): accuracy {100 * (log_probs.argmax(1) == labels).mean():.2f} % on "
              f"{len(labels)} faces; ECE of confidence over seeds 0-{args.seeds - 1}: mean {ece.mean():.2f} % "
              f"(min {ece.min():.2f}, max {ece.max():.2f}; seed 0: {ece[0]:.2f}); a perfectly calibrated score on the "
              f"same halves: mean {floor.mean():.2f} % (seed 0: {floor[0]:.2f}); ECE minus floor: mean {(ece - floor).mean():.2f}")
        print("  per seed: " + ", ".join(f"{e:.2f}/{f:.2f}" for e, f in zip(ece, floor)))


if __name__ == "__main__":
    main()
