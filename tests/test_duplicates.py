"""Pixel-identical faces: prepare's face_digest and notes, evaluate's accuracy with and without twins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_prepared
from poi_cli.data.duplicates import DIGEST_COLUMN, duplicate_notes, face_digest, store_digests, twins_elsewhere
from poi_cli.data.prepare import prepare
from poi_cli import render
from poi_cli.data.store import MANIFEST_FILE, PreparedDataset
from poi_cli.study.evaluate import evaluate
from test_evaluate import constant_model


def noise_image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), np.uint8)).save(path)
    return path


def test_face_digest_tells_identical_pixels_only() -> None:
    face = np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)
    changed = face.copy()
    changed[7, 7, 2] ^= 1
    assert face_digest(face) == face_digest(face.copy()) == face_digest(np.asfortranarray(face))
    assert face_digest(changed) != face_digest(face) and len(face_digest(face)) == 16


def test_prepare_writes_digests_and_counts_repeated_faces(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for name, seed in [("train/happy/a.png", 1), ("train/happy/b.png", 2), ("train/sad/c.png", 3),
                       ("train/sad/a_again.png", 1), ("valid/happy/b_leaked.png", 2), ("valid/sad/d.png", 4)]:
        noise_image(raw / name, seed)
    result = prepare("folder", raw, tmp_path / "out", size=32, detect=False, show_progress=False)
    manifest = pd.read_csv(tmp_path / "out" / MANIFEST_FILE).set_index("id")
    digest = manifest[DIGEST_COLUMN]
    assert digest["train/happy/a.png"] == digest["train/sad/a_again.png"]
    assert digest["train/happy/b.png"] == digest["valid/happy/b_leaked.png"]
    assert digest.nunique() == 4
    faces = PreparedDataset(tmp_path / "out").faces
    assert digest["valid/sad/d.png"] == face_digest(faces[manifest.loc["valid/sad/d.png", "store_index"]])
    assert result.meta["notes"][-3:] == [
        f"split train: 1 of its 4 faces are pixel-identical to a face of val; 1 repeat an earlier face of train ({DIGEST_COLUMN})",
        f"split val: 1 of its 2 faces are pixel-identical to a face of train ({DIGEST_COLUMN})",
        "`poi evaluate` reports accuracy with and without the faces that have a twin in another split",
    ]


def test_duplicate_notes_skip_faces_that_are_not_stored() -> None:
    # a face that is not stored has no twin, even with a stale digest; faces without one are none's twins
    manifest = pd.DataFrame({"split": ["train", "val", "val", "val", "val"], "status": ["ok", "no_face", "ok", "ok", "ok"],
                             DIGEST_COLUMN: ["aa", "aa", "bb", None, None]})
    assert duplicate_notes(manifest) == []


def test_twins_of_a_split_found_with_and_without_the_digest_column(tmp_path: Path) -> None:
    data = make_prepared(tmp_path / "data", splits={"train": 2, "valid": 1})  # 7 classes: 14 train, 7 valid faces
    dataset = PreparedDataset(data)
    faces = np.load(data / "faces.npy")
    manifest = dataset.manifest
    valid = manifest[manifest["split"] == "valid"]["store_index"].to_numpy()
    train = manifest[manifest["split"] == "train"]["store_index"].to_numpy()
    faces[valid[2]] = faces[train[5]]  # one valid face is a training face
    faces[valid[4]] = faces[valid[3]]  # two valid faces are one: a repeat inside the split, no twin elsewhere
    np.save(data / "faces.npy", faces)
    computed = twins_elsewhere(PreparedDataset(data), valid, valid)  # the folder has no face_digest column
    assert computed.tolist() == [False, False, True, False, False, False, False]
    digests = store_digests(PreparedDataset(data))
    manifest[DIGEST_COLUMN] = manifest["store_index"].map(digests)
    manifest.to_csv(data / MANIFEST_FILE, index=False)
    assert twins_elsewhere(PreparedDataset(data), valid, valid).tolist() == computed.tolist()
    # the column is what is read where it has a digest (here one that says otherwise), the
    # faces where it has none (a combined folder with a member of an older poi)
    manifest.loc[manifest["store_index"] == valid[0], DIGEST_COLUMN] = digests[train[0]]
    manifest.loc[manifest["store_index"].isin(train[3:9]), DIGEST_COLUMN] = None
    manifest.to_csv(data / MANIFEST_FILE, index=False)
    assert twins_elsewhere(PreparedDataset(data), valid, valid).tolist() == [True, False, True, False, False, False, False]
    # the faces evaluated together are never each other's twins, scored or not
    assert twins_elsewhere(PreparedDataset(data), valid[3:4], valid).tolist() == [False]
    assert twins_elsewhere(PreparedDataset(data), valid[3:4], valid[3:4]).tolist() == [True]


def test_evaluate_reports_accuracy_with_and_without_twins(tmp_path: Path) -> None:
    data = make_prepared(tmp_path / "data", splits={"train": 1, "test": 1})  # one face per class and split
    manifest = PreparedDataset(data).manifest
    faces = np.load(data / "faces.npy")
    rows = {(s, label): row for s, label, row in manifest[["split", "label", "store_index"]].itertuples(index=False)}
    faces[rows["test", 3]] = faces[rows["train", 3]]  # the happiness test face is in train
    faces[rows["test", 0]] = faces[rows["train", 0]]  # and so is the surprise one
    np.save(data / "faces.npy", faces)
    report = evaluate(constant_model(tmp_path / "model.pt"), data, split="test", device="cpu")  # always happiness
    assert report["twins"]["with"] == {"n": 2, "accuracy": pytest.approx(1 / 2)}
    assert report["twins"]["without"] == {"n": 5, "accuracy": 0.0}
    assert report["accuracy"] == pytest.approx(1 / 7)
    assert "faces with a pixel-identical face among the prepared folder's faces not evaluated here: 50.00% (2); " \
        "without: 0.00% (5)" in render.agreement_lines(report)
    assert any(f"prepared before poi wrote {DIGEST_COLUMN}" in note for note in report["notes"])  # make_prepared writes none
