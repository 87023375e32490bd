"""`poi calibrate`: fit a checkpoint's temperature T_cal on a prepared split and store it.

    poi calibrate runs/train/exp prepared/ferplus            # -> runs/train/exp/best.calibrated.pt
    poi calibrate model.pt prepared/ferplus --in-place       # rewrites model.pt (atomically)

`poi train` does the same on its validation split when a run ends; this command is for
checkpoints made before that, or to calibrate on other data. The checkpoint is never
changed unless --in-place is given; the new file differs from it only in its
"calibration" record (model/calibration.py says what T_cal is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from poi_cli.core.atomic import refuse_input_as_output
from poi_cli.core.errors import PoiError
from poi_cli.data.store import PreparedDataset
from poi_cli.model.calibration import Calibration, calibration_of
from poi_cli.model.checkpoint import CheckpointInfo, load_checkpoint, resolve_checkpoint, save_checkpoint
from poi_cli.model.predictions import predict_checkpoint_split


class CalibrateError(PoiError):
    """A calibration that cannot run; one-line message."""


@dataclass
class CalibrateResult:
    calibration: Calibration
    previous: Optional[Calibration]  # what the checkpoint held before (None: uncalibrated, T_cal = 1)
    written: Path


def default_split(dataset: PreparedDataset) -> str:
    """The store's validation split (valid, else val); calibrating on train or test would be wrong."""
    name = dataset.validation_split()
    if name is not None:
        return name
    raise CalibrateError(f"{dataset.root} has no valid/val split: name the held-out split to fit on with --split")


def calibrate(run_or_checkpoint: str | Path, prepared_dir: str | Path, split: Optional[str] = None,
              out: Optional[str | Path] = None, in_place: bool = False, device: str = "auto",
              batch: int = 256) -> CalibrateResult:
    """Fit T_cal of a checkpoint on a split and write it into a copy (or, in_place, the file itself)."""
    source = resolve_checkpoint(run_or_checkpoint)
    if in_place and out is not None:
        raise CalibrateError("--in-place and --out exclude each other")
    target = source if in_place else Path(out) if out is not None else source.with_name(f"{source.stem}.calibrated.pt")
    if target.resolve() == source.resolve() and not in_place:
        raise CalibrateError(f"--out {target} is the checkpoint itself: pass --in-place to rewrite it")
    # nothing the command reads is written over: the prepared folder's files, a run folder's
    refuse_input_as_output(target, [prepared_dir, *([run_or_checkpoint] if Path(run_or_checkpoint).is_dir() and not in_place
                                                    else [])], "--out")
    dataset = PreparedDataset(prepared_dir)
    split = split or default_split(dataset)
    checkpoint = load_checkpoint(source)
    info = CheckpointInfo.of(checkpoint)
    if list(info.classes) != list(dataset.classes):
        raise CalibrateError(f"{source} predicts {len(info.classes)} classes, {dataset.root} has {len(dataset.classes)}: "
                             "calibrate on data with the model's own classes")
    data = dataset.split(split)
    predictions = predict_checkpoint_split(checkpoint, dataset.faces, data.store_rows, data.labels, device, batch,
                                           with_pin=False)
    if len(predictions) < 2:
        raise CalibrateError(f"split {split!r} has {len(predictions)} image(s): too few to fit a temperature")
    calibration = calibration_of(predictions.trn_logits, predictions.labels, split)
    previous = info.calibration
    checkpoint["calibration"] = calibration.to_dict()
    save_checkpoint(target, checkpoint)
    return CalibrateResult(calibration, previous, target)
