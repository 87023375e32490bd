"""Evaluation protocols for datasets without an official test split (CK+): subject-independent
k-fold cross-validation, and the POI paper's random 8:2 split.

Both are written at prepare time, so every run and every evaluation of a prepared folder
sees the same partition: the manifest's `fold` column (0..k-1; -1 for images outside the
folded split), or images moved to split `test`. A cross-validation (`poi train --fold all`,
pipeline.train_folds) writes its folder's files (CV_CONFIG, CV_CSV, CV_JSON) with
folds_summary, which `poi report` also computes from the fold runs' own evaluations. numpy only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

FOLD_COLUMN = "fold"
SUBJECT_COLUMN = "subject"  # the manifest column of a dataset that names its subjects (CK+); "" unknown
NO_FOLD = -1
FOLD_SPLIT = re.compile(r"^fold(\d+)$")  # the held-out images of fold k, as a split name: fold3
RANDOM_PROTOCOL = "random"  # prepared.json's protocol kind of --test-fraction
# `poi train --fold all` writes NAME/fold<K> run folders and these beside them: the options (written
# first), one row per fold, and folds_summary's result (written once every fold is evaluated)
CV_CONFIG, CV_CSV, CV_JSON = "cv_config.json", "cv.csv", "cv.json"
RANDOM_SPLIT_NOTE = ("split 'test' is a random {pct:.0%} of the images, stratified by class, at the image level: "
                     "the POI paper's protocol for CK+ (random 8:2); the same subjects, and near-identical frames of "
                     "the same sequences (CK+48 keeps the last frames of each), are in train and test, "
                     "so its accuracy is optimistic beside subject-independent folds")


def fold_split_name(fold: int) -> str:
    """The split name of fold k's held-out images (`poi evaluate --split fold3`)."""
    return f"fold{fold}"


def parse_fold_split(name: str) -> Optional[int]:
    """k for a split name fold<k>, else None."""
    match = FOLD_SPLIT.match(name)
    return int(match.group(1)) if match else None


def subject_folds(subjects: Sequence[str], k: int, seed: int) -> np.ndarray:
    """A fold in 0..k-1 per image such that no subject spans two folds, folds as equal in size as
    subjects allow. Subjects are taken in a seeded shuffle, then largest first (a stable sort,
    so equal sizes keep the shuffled order), each to the fold with the fewest images so far
    (the lowest-numbered on ties): the same (subjects, k, seed) always gives the same folds.
    An empty subject counts as a subject of its own per image."""
    if k < 2:
        raise ValueError(f"--folds must be at least 2, got {k}")
    keys = [s if s else f"\0{i}" for i, s in enumerate(subjects)]  # unknown subject: its own group
    groups, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    if len(groups) < k:
        raise ValueError(f"--folds {k}: only {len(groups)} subjects, fewer than folds")
    sizes = np.bincount(inverse, minlength=len(groups))
    order = np.random.default_rng(seed).permutation(len(groups))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of_group = np.empty(len(groups), dtype=np.int64)
    filled = np.zeros(k, dtype=np.int64)
    for group in order:
        fold = int(np.argmin(filled))
        fold_of_group[group] = fold
        filled[fold] += sizes[group]
    return fold_of_group[inverse]


def random_test_mask(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a seeded random `fraction` of the images per class (the paper's 8:2 at 0.2)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--test-fraction must lie in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng([seed, 8011])
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        mask[rng.permutation(positions)[: int(round(fraction * len(positions)))]] = True
    return mask


def stratified_folds(labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """A fold in 0..k-1 per image, each class dealt round-robin over the folds in a seeded
    order (cross-fitting an audit: every image scored by a model that never saw it)."""
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    labels = np.asarray(labels)
    folds = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng([seed, 104729])
    start = 0
    for label in np.unique(labels):
        positions = rng.permutation(np.flatnonzero(labels == label))
        folds[positions] = (start + np.arange(len(positions))) % k
        start += len(positions)  # the next class continues the deal: fold sizes differ by at most one
    return folds


def folds_summary(rows: list[dict], folder: str | Path) -> dict:
    """cv.json's figures from per-fold rows (fold, n_test, accuracy, mean_class_recall: each fold's
    model on its own held-out fold): mean, spread (sample std over folds), min, max and pooled accuracy."""
    accuracy = np.array([r["accuracy"] for r in rows], dtype=float)
    n_test = np.array([r["n_test"] for r in rows], dtype=float)
    return {
        "folder": str(folder), "folds": len(rows), "per_fold": rows,
        "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std(ddof=1)) if len(rows) > 1 else 0.0,
        "accuracy_min": float(accuracy.min()), "accuracy_max": float(accuracy.max()),
        "accuracy_pooled": float((accuracy * n_test).sum() / n_test.sum()), "n_test": int(n_test.sum()),
        "mean_class_recall_mean": float(np.mean([r["mean_class_recall"] for r in rows])),
    }
