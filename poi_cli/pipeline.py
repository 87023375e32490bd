"""Recipes that chain training and inference: above both layers, beside cli.py.

`train_rounds`: POI trained on noisy labels, then, for each further round, the run's own
training labels audited by its PIN (poi audit), the suspects relabelled to the PIN's
suggestion (poi clean), and a new run trained from scratch on the cleaned labels. Each
round is an ordinary run folder (NAME, NAME_round2, ...); the cleaned label file and its
summary sit in the previous round's folder, under clean/. A cleaning that changes no
label ends the rounds (the next would repeat the last run). With `--rounds-teacher` each
later round also learns from the round before it (`--teacher`, train/teacher.py); with
`--rounds-fine-tune N` it starts from the round before it instead of from scratch and
trains N epochs at a fraction of --lr (fine_tuned_round).

`cross_fit_audit` (`poi audit RUN PREPARED --cross-fit K`, `poi train --rounds 2
--clean-cross-fit K`): the audit scored out of sample, as confident learning (cleanlab)
does: the run's training split dealt into K stratified parts, K models trained with the
run's own recipe, each with one part left out (label -1 in its label file), and each image
scored by the model that never saw it. K extra trainings on (K-1)/K of the data each.

`train_folds` (`poi train --fold all`): k-fold cross-validation on a store with folds
(CK+): fold K trained into NAME/fold<K> on the other folds, evaluated on fold K's held-out
images, then cv.csv (one row per fold) and cv.json (mean, spread, pooled accuracy) in
NAME/. Running the same command again resumes: finished folds are kept, a killed one
continues at its first unfinished epoch.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from rich.console import Console

import numpy as np
import pandas as pd

from poi_cli.core.atomic import write_csv, write_json
from poi_cli.core.atomic import atomic_write_text
from poi_cli.core.layout import HELD_OUT_COLUMN, HELDOUT_FILE
from poi_cli.core.locks import claim
from poi_cli.data.folds import CV_CONFIG, CV_CSV, CV_JSON, fold_split_name, folds_summary, stratified_folds, subject_folds
from poi_cli.data.store import DROPPED_LABEL, PreparedDataset, label_names
from poi_cli.study.audit import AuditError, AuditResult, audit_of, audited_labels, held_out_by_run, objective_inference
from poi_cli.study.clean import FITTED_ADVICE, clean, clean_audit, write_clean
from poi_cli.study.evaluate import evaluate, write_reports
from poi_cli.model.checkpoint import CONFIG_FILE, LAST, load_checkpoint, read_checkpoint_info, resolve_checkpoint
from poi_cli.model.predictions import predict_checkpoint_split
from poi_cli.train.config import ROUNDS_FINE_TUNE_LR_FACTOR, TrainConfig, TrainError
from poi_cli.train.data import select_data
from poi_cli.train.engine import TrainingInterrupted, train
from poi_cli.train.run_folder import read_run_config, repair_finished

CLEAN_DIR = "clean"
CROSS_FIT_DIR = "crossfit"  # in the audit's output folder: the K label files and run folders
CROSS_FIT_SEED = 0
CROSS_FIT_RECORD = "crossfit.json"  # in CROSS_FIT_DIR: which cross-fit its fold models are (check_same_cross_fit)
CV_COLUMNS = ["fold", "n_train", "n_test", "accuracy", "mean_class_recall", "best_epoch", "run"]
# Options that may differ when the same cross-validation is run again (it then resumes).
RERUN_FREE = ("device", "resume", "fold")


def cleaned_labels(run_dir: Path, config: TrainConfig, device: str = "auto") -> tuple[Path, dict]:
    """Audit a finished POI run on the labels it trained on and relabel its suspects; returns
    the label file and its summary (labels.json)."""
    out = run_dir / CLEAN_DIR / "labels.csv"
    if out.is_file() and out.with_suffix(".json").is_file():  # cleaned before a kill: the same labels again
        return out, json.loads(out.with_suffix(".json").read_text())
    auto = config.clean_threshold is None  # the default: the fraction chosen on the validation split
    if config.clean_cross_fit:
        audited = cross_fit_audit(run_dir, config.data, config.clean_cross_fit, run_dir / CLEAN_DIR, device)
        result = clean_audit(audited.table, PreparedDataset(config.data), config.train_split, run_dir,
                             f"cross-fitted, {config.clean_cross_fit} folds", "relabel", config.clean_threshold,
                             auto=auto, device=device, fold_models=audited.summary["fold_models"])
    else:
        result = clean(run_dir, config.data, "relabel", threshold=config.clean_threshold, split=config.train_split,
                       device=device, auto=auto)
    write_clean(result, out, replace=True)  # its own folder: a cleaning killed between the two files is redone
    return out, result.summary


def train_rounds(config: TrainConfig, console: Optional[Console] = None,
                 announce: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Train `config.rounds` runs, each on the labels the previous one cleaned; returns their folders.
    Round k > 1 is the folder `<round 1's folder>_round<k>` beside it; --resume of any round's
    folder finishes that round and goes on with the rounds after it."""
    if config.resume:
        return resume_rounds(config, console, announce)
    check_rounds(config)
    for line in idle_round_options(config):
        announce(f"note: {line}")
    first = train(config, console)
    return [first, *later_rounds(first, first, 2, config, console, announce)]


