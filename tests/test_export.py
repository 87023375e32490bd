"""`poi export`: the written model agrees with PyTorch (TorchScript always; ONNX when
onnxruntime is installed, the `export` extra)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import hide_module, tiny_model, write_checkpoint
from poi_cli.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from poi_cli.model.checkpoint import CheckpointInfo, load_checkpoint, read_checkpoint_info, save_checkpoint
from poi_cli.cli import app
from poi_cli.model.export import ExportError, export_model
from poi_cli.core.manifests import class_names
from poi_cli.model.network import REGION_NAMES, ModelConfig, POIModel

runner = CliRunner()
# torch.jit is deprecated in favour of torch.export; loading the TorchScript file is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")


def make_checkpoint(path: Path, num_classes: int = 7, use_pin: bool = True, seed: int = 0) -> Path:
    """A randomly initialised 64 px POI (or baseline) checkpoint in the training format (conftest's)."""
    return write_checkpoint(path, tiny_model(num_classes, use_pin, seed))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("export") / "best.pt")


def test_torchscript_trn_and_full_match_pytorch(checkpoint):
    trn = export_model(checkpoint, "torchscript")
    assert trn.path == checkpoint.with_name("best.trn.torchscript.pt") and trn.path.is_file()
    assert trn.output_names == ["logits"] and trn.passed and trn.max_diff < 1e-4
    loaded = torch.jit.load(str(trn.path))
    assert loaded(torch.randn(5, 3, 64, 64)).shape == (5, 7)  # any batch size

    full = export_model(checkpoint, "torchscript", full=True, out=checkpoint.parent / "full.pt")
    assert full.output_names == ["probabilities", "confidence", "consistency", "aus", "region_probabilities",
                                 "pin_probabilities"] and full.passed
    extra = {"poi.json": ""}
    probabilities, confidence, consistency, aus, regions, pin = torch.jit.load(str(full.path), _extra_files=extra)(
        torch.randn(4, 3, 64, 64))
    meta = json.loads(extra["poi.json"])
    assert meta["classes"] == list(class_names(7))
    # The checkpoint's Preprocessing and the regions table, as metadata.
    assert (meta["face_size"], meta["input_size"], meta["grayscale"]) == (64, 64, False)
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    assert meta["regions"] == list(REGION_NAMES) and meta["au_sides"] == ["image-left", "image-right"]
    assert torch.allclose(probabilities.sum(1), torch.ones(4), atol=1e-5)
    assert torch.allclose(confidence, probabilities.amax(1)) and meta["calibration_temperature"] == 1.0
    assert ((consistency >= -1e-6) & (consistency <= 1 + 1e-6)).all()
    assert aus.shape == (4, 2, 13) and regions.shape == (4, 4, 7)
    assert pin.shape == (4, 7) and torch.allclose(pin.sum(1), torch.ones(4), atol=1e-5)
    assert meta["recipe"] == {"fusion": "trn", "flip": False}  # an uncalibrated checkpoint: the TRN alone


def test_onnx_parity_via_cli(checkpoint):
    pytest.importorskip("onnxruntime", reason="onnx export is the optional 'export' extra")
    out = checkpoint.parent / "model.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "onnx", "--full", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.is_file() and "largest difference from PyTorch" in result.stdout
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["input_size"] == 64 and meta["aus"][0] == "AU01" and len(meta["aus"]) == 13
    trn = export_model(checkpoint, "onnx")
    assert trn.passed and trn.max_diff < 1e-4


