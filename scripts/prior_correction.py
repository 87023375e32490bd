"""What a prior correction of the reported distribution buys the rare classes: an analysis for
issue 25's "no class below 40 % recall" (the README's model card). It measures; it does not
change the model.

    python scripts/prior_correction.py MODEL PREPARED_DIR [--split val] [--taus 0,0.5,1] [--threads 1]

The model's recipe log p (what prediction reports before T_cal, which never changes an
argmax) is shifted by tau * log prior, the prior being the class frequencies of the prepared
dataset's training split (logit adjustment, Menon et al. 2021: tau = 1 is the balanced
error's Bayes rule when p fits the training prior), and for each tau the script prints the
accuracy, the mean class recall and each class's recall on the split, in float32.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from poi_cli.data.store import PreparedDataset
from poi_cli.model.checkpoint import CheckpointInfo, load_checkpoint
from poi_cli.model.predictions import predict_checkpoint_split


def recalls(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Recall of each class (NaN for a class with no image)."""
    return np.array([(predicted[labels == k] == k).mean() if (labels == k).any() else np.nan for k in range(classes)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a checkpoint (.pt) or run folder's best.pt")
    parser.add_argument("prepared")
    parser.add_argument("--split", default="val")
    parser.add_argument("--taus", default="0,0.25,0.5,0.75,1", help="comma-separated tau values")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    checkpoint = load_checkpoint(args.model)
    recipe = CheckpointInfo.of(checkpoint).recipe
    dataset = PreparedDataset(args.prepared)
    data, train = dataset.split(args.split), dataset.split("train")
    prior = np.bincount(train.labels, minlength=dataset.num_classes) / len(train.labels)
    predictions = predict_checkpoint_split(checkpoint, dataset.faces, data.store_rows, data.labels, "cpu", amp="off",
                                           with_pin=recipe.uses_pin, mirror=recipe.flip)
    log_probs = predictions.recipe_log_probs(recipe)
    counts = np.bincount(data.labels, minlength=dataset.num_classes)
    print(f"{args.model} on {args.split} ({len(data.labels)} faces), recipe {recipe.describe()}; "
          f"training prior {', '.join(f'{c} {100 * p:.2f} %' for c, p in zip(dataset.classes, prior))}")
    print("tau   accuracy  mean recall  " + "  ".join(f"{c[:8]:>8} ({n})" for c, n in zip(dataset.classes, counts)))
    for tau in (float(t) for t in args.taus.split(",")):
        predicted = (log_probs - tau * np.log(prior)).argmax(axis=1)
        per_class = recalls(predicted, data.labels, dataset.num_classes)
        print(f"{tau:<5.2f} {100 * (predicted == data.labels).mean():7.2f} %  {100 * np.nanmean(per_class):9.2f} %  "
              + "  ".join(f"{100 * r:{len(c[:8]) + len(str(n)) + 3}.1f}" for r, c, n in zip(per_class, dataset.classes, counts)))


if __name__ == "__main__":
    main()
