"""The model of the deploy runtime: one ONNX file run by ONNX Runtime, no torch.

    runner = OnnxRunner("model.onnx")      # written by `poi export --format onnx --full`
    outputs = runner.run(faces)            # aligned uint8 faces (N, S, S, 3) -> ModelOutputs

The file carries what prediction needs in its metadata (model/export.py writes it): the
class names, the Preprocessing record (face size, input size, grey or colour, mean, std,
alignment template), T_cal and the PredictionRecipe it was fitted after, so one file is
enough. The graph computes the recipe itself (fusion with the PIN, the mirror); the
recipe is read here to be shown. A full export gives calibrated probabilities,
consistency, AUs, the regions' distributions and (files exported since it was added) the
PIN's objective inference p~*; a TRN-only export gives the logits, calibrated here with
the stored T_cal.

ModelRunner is what the deploy Predictor needs of any runner: this one, or the torch
runner (poi_cli/model/runner.py) that poi_cli/backends.py builds for a `.pt` checkpoint
when torch is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Protocol, Union

import numpy as np

from poi_cli.core.errors import PoiError, one_line
from poi_cli.core.manifests import EYE_AUS
from poi_cli.core.outputs import ModelOutputs, PredictionRecipe
from poi_cli.data.preprocess import Preprocessing

INSTALL_HINT = "pip install poi-fer"  # onnxruntime is a base dependency
SUPPORTED_FORMAT = 1  # model/export.py's ONNX_FORMAT this reader understands


class ModelFileError(PoiError):
    """A model file the deploy runtime cannot use; one-line message naming the file."""


class ModelRunner(Protocol):
    """What the deploy Predictor reads of a model, whatever runs it."""

    path: Path
    backend: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    calibration_temperature: float
    calibrated: bool
    recipe: PredictionRecipe
    has_pin: bool
    has_aus: bool
    has_pin_expression: bool  # the PIN's objective inference p~* (pin_expression): no --no-oim model has it

    def run(self, faces: np.ndarray) -> ModelOutputs: ...


def _metadata_value(meta: dict[str, str], key: str, source: str) -> object:
    if key not in meta:
        raise ModelFileError(f"{source}: not an ONNX file written by `poi export` (its metadata has no {key!r})")
    try:
        return json.loads(meta[key])
    except ValueError:
        raise ModelFileError(f"{source}: metadata {key!r} is not valid JSON") from None


class OnnxRunner:
    """An exported POI model (see the module docstring) on ONNX Runtime's CPU provider.

    model: a path to the .onnx file, or its bytes (name: what messages call it).
    batch_size: faces per session call (bounds memory on a folder of group photos).
    """

    backend = "onnx"

    def __init__(self, model: Union[str, Path, bytes], threads: Optional[int] = None, batch_size: int = 32,
                 name: Optional[str] = None) -> None:
        try:
            import onnxruntime
        except ModuleNotFoundError:
            raise ModelFileError(f"the deploy runtime needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
        except ImportError as error:  # installed but broken: e.g. onnxruntime 1.18.0 under numpy 2
            raise ModelFileError(f"onnxruntime is installed but cannot be imported ({one_line(error)}): reinstall it "
                                 "(pip install --force-reinstall onnxruntime) or a numpy it supports") from None
        from poi_cli.core.threads import onnx_session_options

        self.path = Path(name or "<in memory>") if isinstance(model, bytes) else Path(model)
        source = str(self.path)
        if not isinstance(model, bytes) and not self.path.is_file():
            raise ModelFileError(f"model file not found: {source}")
        try:
            self.session = onnxruntime.InferenceSession(model if isinstance(model, bytes) else source,
                                                        sess_options=onnx_session_options(threads),
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT's own errors: a file that is not ONNX, an unknown operator
            raise ModelFileError(f"{source}: ONNX Runtime cannot load it ({one_line(error)})") from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        version = _metadata_value(meta, "poi_onnx_format", source) if "poi_onnx_format" in meta else SUPPORTED_FORMAT
        if version != SUPPORTED_FORMAT:
            raise ModelFileError(f"{source}: poi ONNX format {version!r}; this poi reads format {SUPPORTED_FORMAT}")
        self.classes = tuple(str(c) for c in _metadata_value(meta, "classes", source))  # type: ignore[union-attr]
        try:
            stored = meta.get("preprocessing")
            self.preprocessing = Preprocessing.from_dict(json.loads(stored) if stored else {
                key: json.loads(meta[key]) for key in ("face_size", "input_size", "grayscale", "mean", "std", "alignment")
                if key in meta})
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{source}: its preprocessing metadata is unusable ({one_line(error)})") from None
        self.calibration_temperature = float(_metadata_value(meta, "calibration_temperature", source))  # type: ignore[arg-type]
        self.calibrated = bool(json.loads(meta.get("calibrated", "true")))
        try:
            self.recipe = PredictionRecipe.from_dict(json.loads(meta["recipe"]) if "recipe" in meta else None)
        except (TypeError, ValueError, AttributeError) as error:
            raise ModelFileError(f"{source}: its recipe metadata is unusable ({one_line(error)})") from None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_pin = "consistency" in self.output_names
        self.has_aus = "aus" in self.output_names
        self.has_pin_expression = "pin_probabilities" in self.output_names  # absent from files exported before it
        if not self.has_pin and "logits" not in self.output_names:
            raise ModelFileError(f"{source}: outputs {self.output_names} are neither a full nor a TRN export")
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size
        self.meta = meta

    def run(self, faces: np.ndarray) -> ModelOutputs:
        """Aligned uint8 faces (N, face_size, face_size, 3) -> ModelOutputs."""
        parts = []
        for start in range(0, len(faces), self.batch_size):
            x = self.preprocessing.model_input_array(faces[start:start + self.batch_size])
            values = dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))
            if not self.has_pin:
                parts.append(ModelOutputs(softmax(values["logits"], self.calibration_temperature)))
                continue
            aus, eye_count = values.get("aus"), len(EYE_AUS)  # exported as the eye AUs, then the mouth AUs
            parts.append(ModelOutputs(
                probabilities=values["probabilities"], consistency=values["consistency"],
                eye_aus=None if aus is None else aus[..., :eye_count],
                mouth_aus=None if aus is None else aus[..., eye_count:],
                region_probabilities=values["region_probabilities"],
                pin_probabilities=values.get("pin_probabilities"),  # absent from files exported before it
            ))
        return ModelOutputs.concatenate(parts, len(self.classes))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) over the last axis, float32 (computed in float64: stable for tiny T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def written_by_torch_save(path: Path) -> bool:
    """Whether a file starts as torch.save writes one (a zip archive; a pickle before torch 1.6),
    told without torch, so that the deploy runtime does not ask to install torch for a photo."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return True  # unreadable: the runner says why
    return head == b"PK\x03\x04" or head[:1] == b"\x80"
