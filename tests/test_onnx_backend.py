"""`poi predict --backend onnx` (inference/onnx_backend.py): ONNX Runtime and PyTorch
give the same records on real faces (skimage's astronaut) with the bundled model, which
has the PIN and AU nets, and a baseline model; without onnxruntime, a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from skimage import data as skimage_data
from typer.testing import CliRunner

from conftest import hide_module
from poi_cli.cli import app
from poi_cli.core.manifests import class_names
from poi_cli.data.preprocess import Preprocessing
from poi_cli.inference.predict import Predictor, bundled_model
from poi_cli.model.checkpoint import build_checkpoint, save_checkpoint
from poi_cli.model.network import ModelConfig, POIModel

pytest.importorskip("onnxruntime", reason="--backend onnx needs the optional 'export' extra")

# ONNX Runtime's float32 kernels sum in another order than PyTorch's: values agree to
# about 1e-6; records round to 6 digits. This is the promise docs/predict.md states.
TOLERANCE = 1e-4
runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("onnx")
    face = Image.fromarray(skimage_data.astronaut())
    face.save(root / "astronaut.png")
    ImageOps.mirror(face).resize((300, 300)).save(root / "mirrored.jpg", quality=92)
    group = Image.new("RGB", (640, 320), (90, 90, 90))
    group.paste(face.resize((300, 300)), (0, 10))
    group.paste(face.resize((260, 260)).rotate(8), (360, 30))
    group.save(root / "group.jpg", quality=92)
    return [root / "astronaut.png", root / "mirrored.jpg", root / "group.jpg"]


def _values(record: dict) -> dict[str, list[float]]:
    aus = record["aus"]
    return {
        "probabilities": list(record["probabilities"].values()),
        "confidence": [record["confidence"]],
        "consistency": [record["consistency"]],
        "aus": [aus[au][region] for au in sorted(aus) for region in sorted(aus[au])],
        "regions": [p for region in sorted(record["regions"]) for p in record["regions"][region].values()],
    }


def test_onnx_runtime_agrees_with_torch_on_real_faces(photos):
    model = bundled_model()
    torch_records = Predictor(model).predict_records(photos, show_au=True)
    onnx_predictor = Predictor(model, backend="onnx")
    assert onnx_predictor.onnx is not None and onnx_predictor.onnx.with_aus
    onnx_records = onnx_predictor.predict_records(photos, show_au=True)
    assert [r["status"] for r in torch_records] == ["ok"] * 4  # four real faces (two in the group photo)
    assert len(onnx_records) == len(torch_records)
    for a, b in zip(torch_records, onnx_records):
        assert (a["image"], a["face"], a["box"], a["expression"]) == (b["image"], b["face"], b["box"], b["expression"])
        va, vb = _values(a), _values(b)
        for key in va:
            assert None not in va[key] and len(va[key]) == len(vb[key]), key
            assert np.allclose(va[key], vb[key], atol=TOLERANCE, rtol=0), (key, np.max(np.abs(np.subtract(va[key], vb[key]))))
        assert abs(sum(vb["probabilities"]) - 1) < 1e-4


def test_onnx_backend_of_a_baseline_model_and_the_cli(photos, tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(input_size=64, num_classes=7, use_pin=False)
    checkpoint = tmp_path / "baseline.pt"
    save_checkpoint(checkpoint, build_checkpoint(model=POIModel(config), model_config=config, classes=class_names(7),
                                                 preprocessing=Preprocessing(face_size=64, input_size=64), epoch=1))
    by_torch = runner.invoke(app, ["predict", str(photos[0]), "--model", str(checkpoint), "--json"])
    by_onnx = runner.invoke(app, ["predict", str(photos[0]), "--model", str(checkpoint), "--json", "--backend", "onnx"])
    assert by_torch.exit_code == 0 and by_onnx.exit_code == 0, by_onnx.output
    a, b = json.loads(by_torch.stdout)[0], json.loads(by_onnx.stdout)[0]
    assert b["consistency"] is None and a["expression"] == b["expression"]
    assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=TOLERANCE, rtol=0)


def test_onnx_backend_without_onnxruntime_is_a_one_line_error(photos, monkeypatch):
    hide_module(monkeypatch, "onnxruntime")
    result = runner.invoke(app, ["predict", str(photos[0]), "--backend", "onnx"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "onnxruntime" in result.stderr and "poi-fer[export]" in result.stderr
    result = runner.invoke(app, ["predict", str(photos[0]), "--backend", "tensorflow"])
    assert result.exit_code == 1 and "--backend must be one of torch, onnx" in result.stderr
