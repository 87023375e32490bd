"""A checkpoint run by PyTorch for prediction (`poi predict --backend torch`, a `.pt` model).

The deploy runtime (poi_cli/deploy) never imports this module: the CLI's backend choice
(poi_cli/backends.py) builds a TorchRunner and hands it to the deploy Predictor, which
uses it exactly as it uses the ONNX Runtime runner (deploy/runner.py): the same
attributes, `run(faces) -> core.outputs.ModelOutputs` on aligned uint8 faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from poi_cli.core.errors import PoiError, one_line
from poi_cli.core.outputs import ModelOutputs
from poi_cli.data.preprocess import Preprocessing
from poi_cli.model.checkpoint import CheckpointError, CheckpointInfo, load_model
from poi_cli.model.reporting import Reporting


class TorchRunnerError(PoiError):
    """A checkpoint that cannot be run (unreadable, inconsistent, device missing); one line."""


class TorchRunner:
    """A POI checkpoint in eval mode on a torch device.

    path, backend ("torch"), classes, preprocessing, calibration_temperature, recipe,
    has_pin, has_aus and notes are what the deploy Predictor reads; run() maps aligned uint8
    faces (N, face_size, face_size, 3) to what model/reporting.Reporting computes (the
    checkpoint's recipe and T_cal, as the exported graph does): calibrated probabilities,
    consistency, AUs, the regions' distributions and the PIN's p~*.
    """

    backend = "torch"

    def __init__(self, checkpoint: str | Path, device: str = "cpu", batch_size: int = 32) -> None:
        self.path = Path(checkpoint)
        try:
            self.device = torch.device(device)
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise TorchRunnerError("--device cuda: no CUDA GPU is visible to PyTorch")
            self.model, checkpoint_dict = load_model(self.path, self.device)
            self.info = CheckpointInfo.of(checkpoint_dict)
        except (CheckpointError, RuntimeError, ValueError, KeyError, TypeError) as error:
            raise TorchRunnerError(one_line(error)) from None
        config = self.model.config
        self.classes: tuple[str, ...] = tuple(self.info.classes)
        if len(self.classes) != config.num_classes:
            raise TorchRunnerError(f"{self.path}: {len(self.classes)} class names for a {config.num_classes}-class model")
        self.preprocessing: Preprocessing = self.info.preprocessing
        self.calibration_temperature = self.info.calibration_temperature
        self.calibrated = self.info.calibration is not None
        self.recipe = self.info.recipe
        self.has_pin = self.model.pin is not None
        self.has_aus = self.has_pin and config.prior_supervision
        self.has_pin_expression = self.has_pin and config.use_oim
        try:
            self.reporting = Reporting(self.model, self.recipe, self.calibration_temperature, with_pin=self.has_pin)
        except ValueError as error:  # a recipe the model cannot run (a hand-edited checkpoint)
            raise TorchRunnerError(f"{self.path}: {one_line(error)}") from None
        self.batch_size = batch_size
        self.device_name = str(self.device)  # what the torch detector (mtcnn-torch) runs on

    @torch.no_grad()
    def run(self, faces: np.ndarray) -> ModelOutputs:
        """Aligned uint8 faces (N, S, S, 3) -> ModelOutputs (numpy, in batches of batch_size)."""
        parts = []
        for start in range(0, len(faces), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(faces[start:start + self.batch_size])).to(self.device)
            out = self.reporting(self.preprocessing.model_input(batch))
            numpy = lambda t: None if t is None else t.float().cpu().numpy()  # noqa: E731
            parts.append(ModelOutputs(
                probabilities=numpy(out.probabilities), consistency=numpy(out.consistency),
                eye_aus=numpy(out.eye_aus), mouth_aus=numpy(out.mouth_aus),
                # the regions' distributions of Eq. 10, from which consistency is computed
                region_probabilities=numpy(out.region_probabilities), pin_probabilities=numpy(out.pin_probabilities),
            ))
        return ModelOutputs.concatenate(parts, len(self.classes))