def idle_round_options(config: TrainConfig) -> list[str]:
    """Options of the cleaning between rounds given to a run of one round or whose round 1 is
    taught otherwise (said, not refused, as engine.idle_options says its own)."""
    notes = []
    given = [name for name, value in (("--clean-threshold", config.clean_threshold is not None),
                                      ("--clean-cross-fit", bool(config.clean_cross_fit))) if value]
    if config.rounds == 1 and given:
        notes.append(f"{' and '.join(given)} choose how --rounds cleans the labels between rounds: with one round "
                     "nothing is cleaned")
    if config.rounds_teacher and config.teacher:
        notes.append(f"--teacher {config.teacher} teaches round 1; --rounds-teacher makes each round the teacher of "
                     "the next in its place")
    return notes


def check_rounds(config: TrainConfig) -> None:
    config.validate()  # the options' own messages first (auto_clean_problem reads the data as they say)
    if config.rounds > 1 and not config.use_pin:
        raise TrainError("--rounds needs the PIN to audit the labels: it cannot be combined with --baseline")
    if config.rounds > 1 and not config.use_oim:  # the audit reads p~*, which --no-oim leaves out (before round 1, not after)
        raise TrainError("--rounds needs the PIN's objective inference to audit the labels: it cannot be combined with --no-oim")
    if config.rounds > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError("--rounds runs one process: train each round under torchrun, with poi audit and poi clean between")
    if config.rounds > 1 and config.clean_threshold is None and (problem := auto_clean_problem(config)):
        # said before round 1 trains, not after it (clean_round's --auto would fail there)
        raise TrainError(f"--rounds cleans between rounds with the fraction `poi clean --auto` chooses on validation "
                         f"labels, but {problem}: give --clean-threshold T (relabel the images of suspicion T or more)")


def auto_clean_problem(config: TrainConfig) -> Optional[str]:
    """Why clean_round's --auto (study.clean.validation_data) will have no validation labels to
    choose on for this run, or None: the store's valid/val split, else the run's held-out images."""
    dataset = PreparedDataset(config.data)
    name = dataset.validation_split()
    if name is not None:
        return f"it would estimate the noise on {name}, the split it cleans (circular)" if name == config.train_split else None
    if (config.val_split or "").lower() == "none" or config.val_fraction == 0:
        holds = "--val-split none" if (config.val_split or "").lower() == "none" else "--val-fraction 0"
        return f"{config.data} has no valid/val split and the run holds no images out ({holds})"
    if (picked := select_data(config)).val is None:  # a hold-out too small to hold any image out (its note says why)
        return f"{config.data} has no valid/val split and the run holds no images out: {picked.val_note}"
    return None


def round_folder(first: Path, number: int) -> Path:
    """Where round `number` of the recipe whose first round is `first` trains."""
    return first if number == 1 else first.with_name(f"{first.name}_round{number}")


