"""What prediction reports (POI_SPEC section 4b), in torch: a PredictionRecipe
(core/outputs.py) applied to the network's outputs, then temperature scaling.

    reporting = Reporting(model, recipe, calibration_temperature)   # an nn.Module
    reported = reporting(images)    # Reported: probabilities, pin_probabilities, consistency, AUs, regions

The one implementation of a recipe: the torch runner (model/runner.py) runs Reporting, the
exported graph (model/export.FullModel) wraps it, so an .onnx file computes the recipe
itself and the deploy runtime needs nothing more, and calibration and evaluation apply
recipe_log_probs to the outputs they kept of a split (model/predictions.SplitPredictions).

    log p = log mean_v [softmax(z_v)]                       fusion "trn"
    log p = log mean_v [(softmax(z_v) + p~*_v(T = 1)) / 2]  fusion "trn+pin"
    probabilities = softmax(log p / T_cal)                  T_cal fitted after the fusion

v runs over the views: the image, and its horizontal mirror when the recipe flips. The
regions' outputs (consistency, AUs, region distributions, p~* for pin_expression) are always
the image's own; the mirror goes through the PIN only when the fusion uses p~*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from poi_cli.core.outputs import FUSION_TRN_PIN, PredictionRecipe
from poi_cli.model.network import POIModel, POIOutput, intermediate_log_probs, tempered_log_probs

OBJECTIVE_TEMPERATURE = 1.0  # p~* enters the fusion and pin_expression at T = 1: the TRN's probability scale


def mirrored(images: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror of a batch of faces (N, 3, S, S): the recipe's flip."""
    return images.flip(-1)


def objective_log_probs(region_logits: Optional[torch.Tensor], gate_weights: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """log p~* at T = 1 (Eq. 7 with T = 1): the PIN's objective inference on the scale of
    q = softmax(z), (B, C); None without it (a baseline, or a model without OIM)."""
    if region_logits is None or gate_weights is None:
        return None
    return intermediate_log_probs(region_logits, gate_weights, OBJECTIVE_TEMPERATURE)


def log_mean(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """log of the mean of K distributions given as log-probabilities (K x (B, C)) -> (B, C):
    a mixture, never a product (POI_SPEC 4b: the reported distribution is a mean)."""
    return torch.logsumexp(torch.stack([t.float() for t in log_probs]), dim=0) - math.log(len(log_probs))


def recipe_log_probs(trn_logits: Sequence[torch.Tensor], objective: Sequence[Optional[torch.Tensor]],
                     fusion: str) -> torch.Tensor:
    """POI_SPEC 4b, log p: the reported distribution before T_cal (see the module docstring).

    trn_logits: z of each view (the image, then its mirror under flip), (B, C) each;
    objective: log p~* at T = 1 of each view (objective_log_probs), used by fusion "trn+pin"."""
    parts = [F.log_softmax(z.float(), dim=-1) for z in trn_logits]
    if fusion == FUSION_TRN_PIN:
        if any(o is None for o in objective) or len(objective) != len(trn_logits):
            raise ValueError("fusion trn+pin needs the PIN's objective inference p~* of every view")
        parts += [o for o in objective if o is not None]
    return log_mean(parts)


def calibrated_probs(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T_cal): temperature scaling, after the fusion (POI_SPEC 4b)."""
    return (log_probs / temperature).softmax(dim=-1)


@dataclass
class Reported:
    """What Reporting gives for a batch; the PIN fields are None for a baseline model."""

    log_probs: torch.Tensor  # log p before T_cal, (B, C)
    probabilities: torch.Tensor  # softmax(log p / T_cal), (B, C)
    pin_probabilities: Optional[torch.Tensor] = None  # p~* at T = 1 of the image, (B, C)
    consistency: Optional[torch.Tensor] = None  # the UEM's w (Eq. 10), (B,)
    eye_aus: Optional[torch.Tensor] = None  # (B, 2, 6)
    mouth_aus: Optional[torch.Tensor] = None  # (B, 2, 7)
    region_probabilities: Optional[torch.Tensor] = None  # p_n = softmax(t_n / T_uem), (B, 4, C)


class Reporting(nn.Module):
    """A POIModel with its recipe and T_cal: normalised faces (B, 3, S, S) -> Reported.

    with_pin: also give the regions' outputs (consistency, AUs, region distributions, p~*);
    the PIN runs anyway when the recipe fuses it. Under flip the image and its mirror go
    through the trunk and TRN as one batch of 2B, through the PIN only when it is fused.
    """

    def __init__(self, model: POIModel, recipe: PredictionRecipe = PredictionRecipe(),
                 calibration_temperature: float = 1.0, with_pin: bool = True) -> None:
        super().__init__()
        has_objective = model.pin is not None and model.pin.oim is not None
        if recipe.uses_pin and not has_objective:
            raise ValueError("fusion trn+pin needs the PIN's objective inference p~*: this model has none "
                             "(a baseline, or trained without OIM)")
        self.model, self.recipe = model, recipe
        self.calibration_temperature = float(calibration_temperature)
        self.run_pin = model.pin is not None and (with_pin or recipe.uses_pin)

    def forward(self, images: torch.Tensor) -> Reported:
        n = images.shape[0]
        batch = torch.cat([images, mirrored(images)]) if self.recipe.flip else images
        # The mirror goes through the PIN only when the fusion needs its p~*: what is reported
        # of the regions is the image's own, so otherwise the PIN's heads run once per face.
        out: POIOutput = self.model(batch, with_pin=self.run_pin, pin_rows=None if self.recipe.uses_pin else n)
        views = (slice(0, n), slice(n, None)) if self.recipe.flip else (slice(None),)
        objective = objective_log_probs(out.region_logits, out.gate_weights)
        log_probs = recipe_log_probs([out.trn_logits[v] for v in views],
                                     [None if objective is None else objective[v] for v in views], self.recipe.fusion)
        reported = Reported(log_probs=log_probs, probabilities=calibrated_probs(log_probs, self.calibration_temperature))
        if not self.run_pin:
            return reported
        own = slice(0, n)  # the regions' outputs (pin_expression's p~* among them) of the image as given
        if objective is not None:
            reported.pin_probabilities = objective[own].exp()
        reported.consistency = out.consistency[own]
        if out.eye_au_logits is not None:
            reported.eye_aus, reported.mouth_aus = out.eye_au_probs[own], out.mouth_au_probs[own]
        reported.region_probabilities = tempered_log_probs(out.region_logits[own], self.model.config.uem_temperature).exp()
        return reported
