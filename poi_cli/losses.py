"""POI losses, one function per equation (paper Eq. 4-12, typos fixed per POI_SPEC section 4).

Shapes: B images, N = 4 regions, C classes. `labels` are the annotated (possibly noisy)
class indices. Every KL here is KL(p || q) = sum_c p_c log(p_c / q_c) >= 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from poi_cli.manifests import au_prior_matrix
from poi_cli.model import POIOutput


@dataclass
class LossConfig:
    """Weights of Eq. 12 and the AU pseudo-label smoothing (POI_SPEC sections 3-5)."""

    lambda_au: float = 0.5  # lambda_1
    lambda_ce_au: float = 0.5  # lambda_2
    lambda_ce_tar: float = 1.0  # lambda_3
    au_eps: float = 0.1  # eps of the AU pseudo-labels
    use_uem: bool = True  # False: "without UEM", beta = 1 for every image

    def to_dict(self) -> dict:
        return asdict(self)


def au_targets(labels: torch.Tensor, group: str, eps: float) -> torch.Tensor:
    """AU pseudo-labels y_hat from Table I: 1 - eps for the AUs of the label, eps otherwise.

    (B,) labels -> (B, M) targets for group 'eye' (6 AUs) or 'mouth' (7 AUs).
    """
    prior = au_prior_matrix(group).to(labels.device)[labels]
    return prior * (1.0 - eps) + (1.0 - prior) * eps


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, from log-probabilities (stable where p is tiny)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def au_loss(eye_au_logits: torch.Tensor, mouth_au_logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 4, L_AU: BCE between p_hat and y_hat, mean over images, regions and AUs.

    (The paper's "log(1 - log p)" is a typo for log(1 - p).) Eye and mouth AUs are
    pooled so that each (image, region, AU) term has the same weight.
    """
    terms = []
    for logits, group in ((eye_au_logits, "eye"), (mouth_au_logits, "mouth")):
        targets = au_targets(labels, group, eps)[:, None, :].expand_as(logits)
        terms.append(F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").flatten(1))
    return torch.cat(terms, dim=1).mean()


def region_ce_loss(region_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 5, L_CE_au: cross-entropy of softmax(t_n) against y, mean over images and regions."""
    num_regions = region_logits.shape[1]
    return F.cross_entropy(region_logits.float().flatten(0, 1), labels.repeat_interleave(num_regions))


def intermediate_log_probs(region_logits: torch.Tensor, gate_weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 6-7 in log space: log p~* = log sum_n w_n softmax(t_n / T), (B, C)."""
    region_log_probs = F.log_softmax(region_logits.float() / temperature, dim=-1)
    return torch.logsumexp(gate_weights.float().clamp_min(1e-12).log()[..., None] + region_log_probs, dim=1)


def region_kl_loss(region_logits: torch.Tensor, gate_weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 8, L_KL_au: mean over images and regions of KL(p~* || p~_n).

    No stop-gradient (Decision: deep mutual learning, regions and gate both learn).
    The leading minus of the paper's Eq. 8 is a typo.
    """
    region_log_probs = F.log_softmax(region_logits.float() / temperature, dim=-1)
    target_log_probs = intermediate_log_probs(region_logits, gate_weights, temperature)
    return kl_divergence(target_log_probs[:, None, :], region_log_probs).mean()


def target_ce_loss(trn_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 9, L_CE_tar: cross-entropy of q = softmax(z) against y."""
    return F.cross_entropy(trn_logits.float(), labels)


def uncertainty_weight(region_probs: torch.Tensor) -> torch.Tensor:
    """Eq. 10, the UEM consistency w per image, from p~_n of shape (B, N, C).

    var_c = mean_n p~_n,c^2 - (mean_n p~_n,c)^2;  w = 1 - sum_c var_c.
    Decision: the sum (trace) over classes, so w lies in [1/N, 1] = [0.25, 1]; w = 1
    exactly when all regions agree. Callers pass detached probabilities.
    """
    probs = region_probs.float()
    variance = (probs.square().mean(dim=1) - probs.mean(dim=1).square()).sum(dim=-1)
    return 1.0 - variance


def uncertainty_beta(w: torch.Tensor) -> torch.Tensor:
    """beta = exp(1 - w) - 1, in [0, e^0.75 - 1]: 0 when the regions agree."""
    return torch.exp(1.0 - w) - 1.0


def distillation_loss(region_logits: torch.Tensor, trn_logits: torch.Tensor, beta: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 11, L_KL_tar: mean over images and regions of beta * KL(p~_n || q~), q~ = softmax(z / T).

    Decision: p~_n is detached, so the PIN teaches the TRN and never the reverse.
    The leading minus of the paper's Eq. 11 is a typo.
    """
    teacher_log_probs = F.log_softmax(region_logits.detach().float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(trn_logits.float() / temperature, dim=-1)
    per_region = kl_divergence(teacher_log_probs, student_log_probs[:, None, :])
    return (beta[:, None] * per_region).mean()


def total_loss(output: POIOutput, labels: torch.Tensor, config: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 12: lambda_1 L_AU + lambda_2 L_CE_au + lambda_3 L_CE_tar + T^2 (L_KL_au + L_KL_tar).

    Terms that an ablation removes are absent from the dict (and from the sum). Returns
    the total and the detached terms, for logging.
    """
    terms: dict[str, torch.Tensor] = {"ce_tar": target_ce_loss(output.trn_logits, labels)}
    total = config.lambda_ce_tar * terms["ce_tar"]
    if output.region_logits is not None:  # not the baseline
        t = output.temperature
        terms["ce_au"] = region_ce_loss(output.region_logits, labels)
        total = total + config.lambda_ce_au * terms["ce_au"]
        if output.eye_au_logits is not None:  # prior supervision on
            terms["au"] = au_loss(output.eye_au_logits, output.mouth_au_logits, labels, config.au_eps)
            total = total + config.lambda_au * terms["au"]
        if output.gate_weights is not None:  # OIM on
            terms["kl_au"] = region_kl_loss(output.region_logits, output.gate_weights, t)
            total = total + t * t * terms["kl_au"]
        w = output.uncertainty_w
        beta = uncertainty_beta(w) if config.use_uem else torch.ones_like(w)
        terms["kl_tar"] = distillation_loss(output.region_logits, output.trn_logits, beta, t)
        total = total + t * t * terms["kl_tar"]
        terms["w_mean"] = w.mean()
    terms["total"] = total
    return total, {name: value.detach() for name, value in terms.items()}

