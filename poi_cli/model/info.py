"""Model size and cost: parameters and multiply-accumulates of the full and deployed model."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from poi_cli.model.network import ModelConfig, POIModel, count_parameters


def count_gmacs(module: torch.nn.Module, input_size: int) -> float:
    """Giga multiply-accumulates of one forward pass on one image.

    The field's "GFLOPs" (ResNet-18 at 224 px: 1.82) counts multiply-accumulates of
    convolutions and matrix products; torch's counter reports 2 FLOPs per MAC.
    """
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, 3, input_size, input_size))
    return counter.get_total_flops() / 2 / 1e9


def model_info(arch: str = "resnet18", num_classes: int = 7, input_size: int = 224) -> dict:
    """Parameters and GMACs of the full training model (trunk, TRN, PIN) and the deployed TRN."""
    config = ModelConfig(arch=arch, num_classes=num_classes, input_size=input_size)
    model = POIModel(config)
    deployed = model.deploy()
    return {
        "arch": arch,
        "num_classes": num_classes,
        "input_size": input_size,
        "subregion_size": config.subregion_size,
        "trn_params": count_parameters(deployed),
        "full_params": count_parameters(model),
        "trn_gflops": round(count_gmacs(deployed, input_size), 4),
        "full_gflops": round(count_gmacs(model, input_size), 4),
    }