def resume_rounds(config: TrainConfig, console: Optional[Console], announce: Callable[[str], None]) -> list[Path]:
    """--resume of a run folder: finish it and, when it is a round of a --rounds recipe with
    rounds left, the rounds after it (a finished round is not trained again)."""
    run_dir = Path(config.resume)
    stored = read_run_config(run_dir) if (run_dir / CONFIG_FILE).is_file() else {}
    try:
        rounds, epochs = int(stored.get("rounds") or 1), int(stored.get("epochs") or 0)
    except (TypeError, ValueError):
        raise TrainError(f"--resume: {run_dir / CONFIG_FILE}: rounds and epochs are not whole numbers") from None
    number, first = 1, run_dir
    named = re.fullmatch(r"(.+)_round(\d+)", run_dir.name)  # round_folder's name of a later round
    if named and 2 <= int(named.group(2)) <= rounds and (run_dir.with_name(named.group(1)) / CONFIG_FILE).is_file():
        number, first = int(named.group(2)), run_dir.with_name(named.group(1))
    finished = epochs > 0 and _finished_run(run_dir)
    if finished and number < rounds:  # a kill in its last epoch's writes: its files in line with last.pt
        with claim(run_dir, "run folder"):  # a recipe auditing it between rounds holds it (later_rounds)
            repair_finished(run_dir, load_checkpoint(run_dir / LAST))
        last = round_folder(first, rounds)
        if _finished_run(last):  # as --resume of the last round answers (not an audit run again for nothing)
            raise TrainError(f"--resume: {run_dir} and the rounds after it already finished (the last: {last})")
    if not (finished and number < rounds):
        train(config, console)  # resumes it (or says that it finished and no round is left)
    else:
        announce(f"{run_dir.name} finished earlier: going on with round {number + 1} of {rounds}")
    if number >= rounds:
        return [run_dir]
    recipe = TrainConfig.from_dict(json.loads((first / CONFIG_FILE).read_text()))  # round 1's options
    check_rounds(recipe)
    return [run_dir, *later_rounds(first, run_dir, number + 1, recipe, console, announce)]


def _finished_run(run_dir: Path) -> bool:
    """Whether run_dir's last.pt holds the last of the epochs its config.json asks for."""
    try:
        epochs = int(read_run_config(run_dir).get("epochs") or 0)
        return (run_dir / LAST).is_file() and read_checkpoint_info(run_dir / LAST).epoch >= epochs > 0
    except (TrainError, TypeError, ValueError):
        return False


def later_rounds(first: Path, previous: Path, start: int, config: TrainConfig, console: Optional[Console],
                 announce: Callable[[str], None]) -> list[Path]:
    """Rounds start..config.rounds: each audits and cleans the labels the round before trained on,
    then trains (or resumes, or keeps when finished) in round_folder(first, number)."""
    runs = [previous]
    for number in range(start, config.rounds + 1):
        try:
            # the round just trained stays claimed while it is audited: a --resume of it meanwhile
            # is refused at once (it rewrote the round's files and stopped only at the next round's)
            with claim(runs[-1], "run folder"):
                labels, summary = cleaned_labels(runs[-1], config, config.device)
        except KeyboardInterrupt:  # in the audit or cleaning: --resume of the finished round goes on from here
            raise TrainingInterrupted(runs[-1]) from None
        if summary["n_changed"] == 0:
            why = f"; {FITTED_ADVICE}" if summary.get("auto", {}).get("fitted_training_labels") else ""
            if not (config.rounds_teacher or config.rounds_fine_tune):
                # the same labels, seed and options: the round would repeat the last run exactly
                announce(f"round {number}: the audit of {runs[-1].name} changed no label ({labels}); "
                         f"stopping: {runs[-1].name} is the last round{why}")
                break
            # taught by or fine-tuned from the last round, the round is a new run on the same labels
            # (the bundled model's round 2: +0.7 on FERPlus valid with no label changed, README)
            how = " and ".join(([f"taught by {runs[-1].name}"] if config.rounds_teacher else [])
                               + ([f"fine-tuned from {runs[-1].name}"] if config.rounds_fine_tune else []))
            announce(f"round {number}: the audit of {runs[-1].name} changed no label ({labels}); "
                     f"round {number} trains on the same labels, {how}{why}")
        else:
            announce(f"round {number}: labels cleaned by {runs[-1].name} -> {labels}")
        # on a store without valid/val the round validates on the images round 1 held out (their
        # labels as given: the cleaning leaves them), not on a new draw by the cleaned labels
        following = replace(config, labels=str(labels), noise=0.0, resume=None,
                            heldout_from=str(runs[-1]) if (runs[-1] / HELDOUT_FILE).is_file() else config.heldout_from,
                            teacher=str(runs[-1]) if config.rounds_teacher else config.teacher)
        if config.rounds_fine_tune:
            following = fine_tuned_round(following, runs[-1])
        run_dir = round_folder(first, number)
        check_round_folder(run_dir, number, following, runs[-1])
        train_or_resume(run_dir, following, console)
        runs.append(run_dir)
    return runs[1:]


