"""What a model runner gives prediction for a batch of aligned faces, whatever runs it.

The deploy runtime's ONNX Runtime runner (poi_cli/deploy/runner.py) and the torch runner
(poi_cli/model/runner.py) both return a ModelOutputs, so prediction builds its records
with one function and the two backends can be compared array by array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class ModelOutputs:
    """Per-face outputs, numpy float32, one row per face (POI_SPEC section 4b).

    probabilities: (N, C) the TRN's calibrated softmax(z / T_cal).
    consistency: (N,) the UEM's w of Eq. 10; None for a model without a PIN (baseline).
    eye_aus: (N, 2, 6) and mouth_aus: (N, 2, 7) AU occurrence probabilities of the
        [image-left, image-right] regions; None for a model without AU nets.
    region_probabilities: (N, 4, C) p_n = softmax(t_n / T_uem) of the four regions in
        core.manifests.REGION_NAMES order; None without a PIN.
    """

    probabilities: np.ndarray
    consistency: Optional[np.ndarray] = None
    eye_aus: Optional[np.ndarray] = None
    mouth_aus: Optional[np.ndarray] = None
    region_probabilities: Optional[np.ndarray] = None

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
                                              "region_probabilities")))
