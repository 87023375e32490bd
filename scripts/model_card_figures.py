"""The bundled model card's figures from the `poi evaluate --out` folders that
scripts/train_bundled_model.sh's `card` step writes (only aggregate figures: nothing of
the research-only data is printed):

    python scripts/model_card_figures.py runs/bundle3/card

FERPlus valid: accuracy, mean class recall, per-class recall, the calibration study (T_cal
fitted on a seeded half, ECE / NLL measured on the other) and the regions / PIN strata;
SFEW 2.0 val: accuracy; CK+: accuracy on each of the 10 subject-independent folds (zero-shot:
nothing of CK+ was trained on), their mean and standard deviation, and all folds pooled.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(folder: Path) -> dict:
    path = folder / "metrics.json"
    if not path.is_file():  # one line, not a traceback: the card step has not written this folder
        raise SystemExit(f"error: {path} not found: run the card step first (scripts/train_bundled_model.sh card)")
    return json.loads(path.read_text())


def notes_line(metrics: dict) -> str:
    """evaluate's notes (what the model saw of the split, its calibration), which the card must not drop."""
    return "  notes: " + " | ".join(metrics.get("notes") or ["none"])


def calibration_line(metrics: dict) -> str:
    study = metrics.get("calibration") or {}
    scores = study.get("scores") or {}
    parts = [f"T_half {study.get('temperature_half', float('nan')):.3f} on {study.get('n_fit')} faces, "
             f"measured on {study.get('n_measured')}"]
    for name in ("max_softmax", "confidence"):
        score = scores.get(name) or {}
        if score:
            floor = f" (perfectly calibrated: {100 * score['ece_floor']:.2f} %)" if score.get("ece_floor") is not None else ""
            parts.append(f"{name}: ECE {100 * score['ece']:.2f} %{floor}, NLL {score['nll']:.3f}, Brier {score['brier']:.3f}, "
                         f"AURC {score['aurc']:.4f}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("card_dir", type=Path)
    args = parser.parse_args()
    ferplus = load(args.card_dir / "ferplus_val")
    print(f"FERPlus valid: {100 * ferplus['accuracy']:.2f} % on {ferplus['n_images']} faces "
          f"(TRN alone {100 * ferplus['trn_accuracy']:.2f} %), mean class recall {100 * ferplus['mean_class_recall']:.2f} %, "
          f"recipe {ferplus.get('recipe')}")
    print("  recall: " + ", ".join(f"{name} {100 * row['recall']:.1f} ({row['n']})"
                                    for name, row in sorted(ferplus["per_class"].items(), key=lambda kv: -kv[1]["recall"])))
    print("  calibration: " + calibration_line(ferplus))
    for key in ("regions_agree", "pin_agreement", "flagged"):
        if ferplus.get(key) is not None:
            print(f"  {key}: {json.dumps(ferplus[key])}")
    print(notes_line(ferplus))
    sfew = load(args.card_dir / "sfew_val")
    print(f"SFEW 2.0 val: {100 * sfew['accuracy']:.2f} % on {sfew['n_images']} faces, "
          f"mean class recall {100 * sfew['mean_class_recall']:.2f} %")
    print(notes_line(sfew))
    folds = sorted(args.card_dir.glob("ck_fold*"), key=lambda p: int(p.name[len("ck_fold"):]))
    if folds:
        results = [load(f) for f in folds]
        accuracies = [100 * r["accuracy"] for r in results]
        pooled = sum(r["accuracy"] * r["n_images"] for r in results) / sum(r["n_images"] for r in results)
        print(f"CK+ zero-shot, {len(folds)} folds: {statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f} "
              f"(folds: {', '.join(f'{a:.1f}' for a in accuracies)}); pooled {100 * pooled:.2f} % "
              f"on {sum(r['n_images'] for r in results)} faces")


if __name__ == "__main__":
    main()
