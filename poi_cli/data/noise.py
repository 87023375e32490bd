"""Synthetic label noise (POI_SPEC section 7): symmetric flips, seeded.

Each label is flipped with probability `rate` to a class drawn uniformly from the other
classes the dataset labels, once: a class of the label space its layout never labels
(CK+48 labels no neutral face, yet its 8 classes include neutral) is never a flip's
target, since a real annotator of that dataset could not have chosen it. The same (labels,
classes, rate, seed) always gives the same result; where the dataset labels every class (FERPlus,
RAF-DB) the flips are those poi drew before this rule, so the shipped noise files still reproduce.
On a combined folder each face flips among the classes its own member dataset labels (a CK+48
face of a CK+48 + FERPlus folder never becomes neutral; a 7-class member's never contempt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from poi_cli.core.atomic import output_file, refuse_input_as_output, refuse_poi_file, write_new_or_same
from poi_cli.core.errors import PoiError
from poi_cli.core.schema import STATUS_OK

if TYPE_CHECKING:  # for the type hint only: the functions import data.store where they use it
    from poi_cli.data.store import PreparedDataset


class NoiseError(PoiError):
    """Labels that cannot be flipped as asked; one-line message."""


def flip_labels(labels: np.ndarray, num_classes: int, rate: float, seed: int = 0,
                classes: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Return a noisy copy of `labels` (int64); the input is not modified.

    classes: the class indices a label may be flipped to (those the dataset labels,
    noise_targets; default all num_classes), or a (len(labels), num_classes) bool array of each
    label's own (a combined folder's faces, split_noise_targets). Every label must be one of them."""
    if not 0.0 <= rate <= 1.0:
        raise NoiseError(f"noise rate must lie in [0, 1], got {rate}")
    labels = np.asarray(labels, dtype=np.int64)
    if classes is not None and np.ndim(classes) == 2:
        allowed = np.asarray(classes, dtype=bool)
        if allowed.shape != (len(labels), num_classes):
            raise NoiseError(f"per-label classes must be a ({len(labels)}, {num_classes}) mask, got {allowed.shape}")
        if not len(labels) or (allowed == allowed[0]).all():  # one set for all: the draws of a list of classes
            classes = np.flatnonzero(allowed[0]) if len(labels) else None
        else:
            return _flip_per_label(labels, allowed, rate, seed)
    targets = np.arange(num_classes) if classes is None else np.unique(np.asarray(classes, dtype=np.int64))
    if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
        raise NoiseError(f"classes must lie in 0..{num_classes - 1}")
    if labels.size and not np.isin(labels, targets).all():
        raise NoiseError(f"labels must be among the classes {', '.join(map(str, targets.tolist()))}")
    if targets.size < 2:  # nothing to flip to; rng.integers(1, 1) would fail
        if rate > 0 and labels.size:
            raise NoiseError(f"the labels use {targets.size} class(es): noise needs at least two to flip among")
        return labels.copy()
    rng = np.random.Generator(np.random.PCG64(seed))
    flip = rng.random(labels.shape) < rate
    # An offset in 1..K-1 added modulo K to a label's position among the K target classes is a
    # uniform draw among the others. With all classes as targets (position = label) these are
    # the very draws and flips of the rule before `classes` existed: shipped noise files reproduce.
    offsets = rng.integers(1, targets.size, size=labels.shape)
    position = np.searchsorted(targets, labels)
    return np.where(flip, targets[(position + offsets) % targets.size], labels)


