"""`poi predict --backend onnx`: the model run by ONNX Runtime on CPU instead of PyTorch.

At start the checkpoint's model is exported in memory, exactly as `poi export --full`
writes it (export.export_module + export.onnx_bytes: the whole model with calibrated
probabilities, consistency, AUs and the regions' distributions; the deployed TRN's
logits for a baseline model, which has nothing else), and loaded into an ONNX Runtime
session with poi's thread settings (core.threads.onnx_session_options). Nothing is
written to disk.

OnnxModel.run takes the same normalised batch the torch path feeds the model
(Preprocessing.model_input) and returns the same arrays, under the same keys, as
Predictor's torch path, so records are built by the same code (predict.face_record).
ONNX Runtime and PyTorch agree to about 1e-5 on probabilities, consistency and AUs
(tests/test_onnx_backend.py checks real faces against a stated tolerance).

onnxruntime is optional (the `export` extra): without it, OnnxBackendError says how
to install it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from poi_cli.core.errors import PoiError, one_line
from poi_cli.core.manifests import EYE_AUS
from poi_cli.model.network import POIModel

INSTALL_HINT = "pip install 'poi-fer[export]'"
KEYS = ("probs", "w", "eye", "mouth", "regions")  # Predictor's per-batch outputs, in this order


class OnnxBackendError(PoiError):
    """--backend onnx cannot start (onnxruntime missing, export failed); one-line message."""


class OnnxModel:
    """A POI model exported to ONNX and run by ONNX Runtime (CPU).

    run(x) with x the normalised float batch (N, 3, S, S) -> {"probs", "w", "eye", "mouth",
    "regions"}: numpy arrays, or None where the model has no such output (no PIN, no AUs).
    """

    def __init__(self, model: POIModel, calibration_temperature: float, threads: Optional[int] = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise OnnxBackendError(f"--backend onnx needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
        from poi_cli.core.threads import onnx_session_options
        from poi_cli.inference.export import export_module, onnx_bytes

        self.full = model.pin is not None  # a baseline model has only the TRN's logits to export
        self.with_aus = self.full and model.config.prior_supervision
        self.calibration_temperature = float(calibration_temperature)
        module, self.output_names = export_module(model, self.calibration_temperature, self.full)
        size = model.config.input_size
        example = torch.zeros(2, 3, size, size)
        try:
            data = onnx_bytes(module, example, self.output_names)
            self.session = onnxruntime.InferenceSession(data, sess_options=onnx_session_options(threads),
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # an operator the exporter or runtime lacks: say so in one line
            raise OnnxBackendError(f"--backend onnx: exporting the model failed: {one_line(error)}") from None

    def run(self, x: torch.Tensor) -> dict[str, Optional[np.ndarray]]:
        """One normalised batch through ONNX Runtime; Predictor's keys (see the class docstring)."""
        values = dict(zip(self.output_names, self.session.run(None, {"input": x.float().contiguous().numpy()})))
        if not self.full:
            logits = values["logits"].astype(np.float64) / self.calibration_temperature
            logits -= logits.max(-1, keepdims=True)
            probs = np.exp(logits)
            probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
            return {"probs": probs, "w": None, "eye": None, "mouth": None, "regions": None}
        aus, eye_count = values.get("aus"), len(EYE_AUS)  # exported as the eye AUs, then the mouth AUs
        return {
            "probs": values["probabilities"], "w": values["consistency"],
            "eye": None if aus is None else aus[..., :eye_count],
            "mouth": None if aus is None else aus[..., eye_count:],
            "regions": values["region_probabilities"],
        }

