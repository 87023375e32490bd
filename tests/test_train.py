"""Training engine: run folder, loss, best checkpoint, resume after SIGKILL, schedule, input."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_SPLITS, make_prepared, tiny_config, train_until_killed
from poi_cli.data.loader import BatchLoader
from poi_cli.data.preprocess import normalize, to_model_input
from poi_cli.train.augment import BatchAugment
from poi_cli.core.atomic import next_run_dir
from poi_cli.core.layout import HELDOUT_FILE
from poi_cli.model.checkpoint import load_checkpoint, load_model
from poi_cli.cli import app
from poi_cli.train.config import TrainConfig, TrainError, field_default
from poi_cli.model.losses import LossConfig
from poi_cli.model.network import ModelConfig, POIModel
from poi_cli.model.predictions import predict_split
from poi_cli.train.data import select_data
from poi_cli.train.engine import learning_rate, loss_config_of, train
from poi_cli.train.finetune import load_fine_tune, remap_class_rows
from poi_cli.train.run_folder import RESULT_COLUMNS
from poi_cli.data.store import PreparedDataset

def test_run_folder_loss_and_best_checkpoint(tmp_path):
    data = make_prepared(tmp_path / "data", splits=TINY_SPLITS)
    # one full batch per epoch, no augmentation: each step descends on the same images
    run = train(tiny_config(data, tmp_path / "runs", epochs=4, batch=14, augment=False))
    assert run == tmp_path / "runs" / "exp"
    assert {p.name for p in run.iterdir()} == {"config.json", "results.csv", "last.pt", "best.pt"}

    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 4 and config["lr_steps"] == [20, 40] and config["data"] == str(data.resolve())
    assert config["resolved"]["val_split"] == "valid" and config["resolved"]["n_train"] == 14

    results = pd.read_csv(run / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    assert results["epoch"].tolist() == [1, 2, 3, 4]
    for column in ("loss_total", "loss_ce_tar", "loss_ce_au", "loss_au", "loss_kl_au", "loss_kl_tar", "w_mean",
                   "lr", "train_acc", "val_acc", "epoch_time_s", "images_per_s"):
        assert results[column].notna().all(), column
    assert results["train_acc_clean"].isna().all()  # no noise: clean labels unknown
    assert results["loss_total"].diff().iloc[1:].lt(0).all()  # falls every epoch

    last = load_checkpoint(run / "last.pt")  # weights_only=True inside
    assert last["epoch"] == 4 and last["classes"] == PreparedDataset(data).classes
    assert set(last) >= {"model", "optimizer", "config", "model_config", "best_val_acc", "best_epoch", "history"}

    # best.pt: the first epoch with the highest validation accuracy, and it really scores that
    best_epoch = int(results["epoch"][results["val_acc"].idxmax()])
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == best_epoch == last["best_epoch"]
    model, _ = load_model(run / "best.pt")
    dataset = PreparedDataset(data)
    valid = dataset.split("valid")
    predictions = predict_split(model, dataset.faces, valid.store_rows, valid.labels, 64, 7, torch.device("cpu"), False, with_pin=False)
    correct, total = int(predictions.correct.sum()), len(predictions)
    assert correct / total == pytest.approx(results["val_acc"].max(), abs=1e-6)
    # each checkpoint carries T_cal fitted on its own epoch's validation logits (issue 12)
    for checkpoint, epoch in ((best, best_epoch), (last, 4)):
        record = checkpoint["calibration"]
        assert record["split"] == "valid" and record["n_images"] == total
        assert record["temperature"] == pytest.approx(results.loc[results["epoch"] == epoch, "calibration_t"].item(), abs=1e-6)
        assert record["nll_after"] <= record["nll_before"] + 1e-9


def test_baseline_with_noise_records_clean_accuracy(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"train": 3, "test": 1})  # like RAF-DB: no validation split
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, use_pin=False, noise=0.5, noise_seed=3, val_fraction=0.3))
    results = pd.read_csv(run / "results.csv")
    assert results["train_acc_clean"].notna().all()
    assert 0.0 <= results["train_acc_flipped"].iloc[0] <= 1.0
    for ablated in ("loss_ce_au", "loss_au", "loss_kl_au", "loss_kl_tar", "w_mean", "beta_mean", "beta_auc_flipped"):
        assert results[ablated].isna().all(), ablated  # the baseline has CE only
    assert results["loss_total"].iloc[0] == pytest.approx(results["loss_ce_tar"].iloc[0])
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert 0.25 < resolved["noise_realised_rate"] < 0.75
    # validation held out of train (one image per class), never the test split
    assert resolved["val_split"] == "train[held out 0.3]" and (resolved["n_train"], resolved["n_val"]) == (14, 7)
    assert results["val_acc"].notna().all()
    # a second run with the same name gets a numbered folder
    assert train(tiny_config(data, tmp_path / "runs", epochs=1, use_pin=False, val_split="none")).name == "exp2"


def test_poi_with_noise_records_beta_per_epoch_and_the_uem_reading(tmp_path):
    data = make_prepared(tmp_path / "data", splits=TINY_SPLITS)
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, noise=0.5, noise_seed=1,
                            uem_temperature=3.0, uem_scale="paper"))
    row = pd.read_csv(run / "results.csv").iloc[0]
    # the first reading of Eq. 10: w in [1/4, 1], so beta in [0, e^0.75 - 1]
    assert 0.25 <= row["w_mean"] <= 1.0 and 0.0 <= row["beta_mean"] <= math.exp(0.75) - 1
    assert 0.0 <= row["beta_over_0.1"] <= 1.0 and 0.0 <= row["beta_auc_flipped"] <= 1.0
    assert 0.0 <= row["train_acc_flipped"] <= 1.0
    model_config = load_checkpoint(run / "last.pt")["model_config"]
    assert (model_config["uem_temperature"], model_config["uem_scale"]) == (3.0, "paper")


def test_distill_warmup_leaves_eq_11_out_of_the_first_epochs(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"train": 1, "valid": 1})
    # beta = 1: a visible term; weights other than the defaults: the loss uses the run's own
    run = train(tiny_config(data, tmp_path / "runs", epochs=2, batch=7, distill_warmup=1, use_uem=False,
                            lambda_au=0.3, lambda_ce_au=0.7, lambda_ce_tar=2.0))
    results = pd.read_csv(run / "results.csv")
    config = json.loads((run / "config.json").read_text())
    t2 = config["temperature"] ** 2
    rest = (config["lambda_au"] * results["loss_au"] + config["lambda_ce_au"] * results["loss_ce_au"]
            + config["lambda_ce_tar"] * results["loss_ce_tar"] + t2 * results["loss_kl_au"])
    assert (t2 * results["loss_kl_tar"] > 1e-3 * results["loss_total"]).all()  # logged throughout, and not negligible
    assert results["loss_total"][0] == pytest.approx(rest[0], rel=1e-4)  # epoch 1: no distillation
    assert results["loss_total"][1] == pytest.approx(rest[1] + t2 * results["loss_kl_tar"][1], rel=1e-4)


def test_fine_tune_from_a_seven_class_run_onto_eight_class_data(tiny_runs, tmp_path, capsys):
    eight = make_prepared(tmp_path / "eight", num_classes=8, splits={"train": 1, "valid": 1})
    run = train(tiny_config(eight, tmp_path / "runs", epochs=1, use_pin=False, fine_tune=str(tiny_runs.baseline),
                            name="ft"))
    assert "classes mapped by name: 7 shared of 8" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pt")["classes"][-1] == "contempt"


def test_fine_tune_keeps_the_gate_of_a_checkpoint_that_names_it_the_old_way(tmp_path, capsys):
    from conftest import tiny_model, write_checkpoint

    source = tiny_model()
    path = write_checkpoint(tmp_path / "old.pt", source)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"] = {k.replace("pin.oim.", "pin.gate."): v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, path)  # as the first bundled model was written: the OIM's FC under "gate.fc"
    torch.manual_seed(1)  # another initialisation than the source's
    model = POIModel(ModelConfig(arch=source.config.arch, num_classes=7, input_size=64))
    note = load_fine_tune(model, str(path), list(checkpoint["classes"]))
    assert "keep their initialisation" not in note
    assert torch.equal(model.pin.oim.fc.weight, source.pin.oim.fc.weight)
    assert "trained at" not in note


def test_fine_tune_at_another_size_says_so(tmp_path):
    """docs said a --size other than the source's was an error; it is the same network, so a note."""
    from conftest import TINY_ARCH, tiny_model, write_checkpoint
    from poi_cli.core.manifests import class_names

    path = write_checkpoint(tmp_path / "src.pt", tiny_model())
    source_size = torch.load(path, weights_only=True)["model_config"]["input_size"]
    other = 96 if source_size != 96 else 64
    model = POIModel(ModelConfig(arch=TINY_ARCH, num_classes=7, input_size=other))
    note = load_fine_tune(model, str(path), list(class_names(7)))
    assert f"it was trained at {source_size} px, this run at {other} px (--size {source_size} keeps its scale)" in note




