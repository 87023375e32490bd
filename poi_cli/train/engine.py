"""The training engine behind `poi train`: `train(TrainConfig) -> run folder`.

    runs/train/NAME/        (NAME, NAME2, ... like Ultralytics)
      config.json           the full resolved config, written first
      results.csv           one row per finished epoch (rewritten whole, atomically)
      last.pt, best.pt      checkpoints (poi_cli.model.checkpoint); best = best validation accuracy

Per epoch: a permutation drawn from (seed, epoch), batches gathered from the uint8 store
by a background thread, augmentation on the device, bf16 autocast where it pays,
SGD with the spec's schedule set per step. Everything an epoch changes is saved when it
ends, so a killed run resumes (`--resume`) at its first unfinished epoch and, the
batches and augmentation being functions of (seed, epoch), continues as if never stopped.

Multi-GPU / multi-node: run the same command under `torchrun --nproc-per-node N`.
Each process takes its share of every global batch (`--batch` is the global batch),
gradients are averaged by DistributedDataParallel, metrics are summed over processes,
and only rank 0 prints and writes files. BatchNorm normalises with each process's own
batch statistics (--sync-bn: across processes, CUDA only); the running statistics are
averaged over processes at the end of every epoch so that all hold the same model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from poi_cli.core.atomic import next_run_dir, write_csv, write_json
from poi_cli.core.metrics import roc_auc
from poi_cli.core.runtime import DistContext, autocast, init_distributed, use_bf16
from poi_cli.data.loader import BatchLoader
from poi_cli.data.preprocess import to_model_input
from poi_cli.data.store import PreparedDataset, SplitData
from poi_cli.model.checkpoint import BEST, LAST, load_checkpoint, resolve_checkpoint, save_checkpoint
from poi_cli.model.losses import LossConfig, total_loss
from poi_cli.model.network import ModelConfig, POIModel, POIOutput, uncertainty_beta
from poi_cli.train.augment import BatchAugment
from poi_cli.train.config import TrainConfig
from poi_cli.train.run_folder import CONFIG_FILE, RESULTS_FILE, rng_state, set_rng_state

LOSS_TERMS = ("total", "ce_tar", "ce_au", "au", "kl_au", "kl_tar", "w_mean")
# What label noise does to training, per epoch (issue 13): train_acc_flipped is the
# accuracy against the given (wrong) label on the flipped images, i.e. how much of the
# noise the TRN has memorised; beta_* describe the UEM's weight of Eq. 11 over the epoch:
# its mean, the share of images above 0.1, and its ROC AUC for telling flipped images
# from clean ones (1: beta is higher on every flipped image).
NOISE_COLUMNS = ("train_acc_flipped", "beta_mean", "beta_over_0.1", "beta_auc_flipped")
RESULT_COLUMNS = [
    "epoch", *(f"loss_{t}" if t != "w_mean" else t for t in LOSS_TERMS), "lr",
    "train_acc", "train_acc_clean", *NOISE_COLUMNS, "val_acc", "epoch_time_s", "images_per_s",
]
VAL_SPLIT_ORDER = ("valid", "val")
# Test hook: "EPOCH:STEP" (1-based) makes the loop announce itself on stderr and hang
# there, so that a test can SIGKILL a run in the middle of an epoch.
STALL_ENV = "POI_DEBUG_STALL_AT"


class TrainError(ValueError):
    """A training run that cannot start or go on; one-line message."""


# ----------------------------------------------------------------------- schedule


def learning_rate(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """lr at (0-based) epoch and step: step or cosine schedule after a linear warm-up."""
    progress = epoch + step / steps_per_epoch  # epochs done, fractional
    if config.warmup_epochs > 0 and progress < config.warmup_epochs:
        return config.lr * (progress + 1 / steps_per_epoch) / config.warmup_epochs
    if config.schedule == "cosine":
        span = max(config.epochs - config.warmup_epochs, 1e-9)
        return 0.5 * config.lr * (1 + math.cos(math.pi * (progress - config.warmup_epochs) / span))
    return config.lr * config.lr_gamma ** sum(epoch >= milestone for milestone in config.lr_steps)


# --------------------------------------------------------------------------- data


def choose_val_split(dataset: PreparedDataset, requested: Optional[str], train_split: str) -> Optional[str]:
    """The store's validation split: the one asked for, else valid, else val; None when there is none."""
    available = dataset.splits()
    if requested is not None:
        if requested not in available:
            raise TrainError(f"validation split {requested!r} has no usable faces in {dataset.root} (splits: {', '.join(available)})")
        return requested
    return next((name for name in VAL_SPLIT_ORDER if name in available and name != train_split), None)


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified, seeded `fraction` of the positions (at least one per class of 2+)."""
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng([seed, 7919])
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        count = int(math.floor(fraction * len(positions) + 0.5))
        if len(positions) >= 2:
            count = min(max(count, 1), len(positions) - 1)
        mask[rng.permutation(positions)[:count]] = True
    return mask


def float_output(output: POIOutput) -> POIOutput:
    """The network's outputs in float32 (under bf16 autocast they come out in bf16)."""
    values = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    return POIOutput(**{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in values.items()})


