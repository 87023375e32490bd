"""CK+: the official cohn-kanade-images + Emotion layout, or the CK+48 class folders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from poi_cli.data.datasets.common import (
    Item, LayoutError, ParsedDataset, class_lookup, dataset_manifest, five_from_68, list_images, relative,
)
from poi_cli.data.datasets.folders import parse_ck48
from poi_cli.data.folds import SUBJECT_COLUMN


def read_68(path: Path) -> np.ndarray | None:
    try:
        points = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except (OSError, ValueError):
        return None
    return points if points.shape == (68, 2) else None


def parse_official(raw_dir: Path) -> ParsedDataset:
    facts = dataset_manifest("ckplus")
    layout = facts["layouts"]["official"]
    images_root, emotion_root = raw_dir / layout["images"], raw_dir / layout["emotions"]
    if not emotion_root.is_dir():
        raise LayoutError(f"{raw_dir} does not look like CK+: {layout['emotions']}/ is missing (it holds the labels)")
    landmark_root = raw_dir / layout["landmarks"]
    lookup = class_lookup(layout["class_map"])
    neutral = lookup["0"]
    subject = re.compile(facts["subject_pattern"])
    items: list[Item] = []
    skipped_codes: dict[str, int] = {}
    without_frames: list[str] = []
    for emotion_file in sorted(emotion_root.glob("S*/*/*_emotion.txt")):
        sequence = emotion_file.parent.relative_to(emotion_root)
        try:
            code = str(int(float(emotion_file.read_text().split()[0])))
        except (OSError, ValueError, IndexError):
            raise LayoutError(f"{relative(emotion_file, raw_dir)} does not hold an emotion code") from None
        if code not in lookup:
            raise LayoutError(f"{relative(emotion_file, raw_dir)}: unknown emotion code {code}")
        if lookup[code] is None:
            skipped_codes[code] = skipped_codes.get(code, 0) + 1
            continue
        # the sequence's frames in order: peak and neutral frames are counted among files (a FIFO
        # named as a frame must not take a real frame's place; a broken link still gets its row)
        frames = ([p for p in list_images(images_root / sequence) if p.is_file() or p.is_symlink()]
                  if (images_root / sequence).is_dir() else [])
        if not frames:  # a labelled sequence whose frames are not there: left out and counted, the rest goes on
            without_frames.append(sequence.as_posix())
            continue
        peak = frames[-layout["peak_frames"]:]
        first = [f for f in frames[: layout["neutral_frames"]] if f not in peak]
        for path, label in [(p, neutral) for p in first] + [(p, lookup[code]) for p in peak]:
            source = relative(path, raw_dir)
            match = subject.match(path.name)
            item = Item(id=source, source=source, split="train", label=label,
                        extra={SUBJECT_COLUMN: match.group(1) if match else sequence.parts[0]})
            points = read_68(landmark_root / sequence / f"{path.stem}_landmarks.txt")
            if points is not None:
                item.landmarks = five_from_68(points, facts["landmarks_68_to_5"])
            items.append(item)
    if not items:
        found = (f"the {len(without_frames)} labelled sequences have no frames under {layout['images']}/"
                 if without_frames else f"no S*/<sequence>/*_emotion.txt under {layout['emotions']}/")
        raise LayoutError(f"{raw_dir} does not look like CK+: {found}")
    notes = [layout["note"]]
    if without_frames:
        notes.append(f"{len(without_frames)} labelled sequences have no frames under {layout['images']}/ and are left "
                     f"out (the first: {without_frames[0]})")
    if skipped_codes:
        notes.append(f"{sum(skipped_codes.values())} contempt sequences left out (7-class protocol)")
    with_landmarks = sum(item.landmarks is not None for item in items)
    detect = layout["detect"] and with_landmarks < len(items)
    return ParsedDataset("ckplus", "official", items, layout["num_classes"], facts["grayscale"], detect,
                         notes, {}, [SUBJECT_COLUMN])


def parse(raw_dir: Path) -> ParsedDataset:
    layouts = dataset_manifest("ckplus")["layouts"]
    official = layouts["official"]
    if (raw_dir / official["images"]).is_dir() or (raw_dir / official["emotions"]).is_dir():
        return parse_official(raw_dir)
    deeper = [p for p in sorted(raw_dir.iterdir()) if p.is_dir() and (p / official["emotions"]).is_dir()]
    if deeper:  # the archive unpacked one folder down (RAW/CK+/cohn-kanade-images): not CK+48's class folders
        raise LayoutError(f"{raw_dir} holds CK+ one folder down: give {deeper[0]} as RAW_DIR")
    if not any(p.is_dir() for p in raw_dir.iterdir()):
        raise LayoutError(
            f"{raw_dir} does not look like CK+: neither {official['images']}/ with {official['emotions']}/ (official layout) "
            f"nor {layouts['ck+48']['folder']}/ class folders were found"
        )
    return parse_ck48(raw_dir)
