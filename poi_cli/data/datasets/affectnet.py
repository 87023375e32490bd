"""AffectNet manually annotated images with training.csv / validation.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from poi_cli.data.datasets.common import (
    EXCLUDED, IMAGE_SUFFIXES, MISSING, Item, LayoutError, ParsedDataset, class_lookup, dataset_manifest, expected_counts,
    five_from_68, missing_reason,
)

REQUIRED_COLUMNS = ("subDirectory_filePath", "expression", "facial_landmarks")


def parse_landmarks(text: str, groups: dict[str, list[int]]) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.replace(",", ";").split(";") if v.strip()], dtype=np.float32)
    except ValueError:
        return None
    if values.size != 136:
        return None
    return five_from_68(values.reshape(68, 2), groups)


def parse_box(row: dict) -> tuple[float, float, float, float] | None:
    """The csv's face box as (x1, y1, x2, y2); None where its columns are absent or not a box."""
    try:
        x, y, width, height = (float(row[c]) for c in ("face_x", "face_y", "face_width", "face_height"))
    except (KeyError, TypeError, ValueError):
        return None
    if not all(np.isfinite([x, y, width, height])) or width <= 0 or height <= 0:
        return None
    return (x, y, x + width, y + height)


def find_first(raw_dir: Path, candidates: list[str], what: str) -> Path:
    for candidate in candidates:
        if (raw_dir / candidate).exists():
            return raw_dir / candidate
    raise LayoutError(f"{raw_dir} does not look like AffectNet: {what} not found (looked for {', '.join(candidates)})")


def parse(raw_dir: Path) -> ParsedDataset:
    facts = dataset_manifest("affectnet")
    image_dir = find_first(raw_dir, facts["image_dirs"], "the image folder")
    lookup = class_lookup(facts["class_map"])
    groups = facts["landmarks_68_to_5"]
    items: list[Item] = []
    notes: list[str] = []
    unaligned = {"box": 0, "detected": 0}
    for split, file_name in facts["label_files"].items():
        candidates = [f"{d}/{file_name}" if d != "." else file_name for d in facts["label_dirs"]]
        found = [raw_dir / c for c in candidates if (raw_dir / c).is_file()]
        if not found:
            notes.append(f"split {split}: {file_name} is absent, skipped")
            continue
        with open(found[0], newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames and Path(reader.fieldnames[0]).suffix.lower() in IMAGE_SUFFIXES:
                # no header row (some copies of validation.csv): the release's column order
                handle.seek(0)
                reader = csv.DictReader(handle, fieldnames=list(facts["columns"]))
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LayoutError(f"{found[0]} lacks the column(s) {', '.join(missing)}")
            for row in reader:
                name = row["subDirectory_filePath"].strip()
                code = row["expression"].strip()
                if code not in lookup:
                    raise LayoutError(f"{found[0]}: unknown expression code {code!r} for {name}")
                path = image_dir / name
                item = Item(id=name, source=path.relative_to(raw_dir).as_posix(), split=split,
                            label=-1 if lookup[code] is None else lookup[code])
                if lookup[code] is None:
                    item.status, item.reason = EXCLUDED, f"expression code {code} is not one of the 8 classes"
                elif not path.is_file():
                    item.status, item.reason = MISSING, missing_reason(path, "the csv")
                else:
                    item.landmarks = parse_landmarks(row["facial_landmarks"] or "", groups)
                    if item.landmarks is None:  # the csv's face box, else the face found in the photo
                        item.box = parse_box(row)
                        item.detect = item.box is None
                        unaligned["box" if item.box else "detected"] += 1
                items.append(item)
    if not items:
        raise LayoutError(f"{raw_dir} does not look like AffectNet: neither training.csv nor validation.csv was found")
    if unaligned["box"]:
        notes.append(f"{unaligned['box']} rows have no usable facial_landmarks: their face box (face_x, face_y, "
                     "face_width, face_height) is cropped and resized, not aligned")
    if unaligned["detected"]:
        notes.append(f"{unaligned['detected']} rows have neither usable facial_landmarks nor a face box: their faces "
                     "are detected (the largest in the photo)")
    return ParsedDataset("affectnet", "manually annotated", items, facts["num_classes"], facts["grayscale"],
                         facts["detect"], notes, expected_counts(facts))