def test_onnx_metadata_names_the_training_folder_without_its_path(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnx export is the optional 'export' extra")
    import onnx

    from poi_cli.deploy.predict import Predictor
    from poi_cli.deploy.serve import model_card

    trained = write_checkpoint(tmp_path / "best.pt", tiny_model(), config={"data": "/home/me/prepared/ferplus64"})
    assert read_checkpoint_info(trained).training_data == "ferplus64"
    out = export_model(trained, "onnx", full=True, out=tmp_path / "model.onnx").path
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["dataset"] == "ferplus64"
    assert model_card(Predictor(out, threads=1))["card"]["dataset"] == "ferplus64"  # GET /model
    (tmp_path / "untold").mkdir()
    untold = export_model(make_checkpoint(tmp_path / "untold" / "best.pt"), "onnx", full=True)
    assert {p.key: json.loads(p.value) for p in onnx.load(str(untold.path)).metadata_props}["dataset"] is None


def test_weights_pack_to_fp16_and_stay_a_poi_checkpoint(checkpoint, tmp_path):
    source_bytes = checkpoint.read_bytes()
    packed = export_model(checkpoint, "weights")
    assert packed.path == checkpoint.with_name("best.fp16.pt") and packed.passed and packed.full
    assert checkpoint.read_bytes() == source_bytes  # the source checkpoint is untouched
    assert packed.path.stat().st_size < 0.6 * len(source_bytes)
    loaded = torch.load(packed.path, weights_only=True)
    weights = loaded["model"]
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    assert any(name.startswith("pin.") for name in weights) and "optimizer" not in loaded
    assert loaded["classes"] == list(class_names(7)) and loaded["packed"]["source"] == "best.pt"

    # The packed file predicts like the source model (cast back to float32 on load).
    from poi_cli.model.checkpoint import load_model

    original, _ = load_model(checkpoint)
    reloaded, _ = load_model(packed.path)
    assert next(reloaded.parameters()).dtype == torch.float32
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(original(x).trn_probs, reloaded(x).trn_probs, atol=1e-2)

    baseline = export_model(make_checkpoint(tmp_path / "baseline.pt", use_pin=False), "weights")
    assert not baseline.full and baseline.output_names == ["logits"] and baseline.passed


def test_packing_keeps_preprocessing_and_gives_an_old_checkpoint_its_derived_one(checkpoint, tmp_path):
    packed = export_model(checkpoint, "weights", out=tmp_path / "new.fp16.pt")
    assert CheckpointInfo.of(load_checkpoint(packed.path)).preprocessing == Preprocessing(face_size=64, input_size=64)
    # A training checkpoint from before the `preprocessing` key: grey 96 px store, 64 px model.
    config = ModelConfig(input_size=64, num_classes=7)
    old = tmp_path / "old.pt"
    save_checkpoint(old, {"epoch": 3, "model": POIModel(config).state_dict(), "model_config": config.to_dict(),
                          "classes": list(class_names(7)), "optimizer": {}, "history": [{"epoch": 1}],
                          "resolved": {"store_size": 96, "grayscale": True}})
    packed = export_model(old, "weights")
    loaded = load_checkpoint(packed.path)
    assert loaded["preprocessing"] == Preprocessing(face_size=96, input_size=64, grayscale=True).to_dict()
    assert "optimizer" not in loaded and "history" not in loaded and loaded["epoch"] == 3
    assert loaded["packed"] == {"dtype": "float16", "source": "old.pt"}


def test_export_errors_are_one_line(checkpoint, tmp_path, monkeypatch):
    baseline = make_checkpoint(tmp_path / "baseline.pt", use_pin=False)
    result = runner.invoke(app, ["export", str(baseline), "--full", "--format", "torchscript"])
    assert result.exit_code == 1 and "no PIN" in result.stderr and result.stderr.count("\n") == 1
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "tflite"])
    assert result.exit_code == 1 and "onnx, torchscript, weights" in result.stderr
    result = runner.invoke(app, ["export", str(tmp_path / "missing.pt")])
    assert result.exit_code == 1 and "missing.pt" in result.stderr

    hide_module(monkeypatch, "onnxruntime")
    with pytest.raises(ExportError, match=r"pip install 'poi-fer\[train\]'"):
        export_model(checkpoint, "onnx")


@pytest.mark.parametrize("option", [["--tolerance", "-1"], ["--tolerance", "nan"], ["--tolerance", "inf"],
                                    ["--opset", "MAX+1"]])
