"""`poi noise`: seeded symmetric flips written as a label file; the shipped FERPlus files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from poi_cli.cli import app
from poi_cli.core.manifests import class_names
from poi_cli.core.schema import STATUS_BAD_IMAGE, STATUS_OK
from poi_cli.data.noise import write_noisy_labels
from poi_cli.data.store import MANIFEST_FILE, PreparedDataset, write_store


def make_store(root: Path, images: int = 3000, num_classes: int = 8) -> Path:
    """A prepared folder with `images` train rows, a few val rows and one bad image (1x1 faces)."""
    rng = np.random.default_rng(1)
    splits = ["train"] * images + ["val"] * 10 + ["train"]
    labels = rng.integers(0, num_classes, len(splits))
    names = class_names(num_classes)
    rows = []
    for k, (split, label) in enumerate(zip(splits, labels)):
        ok = k < len(splits) - 1
        rows.append(dict(id=f"{split}/img{k:05d}.png", source=f"{split}/img{k:05d}.png", split=split, label=int(label),
                         label_name=names[label], status=STATUS_OK if ok else STATUS_BAD_IMAGE,
                         reason="" if ok else "empty file", n_faces=1, store_index=k if ok else -1))
    return write_store(root, np.zeros((len(splits), 1, 1, 3), np.uint8), rows, dataset="test", classes=names)


def test_same_seed_gives_byte_identical_files_and_manifest_is_untouched(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    manifest_before = (store / MANIFEST_FILE).read_bytes()
    path, _ = write_noisy_labels(store, 0.2, seed=3)
    assert path == store / "labels" / "train_noise20_seed3.csv"
    first, first_summary = path.read_bytes(), path.with_suffix(".json").read_bytes()
    again, _ = write_noisy_labels(store, 0.2, seed=3)
    assert again.read_bytes() == first and again.with_suffix(".json").read_bytes() == first_summary
    copy, _ = write_noisy_labels(store, 0.2, seed=3, out=tmp_path / "copy.csv")
    assert copy.read_bytes() == first
    other, _ = write_noisy_labels(store, 0.2, seed=4, out=tmp_path / "other.csv")
    assert other.read_bytes() != first
    assert (store / MANIFEST_FILE).read_bytes() == manifest_before


def test_realised_rate_per_class_counts_and_clean_labels(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    path, summary = write_noisy_labels(store, 0.3, seed=0)
    table = pd.read_csv(path)
    manifest = pd.read_csv(store / MANIFEST_FILE)
    train = manifest[(manifest["split"] == "train") & (manifest["status"] == STATUS_OK)]
    assert table["id"].tolist() == train["id"].tolist()  # every usable train image, in manifest order
    assert table["clean_label"].tolist() == train["label"].tolist()
    flipped = table["label"] != table["clean_label"]
    assert summary["flipped"] == int(flipped.sum()) == sum(c["flipped"] for c in summary["per_class"].values())
    assert summary["realised_rate"] == pytest.approx(flipped.mean(), abs=1e-6)
    assert abs(summary["realised_rate"] - 0.3) < 0.04  # 3000 draws: sd about 0.008
    assert table["label"].between(0, 7).all()
    names = class_names(8)
    assert (table["label_name"] == [names[k] for k in table["label"]]).all()
    # Flips land on every other class roughly uniformly: no class takes more than half of them.
    targets = table.loc[flipped, "label"].value_counts()
    assert len(targets) == 8 and targets.max() < 0.5 * flipped.sum()

    # The file is what training reads: noisy labels in, manifest labels kept as the clean ones.
    data = PreparedDataset(store).split("train", labels_file=path)
    assert (data.labels == table["label"].to_numpy()).all()
    assert (data.clean_labels == train["label"].to_numpy()).all()


def test_rate_zero_and_bad_arguments(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", images=50)
    _, summary = write_noisy_labels(store, 0.0, seed=0)
    assert summary["flipped"] == 0
    with pytest.raises(ValueError, match="rate"):
        write_noisy_labels(store, 1.5)
    with pytest.raises(ValueError, match="is one of the inputs"):
        write_noisy_labels(store, 0.1, out=store / MANIFEST_FILE)
    runner = CliRunner()
    result = runner.invoke(app, ["noise", str(store), "--rate", "0.1", "--split", "test"])
    assert result.exit_code == 1 and "no usable faces in split 'test'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["noise", str(tmp_path / "nothing"), "--rate", "0.1"])
    assert result.exit_code == 1 and "not a prepared dataset folder" in result.output
    result = runner.invoke(app, ["noise", str(store), "--rate", "0.1", "--split", "val"])
    assert result.exit_code == 0 and "realised rate" in result.output
    assert (store / "labels" / "val_noise10_seed0.csv").is_file()


@pytest.mark.parametrize("percent", [10, 20, 30])
def test_shipped_ferplus_noise_files(percent: int) -> None:
    """Image names and labels only; one row per FERPlus majority-vote train image."""
    shipped = resources.files("poi_cli.data_manifests").joinpath(f"noise/ferplus_train_noise{percent}_seed0.csv")
    with resources.as_file(shipped) as path:
        table = pd.read_csv(path, dtype={"id": str})
    assert list(table.columns) == ["id", "label"]
    assert len(table) == 25045 and table["id"].is_unique
    assert table["id"].str.fullmatch(r"FER2013Train/fer\d{7}\.png").all()
    assert table["label"].between(0, 7).all()


def test_subset_keeps_a_seeded_choice_with_the_full_files_flips(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    full = pd.read_csv(write_noisy_labels(store, 0.3, seed=0)[0])
    path, summary = write_noisy_labels(store, 0.3, seed=0, subset=500)
    assert path.name == "train_noise30_seed0_subset500.csv"
    table = pd.read_csv(path, keep_default_na=False)
    kept = table["label"] >= 0
    assert kept.sum() == 500 == summary["images"] and summary["split_images"] == len(full)
    assert (table.loc[~kept, "label"] == -1).all() and (table.loc[~kept, "label_name"] == "").all()
    assert table.loc[kept, "label"].tolist() == full.loc[kept, "label"].tolist()  # the full file's flips
    assert table["clean_label"].tolist() == full["clean_label"].tolist()
    assert summary["flipped"] == int((table.loc[kept, "label"] != table.loc[kept, "clean_label"]).sum())
    clean_subset = pd.read_csv(write_noisy_labels(store, 0.0, seed=0, subset=500)[0])
    assert ((clean_subset["label"] >= 0) == kept).all()  # the same images at 0 % (subset seed 0)
    other = pd.read_csv(write_noisy_labels(store, 0.3, seed=0, subset=500, subset_seed=1, out=tmp_path / "o.csv")[0])
    assert not ((other["label"] >= 0) == kept).all()
    assert len(PreparedDataset(store).split("train", labels_file=path).labels) == 500  # training sees the subset
    result = CliRunner().invoke(app, ["noise", str(store), "--rate", "0.3", "--subset", "0"])
    assert result.exit_code == 1 and "--subset must lie in 1.." in result.output
