"""Fine-tuning: start a run from the weights of another poi checkpoint (the CK+ / SFEW protocol).

Weights are copied by name; the class-indexed rows of the TRN's and the regions'
classifiers are matched by class name, so a model of other classes keeps its shared rows
and a new class keeps its fresh initialisation. May import torch and poi_cli.model.
"""

from __future__ import annotations

from poi_cli.model.checkpoint import load_checkpoint, resolve_checkpoint
from poi_cli.model.network import ModelConfig, POIModel, rename_legacy_keys
from poi_cli.train.config import TrainError

CLASS_ROW_PREFIXES = ("trn.fc.", "pin.region_classifiers.")


def remap_class_rows(state: dict, source_classes: list[str], target: dict, target_classes: list[str]) -> dict:
    """Copy class-indexed rows (TRN and region heads) by class name; new classes keep their init."""
    out = {}
    for key, value in state.items():
        if key not in target:
            continue
        want = target[key]
        if value.shape == want.shape and source_classes == target_classes:
            out[key] = value
        elif (key.startswith(CLASS_ROW_PREFIXES) and value.shape[0] == len(source_classes)
              and value.shape[1:] == want.shape[1:]):  # rows of another width (--no-prior's regions) do not map
            rows = want.clone()
            for index, name in enumerate(target_classes):
                if name in source_classes:
                    rows[index] = value[source_classes.index(name)]
            out[key] = rows
        elif value.shape == want.shape:
            out[key] = value
        else:
            raise TrainError(f"fine-tune checkpoint weight {key} has shape {tuple(value.shape)}, this model needs "
                             f"{tuple(want.shape)} (a run with other model options, e.g. --no-prior, --baseline)")
    return out


def load_fine_tune(model: POIModel, path: str, classes: list[str]) -> str:
    """Load the checkpoint (or run folder) at `path` into `model`, of `classes`; returns the line to log."""
    checkpoint = load_checkpoint(resolve_checkpoint(path))
    source = ModelConfig.from_dict(checkpoint["model_config"])
    if source.arch != model.config.arch:
        raise TrainError(f"--fine-tune: {path} is a {source.arch}, this run trains a {model.config.arch}")
    source_classes = list(checkpoint["classes"])
    # by today's names: a key of an older checkpoint would otherwise be dropped unseen (the gate of the first bundled model)
    weights = rename_legacy_keys(dict(checkpoint["model"]))
    state = remap_class_rows(weights, source_classes, model.state_dict(), classes)
    missing = [k for k in model.state_dict() if k not in state]
    model.load_state_dict(state, strict=False)
    note = f"fine-tuning from {path}"
    if source_classes != classes:
        shared = [n for n in classes if n in source_classes]
        note += f" (classes mapped by name: {len(shared)} shared of {len(classes)})"
    if missing:
        note += f"; {len(missing)} weights not in it keep their initialisation"
    if source.input_size != model.config.input_size:  # the network is the same at any size; its features are not
        note += (f"; it was trained at {source.input_size} px, this run at {model.config.input_size} px "
                 f"(--size {source.input_size} keeps its scale)")
    return note
