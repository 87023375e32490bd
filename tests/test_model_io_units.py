"""Small hand-computed checks of where models meet files and frames: model/predictions.py (the
split's derived probabilities, recipes, bf16 and the mirror), model/pretrained.py (containers,
prefixes and the one-line refusals), train/run_folder.py (the run folder's files, its repair,
the summary, --project and --resume checks, the RNG state) and deploy/video_vis.py (the
annotated video, the timeline and a full disk at the end).

Each test guards one bug a mutation audit found the rest of the suite let through. The tests
marked `deploy` import neither torch nor pandas (this file is collected in .venv-deploy too);
the others import torch inside. Everything is generated in tmp_path, models are tiny_model()s.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_model
from poi_cli.core.schema import STATUS_ERROR, STATUS_OK
from poi_cli.deploy import video_vis
from poi_cli.deploy.records import FaceRecord, Smoothed, VideoPosition
from poi_cli.deploy.video_vis import VIDEO_COMMENT, VideoVisWriter, is_poi_video

deploy = pytest.mark.deploy
THIRD = 3 ** (1 / 3) / (3 ** (1 / 3) + 1)  # softmax(log(3) / 3, 0)[0]: a 3:1 region read at T = 3


# ----------------------------------------------------------------------- model/predictions.py


def _split(**fields):
    """SplitPredictions of one image of two classes; fields: the outputs it kept."""
    from poi_cli.model.predictions import SplitPredictions

    values = {"trn_logits": np.zeros((1, 2), np.float32), "labels": np.zeros(1, np.int64), **fields}
    return SplitPredictions(**{k: np.asarray(v, np.float32) if k not in ("labels", "temperature") else v
                               for k, v in values.items()})


# region 0 says 3:1 for class 0, the other three 1:3; the gate looks at region 0 alone
ONE_REGION = dict(region_logits=np.log([[[3, 1], [1, 3], [1, 3], [1, 3]]]), gate_weights=[[1.0, 0.0, 0.0, 0.0]])


def test_intermediate_probs_are_read_at_the_temperature_asked_for():
    # guards: intermediate_probs(T) computing at the model's T whatever T is asked for
    predictions = _split(**ONE_REGION)
    np.testing.assert_allclose(predictions.intermediate_probs(1.0), [[0.75, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(predictions.intermediate_probs(), [[THIRD, 1 - THIRD]], rtol=1e-6)


def test_the_default_temperature_is_the_models_own_not_3():
    # guards: _t falling back to a hard-wired T = 3 instead of the model's temperature
    predictions = _split(**ONE_REGION, temperature=2.0)
    half = math.sqrt(3) / (math.sqrt(3) + 1)  # softmax(log(3) / 2, 0)[0]
    np.testing.assert_allclose(predictions.region_probs()[0, 0], [half, 1 - half], rtol=1e-6)
    np.testing.assert_allclose(predictions.intermediate_probs(), [[half, 1 - half]], rtol=1e-6)


def test_regions_without_a_gate_give_no_intermediate_or_objective_probabilities():
    # guards: `region_logits is None and gate_weights is None` (a model without OIM: intermediate_log_probs(None))
    predictions = _split(region_logits=ONE_REGION["region_logits"])
    assert predictions.intermediate_probs() is None and predictions.objective_probs() is None
    np.testing.assert_allclose(predictions.region_average(1.0), [[0.375, 0.625]], rtol=1e-6)  # (3/4 + 3 x 1/4) / 4


def test_the_accuracy_of_no_image_is_none_not_zero():
    # guards: an empty share reported as accuracy 0.0
    from poi_cli.model.predictions import SplitPredictions

    assert SplitPredictions(trn_logits=np.zeros((0, 0), np.float32), labels=np.zeros(0, np.int64)).accuracy is None


# the image reads 1:1 (TRN and every region), its mirror 1:3 (TRN and every region), the gates are even
MIRRORED = dict(trn_logits=[[0.0, 0.0]], mirror_trn_logits=[[0.0, math.log(3)]],
                region_logits=np.zeros((1, 4, 2)), gate_weights=[[0.25] * 4],
                mirror_region_logits=np.log([[[1, 3]] * 4]), mirror_gate_weights=[[0.25] * 4])


def test_a_recipes_flip_averages_the_image_and_its_mirror_and_no_flip_reads_the_image_alone():
    # guards: the recipe's flip ignored or inverted (_views(False), `if not flip`)
    from poi_cli.core.outputs import PredictionRecipe

    predictions = _split(**MIRRORED)
    flipped = np.exp(predictions.recipe_log_probs(PredictionRecipe("trn", True)))
    np.testing.assert_allclose(flipped, [[0.375, 0.625]], rtol=1e-6)  # (1/2 + 1/4) / 2, (1/2 + 3/4) / 2
    np.testing.assert_allclose(np.exp(predictions.recipe_log_probs(PredictionRecipe("trn", False))), [[0.5, 0.5]],
                               rtol=1e-6)


def test_the_mirrors_pin_view_is_the_mirrors_own_regions_and_gate():
    # guards: the mirror's view built from the image's region logits and gate weights
    from poi_cli.core.outputs import PredictionRecipe

    predictions = _split(**MIRRORED)
    fused = np.exp(predictions.recipe_log_probs(PredictionRecipe("trn+pin", True)))
    # mean of q = (1/2, 1/2), q' = (1/4, 3/4), p~* = (1/2, 1/2), p~*' = (1/4, 3/4)
    np.testing.assert_allclose(fused, [[0.375, 0.625]], rtol=1e-6)


def test_objective_probs_are_probabilities_of_the_image_not_log_probabilities():
    # guards: objective_probs returning log p~* (no exp)
    predictions = _split(**{**MIRRORED, "region_logits": np.log([[[3, 1]] * 4])})
    np.testing.assert_allclose(predictions.objective_probs(), [[0.75, 0.25]], rtol=1e-6)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Three 64 px noise faces: their mirrors differ from them."""
    return np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def _direct(model, faces: np.ndarray, mirror: bool = False, bf16: bool = False):
    import torch

    from poi_cli.data.preprocess import to_model_input
    from poi_cli.model.reporting import mirrored

    inputs = to_model_input(torch.from_numpy(faces), 64)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        return model.eval()(mirrored(inputs) if mirror else inputs)


