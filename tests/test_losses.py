"""The POI losses (Eq. 4-12, POI_SPEC sections 3-5)."""

import math

import pytest
import torch

from poi_cli.model import losses
from poi_cli.core.manifests import CLASSES, EYE_AUS, MOUTH_AUS
from poi_cli.model.network import (
    ModelConfig, POIModel, POIOutput, intermediate_log_probs, region_consistency, tempered_log_probs, uncertainty_beta,
)

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


LN2, LN3 = math.log(2.0), math.log(3.0)


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q), written out for the hand-computed expectations below."""
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _bce(target: float, prob: float) -> float:
    return -(target * math.log(prob) + (1 - target) * math.log(1 - prob))


# One image, N = 4 regions, C = 2 classes, T = 3. Region logits chosen so that
# p~_n = softmax(t_n / 3) is [1/4, 3/4] for regions 0, 1 and [3/4, 1/4] for regions 2, 3.
T = 3.0
REGION_LOGITS = torch.tensor([[[0.0, 3 * LN3], [0.0, 3 * LN3], [3 * LN3, 0.0], [3 * LN3, 0.0]]])
TEMPERED = [[0.25, 0.75], [0.25, 0.75], [0.75, 0.25], [0.75, 0.25]]
GATE = torch.tensor([[0.5, 0.25, 0.125, 0.125]])
P_STAR = [0.375, 0.625]  # 0.75 [1/4, 3/4] + 0.25 [3/4, 1/4]
TRN_LOGITS = torch.tensor([[0.0, 3 * LN2]])  # q = [1/9, 8/9]; q~ = softmax(z / 3) = [1/3, 2/3]
LABEL = torch.tensor([1])


def test_kl_is_zero_for_equal_distributions_and_matches_its_definition():
    p, q = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]
    assert losses.kl_divergence(torch.tensor(p).log(), torch.tensor(p).log()).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.kl_divergence(torch.tensor(p).log(), torch.tensor(q).log()).item() == pytest.approx(_kl(p, q), rel=1e-6)


def test_eq4_au_loss_known_value():
    """label happiness; eye AU06 at p = 0.9 (its target 0.9), every other AU at p = 0.5."""
    labels = torch.tensor([CLASSES.index("happiness")])
    eye_logits = torch.zeros(1, 2, len(EYE_AUS))
    eye_logits[..., EYE_AUS.index("AU06")] = math.log(9.0)
    mouth_logits = torch.zeros(1, 2, len(MOUTH_AUS))
    # 2 regions x (6 + 7) AUs = 26 terms: 2 at (y 0.9, p 0.9), 24 at p = 0.5 (BCE = ln 2 for any y)
    expected = (2 * _bce(0.9, 0.9) + 24 * LN2) / 26
    assert losses.loss_au(eye_logits, mouth_logits, labels, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_eq5_region_cross_entropy_known_value_without_temperature():
    # softmax(t_n) with no T: [1/28, 27/28] and [27/28, 1/28]; label 1
    expected = (2 * math.log(28 / 27) + 2 * math.log(28)) / 4
    assert losses.loss_ce_au(REGION_LOGITS, LABEL).item() == pytest.approx(expected, rel=1e-6)


def test_eq5_scores_each_images_regions_against_its_own_label():
    # two images: image 0's four regions at softmax [3/4, 1/4] with label 0, image 1's at
    # [1/4, 3/4] with label 1; each term is -ln 3/4 (the batch-of-one tests cannot tell
    # labels repeated per region from labels repeated per batch: (-ln 3/4 - ln 1/4) / 2)
    logits = torch.stack([torch.tensor([LN3, 0.0]).repeat(4, 1), torch.tensor([0.0, LN3]).repeat(4, 1)])
    assert losses.loss_ce_au(logits, torch.tensor([0, 1])).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_eq6_7_intermediate_prediction_known_value():
    assert torch.allclose(tempered_log_probs(REGION_LOGITS, T).exp()[0], torch.tensor(TEMPERED), atol=1e-6)
    log_p_star = intermediate_log_probs(REGION_LOGITS, GATE, T)
    assert torch.allclose(log_p_star.exp()[0], torch.tensor(P_STAR), atol=1e-6)


def test_eq8_region_kl_known_value_and_direction():
    expected = (2 * _kl(P_STAR, TEMPERED[0]) + 2 * _kl(P_STAR, TEMPERED[2])) / 4  # KL(p~* || p~_n)
    reversed_direction = (2 * _kl(TEMPERED[0], P_STAR) + 2 * _kl(TEMPERED[2], P_STAR)) / 4
    assert abs(expected - reversed_direction) > 1e-3  # the example tells the two apart
    log_p_star = intermediate_log_probs(REGION_LOGITS, GATE, T)
    assert losses.loss_kl_au(log_p_star, REGION_LOGITS, T).item() == pytest.approx(expected, rel=1e-5)


def test_eq8_gradient_reaches_each_region_through_its_own_p_tilde_n():
    # No stop-gradient (POI_SPEC: deep mutual learning): d/dt_n of mean_n KL(p~* || softmax(t_n / T))
    # is (p~_n - p~*) / (4 T); region 0: ([1/4, 3/4] - [3/8, 5/8]) / 12 = [-0.0104, 0.0104]
    regions = REGION_LOGITS.clone().requires_grad_()
    losses.loss_kl_au(intermediate_log_probs(regions.detach(), GATE, T), regions, T).backward()
    expected = (torch.tensor(TEMPERED) - torch.tensor(P_STAR)) / (4 * T)
    assert torch.allclose(regions.grad[0], expected, atol=1e-6)


def test_eq8_region_kl_is_zero_when_regions_agree():
    agreeing = torch.tensor([[1.0, 2.0, 0.5]]).repeat(4, 1)[None]
    log_p_star = intermediate_log_probs(agreeing, torch.full((1, 4), 0.25), T)
    assert losses.loss_kl_au(log_p_star, agreeing, T).item() == pytest.approx(0.0, abs=1e-6)


def test_eq9_target_cross_entropy_known_value_without_temperature():
    assert losses.loss_ce_tar(TRN_LOGITS, LABEL).item() == pytest.approx(-math.log(8 / 9), rel=1e-6)


# --soft-labels: y of Eq. 4, 5 and 9 as a distribution over the classes (the annotators' votes)
SOFT = torch.tensor([[0.25, 0.75]])


def test_eq9_and_eq5_against_a_vote_distribution_known_values():
    # Eq. 9: -(1/4 log 1/9 + 3/4 log 8/9); Eq. 5 (softmax(t_n): [1/28, 27/28] twice, [27/28, 1/28] twice)
    assert losses.loss_ce_tar(TRN_LOGITS, SOFT).item() == pytest.approx(
        -(0.25 * math.log(1 / 9) + 0.75 * math.log(8 / 9)), rel=1e-6)
    expected = (2 * -(0.25 * math.log(1 / 28) + 0.75 * math.log(27 / 28))
                + 2 * -(0.25 * math.log(27 / 28) + 0.75 * math.log(1 / 28))) / 4
    assert losses.loss_ce_au(REGION_LOGITS, SOFT).item() == pytest.approx(expected, rel=1e-6)
    # a one-hot distribution is the class index
    for loss, logits in ((losses.loss_ce_tar, TRN_LOGITS), (losses.loss_ce_au, REGION_LOGITS)):
        assert loss(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(loss(logits, LABEL).item(), rel=1e-6)


def test_au_targets_of_a_vote_distribution_mix_table_i_rows():
    eps = 0.1
    votes = torch.zeros(1, len(CLASSES))
    votes[0, CLASSES.index("happiness")], votes[0, CLASSES.index("surprise")] = 0.75, 0.25
    mouth = dict(zip(MOUTH_AUS, losses.au_targets(votes, "mouth", eps)[0].tolist()))
    # AU12 is happiness's alone, AU26 both's; each target is (1 - eps) prior + eps (1 - prior)
    assert mouth["AU12"] == pytest.approx(0.75 * 0.9 + 0.25 * 0.1)
    assert mouth["AU26"] == pytest.approx(0.9) and mouth["AU15"] == pytest.approx(0.1)
    seven = votes[:, :7] / votes[:, :7].sum()  # a 7-class model's distribution (no contempt column)
    assert torch.allclose(losses.au_targets(seven, "eye", eps), losses.au_targets(votes, "eye", eps))


def test_eq11_distillation_known_value_direction_and_beta():
    q_tilde = [1 / 3, 2 / 3]
    expected = 0.5 * (2 * _kl(TEMPERED[0], q_tilde) + 2 * _kl(TEMPERED[2], q_tilde)) / 4  # beta KL(p~_n || q~)
    reversed_direction = 0.5 * (2 * _kl(q_tilde, TEMPERED[0]) + 2 * _kl(q_tilde, TEMPERED[2])) / 4
    assert abs(expected - reversed_direction) > 1e-3
    value = losses.loss_kl_tar(REGION_LOGITS, TRN_LOGITS, torch.tensor([0.5]), T)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_distillation_known_value_direction_and_temperature():
    # teacher p = [3/4, 1/4] at T; student z = [0, 0] -> q~ = [1/2, 1/2]:
    # KL(p || q~) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812; the reversed KL(q~ || p) is 0.143841.
    teacher = torch.tensor([[0.75, 0.25]]).log()
    value = losses.loss_kl_teacher(teacher, torch.zeros(1, 2), T).item()
    assert value == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)
    assert abs(value - (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0))) > 1e-2
    # z / T = [ln 3, 0] gives q~ = p exactly: zero only if the student is divided by T
    assert losses.loss_kl_teacher(teacher, torch.tensor([[T * LN3, 0.0]]), T).item() == pytest.approx(0.0, abs=1e-6)


def test_total_loss_adds_the_teacher_term_with_t_squared_and_its_weight():
    output = POIOutput(trn_logits=torch.zeros(1, 2), temperature=T)  # a baseline: CE + the teacher only
    labels = torch.tensor([0])
    teacher = torch.tensor([[0.75, 0.25]]).log()
    without, terms = losses.total_loss(output, labels, losses.LossConfig(teacher_weight=0.5))
    assert "kl_teacher" not in terms and without.item() == pytest.approx(LN2, rel=1e-6)
    total, terms = losses.total_loss(output, labels, losses.LossConfig(teacher_weight=0.5), teacher_log_probs=teacher)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert terms["kl_teacher"].item() == pytest.approx(kl, rel=1e-6)
    assert total.item() == pytest.approx(LN2 + 0.5 * T * T * kl, rel=1e-6)


def test_eq10_consistency_known_value_and_extremes():
    # T = 1: p_n = softmax(t_n) on logits [0, ln 3] / [ln 3, 0] -> [1/4, 3/4] twice, [3/4, 1/4] twice;
    # var_c = 1/16 for both classes, sum 1/8; unit scale: w = 1 - 4/3 * 1/8 = 5/6.
    logits = REGION_LOGITS / 3
    assert region_consistency(logits, 1.0, "unit").item() == pytest.approx(5 / 6, rel=1e-6)
    assert region_consistency(logits, 1.0, "paper").item() == pytest.approx(7 / 8, rel=1e-6)
    # The first reading: the same probabilities reached at T = 3 from 3x the logits.
    assert region_consistency(REGION_LOGITS, 3.0, "paper").item() == pytest.approx(7 / 8, rel=1e-6)
    agreeing = torch.randn(1, 1, 7).repeat(1, 4, 1)
    assert region_consistency(agreeing).item() == pytest.approx(1.0, abs=1e-6)
    four_classes = torch.eye(7)[:4][None] * 100  # one-hot on four different classes
    assert region_consistency(four_classes).item() == pytest.approx(0.0, abs=1e-5)
    assert region_consistency(four_classes, 1.0, "paper").item() == pytest.approx(0.25, abs=1e-5)


def test_eq10_consistency_falls_as_regions_disagree():
    agree, split = torch.zeros(1, 4, 7), torch.eye(7)[:4][None] * 8
    ws = [region_consistency(agree + alpha * split).item() for alpha in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a > b for a, b in zip(ws, ws[1:])), ws


def test_beta_known_values():
    w = torch.tensor([1.0, 5 / 6, 0.0])
    expected = [0.0, math.exp(1 / 6) - 1, math.e - 1]
    assert uncertainty_beta(w).tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_eq12_total_known_value():
    """Every term from the hand-computed examples above, weighted as Eq. 12 says."""
    output = POIOutput(
        trn_logits=TRN_LOGITS, region_logits=REGION_LOGITS, gate_weights=GATE,
        intermediate_log_probs=intermediate_log_probs(REGION_LOGITS, GATE, T),
        consistency=torch.tensor([1 - math.log(1.5)]),  # beta = exp(ln 1.5) - 1 = 0.5
        eye_au_logits=torch.zeros(1, 2, len(EYE_AUS)), mouth_au_logits=torch.zeros(1, 2, len(MOUTH_AUS)),
        temperature=T,
    )
    l_au = LN2  # every AU at p = 0.5
    l_ce_au = (2 * math.log(28 / 27) + 2 * math.log(28)) / 4
    l_ce_tar = -math.log(8 / 9)
    l_kl_au = (2 * _kl(P_STAR, TEMPERED[0]) + 2 * _kl(P_STAR, TEMPERED[2])) / 4
    l_kl_tar = 0.5 * (2 * _kl(TEMPERED[0], [1 / 3, 2 / 3]) + 2 * _kl(TEMPERED[2], [1 / 3, 2 / 3])) / 4
    config = losses.LossConfig(lambda_au=0.3, lambda_ce_au=0.7, lambda_ce_tar=2.0)
    total, terms = losses.total_loss(output, LABEL, config)
    expected = 0.3 * l_au + 0.7 * l_ce_au + 2.0 * l_ce_tar + T * T * (l_kl_au + l_kl_tar)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    for name, value in (("au", l_au), ("ce_au", l_ce_au), ("ce_tar", l_ce_tar), ("kl_au", l_kl_au), ("kl_tar", l_kl_tar)):
        assert terms[name].item() == pytest.approx(value, rel=1e-5), name


def test_defaults_of_eq12_and_the_spec():
    config = losses.LossConfig()
    assert (config.lambda_au, config.lambda_ce_au, config.lambda_ce_tar, config.au_eps) == (0.5, 0.5, 1.0, 0.1)
    assert (config.use_uem, config.teacher_weight) == (True, 1.0)  # the paper's UEM; a teacher counts like the PIN
    model = ModelConfig()
    assert (model.temperature, model.uem_temperature, model.uem_scale) == (3.0, 1.0, "unit")


def test_au_loss_is_smallest_at_the_targets():
    labels = torch.tensor([CLASSES.index("happiness"), CLASSES.index("anger")])
    eps = 0.1
    eye_target = losses.au_targets(labels, "eye", eps)[:, None].repeat(1, 2, 1)
    mouth_target = losses.au_targets(labels, "mouth", eps)[:, None].repeat(1, 2, 1)
    at_target = losses.loss_au(torch.logit(eye_target), torch.logit(mouth_target), labels, eps)
    off_target = losses.loss_au(torch.logit(1 - eye_target), torch.logit(1 - mouth_target), labels, eps)
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
    for part in (model.pin.upper_branch, model.pin.eye_au_nets, model.pin.mouth_au_nets, model.pin.region_classifiers, model.pin.oim):
        assert _grad_norm(part) > 0


def test_distillation_sends_no_gradient_to_the_pin():
    model, output, labels = _forward(ModelConfig(input_size=64))
    beta = uncertainty_beta(output.consistency)
    losses.loss_kl_tar(output.region_logits, output.trn_logits, beta, output.temperature).backward()
    assert _grad_norm(model.pin) == 0
    assert _grad_norm(model.trn) > 0


@pytest.mark.parametrize("path", ["p_tilde_n", "p_star"])
def test_eq8_teaches_the_region_classifiers_along_both_of_its_sides(path):
    """POI_SPEC: no stop-gradient in L_KL_au: the region classifiers learn through their own
    p~_n and through p~* (Eq. 7 mixes their outputs), the gate through p~*."""
    model, output, _ = _forward(ModelConfig(input_size=64))
    p_star, regions = output.intermediate_log_probs, output.region_logits
    if path == "p_tilde_n":
        losses.loss_kl_au(p_star.detach(), regions, output.temperature).backward()
    else:
        losses.loss_kl_au(p_star, regions.detach(), output.temperature).backward()
        assert _grad_norm(model.pin.oim) > 0
    assert _grad_norm(model.pin.region_classifiers) > 0


def test_eq6_7_the_oim_gate_is_the_softmax_of_its_fc():
    from poi_cli.model.network import ObjectiveInference

    oim = ObjectiveInference(in_features=8, temperature=T)
    with torch.no_grad():
        oim.fc.weight.zero_()
        oim.fc.bias.copy_(torch.tensor([0.0, LN2, LN3, math.log(4.0)]))
    gate, log_p_star = oim([torch.zeros(1, 2)] * 4, REGION_LOGITS)
    assert torch.allclose(gate[0], torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=1e-6)
    # 0.3 [1/4, 3/4] + 0.7 [3/4, 1/4] = [0.6, 0.4]
    assert torch.allclose(log_p_star.exp()[0], torch.tensor([0.6, 0.4]), atol=1e-6)


def test_total_loss_is_the_weighted_sum_of_eq_12():
    _, output, labels = _forward(ModelConfig(input_size=64))
    # at initialisation the regions agree (w ~ 1, beta ~ 0) and Eq. 11 weighs ~1e-6, below the
    # tolerance: set w so that it counts (beta = 1 - w)
    output.consistency = torch.full_like(output.consistency, 0.5)
    config = losses.LossConfig(lambda_au=0.3, lambda_ce_au=0.7, lambda_ce_tar=2.0)
    total, t = losses.total_loss(output, labels, config)
    expected = 0.3 * t["au"] + 0.7 * t["ce_au"] + 2.0 * t["ce_tar"] + 9.0 * (t["kl_au"] + t["kl_tar"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    # a distillation warm-up (distill = 0) leaves out Eq. 11 only, still logging it
    warm, w = losses.total_loss(output, labels, config, distill=0.0)
    assert w["kl_tar"].item() == pytest.approx(t["kl_tar"].item()) and t["kl_tar"].item() > 0
    assert warm.item() == pytest.approx((expected - 9.0 * t["kl_tar"]).item(), rel=1e-5)
    assert 9.0 * t["kl_tar"].item() > 1e-3 * total.item()  # the warm-up's difference is far above the tolerance


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
    unweighted = losses.loss_kl_tar(output.region_logits, output.trn_logits, torch.ones(len(labels)), output.temperature)
    assert without_uem.item() == pytest.approx(unweighted.item(), rel=1e-6)
    beta = uncertainty_beta(output.consistency)
    weighted = losses.loss_kl_tar(output.region_logits, output.trn_logits, beta, output.temperature)
    assert with_uem.item() == pytest.approx(weighted.item(), rel=1e-6)
    assert not torch.allclose(beta, torch.ones_like(beta))


def test_model_output_carries_p_star_and_w_from_its_oim_and_uem():
    _, output, _ = _forward(ModelConfig(input_size=64))
    expected = intermediate_log_probs(output.region_logits, output.gate_weights, output.temperature)
    assert torch.allclose(output.intermediate_log_probs, expected, atol=1e-6)
    assert torch.allclose(output.consistency, region_consistency(output.region_logits), atol=1e-6)
    assert not output.consistency.requires_grad
    _, old, _ = _forward(ModelConfig(input_size=64, uem_temperature=3.0, uem_scale="paper"))
    assert torch.allclose(old.consistency, region_consistency(old.region_logits, 3.0, "paper"), atol=1e-6)


def test_state_dicts_that_name_the_oim_gate_still_load():
    torch.manual_seed(0)
    model = POIModel(ModelConfig(input_size=64))
    state = {k.replace("pin.oim.", "pin.gate."): v for k, v in model.state_dict().items()}
    assert any(k.startswith("pin.gate.") for k in state)
    fresh = POIModel(ModelConfig(input_size=64))
    fresh.load_state_dict(state)  # strict: every key found
    assert torch.equal(fresh.pin.oim.fc.weight, model.pin.oim.fc.weight)
