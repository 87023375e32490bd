"""`poi evaluate`: a trained model on a prepared split.

Reports the accuracy and per-class recall of what prediction reports (the checkpoint's
PredictionRecipe: the TRN alone by default, or fused with the PIN and / or the mirror;
the TRN alone's accuracy beside it), the confusion matrix (CSV and PNG, as the paper's
Fig. 11), the accuracy of the most and least confident 30/50/70% of the images (Table IV)
ranked by each of two scores, the accuracy of the PIN's intermediate prediction p~* and
of the plain region average (Fig. 13), and how far to trust a prediction by the record
fields of POI_SPEC 4b: accuracy per `regions_agree` level (0-4 regions whose own
expression is the predicted one), where `pin_expression` (argmax p~* at T = 1) is the
same as the prediction and where it differs, and of the faces flagged by either
(regions_agree below 4 or a differing pin_expression) against the rest; and the accuracy
on the faces with a pixel-identical twin elsewhere in the prepared folder (data/duplicates.py:
FER2013 repeats training images in valid) against the rest:

* `confidence`: the calibrated probability that the predicted expression is right,
  max softmax(log p / T_cal) with the checkpoint's recipe and T_cal (POI_SPEC 4b; T_cal = 1
  when the checkpoint was never calibrated);
* `consistency`: the UEM's w (Eq. 10), how much the four facial regions agree; a
  ranking score, not a probability of being right (None for a baseline model).

The `calibration` block judges both, and the raw softmax, with
model.calibration.calibration_study: T_cal fitted on a seeded half of the images, every
figure (ECE, NLL, Brier, AURC, accuracy at a coverage) measured on the other half, each ECE
beside the ECE a perfectly calibrated score would measure on as many images (ece_floor);
write_reports draws its reliability diagram and risk-coverage curves.

Classes are matched by name: a model trained on 8 classes evaluated on 7-class data
predicts among the 7 shared classes (also where the 7 leave a hole in the label space, as
CK+48's missing neutral: PreparedDataset.labelled_classes); on the reverse, images of a
class the model does not know are left out. The result says so in `class_mapping`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from poi_cli.core.atomic import FolderOutputs, json_with_keys, save_figure, write_csv, write_json
from poi_cli.core.errors import PoiError
from poi_cli.core.layout import HELD_OUT_SUFFIX
from poi_cli.core.manifests import REGIONS
from poi_cli.core.metrics import answered_argmax, confusion_matrix, per_class_recall
from poi_cli.core.outputs import PredictionRecipe, regions_agreeing
from poi_cli.core.schema import STATUS_OK
from poi_cli.data.folds import RANDOM_PROTOCOL, RANDOM_SPLIT_NOTE, parse_fold_split
from poi_cli.data.combined import member_of_rows, member_paths
from poi_cli.data.duplicates import DIGEST_COLUMN, stored_digests, twins_elsewhere
from poi_cli.data.store import PreparedDataset
from poi_cli.model.calibration import Calibration, calibration_study, halves, reliability_bins, risk_coverage, score_metrics, softmax
from poi_cli.model.checkpoint import (CONFIG_FILE, HELDOUT_FILE, CheckpointInfo, load_checkpoint, read_heldout_ids,
                                     resolve_checkpoint, held_out_fold, trained_on_folder, training_overlap)
from poi_cli.model.predictions import SplitPredictions, predict_checkpoint_split

STRATA = (0.3, 0.5, 0.7)
CALIBRATION_SEED = 0  # the seed of calibration_study's halves
CURVE_POINTS = 100  # risk-coverage points kept in the result (at most)
UNCALIBRATED_NOTE = "uncalibrated checkpoint: T_cal = 1"
# log p of a class a face cannot be (MappedPredictions.answers): finite, so that a temperature fit's
# gradient stays finite, and far enough below any float32 log-softmax that its softmax is 0 at any T_cal
NO_ANSWER_LOG_PROB = -1e4


class EvaluateError(PoiError):
    """A model and a split that cannot be evaluated together; one-line message."""


def class_mapping(model_classes: list[str], data_classes: list[str],
                  labelled: Optional[list[str]] = None) -> tuple[list[str], list[int], np.ndarray, Optional[str]]:
    """(shared class names in data order, their model columns, data label -> shared index or -1, note).

    labelled: the data classes its dataset labels (PreparedDataset.labelled_classes; default all):
    a class of the label space it never labels (CK+48's neutral) is no answer either."""
    labelled = list(data_classes) if labelled is None else [n for n in data_classes if n in labelled]
    shared = [name for name in labelled if name in model_classes]
    columns = [model_classes.index(name) for name in shared]
    label_map = np.array([shared.index(n) if n in shared else -1 for n in data_classes], dtype=np.int64)
    note = None
    if list(model_classes) != labelled:
        parts = [f"model has {len(model_classes)} classes, data {len(labelled)}: mapped by name"]
        only_model = [n for n in model_classes if n not in labelled]
        only_data = [n for n in labelled if n not in model_classes]
        if only_model:
            parts.append(f"predictions restricted to the {len(shared)} shared classes (never {', '.join(only_model)})")
        if only_data:
            parts.append(f"images of {', '.join(only_data)} left out (the model cannot predict them)")
        note = "; ".join(parts)
    return shared, columns, label_map, note


def confidence_strata(score: np.ndarray, correct: np.ndarray, fractions: tuple[float, ...] = STRATA) -> list[dict]:
    """Accuracy of the most and least confident `fraction` of the images (Table IV), ranked
    by a per-image score (high = confident): the calibrated confidence or the consistency w.

    Ties keep the images' order (stable sort), so the answer is deterministic.
    """
    order = np.argsort(-np.asarray(score), kind="stable")  # most confident first
    ranked = correct[order].astype(np.float64)
    strata = []
    for fraction in fractions:
        k = max(1, int(round(fraction * len(ranked))))
        strata.append({
            "fraction": fraction, "n": k,
            "most_confident_accuracy": float(ranked[:k].mean()),
            "least_confident_accuracy": float(ranked[-k:].mean()),
        })
    return strata


@dataclass(frozen=True)
class SplitChoice:
    """The images `poi evaluate` scores: a split name, optionally narrowed to ids, and why it was chosen."""

    split: str
    ids: Optional[tuple[str, ...]] = None  # the run's held-out images (heldout_ids.csv)
    reason: str = "the --split asked for"

    @property
    def name(self) -> str:
        return f"{self.split}{HELD_OUT_SUFFIX}" if self.ids is not None else self.split


@dataclass
class MappedPredictions:
    """A checkpoint's predictions on the images of a split whose class it knows, with the
    classes matched by name (class_mapping): what `poi evaluate` and `poi report` share."""

    checkpoint_path: Path
    info: CheckpointInfo  # what the checkpoint says about its model (epoch, T_cal, ...)
    dataset: PreparedDataset
    classes: list[str]  # the shared classes, in the data's order
    columns: list[int]  # the model's column of each shared class
    mapping_note: Optional[str]
    keep: np.ndarray  # (split size,) bool: images whose class the model knows
    targets: np.ndarray  # (n,) the shared class index of each kept image
    predictions: SplitPredictions  # over the kept images, labels in the model's columns
    choice: SplitChoice  # which images, and why
    store_rows: np.ndarray  # (split size,) rows of dataset.faces of the evaluated images (keep: those scored)
    # (n, shared classes) bool: on a combined folder, the classes each scored face is answered among (its
    # member's own folder's: PreparedDataset.answer_mask); None: every shared class, for every face
    answers: Optional[np.ndarray] = None

    @cached_property
    def twins(self) -> np.ndarray:
        """(n,) bool: the scored faces with a pixel-identical twin among the folder's faces not evaluated here."""
        return twins_elsewhere(self.dataset, self.store_rows[self.keep], self.store_rows)

    @property
    def recipe(self) -> PredictionRecipe:
        """How the checkpoint's reported probabilities are made (stored with its T_cal)."""
        return self.info.recipe

    @cached_property
    def predicted(self) -> np.ndarray:
        """The reported class among the shared ones (shared index): argmax of the recipe's p, (n,)."""
        return self.log_probs.argmax(1)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.targets

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def trn_accuracy(self) -> float:
        """The TRN alone's accuracy (argmax z on the image alone), whatever the recipe."""
        return float((self.restricted_argmax(self.predictions.trn_probs) == self.targets).mean())

    @cached_property
    def regions_agree(self) -> Optional[np.ndarray]:
        """(n,) how many regions' own expressions (argmax t_n among the shared classes) equal the
        prediction, 0-4; None without a PIN."""
        region_logits = self.predictions.region_logits
        return None if region_logits is None else regions_agreeing(region_logits[:, :, self.columns], self.predicted)

    @cached_property
    def pin_predicted(self) -> Optional[np.ndarray]:
        """(n,) pin_expression among the shared classes: argmax p~* at T = 1 of the image; None without OIM."""
        objective = self.predictions.objective_probs()
        return None if objective is None else self.restricted_argmax(objective)

    @cached_property
    def confusion(self) -> np.ndarray:
        """Counts (classes x classes), row = true class."""
        return confusion_matrix(self.targets, self.predicted, len(self.classes))

    @cached_property
    def log_probs(self) -> np.ndarray:
        """log p of the checkpoint's recipe in the shared classes' columns, (n, shared classes):
        the TRN's log softmax(z) by default; softmax(log p / T) renormalises over the shared classes
        (over a face's `answers` where they are narrower: a class it cannot be has no probability)."""
        log_probs = self.predictions.recipe_log_probs(self.recipe)[:, self.columns]
        return log_probs if self.answers is None else np.where(self.answers, log_probs, NO_ANSWER_LOG_PROB)

    @cached_property
    def members(self) -> Optional[dict]:
        """A combined folder's accuracy per member ({name: {"n", "accuracy"}}), as `poi train` reports
        it (its own folder's classes); None for a prepared folder."""
        if not self.dataset.members:
            return None
        member = member_of_rows(self.dataset.members, self.store_rows[self.keep])
        return {m.name: accuracy_cell(self.correct[member == k]) for k, m in enumerate(self.dataset.members)}

    @property
    def stored_calibration(self) -> Optional[Calibration]:
        """The checkpoint's temperature scaling; None for an uncalibrated checkpoint."""
        return self.info.calibration

    @property
    def temperature(self) -> float:
        """T_cal of the checkpoint (1 when uncalibrated)."""
        return self.info.calibration_temperature

    @cached_property
    def confidence(self) -> np.ndarray:
        """The calibrated probability of the reported class among the shared ones, max softmax(log p / T_cal), (n,)."""
        return softmax(self.log_probs, self.temperature).max(1)

    def restricted_argmax(self, probs: np.ndarray) -> np.ndarray:
        """argmax over the shared classes' columns (and each face's `answers`) of per-image probabilities (n, C)."""
        return answered_argmax(probs[:, self.columns], self.answers)

    def accuracy_of(self, probs: Optional[np.ndarray]) -> Optional[float]:
        """Accuracy of other per-image probabilities (a PIN output) among the shared classes."""
        return None if probs is None else float((self.restricted_argmax(probs) == self.targets).mean())


def choose_split(model_path: str | Path, dataset: PreparedDataset, split: Optional[str] = None) -> SplitChoice:
    """The split to evaluate on: the one asked for; else, for a run folder trained on this store
    with --fold K (or a checkpoint inside its run folder), fold K (the run's test set); else test; else valid / val; else the
    run's own held-out validation images. EvaluateError when none applies."""
    if split is not None:
        return SplitChoice(split)
    run = Path(model_path)
    if run.is_file() and (run.parent / CONFIG_FILE).is_file():  # a checkpoint in its run folder (best.calibrated.pt)
        run = run.parent
    config = _run_config(run, dataset)
    test_split = (config.get("resolved") or {}).get("test_split")
    if test_split:
        return SplitChoice(test_split, reason=f"the run's held-out fold (--fold {config.get('fold')})")
    available = dataset.splits()
    if "test" in available:
        return SplitChoice("test", reason="the store's test split")
    if (validation := dataset.validation_split()) is not None:
        return SplitChoice(validation, reason="the store has no test split: its validation split")
    if config and (run / HELDOUT_FILE).is_file():
        ids = read_heldout_ids(run)
        train_split = config.get("train_split", "train")
        return SplitChoice(train_split, tuple(ids),
                           f"the store has no test or validation split: the {len(ids)} images the run held out of "
                           f"{train_split} for validation ({HELDOUT_FILE}); they selected best.pt, so this is optimistic")
    folds = f" or a fold ({', '.join(dataset.fold_splits()[:3])}, ...)" if dataset.folds else ""
    raise EvaluateError(f"{dataset.root} has no test or validation split: name one with --split "
                        f"(splits: {', '.join(available)}){folds}")


def _source_config(source: str) -> dict:
    """The training config (resolved included) of a run folder or checkpoint a model started from
    or was taught by (--fine-tune, --teacher); {} where it cannot be read."""
    path = Path(source)
    try:
        if path.is_dir():
            return json.loads((path / CONFIG_FILE).read_text())
        info = CheckpointInfo.of(load_checkpoint(path))
        return {**(info.config or {}), "resolved": dict(info.resolved or {})}
    except (OSError, ValueError, TypeError, PoiError):
        return {}


def inherited_overlap(config: dict, dataset: PreparedDataset, split: str) -> list[str]:
    """Notes for a scored split that the model's --fine-tune start or --teacher trained on (a
    --fold K run fine-tuned from a run on all of CK+ train had seen its test fold)."""
    notes = []
    for option, how in (("fine_tune", "started from"), ("teacher", "was taught by")):
        source = config.get(option)
        if source and training_overlap(_source_config(str(source)), dataset, split):
            notes.append(f"the model {how} {source} (--{option.replace('_', '-')}), which trained on {split} of this "
                         "folder: its accuracy here is optimistic")
    return notes


def _run_config(run: Path, dataset: PreparedDataset) -> dict:
    """config.json of a run folder trained on this very store; {} otherwise."""
    if not (run.is_dir() and (run / CONFIG_FILE).is_file()):
        return {}
    try:
        config = json.loads((run / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return config if trained_on_folder(config, dataset.root) else {}


def predict_mapped(model_path: str | Path, prepared_dir: str | Path, split: Optional[str] = None, device: str = "auto",
                   batch: int = 256, amp: str = "auto") -> MappedPredictions:
    """A run folder (its best.pt) or a checkpoint on the images of `split` (choose_split when
    None) whose class it knows."""
    checkpoint_path = resolve_checkpoint(model_path)
    dataset = PreparedDataset(prepared_dir)
    choice = choose_split(model_path, dataset, split)
    checkpoint = load_checkpoint(checkpoint_path)
    info = CheckpointInfo.of(checkpoint)
    data = dataset.split(choice.split, ids=choice.ids)
    dataset.check_usable_face_rows()  # the twins read every usable face, outside the split too: checked before the work
    model_classes = list(info.classes)
    shared, columns, label_map, mapping_note = class_mapping(model_classes, dataset.classes, dataset.labelled_classes)
    if not shared:
        raise EvaluateError(f"the model's classes ({', '.join(model_classes)}) share none with the data's")
    keep = label_map[data.labels] >= 0
    targets = label_map[data.labels][keep]
    if not keep.any():
        raise EvaluateError(f"no image of split {choice.name!r} has a class the model knows")
    labels = np.asarray(columns)[targets]  # in the model's columns
    answers = None
    if dataset.members:  # each member's faces among the classes its own folder labels, as training validates
        answers = dataset.answer_mask(data.store_rows[keep])[:, [dataset.classes.index(name) for name in shared]]
        answers = None if answers.all() else answers
    predictions = predict_checkpoint_split(checkpoint, dataset.faces, data.store_rows[keep], labels, device, batch, amp,
                                           mirror=info.recipe.flip)
    return MappedPredictions(checkpoint_path, info, dataset, shared, columns, mapping_note, keep, targets,
                             predictions, choice, data.store_rows, answers)


def evaluate(model_path: str | Path, prepared_dir: str | Path, split: Optional[str] = None, device: str = "auto",
             batch: int = 256, amp: str = "auto") -> dict:
    """Evaluate a run folder (its best.pt) or a checkpoint on a split of a prepared folder
    (choose_split's rule when `split` is None; the result's split and split_reason say which)."""
    return evaluation_of(predict_mapped(model_path, prepared_dir, split, device, batch, amp))


def evaluation_of(mapped: MappedPredictions) -> dict:
    """The JSON-able result of `poi evaluate` (keys: docs/training.md) from a model's predictions on a split."""
    predictions, shared = mapped.predictions, mapped.classes
    confusion = mapped.confusion
    per_class = {
        name: {"n": int(confusion[i].sum()), "recall": recall}
        for i, (name, recall) in enumerate(zip(shared, per_class_recall(confusion)))
    }
    w = predictions.consistency
    stored = mapped.stored_calibration
    calibration = calibration_block(mapped.log_probs, mapped.targets, w, None if stored is None else stored.temperature)
    return {
        "checkpoint": str(mapped.checkpoint_path), "epoch": mapped.info.epoch, "data": str(mapped.dataset.root),
        "split": mapped.choice.name, "split_reason": mapped.choice.reason, "n_images": int(mapped.keep.sum()), "n_left_out": int((~mapped.keep).sum()),
        "classes": shared, "recipe": {**mapped.recipe.to_dict(), "description": mapped.recipe.describe()},
        "precision": "bf16" if predictions.bf16 else "float32",
        "accuracy": mapped.accuracy,
        "mean_class_recall": float(np.mean([v["recall"] for v in per_class.values() if v["recall"] is not None])),
        "per_class": per_class, "confusion_matrix": confusion.tolist(),
        "checkpoint_temperature": None if stored is None else stored.temperature,
        "confidence_strata": confidence_strata(mapped.confidence, mapped.correct),
        "consistency_strata": None if w is None else confidence_strata(w, mapped.correct),
        "consistency_quantiles": None if w is None else consistency_quantiles(w),
        "calibration": calibration,
        "pin_intermediate_accuracy": mapped.accuracy_of(predictions.intermediate_probs()),
        "pin_average_accuracy": mapped.accuracy_of(predictions.region_average()),
        "trn_accuracy": mapped.trn_accuracy,
        **agreement_blocks(mapped.regions_agree, mapped.pin_predicted, mapped.predicted, mapped.correct),
        "twins": twin_block(mapped.twins, mapped.correct),
        "members": mapped.members,
        "class_mapping": mapped.mapping_note, "notes": evaluation_notes(mapped, calibration),
    }


def accuracy_cell(correct: np.ndarray) -> dict:
    """{"n", "accuracy"} of a group of images (accuracy None for none)."""
    return {"n": int(len(correct)), "accuracy": float(correct.mean()) if len(correct) else None}


def twin_block(twins: np.ndarray, correct: np.ndarray) -> dict:
    """Accuracy on the faces with a pixel-identical twin among the folder's faces not evaluated here
    ("with": for a validation split, usually faces the model was trained on) and on the rest
    ("without": faces with no exact copy elsewhere in this folder; near-copies are not caught)."""
    return {"rule": "a pixel-identical face among the prepared folder's faces not evaluated here",
            "with": accuracy_cell(correct[twins]), "without": accuracy_cell(correct[~twins])}


def agreement_blocks(regions_agree: Optional[np.ndarray], pin_predicted: Optional[np.ndarray], predicted: np.ndarray,
                     correct: np.ndarray) -> dict:
    """How far to trust a prediction by its record's fields (POI_SPEC 4b), each None when the model lacks it:

    regions_agree: accuracy per level 0..4, [{"regions_agree", "n", "accuracy"}, ...];
    pin_agreement: accuracy where pin_expression is the prediction ("same") and where not ("differs");
    flagged: the faces with regions_agree below 4 or a differing pin_expression against the rest,
    and how many points more accurate the rest is ("gap")."""
    blocks: dict = {"regions_agree": None, "pin_agreement": None, "flagged": None}
    if regions_agree is None:
        return blocks
    blocks["regions_agree"] = [{"regions_agree": level, **accuracy_cell(correct[regions_agree == level])}
                               for level in range(len(REGIONS) + 1)]
    flagged = regions_agree < len(REGIONS)
    if pin_predicted is not None:
        same = pin_predicted == predicted
        blocks["pin_agreement"] = {"same": accuracy_cell(correct[same]), "differs": accuracy_cell(correct[~same])}
        flagged = flagged | ~same
    rest, low = accuracy_cell(correct[~flagged]), accuracy_cell(correct[flagged])
    gap = None if rest["accuracy"] is None or low["accuracy"] is None else rest["accuracy"] - low["accuracy"]
    rule = f"regions_agree below {len(REGIONS)}" + (" or pin_expression differs" if pin_predicted is not None else "")
    blocks["flagged"] = {"rule": rule, "flagged": low, "rest": rest, "gap": gap}
    return blocks


def what_the_model_saw(mapped: MappedPredictions) -> list[str]:
    """Notes for evaluated images the model has seen in some way: images it trained on (its
    training split; a fold of it other than a --fold K run's held-out fold), the split it
    selected best.pt on (its validation split: where a store's only held-out split is val,
    SFEW, the run was chosen on the images now scored), and the split its T_cal and
    prediction recipe were fitted on (`poi calibrate`). Figures on such images are optimistic."""
    config = mapped.info.config or {}
    data, train_split = config.get("data"), config.get("train_split", "train")
    split, root = mapped.choice.split, mapped.dataset.root
    same_store = trained_on_folder(config, root)
    # a combined folder's member (poi combine) is trained on and selected on as well: its
    # train split went into training, its val split into the validation best.pt was chosen on
    member = bool(data) and not same_store and root.resolve() in member_paths(data)
    notes = []
    if (same_store or member) and mapped.choice.ids is None:
        run = {**config, "resolved": dict(mapped.info.resolved or {})}
        # a member's own folder is not the run's: its training split is the same name, its folds are not the run's
        overlap = training_overlap(run, mapped.dataset, split) if same_store else "train" if split == train_split else None
        held_fold = parse_fold_split(held_out_fold(run) or "")
        if overlap == "train":
            except_fold = f" (all of it but fold {held_fold}, its held-out fold)" if held_fold is not None else ""
            notes.append(f"the model trained on {split} of this folder{except_fold}: its accuracy on images it has seen "
                         "says nothing about faces it has not")
        elif overlap == "fold":
            trained = f"--fold {held_fold} trained on every fold but {held_fold}" if held_fold is not None \
                else f"it trained on {train_split}, which the folds partition"
            notes.append(f"{split} is training data of this model ({trained}): its accuracy on images it has seen says "
                         "nothing about faces it has not")
        elif split == mapped.info.resolved.get("val_split"):
            notes.append(f"the run selected best.pt on {split} of this folder (its validation split), so this accuracy is "
                         "optimistic: report a split it never chose on")
    if mapped.choice.ids is None and not notes:  # where the model itself saw the split, that is said already
        notes += inherited_overlap(config, mapped.dataset, split)
    stored = mapped.stored_calibration
    if stored is not None and mapped.choice.ids is None:
        where = None
        if stored.fitted_on(split, root, trained_there=same_store):
            where = "this folder"
        elif stored.split == split and stored.data is not None and root.resolve() in member_paths(stored.data):
            where = f"the combined folder {Path(stored.data).name}, which holds this folder's"
        elif stored.fitted_on(split, root, trained_there=member):
            # written before calibration.data: fitted on this member's split or the combined folder's, which holds it
            where = "this folder or of the combined folder it trained on, which holds it"
        if where:
            notes.append(f"T_cal and the prediction recipe ({stored.recipe.describe()}) "
                         f"were fitted on {split} of {where}: confidence, ECE and the recipe's gain are measured on "
                         "the images they were fitted on")
    return notes


# bf16 autocast (--amp auto where the CPU or GPU has it) rounds activations: FERPlus valid's
# 3,191 faces give 87.18 % under it, 87.25 % in float32, what poi predict computes
BF16_NOTE = ("computed under bf16 autocast: a few faces may be answered otherwise than poi predict answers them "
             "(float32); --amp off gives its figures")


def evaluation_notes(mapped: MappedPredictions, calibration: Optional[dict]) -> list[str]:
    """What the reader of an evaluation should know: class mapping, uncalibrated checkpoint, missing parts."""
    predictions = mapped.predictions
    notes = [mapped.mapping_note] if mapped.mapping_note else []
    if mapped.stored_calibration is None:
        notes.append(UNCALIBRATED_NOTE)
    elif mapped.stored_calibration.caveat:  # fitted on a handful of images, or clipped: confidence means little
        notes.append(f"the checkpoint's calibration: {mapped.stored_calibration.caveat}")
    notes += what_the_model_saw(mapped)
    if predictions.bf16:
        notes.append(BF16_NOTE)
    protocol = mapped.dataset.protocol
    if protocol.get("kind") == RANDOM_PROTOCOL and mapped.choice.split == "test":  # CK+ --test-fraction
        notes.append(RANDOM_SPLIT_NOTE.format(pct=float(protocol.get("test_fraction", 0.2))))
    if predictions.consistency is None:
        notes.append("baseline model (no PIN): no consistency w (consistency strata, quantiles and score are null) "
                     "and no PIN accuracies")
    elif predictions.gate_weights is None:
        notes.append("model trained without OIM: no intermediate prediction p~*")
    if calibration is None:
        notes.append("fewer than 4 images: no calibration study (it fits T_cal on one half, measures on the other)")
    manifest = mapped.dataset.manifest
    if not stored_digests(manifest[manifest["status"] == STATUS_OK]).all():
        notes.append(f"prepared before poi wrote {DIGEST_COLUMN}: twins found by hashing faces.npy; a folder that old "
                     "may also hold blank images as faces (prepare the data again into a new folder)")
    return notes


def calibration_block(logits: np.ndarray, targets: np.ndarray, consistency: Optional[np.ndarray],
                      checkpoint_temperature: Optional[float] = None, seed: int = CALIBRATION_SEED) -> Optional[dict]:
    """calibration_study on the evaluated images (logits: the recipe's log p, and targets, in the shared classes), with the
    reliability bins and risk-coverage curves of its measured half; None for fewer than 4 images.

    Scores: max_softmax, confidence (T_cal fitted on the study's fitting half), consistency
    (None for a baseline model) and, for a calibrated checkpoint, checkpoint_confidence: the
    confidence `poi predict` reports, with the checkpoint's own T_cal, on the same half (on
    data the model was not calibrated on, e.g. zero-shot, what a user gets; `confidence`
    says what a T_cal fitted on this data would give).
    """
    if len(targets) < 4:  # two images in each half at least: a T fitted on one image is no study
        return None
    study = calibration_study(logits, targets, consistency, seed)
    study["scores"].setdefault("consistency", None)
    _, held = halves(len(targets), seed)
    raw, calibrated = softmax(logits[held]), softmax(logits[held], study["temperature_half"])
    correct = raw.argmax(1) == targets[held]
    if checkpoint_temperature is not None:
        shipped = softmax(logits[held], checkpoint_temperature)
        study["scores"]["checkpoint_confidence"] = score_metrics(shipped.max(1), correct, shipped, targets[held])
    scores = {"max_softmax": raw.max(1), "confidence": calibrated.max(1)}
    if consistency is not None:
        scores["consistency"] = np.asarray(consistency)[held]
    return {
        **study, "seed": seed,
        "reliability": {name: reliability_bins(scores[name], correct) for name in ("max_softmax", "confidence")},
        "risk_coverage": risk_coverage_points(scores, correct),
    }


def risk_coverage_points(scores: dict[str, np.ndarray], correct: np.ndarray, points: int = CURVE_POINTS) -> dict:
    """Risk-coverage curves of several scores at up to `points` coverages k / n (exact there):
    {"coverage": [...], score name: [risk, ...], ...}."""
    n = len(correct)
    k = np.unique(np.round(np.linspace(1, n, min(n, points))).astype(int))
    curves: dict[str, list[float]] = {"coverage": (k / n).tolist()}
    for name, score in scores.items():
        curves[name] = risk_coverage(score, correct)[1][k - 1].tolist()
    return curves


def consistency_quantiles(w: np.ndarray) -> dict[str, float]:
    """Where the UEM w of the images lies: min, 5 %, 25 %, 50 %, 75 % quantiles, max.
    (Its scale depends on the model: a w packed near 1 ranks images but says little alone.)"""
    points = {"min": 0.0, "q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "max": 1.0}
    return {name: float(np.quantile(w, q)) for name, q in points.items()}


# what `poi evaluate --out` writes (write_reports); a folder is its own where metrics.json is an evaluation's
EVALUATE_OUTPUTS = FolderOutputs(
    "poi evaluate", ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "reliability.png", "risk_coverage.png"),
    "metrics.json", lambda path: json_with_keys(path, "checkpoint", "split", "classes", "accuracy", "confusion_matrix"))


def write_reports(result: dict, out_dir: str | Path) -> list[Path]:
    """metrics.json, confusion_matrix.csv (counts, rows = true class) and confusion_matrix.png;
    with a calibration block also reliability.png and risk_coverage.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = result["classes"]
    write_json(out / "metrics.json", result)
    rows = [{"true_class": name, **dict(zip(classes, counts))} for name, counts in zip(classes, result["confusion_matrix"])]
    write_csv(out / "confusion_matrix.csv", ["true_class", *classes], rows)
    plot_confusion(np.array(result["confusion_matrix"]), classes, out / "confusion_matrix.png",
                   title=f"{result['split']}: accuracy {result['accuracy']:.2%} ({result['n_images']} images)")
    files = [out / "metrics.json", out / "confusion_matrix.csv", out / "confusion_matrix.png"]
    calibration = result.get("calibration")
    if calibration:
        files.append(plot_reliability(calibration, out / "reliability.png"))
        files.append(plot_risk_coverage(calibration, out / "risk_coverage.png"))
    return files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(calibration: dict, path: Path) -> Path:
    """Reliability diagram of the measured half: accuracy against mean confidence per bin,
    raw softmax and after temperature scaling, with the diagonal and each ECE beside its sampling floor."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.0, 4.6))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    labels = {"max_softmax": "raw softmax", "confidence": f"temperature-scaled (T = {calibration['temperature_half']:.3g})"}
    for (name, label), marker in zip(labels.items(), ("o", "s")):
        filled = [b for b in calibration["reliability"][name] if b["n"]]
        row = calibration["scores"][name]
        floor = f" (floor {row['ece_floor']:.3f})" if row.get("ece_floor") is not None else ""
        axes.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker=marker,
                  label=f"{label}, ECE {row['ece']:.3f}{floor}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("mean confidence in bin")
    axes.set_ylabel("accuracy in bin")
    axes.set_title(f"measured half: {calibration['n_measured']} images (T fitted on the other {calibration['n_fit']})\n"
                   "floor: the ECE a perfectly calibrated score would measure here", fontsize=9)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return save_figure(figure, path, dpi=120)


def plot_risk_coverage(calibration: dict, path: Path) -> Path:
    """Risk (error rate of the most confident images) against coverage on the measured half,
    one curve per score (max_softmax, confidence, consistency when present), AURC in the legend."""
    plt = _pyplot()
    curves = calibration["risk_coverage"]
    figure, axes = plt.subplots(figsize=(5.5, 4.0))
    for name, style in (("max_softmax", "-"), ("confidence", "--"), ("consistency", ":")):
        if name in curves and calibration["scores"].get(name):
            axes.plot(curves["coverage"], curves[name], linestyle=style,
                      label=f"{name}, AURC {calibration['scores'][name]['aurc']:.4f}")
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("coverage (fraction of images kept, most confident first)")
    axes.set_ylabel("risk (error rate of those kept)")
    axes.set_title(f"measured half: {calibration['n_measured']} images", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path, dpi=120)


def confusion_cell(percent: float, row_total: int) -> str:
    """A cell of the confusion picture: the row's percentage, "-" where the true class has no image
    (it drew 0.0, which read as 0 % recall)."""
    return "-" if row_total == 0 else f"{percent:.1f}"


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix in percent (like the paper's Fig. 11)."""
    plt = _pyplot()
    totals = confusion.sum(1, keepdims=True)
    percent = np.divide(confusion * 100.0, totals, out=np.zeros(confusion.shape), where=totals > 0)
    figure, axes = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.7 * len(classes)))
    axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i in range(len(classes)):
        for j in range(len(classes)):  # a class with no image has no row to read: "-", as the table says
            axes.text(j, i, confusion_cell(percent[i, j], totals[i, 0]), ha="center", va="center", fontsize=8,
                      color="white" if percent[i, j] > 50 else "black")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), [f"{name} (n={int(n)})" for name, n in zip(classes, totals[:, 0])])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)

