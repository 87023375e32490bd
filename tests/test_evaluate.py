"""`poi evaluate` on models whose answers are known by construction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import add_folds, make_prepared, tiny_config, tiny_model, write_checkpoint
from poi_cli.model.calibration import Calibration, calibration_study, softmax
from poi_cli.model.checkpoint import resolve_checkpoint
from poi_cli.cli import app
from poi_cli import render
from poi_cli.study.evaluate import (confidence_strata, consistency_quantiles, evaluate, predict_mapped,
                                        risk_coverage_points, write_reports)
from poi_cli.core.manifests import class_names
from poi_cli.data.datasets.common import labelled_classes
from poi_cli.data.store import MANIFEST_FILE
from poi_cli.train.engine import train


def constant_model(path, num_classes=7, trn_order=(3,), region_classes=(0, 0, 1, 1), gate_region=2, use_pin=True,
                   classes=None):
    """A checkpoint whose outputs ignore the image: the TRN ranks `trn_order` first, region n
    predicts region_classes[n] (regions 0-1 strongly, 2-3 weakly), the gate trusts `gate_region`."""
    model = tiny_model(num_classes, use_pin)
    with torch.no_grad():
        model.trn.fc.weight.zero_()
        model.trn.fc.bias.zero_()
        for rank, cls in enumerate(trn_order):
            model.trn.fc.bias[cls] = 10.0 - rank
        if use_pin:
            for n, head in enumerate(model.pin.region_classifiers.heads):
                head.weight.zero_()
                head.bias.zero_()
                head.bias[region_classes[n]] = 20.0 if n < 2 else 5.0
            model.pin.oim.fc.weight.zero_()
            model.pin.oim.fc.bias.zero_()
            model.pin.oim.fc.bias[gate_region] = 20.0
    return write_checkpoint(path, model, classes)


def assert_same_scores(scores: dict, expected: dict) -> None:
    """Two calibration_study score blocks agree, score by score (pytest.approx takes no nested dicts);
    evaluate's adds checkpoint_confidence for a calibrated checkpoint (calibration_block)."""
    assert set(scores) - {"checkpoint_confidence"} == set(expected)
    for name, row in expected.items():
        assert scores[name] == pytest.approx(row), name


def unbalanced_prepared(root, num_classes=7):
    """Test split with c + 1 images of class c (the others marked as failed faces)."""
    data = make_prepared(root, num_classes=num_classes, splits={"test": num_classes})
    manifest = pd.read_csv(data / MANIFEST_FILE)
    index = manifest.groupby("label").cumcount()
    manifest.loc[index > manifest["label"], "status"] = "no_face"
    manifest.to_csv(data / MANIFEST_FILE, index=False)
    return data


def test_evaluate_known_answer_cli_json_and_files(tmp_path):
    data = unbalanced_prepared(tmp_path / "data")  # 1 + 2 + ... + 7 = 28 images
    checkpoint = constant_model(tmp_path / "model.pt")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), str(data), "--json", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_images"] == 28
    assert report["accuracy"] == pytest.approx(4 / 28)  # always happiness (class 3, 4 images)
    assert report["per_class"]["happiness"] == {"n": 4, "recall": 1.0}
    assert report["per_class"]["neutral"] == {"n": 7, "recall": 0.0}
    assert report["mean_class_recall"] == pytest.approx(1 / 7)  # the mean of the 7 recalls (their median is 0)
    confusion = np.array(report["confusion_matrix"])
    assert confusion[:, 3].tolist() == [1, 2, 3, 4, 5, 6, 7] and confusion.sum() == 28
    assert report["pin_intermediate_accuracy"] == pytest.approx(2 / 28)  # gate trusts region 2 -> fear
    assert report["pin_average_accuracy"] == pytest.approx(1 / 28)  # two strong regions -> surprise
    assert [s["n"] for s in report["consistency_strata"]] == [8, 14, 20]
    assert [s["n"] for s in report["confidence_strata"]] == [8, 14, 20]
    w = report["consistency_quantiles"]
    assert 0.25 <= w["min"] <= w["q05"] <= w["median"] <= w["max"] <= 1
    assert report["class_mapping"] is None
    assert report["checkpoint_temperature"] is None and "uncalibrated checkpoint: T_cal = 1" in report["notes"]
    calibration = report["calibration"]
    assert set(calibration["scores"]) == {"max_softmax", "confidence", "consistency"}
    assert calibration["n_fit"] == calibration["n_measured"] == 14 and calibration["seed"] == 0
    assert "fitted on a seeded half" in calibration["protocol"] and "other half" in calibration["protocol"]
    assert calibration["scores"]["consistency"]["nll"] is None and calibration["scores"]["confidence"]["nll"] > 0
    # the model is always 10 logits sure of happiness, right 4 times in 28: temperature scaling must help
    assert calibration["scores"]["confidence"]["ece"] < calibration["scores"]["max_softmax"]["ece"]

    table = pd.read_csv(out / "confusion_matrix.csv")
    assert table.columns.tolist() == ["true_class", *class_names(7)]
    assert table.set_index("true_class").loc["neutral", "happiness"] == 7
    for name in ("confusion_matrix.png", "reliability.png", "risk_coverage.png"):
        assert (out / name).stat().st_size > 1000, name
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == report["accuracy"]
    table_mode = CliRunner().invoke(app, ["evaluate", str(checkpoint), str(data), "--out", str(out), "--device", "cpu"])
    assert table_mode.exit_code == 0 and f"consistency w: min {w['min']:.4f}" in table_mode.stdout
    confidence = calibration["scores"]["confidence"]
    assert 0 < confidence["ece_floor"] < 1
    assert f"confidence: ECE {confidence['ece']:.4f} (perfectly calibrated here: {confidence['ece_floor']:.4f}), NLL" \
        in table_mode.stdout and "accuracy at 80% coverage" in table_mode.stdout
    assert "consistency: ECE" in table_mode.stdout and "fitted on a seeded half" in table_mode.stdout


