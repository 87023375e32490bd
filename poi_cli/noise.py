"""Synthetic label noise (POI_SPEC section 7): symmetric flips, seeded.

Each label is flipped with probability `rate` to a class drawn uniformly from the other
classes, once. The same (labels, num_classes, rate, seed) always gives the same result.
"""

from __future__ import annotations

import numpy as np


def flip_labels(labels: np.ndarray, num_classes: int, rate: float, seed: int = 0) -> np.ndarray:
    """Return a noisy copy of `labels` (int64); the input is not modified."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must lie in [0, 1], got {rate}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    rng = np.random.Generator(np.random.PCG64(seed))
    flip = rng.random(labels.shape) < rate
    # An offset in 1..C-1 added modulo C is a uniform draw among the other classes.
    offsets = rng.integers(1, num_classes, size=labels.shape)
    return np.where(flip, (labels + offsets) % num_classes, labels)