def check_round_folder(run_dir: Path, number: int, config: TrainConfig, previous: Path) -> None:
    """A run already in round `number`'s folder must be that round (killed or finished): trained
    on the labels the round before cleaned. Another run there (one named NAME_round2, or a round
    of an earlier recipe whose first round was removed) was taken for the round: kept as it was
    when finished, or resumed with its own labels."""
    if not any((run_dir / name).exists() for name in (CONFIG_FILE, LAST)):
        return  # no run there: the round trains into it
    try:
        labels = read_run_config(run_dir).get("labels")
        what = "trained on " + (labels or "the prepared folder's labels")
    except TrainError:
        labels, what = None, "no readable config.json"
    if labels is not None and Path(labels).resolve() == Path(config.labels).resolve():
        return
    raise TrainError(f"{run_dir} is where round {number} trains, but holds another run ({what}; round {number} "
                     f"trains on {config.labels}): move it away, then `poi train --resume {previous}` goes on "
                     f"with round {number}")


def fine_tuned_round(config: TrainConfig, previous: Path) -> TrainConfig:
    """--rounds-fine-tune: a later round starts from the round before it (its best.pt, as
    --fine-tune) and trains config.rounds_fine_tune epochs at ROUNDS_FINE_TUNE_LR_FACTOR x --lr
    on a cosine schedule without warm-up (a trained model needs none); the rest of the recipe
    is round 1's."""
    return replace(config, fine_tune=str(previous), pretrained=None, epochs=config.rounds_fine_tune, warmup_epochs=0.0,
                   lr=round(config.lr * ROUNDS_FINE_TUNE_LR_FACTOR, 12), schedule="cosine")  # round: 0.02, not 0.020000000000000004


