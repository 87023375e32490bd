"""`poi noise`: seeded symmetric flips written as a label file; the shipped FERPlus files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from poi_cli.cli import app
from poi_cli.core.manifests import class_names
from poi_cli.core.schema import STATUS_BAD_IMAGE, STATUS_OK
from poi_cli.data.noise import flip_labels, write_noisy_labels
from poi_cli.data.store import MANIFEST_FILE, PreparedDataset, StoreError, read_label_file, write_store


def make_store(root: Path, images: int = 3000, num_classes: int = 8, labelled: Sequence[int] | None = None,
               **meta: str) -> Path:
    """A prepared folder with `images` train rows, a few val rows and one bad image (1x1 faces);
    labelled: the classes its rows use (all by default; CK+48 uses every one but neutral);
    meta: dataset and layout of its prepared.json (default dataset "test", which poi has no facts for)."""
    rng = np.random.default_rng(1)
    splits = ["train"] * images + ["val"] * 10 + ["train"]
    labels = rng.integers(0, num_classes, len(splits)) if labelled is None else rng.choice(labelled, len(splits))
    names = class_names(num_classes)
    rows = []
    for k, (split, label) in enumerate(zip(splits, labels)):
        ok = k < len(splits) - 1
        rows.append(dict(id=f"{split}/img{k:05d}.png", source=f"{split}/img{k:05d}.png", split=split, label=int(label),
                         label_name=names[label], status=STATUS_OK if ok else STATUS_BAD_IMAGE,
                         reason="" if ok else "empty file", n_faces=1, store_index=k if ok else -1))
    return write_store(root, np.zeros((len(splits), 1, 1, 3), np.uint8), rows, classes=names,
                       **{"dataset": "test", **meta})


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


def old_flip_labels(labels: np.ndarray, num_classes: int, rate: float, seed: int) -> np.ndarray:
    """flip_labels as it was before flips kept to the labelled classes: the shipped files' rule."""
    rng = np.random.Generator(np.random.PCG64(seed))
    flip = rng.random(labels.shape) < rate
    offsets = rng.integers(1, num_classes, size=labels.shape)
    return np.where(flip, (labels + offsets) % num_classes, labels)


def test_a_store_that_labels_every_class_gets_the_old_flips(tmp_path: Path) -> None:
    """The shipped FERPlus files were drawn by the old rule: they must stay reproducible."""
    store = make_store(tmp_path / "store")
    table = pd.read_csv(write_noisy_labels(store, 0.3, seed=5)[0])
    clean = table["clean_label"].to_numpy(np.int64)
    assert (table["label"].to_numpy() == old_flip_labels(clean, 8, 0.3, 5)).all()
    assert (flip_labels(clean, 8, 0.3, 5, classes=range(8)) == old_flip_labels(clean, 8, 0.3, 5)).all()
    assert "never_labelled" not in write_noisy_labels(store, 0.3, seed=5)[1]  # the summary is unchanged too


def test_flips_stay_among_the_classes_the_dataset_labels(tmp_path: Path) -> None:
    """CK+48: 8 classes, contempt at index 7, but no neutral (6) face: no label may become neutral."""
    # uniform over the other labelled classes (CK+: no neutral, 6): each of 0..5 gets 1/6 of
    # contempt's flips, none goes to 6
    flipped = flip_labels(np.full(60000, 7), 8, 1.0, classes=[0, 1, 2, 3, 4, 5, 7])
    shares = np.bincount(flipped, minlength=8) / len(flipped)
    assert np.allclose(shares[:6], 1 / 6, atol=0.01) and shares[6] == 0 and shares[7] == 0
    store = make_store(tmp_path / "store", labelled=[0, 1, 2, 3, 4, 5, 7], dataset="ckplus", layout="ck+48")
    path, summary = write_noisy_labels(store, 0.5, seed=0)
    table = pd.read_csv(path)
    flipped = table["label"] != table["clean_label"]
    assert (table["label"] != 6).all() and summary["per_class"]["neutral"]["noisy_labels"] == 0
    assert set(table.loc[flipped, "label"]) == {0, 1, 2, 3, 4, 5, 7}  # every other labelled class still a target
    assert abs(summary["realised_rate"] - 0.5) < 0.04 and summary["never_labelled"] == ["neutral"]
    result = CliRunner().invoke(app, ["noise", str(store), "--rate", "0.5", "--seed", "1"])
    assert result.exit_code == 0 and "never to neutral" in result.output
    with pytest.raises(ValueError, match="at least two"):
        flip_labels(np.array([3, 3]), 8, 0.1, classes=[3])
    with pytest.raises(ValueError, match="labels must be among the classes"):
        flip_labels(np.array([6]), 8, 0.1, classes=[0, 7])


