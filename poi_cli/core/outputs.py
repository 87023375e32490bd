"""What a model runner gives prediction for a batch of aligned faces, whatever runs it.

The deploy runtime's ONNX Runtime runner (poi_cli/deploy/runner.py) and the torch runner
(poi_cli/model/runner.py) both return a ModelOutputs, so prediction builds its records
with one function and the two backends can be compared array by array.

PredictionRecipe is how a model's reported probabilities are made (POI_SPEC 4b): the
TRN alone or fused with the PIN's objective inference, on the image alone or on the
image and its mirror. It is chosen on validation by `poi calibrate`, stored in the
checkpoint with T_cal (model/calibration.Calibration) and in an exported file's metadata,
and computed in one place (model/reporting.py); this module holds the torch-free record
that both the checkpoint and the ONNX reader parse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import numpy as np

FUSION_TRN, FUSION_TRN_PIN = "trn", "trn+pin"
FUSIONS = (FUSION_TRN, FUSION_TRN_PIN)
T_RANGE = (0.05, 20.0)  # a fitted T_cal is clipped to this; one at its edge says the logits are broken


def clipped_temperature_caveat(temperature: float) -> Optional[str]:
    """Why a T_cal at the edge of T_RANGE means little (calibrate, evaluate and predict say it), or None."""
    if T_RANGE[0] < temperature < T_RANGE[1]:
        return None
    return (f"T_cal {temperature:g} is clipped at the edge of its range {T_RANGE[0]:g}..{T_RANGE[1]:g}: the "
            "model's outputs do not calibrate (a broken or degenerate model), confidence means little")


@dataclass(frozen=True)
class PredictionRecipe:
    """How the reported probabilities are made, before temperature scaling (POI_SPEC 4b).

    fusion "trn": q = softmax(z), the TRN's; "trn+pin": the mean of q and the PIN's
    objective inference p~* at T = 1 (Eq. 7). flip: the mean over the image and its
    horizontal mirror. The default (trn, no flip) is what every model did before recipes
    existed; T_cal is fitted after the recipe: probabilities = softmax(log p / T_cal).
    """

    fusion: str = FUSION_TRN
    flip: bool = False

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be true or false, got {self.flip!r}")

    @property
    def uses_pin(self) -> bool:
        return self.fusion == FUSION_TRN_PIN

    @property
    def cost(self) -> tuple[bool, bool]:
        """Sorts recipes cheapest first: a mirror doubles the network's work, the PIN's heads add to it."""
        return self.flip, self.uses_pin

    def describe(self) -> str:
        """`TRN + PIN, image and mirror` (what the CLI prints)."""
        return f"{'TRN + PIN' if self.uses_pin else 'TRN'}, {'image and mirror' if self.flip else 'image alone'}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]]) -> "PredictionRecipe":
        """The one reader (checkpoints and ONNX metadata); None or {} (older files): the default."""
        if not values:
            return cls()
        return cls(fusion=values.get("fusion", FUSION_TRN), flip=values.get("flip", False))


def regions_agreeing(region_scores: np.ndarray, predicted: np.ndarray | int) -> np.ndarray:
    """POI_SPEC 4b `regions_agree`: how many of the four regions' own expressions (argmax of
    t_n, Eq. 6: the same for any softmax temperature, so logits or probabilities will do)
    equal the predicted class, 0-4; region_scores (..., 4, C), predicted (...)."""
    own = np.asarray(region_scores).argmax(-1)
    return (own == np.asarray(predicted)[..., None]).sum(-1)


@dataclass
class ModelOutputs:
    """Per-face outputs, numpy float32, one row per face (POI_SPEC section 4b).

    probabilities: (N, C) the calibrated probabilities, softmax(log p / T_cal) with p the
        PredictionRecipe's distribution (the TRN's softmax(z / T_cal) under the default).
    consistency: (N,) the UEM's w of Eq. 10; None for a model without a PIN (baseline).
    eye_aus: (N, 2, 6) and mouth_aus: (N, 2, 7) AU occurrence probabilities of the
        [image-left, image-right] regions; None for a model without AU nets.
    region_probabilities: (N, 4, C) p_n = softmax(t_n / T_uem) of the four regions in
        core.manifests.REGION_NAMES order; None without a PIN. Like consistency and the
        AUs, of the image as given (never of its mirror).
    pin_probabilities: (N, C) the PIN's objective inference p~* at T = 1 (Eq. 7) of the
        image as given, like the regions' outputs; None without it (a baseline,
        a model without OIM, or an ONNX file exported before it was an output).
    """

    probabilities: np.ndarray
    consistency: Optional[np.ndarray] = None
    eye_aus: Optional[np.ndarray] = None
    mouth_aus: Optional[np.ndarray] = None
    region_probabilities: Optional[np.ndarray] = None
    pin_probabilities: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.probabilities)

    @classmethod
    def concatenate(cls, parts: "list[ModelOutputs]", num_classes: int) -> "ModelOutputs":
        """The batches of one call joined in order (an empty list: zero faces)."""
        if not parts:
            return cls(np.zeros((0, num_classes), np.float32))

        def join(name: str) -> Optional[np.ndarray]:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else np.concatenate(values)

        return cls(*(join(name) for name in ("probabilities", "consistency", "eye_aus", "mouth_aus",
                                              "region_probabilities", "pin_probabilities")))