def test_predict_split_keeps_an_eval_model_in_eval_mode_and_the_models_temperature(faces):
    # guards: model.train() afterwards whatever the mode was; the split's temperature a fixed 3.0
    import torch

    from poi_cli.model.predictions import predict_split

    model = tiny_model(temperature=2.0).eval()
    predictions = predict_split(model, faces, np.arange(3), np.zeros(3, np.int64), 64, 3, torch.device("cpu"))
    assert not model.training
    assert predictions.temperature == 2.0


def test_mirror_true_keeps_the_mirrored_images_trn_logits_and_gate(faces):
    # guards: the mirror pass run on the unmirrored images; the mirror's gate weights not kept
    import torch

    from poi_cli.model.predictions import predict_split

    model = tiny_model()
    predictions = predict_split(model, faces, np.arange(3), np.zeros(3, np.int64), 64, 2, torch.device("cpu"),
                                mirror=True)
    flipped = _direct(model, faces, mirror=True)
    np.testing.assert_allclose(predictions.mirror_trn_logits, flipped.trn_logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predictions.mirror_gate_weights, flipped.gate_weights.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(predictions.mirror_trn_logits - predictions.trn_logits).max() > 1e-3  # the mirror's own


def test_no_image_to_predict_gives_empty_int64_positions(faces):
    # guards: no image (an empty selection: the loader yields no batch) returning positions None; the same
    # for a share that is empty (more processes than images: one batch of no image)
    import torch

    from poi_cli.model.predictions import predict_split

    for rows, rank in ((np.zeros(0, np.int64), 0), (np.arange(1), 1)):
        empty = predict_split(tiny_model(), faces, rows, np.zeros(len(rows), np.int64), 64, 1, torch.device("cpu"),
                              rank=rank, world_size=2 if rank else 1)
        assert empty.positions is not None and empty.positions.dtype == np.int64 and empty.positions.shape == (0,)
        assert empty.labels.dtype == np.int64 and len(empty) == 0 and empty.accuracy is None


def test_predict_checkpoint_split_runs_bf16_when_asked_and_keeps_the_mirror(faces, tiny_checkpoint):
    # guards: the amp argument ignored ("auto": float32 on a CPU without bf16), bf16 not applied to the main
    # pass or not recorded; mirror=True dropped on the way to predict_split
    from poi_cli.model.checkpoint import load_checkpoint, load_model
    from poi_cli.model.predictions import predict_checkpoint_split

    checkpoint = load_checkpoint(tiny_checkpoint)
    bf16 = predict_checkpoint_split(checkpoint, faces, np.arange(3), np.zeros(3, np.int64), "cpu", 3, "bf16",
                                    mirror=True)
    model, _ = load_model(tiny_checkpoint)
    assert bf16.bf16 and bf16.mirror_trn_logits is not None
    np.testing.assert_allclose(bf16.trn_logits, _direct(model, faces, bf16=True).trn_logits.float().numpy(), atol=1e-6)
    assert np.abs(bf16.trn_logits - _direct(model, faces).trn_logits.numpy()).max() > 1e-4  # not float32's
    off = predict_checkpoint_split(checkpoint, faces, np.arange(3), np.zeros(3, np.int64), "cpu", 3, "off")
    assert not off.bf16 and off.mirror_trn_logits is None


# ----------------------------------------------------------------------- model/pretrained.py


def _backbone_weights(model) -> dict:
    """The model's backbone as a torchvision ResNet state dict (conv1.weight, layer1.0...)."""
    return {f"{prefix}.{k}": v.clone() for prefix, module in model.backbone_modules().items()
            for k, v in module.state_dict().items()}


def test_nested_containers_are_unwrapped_beside_non_dict_entries(tmp_path):
    # guards: one container level unwrapped (`if` for `while`); the "model" container key forgotten; a dict with
    # one tensor beside the container (a step counter) taken for a state dict (`any` for `all`)
    import torch

    from poi_cli.model.pretrained import load_backbone

    source, target = tiny_model(seed=1), tiny_model(seed=0)
    path = tmp_path / "nested.pth"
    torch.save({"model": {"state_dict": _backbone_weights(source)}, "step": torch.tensor(5)}, path)
    load_backbone(target, path)
    assert torch.equal(target.trunk.conv1.weight, source.trunk.conv1.weight)


def test_every_wrapper_prefix_of_a_key_is_stripped(tmp_path):
    # guards: only the first prefix stripped (module.backbone.conv1.weight read as backbone.conv1.weight)
    import torch

    from poi_cli.model.pretrained import load_backbone

    source, target = tiny_model(seed=1), tiny_model(seed=0)
    path = tmp_path / "wrapped.pth"
    torch.save({f"module.backbone.{k}": v for k, v in _backbone_weights(source).items()}, path)
    load_backbone(target, path)
    assert torch.equal(target.trn.layer4[0].conv1.weight, source.trn.layer4[0].conv1.weight)


def test_a_state_dict_without_num_batches_tracked_loads(tmp_path):
    # guards: num_batches_tracked required (older torchvision files have none)
    import torch

    from poi_cli.model.pretrained import load_backbone

    source, target = tiny_model(seed=1), tiny_model(seed=0)
    with torch.no_grad():
        source.trunk.bn1.running_mean.uniform_(-1, 1)
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in _backbone_weights(source).items() if not k.endswith("num_batches_tracked")}, path)
    load_backbone(target, path)
    assert torch.equal(target.trunk.bn1.running_mean, source.trunk.bn1.running_mean)


