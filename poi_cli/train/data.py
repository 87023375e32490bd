"""What a training run trains and validates on: `select_data(TrainConfig) -> TrainingData`.

The training split with its labels (the manifest's, a --labels file's, or flipped on the
fly by --noise), the clean labels where known, and the validation split: the one asked
for, else valid, else val, else a stratified, seeded hold-out of the training split
(never test). May import poi_cli.core and poi_cli.data (numpy only, no torch here).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from poi_cli.data.combined import member_of_rows, sampling_positions
from poi_cli.data.folds import fold_split_name, parse_fold_split
from poi_cli.data.store import PreparedDataset, SplitData
from poi_cli.core.layout import CONFIG_FILE, HELD_OUT_MARK, HELDOUT_FILE
from poi_cli.model.checkpoint import held_out_mask, read_heldout_ids, trained_on_folder
from poi_cli.train.config import TrainConfig, TrainError



@dataclass
class TrainingData:
    """The images and labels of one run: the store, the training rows and labels, the validation rows."""

    dataset: PreparedDataset
    train: SplitData  # the rows trained on (a hold-out removed)
    labels: np.ndarray  # the labels trained on (noisy under --noise)
    clean_labels: Optional[np.ndarray]  # known under --noise, or from a label file that has them
    noise_realised: Optional[float]  # share of training labels that differ from the clean ones
    val: Optional[SplitData]
    val_split: Optional[str]  # its name, as recorded in config.json
    val_note: str  # the line the run prints about validation
    held_out: bool = False  # val was held out of the training split (its ids go into the run folder)
    test_split: Optional[str] = None  # the images the run must never see, kept for evaluation (fold3 under --fold 3)
    # A combined folder (data/combined.py): positions into train drawn per epoch, by the members'
    # sampling weights (None: each image once), and the member of each validation image.
    sampling: Optional[np.ndarray] = None
    val_members: Optional[np.ndarray] = None
    # (validation images, classes) bool: the classes each is answered among (PreparedDataset.answer_mask:
    # CK+48 labels no neutral, a combined folder's SFEW member no contempt); None: every class
    val_answers: Optional[np.ndarray] = None
    # --soft-labels: (training images, classes) float32, each image's vote distribution (PreparedDataset.vote_targets)
    soft_targets: Optional[np.ndarray] = None

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.dataset.members]

    def epoch_rows(self) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(store rows, labels, clean labels or None) an epoch draws from, the sampling weights applied."""
        rows, labels, clean = self.train.store_rows, self.labels, self.clean_labels
        if self.sampling is None:
            return rows, labels, clean
        pick = self.sampling
        return rows[pick], labels[pick], None if clean is None else clean[pick]

    def epoch_soft_targets(self) -> Optional[np.ndarray]:
        """The soft targets of epoch_rows' images, in its order (None without --soft-labels)."""
        if self.soft_targets is None or self.sampling is None:
            return self.soft_targets
        return self.soft_targets[self.sampling]


