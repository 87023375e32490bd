"""Which runner runs a model for `poi predict` and `poi serve`: above deploy and model.

The deploy runtime (poi_cli/deploy) runs .onnx files with ONNX Runtime and imports no
torch; a PyTorch checkpoint needs torch (the `train` extra). This module is the one place
that decides, so that deploy never imports torch or model/:

    backend auto   an .onnx file (the bundled model by default) -> ONNX Runtime on the CPU;
                   a .pt checkpoint or run folder -> torch (on --device); --device cuda/mps -> torch
    backend onnx   ONNX Runtime on the CPU; a .pt is exported in memory first (needs torch)
    backend torch  torch on --device; the bundled .pt checkpoint by default
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from poi_cli.core.errors import TRAIN_EXTRA_HINT, PoiError, torch_installed
from poi_cli.core.schema import DEVICES
from poi_cli.deploy.predict import ONNX_SUFFIX, PredictError, resolve_model
from poi_cli.deploy.runner import ModelFileError, ModelRunner, OnnxRunner, written_by_torch_save

BACKENDS = ("auto", "onnx", "torch")


def torch_available() -> bool:
    """Whether torch can be imported (without importing it; core.errors decides)."""
    return torch_installed()


def _require_torch(what: str) -> None:
    if not torch_available():
        raise PredictError(f"{what} needs torch, which is not installed: {TRAIN_EXTRA_HINT}")


def open_runner(model: Optional[str | Path] = None, backend: str = "auto", device: str = "cpu",
                threads: Optional[int] = None, batch_size: int = 32) -> ModelRunner:
    """The runner for --model / --backend / --device (see the module docstring)."""
    if backend not in BACKENDS:
        raise PredictError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if device not in DEVICES:
        raise PredictError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if backend == "onnx" and device not in ("cpu", "auto"):
        raise PredictError("--backend onnx runs on the CPU: use --device cpu (or --backend torch on a GPU)")
    if backend == "auto" and device not in ("cpu", "auto"):
        _require_torch(f"--device {device}: running the model there")
        backend = "torch"  # a GPU: only torch runs there
    path = resolve_model(model, ".pt" if backend == "torch" else ONNX_SUFFIX)
    is_onnx = path.is_file() and path.suffix.lower() == ONNX_SUFFIX
    if path.is_file() and not is_onnx and not torch_available() and not written_by_torch_save(path):
        # without torch, tell a wrong file from a checkpoint before asking to install torch for it
        # (with torch, the checkpoint reader says what is wrong with the file)
        raise PredictError(f"{path} is not a model file: give an .onnx from `poi export --full`, "
                           "a .pt checkpoint or a run folder")
    try:
        if is_onnx:
            if backend == "torch":
                raise PredictError(f"{path} is an ONNX file: run it with --backend onnx (or auto); "
                                   "--backend torch needs a .pt checkpoint")
            return OnnxRunner(path, threads=threads, batch_size=batch_size)
        if backend == "onnx":  # a checkpoint exported in memory, as `poi export --full` writes it
            _require_torch(f"--backend onnx on the checkpoint {path}")
            from poi_cli.model.export import onnx_model_bytes

            return OnnxRunner(onnx_model_bytes(path), threads=threads, batch_size=batch_size, name=str(path))
        _require_torch(f"{path} is a PyTorch checkpoint or run folder: running it")
        from poi_cli.core.runtime import select_device
        from poi_cli.model.runner import TorchRunner

        return TorchRunner(path, device=str(select_device(device)), batch_size=batch_size)
    except ModelFileError as error:
        raise PredictError(str(error)) from None
    except PoiError as error:  # TorchRunnerError, ExportError, DeviceError: one line already
        if isinstance(error, PredictError):
            raise
        raise PredictError(str(error)) from None