def test_eight_class_model_on_seven_class_data_maps_by_name(tmp_path):
    data = unbalanced_prepared(tmp_path / "data")
    # contempt first, happiness second: on 7-class data contempt is not a choice
    checkpoint = constant_model(tmp_path / "model8.pt", num_classes=8, trn_order=(7, 3))
    report = evaluate(checkpoint, data, device="cpu")
    assert report["accuracy"] == pytest.approx(4 / 28)
    assert "contempt" in report["class_mapping"] and report["n_left_out"] == 0
    # the calibration study sees the 7 shared classes only: happiness leads by 10 logits, not contempt by 1
    mapped = predict_mapped(checkpoint, data, device="cpu")
    logits = mapped.predictions.trn_logits[:, [class_names(8).index(name) for name in class_names(7)]]
    expected = calibration_study(logits, mapped.targets, mapped.predictions.consistency, seed=0)
    assert_same_scores(report["calibration"]["scores"], expected["scores"])
    # happiness at probability ~1 among the 7, right 3 times in the 14 measured (contempt's ~0.73 over all 8)
    assert report["calibration"]["scores"]["max_softmax"]["ece"] > 0.75


def test_seven_class_baseline_on_eight_class_data(tmp_path):
    data = make_prepared(tmp_path / "data", num_classes=8, splits={"test": 2})
    checkpoint = constant_model(tmp_path / "base.pt", use_pin=False, trn_order=(6,))
    report = evaluate(checkpoint, data, device="cpu")
    assert report["n_images"] == 14 and report["n_left_out"] == 2  # the contempt images
    assert report["accuracy"] == pytest.approx(2 / 14)
    assert report["consistency_strata"] is None and report["pin_intermediate_accuracy"] is None
    assert report["consistency_quantiles"] is None and report["pin_average_accuracy"] is None
    assert any("baseline" in n and "no consistency" in n for n in report["notes"])
    assert [s["n"] for s in report["confidence_strata"]] == [4, 7, 10]  # a baseline has a calibrated confidence
    calibration = report["calibration"]
    assert calibration["scores"]["consistency"] is None
    assert calibration["scores"]["confidence"]["aurc"] is not None and calibration["scores"]["max_softmax"]["nll"] > 0
    assert "consistency" not in calibration["risk_coverage"]
    files = write_reports(report, tmp_path / "out")
    assert {f.name for f in files} >= {"reliability.png", "risk_coverage.png"}
    assert (tmp_path / "out" / "risk_coverage.png").stat().st_size > 1000