def select_data(config: TrainConfig) -> TrainingData:
    """Open the store and pick the training labels and the validation images as `config` says."""
    try:
        dataset = PreparedDataset(config.data)
    except ValueError as error:
        raise TrainError(str(error)) from None
    if config.fold is not None and config.fold_index is None:
        raise TrainError("--fold all trains several runs: call poi_cli.pipeline.train_folds (the CLI does)")
    train = dataset.split(config.train_split, labels_file=config.labels, exclude_fold=config.fold_index)
    test_split = None if config.fold_index is None else fold_split_name(config.fold_index)
    labels, clean, realised = training_labels(dataset, train, config)
    held_out, from_train = False, False  # from_train: validation held out of train (or nothing)
    held_note = ""
    if config.val_split is not None and (fold := parse_fold_split(config.val_split)) is not None:
        # a fold's images are part of the split the folds partition: trained on, or (--fold K) the test fold
        what = (f"the fold this run is evaluated on (--fold {config.fold_index})" if fold == config.fold_index
                else f"part of {config.train_split}, which this run trains on")
        raise TrainError(f"--val-split {config.val_split}: a fold is {what}; --val-fraction holds whole subjects of the "
                         "training folds out for validation by itself")
    if config.val_split is not None and config.val_split.lower() == "none":
        val, name, note = None, None, "no validation (--val-split none): best.pt is the last epoch"
    elif (name := choose_val_split(dataset, config.val_split, config.train_split)) is not None:
        val, note = dataset.split(name), f"validation split: {name}"
    elif config.val_fraction > 0:
        # No validation split in the store (RAF-DB: train/test only): hold out part of
        # train, with the labels training sees, rather than ever select on test.
        from_train = True
        subjects = dataset.subjects(train)
        if subjects is not None and len(set(subjects[subjects != ""])) < 2:
            subjects = None  # one subject: only its images can be held out
        # whatever hold_out would draw today: a resumed run validates on the images it held out when
        # it started, a later --rounds round on round 1's (hold_out draws by the labels, which the
        # cleaning changed: a new draw validated on images the round before, its teacher, trained on)
        held = held_out_mask(config.resume, train.ids) if config.resume else None
        # the run whose hold-out this is (--heldout-from; a resumed run's are those it inherited as well)
        inherited_from = Path(config.heldout_from).resolve().name if config.heldout_from is not None else None
        if held is None and config.heldout_from is not None:
            held = held_out_mask(config.heldout_from, train.ids)
            if held is None:
                raise TrainError(f"--heldout-from {config.heldout_from}: no {HELDOUT_FILE} there (a run writes it when "
                                 "it holds images out of its training split for validation)")
            listed = len(read_heldout_ids(config.heldout_from))
            if not held.any():
                within = f"{config.train_split} of {dataset.root}" + (
                    f" without fold {config.fold_index}" if config.fold_index is not None else "")
                raise TrainError(f"--heldout-from {config.heldout_from}: none of the {listed} images it held out is in "
                                 f"{within} (a run of another store or split?)")
            if held.sum() < listed:
                held_note = (f"; {listed - int(held.sum())} of the {listed} images {Path(config.heldout_from).name} "
                             f"held out are not in this run's {config.train_split} split (another fold, or left out "
                             "by its labels) and are not validated on")
        if held is None:
            held = hold_out(labels, config.val_fraction, config.seed, groups=subjects)
            held_note = taught_on_validation(config, train.ids[held])
        other = dataset.validation_split()  # valid/val, when training on it (--train-split val)
        why = (f"{other} is the split it trains on" if other is not None and other == config.train_split
               else "the store has no valid/val split")
        if not held.any():
            # Every class's images are its last training ones (one image each, or one subject):
            # nothing to validate on. Scoring the empty hold-out gave val_acc 0 every epoch and
            # best.pt at epoch 1; this is --val-split none's run, said so.
            rule = "a class's last training image is never held out" + (", a subject only whole" if subjects is not None else "")
            val, name, note = None, None, (
                f"no validation ({why}, and its {len(labels)} images are too few to hold any out at --val-fraction "
                f"{config.val_fraction:g}: {rule}): best.pt is the last epoch")
        else:
            held_out = True
            val = SplitData(train.store_rows[held], labels[held], train.ids[held])
            keep = ~held
            train = SplitData(train.store_rows[keep], train.labels[keep], train.ids[keep])
            labels, clean = labels[keep], None if clean is None else clean[keep]
            if clean is not None and len(labels):  # the noise of the labels trained on, not of the held-out ones too
                realised = float((labels != clean).mean())
            # what drew them: --val-fraction's share, or the run --heldout-from names (its fraction is not this one)
            name = (f"{config.train_split}{HELD_OUT_MARK} by {inherited_from}]" if inherited_from
                    else f"{config.train_split}{HELD_OUT_MARK} {config.val_fraction:g}]")
            whole = "" if subjects is None else subject_note(subjects, held)
            drawn = (f"those {inherited_from} held out" if inherited_from
                     else f"--val-fraction {config.val_fraction:g}, seed {config.seed}")
            note = f"validation: {held.sum()} images held out of {config.train_split} ({drawn}{whole}; {why}){held_note}"
    else:
        val, name, note = None, None, "no validation (--val-fraction 0): best.pt is the last epoch"
    if config.heldout_from is not None and not from_train:
        note += (f"; --heldout-from is not used (it names a hold-out of {config.train_split}, and the run "
                 f"{'validates on ' + name if name else 'has no validation'})")
    if test_split is not None:
        note += f"; {test_split} ({len(dataset.split(test_split).ids)} images) is kept for evaluation"
    if len(labels) == 0:
        raise TrainError(f"no training images in {dataset.root}'s {config.train_split} split"
                         + (f" with the labels of {config.labels} (every image left out, label -1?)" if config.labels else ""))
    data = TrainingData(dataset, train, labels, clean, realised, val, name, note, held_out, test_split)
    if config.soft_labels:
        data.soft_targets = dataset.vote_targets(train)
        if data.soft_targets is None:
            raise TrainError(f"--soft-labels: {dataset.root}'s manifest has no annotator votes "
                             "(vote_<class> columns, as `poi prepare ferplus` writes)")
        disagree = float((data.soft_targets.max(1) < 1).mean())
        data.val_note += f"; soft labels: the annotators' votes ({disagree:.1%} of the training images not unanimous)"
    if dataset.members:
        combined_sampling(data, config.seed)
    if val is not None and not (answers := dataset.answer_mask(val.store_rows)).all():
        data.val_answers = answers
    return data


