"""`poi refit-head` (train/head_refit.py): the loss and weights on hand-computed values, the fit,
and the command on a tiny run: only the TRN's FC changes, the input is never written over."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from poi_cli.cli import app
from poi_cli.data.combined import combine
from poi_cli.model.checkpoint import CheckpointInfo, load_checkpoint
from poi_cli.train.head_refit import (HEAD_KEYS, RefitError, fit_head, parse_grid, refit_head, refit_loss,
                                      sample_weights, score_head, view_probabilities)


def test_refit_loss_is_the_weighted_mean_cross_entropy_plus_the_pull_to_the_trained_weights():
    weight, bias = torch.tensor([[1.0], [0.0]]), torch.zeros(2)
    features, labels = torch.tensor([[1.0], [1.0]]), torch.tensor([0, 1])
    # logits (1, 0) for both images: CE log(1 + e^-1) = 0.313262 for class 0, log(1 + e) = 1.313262 for class 1
    loss = refit_loss(weight, bias, features, labels, torch.tensor([1.0, 3.0]), torch.zeros(2, 1), l2=0.5)
    assert loss.item() == pytest.approx((0.313262 + 3 * 1.313262) / 4 + 0.5 * 1.0, abs=1e-5)
    # the weights are normalised by their sum: scaling them changes nothing; the bias is not pulled
    assert refit_loss(weight, bias + 1, features, labels, torch.tensor([2.0, 6.0]), weight, 0.5).item() == \
        pytest.approx((0.313262 + 3 * 1.313262) / 4, abs=1e-5)


def test_sample_weights_balance_classes_by_their_dataset_weighted_counts():
    labels = np.array([0, 0, 0, 1])
    assert sample_weights(labels, np.ones(4), 3, 0.0).tolist() == [1, 1, 1, 1]
    # q = 1: class 0 (N = 3) and class 1 (N = 1) get the same total weight: 1/3 each vs 1, mean 1
    assert sample_weights(labels, np.ones(4), 3, 1.0) == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2])
    # q = 0.5 with the last image's dataset drawn 4 times: N = (3, 4), a = (1/sqrt 3, 1/sqrt 3, 1/sqrt 3, 4/2)
    raw = np.array([1 / math.sqrt(3)] * 3 + [2.0])
    assert sample_weights(labels, np.array([1, 1, 1, 4.0]), 3, 0.5) == pytest.approx(raw / raw.mean())


def test_class_power_moves_the_boundary_towards_the_majority_class():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(-1, 1, (200, 1)), rng.normal(1, 1, (20, 1))])
    labels = np.array([0] * 200 + [1] * 20)
    recall = {}
    for power in (0.0, 1.0):
        weight, bias = fit_head(features, labels, sample_weights(labels, np.ones(len(labels)), 2, power),
                                np.zeros((2, 1)), np.zeros(2), l2=0.0)
        predicted = view_probabilities(features[None], weight, bias).argmax(axis=1)
        recall[power] = (predicted[labels == 1] == 1).mean()
    assert recall[1.0] > recall[0.0] + 0.2  # balanced: the rare class is found far more often


def test_a_strong_pull_keeps_the_trained_weights():
    features, labels = np.array([[1.0], [-1.0]]), np.array([1, 0])
    w0 = np.array([[2.0], [-2.0]])  # the opposite of what the data asks for
    weight, _ = fit_head(features, labels, np.ones(2), w0, np.zeros(2), l2=1e4)
    assert weight == pytest.approx(w0, abs=1e-3)
    free, _ = fit_head(features, labels, np.ones(2), w0, np.zeros(2), l2=0.0)
    assert free[1, 0] > free[0, 0]  # unpulled, the head follows the labels


def test_score_head_averages_accuracy_or_mean_recall_over_members():
    probs = np.eye(2)[[0, 0, 0, 1, 1]]  # predicted 0, 0, 0, 1, 1
    labels = np.array([0, 0, 1, 1, 1])
    member = np.array([0, 0, 0, 1, 1])  # member a: 2 of 3 right (recalls 1 and 0); b: 2 of 2
    by_accuracy = score_head(probs, labels, member, ["a", "b"], "accuracy", 0.5, 1e-4)
    assert by_accuracy.accuracy == pytest.approx({"a": 2 / 3, "b": 1.0})
    assert by_accuracy.score == pytest.approx((2 / 3 + 1) / 2)
    assert score_head(probs, labels, member, ["a", "b"], "recall", 0.5, 1e-4).score == pytest.approx((0.5 + 1) / 2)
    # a class an image's dataset never labels is no answer: the third image's 0 gives way to its 1
    answers = np.array([[True, True]] * 2 + [[False, True]] + [[True, True]] * 2)
    masked = score_head(probs * 0.9 + 0.05, labels, member, ["a", "b"], "accuracy", 0.5, 1e-4, answers)
    assert masked.accuracy == pytest.approx({"a": 1.0, "b": 1.0})


def test_parse_grid_refuses_what_is_not_a_list_of_numbers_at_least_0():
    assert parse_grid("0,0.5", "--class-power") == (0.0, 0.5) and parse_grid("1e6", "--l2") == (1e6,)
    for bad in ("", "a", "-1", "nan", "0,,1", "5"):
        with pytest.raises(RefitError, match="--class-power"):
            parse_grid(bad, "--class-power")
    for bad in ("1e39", "1e7", ",".join(["0.1"] * 33)):  # 1e39 overflowed float32 in a traceback
        with pytest.raises(RefitError, match="--l2"):
            parse_grid(bad, "--l2")


def test_a_fit_that_diverges_is_left_out_and_the_others_still_chosen_from(tiny_runs, tmp_path, monkeypatch):
    """One (class power, l2) whose weights come out non-finite: it is named and left out, the
    rest of the grid is scored and chosen from (it used to stop the whole search)."""
    import poi_cli.train.head_refit as head_refit

    fitted = head_refit.fit_head

    def breaks_at_large_l2(features, labels, weights, w0, b0, l2):
        weight, bias = fitted(features, labels, weights, w0, b0, l2)
        return (weight * np.nan, bias) if l2 > 1 else (weight, bias)

    monkeypatch.setattr(head_refit, "fit_head", breaks_at_large_l2)
    result = refit_head(tiny_runs.poi, tiny_runs.data, out=tmp_path / "refit.pt", class_powers=(0.0,), l2s=(1e-4, 100.0),
                        device="cpu", amp="off")
    assert [c.l2 for c in result.candidates] == [1e-4] and result.diverged == ["--class-power 0 --l2 100"]
    from poi_cli import render
    from tests.test_render import text_of
    assert "left out, the fit diverged" in text_of(*render.refit_summary(result), width=200)
    with pytest.raises(RefitError, match="every fit diverged"):
        refit_head(tiny_runs.poi, tiny_runs.data, out=tmp_path / "none.pt", class_powers=(0.0,), l2s=(100.0,),
                   device="cpu", amp="off")


def test_refit_head_changes_only_the_fc_and_leaves_the_model_file_alone(tiny_runs, tmp_path):
    source = tiny_runs.poi / "best.pt"
    before_bytes = source.read_bytes()
    result = refit_head(tiny_runs.poi, tiny_runs.data, out=tmp_path / "refit.pt", class_powers=(0.0, 1.0), l2s=(1e-4,),
                        device="cpu", amp="off")
    assert source.read_bytes() == before_bytes
    old, new = load_checkpoint(source), load_checkpoint(tmp_path / "refit.pt")
    changed = {key for key in old["model"] if not torch.equal(old["model"][key], new["model"][key])}
    assert changed and changed <= set(HEAD_KEYS)
    record = new["head_refit"]
    assert (record["class_power"], record["l2"]) == (result.chosen.class_power, result.chosen.l2)
    assert len(record["candidates"]) == 2 and record["train_images"] == result.train_images > 0
    assert set(record["seconds"]) == {"features", "fit"}
    assert result.chosen.score == max(c.score for c in result.candidates)
    assert "calibration" not in new and CheckpointInfo.of(new).calibration is None


def test_refit_head_keeps_the_trained_head_when_no_refit_beats_it(tiny_runs, tmp_path, monkeypatch):
    import poi_cli.train.head_refit as head_refit

    # every re-fitted head answers class 0 for every face: none can beat the trained head
    def constant_head(features, labels, weights, w0, b0, l2):
        bias = np.full_like(b0, -10.0)
        bias[0] = 10.0
        return np.zeros_like(w0), bias

    monkeypatch.setattr(head_refit, "fit_head", constant_head)
    source = load_checkpoint(tiny_runs.poi / "best.pt")
    result = refit_head(tiny_runs.poi, tiny_runs.data, out=tmp_path / "kept.pt", class_powers=(0.0,), l2s=(1e-4,),
                        device="cpu", amp="off")
    assert result.kept_own_head and result.chosen is result.before
    assert result.before.score >= result.candidates[0].score  # worse or tied: a tie keeps the trained head too
    kept = load_checkpoint(tmp_path / "kept.pt")
    assert all(torch.equal(source["model"][key], kept["model"][key]) for key in source["model"])
    assert kept.get("calibration") == source.get("calibration") and kept["head_refit"]["kept_own_head"]
    assert (kept["head_refit"]["class_power"], kept["head_refit"]["l2"]) == (None, None)
    from poi_cli import render
    from tests.test_render import text_of
    out = text_of(*render.refit_summary(result), width=200)
    assert "no re-fitted head scored above the model's own" in out and "uncalibrated" not in out
    assert [line for line in out.splitlines() if "own head" in line][0].rstrip(" │").endswith("chosen")


def test_refit_head_on_a_combined_folder_weighs_and_scores_its_members(tiny_runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_runs.data, other)
    both = combine([tiny_runs.data, other], tmp_path / "both", weights=[1, 3])
    result = refit_head(tiny_runs.poi, both, out=tmp_path / "r.pt",
                        class_powers=(0.0,), l2s=(1e-4,), device="cpu", amp="off")
    assert len(result.members) == 2 and set(result.chosen.accuracy) == set(result.members)
    assert result.chosen.score == pytest.approx(np.mean(list(result.chosen.accuracy.values())))


def test_refit_head_command_prints_the_heads_and_refuses_bad_input_in_one_line(tiny_runs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.pt"
    ok = runner.invoke(app, ["refit-head", str(tiny_runs.poi), str(tiny_runs.data), "--out", str(out),
                             "--class-power", "0", "--l2", "1e-4", "--device", "cpu", "--amp", "off", "--threads", "1"])
    assert ok.exit_code == 0, ok.output
    assert "own head" in ok.output and "chosen" in ok.output and out.is_file()
    for args, message in (
        (["--out", str(tiny_runs.poi / "best.pt")], "the checkpoint itself"),
        (["--out", str(tmp_path / "x.pt"), "--class-power", "-1"], "--class-power"),
        (["--out", str(tmp_path / "x.pt"), "--select", "loss"], "--select"),
        (["--out", str(tmp_path / "x.pt"), "--amp", "fp8"], "--amp"),
        (["--out", str(tmp_path / "x.pt"), "--split", "train"], "not a validation split"),
    ):
        bad = runner.invoke(app, ["refit-head", str(tiny_runs.poi), str(tiny_runs.data), *args, "--device", "cpu"])
        assert bad.exit_code != 0 and message in bad.output and "Traceback" not in bad.output, (args, bad.output)
        assert len(bad.output.strip().splitlines()) == 1, bad.output


def test_refit_head_refuses_a_fold_runs_store_whose_training_split_holds_its_test_fold(tmp_path):
    """On a --fold K run's store refit-head asked for --split, then refused every split there was;
    given a validation split, it would have re-fitted on the whole training split, fold K (the
    run's test set) included. A store without valid/val now says so without asking for a --split."""
    from conftest import add_folds, make_prepared, tiny_config
    from poi_cli.train.engine import train

    data = add_folds(make_prepared(tmp_path / "ck", splits={"train": 2}), folds=2)
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, fold="1", use_pin=False))
    with pytest.raises(RefitError, match="is of a --fold 1 run: refit-head re-fits on the whole training split"):
        refit_head(run, data, out=tmp_path / "x.pt", device="cpu", amp="off")
    whole = train(tiny_config(data, tmp_path / "runs", epochs=1, use_pin=False, name="whole"))
    with pytest.raises(RefitError, match=r"has no valid/val split to choose the head on \(its splits: train\)"):
        refit_head(whole, data, out=tmp_path / "x.pt", device="cpu", amp="off")
    assert not (tmp_path / "x.pt").exists()


