"""`poi calibrate`: choose a checkpoint's prediction recipe and fit its temperature T_cal on
a prepared split, and store both.

    poi calibrate runs/train/exp prepared/ferplus            # -> runs/train/exp/best.calibrated.pt
    poi calibrate model.pt prepared/ferplus --in-place       # rewrites model.pt (atomically)
    poi calibrate model.pt prepared/ferplus --fusion trn --flip off   # the TRN alone, as training stores it

The recipe (POI_SPEC 4b, core/outputs.PredictionRecipe): the TRN alone or the mean of
the TRN's softmax and the PIN's p~* at T = 1 (--fusion), on the image alone or on the
image and its mirror (--flip). With `auto` (the default) every recipe the model can run
is tried: T_cal is fitted after each one's fusion on the split, and the lowest NLL after
temperature scaling wins, the cheapest recipe among those within RECIPE_TIE_NLL nats of
it (model/calibration.choose_recipe; cheapest: no mirror before a mirror, the TRN alone
before TRN + PIN). `poi train` fits T_cal of the TRN alone on its validation split when a
run ends; this command is for choosing a recipe, for checkpoints made before that, or to
calibrate on other data. The checkpoint is never changed unless --in-place is given; the
new file differs from it only in its "calibration" record (T_cal and the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from poi_cli.core.atomic import output_file, refuse_input_as_output
from poi_cli.core.errors import PoiError
from poi_cli.core.layout import CONFIG_FILE, HELD_OUT_SUFFIX, HELDOUT_FILE
from poi_cli.core.locks import claim
from poi_cli.core.outputs import FUSION_TRN, FUSION_TRN_PIN, FUSIONS, PredictionRecipe
from poi_cli.data.folds import parse_fold_split
from poi_cli.data.store import PreparedDataset
from poi_cli.model.calibration import Calibration, choose_recipe
from poi_cli.model.checkpoint import (CALIBRATED_COPY, CheckpointInfo, checkpoint_inputs, load_checkpoint,
                                     read_heldout_ids, resolve_checkpoint, save_checkpoint, trained_on_folder)
from poi_cli.model.predictions import predict_checkpoint_split

AUTO = "auto"
FUSION_CHOICES = (AUTO, *FUSIONS)
FLIP_CHOICES = {AUTO: (False, True), "off": (False,), "on": (True,)}


class CalibrateError(PoiError):
    """A calibration that cannot run; one-line message."""


@dataclass
class CalibrateResult:
    calibration: Calibration  # T_cal and the recipe chosen
    previous: Optional[Calibration]  # what the checkpoint held before (None: uncalibrated, T_cal = 1)
    written: Path
    candidates: list[Calibration] = field(default_factory=list)  # every recipe tried, cheapest first


def default_split(dataset: PreparedDataset) -> str:
    """The store's validation split (valid, else val); calibrating on train or test would be wrong
    (test is refused: check_fit_split)."""
    name = dataset.validation_split()
    if name is not None:
        return name
    raise CalibrateError(f"{dataset.root} has no valid/val split, and the model's run held no images out of it: fit on "
                         "the validation split of a store of the same classes, or name a split the model never trained on "
                         "with --split (never test)")


def run_heldout_ids(source: Path, dataset: PreparedDataset, info: CheckpointInfo) -> Optional[list[str]]:
    """The images the checkpoint's run held out of its training split for validation (its run
    folder's heldout_ids.csv), when it trained on this store; None otherwise."""
    run = source.parent
    if not ((run / HELDOUT_FILE).is_file() and trained_on_folder(info.config, dataset.root)):
        return None
    return read_heldout_ids(run)


