"""The training loop behind `poi train`: `train(TrainConfig) -> run folder`.

Per epoch: a permutation drawn from (seed, epoch), batches gathered from the uint8 store
by a background thread, augmentation on the device, bf16 autocast where it pays,
SGD with the spec's schedule set per step. Everything an epoch changes is saved when it
ends, so a killed run resumes (`--resume`) at its first unfinished epoch and, the
batches and augmentation being functions of (seed, epoch), continues as if never stopped.

The Trainer is the loop; the rest lives beside it: data (training labels, label noise,
validation split or hold-out), run_folder (the folder, its files, resume and repair),
finetune (starting from another checkpoint), teacher (--teacher), meters (per-epoch metrics by name).
Callbacks (`Trainer(config, callbacks=[...])`) are called at every step: a test uses one
to stop a run in the middle of an epoch.

Multi-GPU / multi-node: run the same command under `torchrun --nproc-per-node N`.
Each process takes its share of every global batch (`--batch` is the global batch),
gradients are averaged by DistributedDataParallel, metrics are summed over processes,
and only rank 0 prints and writes files. BatchNorm normalises with each process's own
batch statistics (--sync-bn: across processes, CUDA only); the running statistics are
averaged over processes at the end of every epoch so that all hold the same model.

May import poi_cli.core, poi_cli.data, poi_cli.model and the other train modules.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from poi_cli.core.errors import exception_chain
from poi_cli.core.layout import MEMBER_VAL_PREFIX
from poi_cli.core.locks import claim
from poi_cli.core.metrics import answered_argmax
from poi_cli.core.runtime import autocast, init_distributed, use_bf16
from poi_cli.data.loader import BatchLoader
from poi_cli.data.preprocess import to_model_input
from poi_cli.data.store import PreparedDataset, SplitData
from poi_cli.model.calibration import CALIBRATION_MIN_IMAGES, Calibration, calibration_of
from poi_cli.model.checkpoint import build_checkpoint
from poi_cli.model.losses import LossConfig, total_loss
from poi_cli.model.network import ModelConfig, POIModel, POIOutput, uncertainty_beta
from poi_cli.model.predictions import predict_split
from poi_cli.train.augment import BatchAugment
from poi_cli.train.config import TrainConfig, TrainError
from poi_cli.train.data import TrainingData, select_data
from poi_cli.train.finetune import load_fine_tune
from poi_cli.train.meters import EpochMeters
from poi_cli.train.teacher import Teacher
from poi_cli.train.run_folder import RESULT_COLUMNS, RunFolder, resume_config, rng_state, set_rng_state

__all__ = ["Callback", "RESULT_COLUMNS", "TrainError", "Trainer", "learning_rate", "loss_config_of", "train"]


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


def loss_config_of(config: TrainConfig) -> LossConfig:
    """The weights and switches of Eq. 12 for a run: every LossConfig field from the TrainConfig
    field of the same name, so that what `poi train` is told is what the loss uses."""
    return LossConfig(**config.values_for(LossConfig))


def float_output(output: POIOutput) -> POIOutput:
    """The network's outputs in float32 (under bf16 autocast they come out in bf16)."""
    values = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    return POIOutput(**{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in values.items()})


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, which the CLI turns into it) during training: the finished epochs
    are saved in run_dir, which `poi train --resume run_dir` continues."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir

    @staticmethod
    def within(error: BaseException) -> Optional["TrainingInterrupted"]:
        """The TrainingInterrupted `error` is, or was raised while unwinding (a second Ctrl-C
        that came while the first one's cleanup ran has the first as its __context__); else None."""
        return next((e for e in exception_chain(error) if isinstance(e, TrainingInterrupted)), None)


class Callback:
    """Hooks into the training loop; subclass and override what you need (every process calls them)."""

    def on_step(self, epoch: int, step: int) -> None:
        """Before training step `step` (0-based) of epoch `epoch` (0-based)."""


# ------------------------------------------------------------------------ trainer