def remap_class_rows(state: dict, source_classes: list[str], target: dict, target_classes: list[str]) -> dict:
    """Copy class-indexed rows (TRN and region heads) by class name; new classes keep their init."""
    out = {}
    for key, value in state.items():
        if key not in target:
            continue
        want = target[key]
        if value.shape == want.shape and source_classes == target_classes:
            out[key] = value
        elif key.startswith(("trn.fc.", "pin.region_classifiers.")) and value.shape[0] == len(source_classes):
            rows = want.clone()
            for index, name in enumerate(target_classes):
                if name in source_classes:
                    rows[index] = value[source_classes.index(name)]
            out[key] = rows
        elif value.shape == want.shape:
            out[key] = value
        else:
            raise TrainError(f"fine-tune checkpoint weight {key} has shape {tuple(value.shape)}, this model needs {tuple(want.shape)}")
    return out


# ------------------------------------------------------------------------ trainer


class Trainer:
    """One training run. `Trainer(config).fit()` returns the run folder."""

    def __init__(self, config: TrainConfig, console: Optional[Console] = None) -> None:
        config.validate()
        self.ctx = init_distributed(config.device)
        self.console = console or Console()
        self.log = self._print if self.ctx.is_main else (lambda *a, **k: None)
        resume_checkpoint = None
        if config.resume:
            config, resume_checkpoint = self._resume_config(config)
        self.config = config
        self.resume_checkpoint = resume_checkpoint
        self._load_data()
        self.run_dir = self._make_run_dir()
        self._write_config()
        self._build_model()

    def _print(self, message: str) -> None:
        self.console.print(message, soft_wrap=True, highlight=False)  # one log line stays one line

    # -- setup

    def _resume_config(self, config: TrainConfig) -> tuple[TrainConfig, Optional[dict]]:
        run_dir = Path(config.resume)
        if not run_dir.is_dir():
            raise TrainError(f"--resume: no such run folder: {run_dir}")
        checkpoint = None
        if (run_dir / LAST).is_file():
            checkpoint = load_checkpoint(run_dir / LAST)
            saved = TrainConfig.from_dict(checkpoint["config"])
        elif (run_dir / CONFIG_FILE).is_file():  # killed during its first epoch: start it again
            saved = TrainConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
        else:
            raise TrainError(f"--resume: {run_dir} is not a poi run folder (no {LAST} or {CONFIG_FILE})")
        saved.device, saved.resume = config.device, str(run_dir)
        if checkpoint is not None and checkpoint["epoch"] >= saved.epochs:
            raise TrainError(f"--resume: {run_dir} already finished its {saved.epochs} epochs")
        return saved, checkpoint

    def _load_data(self) -> None:
        c = self.config
        try:
            dataset = PreparedDataset(c.data)
        except ValueError as error:
            raise TrainError(str(error)) from None
        self.dataset = dataset
        self.classes = dataset.classes
        train = dataset.split(c.train_split, labels_file=c.labels)
        labels, clean = train.labels, train.clean_labels
        self.noise_realised = None
        if c.noise > 0:
            from poi_cli.data.noise import flip_labels

            clean = labels
            labels = flip_labels(labels, dataset.num_classes, c.noise, c.noise_seed)
        if clean is not None and len(labels):  # --noise, or a --labels file whose clean labels are known
            self.noise_realised = float((labels != clean).mean())
        for name, values in (("label", labels), ("clean label", clean)):
            if values is not None and len(values) and (values.min() < 0 or values.max() >= dataset.num_classes):
                raise TrainError(f"a training {name} lies outside 0..{dataset.num_classes - 1}")
        self.val_data = None
        if c.val_split is not None and c.val_split.lower() == "none":
            self.val_split, self.val_note = None, "no validation (--val-split none): best.pt is the last epoch"
        elif (name := choose_val_split(dataset, c.val_split, c.train_split)) is not None:
            self.val_split, self.val_note = name, f"validation split: {name}"
            self.val_data = dataset.split(name)
        elif c.val_fraction > 0:
            # No validation split in the store (RAF-DB: train/test only): hold out part of
            # train, with the labels training sees, rather than ever select on test.
            held = hold_out(labels, c.val_fraction, c.seed)
            self.val_data = SplitData(train.store_rows[held], labels[held], train.ids[held])
            keep = ~held
            train = SplitData(train.store_rows[keep], train.labels[keep], train.ids[keep])
            labels, clean = labels[keep], None if clean is None else clean[keep]
            self.val_split = f"{c.train_split}[held out {c.val_fraction:g}]"
            self.val_note = (f"validation: {held.sum()} images held out of {c.train_split} "
                             f"(--val-fraction {c.val_fraction:g}, seed {c.seed}; the store has no valid/val split)")
        else:
            self.val_split, self.val_note = None, "no validation (--val-fraction 0): best.pt is the last epoch"
        self.train_data, self.train_labels, self.clean_labels = train, labels, clean

    def _make_run_dir(self) -> Path:
        c = self.config
        if c.resume:
            return Path(c.resume)
        run_dir = [next_run_dir(c.project, c.name, c.exist_ok) if self.ctx.is_main else None]
        if self.ctx.distributed:
            dist.broadcast_object_list(run_dir, src=0)
        return Path(run_dir[0])

    def _write_config(self) -> None:
        c = self.config
        for key in ("data", "labels", "pretrained", "fine_tune", "project"):  # absolute: resume works from anywhere
            value = getattr(c, key)
            if value:
                setattr(c, key, str(Path(value).resolve()))
        self.amp = use_bf16(c.amp, self.ctx.device)
        self.channels_last = c.channels_last == "on" or (c.channels_last == "auto" and self.ctx.device.type == "cuda")
        resolved = {
            "classes": self.classes, "num_classes": len(self.classes), "store_size": self.dataset.size,
            "grayscale": self.dataset.grayscale, "n_train": len(self.train_labels),
            "val_split": self.val_split, "n_val": 0 if self.val_data is None else len(self.val_data.labels),
            "noise_realised_rate": self.noise_realised, "device": str(self.ctx.device), "bf16": self.amp,
            "channels_last": self.channels_last, "world_size": self.ctx.world_size,
            "torch": str(torch.__version__),
        }
        self.resolved = resolved
        if self.ctx.is_main and not (c.resume and (self.run_dir / CONFIG_FILE).is_file()):
            write_json(self.run_dir / CONFIG_FILE, {**c.to_dict(), "resolved": resolved})

    def _build_model(self) -> None:
        c, device = self.config, self.ctx.device
        torch.manual_seed(c.seed)
        try:
            self.model_config = ModelConfig.from_dict(c.model_dict(len(self.classes)))
        except ValueError as error:
            raise TrainError(str(error)) from None
        model = POIModel(self.model_config)
        if c.pretrained and not self.resume_checkpoint:
            from poi_cli.model.pretrained import load_backbone

            load_backbone(model, c.pretrained)
            self.log(f"backbone weights from {c.pretrained}")
        if c.fine_tune and not self.resume_checkpoint:
            self._load_fine_tune(model, c.fine_tune)
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if c.sync_bn and self.ctx.distributed and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model  # the plain module: saved, evaluated
        self.optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self.start_epoch, self.history = 0, []
        self.best_val_acc, self.best_epoch = None, None
        if self.resume_checkpoint:
            ck = self.resume_checkpoint
            model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.start_epoch, self.history = int(ck["epoch"]), list(ck["history"])[: int(ck["epoch"])]
            self.best_val_acc, self.best_epoch = ck.get("best_val_acc"), ck.get("best_epoch")
            set_rng_state(ck.get("rng"))
        forward = model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if c.compile:
            forward = torch.compile(forward)
        self.forward = forward  # what the training step calls
        self.loss_config = LossConfig(**c.loss_dict())

    def _load_fine_tune(self, model: POIModel, path: str) -> None:
        checkpoint = load_checkpoint(resolve_checkpoint(path))
        source = ModelConfig.from_dict(checkpoint["model_config"])
        if source.arch != self.model_config.arch:
            raise TrainError(f"--fine-tune: {path} is a {source.arch}, this run trains a {self.model_config.arch}")
        source_classes = list(checkpoint["classes"])
        state = remap_class_rows(checkpoint["model"], source_classes, model.state_dict(), self.classes)
        missing = [k for k in model.state_dict() if k not in state]
        model.load_state_dict(state, strict=False)
        note = f"fine-tuning from {path}"
        if source_classes != self.classes:
            shared = [n for n in self.classes if n in source_classes]
            note += f" (classes mapped by name: {len(shared)} shared of {len(self.classes)})"
        if missing:
            note += f"; {len(missing)} weights not in it keep their initialisation"
        self.log(note)

    # -- loop

    def fit(self) -> Path:
        c, ctx = self.config, self.ctx
        loader, augment = self.make_loader(), self.make_augment()
        if self.ctx.is_main:
            self._describe(loader)
        for epoch in range(self.start_epoch, c.epochs):
            started = time.perf_counter()
            row, train_seconds = self.train_epoch(epoch, loader, augment)
            row["val_acc"] = self._validate() if self.val_data is not None else None
            row["epoch_time_s"] = round(time.perf_counter() - started, 3)
            row["images_per_s"] = round(row.pop("_images") / max(train_seconds, 1e-9), 1)
            self._end_epoch(epoch, row)
        if ctx.owns_group:
            dist.barrier()
            dist.destroy_process_group()
        return self.run_dir

    def make_loader(self) -> BatchLoader:
        c, ctx = self.config, self.ctx
        return BatchLoader(
            self.dataset.faces, self.train_data.store_rows, self.train_labels, c.batch, shuffle=True, seed=c.seed,
            extra=self.clean_labels, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device,
        )

    def make_augment(self) -> Optional[BatchAugment]:
        c = self.config
        return BatchAugment(c.flip, c.translate, c.color_jitter, grayscale=self.dataset.grayscale) if c.augment else None

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """The augmentation RNG of an epoch on this process: a function of (seed, epoch, rank) alone."""
        generator = torch.Generator(device=self.ctx.device)
        generator.manual_seed(self.config.seed * 1_000_003 + epoch * 101 + self.ctx.rank)
        return generator

    def batch_input(self, images: torch.Tensor, augment: Optional[BatchAugment], generator: torch.Generator) -> torch.Tensor:
        """uint8 store rows on the device -> the augmented, normalised model input."""
        if augment is not None:
            x = augment(images, self.config.input_size, generator)
        else:
            x = to_model_input(images, self.config.input_size)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _describe(self, loader: BatchLoader) -> None:
        c, r = self.config, self.resolved
        kind = "baseline (TRN + CE)" if not c.use_pin else "POI"
        self.log(f"run folder: {self.run_dir}")
        self.log(
            f"{kind} {c.arch} {c.input_size}px, {len(self.classes)} classes, {r['n_train']} training images "
            f"({loader.steps} step{'s' if loader.steps != 1 else ''} of {loader.global_batch}), device {self.ctx.device}"
            f"{' x' + str(self.ctx.world_size) + ' processes' if self.ctx.distributed else ''}, "
            f"bf16 {'on' if self.amp else 'off'}, channels_last {'on' if self.channels_last else 'off'}"
        )
        self.log(self.val_note)
        if self.noise_realised is not None:
            asked = f"{c.noise:.0%} requested (seed {c.noise_seed})" if c.noise else f"labels from {c.labels}"
            self.log(f"label noise: {asked}, {self.noise_realised:.2%} of the training labels differ from the clean ones")
        if self.start_epoch:
            self.log(f"resuming at epoch {self.start_epoch + 1}/{c.epochs}")

    def train_epoch(self, epoch: int, loader: BatchLoader, augment: Optional[BatchAugment]) -> tuple[dict, float]:
        """One pass over the training split; returns the results row (without validation) and the seconds."""
        c, ctx = self.config, self.ctx
        device = ctx.device
        loader.set_epoch(epoch)
        self.model.train()
        generator = self.epoch_generator(epoch)
        # sums over the epoch: loss terms x images, images, correct, correct vs clean
        sums = torch.zeros(len(LOSS_TERMS) + 3, device=device, dtype=torch.float64)
        present: set[str] = set()
        betas: list[torch.Tensor] = []
        flipped: list[torch.Tensor] = []
        flipped_correct = torch.zeros((), device=device, dtype=torch.float64)
        stall = _stall_point()
        lr = c.lr
        with self._progress() as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{c.epochs}", total=len(loader), stats="")
            started = time.perf_counter()
            for step, (images, labels, clean, _) in enumerate(loader):
                if stall == (epoch + 1, step + 1):
                    _stall(epoch + 1, step + 1)
                lr = learning_rate(c, epoch, step, len(loader))
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                x = self.batch_input(images, augment, generator)
                with autocast(device, self.amp):
                    output = self.forward(x)
                output = float_output(output)
                loss, terms = total_loss(output, labels, self.loss_config)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                present.update(terms)
                batch = labels.shape[0]
                predicted = output.trn_logits.argmax(1)
                sums[: len(LOSS_TERMS)] += torch.stack([terms.get(t, loss.new_zeros(())) for t in LOSS_TERMS]).double() * batch
                sums[-3] += batch
                sums[-2] += (predicted == labels).sum()
                if clean is not None:
                    sums[-1] += (predicted == clean).sum()
                    is_flipped = labels != clean
                    flipped.append(is_flipped)
                    flipped_correct += ((predicted == labels) & is_flipped).sum()
                if output.consistency is not None:
                    betas.append(uncertainty_beta(output.consistency))
                if step % 10 == 0 or step + 1 == len(loader):
                    mean_loss = (sums[0] / sums[-3]).item()
                    if not math.isfinite(mean_loss):
                        raise TrainError(f"the loss became {mean_loss} at epoch {epoch + 1}, step {step + 1} (try a lower --lr)")
                    rate = sums[-3].item() * ctx.world_size / max(time.perf_counter() - started, 1e-9)
                    progress.update(task, stats=f"loss {mean_loss:.4f}  lr {lr:.3g}  {rate:,.0f} img/s")
                progress.advance(task)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
        noise_row = self._noise_metrics(betas, flipped, flipped_correct)
        if ctx.distributed:
            dist.all_reduce(sums)
            self._average_buffers()
        sums = sums.tolist()
        images = sums[-3]
        row: dict = {"epoch": epoch + 1, "lr": lr, "_images": images}
        for index, term in enumerate(LOSS_TERMS):
            column = "w_mean" if term == "w_mean" else f"loss_{term}"
            row[column] = round(sums[index] / images, 6) if term in present else None
        row["train_acc"] = round(sums[-2] / images, 6)
        row["train_acc_clean"] = round(sums[-1] / images, 6) if self.clean_labels is not None else None
        row.update(noise_row)
        return row, seconds

    def _noise_metrics(self, betas: list[torch.Tensor], flipped: list[torch.Tensor], flipped_correct: torch.Tensor) -> dict:
        """The NOISE_COLUMNS of an epoch, over all processes (None where they do not apply)."""
        row: dict = dict.fromkeys(NOISE_COLUMNS)
        beta = torch.cat(betas).float() if betas else None
        is_flipped = torch.cat(flipped) if flipped else None
        if self.ctx.distributed:  # every process saw the same number of images per step
            beta = _all_gather(beta) if beta is not None else None
            is_flipped = _all_gather(is_flipped) if is_flipped is not None else None
            dist.all_reduce(flipped_correct)
        if is_flipped is not None and is_flipped.any():
            row["train_acc_flipped"] = round(flipped_correct.item() / is_flipped.sum().item(), 6)
        if beta is not None:
            row["beta_mean"] = round(beta.mean().item(), 6)
            row["beta_over_0.1"] = round((beta > 0.1).float().mean().item(), 6)
            if is_flipped is not None:
                auc = roc_auc(beta.cpu().numpy(), is_flipped.cpu().numpy())
                row["beta_auc_flipped"] = None if auc is None else round(auc, 6)
        return row

    def _average_buffers(self) -> None:
        """BN running statistics: each process ends the epoch with its own last-batch update;
        average them so that every process validates and saves the same model."""
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.ctx.world_size)

    def _progress(self):
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), console=self.console, transient=True, disable=not self.ctx.is_main,
        )

    @torch.no_grad()
    def _validate(self) -> float:
        c, ctx = self.config, self.ctx
        correct, total = evaluate_accuracy(
            self.model, self.dataset.faces, self.val_data.store_rows, self.val_data.labels, c.input_size,
            c.eval_batch or c.batch, ctx.device, self.amp, self.channels_last, ctx.rank, ctx.world_size,
        )
        if ctx.distributed:
            counts = torch.tensor([correct, total], dtype=torch.float64, device=ctx.device)
            dist.all_reduce(counts)
            correct, total = counts.tolist()
        return round(correct / max(total, 1), 6)

    def _end_epoch(self, epoch: int, row: dict) -> None:
        c = self.config
        improved = self.val_data is None or self.best_val_acc is None or row["val_acc"] > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch = row["val_acc"], epoch + 1
        self.history.append(row)
        if self.ctx.is_main:
            payload = {
                "epoch": epoch + 1, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "config": c.to_dict(), "model_config": self.model_config.to_dict(), "classes": list(self.classes),
                "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "history": list(self.history),
                "val_acc": row["val_acc"], "resolved": self.resolved, "rng": rng_state(),
            }
            # Order matters for a kill between writes: last.pt is the truth that resume reads,
            # results.csv is rewritten from its history, best.pt is repaired from it.
            save_checkpoint(self.run_dir / LAST, payload)
            if improved:
                save_checkpoint(self.run_dir / BEST, payload)
            write_csv(self.run_dir / RESULTS_FILE, RESULT_COLUMNS, self.history)
            self.log(_summary(row, c.epochs, improved and self.val_data is not None))
        if self.ctx.distributed:
            dist.barrier()

    def repair_after_kill(self) -> None:
        """On resume: results.csv and best.pt agree with last.pt (a kill may have hit between writes)."""
        if not (self.ctx.is_main and self.resume_checkpoint):
            return
        write_csv(self.run_dir / RESULTS_FILE, RESULT_COLUMNS, self.history)
        best_path = self.run_dir / BEST
        ck = self.resume_checkpoint
        if ck.get("best_epoch") == ck["epoch"]:
            stale = not best_path.is_file() or load_checkpoint(best_path).get("epoch") != ck["epoch"]
            if stale:
                save_checkpoint(best_path, ck)