def check_fit_split(split: str, dataset: PreparedDataset, info: CheckpointInfo, held_out_images: bool = False) -> None:
    """CalibrateError (one line, saying why) for the split the model trained on (of the store it
    trained on), and for a split the model is evaluated on: the store's
    test split, or, for a run trained with --fold K (cross-validation), fold K, its held-out
    evaluation fold (the checkpoint's resolved.test_split). A recipe and T_cal chosen on the
    images they are then scored on make those figures (accuracy, ECE, strata) optimistic.
    Refused even where test is the store's only labelled split: T_cal belongs to the model,
    so the validation split of the store it trained on serves, and `poi evaluate` already
    measures calibration on test honestly (T fitted on one half, scored on the other).
    held_out_images: the checkpoint's run held images out of this store's training split, which
    calibrate fits on when no --split is given (what the messages then advise)."""
    validation = dataset.validation_split()
    if held_out_images and validation is None:
        instead = "leave --split out: it fits on the images the run held out of its training split for validation"
    elif validation is not None:
        instead = f"fit on {validation} (the default)"
    else:
        instead = None
    if split == "test":
        instead = (instead if instead is not None else
                   f"{dataset.root} has no valid/val split: fit on the validation split of the store the model trained on "
                   "(T_cal carries over), or name other held-out images with --split")
        raise CalibrateError(f"--split test: calibrating on the test split makes the test figures optimistic "
                             f"(the recipe and T_cal would be chosen on the images they are scored on); {instead}")
    # the store the run trained on, by its path as training recorded it (resolved): a copy elsewhere,
    # or another store of the same name, is the user's choice
    same_store = trained_on_folder(info.config, dataset.root)
    if same_store and split == (info.config.get("train_split") or "train"):
        instead = (instead if instead is not None else
                   "name held-out images with --split, or the validation split of another store")
        raise CalibrateError(f"--split {split}: the images this model trained on (it fits them better than new faces, "
                             f"so a T_cal fitted there makes `confidence` overconfident); {instead}")
    held_out = info.resolved.get("test_split")
    fold = parse_fold_split(split)  # fold03 names fold 3 as well
    if same_store and fold is not None and (held_out is None or fold != parse_fold_split(held_out)):
        # the folds partition the store's folded split, which the run trained on but for fold K
        trained = f"--fold {info.config.get('fold')} trains on every fold but {parse_fold_split(held_out)}" if held_out \
            else f"it trained on {info.config.get('train_split') or 'train'}, which the folds partition"
        raise CalibrateError(f"--split {split}: images this model trained on ({trained}), so a T_cal fitted there makes "
                             "`confidence` overconfident; fit on the run's own held-out images (the default for its run folder)")
    if held_out and fold is not None and fold == parse_fold_split(held_out):
        kept = "; its checkpoint keeps the T_cal training fitted on its validation images" if info.calibration else ""
        raise CalibrateError(f"--split {split} is the fold this run is evaluated on (trained with --fold "
                             f"{info.config.get('fold', parse_fold_split(split))}): calibrating on it makes its "
                             f"cross-validation figures optimistic{kept}")


def check_choices(fusion: str, flip: str) -> None:
    """CalibrateError (one line) for a --fusion or --flip value that is not one of the choices."""
    if fusion not in FUSION_CHOICES:
        raise CalibrateError(f"--fusion must be one of {', '.join(FUSION_CHOICES)}, got {fusion!r}")
    if flip not in FLIP_CHOICES:
        raise CalibrateError(f"--flip must be one of {', '.join(FLIP_CHOICES)}, got {flip!r}")


def candidate_recipes(fusion: str, flip: str, has_objective: bool) -> list[PredictionRecipe]:
    """The recipes --fusion and --flip allow (auto: all), cheapest first, for a model with or
    without the PIN's objective inference p~*; CalibrateError for an impossible one."""
    check_choices(fusion, flip)
    if fusion == FUSION_TRN_PIN and not has_objective:
        raise CalibrateError(f"--fusion {fusion} needs the PIN's objective inference p~*: this model has none "
                             "(a baseline, or trained without OIM)")
    fusions = (fusion,) if fusion != AUTO else FUSIONS if has_objective else (FUSION_TRN,)
    recipes = [PredictionRecipe(f, mirror) for f in fusions for mirror in FLIP_CHOICES[flip]]
    return sorted(recipes, key=lambda r: r.cost)


