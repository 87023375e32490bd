"""AffectNet manually annotated images: the original release (training.csv / validation.csv with
Manually_Annotated_Images/) or the newer one (train_set/, val_set/: images/ with per-image .npy
annotations)."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from poi_cli.core.schema import STATUS_ERROR
from poi_cli.data.datasets.common import (
    EXCLUDED, IMAGE_SUFFIXES, MISSING, Item, LayoutError, ParsedDataset, class_lookup, counted, dataset_manifest,
    expected_counts, five_from_68, list_images, missing_reason, relative,
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


def label_file(raw_dir: Path, facts: dict, file_name: str) -> Path | None:
    """Where the csv `file_name` is (the top of RAW_DIR or a label_dirs folder), None where absent."""
    candidates = [f"{d}/{file_name}" if d != "." else file_name for d in facts["label_dirs"]]
    return next((raw_dir / c for c in candidates if (raw_dir / c).is_file()), None)


def parse(raw_dir: Path) -> ParsedDataset:
    facts = dataset_manifest("affectnet")
    npy = facts["npy_layout"]
    sets = [name for name in npy["splits"].values() if (raw_dir / name / npy["annotations"]).is_dir()]
    if any(label_file(raw_dir, facts, name) for name in facts["label_files"].values()):
        parsed = parse_csv(raw_dir, facts)
        if sets:
            parsed.notes.insert(0, f"both releases' layouts are here: training.csv/validation.csv were read, "
                                   f"{' and '.join(f'{name}/' for name in sets)} not (give a folder that holds "
                                   "only the newer release to read it)")
        return parsed
    if sets:
        return parse_npy(raw_dir, facts)
    sets_text = " or ".join(f"{name}/" for name in npy["splits"].values())
    raise LayoutError(
        f"{raw_dir} does not look like AffectNet: neither the original release ({' or '.join(facts['label_files'].values())}, "
        f"at the top or in {facts['label_dirs'][1]}/, with the image folder {facts['image_dirs'][0]}/) nor the newer "
        f"one ({sets_text}, each with {npy['images']}/ and {npy['annotations']}/) was found")


def parse_csv(raw_dir: Path, facts: dict) -> ParsedDataset:
    """The original release: training.csv / validation.csv and Manually_Annotated_Images/."""
    image_dir = find_first(raw_dir, facts["image_dirs"], "the image folder")
    lookup = class_lookup(facts["class_map"])
    groups = facts["landmarks_68_to_5"]
    items: list[Item] = []
    notes: list[str] = []
    unaligned: dict[str, list[str]] = {"box": [], "detected": []}  # the splits of such rows
    seen: set[str] = set()  # over both files: an image in both would be trained and validated on
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
                if not name or Path(name).is_absolute() or ".." in Path(name).parts:
                    # a file of the image folder: `../x.jpg` or `/data/x.jpg` would read a photo from elsewhere
                    raise LayoutError(f"{found[0]}: line {reader.line_num} names {name!r}, not a file of {image_dir.name}/")
                if name in seen:
                    raise LayoutError(f"{found[0]}: line {reader.line_num} lists {name} again (each image once)")
                seen.add(name)
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
                        unaligned["box" if item.box else "detected"].append(split)
                items.append(item)
    if not items:
        raise LayoutError(f"{raw_dir} does not look like AffectNet: neither training.csv nor validation.csv was found")
    if unaligned["box"]:
        notes.append(f"{counted(unaligned['box'], 'rows')} have no usable facial_landmarks: their face box "
                     "(face_x, face_y, face_width, face_height) is cropped and resized, not aligned")
    if unaligned["detected"]:
        notes.append(f"{counted(unaligned['detected'], 'rows')} have neither usable facial_landmarks nor a face box")
    return ParsedDataset("affectnet", "manually annotated", items, facts["num_classes"], facts["grayscale"],
                         facts["detect"], notes, expected_counts(facts))


# The newer release: <set>/images/<n>.jpg (224x224 face crops) and <set>/annotations/<n>_exp.npy,
# <n>_lnd.npy (and _val, _aro, not read). The .npy files are user-supplied: read with
# allow_pickle=False, each one's failure is its image's reason, never the run's.
MAX_ANNOTATION_BYTES = 1 << 20  # a 136-value array of strings is ~11 KiB; anything far larger is no annotation


def read_npy(path: Path) -> np.ndarray:
    """The array in one .npy annotation; ValueError (a one-line reason) where it is not a plain one."""
    if not path.is_file():
        raise ValueError("not a regular file")
    if path.stat().st_size > MAX_ANNOTATION_BYTES:
        raise ValueError(f"larger than {MAX_ANNOTATION_BYTES} bytes")
    try:
        loaded = np.load(path, allow_pickle=False)  # an object (pickled) array is refused here, never unpickled
    except Exception as error:  # not a .npy, truncated, a bad header, an object array: this item's reason
        raise ValueError(" ".join(str(error).split())[:200] or type(error).__name__) from None
    if not isinstance(loaded, np.ndarray):  # a .npz (zip) archive under a .npy name
        loaded.close()
        raise ValueError("an .npz archive, not a .npy array")
    return loaded


def npy_text(array: np.ndarray) -> str | None:
    """The one string a 0-d or 1-element string array holds (numpy str or bytes), None for other arrays."""
    if array.dtype.kind not in "US" or array.size != 1:
        return None
    value = array.reshape(-1)[0]
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()


def read_expression(path: Path, lookup: dict[str, int | None]) -> str:
    """The class_map code ('0' .. '10') of an _exp.npy: a number or a numpy string; ValueError otherwise."""
    array = read_npy(path)
    if array.size != 1:
        raise ValueError(f"holds {array.size} values, not one expression code")
    text = npy_text(array)
    if text is None:
        if array.dtype.kind not in "iuf":
            raise ValueError(f"holds {array.dtype} values, not an expression code")
        text = str(array.reshape(-1)[0].item())
    if text not in lookup:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None or not number.is_integer() or str(int(number)) not in lookup:
            raise ValueError(f"expression code {text[:20]!r} is none of {', '.join(lookup)}")
        text = str(int(number))
    return text


def read_landmarks(path: Path, groups: dict[str, list[int]]) -> np.ndarray:
    """Five points from an _lnd.npy's 68 (136 values, numbers or numpy strings); ValueError where unusable."""
    array = read_npy(path)
    text = npy_text(array)
    if text is not None:  # the 136 values in one string, as the csv writes them
        points = parse_landmarks(text, groups)
        if points is None:
            raise ValueError("its string is not 136 numbers")
        return points
    if array.size != 136 or array.dtype.kind not in "iufUS":
        raise ValueError(f"holds {array.size} {array.dtype} values, not 136 numbers")
    values = array.reshape(-1).astype(np.float64)  # numpy strings of numbers convert; others raise ValueError
    if not np.isfinite(values).all():
        raise ValueError("holds values that are not finite")
    return five_from_68(values.reshape(68, 2), groups)


