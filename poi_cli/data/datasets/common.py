"""What every dataset parser returns, and the small helpers they share.

A parser reads the official layout under RAW_DIR (never writing to it) and returns a
ParsedDataset: one Item per input image with its split, canonical label, and, where the
dataset ships them, five landmarks. Facts about a dataset (class names, split folders,
sizes) come from data_manifests/datasets/<name>.json, read by dataset_manifest().
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poi_cli.core.errors import PoiError
from poi_cli.core.manifests import CLASSES, read_manifest
from poi_cli.core.schema import LANDMARK_NAMES, STATUS_EXCLUDED, STATUS_MISSING, STATUS_PENDING

# Item statuses a parser can set (core.schema); prepare.py adds the image-level ones.
PENDING = STATUS_PENDING  # to be loaded and stored
EXCLUDED = STATUS_EXCLUDED  # the dataset's label rule drops it (no majority, unknown, None...)
MISSING = STATUS_MISSING  # listed by the labels but not on disk

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class LayoutError(PoiError):
    """RAW_DIR does not have the layout the parser expects; the message names what is missing."""


@dataclass
class Item:
    """One input image as the labels describe it."""

    id: str  # stable: the official image name (with its split folder where the dataset has one)
    source: str  # path relative to RAW_DIR, POSIX separators
    split: str  # train / val / test
    label: int  # canonical class index; -1 when excluded
    status: str = PENDING
    reason: str = ""
    landmarks: np.ndarray | None = None  # (5, 2) float32 shipped by the dataset, image pixels
    box: tuple[float, float, float, float] | None = None  # a shipped face box (x1, y1, x2, y2) where no landmarks are
    # a whole photo whose layout ships landmarks, but not for this one: detected unless --no-detect says otherwise
    detect: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # extra manifest columns (votes, subject)


@dataclass
class ParsedDataset:
    name: str  # the DATASET argument
    layout: str  # which of the dataset's layouts was found
    items: list[Item]
    num_classes: int
    grayscale: bool | None  # None: decide from the images
    detect: bool  # default for --detect/--no-detect
    notes: list[str] = field(default_factory=list)  # info lines (absent splits...)
    expected: dict[str, int] = field(default_factory=dict)  # split -> labelled images the official release has
    extra_columns: list[str] = field(default_factory=list)


def dataset_manifest(name: str) -> dict[str, Any]:
    """The facts file data_manifests/datasets/<name>.json."""
    return read_manifest(f"datasets/{name}.json")


def labelled_classes(dataset: str, layout: str | None) -> frozenset[str] | None:
    """The canonical classes a dataset layout labels (its class map's values), None where poi has
    no facts file for it. They can leave a hole in the label space: CK+48 labels no neutral face
    but contempt keeps its canonical index 7, so its 8 classes include neutral, which it never labels."""
    try:
        facts = dataset_manifest(dataset)
    except (FileNotFoundError, OSError, ValueError):
        return None
    class_map = facts.get("class_map") or facts.get("layouts", {}).get(layout or "", {}).get("class_map")
    return None if class_map is None else frozenset(name for name in class_map.values() if name is not None)


def canonical_index(name: str) -> int:
    return CLASSES.index(name)


def class_lookup(class_map: dict[str, str | None]) -> dict[str, int | None]:
    """Dataset class name -> canonical index (None: excluded by the label rule)."""
    return {key: (None if value is None else canonical_index(value)) for key, value in class_map.items()}


def missing_reason(path: Path, listed_in: str) -> str:
    """The reason of a listed image that is not on disk; names the file that is there where only
    the case of its extension differs (x.JPG for x.jpg: on a case-sensitive disk, not the same)."""
    for suffix in {path.suffix.upper(), path.suffix.lower()} - {path.suffix}:
        if path.with_suffix(suffix).is_file():
            return f"listed in {listed_in} but not on disk ({path.with_suffix(suffix).name} is: the case differs)"
    return f"listed in {listed_in} but not on disk"


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files directly in `folder` (recursive: also in its sub-folders, as torchvision's
    ImageFolder reads a class folder; links to folders not followed), sorted by path,
    hidden files and folders skipped.

    Whatever else carries an image suffix but is no folder is listed too (a broken symlink, a
    FIFO, a socket): it is an image the user meant to include, so it gets a manifest row with
    its reason (load_image names it without opening it) instead of silently vanishing. A
    folder that cannot be listed (no permission) is an OSError naming it: its images would
    vanish without a row (os.walk skips it in silence).
    """
    if recursive:
        candidates = []

        def cannot_list(error: OSError) -> None:
            raise error

        for root, folders, names in os.walk(folder, onerror=cannot_list):
            folders[:] = [name for name in folders if not name.startswith(".")]
            candidates += [Path(root) / name for name in names]
    else:
        candidates = list(folder.iterdir())
    return sorted(
        p for p in candidates
        if not p.is_dir() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def counted(splits: Iterable[str], what: str) -> str:
    """'3 rows in train' or '12 rows (train 10, val 2)': the count a parser's note gives, one per
    split it found them in, since `poi prepare --splits` may keep only some of the splits."""
    counts = Counter(splits)
    total = sum(counts.values())
    if len(counts) == 1:
        return f"{total} {what} in {next(iter(counts))}"
    return f"{total} {what} (" + ", ".join(f"{split} {n}" for split, n in sorted(counts.items())) + ")"


def relative(path: Path, raw_dir: Path) -> str:
    return path.relative_to(raw_dir).as_posix()


def expected_counts(manifest: dict[str, Any]) -> dict[str, int]:
    return {split: info["labelled"] for split, info in manifest.get("splits", {}).items() if info.get("labelled")}


def five_from_68(points: np.ndarray, groups: dict[str, list[int]]) -> np.ndarray:
    """Reduce 68 iBUG landmarks to MTCNN's five (eye centres, nose tip, mouth corners).

    `groups` (from the dataset manifest, keyed by core.schema.LANDMARK_NAMES) lists the
    68-point indices averaged for each.
    """
    return np.stack([points[groups[name]].mean(axis=0) for name in LANDMARK_NAMES]).astype(np.float32)
