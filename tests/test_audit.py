"""`poi audit`: the PIN's objective inference finds flipped labels."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import make_prepared
from poi_cli.study.audit import AUDIT_COLUMNS, audit, detection_metrics, suspicion_score, write_audit
from poi_cli.cli import app
from poi_cli.core.metrics import roc_auc
from poi_cli.train.config import TrainConfig
from poi_cli.train.engine import train
from poi_cli.data.noise import flip_labels
from poi_cli.data.store import FACES_FILE, MANIFEST_FILE, PreparedDataset

runner = CliRunner()


def brightness_prepared(root):
    """A 4-class prepared folder whose class is the face's grey level: every facial region
    sees it, so the PIN's regions learn it within a few dozen steps."""
    data = make_prepared(root, num_classes=4, splits={"train": 12, "valid": 3})
    manifest = pd.read_csv(data / MANIFEST_FILE)
    faces = np.load(data / FACES_FILE)
    rng = np.random.default_rng(0)
    for label, row in zip(manifest["label"], manifest["store_index"]):
        faces[row] = np.clip(40 + 50 * label + rng.normal(0, 8, faces.shape[1:]), 0, 255).astype(np.uint8)
    np.save(data / FACES_FILE, faces)
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A POI model trained on clean labels (it learns the clean mapping), and a label
    file in which a known quarter of the training labels are flipped."""
    root = tmp_path_factory.mktemp("audit")
    data = brightness_prepared(root / "prepared")
    config = TrainConfig(
        # ResNet-10 for 8 epochs: ROC AUC 1.00 here in 23 s on a loaded machine (16 epochs: 0.97 in 44 s)
        data=str(data), arch="resnet10", input_size=64, epochs=8, batch=8, lr=0.05, schedule="cosine", amp="off",
        augment=False, project=str(root / "runs"), name="clean", device="cpu",
    )
    run_dir = train(config, console=Console(file=io.StringIO()))
    split = PreparedDataset(data).split("train")
    noisy = flip_labels(split.labels, 4, rate=0.25, seed=3)
    labels_file = root / "noisy.csv"
    pd.DataFrame({"id": split.ids, "label": noisy, "clean_label": split.labels}).to_csv(labels_file, index=False)
    return data, run_dir, labels_file, noisy != split.labels


def test_flipped_labels_rank_above_clean_ones(trained, tmp_path):
    data, run_dir, labels_file, flipped = trained
    result = audit(run_dir, data, labels_file=labels_file, device="cpu")
    table = result.table
    assert list(table.columns[: len(AUDIT_COLUMNS)]) == list(AUDIT_COLUMNS)
    assert table["suspicion"].is_monotonic_decreasing and list(table["rank"]) == list(range(1, len(table) + 1))
    assert table["flipped"].sum() == flipped.sum() > 0
    # The model learned the clean mapping, so the flipped images are the suspects.
    assert result.summary["detection"]["pin_suspicion"]["roc_auc"] > 0.85
    assert table["rank"][table["flipped"]].mean() < table["rank"][~table["flipped"]].mean()
    assert set(result.summary["detection"]) == {"pin_suspicion", "trn_one_minus_q"}
    assert 0.0 <= result.summary["suggested_recovers_clean_label"] <= 1.0
    assert "own training set" in result.summary["mode"]

    files = write_audit(result, tmp_path / "audit", sheet_count=8)
    written = pd.read_csv(files[0])
    assert len(written) == len(table) and written["suspicion"].is_monotonic_decreasing
    from PIL import Image

    assert Image.open(files[2]).size[0] > 0


def test_without_clean_labels_detection_is_skipped(trained):
    data, run_dir, _, _ = trained
    result = audit(run_dir, data, split="valid", device="cpu")
    assert result.summary["detection"] is None and "skipped" in result.summary["detection_note"]
    assert "held-out" in result.summary["mode"]
    assert "flipped" not in result.table.columns


def test_cli_writes_files_and_reports_detection(trained, tmp_path):
    data, run_dir, labels_file, _ = trained
    out = tmp_path / "cli"
    # The run stands in for a baseline too: its loss -log q_y ranks exactly like 1 - q_y.
    result = runner.invoke(app, ["audit", str(run_dir), str(data), "--labels", str(labels_file), "--out", str(out),
                                 "--device", "cpu", "--baseline", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "ROC AUC" in result.output and "flipped" in result.output and "baseline_loss" in result.output
    assert {p.name for p in out.iterdir()} >= {"audit.csv", "audit_summary.json", "contact_sheet.png"}
    summary = json.loads((out / "audit_summary.json").read_text())
    assert summary["detection"]["pin_suspicion"]["roc_auc"] > 0.85
    detection = summary["detection"]
    assert detection["baseline_loss"]["roc_auc"] == pytest.approx(detection["trn_one_minus_q"]["roc_auc"])
    assert "baseline_loss" in pd.read_csv(out / "audit.csv").columns
    bad = runner.invoke(app, ["audit", str(tmp_path / "absent"), str(data)])
    assert bad.exit_code == 1 and "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
    no_device = runner.invoke(app, ["audit", str(run_dir), str(data), "--device", "mps"])  # never on Linux
    assert no_device.exit_code == 1 and "MPS is not available" in no_device.output and "Traceback" not in no_device.output


def test_suspicion_and_metrics_by_hand():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    w = np.array([1.0, 0.5, 1.0])
    assert np.allclose(suspicion_score(probs, w, np.array([0, 0, 1])), [0.1, 0.4, 0.5])
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert roc_auc(np.array([0.1, 0.2]), np.array([0, 0])) is None
    metrics = detection_metrics(np.array([0.9, 0.1, 0.8, 0.2, 0.3]), np.array([1, 0, 0, 1, 0]))
    assert metrics["precision_at_noise_count"] == 0.5  # top 2: one flipped, one clean
    assert metrics["recall_at_top_20pct"] == 0.5  # top 1 of 5 holds one of the two flipped


def test_audit_table_and_summary_by_hand(tmp_path):
    """audit_of on four images of two classes, p*, q and w given: two labels flipped (0 and 3)."""
    from poi_cli.data.store import SplitData
    from poi_cli.study.audit import audit_of

    dataset = PreparedDataset(make_prepared(tmp_path / "data", num_classes=2, splits={"train": 2}))
    split = dataset.split("train")
    assert split.labels.tolist() == [0, 0, 1, 1]
    data = SplitData(split.store_rows, np.array([1, 0, 1, 0]), split.ids, clean_labels=split.labels)
    objective = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.3, 0.7]])
    w = np.array([1.0, 1.0, 1.0, 0.5])
    # suspicion w (1 - p*_given): 0.9, 0.5, 0.2, 0.35 -> the order 0, 1, 3, 2
    result = audit_of(dataset, data, objective, objective, w, label_source="test", mode="test", checkpoint="x",
                      split="train")
    table = result.table
    assert table["id"].tolist() == [split.ids[k] for k in (0, 1, 3, 2)]
    assert table["pin_prob_given"].tolist() == pytest.approx([0.1, 0.5, 0.3, 0.8])  # p* of the given label
    assert result.store_rows.tolist() == split.store_rows[[0, 1, 3, 2]].tolist()  # faces follow the table's rows
    summary = result.summary
    assert summary["suspects"] == {"0.5": 2, "0.7": 1, "0.9": 1}  # at least the threshold (0.5 is a suspect)
    names = dataset.classes
    assert {name: counts["0.5"] for name, counts in summary["suspects_per_class"].items()} == {names[0]: 1, names[1]: 1}
    assert summary["realised_noise_rate"] == 0.5
    assert summary["suggested_recovers_clean_label"] == 1.0  # both flipped images: p*'s argmax is the clean label


def test_detection_recall_at_a_top_fraction_rounds_its_count():
    from poi_cli.study.audit import detection_metrics

    # 5 images: the top 30 % is round(1.5) = 2 images (not int: 1), the top 10 % at least 1
    metrics = detection_metrics(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([0, 1, 1, 0, 0]))
    assert metrics["recall_at_top_30pct"] == 0.5 and metrics["recall_at_top_10pct"] == 0.0
    metrics = detection_metrics(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 0, 1]))
    assert metrics["recall_at_top_10pct"] == 0.5  # round(0.4) = 0, but never fewer than one image


@pytest.mark.parametrize("command", ["audit", "clean"])
def test_a_model_without_objective_inference_is_refused_before_predicting(command, tiny_runs, tmp_path, monkeypatch) -> None:
    """A baseline run has no PIN, so no p* to audit with: refused from its checkpoint, before the
    split is predicted (it used to run the whole split first, minutes on a real one)."""
    import poi_cli.model.predictions as predictions

    def predicted(*args, **kwargs):
        raise AssertionError("the split was predicted")

    monkeypatch.setattr(predictions, "predict_checkpoint_split", predicted)
    monkeypatch.setattr("poi_cli.study.audit.predict_checkpoint_split", predicted)
    if command == "audit":
        with pytest.raises(Exception, match="no objective inference") as caught:
            audit(tiny_runs.baseline, tiny_runs.data, device="cpu")
    else:
        from poi_cli.study.clean import objective_of
        dataset = PreparedDataset(tiny_runs.data)
        with pytest.raises(Exception, match="no objective inference") as caught:
            objective_of(tiny_runs.baseline, dataset, dataset.split("valid"), "cpu")
    assert not isinstance(caught.value, AssertionError)
