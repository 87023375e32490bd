"""The model shipped inside the package (issues 6 and 25): what `poi predict` uses after install,
run on the public-domain photo committed in examples/ (scikit-image's astronaut)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from poi_cli.cli import app
from poi_cli.core.manifests import EYE_AUS, MOUTH_AUS, class_names
from poi_cli.data.preprocess import Preprocessing
from poi_cli.model.checkpoint import read_checkpoint_info
from poi_cli.model.network import ModelConfig
from poi_cli.deploy.predict import bundled_model

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
HISTORY_V1 = ROOT / "weights" / "history" / "poi_ferplus8_resnet10_96_v1.fp16.pt"  # the first bundled model
MAX_BYTES = 25 * 10**6  # the limit, "under 25 MB"
runner = CliRunner()


@pytest.fixture(scope="module")
def bundled() -> Path:
    path = bundled_model(".pt")
    assert path is not None, "no model in poi_cli/weights/"
    return path


def test_bundled_model_is_fp16_trn_and_pin_under_25_mb(bundled):
    assert bundled.stat().st_size < MAX_BYTES
    checkpoint = torch.load(bundled, map_location="cpu", weights_only=True)
    weights = checkpoint["model"]
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    config = ModelConfig.from_dict(checkpoint["model_config"])
    assert config.use_pin and config.prior_supervision and config.use_oim and config.num_classes == 8
    assert any(name.startswith("trn.") for name in weights) and any(name.startswith("pin.eye_au_nets") for name in weights)
    assert checkpoint["classes"] == list(class_names(8))
    # v2 (issue 25) trained on FERPlus (grey) and SFEW (colour) faces: a colour model
    info = read_checkpoint_info(bundled)
    assert info.preprocessing == Preprocessing(face_size=96, input_size=96, grayscale=False)
    assert info.calibration is not None and info.calibration_temperature > 0  # T_cal fitted after its recipe


def test_the_first_bundled_model_without_a_preprocessing_key_reads_as_grey_96_px():
    """v1 (weights/history/) predates Preprocessing: it is derived from resolved and model_config."""
    assert "preprocessing" not in torch.load(HISTORY_V1, map_location="cpu", weights_only=True)
    info = read_checkpoint_info(HISTORY_V1)
    assert info.preprocessing == Preprocessing(face_size=96, input_size=96, grayscale=True)
    assert info.packed == {"dtype": "float16", "source": "best.pt"} and info.classes == class_names(8)


def test_predict_on_the_committed_photo_uses_the_bundled_model(bundled, monkeypatch):
    monkeypatch.delenv("POI_MODEL", raising=False)
    result = runner.invoke(app, ["predict", str(ASTRONAUT), "--show-au", "--json"])
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads(result.stdout)  # one face in the photo
    assert record["status"] == "ok" and record["detection_score"] > 0.99
    probabilities = record["probabilities"]
    assert list(probabilities) == list(class_names(8)) and sum(probabilities.values()) == pytest.approx(1, abs=1e-4)
    # She smiles: happiness, with the smile's AUs (AU6 cheek raiser, AU12 lip corner puller)
    # above their opposites (AU4 brow lowerer, AU15 lip corner depressor) on both sides.
    assert record["expression"] == "happiness" and probabilities["happiness"] > 0.5
    aus = record["aus"]
    assert set(aus) == {*EYE_AUS, *MOUTH_AUS}
    for smile, opposite in (("AU06", "AU04"), ("AU12", "AU15")):
        assert all(aus[smile][region] > aus[opposite][region] for region in aus[smile]), (smile, opposite)
    assert 0.25 <= record["confidence"] <= 1
