"""`poi export`: a trained model as ONNX, TorchScript or packed fp16 weights, checked
against PyTorch.

format="weights" packs a checkpoint for shipping (the bundled model in poi_cli/weights/
is one): the whole model's weights (TRN and PIN) in fp16, with the model config, class
names and provenance, but no optimizer state, RNG state or history. It is still a poi
checkpoint: `poi predict --model`, `poi evaluate` and load_model read it (the weights are
cast back to float32 on load), and torch.load(weights_only=True) opens it. ResNet-18's
TRN + PIN is about 29 MB this way, ResNet-10's about 16.5 MB.

By default the deployed TRN alone (the paper drops the PIN at inference): input a
normalised face batch (N, 3, S, S), output the logits (N, C). Under a checkpoint's
PredictionRecipe other than the TRN alone on the image alone (POI_SPEC 4b), the "logits"
are the recipe's log p instead (softmax(log p / T_cal) is then what softmax(z / T_cal) was),
and the deployed graph includes what the recipe needs: the PIN's heads for fusion
trn+pin, a second pass of the trunk and TRN over the mirror for flip (of the PIN too
when it is fused). With full=True the whole model,
returning what `poi predict` reports (model/reporting.py computes it):

    probabilities          (N, C)     softmax(log p / T_cal): p the checkpoint's recipe (softmax(z) by
                                      default), T_cal its calibration (1 if none)
    confidence             (N,)       the largest calibrated probability
    consistency            (N,)       the UEM's w of Eq. 10, in [0, 1]
    aus                    (N, 2, 13) AU occurrence probabilities; [:, 0] image-left,
                                      [:, 1] image-right regions; the 6 eye AUs (from
                                      the eye regions) then the 7 mouth AUs (from the
                                      mouth regions), in poi_cli.core.manifests order
    region_probabilities   (N, 4, C)  p_n = softmax(t_n / T_uem) of left_eye, right_eye, left_mouth,
                                      right_mouth (the distributions consistency is computed from)
    pin_probabilities      (N, C)     the PIN's objective inference p~* at T = 1 (Eq. 7) of the image
                                      (never its mirror's); not for a model without OIM

Input preprocessing (what the exported file expects), the checkpoint's Preprocessing
(poi_cli.data.preprocess): a face aligned by poi_cli.data.faces.align_face at face_size
(grey when grayscale, as RGB), resized to the model's input size, scaled to [0, 1],
then normalised with mean and std (ImageNet's). Both formats carry this as metadata
(ONNX metadata_props, TorchScript extra file `poi.json`), with the class names:
input_size, mean, std, face_size, grayscale, alignment.

The file is written under a temp name beside its target, loaded back (onnxruntime /
torch.jit) and run on a random batch of a different size than the one traced; the largest
difference from PyTorch is returned, and only a file within the tolerance takes the target's
name. onnx and onnxruntime come with the train extra: pip install 'poi-fer[train]'.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn

from poi_cli.core.errors import TRAIN_EXTRA_HINT, PoiError
from poi_cli.core.atomic import atomic_write, is_stream, output_file, refuse_input_as_output, temp_beside
from poi_cli.core.locks import claim
from poi_cli.core.manifests import ALL_AUS, REGIONS
from poi_cli.core.outputs import PredictionRecipe
from poi_cli.model.checkpoint import (CheckpointError, CheckpointInfo, build_checkpoint, checkpoint_inputs, checkpoint_marked, load_model,
                                   resolve_checkpoint, torch_archive_kind, zip_member_names)
from poi_cli.model.network import POIModel
from poi_cli.model.reporting import Reporting

if TYPE_CHECKING:
    import onnx

FORMATS = ("onnx", "torchscript", "weights")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "weights": ".fp16.pt"}
# fp16 weights carry ~3 significant digits; their outputs differ from float32 by ~1e-3.
DEFAULT_TOLERANCE = {"onnx": 1e-3, "torchscript": 1e-3, "weights": 1e-2}
TRACE_BATCH, CHECK_BATCH = 2, 3  # checking on another batch size proves the batch axis is free


class ExportError(PoiError):
    """An export that cannot be done; one-line message."""


def max_opset() -> Optional[int]:
    """The highest ONNX opset the installed torch.onnx exporter writes (23 in torch 2.15; None when
    torch does not say): above it the exporter fails only after printing the whole graph."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return None
    highest = getattr(_constants, "ONNX_MAX_OPSET", None)
    return highest if isinstance(highest, int) else None


