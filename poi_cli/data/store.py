"""The prepared-dataset store that `poi prepare` writes and training reads: its reader
(PreparedDataset) and its writer (StoreWriter, write_store), side by side.

OUT_DIR/
  prepared.json  metadata: format, dataset, size, num_classes, classes, grayscale, splits,
                 preprocessing (Preprocessing.to_dict(); stores written before it existed
                 lack it and derive it from size and grayscale)
  manifest.csv   one row per input image (see MANIFEST_COLUMNS); extra columns allowed
                 (FERPlus: vote_<class> columns)
  faces.npy      uint8 array (rows, size, size, 3) in .npy format, memory-mapped on read;
                 row `store_index` of the manifest (-1 when the image gave no face)

A combined folder (`poi combine`, data/combined.py) has no faces.npy: its prepared.json
names the prepared folders whose faces it reads (PreparedDataset.members).

Label files (written by `poi noise`, read by `poi train --labels`): CSV with columns
`id,label,label_name` and, when known, `clean_label` (see LABEL_COLUMNS); a row per
image of the split, keyed by the manifest's stable `id`.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from poi_cli.core.errors import PoiError
from poi_cli.core.atomic import atomic_write_text
from poi_cli.core.layout import FACES_FILE, MANIFEST_FILE, META_FILE
from poi_cli.core.schema import LANDMARK_NAMES, STATUS_OK
from poi_cli.data.duplicates import DIGEST_COLUMN, store_digests
from poi_cli.data.folds import FOLD_COLUMN, SUBJECT_COLUMN, fold_split_name, parse_fold_split
from poi_cli.data.preprocess import Preprocessing

STORE_FORMAT = 1
MANIFEST_COLUMNS = (
    "id", "source", "split", "label", "label_name", "status", "reason", "det_score",
    "box_x1", "box_y1", "box_x2", "box_y2",
    *(f"lm_{axis}{i}" for i in range(len(LANDMARK_NAMES)) for axis in "xy"),  # lm_x<i>: LANDMARK_NAMES[i]
    "n_faces", "store_index",
    DIGEST_COLUMN,  # a hash of the stored face's pixels; absent from folders of older poi
)
LABEL_COLUMNS = ("id", "label", "label_name", "clean_label")
VALIDATION_SPLITS = ("valid", "val")  # in order of preference; test is never one
DROPPED_LABEL = -1  # in a label file: leave this image out of training (poi clean --drop)


def label_names(labels: Sequence[int], classes: Sequence[str]) -> list[str]:
    """The label_name column of a label file: the class name, empty for DROPPED_LABEL."""
    return [classes[k] if k >= 0 else "" for k in labels]


class StoreError(PoiError):
    """A prepared folder that cannot be read; the message says what is wrong in one line."""


def cell_text(value: Any) -> str:
    """A manifest cell as its file shows it, for a message: text quoted, numbers plain (5000,
    not the np.int64(5000) that repr gives a pandas cell), an empty cell as "empty"."""
    if isinstance(value, str):
        return repr(value)
    if pd.isna(value):
        return "empty"
    value = value.item() if isinstance(value, np.generic) else value
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


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
        for name in (META_FILE, MANIFEST_FILE):
            if not (self.root / name).is_file():
                raise StoreError(f"{self.root} is not a prepared dataset folder ({name} is missing; run `poi prepare` first)")
        # Checked once, here, where a prepared folder enters: every failure is one line naming
        # the file and what is wrong (a truncated faces.npy, a manifest without its columns...).
        try:
            self.meta: dict = json.loads((self.root / META_FILE).read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise StoreError(f"{self.root / META_FILE} is not valid JSON ({str(error).splitlines()[0]})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != STORE_FORMAT:
            found = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise StoreError(f"{self.root}: unsupported store format {found!r} (expected {STORE_FORMAT})")
        if not isinstance(self.meta.get("classes"), list) or not self.meta["classes"]:
            raise StoreError(f"{self.root / META_FILE} names no classes: prepare the folder again")
        try:
            self.manifest = pd.read_csv(self.root / MANIFEST_FILE, dtype={"id": str, "source": str, "split": str, "reason": str,
                                                                          DIGEST_COLUMN: str})
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
            raise StoreError(f"{self.root / MANIFEST_FILE} is not a readable CSV ({str(error).splitlines()[0]})") from None
        missing = [c for c in ("id", "split", "label", "status", "store_index") if c not in self.manifest.columns]
        if missing:
            raise StoreError(f"{self.root / MANIFEST_FILE} lacks the column(s) {', '.join(missing)}: prepare the folder again")
        repeated = self.manifest["id"][self.manifest["id"].duplicated()]
        if len(repeated):
            raise StoreError(f"{self.root / MANIFEST_FILE}: id {repeated.iloc[0]!r} appears more than once "
                             f"({repeated.size} repeated ids): prepare the folder again")
        self.members: list = []  # data/combined.py: the prepared folders a combined folder reads its faces from
        if "members" in self.meta:
            from poi_cli.data.combined import open_members

            self.members, self.faces = open_members(self.root, self.meta)
            return
        if not (self.root / FACES_FILE).is_file():
            raise StoreError(f"{self.root} is not a prepared dataset folder ({FACES_FILE} is missing; run `poi prepare` first)")
        try:
            self.faces = np.load(self.root / FACES_FILE, mmap_mode="r")
        except (ValueError, OSError, EOFError) as error:
            raise StoreError(f"{self.root / FACES_FILE} is not a readable face store "
                             f"({str(error).splitlines()[0] if str(error) else type(error).__name__}): prepare the folder again") from None
        if not isinstance(self.faces, np.ndarray):  # np.load opens a zip (a checkpoint, an .npz) as NpzFile
            raise StoreError(f"{self.root / FACES_FILE} is not a readable face store (a zip archive, not one array): "
                             "prepare the folder again")
        if self.faces.ndim != 4 or self.faces.shape[-1] != 3 or self.faces.dtype != np.uint8:
            raise StoreError(f"{self.root / FACES_FILE} holds {self.faces.dtype} {self.faces.shape}, "
                             "not uint8 faces (N, S, S, 3): prepare the folder again")

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @cached_property
    def face_digests(self) -> pd.Series:
        """The digest of every usable face, by store_index (data/duplicates.py), computed once."""
        return store_digests(self)

    @property
    def labelled_classes(self) -> list[str]:
        """The classes this folder's dataset can label, in class order: `classes` but for a hole
        its layout leaves in the label space (CK+48 labels no neutral face); all of them for a
        folder of several datasets or of a layout poi has no facts for."""
        from poi_cli.data.datasets.common import labelled_classes

        labelled = labelled_classes(str(self.meta.get("dataset")), self.meta.get("layout")) if not self.members else None
        return [name for name in self.classes if labelled is None or name in labelled]

    def vote_targets(self, data: SplitData) -> Optional[np.ndarray]:
        """(images, num_classes) float32: each image's annotator votes over the classes (FERPlus's
        `vote_<class>` manifest columns; a combined folder reads its members'), single votes dropped
        as the majority rule drops them, unknown and NF left out, normalised to sum 1: what
        `poi train --soft-labels` trains on. An image without votes (another member's) gets its
        label as a one-hot. None when no image of `data` has votes."""
        from poi_cli.data.datasets.ferplus import VOTE_PREFIX, kept_votes

        columns = [VOTE_PREFIX + name for name in self.classes]
        tables = ([(self.manifest, "")] if not self.members else
                  [(PreparedDataset(m.path).manifest, m.name + "/") for m in self.members])
        votes = pd.concat([pd.DataFrame({"id": prefix + table["id"].astype(str),
                                         **{c: pd.to_numeric(table[c], errors="coerce") if c in table else np.nan
                                            for c in columns}})
                           for table, prefix in tables]).set_index("id").reindex(data.ids).to_numpy(np.float64)
        counts = kept_votes(np.nan_to_num(votes, nan=0.0))
        has_votes = counts.sum(1) > 0  # a FERPlus face with a majority always keeps a vote of its own class
        if not has_votes.any():
            return None
        targets = np.eye(self.num_classes, dtype=np.float64)[data.labels]
        targets[has_votes] = counts[has_votes] / counts[has_votes].sum(1, keepdims=True)
        return targets.astype(np.float32)

    def answer_mask(self, store_rows: np.ndarray) -> np.ndarray:
        """(len(store_rows), num_classes) bool: the classes each face may be answered among, those
        its dataset labels (labelled_classes; on a combined folder its member's own folder's), the
        rule `poi evaluate` scores a member's own folder by. Training's validation reads it."""
        if not self.members:
            allowed = np.isin(self.classes, self.labelled_classes)
            return np.broadcast_to(allowed, (len(store_rows), self.num_classes)).copy()
        from poi_cli.data.combined import member_of_rows

        per_member = np.array([np.isin(self.classes, PreparedDataset(m.path).labelled_classes) for m in self.members])
        return per_member[member_of_rows(self.members, store_rows)]

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def preprocessing(self) -> Preprocessing:
        """How the faces were made (face_size = input_size = the store's size)."""
        if "preprocessing" in self.meta:
            return Preprocessing.from_dict(self.meta["preprocessing"])
        size = int(self.meta["size"])  # a store written before Preprocessing existed
        return Preprocessing(face_size=size, input_size=size, grayscale=bool(self.meta.get("grayscale", False)))

    @property
    def size(self) -> int:
        return self.preprocessing.face_size

    @property
    def grayscale(self) -> bool:
        return self.preprocessing.grayscale

    def splits(self) -> list[str]:
        usable = self.manifest[self.manifest["status"] == STATUS_OK]
        return sorted(name for name in usable["split"].dropna().unique() if name)  # a row without a split is in none

    def validation_split(self, exclude: Optional[str] = None) -> Optional[str]:
        """The split models are selected and calibrated on: valid, else val (never test); None when neither."""
        available = self.splits()
        return next((name for name in VALIDATION_SPLITS if name in available and name != exclude), None)

    @property
    def protocol(self) -> dict[str, Any]:
        """How `poi prepare` partitioned a set without a test split ({} when it did not; see data/folds.py)."""
        return dict(self.meta.get("protocol") or {})

    @property
    def folds(self) -> int:
        """Number of subject-independent folds in the manifest's fold column (0 when none)."""
        return int(self.protocol.get("folds", 0)) if FOLD_COLUMN in self.manifest.columns else 0

    def subjects(self, data: SplitData) -> Optional[np.ndarray]:
        """The subject of each image of `data` (str, "" where unknown), from the manifest's subject
        column (CK+); None when the folder records no subjects."""
        if SUBJECT_COLUMN not in self.manifest.columns:
            return None
        named = self.manifest.set_index("id")[SUBJECT_COLUMN].fillna("").astype(str)
        subjects = named.reindex(data.ids).fillna("").to_numpy(str)
        return subjects if (subjects != "").any() else None

    def fold_splits(self) -> list[str]:
        """The held-out images of each fold as split names: fold0, fold1, ..."""
        return [fold_split_name(k) for k in range(self.folds)]

    def split_names(self) -> list[str]:
        """Every split name split() accepts (so every command's --split: evaluate, report,
        calibrate): the splits with usable faces, then each fold's held-out images (fold0, ...)."""
        return self.splits() + self.fold_splits()

    def check_split(self, split: str) -> None:
        """StoreError, the message split() gives, unless `split` is one of split_names(): for a
        command to refuse a split before its work."""
        fold = parse_fold_split(split)
        if fold is not None:
            self.check_fold(fold)
        if split not in self.split_names():
            raise self._no_faces_in(split)

    def _no_faces_in(self, split: str) -> StoreError:
        return StoreError(f"{self.root} has no usable faces in split {split!r} "
                          f"(splits with faces: {', '.join(self.split_names()) or 'none'})")

    def check_usable_face_rows(self) -> None:
        """StoreError (face_rows') unless every usable row's store_index is a row of faces.npy:
        for a command that reads all of them (evaluate's twins) to stop before its work."""
        self.face_rows(self.manifest[self.manifest["status"] == STATUS_OK])

    def face_rows(self, rows: pd.DataFrame) -> np.ndarray:
        """The faces.npy rows (int64) of these manifest rows; StoreError naming the first image whose
        store_index is no row of faces.npy. Checked wherever manifest rows reach the faces: a split's,
        and every usable face's when `poi evaluate` looks for a scored face's twins outside its split."""
        numbers = pd.to_numeric(rows["store_index"], errors="coerce")
        bad = rows.index[numbers.isna() | (numbers != numbers.round()) | (numbers < 0) | (numbers >= len(self.faces))]
        if len(bad):
            raise StoreError(f"{self.root / MANIFEST_FILE}: image {rows['id'][bad[0]]!r} has store_index "
                             f"{cell_text(rows['store_index'][bad[0]])}, outside faces.npy's {len(self.faces)} rows")
        return numbers.to_numpy(np.int64)

    def check_fold(self, fold: int) -> None:
        if not self.folds:
            raise StoreError(f"{self.root} has no folds: `poi prepare ckplus` writes them (--folds 10)")
        if not 0 <= fold < self.folds:
            raise StoreError(f"fold {fold} is not in 0..{self.folds - 1} ({self.root} has {self.folds} folds)")

    def split(self, split: str, labels_file: str | Path | None = None, exclude_fold: Optional[int] = None,
              ids: Optional[Sequence[str]] = None) -> SplitData:
        """The faces of `split` with status ok; labels from `labels_file` when given.

        `split` may name a fold's held-out images (fold3); `exclude_fold` leaves one fold out
        (what `poi train --fold K` trains on); `ids` keeps only those images (a run's held-out ones)."""
        usable = self.manifest["status"] == STATUS_OK
        fold = parse_fold_split(split)
        if fold is not None:
            self.check_fold(fold)
            rows = self.manifest[usable & (self.manifest[FOLD_COLUMN] == fold)]
        else:
            rows = self.manifest[usable & (self.manifest["split"] == split)]
        if exclude_fold is not None:
            self.check_fold(exclude_fold)
            rows = rows[rows[FOLD_COLUMN] != exclude_fold]
        if ids is not None:
            rows = rows[rows["id"].isin(set(ids))]
        if rows.empty:
            raise self._no_faces_in(split)
        rows_of_store = self.face_rows(rows)
        labels = pd.to_numeric(rows["label"], errors="coerce")
        bad = rows.index[labels.isna() | (labels != labels.round()) | (labels < 0) | (labels >= self.num_classes)]
        if len(bad):
            raise StoreError(f"{self.root / MANIFEST_FILE}: image {rows['id'][bad[0]]!r} has label {cell_text(rows['label'][bad[0]])}, "
                             f"not a class index (0 to {self.num_classes - 1}): prepare the folder again")
        data = SplitData(
            store_rows=rows_of_store,
            labels=labels.to_numpy(np.int64),
            ids=rows["id"].to_numpy(str),
        )
        if labels_file is not None:
            data = apply_label_file(data, labels_file, self.classes)
        return data


def label_file_outputs(path: str | Path) -> tuple[Path, Path]:
    """The two files a command that writes a label file writes: the .csv and its .json summary
    beside it (`poi noise`, `poi clean`); StoreError for a name that is not a .csv (a .json one
    would be written over by its own summary)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise StoreError(f"--out must name a .csv label file (its summary goes beside it as .json), got {path}")
    return path, path.with_suffix(".json")


def read_label_file(path: str | Path, classes: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """A label file (LABEL_COLUMNS), checked once, here, where it enters: readable UTF-8
    CSV with columns id and label, ids unique, labels whole numbers; with `classes`, every
    label a class index (0 .. len(classes) - 1) or DROPPED_LABEL, and a label_name, where
    given, the name of its label's class. StoreError (one line naming the file, the row
    and what is wrong) otherwise: a label -3 is never read as a class by Python's negative
    indexing."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"label file not found: {path}")
    try:
        table = pd.read_csv(path, dtype={"id": str, "label_name": str}, encoding="utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{path} is not a UTF-8 text file: a label file is a CSV (id,label,...)") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError) as error:
        raise StoreError(f"{path} is not a readable CSV label file ({str(error).splitlines()[0]})") from None
    if not {"id", "label"} <= set(table.columns):
        raise StoreError(f"{path} is not a label file: it needs columns id and label (has {', '.join(map(str, table.columns))})")
    label_columns = [c for c in ("label", "clean_label") if c in table]
    for column in label_columns:
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = table.index[numbers.isna() | ~np.isfinite(numbers) | (numbers.abs() > 2**53) | (numbers != numbers.round())]
        if len(bad) and pd.isna(table[column][bad[0]]):  # an empty cell: pandas reads it as nan, not what the user wrote
            image = table["id"][bad[0]]
            raise StoreError(f"{path}, row {bad[0] + 2}" + ("" if pd.isna(image) else f" (id {image!r})")
                             + f": the {column} is empty" + (f" (give a class index, or {DROPPED_LABEL} to leave the image out)"
                                                               if column == "label" else ""))
        if len(bad):
            raise StoreError(f"{path}, row {bad[0] + 2}: {column} {str(table[column][bad[0]])!r} is not a whole number (a class index)")
        table[column] = numbers.astype(np.int64)
    if table["id"].isna().any():
        raise StoreError(f"{path}, row {int(np.flatnonzero(table['id'].isna())[0]) + 2}: the id is empty")
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise StoreError(f"{path}: id {duplicated.iloc[0]!r} appears more than once ({duplicated.size} repeated ids)")
    if classes is not None:
        for column in label_columns:
            labels = table[column].to_numpy()
            outside = np.flatnonzero((labels != DROPPED_LABEL) & ((labels < 0) | (labels >= len(classes))))
            if len(outside):
                row = outside[0]
                raise StoreError(f"{path}, row {row + 2}: {column} {labels[row]} is not a class index (0 to {len(classes) - 1}, "
                                 f"or {DROPPED_LABEL} to leave the image out)")
        labels = table["label"].to_numpy()
        if "label_name" in table:
            names = table["label_name"].fillna("")
            expected = pd.Series(label_names(labels, classes), index=table.index)
            wrong = table.index[(names != "") & (names != expected)]
            if len(wrong):
                row = wrong[0]
                raise StoreError(f"{path}, row {row + 2}: label_name {names[row]!r} contradicts label {labels[row]} "
                                 f"({expected[row] or 'left out'})")
    return table


