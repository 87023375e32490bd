"""Temperature scaling and the calibration / selective-prediction metrics (issue 12)."""

import math
from pathlib import Path

import numpy as np
import pytest

from poi_cli.model import calibration as cal


def _calibrated_sample(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a perfectly calibrated model: each label is drawn from softmax(logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    probs = cal.softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_temperature_scaling_recovers_a_known_temperature():
    logits, labels = _calibrated_sample(6000, 5, seed=0)
    sharpened = logits * 2.5  # an over-confident model: its logits are 2.5x too large
    assert cal.fit_temperature(sharpened, labels) == pytest.approx(2.5, rel=0.06)
    assert cal.fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.06)


def test_temperature_scaling_lowers_nll_and_keeps_the_argmax():
    logits, labels = _calibrated_sample(3000, 4, seed=1)
    sharpened = logits * 3.0
    t = cal.fit_temperature(sharpened, labels)
    before, after = cal.softmax(sharpened), cal.softmax(sharpened, t)
    assert cal.nll(after, labels) < cal.nll(before, labels)
    assert (before.argmax(1) == after.argmax(1)).all()


def test_ece_is_zero_for_a_perfectly_calibrated_set():
    # 10 images at confidence 0.8, 8 right; 5 at 0.4, 2 right: every bin's accuracy equals its confidence
    confidence = np.array([0.8] * 10 + [0.4] * 5)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 2 + [0] * 3)
    assert cal.expected_calibration_error(confidence, correct) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_value():
    # 15 bins; 0.95 and 0.99 share bin 14 (mean 0.97, accuracy 1/2); 0.5 sits alone in bin 7 (accuracy 1)
    confidence = np.array([0.95, 0.99, 0.5])
    correct = np.array([1, 0, 1])
    expected = (2 / 3) * abs(0.5 - 0.97) + (1 / 3) * abs(1.0 - 0.5)
    assert cal.expected_calibration_error(confidence, correct) == pytest.approx(expected, rel=1e-9)


def test_ece_bins_are_closed_on_the_right():
    # bin b is (b / 15, (b + 1) / 15]: 0.8 = 12 / 15 closes bin 11, 0.85 is in bin 12, so each is
    # alone: (|1 - 0.8| + |0 - 0.85|) / 2 = 0.525 ([b / 15, ...) bins would pool them: 0.325)
    assert cal.expected_calibration_error(np.array([0.8, 0.85]), np.array([1, 0])) == pytest.approx(0.525)
    # the floor uses the same bins: E|Bernoulli(c) - c| = 2 c (1 - c) per image, alone in its bin
    floor = (2 * 0.8 * 0.2 + 2 * 0.85 * 0.15) / 2
    assert cal.ece_sampling_floor(np.array([0.8, 0.85]), draws=20000) == pytest.approx(floor, abs=0.005)
    row = cal.reliability_bins(np.array([0.8]), np.array([1]))[11]
    assert (row["low"], row["high"], row["n"]) == (pytest.approx(11 / 15), pytest.approx(0.8), 1)


def test_aurc_and_coverage_known_values():
    score = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 0, 1, 0])
    # risks of the top 1..4: 0, 1/2, 1/3, 1/2
    assert cal.aurc(score, correct) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert cal.accuracy_at_coverage(score, correct, 0.5) == pytest.approx(0.5)
    assert cal.accuracy_at_coverage(score, correct, 0.25) == pytest.approx(1.0)
    # ceil: half of three images is the top two (0.9 right, 0.8 wrong), not the top one
    assert cal.accuracy_at_coverage(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), 0.5) == pytest.approx(0.5)
    # a perfect ranking has the smallest area: the right answers first
    assert cal.aurc(np.array([0.9, 0.6, 0.8, 0.7]), correct) < cal.aurc(score, correct)


def test_brier_and_nll_known_values():
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    labels = np.array([0, 1])
    assert cal.nll(probs, labels) == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)
    assert cal.brier(probs, labels) == pytest.approx(((0.25 + 0.25) + (0.81 + 0.81)) / 2)