def test_resume_after_kill_mid_epoch_matches_uninterrupted(tmp_path):
    data = make_prepared(tmp_path / "data", splits=TINY_SPLITS)
    project = tmp_path / "runs"
    train_until_killed(data, project)
    threads = torch.get_num_threads()
    run = project / "killed"
    assert pd.read_csv(run / "results.csv")["epoch"].tolist() == [1]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1

    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--threads", str(threads)])
    assert result.exit_code == 0, result.output
    assert "resuming at epoch 2/2" in result.output
    results = pd.read_csv(run / "results.csv")
    assert results["epoch"].tolist() == [1, 2]  # no duplicate, no torn row

    reference = train(tiny_config(data, project, name="reference"))
    resumed_state = load_checkpoint(run / "last.pt")["model"]
    reference_state = load_checkpoint(reference / "last.pt")["model"]
    for key, value in reference_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    again = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert again.exit_code == 1 and "already finished" in again.output


def test_bad_input_is_one_line_error(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "not a prepared dataset folder" in result.output
    assert "Traceback" not in result.output
    data = make_prepared(tmp_path / "data", splits={"train": 1})
    result = runner.invoke(app, ["train", str(data), "--noise", "0.2", "--labels", "x.csv"])
    assert result.exit_code == 1 and "exclude each other" in result.output
    for option, value in (("--lr", "1e39"), ("--temperature", "inf"), ("--teacher-weight", "1e308"),
                          ("--warmup-epochs", "inf"), ("--uem-temperature", "inf")):
        result = runner.invoke(app, ["train", str(data), option, value, "--project", str(tmp_path / "r")])
        assert result.exit_code == 1 and f"{option} must be a finite number (float32)" in result.output, result.output
    same = runner.invoke(app, ["train", str(data), "--val-split", "train", "--project", str(tmp_path / "r")])
    assert same.exit_code == 1 and "is the split it trains on" in same.output  # chose best.pt on its training images
    for ablation in ("--no-prior", "--no-oim", "--no-uem"):  # trained a plain baseline, the ablation silently dropped
        result = runner.invoke(app, ["train", str(data), "--baseline", ablation, "--project", str(tmp_path / "r")])
        assert result.exit_code == 1 and "--baseline trains no PIN" in result.output, (ablation, result.output)
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["train", str(data), "--val-split", "nope", "--project", str(tmp_path / "r")])
    assert result.exit_code == 1 and "nope" in result.output
    result = runner.invoke(app, ["train", str(data), "--val-split", "test"])
    assert result.exit_code == 1 and "never selected on the test split" in result.output


