"""The POI losses (Eq. 4-12, POI_SPEC sections 3-5)."""

import math

import pytest
import torch

from poi_cli import losses
from poi_cli.manifests import CLASSES, EYE_AUS, MOUTH_AUS
from poi_cli.model import ModelConfig, POIModel, POIOutput

# Table I of the paper, transcribed independently of data_manifests/au_prior.json so
# that a typo in the shipped table fails this test.
TABLE_I = {
    "happiness": ({"AU06"}, {"AU12", "AU26"}),
    "fear": ({"AU01", "AU04", "AU05"}, {"AU26"}),
    "anger": ({"AU04"}, {"AU24"}),
    "surprise": ({"AU01", "AU02", "AU05"}, {"AU26"}),
    "sadness": ({"AU01", "AU04"}, {"AU15", "AU17"}),
    "disgust": ({"AU09"}, {"AU10", "AU17"}),
    "contempt": (set(), {"AU14"}),
    "neutral": (set(), set()),
}


@pytest.mark.parametrize("class_name", CLASSES)
def test_au_targets_match_table_i(class_name):
    eps = 0.1
    label = torch.tensor([CLASSES.index(class_name)])
    eye_expected, mouth_expected = TABLE_I[class_name]
    for group, aus, expected in (("eye", EYE_AUS, eye_expected), ("mouth", MOUTH_AUS, mouth_expected)):
        targets = losses.au_targets(label, group, eps)[0]
        for au, target in zip(aus, targets.tolist()):
            assert target == pytest.approx(1 - eps if au in expected else eps), (class_name, au)


def test_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    p = torch.tensor([0.7, 0.2, 0.1]).log()
    q = torch.tensor([0.1, 0.3, 0.6]).log()
    assert losses.kl_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.kl_divergence(p, q).item() > 0.1