def test_calibration_study_fits_on_one_half_and_measures_on_the_other():
    logits, labels = _calibrated_sample(4000, 6, seed=2)
    consistency = np.random.default_rng(0).uniform(size=len(labels))
    study = cal.calibration_study(logits * 2.0, labels, consistency, seed=0)
    fit, held = cal.halves(len(labels), 0)
    assert not set(fit) & set(held) and len(fit) + len(held) == len(labels)
    assert study["n_fit"] == len(fit) and study["n_measured"] == len(held)
    scores = study["scores"]
    assert scores["confidence"]["ece"] < scores["max_softmax"]["ece"]
    assert scores["confidence"]["nll"] < scores["max_softmax"]["nll"]
    assert scores["consistency"]["nll"] is None  # w has no class probabilities
    # a random score ranks worse than the model's own probability
    assert scores["consistency"]["aurc"] > scores["confidence"]["aurc"]
    # T is fitted on the fitting half alone: its logits 2x too sharp, the measured half's as they are
    sharpened = logits.copy()
    sharpened[fit] *= 2.0
    study = cal.calibration_study(sharpened, labels, seed=0)
    assert study["temperature_half"] == pytest.approx(cal.fit_temperature(sharpened[fit], labels[fit]))
    assert study["temperature_half"] == pytest.approx(2.0, rel=0.1)


def test_calibration_record_round_trips():
    # NLL before is at T = 1, after at the fitted T: [[2, 0], [0, 2]] with labels [0, 0]
    # -> before (ln(1 + e^-2) + ln(1 + e^2)) / 2 = 1.12693
    record = cal.calibration_of(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 0]), "valid")
    assert record.nll_before == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2)
    assert record.nll_after < record.nll_before - 0.4

    record = cal.Calibration(temperature=1.7, split="valid", n_images=10, nll_before=1.2, nll_after=1.0)
    assert cal.Calibration.from_dict(record.to_dict()) == record
    assert cal.Calibration.from_dict(None) is None


def test_poi_calibrate_writes_a_copy_unless_asked_and_then_in_place(tmp_path, prepared, tiny_checkpoint_copy):
    import hashlib

    import torch
    from typer.testing import CliRunner

    from poi_cli.cli import app

    path = tiny_checkpoint_copy  # tmp_path / "model.pt": the calibrated copy is written beside it
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", str(path), str(prepared)])
    assert result.exit_code == 0, result.output
    assert "fitted on 14 images of split valid" in result.output and "uncalibrated" in result.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the checkpoint itself is untouched
    copy = torch.load(tmp_path / "model.calibrated.pt", weights_only=True)
    record = cal.Calibration.from_dict(copy["calibration"])
    assert record.split == "valid" and record.n_images == 14 and record.nll_after <= record.nll_before + 1e-9
    assert cal.T_RANGE[0] <= record.temperature <= cal.T_RANGE[1]
    same = runner.invoke(app, ["calibrate", str(path), str(prepared), "--out", str(path)])
    assert same.exit_code == 1 and "--in-place" in same.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    leftovers = set(p.name for p in tmp_path.iterdir())
    path.chmod(0o444)  # write-protected by its user: it was replaced anyway (a rename), mode 0644
    protected = runner.invoke(app, ["calibrate", str(path), str(prepared), "--in-place"])
    assert protected.exit_code == 1 and f"--in-place {path} is write-protected" in protected.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and path.stat().st_mode & 0o777 == 0o444
    path.chmod(0o644)
    (tmp_path / "config.json").write_text("{}")  # the checkpoint of a run folder, which a training may be writing
    from poi_cli.core.locks import claim

    with claim(tmp_path, "run folder"):  # it wrote an older epoch over the training's newer best.pt
        training = runner.invoke(app, ["calibrate", str(path), str(prepared), "--in-place"])
    assert training.exit_code == 1 and "run folder" in training.output and "being written by" in training.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    leftovers = set(p.name for p in tmp_path.iterdir())
    in_place = runner.invoke(app, ["calibrate", str(path), str(prepared), "--in-place"])
    assert in_place.exit_code == 0, in_place.output
    assert torch.load(path, weights_only=True)["calibration"]["temperature"] == pytest.approx(record.temperature)
    assert set(p.name for p in tmp_path.iterdir()) == leftovers  # atomic: no temp file left behind


def test_poi_calibrate_needs_a_held_out_split(tmp_path, tiny_checkpoint):
    from typer.testing import CliRunner

    from conftest import make_prepared
    from poi_cli.cli import app

    prepared = make_prepared(tmp_path / "data", splits={"train": 2, "test": 1})
    result = CliRunner().invoke(app, ["calibrate", str(tiny_checkpoint), str(prepared)])
    assert result.exit_code == 1 and "no valid/val split" in result.output


