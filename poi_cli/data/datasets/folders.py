"""Datasets laid out as one folder per class: SFEW 2.0, CK+48 and `folder` (your own)."""

from __future__ import annotations

import re
from pathlib import Path

from poi_cli.data.datasets.common import (
    Item, LayoutError, ParsedDataset, class_lookup, dataset_manifest, expected_counts, list_images, relative,
)
from poi_cli.core.manifests import CLASSES
from poi_cli.data.folds import SUBJECT_COLUMN


def class_folder_items(
    raw_dir: Path, split_dir: Path, split: str, lookup: dict[str, int | None], what: str, id_root: Path | None = None,
    recursive: bool = False,
) -> list[Item]:
    """Items of every class folder under split_dir; an unknown folder name is an error.

    Ids are paths relative to id_root (default RAW_DIR), sources relative to RAW_DIR.
    recursive: a class folder's sub-folders hold its images too (a user's own tree, `folder`).
    """
    folders = visible_folders(split_dir)
    if not folders:
        raise LayoutError(f"{raw_dir} does not look like {what}: {relative(split_dir, raw_dir) or '.'} has no class folders")
    by_name = {name.lower(): label for name, label in lookup.items()}  # Happy, happy and HAPPY alike
    items = []
    for folder in folders:
        key = folder.name.lower()
        if key not in by_name:
            names = ", ".join(sorted(lookup))
            raise LayoutError(f"{relative(folder, raw_dir)}/: unknown class folder for {what} (expected one of: {names})")
        label = by_name[key]
        if label is None:
            continue
        for path in list_images(folder, recursive):
            items.append(Item(id=relative(path, id_root or raw_dir), source=relative(path, raw_dir), split=split, label=label))
    return items


def visible_folders(folder: Path) -> list[Path]:
    """The sub-folders of `folder`, sorted; hidden ones and archive debris (__MACOSX) are none."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def below_wrappers(split_dir: Path, lookup: dict[str, int | None]) -> Path:
    """The folder that holds the class folders: split_dir, or the folder reached through those
    that hold a single non-class folder (the release's zips unpack to Train/Train_Aligned_Faces/
    and Val/Val_Aligned_Faces_new/Val_Aligned_Faces/)."""
    classes = {name.lower() for name in lookup}
    while (len(inside := visible_folders(split_dir)) == 1 and inside[0].name.lower() not in classes
           and visible_folders(inside[0])):  # a lone folder of images is an unknown class, said so by the caller
        split_dir = inside[0]
    return split_dir


def parse_sfew(raw_dir: Path) -> ParsedDataset:
    facts = dataset_manifest("sfew")
    lookup = class_lookup(facts["class_map"])
    items: list[Item] = []
    notes: list[str] = []
    for split, info in facts["splits"].items():
        split_dir = raw_dir / info["folder"]
        if not split_dir.is_dir():
            notes.append(f"split {split}: {info['folder']}/ is absent, skipped")
            continue
        items += class_folder_items(raw_dir, below_wrappers(split_dir, lookup), split, lookup, "SFEW 2.0")
    if not items:
        raise LayoutError(f"{raw_dir} does not look like SFEW 2.0: Train/ and Val/ with class folders are missing")
    return ParsedDataset("sfew", "aligned", items, facts["num_classes"], facts["grayscale"], facts["detect"],
                         notes, expected_counts(facts))


def parse_ck48(raw_dir: Path) -> ParsedDataset:
    """CK+48: RAW_DIR is the CK+48 folder or holds it."""
    facts = dataset_manifest("ckplus")
    layout = facts["layouts"]["ck+48"]
    root = raw_dir / layout["folder"] if (raw_dir / layout["folder"]).is_dir() else raw_dir
    # Ids relative to the CK+48 folder itself, whichever of the two RAW_DIRs was given.
    items = class_folder_items(raw_dir, root, "train", class_lookup(layout["class_map"]), "CK+48", id_root=root)
    subject = re.compile(facts["subject_pattern"])
    for item in items:
        match = subject.match(Path(item.source).name)
        item.extra[SUBJECT_COLUMN] = match.group(1) if match else ""
    return ParsedDataset("ckplus", "ck+48", items, layout["num_classes"], facts["grayscale"], layout["detect"],
                         [layout["note"]], expected_counts(facts), [SUBJECT_COLUMN])


def parse_folder(raw_dir: Path) -> ParsedDataset:
    """RAW_DIR/<class>/ or RAW_DIR/<split>/<class>/; a class folder's sub-folders hold its images too."""
    facts = dataset_manifest("folder")
    lookup = class_lookup(facts["class_map"])
    split_names: dict[str, str] = facts["split_names"]
    top = visible_folders(raw_dir)
    if not top:
        raise LayoutError(f"{raw_dir} has no sub-folders: `folder` expects one sub-folder per class (e.g. happy/, sad/)")
    if all(p.name.lower() in split_names for p in top):
        items = []
        for split_dir in top:
            items += class_folder_items(raw_dir, split_dir, split_names[split_dir.name.lower()], lookup, "a class-folder tree",
                                        recursive=True)
    else:
        items = class_folder_items(raw_dir, raw_dir, "train", lookup, "a class-folder tree", recursive=True)
    if not items:
        raise LayoutError(f"{raw_dir}: the class folders hold no images")
    has_contempt = any(item.label == CLASSES.index("contempt") for item in items)
    return ParsedDataset("folder", "class folders", items, 8 if has_contempt else 7, facts["grayscale"], facts["detect"])