def combined_sampling(data: TrainingData, seed: int) -> None:
    """A combined folder's members: the sampling weights of the training split and the
    member of each validation image (accuracy is reported per member), with the line saying so."""
    members = data.dataset.members
    train_member = member_of_rows(members, data.train.store_rows)
    weights = [m.weight for m in members]
    if any(w != 1 for w in weights):
        data.sampling = sampling_positions(train_member, weights, seed)
        if len(data.sampling) == 0:
            raise TrainError("the sampling weights leave no training image (every member with images has weight 0)")
    if data.val is not None:
        data.val_members = member_of_rows(members, data.val.store_rows)
    drawn = np.bincount(train_member[data.sampling] if data.sampling is not None else train_member, minlength=len(members))
    data.val_note += "; combined: " + ", ".join(
        f"{m.name} {np.sum(train_member == k)} training images (weight {m.weight:g}: {drawn[k]} per epoch)"
        for k, m in enumerate(members))
    if data.val_members is not None:
        data.val_note += "; selected on the mean of the members' validation accuracies"


def training_labels(dataset: PreparedDataset, train: SplitData, config: TrainConfig
                    ) -> tuple[np.ndarray, Optional[np.ndarray], Optional[float]]:
    """(labels trained on, clean labels or None, realised noise rate or None) of the training split."""
    labels, clean = train.labels, train.clean_labels
    if config.noise > 0:
        from poi_cli.data.noise import flip_split_labels

        clean = labels
        labels = flip_split_labels(dataset, train.store_rows, labels, config.noise, config.noise_seed)
    realised = None
    if clean is not None and len(labels):  # --noise, or a --labels file whose clean labels are known
        realised = float((labels != clean).mean())
    for name, values in (("label", labels), ("clean label", clean)):
        if values is not None and len(values) and (values.min() < 0 or values.max() >= dataset.num_classes):
            raise TrainError(f"a training {name} lies outside 0..{dataset.num_classes - 1}")
    return labels, clean, realised


