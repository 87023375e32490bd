"""Several prepared datasets trained on as one, each kept in its own store (`poi combine`).

    poi combine prepared/ferplus96 prepared/sfew96 --weights 1,4 --out prepared/ferplus_sfew96

writes a folder that every command opens as a prepared dataset (PreparedDataset) but that
holds no faces of its own:

  prepared.json  the union of the members' classes (matched by name, in order of first
                 appearance), the shared preprocessing, and `members`: each member's name,
                 absolute path, sampling weight, classes, face rows and offset
  manifest.csv   the members' manifests one after another: ids prefixed `NAME/`, labels
                 mapped into the union's class order, store_index shifted by the member's
                 offset, a `dataset` column (the member's name) and `member_split` (its own
                 split name); each member's validation split (valid or val) is named `val`

The faces are read from the members' own faces.npy through CombinedFaces (no copy); a
member that moved, or whose store changed since, stops the reader with one line. Training
draws each image of a member `weight` times per epoch on average (sampling_positions) and
reports validation accuracy per member (`val_acc_NAME` in results.csv), selecting on
their mean, so that a small dataset is not drowned by a large one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pandas as pd

from poi_cli.core.atomic import command_output_folder, real_path, refuse_input_as_output
from poi_cli.core.errors import PoiError
from poi_cli.core.layout import FACES_FILE, META_FILE, RUN_FILES

if TYPE_CHECKING:  # data.store imports this module
    from poi_cli.data.store import PreparedDataset

DATASET_COLUMN, MEMBER_SPLIT_COLUMN = "dataset", "member_split"
VALIDATION = "val"  # the combined name of every member's validation split
COMBINED = "combined"  # prepared.json "dataset" of a combined folder


class CombineError(PoiError):
    """Datasets that cannot be combined; one-line message."""


@dataclass(frozen=True)
class Member:
    """One prepared folder of a combined dataset (an entry of prepared.json's `members`)."""

    name: str
    path: str  # absolute
    weight: float  # times each of its training images is drawn per epoch, on average
    classes: tuple[str, ...]
    rows: int  # rows of its faces.npy when combined: a changed store is detected
    offset: int  # its first row in the combined row numbering

    def to_dict(self) -> dict:
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, values: dict) -> "Member":
        return cls(name=str(values["name"]), path=str(values["path"]), weight=float(values["weight"]),
                   classes=tuple(values["classes"]), rows=int(values["rows"]), offset=int(values["offset"]))


class CombinedFaces:
    """The members' faces.npy as one read-only uint8 array (N, S, S, 3): row r of member k
    is row offset_k + r. Supports what readers of a store do: len, shape, and indexing by
    an int, a slice or an integer array (a copy, in the order asked)."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = list(arrays)
        self.ends = np.cumsum([len(a) for a in self.arrays])
        self.starts = self.ends - np.array([len(a) for a in self.arrays])
        first = self.arrays[0]
        self.shape = (int(self.ends[-1]), *first.shape[1:])
        self.dtype, self.ndim = first.dtype, first.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        rows = np.arange(*index.indices(len(self))) if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row outside 0..{len(self) - 1}")
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        member = np.searchsorted(self.ends, rows, side="right")
        for k in np.unique(member):
            chosen = member == k
            out[chosen] = self.arrays[k][rows[chosen] - self.starts[k]]
        return out


def union_classes(class_lists: Sequence[Sequence[str]]) -> list[str]:
    """Class names matched by name: the first list's order, then new names as they appear."""
    union: list[str] = []
    for names in class_lists:
        union += [name for name in names if name not in union]
    return union


MAX_WEIGHT = 1000.0  # a member's images drawn at most this many times per epoch (1e308 crashed training)


def parse_weights(text: Optional[str], count: int) -> list[float]:
    """--weights "1,4" -> [1.0, 4.0]; None: 1 each. Each in [0, MAX_WEIGHT], one per dataset."""
    if text is None:
        return [1.0] * count
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise CombineError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if len(weights) != count:
        raise CombineError(f"--weights gives {len(weights)} weights for {count} datasets")
    if any(not 0 <= w <= MAX_WEIGHT for w in weights) or not any(w > 0 for w in weights):  # nan fails too
        raise CombineError(f"--weights must lie in [0, {MAX_WEIGHT:g}] (times per epoch) and not all be 0, got {text!r}")
    return weights