class Trainer:
    """One training run. `Trainer(config).fit()` returns the run folder."""

    def __init__(self, config: TrainConfig, console: Optional[Console] = None, callbacks: Iterable[Callback] = ()) -> None:
        config.validate()
        self.ctx = init_distributed(config.device)
        self.console = console or Console()
        self.log = self._print if self.ctx.is_main else (lambda *a, **k: None)
        self.callbacks = list(callbacks)
        self.resume_checkpoint: Optional[dict] = None
        if config.resume:
            config, self.resume_checkpoint = resume_config(config)
        self.config = config
        self.data: TrainingData = select_data(config)
        config.resolve_paths()  # absolute: resume works from anywhere
        self.amp = use_bf16(config.amp, self.ctx.device)
        self.channels_last = config.channels_last == "on" or (config.channels_last == "auto" and self.ctx.device.type == "cuda")
        self.preprocessing = self.dataset.preprocessing.for_model(config.input_size)
        self._build_model()  # before the run folder: a bad --pretrained, --fine-tune or --teacher leaves none behind
        self.run = RunFolder.create(config, self.ctx)
        # one process writes a run folder: a --resume of a run still training stops here, in one line
        self._claim = ExitStack()
        if self.ctx.is_main:
            self._claim.enter_context(claim(self.run.path, "run folder"))
        try:
            self.resolved = self._resolved()
            self.run.write_config(config, self.resolved)
            if self.data.held_out:
                self.run.write_heldout(self.data.val.ids)
        except BaseException:
            self.release(failed=True)
            raise

    def release(self, failed: bool = False) -> None:
        """Give up the run folder's writer claim (the run is over, or could not start). failed:
        a new run folder that is still empty goes too (a full disk at config.json left one per
        try: exp, exp2, ...); one with config.json in it is a run --resume starts."""
        if failed and not self.config.resume and self.ctx.is_main:
            try:
                self.run.path.rmdir()  # only an empty folder, while the claim is still held
            except OSError:
                pass
        self._claim.close()

    def _print(self, message: str) -> None:
        self.console.print(message, soft_wrap=True, highlight=False, markup=False, emoji=False)  # one log line stays one line

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def dataset(self) -> PreparedDataset:
        return self.data.dataset

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def val_data(self) -> Optional[SplitData]:
        return self.data.val

    # -- setup

    def _resolved(self) -> dict:
        """What the options resolved to on this machine and store (config.json's "resolved")."""
        data, ctx = self.data, self.ctx
        return {
            "classes": self.classes, "num_classes": len(self.classes), "store_size": self.dataset.size,
            "grayscale": self.dataset.grayscale, "n_train": len(data.labels),
            "val_split": data.val_split, "n_val": 0 if data.val is None else len(data.val.labels),
            "test_split": data.test_split,
            "noise_realised_rate": data.noise_realised, "device": str(ctx.device), "bf16": self.amp,
            "channels_last": self.channels_last, "world_size": ctx.world_size,
            "torch": str(torch.__version__),
            # CPU threads change the sums' order, hence the numbers: --resume applies the same count
            "threads": torch.get_num_threads(),
        }

    def _build_model(self) -> None:
        c, device = self.config, self.ctx.device
        torch.manual_seed(c.seed)
        try:
            self.model_config = ModelConfig.from_dict({**c.values_for(ModelConfig), "num_classes": len(self.classes)})
        except ValueError as error:
            raise TrainError(str(error)) from None
        model = POIModel(self.model_config)
        if c.pretrained and not self.resume_checkpoint:
            from poi_cli.model.pretrained import load_backbone

            load_backbone(model, c.pretrained)
            self.log(f"backbone weights from {c.pretrained}")
        if c.fine_tune and not self.resume_checkpoint:
            self.log(load_fine_tune(model, c.fine_tune, self.classes))
        model.to(device)
        self.teacher = Teacher(c.teacher, self.classes, self.preprocessing, device) if c.teacher else None
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.model.to(memory_format=torch.channels_last)
        if c.sync_bn and self.ctx.distributed and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model  # the plain module: saved, evaluated
        self.optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self._restore()
        self.forward = self._wrap(model)  # what the training step calls
        self.loss_config = loss_config_of(c)

    def _restore(self) -> None:
        """Epoch, history, best so far, weights, optimiser and RNG: from the resumed last.pt, or fresh."""
        self.start_epoch, self.history = 0, []
        self.best_val_acc, self.best_epoch = None, None
        ck = self.resume_checkpoint
        if ck:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.start_epoch, self.history = int(ck["epoch"]), list(ck["history"])[: int(ck["epoch"])]
            self.best_val_acc, self.best_epoch = ck.get("best_val_acc"), ck.get("best_epoch")
            set_rng_state(ck.get("rng"))

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: DistributedDataParallel under torchrun, compiled on request."""
        forward = model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device = self.ctx.device
            forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if self.config.compile:
            forward = torch.compile(forward)
        return forward

    # -- loop

    def fit(self) -> Path:
        c, ctx = self.config, self.ctx
        loader, augment = self.make_loader(), self.make_augment()
        if self.ctx.is_main:
            self._describe(loader)
        try:
            for epoch in range(self.start_epoch, c.epochs):
                started = time.perf_counter()
                row, train_seconds = self.train_epoch(epoch, loader, augment)
                row["val_acc"], calibration = None, None
                if self.val_data is not None:
                    row["val_acc"], calibration, per_member = self._validate(epoch)
                    row.update(per_member)
                row["calibration_t"] = None if calibration is None else round(calibration.temperature, 6)
                row["epoch_time_s"] = round(time.perf_counter() - started, 3)
                row["images_per_s"] = round(row.pop("_images") / max(train_seconds, 1e-9), 1)
                self._end_epoch(epoch, row, calibration)
        except KeyboardInterrupt:  # the epochs finished are on disk (_end_epoch writes them atomically)
            raise TrainingInterrupted(self.run_dir) from None
        if ctx.owns_group:
            dist.barrier()
            dist.destroy_process_group()
        self.release()
        return self.run_dir

    def make_loader(self) -> BatchLoader:
        c, ctx = self.config, self.ctx
        rows, labels, clean = self.data.epoch_rows()
        soft = self.data.epoch_soft_targets()  # --soft-labels: indexed by the loader's positions
        self.soft_targets = None if soft is None else torch.from_numpy(soft).to(self.ctx.device)
        return BatchLoader(
            self.dataset.faces, rows, labels, c.batch, shuffle=True, seed=c.seed,
            extra=clean, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device,
        )

    def make_augment(self) -> Optional[BatchAugment]:
        c = self.config
        if not c.augment:
            return None
        return BatchAugment(c.flip, c.translate, c.color_jitter, grayscale=self.dataset.grayscale, gray_mix=c.gray_mix,
                            blur=c.blur, jpeg=c.jpeg, scale_jitter=c.scale_jitter, rotate=c.rotate)

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
        self.log(self.data.val_note)
        if self.data.noise_realised is not None:
            asked = f"{c.noise:.0%} requested (seed {c.noise_seed})" if c.noise else f"labels from {c.labels}"
            self.log(f"label noise: {asked}, {self.data.noise_realised:.2%} of the training labels differ from the clean ones")
        if self.teacher is not None:
            self.log(f"teacher: {c.teacher} (its objective inference teaches the TRN, weight T^2 x {c.teacher_weight})")
        if self.start_epoch:
            self.log(f"resuming at epoch {self.start_epoch + 1}/{c.epochs}")
        for line in idle_options(c, self.ctx.world_size):
            self.log(f"note: {line}")
        if self.val_data is not None and 0 < r["n_val"] < CALIBRATION_MIN_IMAGES:
            # a run that holds its validation out of train (a --fold K run on CK+, RAF-DB) has no
            # larger split of its own to calibrate on: poi calibrate fits on the same images, and its
            # store's only other split is the test split, which calibrate refuses
            same = "`poi calibrate` of the run fits on the same held-out images"
            if not self.data.held_out:
                remedy = "`poi calibrate` the run on a larger split"
            elif c.heldout_from is not None:  # --val-fraction draws nothing here: the hold-out is the named run's
                remedy = (f"they are those {Path(c.heldout_from).resolve().name} held out (--heldout-from), so hold out more "
                          f"there, with --val-fraction, and train again from that run; {same}")
            else:
                remedy = f"hold out more with --val-fraction (now {c.val_fraction:g}); {same}"
            self.log(f"note: the T_cal each epoch fits on its {r['n_val']} validation images is unreliable (fewer than "
                     f"{CALIBRATION_MIN_IMAGES}): {remedy}")

    def train_epoch(self, epoch: int, loader: BatchLoader, augment: Optional[BatchAugment]) -> tuple[dict, float]:
        """One pass over the training split; returns the results row (without validation) and the seconds."""
        c, ctx = self.config, self.ctx
        loader.set_epoch(epoch)
        self.model.train()
        generator = self.epoch_generator(epoch)
        meters = EpochMeters(ctx.device, with_clean=self.data.clean_labels is not None)
        lr = c.lr
        with self._progress() as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{c.epochs}", total=len(loader), stats="")
            started = time.perf_counter()
            for step, (images, labels, clean, positions) in enumerate(loader):
                for callback in self.callbacks:
                    callback.on_step(epoch, step)
                lr = learning_rate(c, epoch, step, len(loader))
                targets = labels if self.soft_targets is None else self.soft_targets[positions]
                output, terms = self.train_step(self.batch_input(images, augment, generator), targets, lr,
                                                distill=0.0 if epoch < c.distill_warmup else 1.0)
                beta = uncertainty_beta(output.consistency) if output.consistency is not None else None
                meters.update(terms, output.trn_logits.argmax(1), labels, clean, beta)
                if step % 10 == 0 or step + 1 == len(loader):
                    mean_loss = meters.mean_loss()
                    if not math.isfinite(mean_loss):
                        raise TrainError(f"the loss became {mean_loss} at epoch {epoch + 1}, step {step + 1} (try a lower --lr)")
                    rate = meters.images() * ctx.world_size / max(time.perf_counter() - started, 1e-9)
                    progress.update(task, stats=f"loss {mean_loss:.4f}  lr {lr:.3g}  {rate:,.0f} img/s")
                progress.advance(task)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            seconds = time.perf_counter() - started
        row = {"epoch": epoch + 1, "lr": lr, **meters.finish(ctx.distributed)}
        if ctx.distributed:
            self._average_buffers()
        # the loss above is checked before each step's update: the epoch's last update can still
        # leave non-finite weights, which would be saved and answer every face with NaN (checked
        # after the buffers' average, so that every process sees the same and stops together)
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise TrainError(f"the weights became non-finite in epoch {epoch + 1} (try a lower --lr)")
        return row, seconds

    def train_step(self, x: torch.Tensor, targets: torch.Tensor, lr: float,
                   distill: float = 1.0) -> tuple[POIOutput, dict[str, torch.Tensor]]:
        """One SGD step at learning rate `lr` (`distill`: total_loss's weight of Eq. 11) towards
        `targets` (class indices, or --soft-labels' distributions); returns the (float32) outputs
        and the detached loss terms."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.ctx.device, self.amp):
            output = self.forward(x)
            teacher = None if self.teacher is None else self.teacher.log_probs(x, self.model_config.temperature)
        output = float_output(output)
        loss, terms = total_loss(output, targets, self.loss_config, distill, teacher)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return output, terms

    def _average_buffers(self) -> None:
        """BN running statistics: each process ends the epoch with its own last-batch update;
        average them so that every process validates and saves the same model."""
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.ctx.world_size)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False), TimeElapsedColumn(), console=self.console, transient=True,
            disable=not self.ctx.is_main,
        )

    def _validate(self, epoch: int) -> tuple[float, Optional[Calibration], dict[str, float]]:
        """The TRN's validation accuracy, and its T_cal fitted on the same pass's logits (issue 12):
        every checkpoint carries the temperature of its own weights, at no extra pass. On a
        combined folder also each member's accuracy ({"val_acc_NAME": ...}), and the accuracy
        selected on is their mean. Each image is answered among the classes its dataset labels
        (TrainingData.val_answers), as `poi evaluate` scores it."""
        c, ctx = self.config, self.ctx
        members, answers = self.data.val_members, self.data.val_answers
        predictions = predict_split(
            self.model, self.dataset.faces, self.val_data.store_rows, self.val_data.labels, c.input_size,
            c.eval_batch or c.batch, ctx.device, self.amp, self.channels_last, ctx.rank, ctx.world_size, with_pin=False,
        )
        logits, labels = predictions.trn_logits, predictions.labels
        if members is not None:
            members = members[predictions.positions]  # this process's share, in the order predicted
        if answers is not None:
            answers = answers[predictions.positions]
        if ctx.distributed:  # shares differ in size: gather them as objects (a validation split is small)
            shares: list = [None] * ctx.world_size
            dist.all_gather_object(shares, (logits, labels, members, answers))
            logits, labels = np.concatenate([s[0] for s in shares]), np.concatenate([s[1] for s in shares])
            members = None if members is None else np.concatenate([s[2] for s in shares])
            answers = None if answers is None else np.concatenate([s[3] for s in shares])
        if len(labels) == 0:
            return 0.0, None, {}
        if not np.isfinite(logits).all():  # finite weights can still overflow (an absurd --lr)
            raise TrainError(f"the model's outputs became non-finite in epoch {epoch + 1} (try a lower --lr)")
        correct = answered_argmax(logits, answers) == labels
        accuracy = round(float(correct.mean()), 6)
        per_member = {}
        if members is not None:
            per_member = {f"{MEMBER_VAL_PREFIX}{name}": round(float(correct[members == k].mean()), 6)
                          for k, name in enumerate(self.data.member_names) if np.any(members == k)}
            accuracy = round(float(np.mean(list(per_member.values()))), 6)
        calibration = (calibration_of(logits, labels, self.data.val_split, data=str(self.dataset.root.resolve()))
                       if len(labels) >= 2 else None)
        return accuracy, calibration, per_member

    def _end_epoch(self, epoch: int, row: dict, calibration: Optional[Calibration] = None) -> None:
        c = self.config
        improved = self.val_data is None or self.best_val_acc is None or row["val_acc"] > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch = row["val_acc"], epoch + 1
        self.history.append(row)
        if self.ctx.is_main:
            payload = build_checkpoint(
                epoch=epoch + 1, model=self.model, optimizer=self.optimizer.state_dict(), config=c.to_dict(),
                model_config=self.model_config, classes=self.classes, preprocessing=self.preprocessing,
                best_val_acc=self.best_val_acc, best_epoch=self.best_epoch, history=self.history,
                val_acc=row["val_acc"], resolved=self.resolved, rng=rng_state(), calibration=calibration,
            )
            self.run.save_epoch(payload, improved)  # last.pt, best.pt, results.csv, in that order
            self.log(_summary(row, c.epochs, improved and self.val_data is not None))
        if self.ctx.distributed:
            dist.barrier()

    def repair_after_kill(self) -> None:
        """On resume: results.csv and best.pt agree with last.pt (a kill may have hit between writes)."""
        if self.resume_checkpoint:
            self.run.repair(self.resume_checkpoint, self.history)