class FullModel(nn.Module):
    """The whole POI model with plain tensor outputs (see the module docstring): Reporting's."""

    def __init__(self, model: POIModel, calibration_temperature: float = 1.0,
                 recipe: PredictionRecipe = PredictionRecipe()) -> None:
        super().__init__()
        self.reporting = Reporting(model, recipe, calibration_temperature)
        self.with_aus = model.config.prior_supervision
        self.with_objective = model.pin is not None and model.pin.oim is not None

    @property
    def output_names(self) -> list[str]:
        return ["probabilities", "confidence", "consistency", *(["aus"] if self.with_aus else []),
                "region_probabilities", *(["pin_probabilities"] if self.with_objective else [])]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.reporting(images)
        outputs = [out.probabilities, out.probabilities.amax(-1), out.consistency]
        if self.with_aus:
            outputs.append(torch.cat([out.eye_aus, out.mouth_aus], dim=-1))
        outputs.append(out.region_probabilities)
        if self.with_objective:
            outputs.append(out.pin_probabilities)
        return tuple(outputs)


class RecipeLogits(nn.Module):
    """The deployed model of a recipe other than the TRN alone on the image alone: its log p,
    output as "logits" (softmax(log p / T_cal) is the calibrated distribution)."""

    def __init__(self, model: POIModel, recipe: PredictionRecipe) -> None:
        super().__init__()
        self.reporting = Reporting(model, recipe, with_pin=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.reporting(images).log_probs


@dataclass
class ExportResult:
    path: Path  # written only when the check passed (`passed`); else nothing is, and a file there stays
    format: str
    full: bool
    input_shape: tuple[int, ...]  # of the parity check
    output_names: list[str]
    # |exported - PyTorch| / max(1, |PyTorch|): absolute for probabilities, relative for large logits (an
    # undertrained model's logits on random input reach 1e11, where float32 itself differs by 1e4)
    max_diff: float
    per_output_diff: dict[str, float]
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_diff <= self.tolerance


def default_output_path(checkpoint_path: Path, format: str, full: bool) -> Path:
    """best.pt -> best.trn.onnx / best.full.torchscript.pt / best.fp16.pt beside it."""
    if format == "weights":
        return checkpoint_path.with_name(f"{checkpoint_path.stem}{SUFFIXES[format]}")
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.{'full' if full else 'trn'}{SUFFIXES[format]}")


def packed_checkpoint(checkpoint: dict, source: Optional[Path] = None) -> dict:
    """A training checkpoint reduced to what prediction needs (no optimizer, history or
    RNG state), floating weights in fp16; an old checkpoint gains its derived preprocessing."""
    info = CheckpointInfo.of(checkpoint)
    weights = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in checkpoint["model"].items()}
    return build_checkpoint(
        model=weights, model_config=info.model_config, classes=info.classes, preprocessing=info.preprocessing,
        epoch=info.epoch or 0, config=info.config, best_val_acc=info.best_val_acc, best_epoch=info.best_epoch,
        val_acc=info.val_acc, resolved=info.resolved, packed={"dtype": "float16", "source": source.name if source else None},
        calibration=info.calibration,
    )


# An output added since (pin_probabilities) or a recipe in the metadata is no format
# change: a reader finds the outputs by name, and the graph computes the recipe itself.
ONNX_FORMAT = 1  # metadata "poi_onnx_format": what deploy/runner.py reads (bump on an incompatible change)