def natural(path: Path) -> tuple:
    """0.jpg, 1.jpg, 2.jpg, ..., 10.jpg: the release numbers its images."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def parse_npy(raw_dir: Path, facts: dict) -> ParsedDataset:
    """The newer release: train_set/ and val_set/, each with images/ and annotations/ (<n>_exp.npy, <n>_lnd.npy)."""
    npy = facts["npy_layout"]
    lookup = class_lookup(facts["class_map"])
    groups = facts["landmarks_68_to_5"]
    items: list[Item] = []
    notes: list[str] = []
    unaligned: dict[str, list[str]] = {"absent": [], "unusable": []}  # the splits of such images
    example = ""
    for split, set_name in npy["splits"].items():
        annotations = raw_dir / set_name / npy["annotations"]
        images = raw_dir / set_name / npy["images"]
        if not annotations.is_dir():
            notes.append(f"split {split}: {set_name}/{npy['annotations']}/ is absent, skipped")
            continue
        if not images.is_dir():
            raise LayoutError(f"{raw_dir / set_name} holds {npy['annotations']}/ but not {npy['images']}/")
        names = {entry.name for entry in os.scandir(annotations)}
        on_disk = sorted(list_images(images), key=natural)
        stems = {path.stem for path in on_disk}
        orphans = sorted((name[: -len(npy["expression"])] for name in names
                          if name.endswith(npy["expression"]) and not name.startswith(".")
                          and name[: -len(npy["expression"])] not in stems),
                         key=lambda stem: natural(Path(stem)))
        suffix = on_disk[0].suffix if on_disk else ".jpg"
        for path in [*on_disk, *(images / f"{stem}{suffix}" for stem in orphans)]:
            stem, source = path.stem, relative(path, raw_dir)
            item = Item(id=source, source=source, split=split, label=-1)
            exp = annotations / f"{stem}{npy['expression']}"
            where = relative(exp, raw_dir)
            if exp.name not in names:
                item.status, item.reason = MISSING, f"its expression annotation {where} is not on disk"
                items.append(item)
                continue
            try:
                code = read_expression(exp, lookup)
            except (OSError, ValueError) as error:
                code, problem = None, f"{where} is unusable: {error}"
            if stem not in stems:  # an _exp.npy without its image: missing, unless its code is excluded anyway
                if code is not None and lookup[code] is None:
                    item.status, item.reason = EXCLUDED, f"expression code {code} is not one of the 8 classes"
                else:
                    item.label = -1 if code is None else lookup[code]
                    item.status, item.reason = MISSING, f"annotated in {where} but no image {stem}.* is on disk"
                items.append(item)
                continue
            if code is None:
                item.status, item.reason = STATUS_ERROR, problem
                items.append(item)
                continue
            if lookup[code] is None:
                item.status, item.reason = EXCLUDED, f"expression code {code} is not one of the 8 classes"
                items.append(item)
                continue
            item.label = lookup[code]
            lnd = annotations / f"{stem}{npy['landmarks']}"
            if lnd.name not in names:
                unaligned["absent"].append(split)
            else:
                try:
                    item.landmarks = read_landmarks(lnd, groups)
                except (OSError, ValueError) as error:
                    unaligned["unusable"].append(split)
                    example = example or f"{relative(lnd, raw_dir)}: {error}"
            items.append(item)
    if not items:
        raise LayoutError(f"{raw_dir} does not look like AffectNet: its {npy['annotations']}/ folders hold no "
                          f"*{npy['expression']} file and its {npy['images']}/ folders no image")
    if unaligned["absent"]:
        notes.append(f"{counted(unaligned['absent'], 'images')} have no {npy['landmarks']} file: already face crops, "
                     "they are resized whole, not aligned")
    if unaligned["unusable"]:
        notes.append(f"{counted(unaligned['unusable'], 'images')} have an unusable {npy['landmarks']} file "
                     f"(e.g. {example}): already face crops, they are resized whole, not aligned")
    return ParsedDataset("affectnet", "train_set/val_set", items, facts["num_classes"], facts["grayscale"],
                         facts["detect"], notes, expected_counts(facts))