@pytest.mark.parametrize("inside", ["data/runs", "data/labels/runs", "run"])
def test_a_project_inside_a_prepared_folder_or_a_run_is_one_line_before_any_folder(tmp_path, inside):
    """Runs went into the prepared folder (a later `poi prepare` of a tree holding one read `exp/`
    as a class folder) or into another run's folder."""
    data = make_prepared(tmp_path / "data", splits={"train": 2, "valid": 1})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "last.pt").write_bytes(b"")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["train", str(data), "--epochs", "1", "--amp", "off",
                                      "--project", str(tmp_path / inside)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert ("is a run folder" if inside == "run" else "lies inside the prepared folder") in lines[0]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("content", ["not json", "[]", "{}", '{"data": "p", "epochs": "x"}', "\udcff"])
def test_resume_of_a_run_whose_config_json_is_damaged_is_one_line_naming_it(tmp_path, content):
    """A run killed in its first epoch resumes from config.json: a hand-edited or truncated one
    was a traceback ([]) or a line naming nothing ("Expecting value ...")."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "config.json" in lines[0], result.output
    assert "Traceback" not in result.output


def test_a_kill_in_the_last_epochs_writes_is_repaired_by_the_resume_that_finds_it_finished(tmp_path):
    """Killed after last.pt of the last epoch but before its results.csv row and best.pt: the
    run is finished, so --resume says so, but first brings results.csv and best.pt in line with
    last.pt (it used to leave them an epoch behind, and evaluate and report read them) and
    removes the killed writer's temp file."""
    data = make_prepared(tmp_path / "data", splits={"train": 6, "valid": 2})
    runs = tmp_path / "runs"
    done = CliRunner().invoke(app, ["train", str(data), "--arch", "resnet10", "--size", "64", "--batch", "16",
                                    "--epochs", "2", "--amp", "off", "--project", str(runs)])
    assert done.exit_code == 0, done.output
    run = runs / "exp"
    last = load_checkpoint(run / "last.pt")
    rows = (run / "results.csv").read_text().splitlines()
    (run / "results.csv").write_text("\n".join(rows[:2]) + "\n")  # epoch 2's row never written
    if last["best_epoch"] == 2:
        (run / "best.pt").unlink()  # epoch 2's best.pt never written (epoch 1's was not kept either)
    temp = run / ".best.pt.99999999.abcd.tmp"  # the killed writer's (no such process)
    temp.write_bytes(b"half a checkpoint")
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert resumed.exit_code == 1 and "already finished its 2 epochs" in resumed.output
    assert (run / "results.csv").read_text().splitlines() == rows and not temp.exists()
    assert load_checkpoint(run / "best.pt")["epoch"] == last["best_epoch"]


def test_an_epoch_whose_last_update_breaks_the_weights_stops_the_run_without_saving_them(tmp_path):
    """One step per epoch at an absurd lr: the loss is finite when checked (before the update),
    the update leaves weights whose outputs overflow; the run stops in one line and saves no
    checkpoint of them (once it said `done` and its model answered every face with NaN)."""
    data = make_prepared(tmp_path / "data", splits={"train": 6, "valid": 1})
    result = CliRunner().invoke(app, ["train", str(data), "--arch", "resnet10", "--size", "64", "--batch", "64",
                                      "--lr", "1e8", "--epochs", "1", "--amp", "off", "--project", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "became non-finite in epoch 1" in result.output, result.output
    assert "done" not in result.output and not list((tmp_path / "runs").rglob("*.pt"))


@pytest.mark.parametrize("target", [LossConfig, ModelConfig])
def test_train_config_has_the_defaults_of_the_loss_and_the_model(target):
    """TrainConfig takes LossConfig's defaults (model/loss_config.py) and writes ModelConfig's
    again (network.py imports torch, which the CLI must not): they must agree (and
    test_losses pins those to the spec)."""
    train_fields = {f.name for f in fields(TrainConfig)}
    shared = [f for f in fields(target) if f.name in train_fields]
    assert shared
    for f in shared:
        assert getattr(TrainConfig(), f.name) == field_default(f), f.name


def test_the_engine_takes_every_loss_setting_from_the_train_config():
    # every LossConfig field is an option of `poi train`: none is left at LossConfig's default unseen
    assert {f.name for f in fields(LossConfig)} <= {f.name for f in fields(TrainConfig)}
    assert loss_config_of(TrainConfig()) == LossConfig()
    for f in fields(LossConfig):
        default = getattr(TrainConfig(), f.name)
        changed = (not default) if isinstance(default, bool) else default + 0.25
        assert loss_config_of(TrainConfig(**{f.name: changed})) == LossConfig(**{f.name: changed}), f.name


def test_learning_rate_schedules():
    step = TrainConfig()  # lr 0.1, / 10 at epochs 20 and 40
    assert [learning_rate(step, e, 0, 100) for e in (0, 19, 20, 39, 40, 59)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    warm = TrainConfig(warmup_epochs=2)
    assert learning_rate(warm, 0, 0, 10) == pytest.approx(0.1 / 20)
    assert learning_rate(warm, 1, 9, 10) == pytest.approx(0.1)
    cosine = TrainConfig(schedule="cosine", epochs=10)
    assert learning_rate(cosine, 0, 0, 10) == pytest.approx(0.1)
    assert learning_rate(cosine, 5, 0, 10) == pytest.approx(0.05)
    assert learning_rate(cosine, 9, 9, 10) < 0.001


def test_augment_flip_and_shift_are_exact_pixel_moves():
    x = torch.randint(1, 256, (64, 16, 16, 3), dtype=torch.uint8)  # uint8 store rows (B, H, W, 3)
    flipped = BatchAugment(flip=True, translate=0.0).flip_and_shift(x, torch.Generator().manual_seed(0))
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(2)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()

    shifted = BatchAugment(flip=False, translate=0.25).flip_and_shift(x, torch.Generator().manual_seed(1))
    moves = set()
    for image, original in zip(shifted, x):  # every output is the input moved by whole pixels, zero-filled
        found = None
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                moved = torch.zeros_like(original)
                ys, xs = slice(max(dy, 0), 16 + min(dy, 0)), slice(max(dx, 0), 16 + min(dx, 0))
                yo, xo = slice(max(-dy, 0), 16 + min(-dy, 0)), slice(max(-dx, 0), 16 + min(-dx, 0))
                moved[ys, xs] = original[yo, xo]
                if torch.equal(moved, image):
                    found = (dy, dx)
        assert found is not None
        moves.add(found)
    assert len(moves) > 10  # the shifts vary


def test_augment_output_is_the_normalised_model_input():
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    plain = BatchAugment(flip=False, translate=0.0, color_jitter=0.0)
    torch.testing.assert_close(plain(x, 32), to_model_input(x, 32))
    torch.testing.assert_close(plain(x, 64), to_model_input(x, 64))  # resized on the device alike
    gray = BatchAugment(flip=False, translate=0.0, color_jitter=0.4, grayscale=True)
    torch.testing.assert_close(gray(x, 32, torch.Generator().manual_seed(0)), to_model_input(x, 32))
    jittered = BatchAugment(flip=False, translate=0.0, color_jitter=0.4)(x, 32, torch.Generator().manual_seed(0))
    assert not torch.allclose(jittered, to_model_input(x, 32))
    low, high = to_model_input(torch.zeros_like(x), 32), to_model_input(torch.full_like(x, 255), 32)
    assert (jittered >= low - 1e-5).all() and (jittered <= high + 1e-5).all()  # clamped to real colours


def test_fused_colour_jitter_equals_brightness_then_contrast_then_saturation():
    x = torch.rand(6, 3, 8, 8) * 0.4 + 0.3  # mid-range: no clamping in between
    out = BatchAugment(flip=False, translate=0.0, color_jitter=0.3).colour_and_normalise(x * 255, torch.Generator().manual_seed(4))
    same_draws = torch.Generator().manual_seed(4)  # the factors BatchAugment drew, in its order
    b, c, s = (torch.rand(6, generator=same_draws).view(-1, 1, 1, 1) * 0.6 + 0.7 for _ in range(3))
    gray = lambda t: (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # noqa: E731
    step = x * b
    step = (step - gray(step).mean((2, 3), keepdim=True)) * c + gray(step).mean((2, 3), keepdim=True)
    step = (step - gray(step)) * s + gray(step)
    torch.testing.assert_close(out, normalize(step.clamp(0, 1)), atol=1e-5, rtol=1e-5)


def test_loader_is_seeded_per_epoch_and_shards_ranks():
    faces = np.arange(20, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)
    rows, labels = np.arange(20), np.arange(20) % 7

    def epoch_rows(rank=0, world=1, epoch=0):
        loader = BatchLoader(faces, rows, labels, 8, shuffle=True, seed=5, rank=rank, world_size=world)
        loader.set_epoch(epoch)
        return [images[:, 0, 0, 0].tolist() for images, _, _, _ in loader]

    first = epoch_rows()
    assert len(first) == 2 and all(len(b) == 8 for b in first)  # 20 // 8 steps, last partial batch dropped
    assert len(set(sum(first, []))) == 16
    assert epoch_rows() == first and epoch_rows(epoch=1) != first
    shards = [epoch_rows(rank, 2) for rank in (0, 1)]
    for step in range(2):  # two processes split each global batch of 8 into disjoint halves
        assert sorted(shards[0][step] + shards[1][step]) == sorted(first[step])
    evaluation = BatchLoader(faces, rows, labels, 8, shuffle=False)
    assert sum((b[1].tolist() for b in evaluation), []) == labels.tolist()


def test_fine_tune_maps_class_rows_by_name():
    source_classes = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral", "contempt"]
    target_classes = source_classes[:7]
    state = {"trn.fc.weight": torch.arange(8.0)[:, None].repeat(1, 3), "trn.fc.bias": torch.arange(8.0),
             "trunk.w": torch.ones(2)}
    target = {"trn.fc.weight": torch.zeros(7, 3), "trn.fc.bias": torch.zeros(7), "trunk.w": torch.zeros(2)}
    mapped = remap_class_rows(state, source_classes, target, target_classes)
    assert mapped["trn.fc.bias"].tolist() == list(range(7))
    assert torch.equal(mapped["trunk.w"], torch.ones(2))
    back = remap_class_rows(mapped, target_classes, {k: torch.zeros_like(v) for k, v in state.items()}, source_classes)
    assert back["trn.fc.bias"].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]  # contempt keeps its initialisation


def test_fine_tune_between_region_heads_of_another_width_is_one_line():
    # a POI run and a --no-prior run: region classifiers of 512 and 384 inputs, the same classes;
    # copying rows by class crashed with a RuntimeError (a traceback from poi train)
    classes = ["surprise", "fear", "disgust"]
    state = {"pin.region_classifiers.0.weight": torch.ones(3, 512)}
    target = {"pin.region_classifiers.0.weight": torch.zeros(3, 384)}
    with pytest.raises(TrainError, match="has shape \\(3, 512\\), this model needs \\(3, 384\\).*--no-prior"):
        remap_class_rows(state, classes, target, ["surprise", "fear", "contempt"])


def test_next_run_dir_numbers_taken_names(tmp_path):
    assert [next_run_dir(tmp_path, "exp").name for _ in range(3)] == ["exp", "exp2", "exp3"]
    assert next_run_dir(tmp_path, "exp", exist_ok=True).name == "exp"


def test_resume_of_a_run_killed_in_its_first_epoch_starts_it_again(tiny_runs, tmp_path):
    killed = tmp_path / "runs" / "killed"  # what a kill in epoch 1 leaves: config.json alone
    killed.mkdir(parents=True)
    (killed / "config.json").write_text((tiny_runs.baseline / "config.json").read_text())
    assert train(TrainConfig(resume=str(killed))) == killed
    assert pd.read_csv(killed / "results.csv")["epoch"].tolist() == [1]
    assert load_checkpoint(killed / "last.pt")["config"]["use_pin"] is False


def test_resume_without_last_pt_but_with_finished_epochs_refuses_and_keeps_them(tiny_runs, tmp_path):
    run = tmp_path / "runs" / "lost_last"
    shutil.copytree(tiny_runs.baseline, run)
    (run / "last.pt").unlink()
    before = {name: (run / name).read_bytes() for name in ("results.csv", "best.pt")}
    with pytest.raises(TrainError, match="no last.pt to resume from"):
        train(TrainConfig(resume=str(run)))
    assert {name: (run / name).read_bytes() for name in before} == before


def test_soft_labels_train_on_the_annotators_votes(tmp_path):
    from poi_cli.core.manifests import CLASSES
    from poi_cli.data.combined import combine
    from poi_cli.data.prepare import prepare
    from test_prepare import make_ferplus

    data = prepare("ferplus", make_ferplus(tmp_path / "raw"), tmp_path / "ferplus", size=64, show_progress=False).out_dir
    dataset = PreparedDataset(data)
    train_split = dataset.split("train")
    targets = dict(zip(train_split.ids, dataset.vote_targets(train_split)))
    # happiness 8 of 10, its two single votes dropped: unanimous; votes neutral 3, contempt 6, unknown 1
    assert targets["FER2013Train/fer0000000.png"].tolist() == np.eye(8)[CLASSES.index("happiness")].tolist()
    mixed = targets["FER2013Train/fer0000004.png"]
    assert mixed[CLASSES.index("contempt")] == pytest.approx(6 / 9) and mixed[CLASSES.index("neutral")] == pytest.approx(3 / 9)
    # a combined folder reads its members' votes; a member without votes gets its labels as one-hots
    other = make_prepared(tmp_path / "other", num_classes=8, splits={"train": 1, "valid": 1})
    both = PreparedDataset(combine([data, other], tmp_path / "both"))
    both_train = both.split("train")
    soft = both.vote_targets(both_train)
    by_id = dict(zip(both_train.ids, soft))
    assert by_id["ferplus/FER2013Train/fer0000004.png"].tolist() == pytest.approx(mixed.tolist())
    others = [k for k, i in enumerate(both_train.ids) if i.startswith("other/")]
    assert np.array_equal(soft[others], np.eye(8, dtype=np.float32)[both_train.labels[others]])
    assert PreparedDataset(other).vote_targets(PreparedDataset(other).split("train")) is None

    # training: the same run but for the targets; its loss differs (one face is not unanimous)
    losses = {}
    for soft_labels in (False, True):
        run = train(tiny_config(data, tmp_path / "runs", epochs=1, batch=2, soft_labels=soft_labels, name=f"soft{soft_labels}"))
        losses[soft_labels] = pd.read_csv(run / "results.csv")["loss_ce_tar"][0]
        assert json.loads((run / "config.json").read_text())["soft_labels"] is soft_labels
    assert losses[True] != pytest.approx(losses[False], rel=1e-4)
    # made unanimous, the votes are the labels: every loss term as the majority label's
    manifest = pd.read_csv(data / "manifest.csv")
    manifest.loc[manifest["id"] == "FER2013Train/fer0000004.png", "vote_neutral"] = 0
    manifest.to_csv(data / "manifest.csv", index=False)
    rows = {}
    for soft_labels in (False, True):
        run = train(tiny_config(data, tmp_path / "runs", epochs=1, batch=2, soft_labels=soft_labels, name=f"one{soft_labels}"))
        rows[soft_labels] = pd.read_csv(run / "results.csv").filter(like="loss_").iloc[0]
    assert rows[True].to_numpy() == pytest.approx(rows[False].to_numpy(), rel=1e-5, nan_ok=True)  # nan: no teacher
    # a combined folder's sampling weights draw the soft targets with their images
    weighted = combine([data, other], tmp_path / "weighted", weights=[2, 0.5])
    picked = select_data(tiny_config(weighted, tmp_path / "runs", soft_labels=True))
    assert picked.sampling is not None and len(picked.sampling) == 2 * 2 + 8 // 2  # ferplus drawn twice, other half
    assert np.array_equal(picked.epoch_soft_targets(), picked.soft_targets[picked.sampling])
    assert np.array_equal(picked.epoch_soft_targets().argmax(1), picked.epoch_rows()[1])  # unanimous now: the labels
    with pytest.raises(TrainError, match="no annotator votes"):
        train(tiny_config(other, tmp_path / "runs", epochs=1, soft_labels=True))
    with pytest.raises(ValueError, match="--soft-labels"):
        tiny_config(data, tmp_path / "runs", soft_labels=True, noise=0.2).validate()


def test_an_interrupted_run_names_its_folder_in_the_command_that_continues_it(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) in epoch 2: exit 130, epoch 1 kept, and the message gives the
    `poi train --resume FOLDER` to run (it said --resume RUN_DIR); that command finishes the run."""
    from poi_cli.train.engine import Trainer

    data = make_prepared(tmp_path / "data", splits=TINY_SPLITS)
    real_epoch = Trainer.train_epoch

    def stop_in_epoch_two(self, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch, *args)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_two)
    options = ["--size", "64", "--batch", "7", "--lr", "0.01", "--amp", "off", "--threads", "1"]
    result = CliRunner().invoke(app, ["train", str(data), "--epochs", "2", "--project", str(tmp_path / "runs"),
                                      "--name", "stopped", *options])
    run = tmp_path / "runs" / "stopped"
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == (
        f"error: interrupted: finished epochs are saved in {run}; continue with `poi train --resume {run}`")
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run), "--threads", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_a_run_folder_has_one_writer(tmp_path):
    """`poi train --resume RUN` while another poi process still trains RUN used to train into
    the same files side by side (last.pt could go back an epoch); it stops in one line. The
    claim of a process that died is taken over (a SIGKILLed run resumes)."""
    import os
    import socket

    from poi_cli.core.locks import claim

    data = make_prepared(tmp_path / "data", splits=TINY_SPLITS)
    train_until_killed(data, tmp_path / "runs")
    run = tmp_path / "runs" / "killed"
    lock = run.parent / ".killed.lock"
    assert lock.is_file()  # left by the killed process, whose pid is gone
    kept = (run / "last.pt").read_bytes()
    with claim(run, "run folder"):  # a live process's claim (this one's)
        busy = CliRunner().invoke(app, ["train", "--resume", str(run), "--threads", "1"])
    assert busy.exit_code == 1 and "run folder" in busy.stderr and f"pid {os.getpid()}" in busy.stderr, busy.output
    assert (run / "last.pt").read_bytes() == kept
    # left behind by a process that is gone; a pid that is alive (PID 1 of another container) holds nothing
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run), "--threads", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and not lock.exists()


def _take_run_dir(project: str, barrier, names) -> None:
    barrier.wait()
    names.append(next_run_dir(project, "exp").name)


def test_processes_started_together_never_share_a_numbered_folder(tmp_path):
    """next_run_dir checked exists() and then made the folder: two `poi train` or `poi
    evaluate` started together could get the same exp folder (9 of 30 trials of 2)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        barrier, names = manager.Barrier(8), manager.list()
        workers = [context.Process(target=_take_run_dir, args=(str(tmp_path / "runs"), barrier, names)) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert sorted(names) == sorted(["exp", *(f"exp{k}" for k in range(2, 9))])


def test_an_interrupt_between_rounds_names_the_finished_round_to_resume(tmp_path, monkeypatch):
    """Ctrl-C in the audit between two rounds: the line names round 1's folder, whose --resume
    goes on with the cleaning and round 2 (it said --resume RUN_DIR)."""
    import poi_cli.pipeline as pipeline

    data = make_prepared(tmp_path / "data", splits=TINY_SPLITS)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "cleaned_labels", stopped)
    result = CliRunner().invoke(app, ["train", str(data), "--noise", "0.3", "--rounds", "2", "--size", "64", "--epochs",
                                      "1", "--batch", "7", "--amp", "off", "--project", str(tmp_path / "runs"),
                                      "--threads", "1"])
    first = tmp_path / "runs" / "exp"
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1].endswith(f"`poi train --resume {first}`")
    assert load_checkpoint(first / "last.pt")["epoch"] == 1


def test_a_train_that_fails_before_writing_anything_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    """A full disk at config.json left an empty numbered folder per try (exp, exp2, ...); evaluate,
    audit, report and combine already removed theirs."""
    import errno

    from poi_cli.train.run_folder import RunFolder

    data = make_prepared(tmp_path / "data", splits={"train": 1, "valid": 1})

    def full(self, config, resolved):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "config.json"))

    monkeypatch.setattr(RunFolder, "write_config", full)
    for _ in range(2):
        with pytest.raises(OSError):
            train(tiny_config(data, tmp_path / "runs", epochs=1))
    assert list((tmp_path / "runs").iterdir()) == []


def test_resume_applies_the_cpu_threads_the_run_trained_with(tmp_path, monkeypatch):
    """The thread count changes the numbers, was not recorded, and --resume took the machine's
    default: a run killed at 1 thread and resumed at 2 ended up to 7.3 apart in its weights
    from the run never stopped (and chose another best epoch)."""
    import torch

    import poi_cli.cli as cli
    import poi_cli.pipeline as pipeline

    data = make_prepared(tmp_path / "data", splits={"train": 1, "valid": 1})
    run = train(tiny_config(data, tmp_path / "runs", epochs=1))
    assert json.loads((run / "config.json").read_text())["resolved"]["threads"] == torch.get_num_threads()
    config = json.loads((run / "config.json").read_text())
    config["resolved"]["threads"] = 3
    (run / "config.json").write_text(json.dumps(config))
    seen = []
    monkeypatch.setattr(cli, "use_threads", lambda threads, import_torch=True: seen.append(threads) or threads or 2)
    monkeypatch.setattr(pipeline, "train_rounds", lambda *args, **kwargs: (_ for _ in ()).throw(TrainError("stop")))
    monkeypatch.delenv("POI_THREADS", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--resume", str(run)]).exit_code == 1 and seen == [3]
    other = runner.invoke(app, ["train", "--resume", str(run), "--threads", "2"])
    assert seen[-1] == 2 and "trained with 3 CPU threads; with 2 its numbers differ" in other.stderr
    monkeypatch.setenv("POI_THREADS", "2")
    runner.invoke(app, ["train", "--resume", str(run)])
    assert seen[-1] is None  # $POI_THREADS, as the user set it


def test_resume_names_the_options_it_ignores(tmp_path, monkeypatch):
    """`poi train --resume RUN --epochs 5` said "already finished its 1 epochs" and dropped
    --epochs without a word (an unfinished run went on with its old values, as silently)."""
    import poi_cli.pipeline as pipeline

    data = make_prepared(tmp_path / "data", splits={"train": 1, "valid": 1})
    run = train(tiny_config(data, tmp_path / "runs", epochs=1))
    monkeypatch.setattr(pipeline, "train_rounds", lambda *args, **kwargs: (_ for _ in ()).throw(TrainError("stop")))
    runner = CliRunner()
    changed = runner.invoke(app, ["train", str(data), "--resume", str(run), "--epochs", "5", "--no-uem", "--threads", "1"])
    assert "ignored: --no-uem, --epochs 5 (the run's: 1) (a new run" in changed.stderr, changed.stderr
    same = runner.invoke(app, ["train", str(data), "--resume", str(run), "--threads", "1"])  # the run's own data
    assert "ignored" not in same.stderr


def test_resume_ignores_the_options_it_says_it_ignores_and_names_what_it_cannot_resume(tmp_path):
    """--resume RUN --soft-labels --noise 0.3 said both were ignored, then refused their
    combination; --resume RUN --fold all said --fold all was ignored, then refused it; a --fold all
    folder was 'not a poi run folder' and a checkpoint file 'no such run folder'."""
    data = make_prepared(tmp_path / "data", splits={"train": 1, "valid": 1})
    run = train(tiny_config(data, tmp_path / "runs", epochs=1))
    runner = CliRunner()
    for options in (["--soft-labels", "--noise", "0.3"], ["--fold", "all"]):
        done = runner.invoke(app, ["train", "--resume", str(run), *options, "--threads", "1"])
        assert done.exit_code == 1 and "ignored:" in done.stderr, done.output
        assert "already finished its 1 epochs" in done.output, done.output  # what --resume itself says of this run
    cv = tmp_path / "runs" / "cv"
    cv.mkdir()
    (cv / "cv_config.json").write_text("{}")
    for target, words in ((cv, "is a --fold all cross-validation: the same command that started it"),
                          (run / "best.pt", "--resume takes a run folder, not a file")):
        done = runner.invoke(app, ["train", "--resume", str(target), "--threads", "1"])
        assert done.exit_code == 1 and words in done.output, done.output


def test_options_that_cannot_take_effect_within_the_epochs_are_said():
    from poi_cli.train.engine import idle_options

    assert idle_options(TrainConfig(epochs=1, warmup_epochs=2, lr=0.1))[0].startswith(
        "--warmup-epochs 2 is longer than the 1 epochs: the run never reaches --lr 0.1")
    assert "the PIN never teaches the TRN" in idle_options(TrainConfig(epochs=3, distill_warmup=3))[0]
    assert idle_options(TrainConfig(epochs=10, warmup_epochs=1, distill_warmup=2)) == []
    # options of parts the run does not have (they were taken without a word)
    assert idle_options(TrainConfig(epochs=3, distill_warmup=3, use_pin=False)) == [
        "--distill-warmup 3 delays the PIN's teaching (Eq. 11): a --baseline has no PIN"]
    assert idle_options(TrainConfig(teacher_weight=3.0)) == [
        "--teacher-weight 3 weighs a --teacher's term: without --teacher it does nothing"]
    assert idle_options(TrainConfig(teacher="run", teacher_weight=3.0)) == []
    assert "one process has none to synchronise" in idle_options(TrainConfig(sync_bn=True))[0]
    assert idle_options(TrainConfig(sync_bn=True), world_size=2) == []


def test_options_of_the_cleaning_between_rounds_given_to_one_round_are_said():
    from poi_cli.pipeline import idle_round_options

    assert idle_round_options(TrainConfig(clean_threshold=0.5, clean_cross_fit=3)) == [
        "--clean-threshold and --clean-cross-fit choose how --rounds cleans the labels between rounds: with one round "
        "nothing is cleaned"]
    assert idle_round_options(TrainConfig(rounds=2, clean_threshold=0.5, clean_cross_fit=3)) == []
    assert "--rounds-teacher makes each round the teacher of the next in its place" in idle_round_options(
        TrainConfig(rounds=2, rounds_teacher=True, teacher="run"))[0]


def test_a_class_of_one_image_is_never_held_out_of_training():
    from poi_cli.train.data import hold_out

    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    for fraction in (0.1, 0.5, 0.9):
        mask = hold_out(labels, fraction, seed=0)
        assert not mask[4], fraction  # class 1's only image: it went to validation at --val-fraction 0.5
        assert mask[labels == 0].sum() >= 1 and (~mask[labels == 0]).sum() >= 1 and mask[labels == 2].sum() == 1


def test_a_hold_out_of_no_image_is_no_validation(tmp_path):
    """--train-split valid on a valid split of one image per class: --val-fraction 0.1 holds out
    nothing (a class's last image stays in training), and the run scored the empty hold-out,
    val_acc 0.0 every epoch, best.pt epoch 1; now it runs as --val-split none does, and says why."""
    data = make_prepared(tmp_path / "data", splits={"train": 2, "valid": 1})  # valid: 7 images, one per class
    picked = select_data(tiny_config(data, tmp_path / "runs", train_split="valid"))
    assert picked.val is None and picked.val_split is None and not picked.held_out and len(picked.labels) == 7
    assert picked.val_note.startswith("no validation (valid is the split it trains on, and its 7 images are too few")
    assert picked.val_note.endswith("best.pt is the last epoch")
    run = train(tiny_config(data, tmp_path / "runs", train_split="valid", epochs=3, use_pin=False))
    results = pd.read_csv(run / "results.csv")
    assert results["val_acc"].isna().all() and results["calibration_t"].isna().all()
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["val_split"] is None and resolved["n_val"] == 0 and not (run / HELDOUT_FILE).exists()
    assert load_checkpoint(run / "best.pt")["epoch"] == 3
    # a store of subjects, each the last of its class: no whole subject can be held out either
    manifest = pd.read_csv(data / "manifest.csv")
    manifest["subject"] = manifest["label_name"]
    manifest.to_csv(data / "manifest.csv", index=False)
    picked = select_data(tiny_config(data, tmp_path / "runs", train_split="valid"))
    assert picked.val is None and "a subject only whole" in picked.val_note


def test_training_on_val_holds_out_of_it_and_says_why(tmp_path):
    """--train-split val said "the store has no valid/val split", which it has."""
    data = make_prepared(tmp_path / "data", splits={"train": 2, "val": 3})
    picked = select_data(tiny_config(data, tmp_path / "runs", train_split="val", val_fraction=0.3))
    assert picked.held_out and "val is the split it trains on" in picked.val_note
    assert "no valid/val split" not in picked.val_note


def test_the_test_split_is_never_trained_on(tmp_path):
    """--train-split test trained on the split the run's figures are measured on, without a word
    (poi clean of a test audit even suggested it)."""
    data = make_prepared(tmp_path / "data", splits={"train": 2, "test": 1})
    with pytest.raises(ValueError, match="--train-split test: models are never trained on the test split"):
        tiny_config(data, tmp_path / "runs", train_split="test").validate()


def test_the_realised_noise_is_that_of_the_images_trained_on(tmp_path):
    """On a store without valid/val the realised noise counted the held-out images too (RAF-DB:
    19.05 % said, 18.73 % over the images trained on)."""
    data = make_prepared(tmp_path / "data", splits={"train": 6, "test": 1})
    picked = select_data(tiny_config(data, tmp_path / "runs", noise=0.3, val_fraction=0.3))
    assert picked.held_out and picked.noise_realised == pytest.approx(float((picked.labels != picked.clean_labels).mean()))
    everything = select_data(tiny_config(data, tmp_path / "runs", noise=0.3, val_fraction=0.0))
    assert picked.noise_realised != pytest.approx(everything.noise_realised)  # the held-out images differ
