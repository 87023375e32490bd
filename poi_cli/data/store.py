"""The prepared-dataset store that `poi prepare` writes and training reads.

OUT_DIR/
  prepared.json  metadata: format, dataset, size, num_classes, classes, grayscale, splits
  manifest.csv   one row per input image (see MANIFEST_COLUMNS); extra columns allowed
                 (FERPlus: vote_<class> columns)
  faces.npy      uint8 array (rows, size, size, 3) in .npy format, memory-mapped on read;
                 row `store_index` of the manifest (-1 when the image gave no face)

Label files (written by `poi noise`, read by `poi train --labels`): CSV with columns
`id,label,label_name` and, when known, `clean_label` (see LABEL_COLUMNS); a row per
image of the split, keyed by the manifest's stable `id`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

META_FILE = "prepared.json"
MANIFEST_FILE = "manifest.csv"
FACES_FILE = "faces.npy"
STORE_FORMAT = 1
MANIFEST_COLUMNS = (
    "id", "source", "split", "label", "label_name", "status", "reason", "det_score",
    "box_x1", "box_y1", "box_x2", "box_y2",
    *(f"lm_{axis}{i}" for i in range(5) for axis in "xy"),
    "n_faces", "store_index",
)
LABEL_COLUMNS = ("id", "label", "label_name", "clean_label")
STATUS_OK = "ok"


class StoreError(ValueError):
    """A prepared folder that cannot be read; the message says what is wrong in one line."""


@dataclass
class SplitData:
    """The usable faces of one split: rows of faces.npy, labels, ids (same order)."""

    store_rows: np.ndarray  # int64 rows into PreparedDataset.faces
    labels: np.ndarray  # int64 canonical class indices (annotated labels)
    ids: np.ndarray  # str, the manifest's stable ids
    clean_labels: np.ndarray | None = None  # int64 when a label file carried them


class PreparedDataset:
    """Read access to a prepared folder; faces stay on disk (memory-mapped)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for name in (META_FILE, MANIFEST_FILE, FACES_FILE):
            if not (self.root / name).is_file():
                raise StoreError(f"{self.root} is not a prepared dataset folder ({name} is missing; run `poi prepare` first)")
        self.meta: dict = json.loads((self.root / META_FILE).read_text())
        if self.meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.root}: unsupported store format {self.meta.get('format')!r} (expected {STORE_FORMAT})")
        self.manifest = pd.read_csv(self.root / MANIFEST_FILE, dtype={"id": str, "source": str, "split": str})
        self.faces = np.load(self.root / FACES_FILE, mmap_mode="r")

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def grayscale(self) -> bool:
        return bool(self.meta.get("grayscale", False))

    def splits(self) -> list[str]:
        usable = self.manifest[self.manifest["status"] == STATUS_OK]
        return sorted(usable["split"].unique())

    def split(self, split: str, labels_file: str | Path | None = None) -> SplitData:
        """The faces of `split` with status ok; labels from `labels_file` when given."""
        rows = self.manifest[(self.manifest["split"] == split) & (self.manifest["status"] == STATUS_OK)]
        if rows.empty:
            available = ", ".join(self.splits()) or "none"
            raise StoreError(f"{self.root} has no usable faces in split {split!r} (splits with faces: {available})")
        data = SplitData(
            store_rows=rows["store_index"].to_numpy(np.int64),
            labels=rows["label"].to_numpy(np.int64),
            ids=rows["id"].to_numpy(str),
        )
        if labels_file is not None:
            data = apply_label_file(data, labels_file)
        return data


def read_label_file(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"label file not found: {path}")
    table = pd.read_csv(path, dtype={"id": str})
    if not {"id", "label"} <= set(table.columns):
        raise StoreError(f"{path} is not a label file: it needs columns id and label (has {', '.join(table.columns)})")
    return table


def apply_label_file(data: SplitData, path: str | Path) -> SplitData:
    """Replace the labels of `data` by those of a label file, matched on id.

    The manifest's own labels become the clean labels unless the file carries
    clean_label. Every image of the split must be in the file.
    """
    table = read_label_file(path).set_index("id")
    missing = [i for i in data.ids if i not in table.index]
    if missing:
        raise StoreError(f"{path} lacks labels for {len(missing)} images of the split (first: {missing[0]})")
    chosen = table.loc[data.ids]
    clean = chosen["clean_label"].to_numpy(np.int64) if "clean_label" in chosen else data.labels
    return SplitData(data.store_rows, chosen["label"].to_numpy(np.int64), data.ids, clean)