def test_region_kl_is_zero_when_regions_agree_and_positive_otherwise():
    agreeing = torch.tensor([[1.0, 2.0, 0.5]]).repeat(4, 1)[None]
    gate = torch.full((1, 4), 0.25)
    assert losses.region_kl_loss(agreeing, gate, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    disagreeing = torch.eye(3)[[0, 1, 2, 0]][None] * 10
    assert losses.region_kl_loss(disagreeing, gate, 3.0).item() > 0.01


def test_distillation_is_zero_when_student_matches_and_weighted_by_beta():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    regions = logits[:, None].repeat(1, 4, 1)
    assert losses.distillation_loss(regions, logits, torch.ones(1), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.tensor([[-1.0, 0.0, 2.0]])
    unweighted = losses.distillation_loss(regions, other, torch.ones(1), 3.0)
    assert unweighted.item() > 0
    assert losses.distillation_loss(regions, other, torch.full((1,), 0.5), 3.0).item() == pytest.approx(0.5 * unweighted.item())


def test_uncertainty_weight_range_and_beta():
    agreeing = torch.softmax(torch.randn(1, 1, 7), -1).repeat(1, 4, 1)
    w_agree = losses.uncertainty_weight(agreeing)
    assert w_agree.item() == pytest.approx(1.0, abs=1e-6)
    assert losses.uncertainty_beta(w_agree).item() == pytest.approx(0.0, abs=1e-6)
    # Four regions each certain of a different class: the most uncertain case.
    disagreeing = torch.eye(7)[:4][None]
    w_min = losses.uncertainty_weight(disagreeing)
    assert w_min.item() == pytest.approx(0.25, abs=1e-6)
    assert losses.uncertainty_beta(w_min).item() == pytest.approx(math.exp(0.75) - 1)
    random = torch.softmax(torch.randn(500, 4, 8) * 4, -1)
    w = losses.uncertainty_weight(random)
    assert (w >= 0.25 - 1e-6).all() and (w <= 1 + 1e-6).all()
    assert w.std() > 0.01  # carries signal


def test_au_loss_is_smallest_at_the_targets():
    labels = torch.tensor([CLASSES.index("happiness"), CLASSES.index("anger")])
    eps = 0.1
    eye_target = losses.au_targets(labels, "eye", eps)[:, None].repeat(1, 2, 1)
    mouth_target = losses.au_targets(labels, "mouth", eps)[:, None].repeat(1, 2, 1)
    at_target = losses.au_loss(torch.logit(eye_target), torch.logit(mouth_target), labels, eps)
    off_target = losses.au_loss(torch.logit(1 - eye_target), torch.logit(1 - mouth_target), labels, eps)
    assert at_target < off_target


def _forward(config: ModelConfig, batch: int = 4):
    torch.manual_seed(0)
    model = POIModel(config)
    images = torch.randn(batch, 3, config.input_size, config.input_size)
    labels = torch.arange(batch) % config.num_classes
    return model, model(images), labels


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def test_total_loss_reaches_trunk_pin_and_trn():
    model, output, labels = _forward(ModelConfig(input_size=64))
    total, terms = losses.total_loss(output, labels, losses.LossConfig())
    assert set(terms) == {"ce_tar", "ce_au", "au", "kl_au", "kl_tar", "w_mean", "total"}
    total.backward()
    assert _grad_norm(model.trunk) > 0
    assert _grad_norm(model.trn) > 0
    for part in (model.pin.upper_branch, model.pin.eye_au_nets, model.pin.mouth_au_nets, model.pin.region_classifiers, model.pin.gate):
        assert _grad_norm(part) > 0


def test_distillation_sends_no_gradient_to_the_pin():
    model, output, labels = _forward(ModelConfig(input_size=64))
    beta = losses.uncertainty_beta(output.uncertainty_w)
    losses.distillation_loss(output.region_logits, output.trn_logits, beta, output.temperature).backward()
    assert _grad_norm(model.pin) == 0
    assert _grad_norm(model.trn) > 0


def test_total_loss_is_the_weighted_sum_of_eq_12():
    _, output, labels = _forward(ModelConfig(input_size=64))
    config = losses.LossConfig(lambda_au=0.3, lambda_ce_au=0.7, lambda_ce_tar=2.0)
    total, t = losses.total_loss(output, labels, config)
    expected = 0.3 * t["au"] + 0.7 * t["ce_au"] + 2.0 * t["ce_tar"] + 9.0 * (t["kl_au"] + t["kl_tar"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ablation_switches_remove_their_terms():
    loss_config = losses.LossConfig()
    _, baseline, labels = _forward(ModelConfig(input_size=64, use_pin=False))
    assert set(losses.total_loss(baseline, labels, loss_config)[1]) == {"ce_tar", "total"}
    _, no_pb, labels = _forward(ModelConfig(input_size=64, prior_supervision=False))
    assert "au" not in losses.total_loss(no_pb, labels, loss_config)[1]
    _, no_oim, labels = _forward(ModelConfig(input_size=64, use_oim=False))
    assert "kl_au" not in losses.total_loss(no_oim, labels, loss_config)[1]


def test_without_uem_beta_is_one():
    _, output, labels = _forward(ModelConfig(input_size=64))
    with_uem = losses.total_loss(output, labels, losses.LossConfig(use_uem=True))[1]["kl_tar"]
    without_uem = losses.total_loss(output, labels, losses.LossConfig(use_uem=False))[1]["kl_tar"]
    unweighted = losses.distillation_loss(output.region_logits, output.trn_logits, torch.ones(len(labels)), output.temperature)
    assert without_uem.item() == pytest.approx(unweighted.item(), rel=1e-6)
    beta = losses.uncertainty_beta(output.uncertainty_w)
    weighted = losses.distillation_loss(output.region_logits, output.trn_logits, beta, output.temperature)
    assert with_uem.item() == pytest.approx(weighted.item(), rel=1e-6)
    assert not torch.allclose(beta, torch.ones_like(beta))


def test_intermediate_prediction_is_the_gated_mixture():
    region_logits = torch.randn(2, 4, 5)
    gate = torch.softmax(torch.randn(2, 4), -1)
    output = POIOutput(trn_logits=torch.randn(2, 5), region_logits=region_logits, gate_weights=gate, temperature=3.0)
    expected = (gate[..., None] * torch.softmax(region_logits / 3.0, -1)).sum(1)
    assert torch.allclose(output.intermediate_probs, expected, atol=1e-6)
    log_probs = losses.intermediate_log_probs(region_logits, gate, 3.0)
    assert torch.allclose(log_probs.exp(), expected, atol=1e-6)
