"""`poi refit-head`: fit the TRN's classifier (its last FC layer) again on the frozen trunk's
features of the training split, with class-balanced weights, choosing the balance on validation.

    poi refit-head model.pt prepared/ferplus_sfew96 --out refit.pt
    poi calibrate refit.pt prepared/ferplus96 --in-place      # the recipe and T_cal, for the new head

Classifier re-training (cRT; Kang et al., ICLR 2020, "Decoupling representation and classifier
for long-tailed recognition"): the trunk and layer4 stay as trained; the features z_i the TRN's
FC reads (layer4, global average pool) are computed once for every training image and its
mirror, without augmentation, and W, b are fitted by L-BFGS from the trained ones to minimise

    L(W, b) = sum_i a_i CE(W z_i + b, y_i) / sum_i a_i  +  l2 * ||W - W_0||^2        (refit_loss)
    a_i = m_i * N_{y_i}^(-q),  N_k = sum_{i: y_i = k} m_i                             (sample_weights)

m_i the sampling weight of the image's dataset (a combined folder's members, else 1) and q the
class power (0: the training distribution; 1: every class the same total weight). Each
(q, l2) of the grid is scored on the validation split by the TRN alone, on the face or on
the face and its mirror as the model's recipe flips (a fusion with the PIN is left to `poi
calibrate`), by the mean of the members' accuracies (or mean class recalls, --select
recall), as `poi train` selects; the best is written to a new checkpoint that differs from
the model only in trn.fc and in its `head_refit` record, and that has no calibration and no
prediction recipe (T_cal was fitted to the old head; until `poi calibrate` runs, it
predicts with the TRN alone, on the face alone, at T = 1): `poi calibrate` it next.

Why it exists: fine-tuning with a teacher and strong augmentations leaves a head fitted to
augmented views and to the teacher; a head fitted to the faces as prediction sees them moved
the bundled model's SFEW and CK+ accuracy (docs/results/bundled_models.md). Only the TRN's FC
changes: the PIN, the confidence's regions and the AUs are the model's own.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from rich.console import Console

from poi_cli.core.atomic import output_file, refuse_input_as_output
from poi_cli.core.errors import PoiError
from poi_cli.core.locks import claim
from poi_cli.core.metrics import answered_argmax, confusion_matrix, per_class_recall
from poi_cli.core.progress import progress_bar
from poi_cli.core.runtime import autocast, select_device, use_bf16
from poi_cli.data.combined import member_of_rows
from poi_cli.data.folds import parse_fold_split
from poi_cli.data.loader import BatchLoader
from poi_cli.data.preprocess import to_model_input
from poi_cli.data.store import PreparedDataset
from poi_cli.model.calibration import softmax
from poi_cli.model.checkpoint import (REFIT_COPY, CheckpointInfo, checkpoint_inputs, held_out_fold, load_checkpoint, model_of,
                                     resolve_checkpoint, save_checkpoint, trained_on_folder)
from poi_cli.model.network import POIModel
from poi_cli.model.reporting import mirrored

SELECT_ACCURACY, SELECT_RECALL = "accuracy", "recall"
SELECTIONS = (SELECT_ACCURACY, SELECT_RECALL)
DEFAULT_CLASS_POWERS = (0.0, 0.25, 0.5)
DEFAULT_L2 = (1e-5, 1e-4)
LBFGS_ITERATIONS = 200
HEAD_KEYS = ("trn.fc.weight", "trn.fc.bias")


class RefitError(PoiError):
    """A head re-fit that cannot run; one-line message."""


@dataclass(frozen=True)
class HeadScore:
    """One head on the validation split: its settings (None, None: the model's own head),
    each member's accuracy and mean class recall, and the selection score."""

    class_power: Optional[float]
    l2: Optional[float]
    accuracy: dict[str, float]  # member name (the store's own name when not combined) -> accuracy
    mean_recall: dict[str, float]  # member name -> mean recall of the classes it has
    score: float  # the mean over members of accuracy or mean_recall, as `select` says

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RefitResult:
    chosen: HeadScore
    before: HeadScore  # the model's own head, scored the same way
    candidates: list[HeadScore]  # every (class power, l2) of the grid, in grid order
    written: Path
    train_images: int
    val_images: int
    split: str
    select: str
    views: int  # 1: the face; 2: the face and its mirror (the model's recipe)
    members: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # "features", "fit": wall-clock time of each part
    kept_own_head: bool = False  # no re-fitted head scored above the model's own: the file keeps it (and its T_cal)
    diverged: list[str] = field(default_factory=list)  # "--class-power Q --l2 L" of the fits left out (not finite)


MAX_GRID = 32  # values per option: each (class power, l2) pair is a full L-BFGS fit
GRID_MAXIMUM = {"--class-power": 4.0, "--l2": 1e6}  # q: 1 balances the classes; l2 1e6 pins W to W_0 (1e39 overflowed float32)


def parse_grid(text: str, option: str) -> tuple[float, ...]:
    """"0,0.25,0.5" -> (0.0, 0.25, 0.5): numbers from 0 to GRID_MAXIMUM[option], at most MAX_GRID
    of them, one line otherwise."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise RefitError(f"{option} must be comma-separated numbers, got {text!r}") from None
    highest = GRID_MAXIMUM.get(option, float("inf"))
    if not values or any(not 0 <= v <= highest for v in values):  # nan fails too
        raise RefitError(f"{option} must be numbers from 0 to {highest:g}, got {text!r}")
    if len(values) > MAX_GRID:
        raise RefitError(f"{option} gives {len(values)} values: at most {MAX_GRID} (each pair is a fit)")
    return values


def sample_weights(labels: np.ndarray, dataset_weights: np.ndarray, num_classes: int, class_power: float) -> np.ndarray:
    """a_i = m_i * N_{y_i}^(-q), N_k = sum of m_i over class k (module docstring); scaled to mean 1.
    q = 0 gives m_i; q = 1 gives every class with images the same total weight."""
    per_class = np.bincount(labels, weights=dataset_weights, minlength=num_classes)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # a huge q: not finite, refused by the caller
        scale = np.where(per_class > 0, per_class, 1.0) ** -class_power
        weights = dataset_weights * scale[labels]
        return weights / weights.mean()


def refit_loss(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
               sample_weight: torch.Tensor, initial_weight: torch.Tensor, l2: float) -> torch.Tensor:
    """L(W, b) of the module docstring: the a-weighted mean cross-entropy of the logits W z + b,
    plus l2 times the squared distance of W from the trained W_0 (b is not pulled)."""
    per_image = torch.nn.functional.cross_entropy(features @ weight.T + bias, labels, reduction="none")
    return (sample_weight * per_image).sum() / sample_weight.sum() + l2 * (weight - initial_weight).pow(2).sum()


def fit_head(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, initial_weight: np.ndarray,
             initial_bias: np.ndarray, l2: float, iterations: int = LBFGS_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising refit_loss from (W_0, b_0) by L-BFGS (strong Wolfe line search), float32."""
    z, y = torch.from_numpy(np.ascontiguousarray(features, np.float32)), torch.from_numpy(labels.astype(np.int64))
    a = torch.from_numpy(weights.astype(np.float32))
    w0 = torch.from_numpy(initial_weight.astype(np.float32))
    weight, bias = w0.clone().requires_grad_(), torch.from_numpy(initial_bias.astype(np.float32)).requires_grad_()
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = refit_loss(weight, bias, z, y, a, w0, l2)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().numpy(), bias.detach().numpy()


@torch.no_grad()
def pooled_features(model: POIModel, faces: np.ndarray, store_rows: np.ndarray, device: torch.device, amp: bool,
                    batch: int, views: int, describe: str = "features") -> np.ndarray:
    """(views, n, d) float32: the features the TRN's FC reads (TargetRecognitionNetwork.pooled)
    of faces[store_rows], in order; view 1 is each face's mirror. A transient bar on stderr."""
    loader = BatchLoader(faces, store_rows, np.zeros(len(store_rows), np.int64), batch, shuffle=False, device=device)
    chunks: list[list[torch.Tensor]] = [[] for _ in range(views)]
    with progress_bar(Console(stderr=True)) as bar:
        task = bar.add_task(describe, total=len(loader))
        for images, _, _, _ in loader:
            inputs = to_model_input(images, model.config.input_size)
            for view, batch_inputs in enumerate((inputs, mirrored(inputs))[:views]):
                with autocast(device, amp):
                    chunks[view].append(model.trn.pooled(model.trunk(batch_inputs)).float().cpu())
            bar.advance(task)
    return np.stack([torch.cat(c).numpy() if c else np.zeros((0, model.trn.fc.in_features), np.float32) for c in chunks])


def view_probabilities(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(n, C): the mean over views of softmax(W z + b) (POI_SPEC 4b's flip for the TRN)."""
    return softmax(features @ weight.T + bias).mean(axis=0)


def score_head(probs: np.ndarray, labels: np.ndarray, member: np.ndarray, names: Sequence[str], select: str,
               class_power: Optional[float], l2: Optional[float], answers: Optional[np.ndarray] = None) -> HeadScore:
    """HeadScore of predicted probabilities: per member accuracy and mean class recall; the score
    is the mean over the members with validation images of the one `select` names. answers: (n, C)
    bool, the classes each image is answered among (PreparedDataset.answer_mask; None: all)."""
    predicted = answered_argmax(probs, answers)
    accuracy, mean_recall = {}, {}
    for k, name in enumerate(names):
        mine = member == k
        if not mine.any():
            continue
        accuracy[name] = float((predicted[mine] == labels[mine]).mean())
        recalls = per_class_recall(confusion_matrix(labels[mine], predicted[mine], probs.shape[1]))
        mean_recall[name] = float(np.mean([r for r in recalls if r is not None]))  # the classes it has
    chosen = accuracy if select == SELECT_ACCURACY else mean_recall
    return HeadScore(class_power, l2, accuracy, mean_recall, float(np.mean(list(chosen.values()))))


def refit_head(run_or_checkpoint: str | Path, prepared_dir: str | Path, out: Optional[str | Path] = None,
               class_powers: Sequence[float] = DEFAULT_CLASS_POWERS, l2s: Sequence[float] = DEFAULT_L2,
               select: str = SELECT_ACCURACY, split: Optional[str] = None, device: str = "auto", batch: int = 256,
               amp: str = "auto", announce: Optional[Callable[[str], None]] = None) -> RefitResult:
    """Re-fit the TRN's FC on the training split of `prepared_dir` for each (class power, l2),
    choose on its validation split, write the chosen head into a copy of the checkpoint."""
    if select not in SELECTIONS:
        raise RefitError(f"--select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    if not class_powers or not l2s:
        raise RefitError("the grid is empty: give at least one --class-power and one --l2")
    source = resolve_checkpoint(run_or_checkpoint)
    target = Path(out) if out is not None else source.with_name(f"{source.stem}.refit.pt")
    if target.resolve() == source.resolve():
        raise RefitError(f"--out {target} is the checkpoint itself: write the re-fitted model to a new file")
    if target.suffix.lower() == ".onnx":
        raise RefitError(f"--out {target}: the re-fitted model is a checkpoint (.pt); `poi export` makes its .onnx "
                         "after `poi calibrate`")
    dataset = PreparedDataset(prepared_dir)
    # nothing read is written over: the prepared folder, a combined folder's members (their
    # stores are what is read), the checkpoint and its run's files
    refuse_input_as_output(target, [prepared_dir, *(m.path for m in dataset.members), *checkpoint_inputs(source)], "--out")
    output_file(target, "--out", replaces=REFIT_COPY)
    # one writer per re-fitted file (two re-fits into one name both reported success, the later
    # one's file in place of the other's), as calibrate's and export's
    with claim(target, "--out"):
        return _refit_into(source, target, dataset, class_powers, l2s, select, split, device, batch, amp, announce)


def _refit_into(source: Path, target: Path, dataset: PreparedDataset, class_powers: Sequence[float],
                l2s: Sequence[float], select: str, split: Optional[str], device: str, batch: int, amp: str,
                announce: Optional[Callable[[str], None]]) -> RefitResult:
    """refit_head's work once its arguments are checked and its output claimed."""
    checkpoint = load_checkpoint(source)
    info = CheckpointInfo.of(checkpoint)
    if list(info.classes) != list(dataset.classes):
        raise RefitError(f"{source} predicts {len(info.classes)} classes ({', '.join(info.classes)}), {dataset.root} has "
                         f"{', '.join(dataset.classes)}: re-fit on data with the model's own classes, in its order")
    held = parse_fold_split(held_out_fold(info.config) or "") if trained_on_folder(info.config, dataset.root) else None
    if held is not None:  # the training split read here holds its test fold
        raise RefitError(f"{source} is of a --fold {held} run: refit-head re-fits on the whole training split of "
                         f"{dataset.root}, fold {held} (its test set) included; re-fit a model trained on all of it")
    split = split or dataset.validation_split()
    if split is None:
        raise RefitError(f"{dataset.root} has no valid/val split to choose the head on (its splits: "
                         f"{', '.join(dataset.splits())}), and neither train nor test may be chosen on")
    if split in ("train", "test") or split not in dataset.splits():
        raise RefitError(f"--split {split!r} is not a validation split of {dataset.root} (splits: {', '.join(dataset.splits())}; "
                         "never train, and never test: a head chosen on it would make its figures optimistic)")
    if "train" not in dataset.splits():
        raise RefitError(f"{dataset.root} has no training split to re-fit on")
    train, val = dataset.split("train"), dataset.split(split)
    if len(np.unique(train.labels)) < 2:
        raise RefitError(f"the training split of {dataset.root} has fewer than 2 classes: nothing to re-fit")
    names = [m.name for m in dataset.members] or [Path(dataset.root).name]
    if dataset.members:
        train_member = member_of_rows(dataset.members, train.store_rows)
        dataset_weights = np.array([m.weight for m in dataset.members], np.float64)[train_member]
        val_member = member_of_rows(dataset.members, val.store_rows)
    else:
        dataset_weights, val_member = np.ones(len(train.labels)), np.zeros(len(val.labels), np.int64)
    answers = dataset.answer_mask(val.store_rows)  # as `poi evaluate` scores each member's own folder
    if not (dataset_weights > 0).any():
        raise RefitError("the members' sampling weights leave no training image (all 0)")
    image_weights = {}  # per class power, before the features are computed: a bad q fails at once
    for power in class_powers:
        image_weights[power] = sample_weights(train.labels, dataset_weights, dataset.num_classes, power)
        if not np.isfinite(image_weights[power]).all():
            raise RefitError(f"--class-power {power:g} is too large: the image weights underflow (use a value up to about 2)")

    torch_device = select_device(device)
    model = model_of(checkpoint, torch_device)
    bf16 = use_bf16(amp, torch_device)
    views = 2 if info.recipe.flip else 1
    say = announce or (lambda _: None)
    say(f"features of {len(train.labels)} training images and their mirrors, {len(val.labels)} {split} images"
        f"{' and their mirrors' if views == 2 else ''} (the heads are scored by the TRN alone, "
        f"{'face and mirror' if views == 2 else 'the face alone'} as the model's recipe flips)")
    started = time.perf_counter()
    train_features = pooled_features(model, dataset.faces, train.store_rows, torch_device, bf16, batch, 2, "training features")
    val_features = pooled_features(model, dataset.faces, val.store_rows, torch_device, bf16, batch, views, f"{split} features")

    seconds = {"features": time.perf_counter() - started}
    # every image twice, as itself and as its mirror (the flip augmentation, without the others)
    features = train_features.reshape(-1, train_features.shape[-1])
    labels = np.concatenate([train.labels, train.labels])
    w0 = model.trn.fc.weight.detach().float().cpu().numpy()
    b0 = model.trn.fc.bias.detach().float().cpu().numpy()
    before = score_head(view_probabilities(val_features, w0, b0), val.labels, val_member, names, select, None, None, answers)

    candidates, heads, diverged = [], [], []
    with progress_bar(Console(stderr=True)) as bar:
        task = bar.add_task("fitting heads", total=len(class_powers) * len(l2s))
        for power in class_powers:
            weights = np.concatenate([image_weights[power]] * 2)
            for l2 in l2s:
                weight, bias = fit_head(features, labels, weights, w0, b0, l2)
                bar.advance(task)
                if not (np.isfinite(weight).all() and np.isfinite(bias).all()):  # left out, the others go on
                    diverged.append(f"--class-power {power:g} --l2 {l2:g}")
                    continue
                probs = view_probabilities(val_features, weight, bias)
                candidates.append(score_head(probs, val.labels, val_member, names, select, power, l2, answers))
                heads.append((weight, bias))
    if not candidates:
        raise RefitError(f"every fit diverged (weights not finite): {'; '.join(diverged)}")
    seconds["fit"] = time.perf_counter() - started - seconds["features"]
    best = int(np.argmax([c.score for c in candidates]))  # the first of equal scores: the grid's order
    # a re-fit must beat the trained head on validation to replace it (a tie keeps the trained one)
    kept_own_head = candidates[best].score <= before.score
    chosen = before if kept_own_head else candidates[best]
    if not kept_own_head:
        state = dict(checkpoint["model"])
        for key, value in zip(HEAD_KEYS, heads[best]):
            state[key] = torch.from_numpy(value).to(state[key].dtype)
        checkpoint["model"] = state
        checkpoint.pop("calibration", None)  # fitted to the old head: `poi calibrate` the new one
    checkpoint["head_refit"] = {
        "class_power": chosen.class_power, "l2": chosen.l2, "kept_own_head": kept_own_head, "select": select, "split": split,
        "prepared": str(Path(dataset.root).resolve()), "train_images": int(len(train.labels)), "views": views,
        "before": before.to_dict(), "candidates": [c.to_dict() for c in candidates], "diverged": diverged,
        "seconds": {part: round(value, 1) for part, value in seconds.items()},
    }
    save_checkpoint(target, checkpoint)
    return RefitResult(chosen, before, candidates, target, len(train.labels), len(val.labels), split, select,
                       views, names, seconds, kept_own_head, diverged)
