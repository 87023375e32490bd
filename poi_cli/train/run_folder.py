"""A training run folder: making and numbering it, its files, resuming from it, repairing it after a kill.

    runs/train/NAME/        (NAME, NAME2, ... like Ultralytics)
      config.json           the full resolved config (a flat dict + "resolved"), written first
      results.csv           one row per finished epoch (rewritten whole, atomically)
      last.pt, best.pt      checkpoints (poi_cli.model.checkpoint); best = best validation accuracy

Only rank 0 writes (`RunFolder.writer`). Also the RNG state a checkpoint resumes with.
May import torch, poi_cli.core, poi_cli.model and the train modules config and meters.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from poi_cli.core.atomic import next_run_dir, remove_stale_temps, write_csv, write_json
from poi_cli.core.layout import MEMBER_VAL_PREFIX, META_FILE
from poi_cli.core.runtime import DistContext
from poi_cli.data.folds import CV_CONFIG
from poi_cli.model.checkpoint import BEST, CONFIG_FILE, HELDOUT_FILE, LAST, RESULTS_FILE, load_checkpoint, save_checkpoint
from poi_cli.train.config import TrainConfig, TrainError
from poi_cli.train.meters import LOSS_TERMS, NOISE_COLUMNS, loss_column

RESULT_COLUMNS = [
    "epoch", *(loss_column(t) for t in LOSS_TERMS), "lr",
    "train_acc", "train_acc_clean", *NOISE_COLUMNS, "val_acc", "calibration_t", "epoch_time_s", "images_per_s",
]


def result_columns(history: list[dict]) -> list[str]:
    """RESULT_COLUMNS, then the per-member validation columns the rows carry (combined folders)."""
    extra = sorted({key for row in history for key in row if key.startswith(MEMBER_VAL_PREFIX)})
    return RESULT_COLUMNS + extra


class RunFolder:
    """The folder of one run; `writer` is False on the processes that must not write (rank > 0)."""

    def __init__(self, path: Path, writer: bool) -> None:
        self.path = Path(path)
        self.writer = writer

    @classmethod
    def create(cls, config: TrainConfig, ctx: DistContext) -> "RunFolder":
        """The resumed folder, or a new project/name (numbered when taken), the same on every process."""
        if config.resume:
            return cls(Path(config.resume), ctx.is_main)
        check_project(Path(config.project))
        path = [next_run_dir(config.project, config.name, config.exist_ok) if ctx.is_main else None]
        if ctx.distributed:
            dist.broadcast_object_list(path, src=0)
        return cls(Path(path[0]), ctx.is_main)

    def write_config(self, config: TrainConfig, resolved: dict) -> None:
        """config.json: the config's flat dict plus "resolved"; kept as it is when resuming."""
        if self.writer and not (config.resume and (self.path / CONFIG_FILE).is_file()):
            write_json(self.path / CONFIG_FILE, {**config.to_dict(), "resolved": resolved})

    def write_heldout(self, ids) -> None:
        """heldout_ids.csv: the training images held out for validation, which `poi evaluate`
        falls back to when the store has no test or validation split."""
        if self.writer and not (self.path / HELDOUT_FILE).is_file():
            write_csv(self.path / HELDOUT_FILE, ["id"], [{"id": i} for i in ids])

    def write_results(self, history: list[dict]) -> None:
        """results.csv, whole, from the rows of the finished epochs."""
        if self.writer:
            write_csv(self.path / RESULTS_FILE, result_columns(history), history)

    def save_epoch(self, payload: dict, improved: bool) -> None:
        """An epoch's checkpoint as last.pt (and best.pt), then results.csv from its history."""
        if not self.writer:
            return
        # Order matters for a kill between writes: last.pt is the truth that resume reads,
        # results.csv is rewritten from its history, best.pt is repaired from it.
        save_checkpoint(self.path / LAST, payload)
        if improved:
            save_checkpoint(self.path / BEST, payload)
        self.write_results(payload["history"])

    def repair(self, checkpoint: dict, history: list[dict]) -> None:
        """On resume: results.csv and best.pt agree with last.pt (a kill may have hit between writes)."""
        if not self.writer:
            return
        self.write_results(history)
        best_path = self.path / BEST
        if checkpoint.get("best_epoch") == checkpoint["epoch"]:
            stale = not best_path.is_file() or load_checkpoint(best_path).get("epoch") != checkpoint["epoch"]
            if stale:
                save_checkpoint(best_path, checkpoint)


@dataclass(frozen=True)
class RunSummary:
    """What a finished run's results.csv says, for `poi train`'s last line."""

    epochs: int  # rows (finished epochs)
    minutes: float  # training and validation time of those epochs
    best_val_acc: Optional[float]  # None without a validation split
    best_epoch: Optional[int]
    last_val_acc: Optional[float]


