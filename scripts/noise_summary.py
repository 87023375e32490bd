"""The tables of scripts/noise_study.sh's results page from its run folders.

    python scripts/noise_summary.py runs/noise_study          # PROJECT of the study

Per run (NAME_seedS): final and best validation accuracy (results.csv), and the
memorisation signs issue 13 asks for: training accuracy against the given label on the
flipped images (first, highest, last epoch) and the fall of validation accuracy from its
peak to the last epoch. Then the mean over seeds per NAME, how well each audit found the
flipped labels (in sample or out of fold: audit_summary.json), and for each cleaned run what
`poi clean` did (labels.json beside the audited run's labels).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd


def run_rows(project: Path) -> pd.DataFrame:
    rows = []
    for results in sorted(project.glob("*_seed*/results.csv")):
        name, seed = re.fullmatch(r"(.+)_seed(\d+)", results.parent.name).groups()
        epochs = pd.read_csv(results)
        flipped = epochs["train_acc_flipped"] if "train_acc_flipped" in epochs else pd.Series(dtype=float)
        rows.append({
            "run": name, "seed": int(seed), "epochs": len(epochs),
            "final_val": 100 * epochs["val_acc"].iloc[-1], "best_val": 100 * epochs["val_acc"].max(),
            "best_epoch": int(epochs.loc[epochs["val_acc"].idxmax(), "epoch"]),
            "peak_to_final": 100 * (epochs["val_acc"].max() - epochs["val_acc"].iloc[-1]),
            "flipped_fit_first": 100 * flipped.iloc[0] if flipped.notna().any() else None,
            "flipped_fit_max": 100 * flipped.max() if flipped.notna().any() else None,
            "flipped_fit_last": 100 * flipped.iloc[-1] if flipped.notna().any() else None,
        })
    return pd.DataFrame(rows)


def audit_rows(project: Path) -> pd.DataFrame:
    rows = []
    for summary_file in sorted(project.glob("*_seed*/audit*/audit_summary.json")):
        s = json.loads(summary_file.read_text())
        pin = (s.get("detection") or {}).get("pin_suspicion") or {}
        rows.append({
            "audited_run": summary_file.parent.parent.name, "audit": summary_file.parent.name,
            "scored": "out of fold" if s["mode"].startswith("out of fold") else "in sample",
            "roc_auc_pin": pin.get("roc_auc"), "precision_at_noise_count": pin.get("precision_at_noise_count"),
            "suggestion_right_on_flipped": s.get("suggested_recovers_clean_label"),
        })
    return pd.DataFrame(rows)


def clean_rows(project: Path) -> pd.DataFrame:
    rows = []
    for summary_file in sorted(project.glob("*_seed*/clean*/labels.json")):
        s = json.loads(summary_file.read_text())
        auto = s.get("auto") or {}
        rows.append({
            "audited_run": summary_file.parent.parent.name, "audit": summary_file.parent.name,
            "estimated_noise": auto.get("estimated_noise_rate"), "fraction": s.get("fraction") or auto.get("fraction"),
            "threshold": s.get("threshold"), "changed": s["n_changed"], "were_wrong": s.get("changed_wrong_before"),
            "now_right": s.get("changed_right_after"), "noise_before": s.get("noise_rate_before"),
            "noise_after": s.get("noise_rate_after"),
        })
    return pd.DataFrame(rows)


def main(project: str) -> None:
    runs = run_rows(Path(project))
    if runs.empty:
        sys.exit(f"no run folders NAME_seedS with results.csv in {project}")
    pd.set_option("display.width", 200)
    print(runs.round(2).to_string(index=False), end="\n\n")
    mean = runs.groupby("run").agg(seeds=("seed", "count"), final_mean=("final_val", "mean"), final_min=("final_val", "min"),
                                   final_max=("final_val", "max"), best_mean=("best_val", "mean"))
    print(mean.round(2).to_string(), end="\n\n")
    audits = audit_rows(Path(project))
    if not audits.empty:
        print(audits.round(4).to_string(index=False), end="\n\n")
    cleaned = clean_rows(Path(project))
    if not cleaned.empty:
        print(cleaned.round(4).to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/noise_study")