def test_poi_calibrate_refuses_the_split_the_model_is_evaluated_on(tmp_path, prepared, tiny_checkpoint):
    """Never test (the help says so), nor a --fold K run's own evaluation fold K: a recipe and
    T_cal chosen on the images they are scored on make those figures optimistic."""
    from typer.testing import CliRunner

    from conftest import add_folds, make_prepared, write_checkpoint
    from poi_cli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", str(tiny_checkpoint), str(prepared), "--split", "test",
                                 "--out", str(tmp_path / "test.pt")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "calibrating on the test split makes the test figures optimistic" in result.output
    assert "fit on valid (the default)" in result.output and not (tmp_path / "test.pt").exists()
    only_test = make_prepared(tmp_path / "only_test", splits={"test": 1})
    result = runner.invoke(app, ["calibrate", str(tiny_checkpoint), str(only_test), "--split", "test",
                                 "--out", str(tmp_path / "only.pt")])
    assert result.exit_code == 1 and "the validation split of the store the model trained on" in result.output

    folds = add_folds(make_prepared(tmp_path / "ck", splits={"train": 3}), folds=3)
    run = write_checkpoint(tmp_path / "fold1.pt", config={"fold": "1"}, resolved={"test_split": "fold1"})
    result = runner.invoke(app, ["calibrate", str(run), str(folds), "--split", "fold1", "--out", str(tmp_path / "f1.pt")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "--split fold1 is the fold this run is evaluated on (trained with --fold 1)" in result.output
    assert "optimistic" in result.output and not (tmp_path / "f1.pt").exists()
    result = runner.invoke(app, ["calibrate", str(run), str(folds), "--split", "fold0", "--out", str(tmp_path / "f0.pt"),
                                 "--device", "cpu", "--fusion", "trn", "--flip", "off"])
    assert result.exit_code == 0, result.output  # another fold is the user's choice


def test_poi_calibrate_refuses_the_images_the_model_trained_on(tmp_path, tiny_runs):
    """--split train of the store the run trained on: its faces are fitted, so a T_cal fitted
    there is overconfident; another store's train split stays the user's choice."""
    import shutil

    from typer.testing import CliRunner

    from poi_cli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", str(tiny_runs.poi), str(tiny_runs.data), "--split", "train",
                                 "--out", str(tmp_path / "train.pt"), "--device", "cpu"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "the images this model trained on" in result.output and not (tmp_path / "train.pt").exists()
    other = Path(shutil.copytree(tiny_runs.data, tmp_path / "other"))  # another store (here: a copy)
    result = runner.invoke(app, ["calibrate", str(tiny_runs.poi), str(other), "--split", "train",
                                 "--out", str(tmp_path / "other.pt"), "--device", "cpu", "--fusion", "trn", "--flip", "off"])
    assert result.exit_code == 0, result.output
    alias = tmp_path / "alias"
    alias.symlink_to(tiny_runs.data)  # the same store by another name: still the images it trained on
    result = runner.invoke(app, ["calibrate", str(tiny_runs.poi), str(alias), "--split", "train",
                                 "--out", str(tmp_path / "alias.pt"), "--device", "cpu"])
    assert result.exit_code == 1 and "the images this model trained on" in result.output


def test_choose_recipe_takes_the_lowest_nll_after_scaling_and_ties_go_to_the_cheaper():
    from poi_cli.core.outputs import PredictionRecipe

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    sharp = np.log(np.full((400, 3), 0.1) + 0.8 * np.eye(3)[labels] + 1e-9)  # right, sure: low NLL
    vague = np.zeros((400, 3))  # uniform: NLL ln 3 whatever T
    cheap, fused, flipped = PredictionRecipe(), PredictionRecipe("trn+pin", False), PredictionRecipe("trn", True)
    chosen, tried = cal.choose_recipe({flipped: vague, fused: sharp, cheap: vague}, labels, "valid")
    assert chosen.recipe == fused and chosen.split == "valid" and chosen.n_images == 400
    assert [c.recipe for c in tried] == [cheap, fused, flipped]  # cheapest first: the mirror costs most
    assert chosen.nll_after == min(c.nll_after for c in tried)
    # equal NLL (within RECIPE_TIE_NLL): the cheaper recipe
    chosen, _ = cal.choose_recipe({flipped: sharp, cheap: sharp + 1e-6}, labels, "valid")
    assert chosen.recipe == cheap
    # ranked after scaling, not before: [5, -5] is wrong once in four (NLL 2.5 at T = 1, 0.562 once
    # scaled) against uniform logits' ln 2 at any T
    four = np.array([0, 0, 0, 1])
    chosen, _ = cal.choose_recipe({cheap: np.zeros((4, 2)), fused: np.tile([5.0, -5.0], (4, 1))}, four, "valid")
    assert chosen.recipe == fused and chosen.nll_before > math.log(2) > chosen.nll_after


def test_poi_calibrate_chooses_a_recipe_and_stores_it_with_t_cal(tmp_path, prepared, tiny_checkpoint):
    from typer.testing import CliRunner

    from poi_cli.cli import app
    from poi_cli.core.outputs import PredictionRecipe
    from poi_cli.model.checkpoint import CheckpointInfo, load_checkpoint
    from poi_cli.study.calibrate import calibrate

    result = calibrate(tiny_checkpoint, prepared, out=tmp_path / "auto.pt", device="cpu")
    assert len(result.candidates) == 4 and result.calibration in result.candidates
    assert result.calibration.nll_after <= min(c.nll_after for c in result.candidates) + cal.RECIPE_TIE_NLL
    stored = CheckpointInfo.of(load_checkpoint(tmp_path / "auto.pt"))
    assert stored.recipe == result.calibration.recipe and stored.calibration == result.calibration
    runner = CliRunner()
    forced = runner.invoke(app, ["calibrate", str(tiny_checkpoint), str(prepared), "--out", str(tmp_path / "f.pt"),
                                 "--fusion", "trn+pin", "--flip", "on", "--device", "cpu"])
    assert forced.exit_code == 0, forced.output
    assert "recipe: TRN + PIN, image and mirror (the only one asked for)" in forced.output
    assert CheckpointInfo.of(load_checkpoint(tmp_path / "f.pt")).recipe == PredictionRecipe("trn+pin", True)
    bad = runner.invoke(app, ["calibrate", str(tiny_checkpoint), str(prepared), "--fusion", "pin"])
    assert bad.exit_code == 1 and "--fusion must be one of auto, trn, trn+pin" in bad.output


def test_poi_calibrate_of_a_baseline_tries_the_trn_alone(tmp_path, prepared):
    from conftest import tiny_model, write_checkpoint
    from typer.testing import CliRunner

    from poi_cli.cli import app
    from poi_cli.study.calibrate import calibrate

    baseline = write_checkpoint(tmp_path / "baseline.pt", tiny_model(use_pin=False))
    result = calibrate(baseline, prepared, out=tmp_path / "b.pt", device="cpu", flip="off")
    assert [c.recipe.fusion for c in result.candidates] == ["trn"] and not result.calibration.recipe.flip
    refused = CliRunner().invoke(app, ["calibrate", str(baseline), str(prepared), "--fusion", "trn+pin"])
    assert refused.exit_code == 1 and "objective inference" in refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1


def test_ece_sampling_floor_matches_the_exact_expectation():
    # 4 images, all at confidence 0.5 (one bin): ECE = |k/4 - 0.5| for k ~ Binomial(4, 0.5) right answers,
    # whose mean is (2 * 0.5 + 2 * 4 * 0.25) / 16 = 0.1875 (k = 0, 4: 0.5 with 1/16 each; k = 1, 3: 0.25 with 4/16 each)
    floor = cal.ece_sampling_floor(np.full(4, 0.5), draws=20000)
    assert floor == pytest.approx(0.1875, abs=0.005)
    # certain scores (0 or 1) are perfectly calibrated on any sample: no floor
    assert cal.ece_sampling_floor(np.array([1.0, 1.0, 0.0])) == pytest.approx(0.0, abs=1e-12)


def test_ece_sampling_floor_falls_with_the_number_of_images():
    confidence = np.random.default_rng(0).uniform(0.3, 1.0, 4000)
    small, large = cal.ece_sampling_floor(confidence[:400]), cal.ece_sampling_floor(confidence)
    # ECE's bias shrinks about as 1 / sqrt(n): ten times the images, about a third of the floor
    assert 0.2 < large / small < 0.5
    # and a score that is calibrated measures near its floor, one that is not well above it
    outcomes = np.random.default_rng(1).random(4000) < confidence
    assert cal.expected_calibration_error(confidence, outcomes) < 2.5 * large
    assert cal.expected_calibration_error(np.clip(confidence + 0.1, 0, 1), outcomes) > 4 * large


def test_the_calibration_families_study_recovers_a_known_temperature_and_class_bias():
    # scripts/calibration_halves.py --families: labels drawn from softmax(z / 2 + b) are fitted back to
    # T = 2 and b (a bias is identifiable only up to a constant, so both are centred)
    import importlib.util
    spec = importlib.util.spec_from_file_location("calibration_halves",
                                                  Path(__file__).parents[1] / "scripts" / "calibration_halves.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    rng = np.random.default_rng(0)
    logits, bias = rng.normal(0, 3, (20000, 4)), np.array([0.5, -0.5, 1.0, -1.0])
    probs = cal.softmax(logits / 2 + bias)
    labels = (rng.random((len(probs), 1)) > probs.cumsum(1)).sum(1)
    temperature, fitted = study.fit_scaling(logits, labels, per_class_temperature=False)
    assert temperature == pytest.approx(2.0, rel=0.05)
    assert np.allclose(fitted - fitted.mean(), bias - bias.mean(), atol=0.06)
    temperatures, _ = study.fit_scaling(logits, labels, per_class_temperature=True)
    assert temperatures.shape == (4,) and np.allclose(temperatures, 2.0, rtol=0.1)


def test_a_calibration_says_when_it_cannot_be_trusted():
    """T_cal fitted on 2 images of one class (confidence 1.0 on faces the model then got wrong),
    on images all answered right with certainty (T undetermined: NLL 0 at any T), or clipped at
    T_RANGE's edge (NLL 5.64, worse than guessing among 8) was stored and printed as fine."""
    from types import SimpleNamespace

    from poi_cli import render

    sound = cal.Calibration(temperature=1.3, split="valid", n_images=3191, nll_before=0.5, nll_after=0.4)
    assert sound.caveat is None
    few = cal.Calibration(temperature=0.07, split="val", n_images=2, nll_before=0.3, nll_after=0.01)
    assert few.caveat.startswith("T_cal fitted on 2 images, fewer than 100")
    certain = cal.Calibration(temperature=1.0, split="val", n_images=500, nll_before=0.0, nll_after=0.0)
    assert "leaves T_cal undetermined" in certain.caveat
    clipped = cal.Calibration(temperature=cal.T_RANGE[1], split="val", n_images=500, nll_before=24.2, nll_after=5.64)
    assert "clipped at the edge of its range 0.05..20" in clipped.caveat
    # the logits of a model that is right and certain on every image: the fit cannot move the NLL
    logits = np.array([[60.0, 0.0], [0.0, 60.0], [60.0, 0.0]])
    assert "undetermined" in cal.calibration_of(logits, np.array([0, 1, 0]), "val").caveat
    lines = [line.text for line in render.calibrate_summary(SimpleNamespace(
        calibration=few, previous=None, written="x.pt", candidates=[few]))]
    assert lines[-2] == f"warning: {few.caveat}" and lines[-1] == "wrote x.pt"


def test_calibrate_on_a_train_test_store_points_at_the_runs_held_out_images(tmp_path):
    """RAF-DB's layout (train and test only): --split test and --split train advised fitting on
    'the validation split of the store the model trained on' (this store, which has none) or
    naming held-out images with --split (no name gives them); leaving --split out does."""
    from typer.testing import CliRunner

    from conftest import make_prepared, tiny_config
    from poi_cli.cli import app
    from poi_cli.train.engine import train

    data = make_prepared(tmp_path / "raf", splits={"train": 3, "test": 1})
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, val_fraction=0.3, use_pin=False))
    runner = CliRunner()
    for split in ("test", "train"):
        result = runner.invoke(app, ["calibrate", str(run), str(data), "--split", split, "--out", str(tmp_path / "c.pt")])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert "leave --split out: it fits on the images the run held out" in " ".join(result.output.split())
    result = runner.invoke(app, ["calibrate", str(run), str(data), "--out", str(tmp_path / "c.pt"), "--device", "cpu",
                                 "--fusion", "trn", "--flip", "off"])
    assert result.exit_code == 0 and "held out by the run" in result.output, result.output
