"""ECE of `confidence` over several seeded halves of a labelled split: how much of a model's
calibration figure is the half `poi evaluate` happens to measure on (issue 25's "ECE at most
2 % on the half of FERPlus valid not used to fit it"), beside the ECE that a perfectly
calibrated score would measure on as many images (model.calibration.ece_sampling_floor).

    python scripts/calibration_halves.py PREPARED_DIR MODEL [MODEL ...] [--split val] [--seeds 10] [--threads 1]
                                         [--families]

For each model: its recipe's log p on the split (float32, as `poi evaluate --amp off`, classes
matched by name as there), then
for seeds 0..N-1 the calibration study of `poi evaluate` (calibration_study: T_cal fitted on
one seeded half, ECE measured on the other; seed 0 is `poi evaluate`'s own half). Prints
aggregate figures only.

--families also fits, on the same halves, two richer calibrations than poi's one temperature
(a study, not something poi ships): softmax(log p / T + b) with a per-class bias b (8 more
numbers), and vector scaling, softmax(log p / t + b) with a temperature per class. Both can
change the predicted class, so their accuracy on the measuring half is printed beside.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from poi_cli.model.calibration import (calibration_study, expected_calibration_error, fit_temperature, halves, nll,
                                       softmax)
from poi_cli.study.evaluate import predict_mapped


def fit_scaling(log_probs: np.ndarray, labels: np.ndarray, per_class_temperature: bool) -> tuple[np.ndarray, np.ndarray]:
    """(t, b) minimising the NLL of softmax(log p / t + b): t one temperature or one per class."""
    z = torch.as_tensor(log_probs, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(z.shape[1] if per_class_temperature else (), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp() + bias, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.detach().exp().numpy(), bias.detach().numpy()


def families(log_probs: np.ndarray, labels: np.ndarray, seeds: int) -> dict[str, np.ndarray]:
    """Per family, per seed: ECE (%), NLL, accuracy (%) and the lowest class recall (%) on the measuring half."""
    rows: dict[str, list] = {"temperature": [], "temperature + class bias": [], "vector scaling": []}
    for seed in range(seeds):
        fit, held = halves(len(labels), seed)
        fitted = {"temperature": (fit_temperature(log_probs[fit], labels[fit]), 0.0),
                  "temperature + class bias": fit_scaling(log_probs[fit], labels[fit], False),
                  "vector scaling": fit_scaling(log_probs[fit], labels[fit], True)}
        y = labels[held]
        for name, (temperature, bias) in fitted.items():
            p = softmax(log_probs[held] / temperature + bias)
            predicted = p.argmax(1)
            recall = min((predicted[y == c] == c).mean() for c in np.unique(y))
            rows[name].append((100 * expected_calibration_error(p.max(1), predicted == y), nll(p, y),
                               100 * (predicted == y).mean(), 100 * recall))
    return {name: np.array(values) for name, values in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared")
    parser.add_argument("models", nargs="+", help="checkpoints (.pt) or run folders (their best.pt)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", action="store_true", help="also a per-class bias and vector scaling (a study)")
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
        if args.families:
            for name, rows in families(np.asarray(log_probs, dtype=np.float64), labels, args.seeds).items():
                print(f"  {name}: ECE mean {rows[:, 0].mean():.2f} % (min {rows[:, 0].min():.2f}, max {rows[:, 0].max():.2f}; "
                      f"seed 0: {rows[0, 0]:.2f}), NLL {rows[:, 1].mean():.4f}, accuracy {rows[:, 2].mean():.2f} %, "
                      f"lowest class recall {rows[:, 3].mean():.1f} % (means over the measuring halves)")


if __name__ == "__main__":
    main()
