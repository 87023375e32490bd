"""The backends of `poi predict` (poi_cli/backends.py): ONNX Runtime on the bundled .onnx,
ONNX Runtime on a .pt exported in memory, and PyTorch on the bundled .pt give the same
records on real faces (skimage's astronaut) with the bundled model, which has the PIN and
AU nets, and with a baseline model; without onnxruntime, a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skimage_data
from typer.testing import CliRunner

from conftest import hide_module, tiny_model, write_checkpoint
from poi_cli.backends import open_runner
from poi_cli.cli import app
from poi_cli.deploy.predict import Predictor, bundled_model

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


@pytest.mark.parametrize("onnx_model", ["bundled .onnx", ".pt exported in memory"])
def test_onnx_runtime_agrees_with_torch_on_real_faces(photos, onnx_model):
    checkpoint = bundled_model(".pt")
    torch_predictor = Predictor(open_runner(None, backend="torch"))
    assert torch_predictor.backend == "torch" and torch_predictor.model_path == checkpoint
    torch_records = torch_predictor.predict_records(photos, show_au=True)
    onnx_runner = open_runner(None) if onnx_model == "bundled .onnx" else open_runner(checkpoint, backend="onnx")
    onnx_predictor = Predictor(onnx_runner)
    assert onnx_predictor.backend == "onnx" and onnx_predictor.has_aus
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
    checkpoint = write_checkpoint(tmp_path / "baseline.pt", tiny_model(use_pin=False))
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
    assert "onnxruntime" in result.stderr and "pip install poi-fer" in result.stderr
    hide_module(monkeypatch, "onnxruntime", broken=True)  # installed, but its import fails: not "not installed"
    result = runner.invoke(app, ["predict", str(photos[0]), "--backend", "onnx"])
    assert result.exit_code == 1 and "onnxruntime is installed but cannot be imported (no onnxruntime)" in result.stderr
    result = runner.invoke(app, ["predict", str(photos[0]), "--backend", "tensorflow"])
    assert result.exit_code == 1 and "--backend must be one of auto, onnx, torch" in result.stderr
