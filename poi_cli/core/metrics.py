"""Metrics on plain arrays (numpy only): shared by training, evaluation, the report and the audit."""

from __future__ import annotations

from typing import Optional

import numpy as np


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes) int64: row = true class, column = predicted class."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(targets, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return confusion


def answered_argmax(scores: np.ndarray, answers: Optional[np.ndarray]) -> np.ndarray:
    """argmax over each row's allowed classes: `answers` (n, C) bool (PreparedDataset.answer_mask), None: all."""
    return (scores if answers is None else np.where(answers, scores, -np.inf)).argmax(1)


def per_class_recall(confusion: np.ndarray) -> list[Optional[float]]:
    """Recall of each class (row) of a confusion matrix; None for a class with no image."""
    totals = confusion.sum(1)
    return [float(confusion[i, i] / totals[i]) if totals[i] else None for i in range(len(confusion))]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the mean of their ranks (float64)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_run = np.r_[True, ordered[1:] != ordered[:-1]] if len(values) else np.zeros(0, bool)
    starts = np.flatnonzero(starts_run)
    ends = np.r_[starts[1:], len(values)]  # exclusive: the run holds sorted positions starts..ends-1
    run_ranks = (starts + 1 + ends) / 2.0  # the mean of the ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = run_ranks[np.cumsum(starts_run) - 1]
    return ranks


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None if one class is empty."""
    positives = np.asarray(positives).astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
