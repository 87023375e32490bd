"""What prediction reports under a PredictionRecipe (POI_SPEC 4b; model/reporting.py): the
fusion of the TRN with the PIN's p~* at T = 1, the mirror, T_cal after the fusion, and the
same numbers through the torch runner, the exported ONNX / TorchScript graph and the
split path that calibration and evaluation use."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import tiny_model, write_checkpoint
from poi_cli.core.outputs import PredictionRecipe, regions_agreeing
from poi_cli.model.calibration import Calibration
from poi_cli.model.checkpoint import CheckpointInfo, load_checkpoint
from poi_cli.model.network import POIOutput
from poi_cli.model.predictions import predict_split
from poi_cli.model.reporting import Reporting, mirrored, objective_log_probs, recipe_log_probs

FUSED_FLIPPED = PredictionRecipe("trn+pin", True)


class FixedOutputs(nn.Module):
    """Stands in for a POIModel: q = softmax(z) = [0.9, 0.1] for every image, and four regions
    that all say [0.3, 0.7] at T = 1 under an even gate, so p~* (T = 1) = [0.3, 0.7]."""

    def __init__(self) -> None:
        super().__init__()
        self.pin = SimpleNamespace(oim=True)
        self.config = SimpleNamespace(uem_temperature=1.0)

    def forward(self, images: torch.Tensor, with_pin: bool = True, pin_rows=None) -> POIOutput:
        batch = images.shape[0]
        regions = batch if pin_rows is None else pin_rows
        return POIOutput(trn_logits=torch.log(torch.tensor([0.9, 0.1])).expand(batch, 2),
                         region_logits=torch.log(torch.tensor([0.3, 0.7])).expand(regions, 4, 2),
                         gate_weights=torch.full((regions, 4), 0.25), consistency=torch.ones(regions),
                         temperature=3.0)


def test_fusion_is_the_mean_of_trn_and_pin_and_t_cal_comes_after_it():
    images = torch.zeros(1, 3, 4, 4)
    # p = (0.9 + 0.3, 0.1 + 0.7) / 2 = (0.6, 0.4); softmax(log p / 2) = (sqrt 0.6, sqrt 0.4) / (sqrt 0.6 + sqrt 0.4)
    expected = torch.tensor([math.sqrt(0.6), math.sqrt(0.4)]) / (math.sqrt(0.6) + math.sqrt(0.4))  # 0.5505, 0.4495
    out = Reporting(FixedOutputs(), PredictionRecipe("trn+pin", False), calibration_temperature=2.0)(images)
    assert torch.allclose(out.probabilities[0], expected, atol=1e-6)
    assert torch.allclose(out.log_probs[0].exp(), torch.tensor([0.6, 0.4]), atol=1e-6)
    assert torch.allclose(out.pin_probabilities[0], torch.tensor([0.3, 0.7]), atol=1e-6)
    # Not a product (0.27, 0.07 -> 0.794, 0.206), not T_cal before the fusion ((0.75, 0.25) + p~*: 0.525, 0.475).
    assert abs(out.probabilities[0, 0].item() - 0.794) > 0.2 and abs(out.probabilities[0, 0].item() - 0.525) > 0.02
    # the TRN alone: softmax(z / 2) = (0.75, 0.25)
    alone = Reporting(FixedOutputs(), PredictionRecipe(), calibration_temperature=2.0)(images)
    assert torch.allclose(alone.probabilities[0], torch.tensor([0.75, 0.25]), atol=1e-6)


def test_region_distributions_are_at_the_uems_temperature():
    """region_probabilities are softmax(t_n / T_uem) (a model trained with --uem-scale paper has
    T_uem = 3); at T_uem = 1 the test above cannot tell them from softmax(t_n)."""
    model = FixedOutputs()
    model.config.uem_temperature = 3.0
    out = Reporting(model, PredictionRecipe())(torch.zeros(1, 3, 4, 4))
    # t_n = log [0.3, 0.7]: softmax(t_n / 3) = [0.3^(1/3), 0.7^(1/3)], normalised
    expected = torch.tensor([0.3 ** (1 / 3), 0.7 ** (1 / 3)]) / (0.3 ** (1 / 3) + 0.7 ** (1 / 3))
    assert torch.allclose(out.region_probabilities[0], expected.expand(4, 2), atol=1e-6)


def test_flip_averages_the_image_and_its_mirror_and_a_mirrored_face_reads_the_same():
    model = tiny_model().eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        flipped = Reporting(model, FUSED_FLIPPED, 1.3)(images)
        of_mirror = Reporting(model, FUSED_FLIPPED, 1.3)(mirrored(images))
        plain, mirror = model(images), model(mirrored(images))
        trn_only = Reporting(model, PredictionRecipe("trn", True))(images)
    assert torch.allclose(flipped.probabilities, of_mirror.probabilities, atol=1e-5)
    assert torch.allclose(trn_only.probabilities, (plain.trn_probs + mirror.trn_probs) / 2, atol=1e-5)
    # the regions' outputs, pin_expression's p~* among them, are the image's own, never its mirror's
    assert torch.allclose(flipped.consistency, plain.consistency, atol=1e-6)
    for reported in (flipped, trn_only):
        assert torch.allclose(reported.pin_probabilities, objective_log_probs(plain.region_logits, plain.gate_weights).exp(),
                              atol=1e-5)
    assert (flipped.pin_probabilities - of_mirror.pin_probabilities).abs().max() > 1e-4  # the mirror's own differ
    assert not torch.allclose(flipped.probabilities, Reporting(model, PredictionRecipe("trn+pin", False), 1.3)(images).probabilities)


def test_the_mirror_goes_through_the_pin_only_when_the_fusion_uses_it():
    model = tiny_model().eval()
    seen: list[int] = []
    model.pin.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    with torch.no_grad():
        Reporting(model, PredictionRecipe("trn", True))(torch.randn(3, 3, 64, 64))
        Reporting(model, FUSED_FLIPPED)(torch.randn(3, 3, 64, 64))
        Reporting(model, PredictionRecipe("trn", True), with_pin=False)(torch.randn(3, 3, 64, 64))
    assert seen == [3, 6]  # TRN + mirror: the image's regions only; TRN + PIN + mirror: both views; no PIN asked: none


def test_a_recipe_the_model_cannot_run_is_refused():
    with pytest.raises(ValueError, match="objective inference"):
        Reporting(tiny_model(use_pin=False), PredictionRecipe("trn+pin", False))
    with pytest.raises(ValueError, match="objective inference"):
        recipe_log_probs([torch.zeros(1, 2)], [None], "trn+pin")
    with pytest.raises(ValueError, match="fusion must be one of"):
        PredictionRecipe("pin", False)


def test_regions_agree_counts_the_regions_whose_own_expression_is_the_prediction():
    regions = np.array([[[0.1, 0.9], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]]])  # own: 1, 0, 1, 1
    assert regions_agreeing(regions, np.array([1])).tolist() == [3]
    assert regions_agreeing(regions[0], 0) == 1


def test_the_recipe_round_trips_through_the_checkpoint_and_packing(tmp_path):
    from poi_cli.model.export import export_model

    calibration = Calibration(1.7, "valid", 10, 1.0, 0.9, recipe=FUSED_FLIPPED)
    checkpoint = write_checkpoint(tmp_path / "best.pt", calibration=calibration)
    assert CheckpointInfo.of(load_checkpoint(checkpoint)).recipe == FUSED_FLIPPED
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    # an older record, before recipes: the TRN alone on the image alone
    older = {k: v for k, v in calibration.to_dict().items() if k != "recipe"}
    assert Calibration.from_dict(older).recipe == PredictionRecipe()
    assert CheckpointInfo.of(load_checkpoint(write_checkpoint(tmp_path / "raw.pt"))).recipe == PredictionRecipe()
    packed = export_model(checkpoint, "weights")
    assert packed.passed and CheckpointInfo.of(load_checkpoint(packed.path)).recipe == FUSED_FLIPPED


@pytest.fixture(scope="module")
def fused_checkpoint(tmp_path_factory):
    """A tiny POI checkpoint calibrated at T_cal = 1.7 after fusion with the PIN and the mirror."""
    return write_checkpoint(tmp_path_factory.mktemp("fused") / "best.pt",
                            calibration=Calibration(1.7, "valid", 10, 1.0, 0.9, recipe=FUSED_FLIPPED))


def test_onnx_and_torch_agree_under_fusion_and_flip(fused_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from poi_cli.deploy.runner import OnnxRunner
    from poi_cli.model.export import export_model
    from poi_cli.model.runner import TorchRunner

    exported = export_model(fused_checkpoint, "onnx", full=True, out=tmp_path / "full.onnx")
    assert exported.passed and "pin_probabilities" in exported.output_names
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(exported.path)).metadata_props}
    assert meta["recipe"] == {"fusion": "trn+pin", "flip": True} and meta["calibration_temperature"] == 1.7
    onnx_runner, torch_runner = OnnxRunner(exported.path, threads=1), TorchRunner(fused_checkpoint)
    assert onnx_runner.recipe == torch_runner.recipe == FUSED_FLIPPED
    faces = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    a, b = onnx_runner.run(faces), torch_runner.run(faces)
    for name in ("probabilities", "pin_probabilities", "consistency", "eye_aus", "mouth_aus", "region_probabilities"):
        assert np.abs(getattr(a, name) - getattr(b, name)).max() < 1e-5, name
    # the mirrored faces read the same through the exported graph
    assert np.abs(onnx_runner.run(faces[:, :, ::-1]).probabilities - a.probabilities).max() < 1e-5
    # the deployed (TRN-only) export carries the recipe too: its "logits" are log p, calibrated by the runner
    deployed = export_model(fused_checkpoint, "onnx", out=tmp_path / "trn.onnx")
    assert deployed.passed and deployed.output_names == ["logits"]
    assert np.abs(OnnxRunner(deployed.path, threads=1).run(faces).probabilities - b.probabilities).max() < 1e-5


def test_the_split_path_makes_the_same_numbers_as_the_runner(fused_checkpoint):
    from poi_cli.model.calibration import softmax
    from poi_cli.model.checkpoint import load_model
    from poi_cli.model.runner import TorchRunner

    model, _ = load_model(fused_checkpoint)
    faces = np.random.default_rng(1).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    split = predict_split(model, faces, np.arange(5), np.zeros(5, np.int64), 64, 2, torch.device("cpu"), mirror=True)
    expected = TorchRunner(fused_checkpoint).run(faces)
    np.testing.assert_allclose(softmax(split.recipe_log_probs(FUSED_FLIPPED), 1.7), expected.probabilities, atol=1e-5)
    np.testing.assert_allclose(split.objective_probs(), expected.pin_probabilities, atol=1e-5)
    without_mirror = predict_split(model, faces, np.arange(5), np.zeros(5, np.int64), 64, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="mirror"):
        without_mirror.recipe_log_probs(FUSED_FLIPPED)
