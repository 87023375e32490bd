"""Shared fixtures: a tiny prepared dataset written with the store's writer.

`make_prepared(root, ...)` writes prepared.json, manifest.csv and faces.npy
(poi_cli.data.store.write_store) with class-dependent patterns a ResNet learns in a few steps: class c
is horizontal stripes of frequency c + 1 (invariant to the flips and small shifts of
training augmentation), plus per-image noise, phase and tint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from poi_cli.core.manifests import class_names
from poi_cli.core.schema import STATUS_NO_FACE, STATUS_OK
from poi_cli.data.store import write_store

DEFAULT_SPLITS = {"train": 6, "valid": 2, "test": 2}  # images per class


def stripe_image(label: int, size: int, rng: np.random.Generator, grayscale: bool = False) -> np.ndarray:
    """(size, size, 3) uint8: stripes of frequency label + 1 down the image, with noise."""
    y = np.arange(size)[:, None] / size
    phase = rng.uniform(0, 2 * np.pi)
    value = 0.5 + 0.35 * np.sin(2 * np.pi * (label + 1) * y + phase) + rng.normal(0, 0.05, (size, size))
    tint = np.ones(3) if grayscale else rng.uniform(0.7, 1.0, 3)
    image = np.clip(value[..., None] * tint, 0, 1)
    return (image * 255).astype(np.uint8)


def make_prepared(
    root: Path,
    size: int = 64,
    num_classes: int = 7,
    splits: dict[str, int] | None = None,
    grayscale: bool = False,
    seed: int = 0,
    failed: int = 0,
) -> Path:
    """Write a prepared folder under `root`; `failed` extra manifest rows per split have no face."""
    splits = splits or DEFAULT_SPLITS
    rng = np.random.default_rng(seed)
    names = class_names(num_classes)
    faces, rows = [], []
    for split, per_class in splits.items():
        for label in range(num_classes):
            for index in range(per_class):
                rows.append({
                    "id": f"{split}/{names[label]}_{index:03d}", "source": f"{split}/{names[label]}_{index:03d}.png",
                    "split": split, "label": label, "label_name": names[label], "status": STATUS_OK,
                    "reason": "", "det_score": 1.0, "n_faces": 1, "store_index": len(faces),
                })
                faces.append(stripe_image(label, size, rng, grayscale))
        for index in range(failed):
            rows.append({
                "id": f"{split}/noface_{index:03d}", "source": f"{split}/noface_{index:03d}.png", "split": split,
                "label": 0, "label_name": names[0], "status": STATUS_NO_FACE, "reason": "no face detected",
                "n_faces": 0, "store_index": -1,
            })
    return write_store(root, np.stack(faces), rows, dataset="synthetic-stripes", classes=names, grayscale=grayscale)


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """A 7-class, 64 px prepared folder: 42 train, 14 valid, 14 test images."""
    return make_prepared(tmp_path / "prepared")


def numbers_of(value) -> list[float]:
    """Every number in a (nested) record, in a fixed order: to compare two records numerically."""
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in numbers_of(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in numbers_of(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def hide_module(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make `import module` fail as if it were not installed (for the one-line error tests)."""
    import builtins

    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == module:
            raise ImportError(f"no {module}", name=module)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
