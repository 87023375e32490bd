"""The POI network (POI_SPEC section 2): shapes, crops, deploy mode, ablation structure."""

import pytest
import torch

from poi_cli.core.manifests import EYE_AUS, MOUTH_AUS
from poi_cli.model.network import ModelConfig, POIModel, SubregionCrops, count_parameters


def make_model(**overrides) -> POIModel:
    torch.manual_seed(0)
    return POIModel(ModelConfig(**{"input_size": 64, **overrides}))


@pytest.mark.parametrize(
    "arch,size,channels",
    [("resnet18", 64, 256), ("resnet18", 112, 256), ("resnet18", 224, 256), ("resnet34", 64, 256), ("resnet50", 128, 1024),
     ("resnet10", 96, 256)],
)
def test_output_shapes_for_every_backbone_and_size(arch, size, channels):
    model = make_model(arch=arch, input_size=size, num_classes=8).eval()
    batch = 2
    with torch.no_grad():
        shared = model.trunk(torch.randn(batch, 3, size, size))
        output = model(torch.randn(batch, 3, size, size))
    side = size // 16
    assert shared.shape == (batch, channels, side, side)
    assert output.trn_logits.shape == (batch, 8)
    assert output.region_logits.shape == (batch, 4, 8)
    assert output.gate_weights.shape == (batch, 4)
    assert torch.allclose(output.gate_weights.sum(-1), torch.ones(batch))
    assert output.eye_au_logits.shape == (batch, 2, len(EYE_AUS))
    assert output.mouth_au_logits.shape == (batch, 2, len(MOUTH_AUS))
    assert output.intermediate_probs.shape == (batch, 8)
    assert output.consistency.shape == (batch,)


@pytest.mark.parametrize("size,expected", [(224, 9), (64, 3), (128, 5), (448, 18), (96, 4), (112, 5)])
def test_subregion_size_follows_the_spec(size, expected):
    # L_sub = 9 at L = 14 (Table XI), round(9 L / 14) half up elsewhere (112: L = 7, 4.5 -> 5, not Python's round, 4).
    assert ModelConfig(input_size=size).subregion_size == expected


@pytest.mark.parametrize("size", [63, 100, 48, 480])
def test_bad_input_sizes_are_refused(size):
    with pytest.raises(ValueError, match="multiple of 16"):
        ModelConfig(input_size=size)


def test_right_hand_crops_are_flipped():
    crops = SubregionCrops(subregion_size=3)
    features = torch.randn(2, 5, 7, 7)
    direct = crops(features)
    mirrored = crops(features.flip(-1))
    # Mirroring the map swaps left and right, and the flip of Eq. 2 undoes the mirror:
    # the left crop of the mirrored map equals the (flipped) right crop of the original.
    assert torch.equal(mirrored[:, 0], direct[:, 1])
    assert torch.equal(mirrored[:, 1], direct[:, 0])
    assert torch.equal(mirrored[:, 2], direct[:, 3])
    assert torch.equal(mirrored[:, 3], direct[:, 2])
    # And the left crops are taken as they are, from the corners.
    assert torch.equal(direct[:, 0], features[:, :, :3, :3])
    assert torch.equal(direct[:, 3], features[:, :, -3:, -3:].flip(-1))


def test_deployed_trn_matches_the_trn_inside_the_full_model():
    model = make_model().eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        full_logits = model(images).trn_logits
        deployed_logits = model.deploy()(images)
    assert isinstance(deployed_logits, torch.Tensor)
    assert torch.allclose(full_logits, deployed_logits, atol=1e-6)
    assert count_parameters(model.deploy()) < count_parameters(model)


def test_baseline_has_no_pin():
    model = make_model(use_pin=False)
    output = model(torch.randn(2, 3, 64, 64))
    assert model.pin is None
    assert output.region_logits is None and output.gate_weights is None and output.eye_au_logits is None
    assert count_parameters(model) == count_parameters(model.deploy())


def test_no_prior_supervision_removes_the_au_nets():
    model = make_model(prior_supervision=False)
    output = model(torch.randn(2, 3, 64, 64))
    names = [name for name, _ in model.named_parameters()]
    assert not any("au_nets" in name for name in names)
    assert output.eye_au_logits is None and output.mouth_au_logits is None
    assert output.region_logits.shape == (2, 4, 7)
    assert output.gate_weights is not None


def test_no_oim_removes_the_gate():
    model = make_model(use_oim=False)
    output = model(torch.randn(2, 3, 64, 64))
    assert model.pin.oim is None
    assert output.gate_weights is None and output.intermediate_probs is None
    assert output.eye_au_logits is not None


def test_with_pin_false_skips_the_pin():
    model = make_model()
    output = model(torch.randn(1, 3, 64, 64), with_pin=False)
    assert output.region_logits is None


def test_config_round_trips_through_a_dict():
    config = ModelConfig(arch="resnet34", num_classes=8, input_size=96, use_oim=False)
    assert ModelConfig.from_dict({**config.to_dict(), "unknown_key": 1}) == config
