"""One source of truth per fact: Preprocessing through a store and a checkpoint, the
checkpoint builder and reader, the regions table, statuses and landmark names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from poi_cli.core.manifests import AU_REGIONS, EYE_AUS, MOUTH_AUS, REGIONS, class_names, read_manifest
from poi_cli.core.schema import LANDMARK_NAMES, STORE_STATUSES
from poi_cli.data.preprocess import Preprocessing, to_model_input
from poi_cli.data.store import META_FILE, MANIFEST_COLUMNS, PreparedDataset, StoreError, StoreWriter
from poi_cli.model.checkpoint import (
    CheckpointInfo, build_checkpoint, load_checkpoint, load_model, read_checkpoint_info, save_checkpoint,
)
from poi_cli.model.network import REGION_NAMES
from conftest import make_prepared, tiny_model


def test_preprocessing_round_trips_through_dict_and_rejects_nonsense():
    grey = Preprocessing(face_size=96, input_size=64, grayscale=True)
    assert Preprocessing.from_dict(grey.to_dict()) == grey
    assert Preprocessing.from_dict(json.loads(json.dumps(grey.to_dict()))) == grey  # through JSON: lists -> tuples
    assert grey.for_model(112) == Preprocessing(face_size=96, input_size=112, grayscale=True)
    assert Preprocessing.from_dict({"face_size": 64, "input_size": 64}) == Preprocessing(64, 64)  # defaults
    with pytest.raises(ValueError):
        Preprocessing(face_size=0, input_size=64)
    with pytest.raises(ValueError):
        Preprocessing(face_size=64, input_size=64, std=(1.0, 0.0, 1.0))


def test_preprocessing_model_input_is_the_training_normalisation():
    faces = torch.randint(0, 256, (2, 80, 80, 3), dtype=torch.uint8)
    assert torch.equal(Preprocessing(80, 64).model_input(faces), to_model_input(faces, 64))


def test_preprocessing_round_trips_through_a_store(tmp_path: Path):
    root = make_prepared(tmp_path / "store", size=48, grayscale=True)
    meta = json.loads((root / META_FILE).read_text())
    assert meta["preprocessing"] == Preprocessing(face_size=48, input_size=48, grayscale=True).to_dict()
    assert (meta["size"], meta["grayscale"]) == (48, True)  # still there for older readers
    data = PreparedDataset(root)
    assert data.preprocessing == Preprocessing(face_size=48, input_size=48, grayscale=True)
    assert (data.size, data.grayscale) == (48, True)
    # A store written before the key: derived from size and grayscale.
    del meta["preprocessing"]
    meta["size"], meta["grayscale"] = 48, False
    (root / META_FILE).write_text(json.dumps(meta))
    assert PreparedDataset(root).preprocessing == Preprocessing(face_size=48, input_size=48, grayscale=False)


def test_store_writer_manifest_columns_and_resume_shape_check(tmp_path: Path):
    writer = StoreWriter(tmp_path / "store")
    faces = writer.open_faces(3, 8)
    faces[1] = 7
    faces.flush()
    assert np.load(tmp_path / "store" / "faces.npy")[1].max() == 7
    assert writer.open_faces(3, 8, resume=True)[1].max() == 7  # reopened, not recreated
    with pytest.raises(StoreError, match="expected"):
        writer.open_faces(4, 8, resume=True)
    manifest = writer.write_manifest([{"id": "a", "status": "ok", "votes": 3, "unknown": 1}], extra_columns=["votes"])
    assert list(manifest.columns) == [*MANIFEST_COLUMNS, "votes"]


def test_faces_npy_is_allocated_up_front_so_a_full_disk_is_an_error_not_a_bus_error(tmp_path: Path, monkeypatch):
    """A sparse faces.npy written through its memory map on a full disk killed `poi prepare`
    with SIGBUS (exit 135, nothing printed); its blocks are reserved first."""
    import errno
    import os

    writer = StoreWriter(tmp_path / "store")
    faces = writer.open_faces(4, 16)
    assert os.stat(tmp_path / "store" / "faces.npy").st_blocks * 512 >= faces.nbytes  # allocated, not sparse
    del faces

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as raised:
        StoreWriter(tmp_path / "other").open_faces(4, 16)
    assert raised.value.filename == str(tmp_path / "other" / "faces.npy")
    assert not (tmp_path / "other" / "faces.npy").exists()  # nothing half made for a resume to trust


def test_build_checkpoint_and_load_checkpoint_round_trip(tmp_path: Path):
    model = tiny_model()
    config = model.config
    preprocessing = Preprocessing(face_size=96, input_size=64, grayscale=True)
    payload = build_checkpoint(model=model, model_config=config, classes=class_names(7), preprocessing=preprocessing,
                               epoch=2, config={"lr": 0.1}, best_val_acc=0.5, best_epoch=2, val_acc=0.5,
                               resolved={"store_size": 96}, optimizer={"state": {}}, history=[{"epoch": 1}], rng=None)
    assert "rng" not in payload and "packed" not in payload  # optional keys only when given
    path = tmp_path / "ck.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert set(loaded) == set(payload)
    info = read_checkpoint_info(path)
    assert info == CheckpointInfo.of(payload)
    assert info.preprocessing == preprocessing and info.model_config == config and info.input_size == 64
    assert info.classes == class_names(7) and (info.epoch, info.best_val_acc, info.best_epoch) == (2, 0.5, 2)
    assert info.config == {"lr": 0.1} and info.packed is None
    reloaded, _ = load_model(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_old_checkpoint_derives_its_preprocessing(tmp_path: Path):
    model = tiny_model()
    config = model.config
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"epoch": 1, "model": model.state_dict(), "model_config": config.to_dict(), "classes": list(class_names(7))})
    assert read_checkpoint_info(path).preprocessing == Preprocessing(face_size=64, input_size=64, grayscale=False)
    save_checkpoint(path, {"epoch": 1, "model": model.state_dict(), "model_config": config.to_dict(),
                           "classes": list(class_names(7)), "resolved": {"store_size": 112, "grayscale": True}})
    assert read_checkpoint_info(path).preprocessing == Preprocessing(face_size=112, input_size=64, grayscale=True)


def test_regions_table():
    assert [r.name for r in REGIONS] == list(REGION_NAMES) == ["left_eye", "right_eye", "left_mouth", "right_mouth"]
    assert [r.index for r in REGIONS] == [0, 1, 2, 3]
    assert [(r.branch, r.au_group, r.flipped, r.side) for r in REGIONS] == [
        ("upper", "eye", False, 0), ("upper", "eye", True, 1), ("lower", "mouth", False, 0), ("lower", "mouth", True, 1)]
    assert [r.name for r in AU_REGIONS["AU06"]] == ["left_eye", "right_eye"]
    assert [r.name for r in AU_REGIONS["AU12"]] == ["left_mouth", "right_mouth"]
    assert list(AU_REGIONS) == [*EYE_AUS, *MOUTH_AUS]
    assert not any(r.au_group == "mouth" for au in EYE_AUS for r in AU_REGIONS[au])


def test_landmark_names_and_statuses_have_one_spelling():
    assert LANDMARK_NAMES == ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
    for dataset in ("ckplus", "affectnet"):
        assert tuple(read_manifest(f"datasets/{dataset}.json")["landmarks_68_to_5"]) == LANDMARK_NAMES
    assert len(set(STORE_STATUSES)) == len(STORE_STATUSES) == 6