def _summary(row: dict, epochs: int, best: bool) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss_total']:.4f}", f"train_acc {row['train_acc']:.4f}"]
    if row.get("train_acc_clean") is not None:
        parts.append(f"(vs clean {row['train_acc_clean']:.4f})")
    if row.get("val_acc") is not None:
        members = [f"{key[len(MEMBER_VAL_PREFIX):]} {value:.4f}" for key, value in row.items()
                   if key.startswith(MEMBER_VAL_PREFIX)]
        parts.append(f"val_acc {row['val_acc']:.4f}" + (f" ({', '.join(members)})" if members else "") + (" *best" if best else ""))
    parts += [f"lr {row['lr']:.3g}", f"{row['epoch_time_s']:.1f} s", f"{row['images_per_s']:,.0f} img/s"]
    return "  ".join(parts)


def idle_options(config: TrainConfig, world_size: int = 1) -> list[str]:
    """Options that cannot take effect within the run's epochs, or in a run without the part they
    set (said, not refused: a run may be the first part of a longer recipe)."""
    notes = []
    if config.warmup_epochs > config.epochs:
        notes.append(f"--warmup-epochs {config.warmup_epochs:g} is longer than the {config.epochs} epochs: the run "
                     f"never reaches --lr {config.lr:g}")
    if config.use_pin and config.distill_warmup >= config.epochs:
        notes.append(f"--distill-warmup {config.distill_warmup} covers all {config.epochs} epochs: the PIN never "
                     "teaches the TRN (Eq. 11 stays out of the loss)")
    if not config.use_pin and config.distill_warmup:
        notes.append(f"--distill-warmup {config.distill_warmup} delays the PIN's teaching (Eq. 11): a --baseline has no PIN")
    if config.teacher is None and config.teacher_weight != LossConfig.teacher_weight:
        notes.append(f"--teacher-weight {config.teacher_weight:g} weighs a --teacher's term: without --teacher it does nothing")
    if config.sync_bn and world_size == 1:
        notes.append("--sync-bn synchronises batch norm across torchrun's processes: one process has none to synchronise")
    return notes


def train(config: TrainConfig, console: Optional[Console] = None, callbacks: Iterable[Callback] = ()) -> Path:
    """Train POI (or an ablation / the baseline) as `config` says; returns the run folder."""
    trainer = Trainer(config, console, callbacks)
    failed = True
    try:
        trainer.repair_after_kill()
        run_dir = trainer.fit()
        failed = False
        return run_dir
    finally:
        trainer.release(failed)
