"""`poi train --teacher RUN`: a frozen earlier model's objective inference teaches the TRN."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_prepared, tiny_config
from poi_cli.cli import app
from poi_cli.model.checkpoint import CheckpointInfo, load_model
from poi_cli.model.network import intermediate_log_probs, tempered_log_probs
from poi_cli.train.config import TrainError
from poi_cli.train.engine import train
from poi_cli.train.teacher import Teacher


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_teacher_is_learned_from_and_left_unchanged(tiny_runs, tmp_path):
    teacher = tiny_runs.poi  # trained without a teacher
    before = _digest(teacher / "best.pt")
    # the student learns from the teacher alone (lambda_3 = 0, no PIN), on one fixed batch
    student = train(tiny_config(tiny_runs.data, tmp_path / "runs", epochs=6, batch=14, lr=0.05, augment=False,
                                use_pin=False, lambda_ce_tar=0.0, teacher=str(teacher), teacher_weight=1.0,
                                name="student"))
    results = pd.read_csv(student / "results.csv")
    assert results["loss_kl_teacher"].notna().all()
    assert results["loss_kl_teacher"].iloc[-1] < 0.5 * results["loss_kl_teacher"].iloc[0]  # it moves onto the teacher
    assert _digest(teacher / "best.pt") == before
    assert pd.read_csv(teacher / "results.csv")["loss_kl_teacher"].isna().all()


@pytest.mark.parametrize("kind", ["poi", "baseline"])
def test_teacher_targets_are_its_objective_inference_at_t(tiny_runs, kind):
    run = tiny_runs.poi if kind == "poi" else tiny_runs.baseline
    model, checkpoint = load_model(run)
    info = CheckpointInfo.of(checkpoint)
    teacher = Teacher(str(run), list(info.classes), info.preprocessing, torch.device("cpu"))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        output = model(x)
    expected = (intermediate_log_probs(output.region_logits, output.gate_weights, 2.0) if kind == "poi"
                else tempered_log_probs(output.trn_logits, 2.0))
    assert torch.allclose(teacher.log_probs(x, 2.0), expected, atol=1e-6)
    assert not teacher.log_probs(x, 2.0).requires_grad


def test_a_teacher_that_sees_other_input_or_classes_is_refused(tiny_runs, tmp_path):
    run = tiny_runs.baseline
    with pytest.raises(TrainError, match="--teacher: .* trained on other input: input_size 64 \\(this run: 96\\)"):
        train(tiny_config(tiny_runs.data, tmp_path / "runs", epochs=1, input_size=96, teacher=str(run), name="bigger"))
    eight = make_prepared(tmp_path / "eight", num_classes=8, splits={"train": 1, "valid": 1})
    with pytest.raises(TrainError, match="--teacher: .* predicts .*; this run trains .*contempt"):
        train(tiny_config(eight, tmp_path / "runs", epochs=1, teacher=str(run), name="eight"))


def test_cli_teacher_that_does_not_exist_is_one_line(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"train": 1, "valid": 1})
    result = CliRunner().invoke(app, ["train", str(data), "--size", "64", "--epochs", "1", "--batch", "7",
                                      "--project", str(tmp_path / "runs"), "--teacher", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert "--teacher" in result.output and "missing" in result.output and "Traceback" not in result.output


def test_rounds_teacher_teaches_round_two_with_round_one(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"train": 2, "valid": 1})
    project = tmp_path / "runs"
    common = ["--size", "64", "--epochs", "1", "--batch", "7", "--amp", "off", "--project", str(project)]
    result = CliRunner().invoke(app, ["train", str(data), "--noise", "0.3", "--rounds", "2", "--rounds-teacher",
                                      "--clean-threshold", "0.05", *common])
    assert result.exit_code == 0, result.output
    first, second = (json.loads((project / name / "config.json").read_text()) for name in ("exp", "exp_round2"))
    assert first["teacher"] is None and second["teacher"] == str((project / "exp").resolve())
    assert pd.read_csv(project / "exp_round2" / "results.csv")["loss_kl_teacher"].notna().all()
    alone = CliRunner().invoke(app, ["train", str(data), "--rounds-teacher", *common])
    assert alone.exit_code == 1 and "--rounds-teacher needs --rounds 2" in alone.output


def test_rounds_fine_tune_starts_round_two_from_round_one(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"train": 2, "valid": 1})
    project = tmp_path / "runs"
    common = ["--size", "64", "--epochs", "2", "--lr", "0.05", "--batch", "7", "--amp", "off", "--project", str(project)]
    result = CliRunner().invoke(app, ["train", str(data), "--noise", "0.3", "--rounds", "2", "--rounds-teacher",
                                      "--rounds-fine-tune", "1", "--clean-threshold", "0.05", "--warmup-epochs", "1", *common])
    assert result.exit_code == 0, result.output
    first, second = (json.loads((project / name / "config.json").read_text()) for name in ("exp", "exp_round2"))
    round_one = str((project / "exp").resolve())
    assert first["fine_tune"] is None and (first["epochs"], first["lr"], first["schedule"]) == (2, 0.05, "step")
    # round 2: round 1's weights, its own epochs, two fifths of the learning rate, cosine; the teacher as before
    assert second["fine_tune"] == round_one and second["teacher"] == round_one
    assert (second["epochs"], second["schedule"], second["warmup_epochs"]) == (1, "cosine", 0.0) and second["lr"] == 0.02
    assert first["warmup_epochs"] == 1.0
    assert len(pd.read_csv(project / "exp_round2" / "results.csv")) == 1
    assert "fine-tuning from" in result.output
    alone = CliRunner().invoke(app, ["train", str(data), "--rounds-fine-tune", "3", *common])
    assert alone.exit_code == 1 and "--rounds-fine-tune needs --rounds 2" in alone.output
