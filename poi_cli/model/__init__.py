"""Layer 2, model: the POI network (one class per box of Fig. 2), its losses, and its files.

network (SharedTrunk, TRN, PIN with its subregions, prior branches, AU nets, region
classifiers, ObjectiveInference and UncertaintyEstimation), losses (one function per
equation of Eq. 4-12), calibration (temperature scaling and the metrics that judge a
confidence; choose_recipe), reporting (what prediction reports: a PredictionRecipe's fusion
of TRN and PIN over the image and its mirror, then T_cal; the one implementation, run by
the torch runner and built into the exported graph), predictions (the one inference path
over a prepared split), checkpoint
(build, save, load, CheckpointInfo), pretrained (backbone weights from a file), info
(parameters and FLOPs), export (`poi export`: ONNX, TorchScript, packed fp16 weights),
runner (a checkpoint run by torch for `poi predict --backend torch`), loss_config
(LossConfig, the Eq. 12 weights, torch-free: `poi train`'s defaults). May import core and data.
"""

from typing import Any

__all__ = ["ModelConfig", "POIModel", "POIOutput"]


def __getattr__(name: str) -> Any:
    """The network's classes, imported on first use (PEP 562): importing this package, e.g.
    for loss_config, does not import torch."""
    if name in __all__:
        from poi_cli.model import network

        return getattr(network, name)
    raise AttributeError(f"module 'poi_cli.model' has no attribute {name!r}")