def _flip_per_label(labels: np.ndarray, allowed: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """flip_labels with each label's own targets (row i of `allowed`): the same rule, an offset in
    1..K_i-1 added modulo K_i to the label's position among its K_i targets."""
    rows = np.arange(len(labels))
    if labels.size and (labels.min() < 0 or labels.max() >= allowed.shape[1] or not allowed[rows, labels].all()):
        raise NoiseError("labels must be among their own classes")
    sizes = allowed.sum(1)
    if rate > 0 and (sizes < 2).any():
        raise NoiseError(f"a label's classes number {int(sizes.min())}: noise needs at least two to flip among")
    rng = np.random.Generator(np.random.PCG64(seed))
    flip = rng.random(labels.shape) < rate
    offsets = rng.integers(1, np.maximum(sizes, 2))  # a row of one class (rate 0 only) draws and keeps its label
    position = allowed.cumsum(1)[rows, labels] - 1
    order = np.argsort(~allowed, axis=1, kind="stable")  # each row's targets first, in class order
    flipped = order[rows, (position + offsets) % np.maximum(sizes, 1)]
    return np.where(flip & (sizes >= 2), flipped, labels)


def noise_targets(dataset: "PreparedDataset") -> list[int]:
    """The class indices a label of `dataset` may be flipped to: those its dataset labels
    (PreparedDataset.labelled_classes) that label one of its usable faces at least. A folder of
    happy/ and sad/ has 7 classes (the canonical ones) but flips only between its 2 (it gave
    faces labels of classes it has no image of, and --noise 1.0 spread them over all 7); on the
    public datasets every labelled class has faces, so their noise files are unchanged. One
    rule for `poi noise` files, `poi train --noise` and the audit that rebuilds its labels (on a
    combined folder, each member's own: split_noise_targets)."""
    manifest = dataset.manifest
    present = set(manifest.loc[(manifest["status"] == STATUS_OK) & (manifest["label"] >= 0), "label"].astype(int))
    return [index for index in (dataset.classes.index(name) for name in dataset.labelled_classes) if index in present]


def split_noise_targets(dataset: "PreparedDataset", store_rows: np.ndarray) -> list[int] | np.ndarray:
    """What flip_labels' `classes` is for the faces at `store_rows` of `dataset`: noise_targets
    on a prepared folder; on a combined folder a (rows, classes) bool mask, each face's row the
    noise_targets of its own member dataset (in the folder's class order), so that a CK+48 face
    never flips to neutral because FERPlus labels it, nor a 7-class member's to contempt."""
    if not dataset.members:
        return noise_targets(dataset)
    from poi_cli.data.combined import member_of_rows

    return member_noise_targets(dataset)[member_of_rows(dataset.members, np.asarray(store_rows, dtype=np.int64))]


def member_noise_targets(dataset: "PreparedDataset") -> np.ndarray:
    """(members, classes) bool: row k the noise_targets of a combined folder's member k, in the
    folder's class order (its classes are matched by name)."""
    from poi_cli.data.store import PreparedDataset

    per_member = np.zeros((len(dataset.members), dataset.num_classes), dtype=bool)
    for k, member in enumerate(dataset.members):
        own = PreparedDataset(member.path)
        per_member[k, [dataset.classes.index(own.classes[c]) for c in noise_targets(own)]] = True
    return per_member


def flip_split_labels(dataset: "PreparedDataset", store_rows: np.ndarray, labels: np.ndarray, rate: float,
                      seed: int = 0) -> np.ndarray:
    """flip_labels of the faces at `store_rows` of `dataset` among the classes each one's dataset
    labels (split_noise_targets): `poi noise`, `poi train --noise` and the audit that rebuilds it."""
    return flip_labels(labels, dataset.num_classes, rate, seed, classes=split_noise_targets(dataset, store_rows))


# ------------------------------------------------------------------ `poi noise` label files

def noise_file_stem(split: str, rate: float, seed: int, subset: int | None = None) -> str:
    """E.g. train_noise20_seed0 (the rate in percent, without trailing zeros), train_noise30_seed0_subset3000."""
    return f"{split}_noise{rate * 100:.6g}_seed{seed}" + (f"_subset{subset}" if subset is not None else "")


def subset_mask(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A seeded random choice of `size` of n images (bool mask), for reduced studies.

    Drawn from its own stream, independent of the noise seed, so the 0 % and 30 % files
    of one subset seed keep the same images."""
    if not 1 <= size <= n:
        raise ValueError(f"--subset must lie in 1..{n} (the split's images), got {size}")
    mask = np.zeros(n, dtype=bool)
    mask[np.random.Generator(np.random.PCG64([seed, 0x5EB5E7])).choice(n, size, replace=False)] = True
    return mask


def write_noisy_labels(
    prepared_dir: str | Path, rate: float, seed: int = 0, split: str = "train", out: str | Path | None = None,
    subset: int | None = None, subset_seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Flip the labels of a prepared split and write a label file for `poi train --labels`.

    Labels flip only among the classes the dataset labels (split_noise_targets): on CK+48, never
    to neutral; on a combined folder, among those each face's own member labels. Writes OUT
    (default PREPARED_DIR/labels/<split>_noise<pct>_seed<seed>.csv; columns
    id,label,label_name,clean_label, manifest order) and a summary beside it (.json:
    realised rate and per-class flip counts). The prepared manifest is not touched.
    Nothing in either file depends on time or paths, so the same seed gives
    byte-identical files. With `subset` (a reduced study), only a seeded random choice of
    that many images keeps a label; the others get DROPPED_LABEL (-1, left out of
    training). The flips are drawn over the whole split first, so a subset's flipped
    images are exactly those of the full file with the same seed. Returns (csv path, summary).
    """
    from poi_cli.data.store import (DROPPED_LABEL, FACES_FILE, MANIFEST_FILE, META_FILE, PreparedDataset, label_file_outputs,
                                    label_names)

    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--rate must lie in [0, 1], got {rate}")
    data = PreparedDataset(prepared_dir)
    split_data = data.split(split)
    names = data.classes
    all_noisy = flip_split_labels(data, split_data.store_rows, split_data.labels, rate, seed)
    kept = subset_mask(len(all_noisy), subset, subset_seed) if subset is not None else np.ones(len(all_noisy), bool)
    noisy, clean = all_noisy[kept], split_data.labels[kept]
    flipped = noisy != clean
    summary: dict[str, Any] = {
        "dataset": data.meta.get("dataset"), "split": split, "rate": rate, "seed": seed,
        **({"subset": subset, "subset_seed": subset_seed, "split_images": int(len(kept))} if subset is not None else {}),
        "images": int(len(clean)), "flipped": int(flipped.sum()),
        "realised_rate": round(float(flipped.mean()) if len(clean) else 0.0, 6),
        "per_class": {
            name: {"images": int((clean == c).sum()), "flipped": int(flipped[clean == c].sum()),
                   "noisy_labels": int((noisy == c).sum())}
            for c, name in enumerate(names)
        },
    }
    if data.members:  # each member's own classes: the union's that no member labels, and each member's holes
        per_member = member_noise_targets(data)
        never = [name for c, name in enumerate(names) if not per_member[:, c].any()]
        holes = {m.name: [name for c, name in enumerate(names) if not per_member[k, c]]
                 for k, m in enumerate(data.members) if not per_member[k].all()}
    else:
        targets = noise_targets(data)
        never, holes = [name for c, name in enumerate(names) if c not in targets], {}
    if never:  # only then: the summary of a dataset that labels every class stays as it was (shipped files)
        summary["never_labelled"] = never
    if holes:
        summary["never_labelled_by"] = holes
    path = Path(out) if out is not None else data.root / "labels" / f"{noise_file_stem(split, rate, seed, subset)}.csv"
    for written in label_file_outputs(path):  # never over the dataset's own files, however named
        refuse_input_as_output(written, [data.root / name for name in (META_FILE, MANIFEST_FILE, FACES_FILE)], "--out")
        refuse_poi_file(written, "--out")  # nor another prepared or run folder's own file
    output_file(path, "--out")
    summary["labels_file"] = path.name
    written = np.where(kept, all_noisy, DROPPED_LABEL)
    table = pd.DataFrame({"id": split_data.ids, "label": written,
                          "label_name": label_names(written, names), "clean_label": split_data.labels})
    write_new_or_same({path: table.to_csv(index=False, lineterminator="\n"),
                       path.with_suffix(".json"): json.dumps(summary, indent=1) + "\n"}, "--out")
    return path, summary
