"""Recipes that chain training and inference: above both layers, beside cli.py.

`train_rounds`: POI trained on noisy labels, then, for each further round, the run's own
training labels audited by its PIN (poi audit), the suspects relabelled to the PIN's
suggestion (poi clean), and a new run trained from scratch on the cleaned labels. Each
round is an ordinary run folder (NAME, NAME_round2, ...); the cleaned label file and its
summary sit in the previous round's folder, under clean/.

`train_folds` (`poi train --fold all`): k-fold cross-validation on a store with folds
(CK+): fold K trained into NAME/fold<K> on the other folds, evaluated on fold K's held-out
images, then cv.csv (one row per fold) and cv.json (mean, spread, pooled accuracy) in
NAME/. Running the same command again resumes: finished folds are kept, a killed one
continues at its first unfinished epoch.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from rich.console import Console

import numpy as np

from poi_cli.core.atomic import write_csv, write_json
from poi_cli.data.folds import fold_split_name
from poi_cli.data.store import PreparedDataset
from poi_cli.inference.clean import clean, write_clean
from poi_cli.inference.evaluate import evaluate, write_reports
from poi_cli.model.checkpoint import CONFIG_FILE, LAST, load_checkpoint
from poi_cli.train.config import TrainConfig, TrainError
from poi_cli.train.engine import train

CLEAN_DIR = "clean"
CV_CONFIG, CV_CSV, CV_JSON = "cv_config.json", "cv.csv", "cv.json"
CV_COLUMNS = ["fold", "n_train", "n_test", "accuracy", "mean_class_recall", "best_epoch", "run"]
# Options that may differ when the same cross-validation is run again (it then resumes).
RERUN_FREE = ("device", "resume", "fold")


def cleaned_labels(run_dir: Path, config: TrainConfig, device: str = "auto") -> Path:
    """Audit a finished POI run on the labels it trained on and relabel its suspects; returns the label file."""
    out = run_dir / CLEAN_DIR / "labels.csv"
    result = clean(run_dir, config.data, "relabel", threshold=config.clean_threshold, split=config.train_split,
                   device=device)
    write_clean(result, out)
    return out


def train_rounds(config: TrainConfig, console: Optional[Console] = None,
                 announce: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Train `config.rounds` runs, each on the labels the previous one cleaned; returns their folders."""
    if config.rounds > 1 and not config.use_pin:
        raise TrainError("--rounds needs the PIN to audit the labels: it cannot be combined with --baseline")
    if config.rounds > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError("--rounds runs one process: train each round under torchrun, with poi audit and poi clean between")
    runs = [train(config, console)]
    for number in range(2, config.rounds + 1):
        labels = cleaned_labels(runs[-1], config, config.device)
        announce(f"round {number}: labels cleaned by {runs[-1].name} -> {labels}")
        following = replace(config, labels=str(labels), noise=0.0, name=f"{config.name}_round{number}", resume=None)
        runs.append(train(following, console))
    return runs


def train_folds(config: TrainConfig, console: Optional[Console] = None,
                announce: Callable[[str], None] = lambda _: None) -> dict:
    """Train and evaluate every fold of the store (config.fold == 'all'); returns cv.json's content."""
    if config.resume:
        raise TrainError("--fold all resumes by running the same command again (without --resume)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError("--fold all runs one process: train each fold with --fold K under torchrun")
    config = replace(config)
    config.resolve_paths()  # cv_config.json compares absolute paths, whatever the working directory
    dataset = PreparedDataset(config.data)
    if not dataset.folds:
        raise TrainError(f"{config.data} has no folds: prepare CK+ with `poi prepare ckplus RAW --out DIR` (10 folds by default)")
    folder = Path(config.project) / config.name
    check_same_cv(folder, config)
    rows = []
    for fold in range(dataset.folds):
        run_dir = folder / fold_split_name(fold)
        announce(f"fold {fold + 1}/{dataset.folds}: {run_dir}")
        trained_now = not fold_finished(run_dir, config.epochs)
        if trained_now:
            fold_config = (replace(config, resume=str(run_dir)) if (run_dir / CONFIG_FILE).is_file() else
                           replace(config, fold=str(fold), project=str(folder), name=run_dir.name, exist_ok=True))
            train(fold_config, console)
        metrics = run_dir / "eval" / "metrics.json"
        if metrics.is_file() and not trained_now:
            result = json.loads(metrics.read_text())
        else:
            result = evaluate(run_dir, config.data, split=fold_split_name(fold), device=config.device)
            write_reports(result, run_dir / "eval")
        resolved = json.loads((run_dir / CONFIG_FILE).read_text()).get("resolved", {})
        rows.append({"fold": fold, "n_train": resolved.get("n_train"), "n_test": result["n_images"],
                     "accuracy": result["accuracy"], "mean_class_recall": result["mean_class_recall"],
                     "best_epoch": result.get("epoch"), "run": str(run_dir)})
    summary = folds_summary(rows, folder)
    write_csv(folder / CV_CSV, CV_COLUMNS, rows)
    write_json(folder / CV_JSON, summary)
    return summary


def folds_summary(rows: list[dict], folder: Path) -> dict:
    """Mean, spread (sample std over folds) and pooled accuracy of the per-fold rows."""
    accuracy = np.array([r["accuracy"] for r in rows], dtype=float)
    n_test = np.array([r["n_test"] for r in rows], dtype=float)
    return {
        "folder": str(folder), "folds": len(rows), "per_fold": rows,
        "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std(ddof=1)) if len(rows) > 1 else 0.0,
        "accuracy_min": float(accuracy.min()), "accuracy_max": float(accuracy.max()),
        "accuracy_pooled": float((accuracy * n_test).sum() / n_test.sum()), "n_test": int(n_test.sum()),
        "mean_class_recall_mean": float(np.mean([r["mean_class_recall"] for r in rows])),
    }


def fold_finished(run_dir: Path, epochs: int) -> bool:
    return (run_dir / LAST).is_file() and load_checkpoint(run_dir / LAST)["epoch"] >= epochs


def check_same_cv(folder: Path, config: TrainConfig) -> None:
    """cv_config.json holds the options of the cross-validation in `folder`; running it again
    with other options would mix two recipes in one table."""
    wanted = {k: v for k, v in config.to_dict().items() if k not in RERUN_FREE}
    path = folder / CV_CONFIG
    if path.is_file():
        saved = {k: v for k, v in json.loads(path.read_text()).items() if k not in RERUN_FREE}
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if changed:
            raise TrainError(f"{folder} holds a cross-validation with other options ({', '.join(changed)}): "
                             "choose another --name or remove it")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, config.to_dict())