def test_a_class_the_dataset_never_labels_is_no_answer(tmp_path):
    # CK+48: 8 classes (contempt keeps index 7) but not one neutral face, by the dataset's design
    data = make_prepared(tmp_path / "data", num_classes=8, splits={"test": 2})
    manifest = pd.read_csv(data / MANIFEST_FILE)
    manifest = manifest[manifest["label_name"] != "neutral"]
    manifest.to_csv(data / MANIFEST_FILE, index=False)
    checkpoint = constant_model(tmp_path / "model.pt", num_classes=8, trn_order=(6, 3))  # neutral, then happiness
    synthetic = evaluate(checkpoint, data, device="cpu")
    assert synthetic["accuracy"] == 0.0  # a synthetic dataset: neutral is an answer
    # a class without images has no recall, and does not count as 0 in the mean
    assert synthetic["per_class"]["neutral"] == {"n": 0, "recall": None}
    happy = evaluate(constant_model(tmp_path / "happy.pt", num_classes=8, trn_order=(3,)), data, device="cpu")
    assert happy["per_class"]["happiness"]["recall"] == 1.0
    assert happy["mean_class_recall"] == pytest.approx(1 / 7)  # over the 7 classes with images (not 1/8)
    meta = json.loads((data / "prepared.json").read_text())
    (data / "prepared.json").write_text(json.dumps({**meta, "dataset": "ckplus", "layout": "ck+48"}))
    report = evaluate(checkpoint, data, device="cpu")
    assert report["n_images"] == 14 and report["classes"] == [n for n in class_names(8) if n != "neutral"]
    assert report["accuracy"] == pytest.approx(2 / 14)  # happiness, the model's next answer
    assert "data 7" in report["class_mapping"] and "never neutral" in report["class_mapping"]
    # the labelled classes come from the dataset's facts file: CK+'s official layout and a
    # folder of class folders leave no hole; a dataset poi has no facts for leaves none either
    assert labelled_classes("ckplus", "official") == set(class_names(7))
    assert labelled_classes("folder", None) == set(class_names(8)) and labelled_classes("nosuch", None) is None


def test_training_validates_among_the_labelled_classes_as_evaluate_scores(tmp_path):
    # a CK+48-like folder (no neutral face) and a model that answers neutral, then happiness, on every face:
    # training's validation must not count neutral as an answer (its best.pt is selected on that figure)
    data = make_prepared(tmp_path / "data", num_classes=8, splits={"train": 1, "valid": 2})
    manifest = pd.read_csv(data / MANIFEST_FILE)
    manifest[manifest["label_name"] != "neutral"].to_csv(data / MANIFEST_FILE, index=False)
    meta = json.loads((data / "prepared.json").read_text())
    (data / "prepared.json").write_text(json.dumps({**meta, "dataset": "ckplus", "layout": "ck+48"}))
    checkpoint = constant_model(tmp_path / "model.pt", num_classes=8, trn_order=(6, 3))
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, lr=1e-9, use_pin=False, fine_tune=str(checkpoint)))
    val_acc = pd.read_csv(run / "results.csv")["val_acc"][0]
    assert val_acc == pytest.approx(2 / 14, abs=1e-6)  # happiness's 2 of the 14 valid faces; neutral everywhere: 0
    assert evaluate(run / "last.pt", data, split="valid", device="cpu")["accuracy"] == pytest.approx(val_acc, abs=1e-6)


def test_a_combined_folder_answers_each_face_among_its_own_folders_classes(tmp_path):
    from poi_cli.data.combined import combine

    alpha = make_prepared(tmp_path / "alpha", num_classes=6, splits={"train": 1, "valid": 2})  # no neutral, no contempt
    beta = make_prepared(tmp_path / "beta", num_classes=8, splits={"train": 1, "val": 2})
    manifest = pd.read_csv(beta / MANIFEST_FILE)
    manifest[manifest["label_name"] != "neutral"].to_csv(beta / MANIFEST_FILE, index=False)
    meta = json.loads((beta / "prepared.json").read_text())
    (beta / "prepared.json").write_text(json.dumps({**meta, "dataset": "ckplus", "layout": "ck+48"}))  # no neutral face
    both = combine([alpha, beta], tmp_path / "both")
    # neutral first, then contempt, then happiness, whatever the face
    checkpoint = constant_model(tmp_path / "model.pt", num_classes=8, trn_order=(6, 7, 3))
    report = evaluate(checkpoint, both, split="val", device="cpu")
    # alpha's faces answer happiness (2 of its 12 right), beta's contempt (2 of its 14): never neutral
    assert report["members"] == {"alpha": {"n": 12, "accuracy": pytest.approx(2 / 12)},
                                 "beta": {"n": 14, "accuracy": pytest.approx(2 / 14)}}
    assert report["accuracy"] == pytest.approx(4 / 26)
    assert np.isfinite(report["calibration"]["scores"]["confidence"]["nll"])
    assert "accuracy per dataset" in "\n".join(render.agreement_lines(report))
    assert evaluate(checkpoint, alpha, device="cpu")["members"] is None