def train_folds(config: TrainConfig, console: Optional[Console] = None,
                announce: Callable[[str], None] = lambda _: None) -> dict:
    """Train and evaluate every fold of the store (config.fold == 'all'); returns cv.json's content."""
    if config.resume:
        raise TrainError("--fold all resumes by running the same command again (without --resume)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError("--fold all runs one process: train each fold with --fold K under torchrun")
    config = replace(config)
    # checked as --fold all, before cv_config.json is written: each fold's run is validated as
    # --fold K, where --rounds was allowed (and silently not run), and a refused option left a
    # cv_config.json that then refused the corrected command
    config.validate()
    for line in idle_round_options(config):
        announce(f"note: {line}")
    config.resolve_paths()  # cv_config.json compares absolute paths, whatever the working directory
    dataset = PreparedDataset(config.data)
    if not dataset.folds:
        raise TrainError(f"{config.data} has no folds: prepare CK+ with `poi prepare ckplus RAW --out DIR` (10 folds by default)")
    folder = Path(config.project) / config.name
    check_same_cv(folder, config)
    rows = []
    for fold in range(dataset.folds):
        run_dir = folder / fold_split_name(fold)
        announce(f"fold {fold + 1}/{dataset.folds}: {run_dir}")
        trained_now = train_or_resume(run_dir, replace(config, fold=str(fold)), console)
        metrics = run_dir / "eval" / "metrics.json"
        if metrics.is_file() and not trained_now:
            result = json.loads(metrics.read_text())
        else:
            result = evaluate(run_dir, config.data, split=fold_split_name(fold), device=config.device)
            write_reports(result, run_dir / "eval")
        resolved = json.loads((run_dir / CONFIG_FILE).read_text()).get("resolved", {})
        rows.append({"fold": fold, "n_train": resolved.get("n_train"), "n_test": result["n_images"],
                     "accuracy": result["accuracy"], "mean_class_recall": result["mean_class_recall"],
                     "best_epoch": result.get("epoch"), "run": str(run_dir)})
    summary = folds_summary(rows, folder)
    write_csv(folder / CV_CSV, CV_COLUMNS, rows)
    write_json(folder / CV_JSON, summary)
    return summary


def train_or_resume(run_dir: Path, config: TrainConfig, console: Optional[Console] = None) -> bool:
    """Train `config` into run_dir, resume it there when killed, or leave it when finished;
    True when it trained now."""
    if (run_dir / LAST).is_file() and read_checkpoint_info(run_dir / LAST).epoch >= config.epochs:
        return False
    if (run_dir / CONFIG_FILE).is_file():  # killed: its own config.json says how to go on
        train(replace(config, resume=str(run_dir)), console)
    else:
        train(replace(config, resume=None, project=str(run_dir.parent), name=run_dir.name, exist_ok=True), console)
    return True


def check_same_cv(folder: Path, config: TrainConfig) -> None:
    """cv_config.json holds the options of the cross-validation in `folder`; running it again
    with other options would mix two recipes in one table."""
    wanted = {k: v for k, v in config.to_dict().items() if k not in RERUN_FREE}
    path = folder / CV_CONFIG
    if not path.is_file() and (folder / CONFIG_FILE).is_file():
        raise TrainError(f"{folder} holds a training run, not a cross-validation: choose another --name")
    if path.is_file():
        # through TrainConfig: an option newer than the file reads as its default, not as a change
        saved = {k: v for k, v in TrainConfig.from_dict(json.loads(path.read_text())).to_dict().items() if k not in RERUN_FREE}
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if changed:
            raise TrainError(f"{folder} holds a cross-validation with other options ({', '.join(changed)}): "
                             "choose another --name or remove it")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, config.to_dict())


def labels_digest(ids: np.ndarray, labels: np.ndarray) -> str:
    """A hash of the audited images and their labels (what the fold models are trained on)."""
    import hashlib

    return hashlib.sha256("\n".join(f"{i},{y}" for i, y in zip(ids, labels)).encode()).hexdigest()