def calibrate(run_or_checkpoint: str | Path, prepared_dir: str | Path, split: Optional[str] = None,
              out: Optional[str | Path] = None, in_place: bool = False, device: str = "auto",
              batch: int = 256, fusion: str = AUTO, flip: str = AUTO, amp: str = "auto") -> CalibrateResult:
    """Choose the recipe (fusion, flip: `auto` or forced) and fit T_cal after it on a split, and write
    both into a copy of the checkpoint (or, in_place, the file itself)."""
    check_choices(fusion, flip)
    source = resolve_checkpoint(run_or_checkpoint)
    if in_place and out is not None:
        raise CalibrateError("--in-place and --out exclude each other")
    target = source if in_place else Path(out) if out is not None else source.with_name(f"{source.stem}.calibrated.pt")
    if target.resolve() == source.resolve() and not in_place:
        raise CalibrateError(f"--out {target} is the checkpoint itself: pass --in-place to rewrite it")
    dataset = PreparedDataset(prepared_dir)
    # nothing the command reads is written over: the prepared folder's files (a combined
    # folder's: its members' stores), the checkpoint and its run's files (--in-place rewrites the checkpoint)
    refuse_input_as_output(target, [prepared_dir, *(m.path for m in dataset.members),
                                    *([] if in_place else checkpoint_inputs(source))], "--out")
    # before the work, not after it
    output_file(target, "--in-place" if in_place else "--out", rewrites_itself=in_place, replaces=CALIBRATED_COPY)
    # one writer: --in-place on a run's checkpoint holds the run folder's claim (a training still
    # writing it stops this in one line, and is not overwritten with an older epoch by it)
    run_folder = source.parent if in_place and (source.parent / CONFIG_FILE).is_file() else None
    with claim(run_folder or target, "run folder" if run_folder else "--out"):
        return _calibrate(source, target, dataset, split, in_place, device, batch, fusion, flip, amp)


def _calibrate(source: Path, target: Path, dataset: PreparedDataset, split: Optional[str], in_place: bool,
               device: str, batch: int, fusion: str, flip: str, amp: str) -> CalibrateResult:
    checkpoint = load_checkpoint(source)
    info = CheckpointInfo.of(checkpoint)
    run_held = run_heldout_ids(source, dataset, info) if dataset.validation_split() is None else None
    held_ids = run_held if split is None else None
    if held_ids is not None:  # a run that held part of its training split out for validation (CK+ --fold K, RAF-DB)
        split = info.config.get("train_split") or "train"
    else:
        split = split or default_split(dataset)
        check_fit_split(split, dataset, info, run_held is not None)
    if list(info.classes) != list(dataset.classes):
        raise CalibrateError(f"{source} predicts {len(info.classes)} classes, {dataset.root} has {len(dataset.classes)}: "
                             "calibrate on data with the model's own classes")
    config = info.model_config
    recipes = candidate_recipes(fusion, flip, config.use_pin and config.use_oim)
    data = dataset.split(split, ids=held_ids)
    if held_ids is not None:
        split = f"{split}{HELD_OUT_SUFFIX}"
    predictions = predict_checkpoint_split(checkpoint, dataset.faces, data.store_rows, data.labels, device, batch, amp,
                                           with_pin=any(r.uses_pin for r in recipes),
                                           mirror=any(r.flip for r in recipes))
    if len(predictions) < 2:
        raise CalibrateError(f"split {split!r} has {len(predictions)} image(s): too few to fit a temperature")
    candidates = {recipe: predictions.recipe_log_probs(recipe) for recipe in recipes}
    # the folder too: evaluate notes the split T_cal was fitted on (Calibration.fitted_on)
    calibration, fitted = choose_recipe(candidates, predictions.labels, split, str(dataset.root.resolve()))
    previous = info.calibration
    checkpoint["calibration"] = calibration.to_dict()
    if not in_place:
        checkpoint["calibrated_from"] = source.name  # marks the copy as this command's, which a re-run may replace
    save_checkpoint(target, checkpoint)
    return CalibrateResult(calibration, previous, target, fitted)
