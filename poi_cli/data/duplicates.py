"""Pixel-identical faces in a prepared folder.

FER2013's images repeat, within a split and across its splits: some FERPlus valid faces
are, pixel for pixel, faces of FERPlus train (docs/datasets.md counts them). A model is
scored on those as on faces it was trained on, so `poi prepare` counts them (prepared.json's
notes) and `poi evaluate` reports accuracy with and without them ("twins").

A face's digest is a short hash of its stored pixels (after the crop and the resize), kept in
the manifest's `face_digest` column by `poi prepare`; for a folder prepared before that
column existed, the digests are computed from faces.npy when asked for.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from poi_cli.core.schema import STATUS_OK

if TYPE_CHECKING:
    from poi_cli.data.store import PreparedDataset

DIGEST_COLUMN = "face_digest"
DIGEST_CHUNK = 512  # faces read at a time when the manifest has no digests


def face_digest(face: np.ndarray) -> str:
    """16 hex digits of BLAKE2b over a stored face's bytes: equal exactly for pixel-identical faces
    (a collision among 2^64 values is not a concern at dataset sizes)."""
    return hashlib.blake2b(np.ascontiguousarray(face).tobytes(), digest_size=8).hexdigest()


def stored_digests(usable: pd.DataFrame) -> np.ndarray:
    """(rows,) bool: which of these manifest rows carry a face_digest (none in a folder of an older poi)."""
    return usable[DIGEST_COLUMN].notna().to_numpy() if DIGEST_COLUMN in usable.columns else np.zeros(len(usable), bool)


def store_digests(dataset: PreparedDataset) -> pd.Series:
    """The digest of every usable face of a prepared folder, indexed by its store_index: the
    manifest's face_digest where it has one, computed from faces.npy where not (a folder of an
    older poi, or a combined folder with such a member). PreparedDataset.face_digests keeps it."""
    usable = dataset.manifest[dataset.manifest["status"] == STATUS_OK]
    rows = dataset.face_rows(usable)  # every usable row, not only the evaluated split's: checked here too
    known = stored_digests(usable)
    digests = np.empty(len(rows), object)
    if known.any():
        digests[known] = usable.loc[known, DIGEST_COLUMN].astype(str).to_numpy()
    missing = np.flatnonzero(~known)
    for start in range(0, len(missing), DIGEST_CHUNK):
        chunk = missing[start:start + DIGEST_CHUNK]
        digests[chunk] = [face_digest(face) for face in dataset.faces[rows[chunk]]]
    return pd.Series(digests, index=rows)


def twins_elsewhere(dataset: PreparedDataset, store_rows: np.ndarray, evaluated_rows: np.ndarray) -> np.ndarray:
    """(n,) bool: whether each face of store_rows has a pixel-identical twin among the folder's
    usable faces outside evaluated_rows (the faces evaluated here, store_rows among them: for a
    validation split, the twins are training faces)."""
    digests = dataset.face_digests
    outside = digests[~np.isin(digests.index.to_numpy(), evaluated_rows)]
    return digests.reindex(store_rows).isin(set(outside.to_numpy())).to_numpy()


def duplicate_notes(manifest: pd.DataFrame) -> list[str]:
    """prepare's notes on repeated faces: per split, how many of its faces are pixel-identical
    to a face of another split, and how many repeat a face of their own split."""
    usable = manifest[(manifest["status"] == STATUS_OK) & manifest[DIGEST_COLUMN].notna()]
    notes, across_any = [], False
    for split, faces in usable.groupby("split", sort=True):
        parts = []
        others = usable[usable["split"] != split]
        across = faces[DIGEST_COLUMN].isin(set(others[DIGEST_COLUMN]))
        if across.any():
            names = ", ".join(sorted(set(others.loc[others[DIGEST_COLUMN].isin(set(faces[DIGEST_COLUMN])), "split"])))
            parts.append(f"{int(across.sum())} of its {len(faces)} faces are pixel-identical to a face of {names}")
            across_any = True
        within = int(faces[DIGEST_COLUMN].duplicated(keep="first").sum())
        if within:
            parts.append(f"{within} repeat an earlier face of {split}")
        if parts:
            notes.append(f"split {split}: {'; '.join(parts)} ({DIGEST_COLUMN})")
    if across_any:
        notes.append("`poi evaluate` reports accuracy with and without the faces that have a twin in another split")
    return notes


__all__ = ["DIGEST_COLUMN", "face_digest", "stored_digests", "store_digests", "twins_elsewhere", "duplicate_notes"]