def apply_label_file(data: SplitData, path: str | Path, classes: Optional[Sequence[str]] = None) -> SplitData:
    """Replace the labels of `data` by those of a label file, matched on id.

    The manifest's own labels become the clean labels unless the file carries
    clean_label. Every image of the split must be in the file; those labelled
    DROPPED_LABEL (-1) are left out of the returned split.
    """
    table = read_label_file(path, classes).set_index("id")
    missing = [i for i in data.ids if i not in table.index]
    if missing:
        raise StoreError(f"{path} lacks labels for {len(missing)} images of the split (first: {str(missing[0])!r})")
    chosen = table.loc[data.ids]
    labels = chosen["label"].to_numpy(np.int64)
    clean = chosen["clean_label"].to_numpy(np.int64) if "clean_label" in chosen else data.labels
    keep = labels != DROPPED_LABEL
    unknown = keep & (clean == DROPPED_LABEL)
    if unknown.any():
        raise StoreError(f"{path}: image {data.ids[unknown][0]!r} is trained on (label {labels[unknown][0]}) "
                         f"but its clean_label is {DROPPED_LABEL}")
    return SplitData(data.store_rows[keep], labels[keep], data.ids[keep], clean[keep])


# ------------------------------------------------------------------------------ writer


def store_meta(*, dataset: str, classes: Sequence[str], preprocessing: Preprocessing, splits: Sequence[str],
               layout: str | None = None, **extra: Any) -> dict[str, Any]:
    """The prepared.json of a store; `extra` keys (detect, counts, notes, settings...) follow.

    size and grayscale repeat preprocessing's face_size and grayscale for older readers."""
    meta: dict[str, Any] = {"format": STORE_FORMAT, "dataset": dataset}
    if layout is not None:
        meta["layout"] = layout
    meta.update({
        "size": preprocessing.face_size, "num_classes": len(classes), "classes": list(classes),
        "grayscale": preprocessing.grayscale, "splits": list(splits), "preprocessing": preprocessing.to_dict(),
    })
    return {**meta, **extra}


