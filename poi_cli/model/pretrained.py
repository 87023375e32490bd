"""Loading a pretrained backbone from a file the user names (nothing is downloaded).

Accepted layouts:
* a torchvision ResNet state dict (conv1.weight, layer1.0..., fc.weight), as saved by
  `torch.save(torchvision.models.resnet18(weights=...).state_dict(), path)`;
* the face-recognition layout of SCN / RUL / EAC (`resnet18_msceleb.pth`): a dict with a
  `state_dict` entry whose keys carry a `module.` prefix (DataParallel) and an identity
  classification head (`fc.*`, sometimes `feature.*`) that is dropped.
Only the ResNet backbone (stem, layer1..layer4) is taken; the TRN's FC and the PIN keep
their fresh initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from poi_cli.core.errors import PoiError
from poi_cli.model.network import POIModel

# Wrappers a checkpoint may nest its weights in, and key prefixes to strip.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_PREFIXES = ("module.", "backbone.", "base.", "encoder.")
# What is taken; everything else (the source's heads: fc., feature., classifier., ...) is dropped.
_BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


class PretrainedError(PoiError):
    """A weights file that cannot be used; the message says why in one line."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a file safely (weights_only) and unwrap common containers."""
    from poi_cli.model.checkpoint import safe_torch_load

    loaded = safe_torch_load(path, "pretrained weights file", PretrainedError)
    opened: set[int] = set()  # a container that holds itself (pickle keeps it) was unwrapped forever
    while isinstance(loaded, dict) and not _looks_like_state_dict(loaded):
        if id(loaded) in opened:
            raise PretrainedError(f"{path} holds no state dict (its containers hold each other)")
        opened.add(id(loaded))
        inner = next((loaded[k] for k in _CONTAINER_KEYS if isinstance(loaded.get(k), dict)), None)
        if inner is None:
            raise PretrainedError(f"{path} holds no state dict (top-level keys: {', '.join(map(str, list(loaded)[:8]))})")
        loaded = inner
    if not isinstance(loaded, dict):
        raise PretrainedError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def _looks_like_state_dict(values: dict) -> bool:
    return bool(values) and all(isinstance(v, torch.Tensor) for v in values.values())


def backbone_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip wrapper prefixes, drop the source's heads; returns (backbone keys, dropped keys)."""
    backbone, dropped = {}, []
    for key, value in state_dict.items():
        name = key
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if name.startswith(_BACKBONE_PREFIXES):
            backbone[name] = value
        else:
            dropped.append(key)
    return backbone, dropped


def load_backbone(model: POIModel, path: str | Path) -> dict[str, list[str]]:
    """Load ResNet backbone weights from `path` into the model's trunk and TRN layer4.

    Raises PretrainedError naming the missing / unexpected / mis-shaped keys when the
    file does not fit the model's architecture. Returns what was dropped (the heads).
    """
    backbone, dropped = backbone_state_dict(read_state_dict(path))
    expected = {}
    for prefix, module in model.backbone_modules().items():
        for name, tensor in module.state_dict().items():
            expected[f"{prefix}.{name}"] = tensor
    missing = sorted(k for k in expected if k not in backbone and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in backbone if k not in expected)
    mis_shaped = sorted(k for k in backbone if k in expected and backbone[k].shape != expected[k].shape)
    if missing or unexpected or mis_shaped:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if keys:
                shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
                problems.append(f"{len(keys)} {label} ({shown})")
        raise PretrainedError(f"{path} does not fit a {model.config.arch} backbone: " + "; ".join(problems))
    for prefix, module in model.backbone_modules().items():
        part = {k[len(prefix) + 1:]: v for k, v in backbone.items() if k.startswith(prefix + ".")}
        module.load_state_dict(part, strict=False)  # strict checked above; num_batches_tracked may be absent
    return {"dropped": dropped}