def test_refit_head_scores_the_face_and_its_mirror_when_the_recipe_flips(tiny_runs, tmp_path):
    from poi_cli.study.calibrate import calibrate

    flipped = calibrate(tiny_runs.poi, tiny_runs.data, out=tmp_path / "flip.pt", device="cpu", fusion="trn", flip="on")
    result = refit_head(flipped.written, tiny_runs.data, out=tmp_path / "r.pt", class_powers=(0.0,), l2s=(1e-4,),
                        device="cpu", amp="off")
    assert result.views == 2 and load_checkpoint(tmp_path / "r.pt")["head_refit"]["views"] == 2
    plain = refit_head(tiny_runs.poi, tiny_runs.data, out=tmp_path / "p.pt", class_powers=(0.0,), l2s=(1e-4,),
                       device="cpu", amp="off")
    assert plain.views == 1


def test_refit_head_refuses_before_any_work_what_would_break_an_input_or_the_head(tiny_runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_runs.data, other)
    both = combine([tiny_runs.data, other], tmp_path / "both")
    member_faces = other / "faces.npy"
    before = member_faces.read_bytes()
    with pytest.raises(Exception, match="would write over"):  # a member's store is read: never written over
        refit_head(tiny_runs.poi, both, out=member_faces, device="cpu", amp="off")
    assert member_faces.read_bytes() == before
    with pytest.raises(RefitError, match="underflow"):
        refit_head(tiny_runs.poi, tiny_runs.data, out=tmp_path / "q.pt", class_powers=(5000.0,), device="cpu", amp="off")
    with pytest.raises(RefitError, match=r"\.onnx"):
        refit_head(tiny_runs.poi, tiny_runs.data, out=tmp_path / "q.onnx", device="cpu", amp="off")
    assert not (tmp_path / "q.pt").exists() and not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("command, written", [(["calibrate"], "best.calibrated.pt"),
                                              (["refit-head", "--class-power", "0", "--l2", "1e-4"], "best.refit.pt")])
def test_running_again_replaces_its_own_output_beside_the_checkpoint(command, written, tiny_runs, tmp_path):
    """The second `poi calibrate RUN DATA` (after --resume, or with another recipe) refused its
    own best.calibrated.pt as a file "this command reads": the run's folder counted as an
    input whole. What is read is the checkpoint and what training wrote beside it."""
    run = shutil.copytree(tiny_runs.poi, tmp_path / "run")
    kept = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt", "results.csv", "config.json")}
    for _ in range(2):
        result = CliRunner().invoke(app, [command[0], str(run), str(tiny_runs.data), *command[1:], "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert (run / written).is_file()
    assert {name: (run / name).read_bytes() for name in kept} == kept
