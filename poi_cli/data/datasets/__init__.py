"""Dataset parsers, one per official layout: `parse_dataset(name, raw_dir)`.

Each returns a ParsedDataset (see common.py); poi_cli.data.prepare turns it into a store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from poi_cli.data.datasets import affectnet, ckplus, ferplus, folders, rafdb
from poi_cli.data.datasets.common import EXCLUDED, MISSING, PENDING, Item, LayoutError, ParsedDataset, dataset_manifest

PARSERS: dict[str, Callable[[Path], ParsedDataset]] = {
    "raf-db": rafdb.parse,
    "ferplus": ferplus.parse,
    "affectnet": affectnet.parse,
    "ckplus": ckplus.parse,
    "sfew": folders.parse_sfew,
    "folder": folders.parse_folder,
}
DATASET_NAMES = tuple(PARSERS)

__all__ = ["DATASET_NAMES", "EXCLUDED", "MISSING", "PENDING", "Item", "LayoutError", "ParsedDataset",
           "dataset_manifest", "parse_dataset"]


def parse_dataset(name: str, raw_dir: str | Path) -> ParsedDataset:
    """Read the labels and layout of `raw_dir` (read only) for dataset `name`."""
    if name not in PARSERS:
        raise LayoutError(f"unknown dataset {name!r} (choose from: {', '.join(DATASET_NAMES)})")
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise LayoutError(f"RAW_DIR {raw_dir} is not a directory")
    return PARSERS[name](raw_dir)