def test_strata_recomputed_from_the_predictions(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"test": 4})
    # random weights: w varies from image to image; calibrated at T_cal = 0.25
    checkpoint = write_checkpoint(tmp_path / "model.pt", calibration=Calibration(
        temperature=0.25, split="valid", n_images=14, nll_before=2.0, nll_after=1.9))
    report = evaluate(checkpoint, data, device="cpu")
    mapped = predict_mapped(checkpoint, data, device="cpu")
    w, correct = mapped.predictions.consistency, mapped.predictions.correct
    assert np.ptp(w) > 0  # a ranking worth the name
    assert report["consistency_strata"] == confidence_strata(w, correct)
    assert report["consistency_quantiles"] == consistency_quantiles(w)
    confidence = softmax(mapped.predictions.trn_logits, 0.25).max(1)
    np.testing.assert_allclose(mapped.confidence, confidence, rtol=1e-6)  # the checkpoint's T_cal, not T = 1 (float32)
    assert report["confidence_strata"] == confidence_strata(confidence, correct)
    assert report["checkpoint_temperature"] == 0.25 and not any("uncalibrated" in n for n in report["notes"])
    study = report["calibration"]
    assert_same_scores(study["scores"], calibration_study(mapped.predictions.trn_logits, mapped.targets, w)["scores"])
    bins = study["reliability"]["confidence"]
    assert len(bins) == 15 and sum(b["n"] for b in bins) == study["n_measured"] == 14


def test_risk_coverage_points_are_exact_where_kept():
    correct = np.array([True, False, True, True, False, True])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    curves = risk_coverage_points({"s": score}, correct, points=3)
    assert curves["coverage"] == pytest.approx([1 / 6, 4 / 6, 1.0])  # k = 1, 4, 6 (rounded from 1, 3.5, 6)
    assert curves["s"] == pytest.approx([0.0, 1 / 4, 2 / 6])


def test_confidence_strata_ranks_by_w():
    w = np.array([0.9, 0.3, 0.8, 0.4, 0.7, 0.5, 0.6, 0.35, 0.95, 0.45])
    correct = w > 0.55  # confident images are right, unsure ones wrong
    strata = {s["fraction"]: s for s in confidence_strata(w, correct)}
    assert strata[0.3]["n"] == 3 and strata[0.3]["most_confident_accuracy"] == 1.0
    assert strata[0.3]["least_confident_accuracy"] == 0.0
    assert strata[0.7]["most_confident_accuracy"] == pytest.approx(5 / 7)
    assert strata[0.5]["least_confident_accuracy"] == 0.0


def test_consistency_quantiles_summarise_w():
    w = np.linspace(0.3, 0.9, 101)
    quantiles = consistency_quantiles(w)
    assert quantiles["min"] == pytest.approx(0.3) and quantiles["max"] == pytest.approx(0.9)
    assert quantiles["median"] == pytest.approx(0.6) and quantiles["q05"] == pytest.approx(0.33)
    assert quantiles["q25"] == pytest.approx(0.45) and quantiles["q75"] == pytest.approx(0.75)