def is_poi_export(path: str | Path) -> bool:
    """Whether a file is one `poi export` writes: a TorchScript export (its extra file poi.json),
    packed fp16 weights (a checkpoint carrying `packed`) or an ONNX export (poi's metadata:
    poi_onnx_format, or classes and preprocessing in exports older than that key): what an
    existing `--out` must be before it is replaced (a re-export, in any format). Read from the
    zip's member names, the checkpoint's keys (tensors memory-mapped) or the ONNX graph's
    metadata, and only for a file that opens as ONNX's protobuf does (0x08: ir_version)."""
    names = zip_member_names(path)
    kind = torch_archive_kind(names)
    if kind == "torchscript":
        return any(name.endswith("/extra/poi.json") for name in names)
    if kind == "torch.save":
        return checkpoint_marked(path, "packed")
    try:
        with open(path, "rb") as handle:
            if handle.read(1) != b"\x08":
                return False
        import onnx

        keys = {entry.key for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # not ONNX (onnx raises DecodeError, ValueError, ... for other bytes), or no onnx package
        return False
    return "poi_onnx_format" in keys or {"classes", "preprocessing"} <= keys


def _metadata(info: CheckpointInfo, output_names: list[str], full: bool) -> dict:
    """What a deploy runtime needs besides the graph, stored as JSON strings in the file's
    metadata_props: one .onnx file is enough to predict (deploy/runner.py reads it)."""
    pre, size = info.preprocessing, info.input_size
    meta = {
        "poi_onnx_format": ONNX_FORMAT,
        "classes": list(info.classes), "input_size": size, "input": f"float32 (N, 3, {size}, {size})",
        "preprocessing": pre.to_dict(),
        "preprocessing_text": "face aligned by poi_cli.data.faces.align_face, RGB, /255, then (x - mean) / std",
        "mean": list(pre.mean), "std": list(pre.std), "outputs": output_names,
        "model": "full POI (TRN + PIN)" if full else "deployed TRN (logits)" if info.recipe == PredictionRecipe()
        else f"deployed model of the recipe {info.recipe.describe()} (its log p as logits)",
        "face_size": pre.face_size, "grayscale": pre.grayscale, "alignment": pre.alignment,
        "calibration_temperature": info.calibration_temperature, "calibrated": info.calibration is not None,
        "recipe": info.recipe.to_dict(),
        "arch": info.model_config.arch, "epoch": info.epoch, "val_acc": info.val_acc,
        "prior_supervision": bool(info.model_config.prior_supervision),
        "dataset": info.training_data,
    }
    if full:
        sides = [r for r in REGIONS if r.au_group == REGIONS[0].au_group]  # the two regions of one AU group
        meta.update(aus=list(ALL_AUS), au_sides=["image-right" if r.flipped else "image-left" for r in sides],
                    regions=[r.name for r in REGIONS])
    return meta


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({error.name} is missing): {TRAIN_EXTRA_HINT}") from None


def export_module(model: POIModel, info: CheckpointInfo, full: bool) -> tuple[nn.Module, list[str]]:
    """The module `poi export` writes in eval mode, and its output names: FullModel with the
    checkpoint's T_cal and recipe, or the deployed TRN (RecipeLogits under a recipe that needs more)."""
    if full:
        module = FullModel(model, info.calibration_temperature, info.recipe).eval()
        return module, module.output_names
    deployed = model.deploy() if info.recipe == PredictionRecipe() else RecipeLogits(model, info.recipe)
    return deployed.eval(), ["logits"]


def onnx_bytes(module: nn.Module, example: torch.Tensor, output_names: list[str], opset: int = 17,
               fold_constants: bool = True) -> bytes:
    """The module as an ONNX model (without metadata), its batch axis free; what `poi export` writes
    and what `poi predict --backend onnx` runs. fold_constants=False keeps batch norms apart
    from their convolutions, so the file's weights are the checkpoint's own values."""
    buffer = io.BytesIO()
    dynamic = {"input": {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with warnings.catch_warnings():
        # The TorchScript-based exporter: the torch.export one needs onnxscript as well.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, input_names=["input"], output_names=output_names,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=fold_constants)
    return buffer.getvalue()


def onnx_proto(module: nn.Module, example: torch.Tensor, output_names: list[str], meta: dict, opset: int = 17,
               fp16_weights: bool = False) -> "onnx.ModelProto":
    """The module as an ONNX model with poi's metadata (see _metadata); fp16_weights stores
    each float32 weight as float16 with a Cast back to float32 in the graph (half the file;
    the arithmetic stays float32, so a packed fp16 checkpoint gives the same numbers: batch
    norms are not folded into the convolutions, which would round new products to fp16)."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes(module, example, output_names, opset, fold_constants=not fp16_weights))
    if fp16_weights:
        _halve_initializers(proto)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto


def _halve_initializers(proto: "onnx.ModelProto") -> None:
    """float32 initializers -> float16 ones named NAME_fp16 and Cast nodes that make NAME again."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph, casts, kept = proto.graph, [], []
    for initializer in graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT or len(initializer.dims) == 0:
            kept.append(initializer)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(initializer).astype(np.float16), initializer.name + "_fp16")
        kept.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [initializer.name], to=onnx.TensorProto.FLOAT,
                                           name=initializer.name + "_to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # the casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path, output_names: list[str], meta: dict, opset: int,
                fp16_weights: bool = False) -> None:
    proto = onnx_proto(module, example, output_names, meta, opset, fp16_weights)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def onnx_model_bytes(checkpoint: str | Path, opset: int = 17) -> bytes:
    """A checkpoint as the ONNX file `poi export --full` writes (the TRN's logits for a
    baseline), in memory: what `poi predict --backend onnx` runs for a `.pt` model."""
    _require_onnx()
    try:
        checkpoint_path = resolve_checkpoint(checkpoint)
        model, checkpoint_dict = load_model(checkpoint_path, "cpu")
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    info = CheckpointInfo.of(checkpoint_dict)
    full = model.pin is not None
    module, output_names = export_module(model, info, full)
    size = model.config.input_size
    example = torch.zeros(TRACE_BATCH, 3, size, size)
    try:
        proto = onnx_proto(module, example, output_names, _metadata(info, output_names, full), opset)
    except Exception as error:  # an operator the exporter lacks: one line
        raise ExportError(f"exporting {checkpoint_path} to ONNX failed: {type(error).__name__}: {error}") from None
    return proto.SerializeToString()


def _run_onnx(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    import onnxruntime

    from poi_cli.core.threads import onnx_session_options

    session = onnxruntime.InferenceSession(str(path), sess_options=onnx_session_options(),
                                           providers=["CPUExecutionProvider"])
    return [torch.from_numpy(y) for y in session.run(None, {"input": x.numpy()})]


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still the portable format
        traced = torch.jit.trace(module, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"poi.json": json.dumps(meta)})
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _run_torchscript(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        outputs = loaded(x)
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def export_model(
    checkpoint: str | Path,
    format: str = "onnx",
    full: bool = False,
    out: Optional[str | Path] = None,
    tolerance: Optional[float] = None,
    opset: int = 17,
    seed: int = 0,
    fp16_weights: bool = False,
) -> ExportResult:
    """Write the model in `format` and check it against PyTorch on random input.

    tolerance: None takes DEFAULT_TOLERANCE[format]. format="weights" always packs the
    whole model (TRN and PIN), so `full` is implied for it when the model has a PIN.
    fp16_weights (ONNX only): weights stored as float16, computed in float32 (how the
    bundled .onnx is made from the bundled fp16 checkpoint: same numbers, half the file)."""
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if tolerance is not None and not 0 < tolerance < math.inf:  # nan fails too
        raise ExportError(f"--tolerance must be a finite number > 0, got {tolerance:g}")
    if format == "onnx":
        _require_onnx()
        highest = max_opset()
        if highest is not None and opset > highest:  # the lower bound is the CLI option's (min=13)
            raise ExportError(f"--opset must be at most {highest} (the highest the installed torch exports), got {opset}")
    elif fp16_weights:
        raise ExportError("--fp16-weights applies to --format onnx only (--format weights is always fp16)")
    try:
        checkpoint_path = resolve_checkpoint(checkpoint)
        model, checkpoint_dict = load_model(checkpoint_path, "cpu")
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    if format == "weights":
        full = model.pin is not None
    elif full and model.pin is None:
        raise ExportError(f"{checkpoint_path} is a baseline model (no PIN): it has no consistency or AUs; export it without --full")
    path = Path(out) if out else default_output_path(checkpoint_path, format, full)
    if path.resolve() == checkpoint_path.resolve():
        raise ExportError(f"--out {path} would overwrite the checkpoint itself")
    if is_stream(path):  # the export replaces its name once checked: /dev/null itself would become the file
        raise ExportError(f"--out {path} is a device or a pipe: an export is a file, loaded back and checked before it "
                          "takes its name; give a file name")
    # a link to it, or a link in its place; nor what training wrote beside it (a new export may replace an old one)
    refuse_input_as_output(path, checkpoint_inputs(checkpoint_path), "--out")
    output_file(path, "--out", replaces=("a file `poi export` wrote", is_poi_export))  # before the tracing
    info = CheckpointInfo.of(checkpoint_dict)
    module, output_names = export_module(model, info, full)
    size = model.config.input_size
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(TRACE_BATCH, 3, size, size, generator=generator)
    check = torch.randn(CHECK_BATCH, 3, size, size, generator=generator)
    meta = _metadata(info, output_names, full)
    # one writer per export file (two exports into one name would both report success, the
    # later one's file in place of the other's); a folder made for it and left empty by a failed
    # check goes with the claim
    with claim(path, "--out"):
        # Written beside `path` under a temp name and checked there: only a file that passed takes
        # `path` (an earlier export there stays when the new one fails; a model that differs from
        # PyTorch is never left where poi predict would take it)
        handle, staged_name = temp_beside(path)
        os.close(handle)
        staged = Path(staged_name)
        try:
            if format == "onnx":
                _write_onnx(module, example, staged, output_names, meta, opset, fp16_weights)
                exported = _run_onnx(staged, check)
            elif format == "weights":
                packed = packed_checkpoint(checkpoint_dict, checkpoint_path)
                atomic_write(staged, lambda f: torch.save(packed, f))
                reloaded, reloaded_dict = load_model(staged, "cpu")  # through weights_only=True, as a user loads it
                # the packed file's own T_cal and recipe
                with torch.no_grad():
                    exported = export_module(reloaded, CheckpointInfo.of(reloaded_dict), full)[0](check)
                exported = list(exported) if isinstance(exported, tuple) else [exported]
            else:
                _write_torchscript(module, example, staged, meta)
                exported = _run_torchscript(staged, check)
            module.eval()
            with torch.no_grad():
                reference = module(check)
            reference = list(reference) if isinstance(reference, tuple) else [reference]
            shapes = [tuple(t.shape) for t in exported], [tuple(t.shape) for t in reference]
            if shapes[0] != shapes[1]:
                raise ExportError(f"{path}: the exported outputs have shapes {shapes[0]}, PyTorch gives {shapes[1]}")
            diffs = {name: float(((a.float() - b.float()).abs() / b.float().abs().clamp(min=1.0)).max())
                     for name, a, b in zip(output_names, exported, reference)}
            result = ExportResult(path=path, format=format, full=full, input_shape=tuple(check.shape),
                                  output_names=output_names, max_diff=max(diffs.values()), per_output_diff=diffs,
                                  tolerance=DEFAULT_TOLERANCE[format] if tolerance is None else tolerance)
            if result.passed:
                os.replace(staged, path)
            return result
        except OSError as error:  # a full disk: named by --out, never by the staged file
            if error.filename in (str(staged), staged_name):
                raise OSError(error.errno, error.strerror, str(path)) from None
            raise
        finally:
            staged.unlink(missing_ok=True)
