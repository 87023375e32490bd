"""POI losses, one function per equation (paper Eq. 4-12, typos fixed per POI_SPEC section 4).

Each function is named after its term: the names of results.csv's columns (loss_au,
loss_ce_au, loss_kl_au, loss_ce_tar, loss_kl_tar) and of the lambdas of Eq. 12;
loss_kl_teacher (--teacher) is beyond the paper.
Shapes: B images, N = 4 regions, C classes. `labels` are the annotated (possibly noisy)
class indices (B,), or (B, C) class distributions (`poi train --soft-labels`: the annotators'
votes), where y of Eq. 4, 5 and 9 becomes that distribution: the cross-entropies are taken
against it and the AU pseudo-labels are the prior rows it weighs (beyond the paper).
Every KL here is KL(p || q) = sum_c p_c log(p_c / q_c) >= 0. The PIN's outputs (p~_n of
Eq. 6, p~* of Eq. 7, w of Eq. 10, beta) come from model/network.py.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from poi_cli.core.manifests import au_prior_matrix
from poi_cli.model.loss_config import LossConfig
from poi_cli.model.network import POIOutput, tempered_log_probs, uncertainty_beta


def au_targets(labels: torch.Tensor, group: str, eps: float) -> torch.Tensor:
    """AU pseudo-labels y_hat from Table I: 1 - eps for the AUs of the label, eps otherwise.

    (B,) labels -> (B, M) targets for group 'eye' (6 AUs) or 'mouth' (7 AUs); (B, C) class
    distributions -> the same rule on their mix of Table I's rows (sum_c y_c prior_c).
    """
    table = torch.from_numpy(au_prior_matrix(group).copy()).to(labels.device)
    prior = table[labels] if labels.dim() == 1 else labels.float() @ table[: labels.shape[1]]  # class order is canonical
    return prior * (1.0 - eps) + (1.0 - prior) * eps


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, from log-probabilities (stable where p is tiny)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def loss_au(eye_au_logits: torch.Tensor, mouth_au_logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 4, L_AU: BCE between p_hat and y_hat, mean over images, regions and AUs.

    (The paper's "log(1 - log p)" is a typo for log(1 - p).) Eye and mouth AUs are
    pooled so that each (image, region, AU) term has the same weight.
    """
    terms = []
    for logits, group in ((eye_au_logits, "eye"), (mouth_au_logits, "mouth")):
        targets = au_targets(labels, group, eps)[:, None, :].expand_as(logits)
        terms.append(F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").flatten(1))
    return torch.cat(terms, dim=1).mean()


def loss_ce_au(region_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 5, L_CE_au: cross-entropy of softmax(t_n) (no T) against y, mean over images and regions."""
    num_regions = region_logits.shape[1]
    return F.cross_entropy(region_logits.float().flatten(0, 1), labels.repeat_interleave(num_regions, dim=0))


def loss_kl_au(intermediate_log_probs: torch.Tensor, region_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 8, L_KL_au: mean over images and regions of KL(p~* || p~_n), p~_n = softmax(t_n / T).

    No stop-gradient (Decision: deep mutual learning, regions and gate both learn).
    The leading minus of the paper's Eq. 8 is a typo.
    """
    region_log_probs = tempered_log_probs(region_logits, temperature)
    return kl_divergence(intermediate_log_probs[:, None, :], region_log_probs).mean()


def loss_ce_tar(trn_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 9, L_CE_tar: cross-entropy of q = softmax(z) (no T) against y."""
    return F.cross_entropy(trn_logits.float(), labels)


def loss_kl_tar(region_logits: torch.Tensor, trn_logits: torch.Tensor, beta: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 11, L_KL_tar: mean over images and regions of beta * KL(p~_n || q~), q~ = softmax(z / T).

    Decision: p~_n is detached, so the PIN teaches the TRN and never the reverse.
    The leading minus of the paper's Eq. 11 is a typo.
    """
    teacher_log_probs = tempered_log_probs(region_logits.detach(), temperature)
    student_log_probs = tempered_log_probs(trn_logits, temperature)
    per_region = kl_divergence(teacher_log_probs, student_log_probs[:, None, :])
    return (beta[:, None] * per_region).mean()


def loss_kl_teacher(teacher_log_probs: torch.Tensor, trn_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_KL_teacher (beyond the paper, --teacher): mean over images of KL(p_teacher || q~), q~ = softmax(z / T).

    Eq. 11's form with a frozen teacher in place of the run's own PIN: a model trained
    before (the previous cleaning round) teaches the TRN. `teacher_log_probs` are already
    at T and carry no gradient.
    """
    return kl_divergence(teacher_log_probs, tempered_log_probs(trn_logits, temperature)).mean()


def total_loss(output: POIOutput, labels: torch.Tensor, config: LossConfig, distill: float = 1.0,
               teacher_log_probs: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 12: lambda_1 L_AU + lambda_2 L_CE_au + lambda_3 L_CE_tar + T^2 (L_KL_au + distill L_KL_tar),
    plus T^2 teacher_weight L_KL_teacher when a teacher's log-probabilities at T are given.

    Terms that an ablation removes are absent from the dict (and from the sum). `distill`
    scales the PIN -> TRN distillation (Eq. 11) only: 0 during a distillation warm-up
    (--distill-warmup; the paper's Eq. 12 is distill = 1), while the PIN still learns and
    L_KL_tar is still logged. Returns the total and the detached terms, for logging
    (w_mean: the mean UEM w of the batch).
    """
    terms: dict[str, torch.Tensor] = {"ce_tar": loss_ce_tar(output.trn_logits, labels)}
    total = config.lambda_ce_tar * terms["ce_tar"]
    if output.region_logits is not None:  # not the baseline
        t = output.temperature
        terms["ce_au"] = loss_ce_au(output.region_logits, labels)
        total = total + config.lambda_ce_au * terms["ce_au"]
        if output.eye_au_logits is not None:  # prior supervision on
            terms["au"] = loss_au(output.eye_au_logits, output.mouth_au_logits, labels, config.au_eps)
            total = total + config.lambda_au * terms["au"]
        if output.intermediate_log_probs is not None:  # OIM on
            terms["kl_au"] = loss_kl_au(output.intermediate_log_probs, output.region_logits, t)
            total = total + t * t * terms["kl_au"]
        w = output.consistency
        beta = uncertainty_beta(w) if config.use_uem else torch.ones_like(w)
        terms["kl_tar"] = loss_kl_tar(output.region_logits, output.trn_logits, beta, t)
        total = total + distill * t * t * terms["kl_tar"]
        terms["w_mean"] = w.mean()
    if teacher_log_probs is not None:  # T^2 as in Hinton et al.'s distillation and Eq. 12
        t = output.temperature
        terms["kl_teacher"] = loss_kl_teacher(teacher_log_probs, output.trn_logits, t)
        total = total + config.teacher_weight * t * t * terms["kl_teacher"]
    terms["total"] = total
    return total, {name: value.detach() for name, value in terms.items()}