def combine(prepared_dirs: Sequence[str | Path], out: str | Path, weights: Optional[Sequence[float]] = None,
            names: Optional[Sequence[str]] = None) -> Path:
    """Write the combined folder `out` over `prepared_dirs` (see the module docstring)."""
    if len(prepared_dirs) < 2:
        raise CombineError("combine needs at least two prepared folders")
    if not str(out).strip():
        raise CombineError("--out needs a folder name")
    weights = list(weights) if weights is not None else [1.0] * len(prepared_dirs)
    names = list(names) if names is not None else [real_path(p).name for p in prepared_dirs]
    if len(set(names)) != len(names):
        raise CombineError(f"the datasets need distinct folder names to tell them apart (got {', '.join(names)})")
    refuse_input_as_output(out, prepared_dirs, "--out")
    inside = [p for p in prepared_dirs if real_path(out).is_relative_to(real_path(p))]
    if inside:  # the member's folder would hold a dataset built of itself (and travel with it)
        raise CombineError(f"--out {out} lies inside {inside[0]}, one of the folders it combines: write it beside them")
    if (Path(out) / FACES_FILE).exists() or ((Path(out) / META_FILE).is_file() and not _is_combined(Path(out))):
        raise CombineError(f"--out {out} holds a prepared dataset: give a new folder (or an earlier combined one)")
    if any((Path(out) / name).exists() for name in RUN_FILES):
        raise CombineError(f"--out {out} holds a training run: give a new folder (or an earlier combined one)")
    with command_output_folder(out, "--out") as folder:
        return _write_combined(prepared_dirs, folder, weights, names)


def _write_combined(prepared_dirs: Sequence[str | Path], out: Path, weights: Sequence[float],
                    names: Sequence[str]) -> Path:
    """combine's work, once its arguments and `out` are checked: read the members, write the folder."""
    from poi_cli.data.store import PreparedDataset, StoreWriter, store_meta

    datasets = [PreparedDataset(p) for p in prepared_dirs]
    nested = [str(d.root) for d in datasets if d.members]
    if nested:
        raise CombineError(f"{nested[0]} is itself a combined folder: combine the prepared folders it names")
    first = datasets[0].preprocessing
    for dataset in datasets[1:]:
        pre = dataset.preprocessing
        if (pre.face_size, pre.alignment, pre.mean, pre.std) != (first.face_size, first.alignment, first.mean, first.std):
            raise CombineError(f"{dataset.root} stores {pre.face_size} px faces ({pre.alignment}), {datasets[0].root} "
                               f"{first.face_size} px ({first.alignment}): prepare them with the same --size")
    classes = union_classes([d.classes for d in datasets])
    members, tables, offset = [], [], 0
    for name, weight, dataset in zip(names, weights, datasets):
        members.append(Member(name, str(real_path(dataset.root)), float(weight), tuple(dataset.classes), len(dataset.faces), offset))
        tables.append(member_manifest(dataset, name, classes, offset))
        offset += len(dataset.faces)
    manifest = pd.concat(tables, ignore_index=True)
    writer = StoreWriter(out)
    written = writer.write_manifest(manifest, extra_columns=(DATASET_COLUMN, MEMBER_SPLIT_COLUMN))
    splits = sorted(written.loc[written["status"] == "ok", "split"].unique().tolist())
    preprocessing = replace(first, grayscale=all(d.grayscale for d in datasets))  # one colour member: a colour model
    writer.write_meta(store_meta(dataset=COMBINED, classes=classes, preprocessing=preprocessing, splits=splits,
                                 members=[m.to_dict() for m in members]))
    return writer.root