def test_run_folder_resolves_to_best_and_errors_are_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"x")
    assert resolve_checkpoint(run) == run / "last.pt"
    (run / "best.pt").write_bytes(b"x")
    assert resolve_checkpoint(run) == run / "best.pt"
    data = make_prepared(tmp_path / "data", splits={"test": 1})
    result = CliRunner().invoke(app, ["evaluate", str(run), str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "cannot read" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nothing"), str(data)])
    assert result.exit_code == 1 and "no such run folder" in result.output


def test_a_bad_manifest_row_outside_the_evaluated_fold_is_a_one_line_error(tmp_path):
    """The twins are looked for among every usable face, so every usable row's store_index is
    checked, not only the evaluated fold's; and the number prints as the file has it."""
    data = add_folds(make_prepared(tmp_path / "data", splits={"train": 3}), folds=3)
    manifest = pd.read_csv(data / MANIFEST_FILE)
    manifest.loc[manifest.index[manifest["fold"] == 2][0], "store_index"] = 5000
    manifest.to_csv(data / MANIFEST_FILE, index=False)
    checkpoint = constant_model(tmp_path / "model.pt")
    for split in ("fold1", "fold2"):  # the bad row outside the evaluated fold, then inside it
        result = CliRunner().invoke(app, ["evaluate", str(checkpoint), str(data), "--split", split, "--device", "cpu",
                                          "--out", str(tmp_path / split)])
        assert result.exit_code == 1 and "Traceback" not in result.output, (split, result.exception)
        assert "has store_index 5000, outside faces.npy's 21 rows" in result.output and "np.int64" not in result.output
        assert not (tmp_path / split / "metrics.json").exists()


def test_unusable_model_or_device_is_a_one_line_error(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"test": 1})
    foreign = constant_model(tmp_path / "foreign.pt", classes=[f"other{k}" for k in range(7)])
    result = CliRunner().invoke(app, ["evaluate", str(foreign), str(data), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "share none with the data's" in result.output and "Traceback" not in result.output
    checkpoint = constant_model(tmp_path / "model.pt")
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), str(data), "--device", "mps", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "MPS is not available" in result.output and "Traceback" not in result.output


def test_accuracy_by_regions_agree_and_by_the_pins_expression(tmp_path):
    data = unbalanced_prepared(tmp_path / "data")  # class c has c + 1 of the 28 images
    # TRN: happiness (3); the four regions see surprise, surprise, sadness, anger; the gate trusts region 3 (anger)
    checkpoint = constant_model(tmp_path / "model.pt", region_classes=(0, 0, 4, 5), gate_region=3)
    report = evaluate(checkpoint, data, device="cpu")
    assert report["recipe"] == {"fusion": "trn", "flip": False, "description": "TRN, image alone"}
    assert report["accuracy"] == report["trn_accuracy"] == pytest.approx(4 / 28)
    levels = {row["regions_agree"]: (row["n"], row["accuracy"]) for row in report["regions_agree"]}
    assert levels == {0: (28, pytest.approx(4 / 28)), 1: (0, None), 2: (0, None), 3: (0, None), 4: (0, None)}
    assert report["pin_agreement"] == {"same": {"n": 0, "accuracy": None}, "differs": {"n": 28, "accuracy": pytest.approx(4 / 28)}}
    assert report["flagged"]["flagged"]["n"] == 28 and report["flagged"]["rest"] == {"n": 0, "accuracy": None}
    assert report["flagged"]["gap"] is None and "pin_expression differs" in report["flagged"]["rule"]
    lines = "\n".join(line.text for line in render.evaluate_summary(report, []) if isinstance(line, render.Line))
    assert "0/4 14.29% (28)" in lines and "4/4 - (0)" in lines and "differs: 14.29% (28)" in lines


def test_agreement_blocks_by_hand():
    from poi_cli.study.evaluate import agreement_blocks

    # five faces: regions_agree 4, 4, 3, 4, 2; the PIN's expression differs on face 3
    blocks = agreement_blocks(np.array([4, 4, 3, 4, 2]), np.array([0, 1, 0, 0, 0]), np.array([0, 1, 0, 1, 0]),
                              np.array([True, True, False, True, False]))
    levels = {row["regions_agree"]: (row["n"], row["accuracy"]) for row in blocks["regions_agree"]}
    assert levels == {0: (0, None), 1: (0, None), 2: (1, 0.0), 3: (1, 0.0), 4: (3, 1.0)}
    assert blocks["pin_agreement"] == {"same": {"n": 4, "accuracy": 0.5}, "differs": {"n": 1, "accuracy": 1.0}}
    flagged = blocks["flagged"]  # regions below 4 (faces 2, 4) or the PIN differing (face 3)
    assert flagged["flagged"] == {"n": 3, "accuracy": pytest.approx(1 / 3)} and flagged["rest"] == {"n": 2, "accuracy": 1.0}
    assert flagged["gap"] == pytest.approx(2 / 3)  # the rest is that much more accurate


def test_evaluate_reports_the_stored_recipe(tmp_path):
    from poi_cli.core.outputs import PredictionRecipe
    from poi_cli.model.checkpoint import load_checkpoint, save_checkpoint

    data = unbalanced_prepared(tmp_path / "data")
    # TRN: happiness 10, surprise 9 (q ~ 0.73 / 0.27); every region and so p~* (T = 1): surprise ~0.96,
    # except region 2 (happiness): the mean of the two reads surprise (1 of the 28 images)
    checkpoint = constant_model(tmp_path / "model.pt", trn_order=(3, 0), region_classes=(0, 0, 3, 0), gate_region=3)
    for flip in (False, True):  # a constant model reads its mirror the same: flip changes nothing here
        fused = load_checkpoint(checkpoint)
        fused["calibration"] = Calibration(1.0, "valid", 28, 1.0, 1.0, recipe=PredictionRecipe("trn+pin", flip)).to_dict()
        save_checkpoint(tmp_path / "fused.pt", fused)
        report = evaluate(tmp_path / "fused.pt", data, device="cpu")
        assert (report["recipe"]["fusion"], report["recipe"]["flip"]) == ("trn+pin", flip)
        assert report["accuracy"] == pytest.approx(1 / 28) and report["trn_accuracy"] == pytest.approx(4 / 28)
        assert report["per_class"]["surprise"] == {"n": 1, "recall": 1.0}
        assert [row["n"] for row in report["regions_agree"]] == [0, 0, 0, 28, 0]  # 3 of 4 regions see surprise
        assert report["pin_agreement"]["same"] == {"n": 28, "accuracy": pytest.approx(1 / 28)}


def test_evaluate_says_when_it_computed_under_bf16_where_predict_computes_in_float32(tmp_path):
    """--amp auto runs bf16 autocast where the CPU has it: 87.18 % of FERPlus valid against the
    87.25 % poi predict gives, with nothing in metrics.json or the notes to say why."""
    from poi_cli.study.evaluate import BF16_NOTE

    data = unbalanced_prepared(tmp_path / "data")
    checkpoint = constant_model(tmp_path / "model.pt", trn_order=(3, 0), region_classes=(0, 0, 3, 0), gate_region=3)
    under_bf16 = evaluate(checkpoint, data, device="cpu", amp="bf16")
    assert under_bf16["precision"] == "bf16" and BF16_NOTE in under_bf16["notes"]
    in_float32 = evaluate(checkpoint, data, device="cpu", amp="off")
    assert in_float32["precision"] == "float32" and BF16_NOTE not in in_float32["notes"]


def test_the_confusion_picture_draws_a_class_with_no_image_as_a_dash():
    from poi_cli.study.evaluate import confusion_cell

    assert confusion_cell(0.0, 0) == "-" and confusion_cell(0.0, 5) == "0.0" and confusion_cell(62.5, 8) == "62.5"


def test_evaluating_a_run_on_the_images_it_trained_on_says_so(tiny_runs):
    """--split train on a run's own training split (or a run trained with --train-split test,
    evaluated on test) printed the accuracy of images it had seen, without a word."""
    seen = evaluate(tiny_runs.poi, tiny_runs.data, split="train")
    assert any("the model trained on train of this folder" in note for note in seen["notes"])
    unseen = evaluate(tiny_runs.poi, tiny_runs.data)
    assert not any("trained on" in note for note in unseen["notes"])


def test_the_calibration_study_measures_the_checkpoints_own_confidence_beside_a_refitted_one():
    """On data a model was not calibrated on (zero-shot), `confidence` used a T fitted on half of
    that data: not what predict reports. checkpoint_confidence applies the checkpoint's T_cal."""
    from poi_cli.study.evaluate import calibration_block

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) * 2 + 3 * np.eye(4)[targets] * (rng.random(200) < 0.7)[:, None]
    assert "checkpoint_confidence" not in calibration_block(logits, targets, None)["scores"]  # uncalibrated: T_cal = 1 is max_softmax
    refit = calibration_block(logits, targets, None)["temperature_half"]
    scores = calibration_block(logits, targets, None, checkpoint_temperature=refit)["scores"]
    assert scores["checkpoint_confidence"]["ece"] == pytest.approx(scores["confidence"]["ece"])
    scores = calibration_block(logits, targets, None, checkpoint_temperature=1.0)["scores"]
    assert scores["checkpoint_confidence"]["ece"] == pytest.approx(scores["max_softmax"]["ece"])
    assert scores["checkpoint_confidence"]["nll"] == pytest.approx(scores["max_softmax"]["nll"])
    hot = calibration_block(logits, targets, None, checkpoint_temperature=4.0)["scores"]["checkpoint_confidence"]
    assert hot["ece"] != pytest.approx(scores["max_softmax"]["ece"])