@pytest.mark.parametrize("content, message", [
    ({}, "holds no state dict"),  # an empty dict is no state dict
    ([1, 2], "holds a list, not a state dict"),
])
def test_a_file_without_a_state_dict_is_one_line(tmp_path, content, message):
    # guards: an empty dict taken for a state dict (then "N missing"); a list passed on (an AttributeError)
    import torch

    from poi_cli.model.pretrained import PretrainedError, load_backbone

    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(PretrainedError, match=message):
        load_backbone(tiny_model(), path)


def test_a_container_that_holds_itself_is_one_line_not_a_hang(tmp_path):
    # guards the unwrapping loop: {"state_dict": <itself>} (pickle keeps the reference) was unwrapped forever
    import torch

    from poi_cli.model.pretrained import PretrainedError, read_state_dict

    looped: dict = {"step": 3}
    looped["state_dict"] = looped
    path = tmp_path / "loop.pth"
    torch.save(looped, path)
    # in a thread: the bug this guards against never returns (a daemon thread spinning is a failure, not a hung suite)
    outcome: list = []
    reader = threading.Thread(target=lambda: outcome.append(_raised(read_state_dict, path)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert outcome, "read_state_dict did not return in 30 s"
    assert isinstance(outcome[0], PretrainedError) and "holds no state dict (its containers hold each other)" in str(
        outcome[0])


def _raised(function, *args):
    """The exception function(*args) raised, or None."""
    try:
        function(*args)
    except Exception as error:
        return error
    return None


def test_a_wrong_shape_alone_is_refused_in_one_line(tmp_path):
    # guards: mis-shaped keys not checked when none is missing or unexpected (load_state_dict's RuntimeError)
    import torch

    from poi_cli.model.pretrained import PretrainedError, load_backbone

    weights = _backbone_weights(tiny_model())
    weights["conv1.weight"] = torch.zeros(64, 3, 3, 3)  # ResNet's stem is 7x7
    path = tmp_path / "small_stem.pth"
    torch.save(weights, path)
    with pytest.raises(PretrainedError) as error:
        load_backbone(tiny_model(), path)
    assert str(error.value) == f"{path} does not fit a resnet10 backbone: 1 wrong shape (conv1.weight)"


def test_the_refusal_names_four_keys_of_each_kind_and_counts_the_rest(tmp_path):
    # guards: "and 0 more" after exactly four keys; missing and unexpected keys named under each other's label
    import torch

    from poi_cli.model.pretrained import PretrainedError, load_backbone

    weights = _backbone_weights(tiny_model())
    for key in ("bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.weight"):
        del weights[key]
    weights["layer1.9.weight"] = torch.zeros(1)
    path = tmp_path / "four_missing.pth"
    torch.save(weights, path)
    with pytest.raises(PretrainedError) as error:
        load_backbone(tiny_model(), path)
    assert str(error.value).endswith("backbone: 4 missing (bn1.bias, bn1.running_mean, bn1.running_var, bn1.weight); "
                                     "1 unexpected (layer1.9.weight)")
    del weights["conv1.weight"]
    torch.save(weights, path)
    with pytest.raises(PretrainedError, match=r": 5 missing \(bn1.bias, bn1.running_mean, bn1.running_var, "
                                              r"bn1.weight and 1 more\); 1 unexpected"):
        load_backbone(tiny_model(), path)


# ----------------------------------------------------------------------- train/run_folder.py


@pytest.fixture
def fake_checkpoints(monkeypatch):
    """run_folder's save_checkpoint and load_checkpoint as JSON files: what the folder logic writes when."""
    from poi_cli.train import run_folder

    monkeypatch.setattr(run_folder, "save_checkpoint", lambda path, payload: Path(path).write_text(json.dumps(payload)))
    monkeypatch.setattr(run_folder, "load_checkpoint", lambda path: json.loads(Path(path).read_text()))
    return run_folder


def _rows(epochs) -> list[dict]:
    return [{"epoch": e, "val_acc": e / 10} for e in epochs]


def _results_epochs(run: Path) -> list[str]:
    return [line.split(",")[0] for line in (run / "results.csv").read_text().splitlines()[1:]]


def test_result_columns_add_the_members_validation_columns_sorted():
    # guards: the per-member val_acc_* columns left out of results.csv
    from poi_cli.train.run_folder import RESULT_COLUMNS, result_columns

    history = [{"epoch": 1, "val_acc_ferplus": 0.5, "lr": 0.1}, {"epoch": 2, "val_acc_affectnet": 0.4}]
    assert result_columns(history) == RESULT_COLUMNS + ["val_acc_affectnet", "val_acc_ferplus"]


def test_a_resumed_run_folder_writes_only_on_rank_0(tmp_path):
    # guards: every process of a resumed torchrun writing (RunFolder.create's resume path ignoring the rank)
    import torch

    from poi_cli.core.runtime import DistContext
    from poi_cli.train.config import TrainConfig
    from poi_cli.train.run_folder import RunFolder

    config = TrainConfig(resume=str(tmp_path))
    ranks = [RunFolder.create(config, DistContext(rank, 2, rank, torch.device("cpu"), False)) for rank in (0, 1)]
    assert [folder.writer for folder in ranks] == [True, False] and ranks[1].path == tmp_path


def test_a_resume_keeps_the_config_json_it_finds(tmp_path):
    # guards: config.json rewritten by a resume (the run's own settings replaced)
    from poi_cli.train.config import TrainConfig
    from poi_cli.train.run_folder import RunFolder

    (tmp_path / "config.json").write_text('{"the": "run\'s own"}\n')
    RunFolder(tmp_path, writer=True).write_config(TrainConfig(resume=str(tmp_path)), {"threads": 2})
    assert (tmp_path / "config.json").read_text() == '{"the": "run\'s own"}\n'
    RunFolder(tmp_path, writer=True).write_config(TrainConfig(data="d"), {"threads": 2})
    assert json.loads((tmp_path / "config.json").read_text())["resolved"] == {"threads": 2}


def test_save_epoch_writes_best_pt_only_for_an_improved_epoch(tmp_path, fake_checkpoints):
    # guards: best.pt overwritten by every epoch
    folder = fake_checkpoints.RunFolder(tmp_path, writer=True)
    folder.save_epoch({"epoch": 1, "history": _rows([1])}, improved=True)
    folder.save_epoch({"epoch": 2, "history": _rows([1, 2])}, improved=False)
    assert json.loads((tmp_path / "best.pt").read_text())["epoch"] == 1
    assert json.loads((tmp_path / "last.pt").read_text())["epoch"] == 2 and _results_epochs(tmp_path) == ["1", "2"]


def test_repair_rewrites_results_and_a_stale_best_pt_but_keeps_an_older_best(tmp_path, fake_checkpoints):
    # guards: the best-epoch test inverted; best.pt of an earlier epoch kept when last.pt is the best; results.csv
    # not rewritten
    folder = fake_checkpoints.RunFolder(tmp_path, writer=True)
    (tmp_path / "best.pt").write_text(json.dumps({"epoch": 2}))
    folder.repair({"epoch": 3, "best_epoch": 3}, _rows([1, 2, 3]))  # killed before best.pt was written
    assert json.loads((tmp_path / "best.pt").read_text())["epoch"] == 3 and _results_epochs(tmp_path) == ["1", "2", "3"]
    (tmp_path / "best.pt").write_text(json.dumps({"epoch": 2}))
    folder.repair({"epoch": 4, "best_epoch": 2}, _rows([1, 2, 3, 4]))  # epoch 2 is still the best
    assert json.loads((tmp_path / "best.pt").read_text()) == {"epoch": 2}


def test_repair_finished_writes_the_rows_up_to_the_checkpoints_epoch(tmp_path, fake_checkpoints):
    # guards: history rows past last.pt's epoch written into results.csv
    fake_checkpoints.repair_finished(tmp_path, {"epoch": 2, "history": _rows([1, 2, 3])})
    assert _results_epochs(tmp_path) == ["1", "2"]


@pytest.mark.parametrize("results, expected", [
    ("epoch,val_acc,epoch_time_s\n", None),  # a header only: no epoch finished
    ("epoch,val_acc,epoch_time_s\n1,0.5,60\n2,0.6,\n", (2, 1.0, 0.6, 2, 0.6)),  # a blank time counts 0
    ("epoch,val_acc,epoch_time_s\n1,0.5,30\n2,nan,30\n3,inf,30\n", (3, 1.5, 0.5, 1, None)),  # not finite: no accuracy
])
def test_run_summary_by_hand(tmp_path, results, expected):
    # guards: a header-only results.csv summed up (rows[-1] IndexError); a blank epoch_time_s (None + float);
    # nan and inf taken as accuracies
    from poi_cli.train.run_folder import run_summary

    (tmp_path / "results.csv").write_text(results)
    summary = run_summary(tmp_path)
    if expected is None:
        assert summary is None
    else:
        assert (summary.epochs, summary.minutes, summary.best_val_acc, summary.best_epoch, summary.last_val_acc) == \
            pytest.approx(expected)


def test_check_project_refuses_the_prepared_folder_itself_and_a_run_folder_with_best_pt_only(tmp_path):
    # guards: only the project's parents looked at for prepared.json; a run folder known by last.pt alone;
    # config.json alone (no checkpoint) taken for a run folder
    from poi_cli.train.config import TrainError
    from poi_cli.train.run_folder import check_project

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared.json").write_text("{}")
    with pytest.raises(TrainError, match="lies inside the prepared folder"):
        check_project(tmp_path / "data")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    check_project(tmp_path / "run")  # settings alone: a folder of the user's
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    with pytest.raises(TrainError, match="is a run folder"):
        check_project(tmp_path / "run")


def _run_config(run: Path, **values) -> None:
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text(json.dumps({"data": "d", "epochs": 3, **values}))


def test_resume_of_a_cross_validation_folder_is_refused(tmp_path):
    # guards: a --fold all folder resumed as one run
    from poi_cli.data.folds import CV_CONFIG
    from poi_cli.train.config import TrainConfig, TrainError
    from poi_cli.train.run_folder import resume_config

    _run_config(tmp_path / "cv")
    (tmp_path / "cv" / CV_CONFIG).write_text("{}")
    with pytest.raises(TrainError, match="cross-validation"):
        resume_config(TrainConfig(resume=str(tmp_path / "cv")))


def test_resume_without_last_pt_refuses_a_best_pt_alone(tmp_path):
    # guards: best.pt (without results.csv) not counted as a finished epoch: the restart writes over it
    from poi_cli.train.config import TrainConfig, TrainError
    from poi_cli.train.run_folder import resume_config

    _run_config(tmp_path / "run")
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    with pytest.raises(TrainError, match="has best.pt but no last.pt"):
        resume_config(TrainConfig(resume=str(tmp_path / "run")))


def test_resume_takes_the_new_device_and_refuses_a_run_at_its_last_epoch(tmp_path, fake_checkpoints):
    # guards: the saved --device kept on resume; `epoch > epochs` resuming a finished run for one more epoch
    from poi_cli.train.config import TrainConfig, TrainError

    run = tmp_path / "run"
    run.mkdir()
    saved = TrainConfig(data="d", epochs=3, device="cpu").to_dict()
    (run / "last.pt").write_text(json.dumps({"config": saved, "epoch": 2, "history": _rows([1, 2])}))
    config, checkpoint = fake_checkpoints.resume_config(TrainConfig(resume=str(run), device="cuda"))
    assert (config.device, config.resume, config.epochs, checkpoint["epoch"]) == ("cuda", str(run), 3, 2)
    (run / "last.pt").write_text(json.dumps({"config": saved, "epoch": 3, "history": _rows([1, 2, 3])}))
    with pytest.raises(TrainError, match="already finished its 3 epochs"):
        fake_checkpoints.resume_config(TrainConfig(resume=str(run)))


def test_a_config_json_whose_epochs_is_true_is_no_runs_settings(tmp_path):
    # guards: isinstance(True, int): a boolean read as 1 epoch
    from poi_cli.train.config import TrainError
    from poi_cli.train.run_folder import read_run_config

    _run_config(tmp_path, epochs=True)
    with pytest.raises(TrainError, match="is not a run's settings"):
        read_run_config(tmp_path)


def test_set_rng_state_restores_the_torch_generator_and_an_empty_state_is_nothing():
    # guards: the saved state not restored; an empty state ({}: a checkpoint without rng) a KeyError
    import torch

    from poi_cli.train.run_folder import rng_state, set_rng_state

    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    before = torch.get_rng_state()
    set_rng_state({})
    set_rng_state(None)
    assert torch.equal(torch.get_rng_state(), before)


# ----------------------------------------------------------------------- deploy/video_vis.py


CLASSES = {"happy": 0.8, "sad": 0.2}


def _face(frame: int, timestamp: float, track: int, smoothed: dict | None = None) -> FaceRecord:
    return FaceRecord(image="clip.mp4", status=STATUS_OK, face=0, box=[10.0, 10.0, 60.0, 60.0], expression="happy",
                      probabilities=dict(CLASSES), confidence=0.8, video=VideoPosition(frame, timestamp, track),
                      smoothed=None if smoothed is None else Smoothed("happy", smoothed))


def _frame(records, image=None, fps=None):
    return SimpleNamespace(records=records, image=image, fps=fps)


def _writer(tmp_path: Path) -> VideoVisWriter:
    return VideoVisWriter("clip.mp4", tmp_path / "clip_poi.mp4", tmp_path / "clip_timeline.png")


@deploy
def test_the_timeline_series_holds_each_tracks_times_probabilities_and_smoothed_ones(tmp_path):
    # guards: class names taken from the values; the frame index for the time; the smoothed values dropped;
    # a no-face row entering the timeline; a frame without an image sent to the encoder
    writer = _writer(tmp_path)
    writer.write(_frame([_face(3, 0.5, 7, {"happy": 0.6, "sad": 0.4})]))
    error = FaceRecord(image="clip.mp4", status=STATUS_ERROR, reason="broken", video=VideoPosition(4, 0.6, 8))
    writer.write(_frame([error]))
    assert writer.classes == ["happy", "sad"] and writer.series == {7: [(0.5, [0.8, 0.2], [0.6, 0.4])]}
    assert not list(tmp_path.iterdir())  # no image: nothing encoded


@deploy
def test_the_timeline_draws_the_longest_tracks_in_track_order_with_the_smoothed_line_labelled(tmp_path):
    # guards: the shortest tracks kept; panels in length order; the raw line drawn as the smoothed one
    pytest.importorskip("matplotlib")
    writer = _writer(tmp_path)
    for track in range(9):  # track t has t + 1 points: the longest eight are 1..8
        for k in range(track + 1):
            writer.write(_frame([_face(k, k / 10, track, {"happy": 0.6, "sad": 0.4})]))
    figure = writer.timeline()
    axes = figure.axes
    assert [axis.get_ylabel() for axis in axes] == [f"track {t}" for t in range(1, 9)]
    happy_raw, happy_smoothed = axes[0].get_lines()[:2]  # track 1: two points
    assert list(happy_raw.get_ydata()) == [0.8, 0.8] and list(happy_smoothed.get_ydata()) == [0.6, 0.6]
    assert list(happy_smoothed.get_xdata()) == [0.0, 0.1] and happy_smoothed.get_label() == "happy"
    import matplotlib.pyplot as plt

    plt.close(figure)


@deploy
def test_closing_a_writer_that_saw_no_track_writes_nothing(tmp_path):
    # guards: a timeline drawn without any track (plt.subplots(0, ...) raises; without matplotlib a note)
    writer = _writer(tmp_path)
    writer.write(_frame([FaceRecord.empty("clip.mp4", "no_face", "no face detected")]))
    writer.close()
    assert not list(tmp_path.iterdir()) and writer.notes == []


@deploy
def test_the_annotated_video_is_even_sized_at_the_sampling_rate_and_says_it_is_poi(tmp_path):
    # guards: an odd frame height given to libx264; width and height swapped; the rate ignored (10 fps);
    # is_poi_video reading another tag than the comment
    av = pytest.importorskip("av")
    writer = _writer(tmp_path)
    image = Image.new("RGB", (400, 301), (90, 90, 90))  # drawn at its own size: 384 <= 400 <= 1024
    for k in range(3):
        writer.write(_frame([_face(k, k / 5, 1)], image=image, fps=5.0))
    writer.close()
    video = tmp_path / "clip_poi.mp4"
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (400, 300)
        assert stream.average_rate == 5 and container.metadata.get("comment") == VIDEO_COMMENT
    assert is_poi_video(video) and not is_poi_video(tmp_path / "clip_timeline.png")
    assert oct(os.stat(video).st_mode & 0o777) == "0o644"


@deploy
def test_a_full_disk_at_the_end_names_the_video_and_leaves_no_temp_file(tmp_path, monkeypatch):
    # guards: the error naming the temp file (raised as it is, or rebuilt with the temp's name); abandon()
    # leaving the temp video
    pytest.importorskip("av")
    writer = _writer(tmp_path)
    writer.write(_frame([_face(0, 0.0, 1)], image=Image.new("RGB", (400, 300)), fps=5.0))

    def full(source, target):
        raise OSError(28, "No space left on device", source)

    monkeypatch.setattr(video_vis, "os", SimpleNamespace(close=os.close, chmod=os.chmod, replace=full))
    with pytest.raises(OSError) as error:
        writer.close()
    assert error.value.filename == str(tmp_path / "clip_poi.mp4") and error.value.errno == 28
    assert [p.name for p in tmp_path.iterdir()] == []
