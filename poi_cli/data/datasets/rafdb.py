"""RAF-DB basic: EmoLabel/list_patition_label.txt with Image/aligned or Image/original."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poi_cli.data.datasets.common import (
    MISSING, Item, LayoutError, ParsedDataset, class_lookup, counted, dataset_manifest, expected_counts, missing_reason,
)


def read_landmarks(path: Path) -> np.ndarray | None:
    """The five 'x y' lines that open a *_manu_attri.txt file; None if unusable."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")[:5]
        points = np.array([[float(v) for v in line.split()[:2]] for line in lines], dtype=np.float32)
    except (OSError, ValueError):
        return None
    return points if points.shape == (5, 2) else None


def parse(raw_dir: Path) -> ParsedDataset:
    facts = dataset_manifest("raf-db")
    names = [facts["label_file"], *facts.get("label_file_aliases", [])]
    label_file = next((raw_dir / name for name in names if (raw_dir / name).is_file()), None)
    if label_file is None:
        inside = raw_dir / "basic"
        hint = f" (RAW_DIR is the release's basic/ folder: give {inside})" if any((inside / n).is_file() for n in names) else ""
        raise LayoutError(f"{raw_dir} does not look like RAF-DB basic: {names[0]} is missing{hint}")
    layouts = facts["layouts"]
    if (raw_dir / layouts["aligned"]["images"]).is_dir():
        layout_name = "aligned"
    elif (raw_dir / layouts["original"]["images"]).is_dir():
        layout_name = "original"
    else:
        zipped = [f"{layouts[name]['images']}.zip" for name in ("aligned", "original")
                  if (raw_dir / f"{layouts[name]['images']}.zip").is_file()]
        hint = f" ({' and '.join(zipped)} must be unzipped where they are first)" if zipped else ""
        raise LayoutError(
            f"{raw_dir} does not look like RAF-DB basic: neither {layouts['aligned']['images']}/ nor "
            f"{layouts['original']['images']}/ exists{hint}"
        )
    layout = layouts[layout_name]
    images = raw_dir / layout["images"]
    landmark_dir = raw_dir / layout["landmarks"] if "landmarks" in layout else None
    lookup = class_lookup(facts["class_map"])
    prefixes = {info["prefix"]: split for split, info in facts["splits"].items()}
    items: list[Item] = []
    seen: set[str] = set()
    for line_number, line in enumerate(label_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in lookup:
            raise LayoutError(f"{label_file}: line {line_number} is not '<image> <label 1..7>': {line.strip()!r}")
        name = fields[0]
        if name in seen:  # two rows of one id, perhaps with two labels: one face stored twice
            raise LayoutError(f"{label_file}: line {line_number} lists {name} again (each image once)")
        seen.add(name)
        split = next((s for prefix, s in prefixes.items() if name.startswith(prefix)), None)
        if split is None:
            raise LayoutError(f"{label_file}: line {line_number}: image name {name!r} starts with neither train_ nor test_")
        stem, suffix = Path(name).stem, Path(name).suffix
        path = images / f"{stem}{layout.get('suffix', '')}{suffix}"
        item = Item(id=name, source=path.relative_to(raw_dir).as_posix(), split=split, label=lookup[fields[1]])
        if not path.is_file():
            item.status, item.reason = MISSING, missing_reason(path, "the label file")
        elif landmark_dir is not None:
            item.landmarks = read_landmarks(landmark_dir / f"{stem}{layout['landmark_suffix']}")
            item.detect = item.landmarks is None  # a whole photo: its face is found, not the photo resized
        items.append(item)
    notes = []
    if layout_name == "original" and landmark_dir is not None:
        without = [item.split for item in items if item.status != MISSING and item.landmarks is None]
        if without:
            notes.append(f"{counted(without, 'original images')} have no landmark file in {layout['landmarks']}/ "
                         "(is Annotation/manual.zip unzipped?)")
    return ParsedDataset("raf-db", layout_name, items, facts["num_classes"], facts["grayscale"], layout["detect"],
                         notes, expected_counts(facts))