def check_same_cross_fit(out: Path, record: dict) -> None:
    """Fold models under `out` are resumed, never retrained: they must be those of this
    cross-fit (the run, K, the seed of the fold assignment, the audited labels), or images
    would be scored by a model that trained on them. Writes the record for a new cross-fit;
    AuditError (one line) when `out` holds another's, or fold models without a record."""
    path = out / CROSS_FIT_RECORD
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in record if saved.get(k) != record[k])
        if changed:
            raise AuditError(f"{out} holds the fold models of another cross-fit (its {', '.join(changed)} differ: "
                             f"{saved.get('folds')} folds of {saved.get('run')}): give another --out, or remove {out}")
        return
    if out.is_dir() and any(out.iterdir()):
        raise AuditError(f"{out} holds files but no {CROSS_FIT_RECORD} saying which cross-fit they are: "
                         f"give another --out, or remove {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def cross_fit_audit(run_dir: str | Path, prepared_dir: str | Path, folds: int, out_dir: str | Path,
                    device: str = "auto", batch: int = 256, console: Optional[Console] = None) -> AuditResult:
    """Audit a POI run's training labels out of fold (see the module doc); the fold models are
    trained under out_dir/crossfit/ and a rerun resumes them."""
    run_dir, out = Path(run_dir), Path(out_dir) / CROSS_FIT_DIR
    if not (run_dir / CONFIG_FILE).is_file():
        raise AuditError(f"--cross-fit needs a poi run folder (its config.json holds the recipe to repeat): {run_dir}")
    config = TrainConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
    if not config.use_pin or not config.use_oim:
        raise AuditError(f"{run_dir} is not a full POI run: the audit needs the PIN's objective inference")
    if config.soft_labels:
        raise AuditError(f"{run_dir} trained on the annotators' votes (--soft-labels); --cross-fit repeats a training on "
                         "label files, which carry no votes: audit it in sample (without --cross-fit)")
    dataset = PreparedDataset(prepared_dir)
    if Path(config.data).resolve() != dataset.root.resolve():
        raise AuditError(f"{run_dir} was trained on {config.data}, not {dataset.root}: cross-fitting repeats its training")
    data, label_source = audited_labels(dataset, config.train_split, config.to_dict(), True)
    if len(data.labels) < 2:
        raise AuditError(f"--cross-fit needs 2 training images at least (one per fold); {config.train_split} has "
                         f"{len(data.labels)}")
    if folds < 2 or folds > len(data.labels):
        raise AuditError(f"--cross-fit needs 2 to {len(data.labels)} folds (at most one per training image), got {folds}")
    record = {"run": str(run_dir.resolve()), "folds": folds, "seed": CROSS_FIT_SEED,
              "labels": labels_digest(data.ids, data.labels)}
    if (subjects := dataset.subjects(data)) is not None and len(set(subjects)) >= folds:
        # a subject's near-identical frames (CK+) in a fold model's training would score its
        # other frames in sample: the folds keep subjects whole
        fold_of, record["by_subject"] = subject_folds(subjects, folds, CROSS_FIT_SEED), True
    else:
        fold_of = stratified_folds(data.labels, folds, CROSS_FIT_SEED)
    check_same_cross_fit(out, record)
    all_ids = dataset.split(config.train_split).ids  # the split as the manifest has it
    position = pd.Series(np.arange(len(all_ids)), index=all_ids)
    names = dataset.classes
    objective = np.zeros((len(data.labels), len(names)))
    trn, w = np.zeros_like(objective), np.zeros(len(data.labels))
    # On a store without valid/val, the images the run held out for validation keep their labels
    # in every fold's file and each fold model validates on all of them (--heldout-from), training
    # on none: --auto scores them as the validation of every fold model's suggestions
    run_held = held_out_by_run(Path(run_dir), data, True)
    heldout = str(run_dir) if run_held.any() else config.heldout_from
    for fold in range(folds):
        held = fold_of == fold
        labelled = ~held | run_held
        labels_file = out / f"fold{fold}_labels.csv"
        if not labels_file.is_file():
            # Every image of the split has a row (a label file must cover the split): the
            # fold's images (but the run's held-out ones) and those the run itself left out
            # (label -1 in its file) get -1.
            table = pd.DataFrame({"id": all_ids, "label": DROPPED_LABEL})
            table.loc[position[data.ids[labelled]], "label"] = data.labels[labelled]
            table["label_name"] = label_names(table["label"], names)
            if data.clean_labels is not None:
                table.loc[position[data.ids], "clean_label"] = data.clean_labels
                table["clean_label"] = table["clean_label"].fillna(DROPPED_LABEL).astype(int)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(labels_file, table.to_csv(index=False))
        fold_dir = out / fold_split_name(fold)
        # one training of the run's recipe: no rounds of its own (their options go with them)
        train_or_resume(fold_dir, replace(config, labels=str(labels_file), noise=0.0, rounds=1, rounds_teacher=False,
                                          rounds_fine_tune=None, fold=None, device=device, heldout_from=heldout), console)
        predictions = predict_checkpoint_split(load_checkpoint(resolve_checkpoint(fold_dir)), dataset.faces,
                                               data.store_rows[held], data.labels[held], device, batch, config.amp)
        objective[held] = objective_inference(predictions, fold_dir)
        trn[held], w[held] = predictions.trn_probs, predictions.consistency
    result = audit_of(dataset, data, objective, trn, w, label_source=label_source,
                      mode=f"out of fold: {folds} models with {run_dir.name}'s recipe, each scoring the images it never trained on",
                      checkpoint=f"{run_dir} (cross-fitted, {folds} folds under {out})", split=config.train_split,
                      extra_columns={"fold": fold_of, HELD_OUT_COLUMN: run_held})
    # poi clean --auto scores valid with the models that made the suggestions (the fold models)
    result.summary["model"] = str(Path(run_dir).resolve())
    result.summary["fold_models"] = [str((out / fold_split_name(fold)).resolve()) for fold in range(folds)]
    return result
