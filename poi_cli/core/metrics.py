"""Metrics on plain arrays (numpy only): shared by training, evaluation and the audit."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None if one class is empty."""
    positives = np.asarray(positives).astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(np.asarray(scores)).rank(method="average").to_numpy()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
