"""Layer 2, model: the POI network (one class per box of Fig. 2), its losses, and its files.

network (SharedTrunk, TRN, PIN with its subregions, prior branches, AU nets, region
classifiers, ObjectiveInference and UncertaintyEstimation), losses (one function per
equation of Eq. 4-12), calibration (temperature scaling and the metrics that judge a
confidence), predictions (the one inference path over a prepared split), checkpoint
(build, save, load, CheckpointInfo), pretrained (backbone weights from a file), info
(parameters and FLOPs). May import core and data.
"""

from poi_cli.model.network import ModelConfig, POIModel, POIOutput

__all__ = ["ModelConfig", "POIModel", "POIOutput"]