def evaluate_accuracy(
    model: POIModel, faces: np.ndarray, store_rows: np.ndarray, labels: np.ndarray, size: int, batch: int,
    device: torch.device, amp: bool, channels_last: bool = False, rank: int = 0, world_size: int = 1,
) -> tuple[int, int]:
    """TRN accuracy counts (correct, total) over this process's share of a split."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loader = BatchLoader(faces, store_rows, labels, batch, shuffle=False, rank=rank, world_size=world_size, device=device)
    with torch.no_grad():
        for images, targets, _, _ in loader:
            with autocast(device, amp):
                logits = model(to_model_input(images, size, channels_last), with_pin=False).trn_logits
            correct += int((logits.argmax(1) == targets).sum())
            total += int(targets.shape[0])
    model.train(was_training)
    return correct, total


def _all_gather(values: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values)
    return torch.cat(parts)


def _summary(row: dict, epochs: int, best: bool) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss_total']:.4f}", f"train_acc {row['train_acc']:.4f}"]
    if row.get("train_acc_clean") is not None:
        parts.append(f"(vs clean {row['train_acc_clean']:.4f})")
    if row.get("val_acc") is not None:
        parts.append(f"val_acc {row['val_acc']:.4f}" + (" *best" if best else ""))
    parts += [f"lr {row['lr']:.3g}", f"{row['epoch_time_s']:.1f} s", f"{row['images_per_s']:,.0f} img/s"]
    return "  ".join(parts)


def _stall_point() -> Optional[tuple[int, int]]:
    value = os.environ.get(STALL_ENV)
    if not value:
        return None
    epoch, step = value.split(":")
    return int(epoch), int(step)


def _stall(epoch: int, step: int) -> None:
    print(f"POI_DEBUG stalled at epoch {epoch} step {step}", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


def train(config: TrainConfig, console: Optional[Console] = None) -> Path:
    """Train POI (or an ablation / the baseline) as `config` says; returns the run folder."""
    trainer = Trainer(config, console)
    trainer.repair_after_kill()
    return trainer.fit()