def run_summary(run_dir: Path) -> Optional[RunSummary]:
    """The run's results.csv summed up (best.pt's epoch: the first with the highest val_acc, as
    training chooses it); None when there is none to read."""
    try:
        with open(Path(run_dir) / RESULTS_FILE, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None

    def number(row: dict, column: str) -> Optional[float]:
        try:
            value = float(row.get(column) or "nan")
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    if not rows:
        return None
    scored = [(number(row, "val_acc"), row) for row in rows]
    scored = [(acc, row) for acc, row in scored if acc is not None]
    best = max(scored, key=lambda pair: pair[0], default=None)  # max keeps the first of equals
    return RunSummary(epochs=len(rows), minutes=sum(number(r, "epoch_time_s") or 0.0 for r in rows) / 60,
                      best_val_acc=best[0] if best else None,
                      best_epoch=int(number(best[1], "epoch") or 0) if best else None,
                      last_val_acc=number(rows[-1], "val_acc"))


def check_project(project: Path) -> None:
    """TrainError (one line) for a --project inside a prepared folder, or that is a run folder: a
    run folder there would become part of the dataset's tree (a later `poi prepare` of it read
    `exp/` as a class) or sit among another run's files. (A run's own sub-folders may hold runs:
    the cross-fitted audit's fold models under clean/crossfit/.)"""
    resolved = project.resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / META_FILE).is_file():
            raise TrainError(f"--project {project} lies inside the prepared folder {folder}: put runs beside it")
    if (resolved / CONFIG_FILE).is_file() and any((resolved / name).is_file() for name in (LAST, BEST)):
        raise TrainError(f"--project {project} is a run folder: put runs beside it")


def resume_config(config: TrainConfig) -> tuple[TrainConfig, Optional[dict]]:
    """The saved config of the run folder `config.resume` (with this --device), and its last.pt if any."""
    run_dir = Path(config.resume)
    if run_dir.is_file():
        raise TrainError(f"--resume takes a run folder, not a file: {run_dir} (--fine-tune {run_dir} starts a new run from it)")
    if not run_dir.is_dir():
        raise TrainError(f"--resume: no such run folder: {run_dir}")
    if (run_dir / CV_CONFIG).is_file():
        raise TrainError(f"--resume: {run_dir} is a --fold all cross-validation: the same command that started it, run "
                         "again (without --resume), resumes it; or --resume one fold's folder in it")
    checkpoint = None
    if (run_dir / LAST).is_file():
        checkpoint = load_checkpoint(run_dir / LAST)
        saved = TrainConfig.from_dict(checkpoint["config"])
    elif (run_dir / CONFIG_FILE).is_file():  # killed during its first epoch: start it again
        # ... unless finished epochs are on disk (last.pt lost or deleted): starting again would
        # write over their results.csv and best.pt
        finished = [name for name in (RESULTS_FILE, BEST) if (run_dir / name).is_file()]
        if finished:
            raise TrainError(f"--resume: {run_dir} has {' and '.join(finished)} but no {LAST} to resume from; "
                             f"put {LAST} back, or train into a new run folder")
        saved = TrainConfig.from_dict(read_run_config(run_dir))
    else:
        raise TrainError(f"--resume: {run_dir} is not a poi run folder (no {LAST} or {CONFIG_FILE})")
    saved.device, saved.resume = config.device, str(run_dir)
    if checkpoint is not None and checkpoint["epoch"] >= saved.epochs:
        repair_finished(run_dir, checkpoint)
        raise TrainError(f"--resume: {run_dir} already finished its {saved.epochs} epochs")
    return saved, checkpoint


def read_run_config(run_dir: Path) -> dict:
    """A run folder's config.json as a dict; TrainError (one line naming the file) when it is not
    one (hand-edited, truncated)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise TrainError(f"--resume: {path} is not readable JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict) or not values.get("data") or type(values.get("epochs")) is not int:
        raise TrainError(f"--resume: {path} is not a run's settings (a JSON object naming its data and epochs)")
    return values


def repair_finished(run_dir: Path, checkpoint: dict) -> None:
    """A run whose last.pt holds its last epoch: results.csv and best.pt brought in line with it,
    as a resume does, and a killed writer's temp files removed (a kill between the last epoch's
    writes left its row out of results.csv and best.pt an epoch behind, and a finished run is
    never resumed to repair them)."""
    history = list(checkpoint.get("history") or [])[: int(checkpoint["epoch"])]
    RunFolder(run_dir, writer=True).repair(checkpoint, history)
    for name in (BEST, LAST, RESULTS_FILE):
        remove_stale_temps(run_dir / name)


def rng_state() -> dict:
    """The CPU (and CUDA) RNG state, saved in every checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Optional[dict]) -> None:
    """Restore an rng_state() (the CUDA part only on as many devices)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