def test_a_bad_tolerance_or_opset_is_refused_before_anything_is_written(option, checkpoint, tmp_path):
    """--tolerance -1 / nan used to export, write the file, then fail its own check; an opset above
    the exporter's highest printed the whole graph before torch's RuntimeError."""
    pytest.importorskip("onnxruntime", reason="onnx export is the optional 'export' extra")
    if option[1] == "MAX+1":
        from torch.onnx._constants import ONNX_MAX_OPSET  # 23 in torch 2.15

        option = ["--opset", str(ONNX_MAX_OPSET + 1)]
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "onnx", *option, "--out", str(out)])
    assert result.exit_code == 1 and f"{option[0]} must be" in result.stderr, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_packing_a_calibrated_checkpoint_keeps_t_cal_and_passes_its_check(checkpoint, tmp_path):
    from poi_cli.model.calibration import Calibration
    from poi_cli.model.checkpoint import save_checkpoint

    calibrated = load_checkpoint(checkpoint)
    calibrated["calibration"] = Calibration(temperature=20.0, split="valid", n_images=7, nll_before=2.0, nll_after=1.9).to_dict()
    source = tmp_path / "calibrated.pt"
    save_checkpoint(source, calibrated)
    packed = export_model(source, "weights")
    assert packed.passed, packed.per_output_diff
    assert CheckpointInfo.of(load_checkpoint(packed.path)).calibration_temperature == 20.0


def test_an_undertrained_models_huge_logits_are_compared_relative_to_their_size(tmp_path):
    """A model trained one epoch on a few faces answers random input with logits near 1e11, where
    float32 alone makes ONNX and PyTorch differ by 1e4: `poi export --format onnx` (the TRN's logits)
    refused such models ("differs from PyTorch by 9.83e+04"); probabilities stay absolute."""
    pytest.importorskip("onnxruntime")
    model = tiny_model(7, True, 0)
    with torch.no_grad():
        model.trn.fc.weight.mul_(1e10)
    path = write_checkpoint(tmp_path / "best.pt", model)
    result = export_model(path, "onnx")
    assert result.passed and result.max_diff < 1e-3, result.per_output_diff


def test_an_fp16_export_that_fails_its_check_says_why_and_what_to_do_and_writes_nothing(checkpoint, tmp_path):
    """A model that failed its check was left at --out, where poi predict would take it, over the
    earlier export of the same name."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert export_model(checkpoint, "onnx", full=True, out=out).passed
    earlier = out.read_bytes()
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "onnx", "--full", "--fp16-weights",
                                 "--tolerance", "1e-12", "--out", str(out), "--threads", "1"])
    assert result.exit_code == 1 and "--fp16-weights rounds float32 weights" in result.stderr, result.output
    assert "was not written" in result.stderr and out.read_bytes() == earlier
    assert f"checked (not written) {out}" in result.stdout and f"wrote {out}" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no staged file left
    failed = export_model(checkpoint, "onnx", full=True, out=tmp_path / "new.onnx", tolerance=1e-12, fp16_weights=True)
    assert not failed.passed and not failed.path.exists()
    # into folders that were not there: none is left behind (the staged file's folder was)
    failed = export_model(checkpoint, "onnx", full=True, out=tmp_path / "new" / "sub" / "m.onnx", tolerance=1e-12,
                          fp16_weights=True)
    assert not failed.passed and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_export_into_a_file_another_poi_writes_stops_in_one_line(checkpoint, tmp_path):
    # two exports into one name both reported success, the later one's file in place of the other's
    from poi_cli.core.locks import claim

    out = tmp_path / "m.pt"
    with claim(out, "--out"):
        result = runner.invoke(app, ["export", str(checkpoint), "--format", "weights", "--out", str(out),
                                     "--threads", "1"])
    assert result.exit_code == 1 and "is being written by pid" in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_export_into_a_named_pipe_is_refused_and_the_pipe_stays(checkpoint, tmp_path):
    # the checked export replaced its name: a pipe (or, for root, /dev/null itself) became a 16-MB file
    import stat

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "weights", "--out", str(pipe), "--threads", "1"])
    assert result.exit_code == 1 and f"--out {pipe} is a device or a pipe" in result.stderr, result.output
    assert stat.S_ISFIFO(pipe.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