def member_manifest(dataset: "PreparedDataset", name: str, classes: Sequence[str], offset: int) -> pd.DataFrame:
    """A member's manifest in the combined numbering (see the module docstring)."""
    table = dataset.manifest.copy()
    table[MEMBER_SPLIT_COLUMN] = table["split"]
    validation = dataset.validation_split()
    if validation is not None:
        table.loc[table["split"] == validation, "split"] = VALIDATION
    table["id"] = name + "/" + table["id"].astype(str)
    table[DATASET_COLUMN] = name
    labels = pd.to_numeric(table["label"], errors="coerce")
    to_union = {k: classes.index(c) for k, c in enumerate(dataset.classes)}
    table["label"] = labels.map(lambda k: to_union.get(int(k), -1) if pd.notna(k) and k >= 0 else k)
    store = pd.to_numeric(table["store_index"], errors="coerce")
    table["store_index"] = store.where(store < 0, store + offset)
    return table


def open_members(root: Path, meta: dict) -> tuple[list[Member], CombinedFaces]:
    """The members of a combined folder's prepared.json and their faces as one array;
    StoreError (one line) when a member is gone or changed since `poi combine`."""
    from poi_cli.data.store import PreparedDataset, StoreError

    try:
        members = [Member.from_dict(m) for m in meta["members"]]
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"{root}/prepared.json: its `members` entry is malformed: run `poi combine` again") from None
    arrays = []
    for member in members:
        if not Path(member.path).is_dir():
            raise StoreError(f"{root} combines {member.path}, which is gone: run `poi combine` again")
        if _is_combined(Path(member.path)):  # never nested: a folder naming itself would recurse
            raise StoreError(f"{root} names {member.path}, a combined folder, as a member: run `poi combine` again")
        faces = PreparedDataset(member.path).faces
        if len(faces) != member.rows:
            raise StoreError(f"{member.path} has {len(faces)} faces, {member.rows} when {root} was combined: "
                             "run `poi combine` again")
        arrays.append(faces)
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise StoreError(f"{root}: its members store faces of different shapes {sorted(shapes)}: run `poi combine` again")
    return members, CombinedFaces(arrays)


def member_summary(root: str | Path) -> tuple[list[str], list[dict]]:
    """The union classes and, per member, what `poi combine` prints: name, weight, classes,
    usable faces per split (its own split names: train, and `val` for its validation split)."""
    from poi_cli.data.store import PreparedDataset

    dataset = PreparedDataset(root)
    usable = dataset.manifest[dataset.manifest["status"] == "ok"]
    rows = []
    for member in dataset.members:
        mine = usable[usable[DATASET_COLUMN] == member.name]
        rows.append({"name": member.name, "weight": member.weight, "classes": len(member.classes),
                     "splits": {split: int(n) for split, n in mine["split"].value_counts().sort_index().items()}})
    return dataset.classes, rows


def member_paths(folder: str | Path) -> list[Path]:
    """The member folders a combined folder's prepared.json names, resolved; [] for another
    folder, or one that cannot be read (what evaluate asks: did a model train on this store?)."""
    try:
        meta = json.loads((Path(folder) / META_FILE).read_text())
        return [Path(str(m["path"])).resolve() for m in meta.get("members") or []]
    except (OSError, ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        return []


def _is_combined(folder: Path) -> bool:
    """Whether `folder`'s prepared.json names members (an unreadable one is left to PreparedDataset to report)."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and "members" in meta


def member_of_rows(members: Sequence[Member], store_rows: np.ndarray) -> np.ndarray:
    """The index (into `members`) of the member each combined store row belongs to."""
    ends = np.array([m.offset + m.rows for m in members])
    return np.searchsorted(ends, np.asarray(store_rows), side="right")


def sampling_positions(member_index: np.ndarray, weights: Sequence[float], seed: int) -> np.ndarray:
    """Positions into a training split with member `member_index[i]` of each image, each
    image of member k drawn weights[k] times per epoch on average: floor(w) copies of
    every image plus a seeded random share (w - floor(w)) of them once more; w = 0 leaves
    the member out. Sorted, so that weights of 1 give every position once, in order."""
    rng = np.random.default_rng([seed, 4099])
    chosen = []
    for k, weight in enumerate(weights):
        positions = np.flatnonzero(member_index == k)
        whole, fraction = int(np.floor(weight)), weight - np.floor(weight)
        chosen += [positions] * whole
        extra = int(round(fraction * len(positions)))
        if extra:
            chosen.append(rng.choice(positions, extra, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