def reserve_disk_space(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a new one is sparse, and a page written into
    it on a full disk kills the process with SIGBUS (exit 135, no message); reserved, a full
    disk is an OSError naming the file, before any face is written. File systems that cannot
    reserve (EOPNOTSUPP, EINVAL) are left as they are."""
    if not hasattr(os, "posix_fallocate"):  # macOS: no posix_fallocate
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return
            raise OSError(error.errno, error.strerror, str(path)) from None


class StoreWriter:
    """Writes a prepared folder in the order that keeps it safe to interrupt: faces.npy
    (preallocated, memory-mapped, filled row by row), then manifest.csv, then
    prepared.json, whose presence marks the folder finished."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def open_faces(self, rows: int, size: int, resume: bool = False) -> np.ndarray:
        """faces.npy as a writable uint8 (rows, size, size, 3) array: created, or (resume)
        reopened in place when it exists; StoreError when an existing file has another shape."""
        path, shape = self.root / FACES_FILE, (rows, size, size, 3)
        if rows == 0:
            np.save(path, np.zeros(shape, np.uint8))  # an empty file cannot be memory-mapped
            return np.zeros(shape, np.uint8)
        if not (resume and path.is_file()):
            faces = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
            try:
                reserve_disk_space(path)
            except OSError:
                del faces
                path.unlink(missing_ok=True)
                raise
            return faces
        faces = np.load(path, mmap_mode="r+")
        if faces.shape != shape or faces.dtype != np.uint8:
            raise StoreError(f"{path} has shape {faces.shape}, expected {shape}: remove the folder and prepare again")
        reserve_disk_space(path)  # a file an earlier poi left sparse
        return faces

    def write_faces(self, faces: np.ndarray) -> None:
        """faces.npy from an in-memory uint8 (rows, size, size, 3) array, at once."""
        faces = np.asarray(faces)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2]:
            raise StoreError(f"faces must be uint8 (rows, size, size, 3), got {faces.dtype} {faces.shape}")
        target = self.open_faces(len(faces), faces.shape[1])
        target[:] = faces
        if isinstance(target, np.memmap):
            target.flush()

    def write_manifest(self, rows: pd.DataFrame | Sequence[dict], extra_columns: Sequence[str] = ()) -> pd.DataFrame:
        """manifest.csv: MANIFEST_COLUMNS then extra_columns (other keys dropped, missing ones empty)."""
        manifest = pd.DataFrame(rows).reindex(columns=[*MANIFEST_COLUMNS, *extra_columns])
        atomic_write_text(self.root / MANIFEST_FILE, manifest.to_csv(index=False))
        return manifest

    def write_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """prepared.json (build it with store_meta), the last file: the store is then finished."""
        atomic_write_text(self.root / META_FILE, json.dumps(meta, indent=1))
        return meta


def write_store(root: str | Path, faces: np.ndarray, manifest: pd.DataFrame | Sequence[dict], *, dataset: str,
                classes: Sequence[str], grayscale: bool = False, extra_columns: Sequence[str] = (), **extra: Any) -> Path:
    """A whole store at once (tests, benchmarks): uint8 faces (rows, S, S, 3) and manifest
    rows (dicts with MANIFEST_COLUMNS keys, and extra_columns: FERPlus's votes; store_index
    points into faces)."""
    writer = StoreWriter(root)
    writer.write_faces(faces)
    table = writer.write_manifest(manifest, extra_columns)
    size = int(np.asarray(faces).shape[1])
    splits = sorted(table.loc[table["status"] == STATUS_OK, "split"].unique().tolist())
    preprocessing = Preprocessing(face_size=size, input_size=size, grayscale=grayscale)
    writer.write_meta(store_meta(dataset=dataset, classes=classes, preprocessing=preprocessing, splits=splits, **extra))
    return writer.root