def choose_val_split(dataset: PreparedDataset, requested: Optional[str], train_split: str) -> Optional[str]:
    """The store's validation split: the one asked for, else valid, else val; None when there is none."""
    available = dataset.splits()
    if requested is not None:
        if requested not in available:
            raise TrainError(f"validation split {requested!r} has no usable faces in {dataset.root} (splits: {', '.join(available)})")
        return requested
    return dataset.validation_split(exclude=train_split)


def subject_note(subjects: np.ndarray, held: np.ndarray) -> str:
    """What the hold-out note says of subjects: how many were held out whole, or how many are
    also trained on (a run started before hold-outs kept subjects whole, resumed)."""
    validated, trained = set(subjects[held]) - {""}, set(subjects[~held]) - {""}
    if shared := validated & trained:
        return f", {len(shared)} of its {len(validated)} subjects also trained on"
    return f", whole subjects: {len(validated)} of {len(validated | trained)}, none of them trained on"


def taught_on_validation(config: TrainConfig, held_ids: np.ndarray) -> str:
    """A note for a fresh hold-out that a --teacher's or --fine-tune start's run trained on in
    part (a round trained by hand after `poi clean` without --heldout-from): the best epoch and
    T_cal would be chosen on images the model was taught or started on; '' otherwise."""
    for option, source in (("--teacher", config.teacher), ("--fine-tune", config.fine_tune)):
        run = Path(source) if source else None
        run = run if run is None or run.is_dir() else run.parent
        if run is None or not (run / CONFIG_FILE).is_file() or (held := held_out_mask(run, held_ids)) is None:
            continue
        try:
            trained = json.loads((run / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            continue
        same = (isinstance(trained, dict) and trained_on_folder(trained, config.data)
                and trained.get("train_split", "train") == config.train_split)
        if same and (seen := int((~held).sum())):
            return (f"; {seen} of these {len(held_ids)} images are ones {run.name} ({option}) trained on: "
                    f"--heldout-from {run} validates on the images it held out")
    return ""


def hold_out(labels: np.ndarray, fraction: float, seed: int, groups: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean mask of a stratified, seeded `fraction` of the positions: one at least per class of
    2+ images, and never a class's last one (a class of one image stays in training: at
    --val-fraction 0.5 its only image went to validation, and the class was never trained on).

    groups (a subject per image, "" unknown): whole subjects are held out instead, so that no
    subject is both trained on and validated on (CK+ keeps several near-identical frames of
    each sequence: an image-level hold-out validated, and fitted T_cal, on copies of training
    faces)."""
    if groups is not None:
        return hold_out_groups(labels, groups, fraction, seed)
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng([seed, 7919])
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        count = int(math.floor(fraction * len(positions) + 0.5))
        count = min(max(count, 1), len(positions) - 1) if len(positions) >= 2 else 0
        mask[rng.permutation(positions)[:count]] = True
    return mask


def hold_out_groups(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of whole groups, in a seeded order, until `fraction` of the images (rounded,
    one group at least) are held out: first groups that bring a class validation lacks, then any.
    A group is passed over when taking it would leave a class without a training image. An
    image of unknown group ("") is a group of its own."""
    keys = np.asarray([g if g else f"\0{i}" for i, g in enumerate(groups)], dtype=object)
    names, inverse = np.unique(keys, return_inverse=True)
    target = max(int(math.floor(fraction * len(labels) + 0.5)), 1)
    left = np.bincount(labels, minlength=int(labels.max()) + 1)  # training images per class
    mask = np.zeros(len(labels), dtype=bool)
    order = np.random.default_rng([seed, 7919]).permutation(len(names))
    for only_new_classes in (True, False):
        for group in order:
            members = (inverse == group) & ~mask
            taken = np.bincount(labels[members], minlength=len(left))
            if mask.sum() >= target:
                return mask
            if not members.any() or np.any((taken > 0) & (taken >= left)):
                continue  # taken already, or a class's last training images
            if only_new_classes and not np.any((taken > 0) & ~np.isin(np.arange(len(left)), labels[mask])):
                continue
            mask |= members
            left -= taken
    return mask
