"""Checkpoints: written atomically, read safely (temp file + os.replace).

A checkpoint is a dict of plain Python values and tensors, so it loads with
torch.load(weights_only=True):
    format, epoch (finished epochs), model (state dict), optimizer (state dict),
    config (TrainConfig dict), model_config (ModelConfig dict), classes (names),
    best_val_acc, best_epoch, history (results.csv rows), rng (torch RNG states).
A killed process leaves either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from poi_cli.core.atomic import atomic_write

CHECKPOINT_FORMAT = 1
LAST, BEST = "last.pt", "best.pt"


class CheckpointError(ValueError):
    """A checkpoint or run folder that cannot be used; one-line message."""


def save_checkpoint(path: str | Path, payload: dict) -> None:
    atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **payload}, f))


def safe_torch_load(path: str | Path, what: str, error_type: type[Exception]) -> Any:
    """torch.load with weights_only=True on the CPU; a missing or unreadable file raises
    error_type with a one-line message naming `what` the file should have been."""
    path = Path(path)
    if not path.is_file():
        raise error_type(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise error_type(f"cannot read {path} as a {what}: {str(error).splitlines()[0]}") from None


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely (weights_only=True) on the CPU."""
    checkpoint = safe_torch_load(path, "poi checkpoint", CheckpointError)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_config" not in checkpoint:
        raise CheckpointError(f"{path} is not a poi checkpoint (it lacks model weights and model_config)")
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {checkpoint.get('format')!r}")
    return checkpoint


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A run folder -> its best.pt (else last.pt); a file -> itself."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no {BEST} or {LAST} (not a finished epoch of a poi run)")
    if not path.exists():
        raise CheckpointError(f"no such run folder or checkpoint: {path}")
    return path


def load_model(run_or_checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the POIModel a checkpoint describes, with its weights, in eval mode."""
    from poi_cli.model.network import ModelConfig, POIModel

    checkpoint = load_checkpoint(resolve_checkpoint(run_or_checkpoint))
    model = POIModel(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint
