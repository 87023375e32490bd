"""Would averaging models buy accuracy? Each model's and every subset's accuracy on a labelled
split, the subset predicting with the mean of its members' reported probabilities (each its
own recipe, T = 1). An analysis for issue 25's FERPlus target; it changes no model.

    python scripts/ensemble_accuracy.py PREPARED_DIR MODEL MODEL [MODEL ...] [--split val] [--threads 1]

Float32, classes matched by name, as `poi evaluate --amp off`; prints aggregate figures only.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from poi_cli.study.evaluate import predict_mapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared")
    parser.add_argument("models", nargs="+", help="checkpoints (.pt) or run folders (their best.pt)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("name at least two models")
    torch.set_num_threads(args.threads)
    probs, targets = [], None
    for index, model in enumerate(args.models):
        mapped = predict_mapped(model, args.prepared, args.split, device="cpu", amp="off")
        if targets is not None and not np.array_equal(mapped.targets, targets):
            parser.error(f"{model} scores other faces or classes of {args.split} than {args.models[0]}")
        probs.append(np.exp(mapped.log_probs))
        targets = mapped.targets
        print(f"[{index}] {model} ({mapped.recipe.describe()})")
    print(f"accuracy on {args.split} ({len(targets)} faces):")
    for size in range(1, len(probs) + 1):
        for members in itertools.combinations(range(len(probs)), size):
            mean = np.mean([probs[i] for i in members], axis=0)
            print(f"  {'+'.join(str(i) for i in members):<12} {100 * (mean.argmax(1) == targets).mean():.2f} %")


if __name__ == "__main__":
    main()