def test_a_folder_of_two_classes_flips_between_its_two(tmp_path: Path) -> None:
    """happy/ and sad/ make a 7-class folder; its labels were flipped to the 5 classes it has no
    image of (--noise 1.0 spread them over all 7)."""
    store = make_store(tmp_path / "store", images=400, num_classes=7, labelled=[3, 4], dataset="folder")
    path, summary = write_noisy_labels(store, 0.5, seed=0)
    table = pd.read_csv(path)
    assert set(table["label"]) == {3, 4} and summary["never_labelled"] == ["surprise", "fear", "disgust", "anger", "neutral"]
    flipped = table["label"] != table["clean_label"]
    assert abs(summary["realised_rate"] - 0.5) < 0.08 and (table.loc[flipped, "label"] == 7 - table.loc[flipped, "clean_label"]).all()


def test_train_noise_and_the_audit_that_rebuilds_it_flip_among_the_labelled_classes(tmp_path: Path) -> None:
    """`poi train --noise` flips in memory, and `poi audit` rebuilds those labels from the run's
    config: both keep to the dataset's classes (no neutral on CK+48) and agree label for label."""
    from poi_cli.study.audit import audited_labels
    from poi_cli.train.config import TrainConfig
    from poi_cli.train.data import training_labels

    store = make_store(tmp_path / "store", images=600, labelled=[0, 1, 2, 3, 4, 5, 7], dataset="ckplus", layout="ck+48")
    dataset = PreparedDataset(store)
    config = TrainConfig(data=str(store), noise=0.5, noise_seed=2)
    labels, clean, realised = training_labels(dataset, dataset.split("train"), config)
    assert 6 not in labels and realised is not None and abs(realised - 0.5) < 0.06
    audited, _ = audited_labels(dataset, "train", config.to_dict(), True)
    assert (audited.labels == labels).all() and (audited.clean_labels == clean).all()


def test_a_combined_folder_flips_each_face_among_its_own_datasets_classes(tmp_path: Path) -> None:
    """A combined folder labels every class of its union, but each face flips only among those its
    own member labels: a CK+48 face never to neutral though FERPlus labels it (--rate 1.0 turned
    CK+ faces into neutral), a 7-class member's never to contempt; `poi train --noise` and the
    audit that rebuilds it flip the same way."""
    from poi_cli.data.combined import combine
    from poi_cli.study.audit import audited_labels
    from poi_cli.train.config import TrainConfig
    from poi_cli.train.data import training_labels

    ck = make_store(tmp_path / "ck", images=300, labelled=[0, 1, 2, 3, 4, 5, 7], dataset="ckplus", layout="ck+48")
    fer = make_store(tmp_path / "fer", images=300, dataset="ferplus")
    both = combine([ck, fer], tmp_path / "both")
    path, summary = write_noisy_labels(both, 1.0, seed=0)
    table = pd.read_csv(path)
    from_ck = table["id"].str.startswith("ck/")
    assert (table["label"] != table["clean_label"]).all() and summary["realised_rate"] == 1.0
    assert (table.loc[from_ck, "label"] != 6).all()  # CK+48 labels no neutral face
    assert set(table.loc[from_ck, "label"]) == {0, 1, 2, 3, 4, 5, 7}
    assert set(table.loc[~from_ck, "label"]) == set(range(8))  # FERPlus faces may become neutral
    assert summary["never_labelled_by"] == {"ck": ["neutral"]} and "never_labelled" not in summary
    assert summary["per_class"]["neutral"]["noisy_labels"] == int((table["label"] == 6).sum())
    result = CliRunner().invoke(app, ["noise", str(both), "--rate", "1.0", "--seed", "1"])
    assert result.exit_code == 0 and "ck's never to neutral" in result.output

    dataset = PreparedDataset(both)
    config = TrainConfig(data=str(both), noise=1.0, noise_seed=0)
    labels, clean, realised = training_labels(dataset, dataset.split("train"), config)
    assert (labels == table["label"].to_numpy()).all() and realised == 1.0
    audited, _ = audited_labels(dataset, "train", config.to_dict(), True)
    assert (audited.labels == labels).all() and (audited.clean_labels == clean).all()

    seven = make_store(tmp_path / "seven", images=300, num_classes=7)  # a 7-class member beside an 8-class one
    mixed = pd.read_csv(write_noisy_labels(combine([seven, fer], tmp_path / "mixed"), 1.0, seed=0)[0])
    from_seven = mixed["id"].str.startswith("seven/")
    assert (mixed.loc[from_seven, "label"] != 7).all() and set(mixed.loc[~from_seven, "label"]) == set(range(8))
    assert (mixed["label"] != mixed["clean_label"]).all()


def test_noise_never_writes_over_a_label_file_with_other_labels(tmp_path: Path) -> None:
    """The same command again rewrites the same bytes; a file at --out (or the default path)
    that holds other labels (hand-edited, another seed's) is refused and kept."""
    store = make_store(tmp_path / "store", images=50)
    path, _ = write_noisy_labels(store, 0.2, seed=0)
    first = path.read_bytes()
    assert write_noisy_labels(store, 0.2, seed=0)[0].read_bytes() == first
    path.write_bytes(first.replace(b"\n", b"\r\n"))  # edited by hand
    edited = path.read_bytes()
    with pytest.raises(ValueError, match="exists already with other contents"):
        write_noisy_labels(store, 0.2, seed=0)
    with pytest.raises(ValueError, match="exists already with other contents"):
        write_noisy_labels(store, 0.2, seed=1, out=path)
    assert path.read_bytes() == edited
    mine = tmp_path / "mine.csv"
    mine.write_text("not poi's\n")
    result = CliRunner().invoke(app, ["noise", str(store), "--rate", "0.2", "--out", str(mine)])
    assert result.exit_code == 1 and mine.read_text() == "not poi's\n" and not mine.with_suffix(".json").exists()


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


def test_an_empty_label_cell_names_its_row_and_id(tmp_path: Path) -> None:
    """pandas reads an empty cell as nan: the error says the label is missing, not "label 'nan'"."""
    store = make_store(tmp_path / "store", images=5)
    path = tmp_path / "labels.csv"
    path.write_text("id,label,clean_label\ntrain/img00000.png,3,3\ntrain/img00001.png,,2\n")
    with pytest.raises(StoreError, match=r"row 3 \(id 'train/img00001.png'\): the label is empty") as error:
        PreparedDataset(store).split("train", labels_file=path)
    assert "nan" not in str(error.value) and "\n" not in str(error.value)
    path.write_text("id,label,clean_label\ntrain/img00000.png,3,\n")
    with pytest.raises(StoreError, match=r"row 2 \(id 'train/img00000.png'\): the clean_label is empty$"):
        read_label_file(path)


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
    # the rate and the per-class counts are of the subset's images, by their clean class
    subset = table.loc[kept]
    assert summary["realised_rate"] == round(float((subset["label"] != subset["clean_label"]).mean()), 6)
    names = PreparedDataset(store).classes
    for c, name in enumerate(names):
        of_class = subset[subset["clean_label"] == c]
        assert summary["per_class"][name] == {"images": len(of_class), "flipped": int((of_class["label"] != c).sum()),
                                              "noisy_labels": int((subset["label"] == c).sum())}
    clean_subset = pd.read_csv(write_noisy_labels(store, 0.0, seed=0, subset=500)[0])
    assert ((clean_subset["label"] >= 0) == kept).all()  # the same images at 0 % (subset seed 0)
    other = pd.read_csv(write_noisy_labels(store, 0.3, seed=0, subset=500, subset_seed=1, out=tmp_path / "o.csv")[0])
    assert not ((other["label"] >= 0) == kept).all()
    assert len(PreparedDataset(store).split("train", labels_file=path).labels) == 500  # training sees the subset
    result = CliRunner().invoke(app, ["noise", str(store), "--rate", "0.3", "--subset", "0"])
    assert result.exit_code == 1 and "--subset must lie in 1.." in result.output
