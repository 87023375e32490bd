"""`poi report`: training runs -> the paper's tables and figures, as Markdown, CSV and PNG.

    report = build_report(["runs/train"], out_dir="runs/report/exp")       # or run folders
    report = build_report(runs, out_dir, data="prepared/rafdb", split="test")

From each run folder (config.json + results.csv, as `poi train` writes them):
* runs.csv / the first table of report.md: final and best-on-validation accuracy per run
  with the prepared folder it trained on (data: by name, by path where two of the report's
  folders share a name: data_labels), its noise rate, ablation switches and
  variant (how its recipe differs from the most common one of its method: variant_names)
  (the shape of Tables II, III and X), and by_noise.csv: best validation accuracy,
  data and method (variant) x noise rate (mean over runs that share all four), the shape
  of Table II; by_noise_seeds.csv: final and best validation accuracy per data, method,
  variant and noise, mean, min and max over those runs (seeds) and which seeds;
* cross_validation.csv (when the report holds --fold K runs, which each train on other data
  and are in neither table by noise): one row per cross-validation, the folds' test accuracy
  on their own held-out folds (cross_validation_table);
* curves_<run>.png: losses and accuracies per epoch (missing epochs are gaps).

Per-image results (confusion matrix, strata, calibration) need predictions. Two sources:
* `--data PREPARED_DIR [--split SPLIT]` (default: the split `poi evaluate` picks for the run,
  choose_split: a --fold K run's own held-out fold, else test, else valid/val; fold3: fold 3's
  held-out images): the report runs each run's best.pt (else
  last.pt) on that split (the same figures as `poi evaluate`) and writes
  confusion_<run>.png and consistency_<run>.png (the histogram of the UEM consistency w
  for right and wrong predictions, Fig. 15); a --split the run trained on is not scored
  (trained_on), with a note;
* otherwise a run's own `eval/metrics.json`, written by `poi evaluate RUN DATA --out
  RUN/eval`, gives the confusion matrix, the strata and the calibration figures (not
  the histogram: it keeps no per-image w). An old metrics.json whose only strata are
  `confidence_strata` (they were of w then) counts as consistency strata. One of an epoch
  its checkpoint no longer holds (evaluated while the run trained on) is left out, with a note.
Either way strata.csv holds the accuracy of the most and least confident 30/50/70 %
(Table IV) by each score (`score`: confidence = calibrated probability, consistency =
w), and runs.csv each score's ECE and AURC on the measured half of the calibration
study (evaluate.calibration_block), and the ECE a perfectly calibrated confidence would
measure there (ece_floor_confidence).
A folder that is not a run is named in `skipped` and left out; nothing in a run folder
is modified.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pandas as pd

from poi_cli.core.errors import PoiError
from poi_cli.core.atomic import FolderOutputs, atomic_write_text, save_figure
from poi_cli.core.layout import HELD_OUT_MARK, MEMBER_VAL_PREFIX, META_FILE
from poi_cli.data.folds import CV_CONFIG, CV_JSON, folds_summary
from poi_cli.study.clean import audit_summary_path, audited_model
from poi_cli.model.checkpoint import CONFIG_FILE, RESULTS_FILE, held_out_fold, training_data_name, training_overlap

if TYPE_CHECKING:  # evaluate imports torch: only when predicting
    from poi_cli.data.store import PreparedDataset
    from poi_cli.study.evaluate import MappedPredictions

DEFAULT_RUNS = "runs/train"
EVAL_DIR = "eval"  # RUN/eval/metrics.json from `poi evaluate --out RUN/eval`
CV_TABLE = "cross_validation.csv"  # written when the report holds fold runs (--fold K)
REPORT_TITLE = "# poi report"  # report.md's first line


def is_poi_report(path: Path) -> bool:
    """`path` is a report.md that `poi report` wrote (its first line)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline().rstrip("\n") == REPORT_TITLE
    except OSError:
        return False


# what `poi report --out` writes (build_report); a folder is its own where report.md is a report's
REPORT_OUTPUTS = FolderOutputs(
    "poi report", ("report.md", "runs.csv", "by_noise.csv", "by_noise_seeds.csv", "strata.csv", CV_TABLE, "curves_*.png",
                   "consistency_*.png", "confusion_*.png"), "report.md", is_poi_report)
SWITCHES = ("use_pin", "prior_supervision", "use_oim", "use_uem")
# What else makes two runs of one method different recipes, so that the tables by noise
# average only runs that differ by seed: every option in config.json (the model, loss,
# optimiser and augmentation sections of `poi train`; SWITCHES name the method) but
# these, of its data and run sections (the labels count as cleaned by `poi clean` or not).
# tests/test_report.py checks them against TrainConfig's sections (inference never imports train).
NOT_RECIPE = frozenset({
    "data", "train_split", "val_split", "val_fraction", "heldout_from", "labels", "noise", "noise_seed", "rounds", "clean_threshold",
    "rounds_teacher", "rounds_fine_tune", "clean_cross_fit", "fold", "seed", "device", "amp", "channels_last", "compile", "sync_bn",
    "eval_batch", "project", "name", "exist_ok", "resume", "resolved",
})
PATH_OPTIONS = ("pretrained", "fine_tune")  # weights files: the same file wherever it lies
SUMMARY_COLUMNS = [
    "run", "data", "fold", "cv", "method", "variant", "arch", "input_size", "noise", "noise_realised", *SWITCHES, "seed", "epochs_done", "epochs_planned",
    "missing_epochs", "final_val_acc", "best_val_acc", "best_epoch", "final_train_acc", "eval_acc", "eval_split",
    "eval_n", "eval_left_out", "eval_acc_without_twins", "ece_confidence", "ece_floor_confidence", "ece_max_softmax", "aurc_confidence", "aurc_consistency", "aurc_max_softmax", "path",
]
INTEGER_COLUMNS = ("input_size", "seed", "epochs_done", "epochs_planned", "best_epoch", "eval_n", "eval_left_out")
CALIBRATION_COLUMNS = {  # runs.csv column: (metric, score) in an evaluation's calibration block
    "ece_confidence": ("ece", "confidence"), "ece_floor_confidence": ("ece_floor", "confidence"),
    "ece_max_softmax": ("ece", "max_softmax"),
    "aurc_confidence": ("aurc", "confidence"), "aurc_consistency": ("aurc", "consistency"),
    "aurc_max_softmax": ("aurc", "max_softmax"),
}
SCORES = ("confidence", "consistency")  # the scores of strata.csv
STRATA_ACCURACIES = ("most_confident_accuracy", "least_confident_accuracy")  # evaluate's metrics.json names them so
STRATA_COLUMNS = ["run", "score", "fraction", "n", *STRATA_ACCURACIES]
# cross_validation.csv: one row per cross-validation; the accuracies are of each fold's model on its own held-out fold
CV_ACCURACIES = ("accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "accuracy_pooled")
CV_TABLE_COLUMNS = ["cv", "data", "method", "variant", "noise", "seed", "folds", "runs", *CV_ACCURACIES, "n_test", "source"]
CV_INTEGER_COLUMNS = ("seed", "folds", "runs", "n_test")


class ReportError(PoiError):
    """A report that cannot be made (nothing to report, unreadable data); one-line message."""


@dataclass
class Run:
    path: Path
    name: str  # unique within the report (used in file names)
    config: dict
    results: pd.DataFrame  # results.csv, one row per finished epoch, sorted by epoch
    evaluation: Optional[dict] = None  # metrics.json of `poi evaluate`, if any
    notes: list[str] = field(default_factory=list)
    cv: Optional[Path] = None  # the `poi train --fold all` folder it trained in (cv_folder_of)


@dataclass
class Report:
    out_dir: Path
    runs: list[Run]
    skipped: list[str]  # "PATH: why" for each folder left out
    summary: pd.DataFrame
    by_noise: pd.DataFrame
    strata: pd.DataFrame
    files: list[Path]
    cross_validation: pd.DataFrame = field(default_factory=pd.DataFrame)  # cross_validation.csv


# ----------------------------------------------------------------------- collecting


def is_run(path: Path) -> bool:
    try:
        return path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / RESULTS_FILE).is_file())
    except OSError:  # a folder that cannot be read (no permission): not_readable says so
        return False


def is_cv_folder(path: Path) -> bool:
    """A `poi train --fold all` folder: its fold runs (fold0, fold1, ...) beside cv_config.json
    (written first) and cv.json (once every fold is evaluated)."""
    try:
        return path.is_dir() and ((path / CV_CONFIG).is_file() or (path / CV_JSON).is_file())
    except OSError:
        return False


def cv_folder_of(run_dir: Path) -> Optional[Path]:
    """The `poi train --fold all` folder a run folder trained in, or None."""
    return run_dir.parent if is_cv_folder(run_dir.parent) else None


def not_readable(path: Path) -> Optional[str]:
    """Why a folder cannot be listed (no permission), or None."""
    try:
        os.listdir(path)
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def _stale_evaluation(run_dir: Path, evaluation: dict) -> Optional[str]:
    """Why a run's eval/metrics.json is no longer of the checkpoint it names (evaluated while the
    run trained on: best.pt has moved to a later epoch since), or None."""
    from poi_cli.model.checkpoint import read_checkpoint_info

    checkpoint, epoch = evaluation.get("checkpoint"), evaluation.get("epoch")
    if not checkpoint or epoch is None:
        return None  # an older metrics.json: nothing to compare
    current = run_dir / Path(str(checkpoint)).name
    if Path(str(checkpoint)).resolve().parent != run_dir.resolve() or not current.is_file():
        return None  # of another file (a copy, an export): not the run's to compare
    try:
        now = read_checkpoint_info(current).epoch
    except (OSError, RuntimeError, ValueError, KeyError, PoiError):  # unreadable: the run's problem, said elsewhere
        return None
    return None if now == epoch else f"is of epoch {epoch} of {current.name}, which now holds epoch {now}"


def find_runs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Run folders among `paths` (a folder of runs counts as its runs, a `--fold all` folder
    among them as its fold runs), and the skipped ones (a folder that cannot be read among
    them: one unreadable run does not stop the report)."""
    runs: list[Path] = []
    skipped: list[str] = []
    for value in paths or [DEFAULT_RUNS]:
        path = Path(value)
        if is_run(path):
            runs.append(path)
        elif not path.exists():
            skipped.append(f"{path}: no such folder")
        elif path.is_dir() and not_readable(path):
            skipped.append(f"{path}: cannot be read ({not_readable(path)})")
        elif path.is_dir() and any(is_run(child) or is_cv_folder(child) for child in path.iterdir()):
            for child in sorted(path.iterdir()):
                if is_run(child):
                    runs.append(child)
                elif is_cv_folder(child) and not not_readable(child):
                    runs += [fold for fold in sorted(child.iterdir()) if is_run(fold)]
                elif child.is_dir() and not_readable(child):
                    skipped.append(f"{child}: cannot be read ({not_readable(child)})")
                elif is_poi_report(child / "report.md"):
                    continue  # a report written into the folder of its runs (--out PROJECT/report): no run, no news
                elif child.is_dir():
                    skipped.append(f"{child}: not a run folder (no {CONFIG_FILE} or {RESULTS_FILE})")
        else:
            skipped.append(f"{path}: not a run folder (no {CONFIG_FILE} or {RESULTS_FILE})")
    unique, seen = [], set()
    for run in runs:
        if run.resolve() not in seen:
            seen.add(run.resolve())
            unique.append(run)
    return unique, skipped


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


# a run on a combined folder selects on the mean of its datasets' validation accuracies, while
# poi evaluate's accuracy pools the split's faces: two figures of one checkpoint on one split
COMBINED_VAL_NOTE = (f"trained on a combined folder: its val accuracies (final_val_acc, best_val_acc) are the mean of "
                     f"its datasets' ({MEMBER_VAL_PREFIX}NAME in results.csv), which best.pt is selected on; eval_acc "
                     "pools the evaluated split's faces (poi evaluate's members block gives each dataset's)")


# a run on a store without valid/val validates on images it held out of its training split
# ("train[held out 0.1]", core.layout.HELD_OUT_MARK), with the labels it trained on
HELD_OUT_VAL_NOTE = ("its val accuracies are on {n} images it held out of {split}, with the labels it trained on (noisy "
                     "under --noise or a noise file): runs with other hold-outs or labels are not compared on the same "
                     "images; eval_acc on a split none of them trained on is")


def load_run(path: Path, name: str) -> Run:
    """Read a run folder; raises ReportError when its files cannot be parsed."""
    config: dict = {}
    notes: list[str] = []
    if (path / CONFIG_FILE).is_file():
        try:
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ReportError(f"{path / CONFIG_FILE}: not readable JSON ({error})") from None
        if not isinstance(config, dict):
            raise ReportError(f"{path / CONFIG_FILE}: not a poi run config")
    else:
        notes.append(f"no {CONFIG_FILE}: noise rate and switches unknown")
    results = pd.DataFrame(columns=["epoch"])
    if (path / RESULTS_FILE).is_file():
        try:
            results = pd.read_csv(path / RESULTS_FILE)
        except pd.errors.EmptyDataError:
            pass
        except (OSError, ValueError) as error:
            raise ReportError(f"{path / RESULTS_FILE}: not a readable CSV ({error})") from None
        if "epoch" not in results.columns:  # rows or only a header: either way not a run's results
            raise ReportError(f"{path / RESULTS_FILE}: has no epoch column")
        epochs = pd.to_numeric(results["epoch"], errors="coerce")
        bad = results["epoch"][results["epoch"].notna() & ~(np.isfinite(epochs) & (epochs == epochs.round()))]
        if len(bad):  # not a run's results either (before: read as a run without epochs)
            raise ReportError(f"{path / RESULTS_FILE}: epoch {str(bad.iloc[0])!r} is not a whole number")
    if not len(results):
        notes.append("no finished epoch")
    if any(str(column).startswith(MEMBER_VAL_PREFIX) for column in results.columns):
        notes.append(COMBINED_VAL_NOTE)
    resolved = config.get("resolved") if isinstance(config.get("resolved"), dict) else {}
    if HELD_OUT_MARK in str(resolved.get("val_split") or ""):  # a store without valid/val (RAF-DB, CK+ folds)
        notes.append(HELD_OUT_VAL_NOTE.format(n=resolved.get("n_val", "its"), split=config.get("train_split") or "train"))
    results = results.apply(pd.to_numeric, errors="coerce")
    results = results.dropna(subset=["epoch"]).drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    evaluation = None
    metrics = path / EVAL_DIR / "metrics.json"
    if metrics.is_file():
        try:
            evaluation = json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            notes.append(f"{metrics} is not readable JSON: ignored")
        stale = _stale_evaluation(path, evaluation) if isinstance(evaluation, dict) else None
        if stale:
            notes.append(f"{metrics} {stale}: ignored (run poi evaluate again)")
            evaluation = None
    return Run(path=path, name=name, config=config, results=results, evaluation=evaluation, notes=notes,
               cv=cv_folder_of(path))


# -------------------------------------------------------------------------- tables


def method_name(config: dict) -> str:
    """'baseline', 'POI', or 'POI w/o PB, OIM, UEM' (the ablation rows of Tables III and X)."""
    if not config:
        return "unknown"
    if not config.get("use_pin", True):
        return "baseline"
    missing = [label for key, label in (("prior_supervision", "PB"), ("use_oim", "OIM"), ("use_uem", "UEM")) if not config.get(key, True)]
    return "POI" + (f" w/o {', '.join(missing)}" if missing else "")


def _read_json(path: Path) -> Optional[dict]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def cleaning_of(labels: str | Path) -> Optional[tuple[str, Optional[dict]]]:
    """For a label file `poi clean` wrote: how it cleaned ('relabel', 'drop', '... out of
    fold') and the config of the run whose audit it used (None when that run is gone);
    None for any other label file. Its summary beside it names the audit, whose summary
    names the run or checkpoint, or (`poi clean RUN`, `poi train --rounds`) the run itself."""
    summary = _read_json(Path(labels).with_suffix(".json"))
    if not summary or "n_changed" not in summary:
        return None
    audited = summary.get("audit")
    if audited and Path(audited).suffix.lower() != ".csv":  # `poi clean RUN` and --rounds name the run (or checkpoint) itself
        model = Path(audited)
        return str(summary.get("mode", "")), _read_json((model if model.is_dir() else model.parent) / CONFIG_FILE)
    audit = (_read_json(audit_summary_path(audited)) if audited else None) or {}
    how = str(summary.get("mode", "")) + (" out of fold" if audit.get("fold_models") else "")
    try:
        model = Path(audited_model(audit))
    except (KeyError, TypeError):  # no audit summary, or one naming no model
        return how, None
    return how, _read_json((model if model.is_dir() else model.parent) / CONFIG_FILE)


def noise_of(config: dict, _depth: int = 0) -> tuple[Optional[float], Optional[float]]:
    """(requested rate, realised rate): --noise, or the summary beside a --labels file; for
    labels cleaned by `poi clean`, the rate the audited run started from (and what is left)."""
    if not config:
        return None, None
    realised = (config.get("resolved") or {}).get("noise_realised_rate")
    if config.get("noise"):
        return float(config["noise"]), realised
    if config.get("labels"):
        labels = Path(config["labels"])
        values = _read_json(labels.with_suffix(".json")) or {}
        try:
            return float(values["rate"]), float(values["realised_rate"])
        except (KeyError, TypeError, ValueError):
            pass
        cleaning = cleaning_of(labels) if _depth < 10 else None  # a later round cleans the round before
        audited = cleaning[1] if cleaning else None
        if audited is not None:
            left = realised if realised is not None else values.get("noise_rate_after")
            return noise_of(audited, _depth + 1)[0], left
        return None, None  # the label file is elsewhere now: unknown rather than wrong
    return 0.0, 0.0


def recipe_of(config: dict) -> dict[str, str]:
    """The options of a run's config.json that make its recipe (all but NOT_RECIPE and
    SWITCHES), as text. A teacher counts as present or not (each seed has its own), its
    weight only with a teacher, a weights file by its name, the labels as cleaned or not.
    Options an older config lacks are left out, and so not compared."""
    recipe: dict[str, str] = {}
    for key, value in config.items():
        if key in NOT_RECIPE or key in SWITCHES:
            continue
        if key == "teacher":
            value = "yes" if value else None
        elif key == "teacher_weight" and not config.get("teacher"):
            value = None  # no teacher: its weight does nothing
        elif key in PATH_OPTIONS and value:
            value = Path(value).name
        recipe[key] = "" if value is None else str(value)
    cleaning = cleaning_of(config["labels"]) if config.get("labels") else None
    # said either way: among cleaned runs, one that is not read 'labels=none', as if it had no labels
    recipe["labels"] = f"cleaned ({cleaning[0]})" if cleaning else "not cleaned"
    return recipe


def variant_names(configs: Sequence[dict]) -> list[str]:
    """For each run, how its recipe differs from the most common one among the runs of its
    method ('temperature=1.0, teacher=yes'); '' for a run of that recipe. Ties go to the
    value of the earliest run."""
    recipes = [recipe_of(config) if config else {} for config in configs]
    methods = [method_name(config) for config in configs]
    common: dict[tuple[str, str], str] = {}
    for method in dict.fromkeys(methods):
        mine = [recipe for recipe, m in zip(recipes, methods) if m == method]
        for key in dict.fromkeys(key for recipe in mine for key in recipe):
            common[method, key] = Counter(r[key] for r in mine if key in r).most_common(1)[0][0]
    return [", ".join(f"{key}={value or 'none'}" for key, value in sorted(recipe.items()) if value != common[method, key])
            for recipe, method in zip(recipes, methods)]


def _resolved_path(path: object) -> str:
    return str(Path(str(path)).resolve()) if path else ""


def store_of(config: dict) -> str:
    """What identifies the prepared folder a run trained on: its path as training recorded it,
    resolved ('' when config.json does not say). Two folders of one name are two stores."""
    return _resolved_path(config.get("data"))


def data_labels(configs: Sequence[dict]) -> list[str]:
    """The prepared folder of each run as the tables name it: by name (training_data_name), or by
    its path where the report holds runs on several folders of that name (a ck48 here and a
    ck48 there are two stores, never averaged into one row)."""
    names = [training_data_name(c, c.get("resolved") or {}) or "" for c in configs]
    stores = [store_of(c) for c in configs]
    stores_of: dict[str, set[str]] = {}
    for name, store in zip(names, stores):
        stores_of.setdefault(name, set()).add(store)
    return [store if len(stores_of[name]) > 1 and store else name for name, store in zip(names, stores)]


def trained_on(config: dict, dataset: PreparedDataset, split: str) -> Optional[str]:
    """Why a run's accuracy on `split` of `dataset` would be of images it trained on, or None
    (checkpoint.training_overlap: its training split, or a fold of it other than the one a --fold
    K run holds out; every fold run of a --fold all trained on all the others)."""
    overlap = training_overlap(config, dataset, split)
    if overlap is None:
        return None
    own, train_split = held_out_fold(config), config.get("train_split") or "train"
    if own is None:
        return f"it trained on {split}" + (f" (part of its training split {train_split})" if overlap == "fold" else "")
    return (f"it trained on {split} (it holds out {own}, its own test fold); "
            "without --split each --fold run is scored on its own held-out fold")


def _missing_epochs(epochs: Sequence[int]) -> str:
    present = sorted(int(e) for e in epochs)
    if not present:
        return ""
    gaps = sorted(set(range(1, present[-1] + 1)) - set(present))
    return " ".join(map(str, gaps))


def _column(results: pd.DataFrame, name: str) -> pd.Series:
    return results[name] if name in results.columns else pd.Series(np.nan, index=results.index, dtype=float)


def summarise(run: Run, variant: str, data: str) -> dict:
    """One row of runs.csv; variant and data: from variant_names and data_labels over the report's runs."""
    c, r = run.config, run.results
    noise, realised = noise_of(c)
    val, train = _column(r, "val_acc"), _column(r, "train_acc")
    best = int(val.idxmax()) if val.notna().any() else None
    evaluation = run.evaluation or {}
    return {
        # fold: the fold a --fold K run holds out; cv: the --fold all folder it trained in
        "run": run.name, "data": data, "fold": held_out_fold(c), "cv": None if run.cv is None else str(run.cv),
        "method": method_name(c),
        "variant": variant, "arch": c.get("arch"), "input_size": c.get("input_size"),
        # a baseline has no PIN to ablate: its PIN switches are blank, not the defaults it ignored
        "noise": noise, "noise_realised": realised, "seed": c.get("seed"),
        **{k: c.get(k) if k == "use_pin" or c.get("use_pin", True) else None for k in SWITCHES},
        "epochs_done": len(r), "epochs_planned": c.get("epochs"), "missing_epochs": _missing_epochs(r["epoch"]),
        "final_val_acc": val.iloc[-1] if len(r) else None,
        "best_val_acc": None if best is None else val.iloc[best],
        "best_epoch": None if best is None else int(r["epoch"].iloc[best]),
        "final_train_acc": train.iloc[-1] if len(r) else None,
        "eval_acc": evaluation.get("accuracy"), "eval_split": evaluation.get("split"),
        # how many faces eval_acc is of, and how many of the split were left out (classes the model
        # does not know): runs with other class sets are scored on other faces
        "eval_n": evaluation.get("n_images"), "eval_left_out": evaluation.get("n_left_out"),
        # the faces with no pixel-identical copy among the folder's other faces (evaluate's twins)
        "eval_acc_without_twins": ((evaluation.get("twins") or {}).get("without") or {}).get("accuracy"),
        **calibration_figures(evaluation), "path": str(run.path),
    }


def calibration_figures(evaluation: dict) -> dict[str, Optional[float]]:
    """The CALIBRATION_COLUMNS of an evaluation (None where it has no calibration block or no such score)."""
    scores = (evaluation.get("calibration") or {}).get("scores") or {}
    return {column: (scores.get(score) or {}).get(metric) for column, (metric, score) in CALIBRATION_COLUMNS.items()}


def repeated_seeds_note(seeds: pd.DataFrame) -> str:
    """A sentence naming the groups of seeds_table in which a seed comes more than once (a run
    copied or trained again with the same seed): their range is no spread over seeds."""
    repeated = [f"{row.method}{f' ({row.variant})' if row.variant else ''} at noise {row.noise:g} (seeds {row.seeds})"
                for row in seeds.itertuples() if len(str(row.seeds).split()) != len(set(str(row.seeds).split()))]
    if not repeated:
        return ""
    return ("\nA seed comes more than once in " + "; ".join(repeated) + ": those runs repeat one another (the same "
            "seed and recipe), so their mean and range are not a spread over seeds.\n")


def by_noise_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Best validation accuracy (mean over runs), rows = dataset and method (and variant),
    columns = noise rate (Table II's shape), from seeds_table."""
    if seeds.empty:
        return pd.DataFrame()
    named = seeds.assign(method=[m + (f" ({v})" if v else "") for m, v in zip(seeds["method"], seeds["variant"])])
    table = named.pivot(index=["data", "method"], columns="noise", values="best_mean_acc")
    # 0.125 is "noise 12.5%": whole percents (.0%) gave it and 0.12 one column name
    table.columns = [f"noise {round(rate * 100, 6):g}%" for rate in table.columns]
    return table.reset_index()


def seeds_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Final and best validation accuracy per (dataset, method, variant, noise): mean, min and
    max over the runs that share all four (seeds, usually: runs on different prepared folders
    are never averaged, their validation splits differ), with the seeds listed. Fold runs
    (--fold K) are left out: each trains on other data, so they are no seeds of one recipe
    (cross_validation_table reports them)."""
    known = summary[summary["fold"].isna()]
    known = known.dropna(subset=["noise"]).dropna(subset=["final_val_acc", "best_val_acc"], how="all")
    if known.empty:
        return pd.DataFrame()
    rows = []
    for (data, method, variant, noise), group in known.groupby(["data", "method", "variant", "noise"], sort=True):
        row = {"data": data, "method": method, "variant": variant, "noise": noise, "runs": len(group),
               "seeds": " ".join(str(s) for s in sorted(group["seed"].dropna().astype(int)))}
        for column, name in (("final_val_acc", "final"), ("best_val_acc", "best")):
            values = group[column].astype(float)
            row.update({f"{name}_mean_acc": values.mean(), f"{name}_min_acc": values.min(), f"{name}_max_acc": values.max()})
        rows.append(row)
    return pd.DataFrame(rows)


def _own_fold_result(run: Run, fold: str) -> Optional[dict]:
    """cv.csv's row of a fold run from its evaluation (eval/metrics.json, or --data's predictions)
    when that is of its own held-out fold on the store it trained on; None otherwise."""
    e = run.evaluation or {}
    if e.get("split") != fold or e.get("accuracy") is None or not e.get("n_images"):
        return None
    if e.get("data") and store_of(run.config) and _resolved_path(e["data"]) != store_of(run.config):
        return None  # another store's fold of that name
    return {"fold": fold, "n_test": e["n_images"], "accuracy": e["accuracy"],
            "mean_class_recall": e.get("mean_class_recall", float("nan"))}


def cross_validation_table(runs: Sequence[Run], summary: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """cross_validation.csv: one row per cross-validation among the fold runs (--fold K), those of
    one `poi train --fold all` folder, or fold runs trained one by one that share the store,
    method, variant, noise and seed; and notes ('NAME: ...') on what a row leaves out.

    A fold run trains on every fold but its own, so its validation accuracy is of no shared
    recipe: a row's figure is each fold's test accuracy on its own held-out fold, mean, sample
    std, min and max over the folds, and pooled over their images (folds_summary): the folder's
    cv.json when there is one, else each fold run's evaluation on its own fold (_own_fold_result)."""
    groups: dict[tuple, list[tuple[Run, pd.Series]]] = {}
    for run, (_, row) in zip(runs, summary.iterrows()):
        if pd.isna(row["fold"]):
            continue
        key = (("cv", str(run.cv.resolve())) if run.cv is not None else
               ("runs", row["data"], row["method"], row["variant"], None if pd.isna(row["noise"]) else row["noise"],
                None if pd.isna(row["seed"]) else row["seed"]))
        groups.setdefault(key, []).append((run, row))
    rows, notes = [], []
    for members in groups.values():
        first_run, first = members[0]
        name = str(first_run.cv) if first_run.cv is not None else "fold runs " + " ".join(run.name for run, _ in members)
        saved = _read_json(first_run.cv / CV_JSON) if first_run.cv is not None else None
        folds = [row["fold"] for _, row in members]
        if saved is not None and all(key in saved for key in (*CV_ACCURACIES, "folds", "n_test")):
            figures, source = saved, CV_JSON
            if int(saved["folds"]) != len(members):
                notes.append(f"{name}: the report holds {len(members)} of its {saved['folds']} fold runs; "
                             f"its row is {CV_JSON}'s, over all of them")
        else:
            results = [(run, _own_fold_result(run, row["fold"])) for run, row in members]
            per_fold = [result for _, result in results if result is not None]
            unevaluated = [run.name for run, result in results if result is None]
            if unevaluated:
                notes.append(f"{name}: {', '.join(unevaluated)} left out: no evaluation on its own held-out fold "
                             "(`poi evaluate RUN DATA --out RUN/eval` picks that fold, as `--data DATA` does)")
            figures, source = (folds_summary(per_fold, name) if per_fold else {}), "fold runs' evaluations"
            folds = [result["fold"] for result in per_fold]
            store = store_of(first_run.config)  # how many folds it has: its prepared.json, where it still is
            of_store = ((_read_json(Path(store) / META_FILE) or {}).get("protocol") or {}).get("folds") if store else None
            if per_fold and isinstance(of_store, int) and len(set(folds)) < of_store:
                notes.append(f"{name}: {len(set(folds))} of the store's {of_store} folds, not the whole cross-validation")
        repeated = sorted(fold for fold, count in Counter(folds).items() if count > 1)
        if repeated:
            notes.append(f"{name}: {', '.join(repeated)} more than once (a repeat, not another fold)")
        row = {"cv": "" if first_run.cv is None else str(first_run.cv), "data": first["data"], "method": first["method"],
               "variant": first["variant"], "noise": first["noise"], "seed": first["seed"],
               "folds": figures.get("folds"), "runs": len(members), "n_test": figures.get("n_test"), "source": source,
               **{key: figures.get(key) for key in CV_ACCURACIES}}
        if (row["folds"] or 0) < 2:
            row["accuracy_std"] = None  # no spread over one fold
        rows.append(row)
    return pd.DataFrame(rows, columns=CV_TABLE_COLUMNS), notes


def cross_validation_markdown(table: pd.DataFrame) -> str:
    """report.md's cross-validation table: the test accuracy as mean ± std over the folds."""
    def pct(value) -> str:
        return "-" if pd.isna(value) else f"{100 * float(value):.2f}"

    shown = table[["cv", "data", "method", "variant", "noise", "seed", "folds"]].assign(
        **{"test accuracy (mean ± std)": [pct(m) if pd.isna(s) else f"{pct(m)} ± {pct(s)}"
                                          for m, s in zip(table["accuracy_mean"], table["accuracy_std"])],
           "min_acc": table["accuracy_min"], "max_acc": table["accuracy_max"], "pooled_acc": table["accuracy_pooled"],
           "n_test": table["n_test"], "source": table["source"]})
    return _markdown(shown, percent=("noise",))


def _markdown(frame: pd.DataFrame, percent: Sequence[str] = ()) -> str:
    if frame.empty:
        return "(none)\n"
    def cell(column: str, value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if column in INTEGER_COLUMNS or column in CV_INTEGER_COLUMNS:
            return str(int(value))
        if column in percent or column.startswith("noise ") or column.endswith("_acc") or "confident" in column:
            return f"{100 * float(value):.2f}"
        return str(value)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in frame.columns) + " |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- predictions


def predict_run(run: Run, data: str | Path, split: Optional[str], device: str = "auto", batch: int = 256,
                amp: str = "auto") -> tuple[dict, MappedPredictions]:
    """best.pt (else last.pt) of a run on a prepared split (None: the one `poi evaluate` picks for
    the run, choose_split): `poi evaluate`'s result and the predictions behind it."""
    from poi_cli.study.evaluate import EvaluateError, evaluation_of, predict_mapped

    try:
        mapped = predict_mapped(run.path, data, split, device, batch, amp=amp)
    except EvaluateError as error:  # the other errors name their file already
        raise ReportError(f"{run.path}: {error}") from None
    return evaluation_of(mapped), mapped


def strata_of(evaluation: dict) -> tuple[dict[str, Optional[list[dict]]], Optional[str]]:
    """Table IV strata of an evaluation by score, and a note for an old metrics.json.

    Before calibrated confidence, `confidence_strata` was ranked by the UEM w and there was
    no `consistency_strata`: such a file's strata are consistency strata.
    """
    if "consistency_strata" in evaluation:
        return {score: evaluation.get(f"{score}_strata") for score in SCORES}, None
    if evaluation.get("confidence_strata"):
        note = "eval/metrics.json predates calibrated confidence: its confidence_strata (of w) shown as consistency"
        return {"confidence": None, "consistency": evaluation["confidence_strata"]}, note
    return {score: None for score in SCORES}, None


def strata_rows(run_name: str, strata: dict[str, Optional[list[dict]]]) -> list[dict]:
    """Rows of strata.csv for one run: per score and fraction, the accuracy of the most and least confident images."""
    rows = []
    for score in SCORES:
        for s in strata.get(score) or []:
            rows.append({"run": run_name, "score": score, "fraction": s["fraction"], "n": s["n"],
                         **{name: s[name] for name in STRATA_ACCURACIES}})
    return rows


def strata_side_by_side(strata: pd.DataFrame) -> pd.DataFrame:
    """strata.csv with the two scores side by side (report.md's Table IV): one row per run and fraction."""
    if strata.empty:
        return pd.DataFrame()
    wide = strata.pivot_table(index=["run", "fraction", "n"], columns="score", sort=False,
                              values=list(STRATA_ACCURACIES), aggfunc="first")
    columns = [(kind, score) for score in SCORES for kind in STRATA_ACCURACIES
               if (kind, score) in wide.columns]
    wide = wide[columns]
    wide.columns = [f"{kind.split('_')[0]} confident ({score})" for kind, score in columns]
    return wide.reset_index()


def calibration_table(summary: pd.DataFrame) -> pd.DataFrame:
    """report.md's calibration table: runs with calibration figures, rounded to 4 decimals."""
    columns = list(CALIBRATION_COLUMNS)
    figures = summary[columns].astype(float).round(4)  # an all-None column is of object dtype
    known = figures.notna().any(axis=1)
    return pd.concat([summary[["run"]], figures], axis=1)[known]


# -------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    return save_figure(figure, path, dpi=110)


def plot_curves(run: Run, path: Path) -> Optional[Path]:
    """Loss terms and accuracies per epoch; markers so that missing epochs show as gaps."""
    r = run.results
    if not len(r):
        return None
    plt = _pyplot()
    epochs = r["epoch"].to_numpy()
    full = pd.Index(np.arange(1, int(epochs.max()) + 1), name="epoch")
    r = r.set_index("epoch").reindex(full)  # NaN rows for missing epochs break the lines there
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 3.8))
    for column in [c for c in r.columns if c.startswith("loss_")]:
        if r[column].notna().any():
            loss_axes.plot(r.index, r[column], marker=".", label=column[5:])
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.legend(fontsize=7)
    for column, label in (("train_acc", "train (noisy labels)"), ("train_acc_clean", "train vs clean labels"), ("val_acc", "validation")):
        if column in r.columns and r[column].notna().any():
            acc_axes.plot(r.index, 100 * r[column], marker=".", label=label)
    acc_axes.set_xlabel("epoch")
    acc_axes.set_ylabel("accuracy (%)")
    acc_axes.legend(fontsize=7)
    figure.suptitle(f"{run.name}: {method_name(run.config)}", fontsize=10)
    return _save(figure, path)


def plot_consistency(run_name: str, w: np.ndarray, correct: np.ndarray, path: Path) -> Path:
    """Histogram of the UEM consistency w, right and wrong predictions apart (Fig. 15)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    bins = np.linspace(0.25, 1.0, 31)
    axes.hist([w[correct], w[~correct]], bins=bins, stacked=True, label=["correct", "wrong"], color=["tab:green", "tab:red"])
    axes.set_xlabel("consistency w (UEM, Eq. 10): how much the four regions agree")
    axes.set_ylabel("images")
    axes.set_title(f"{run_name}: {len(w)} images, accuracy {correct.mean():.2%}", fontsize=9)
    axes.legend(fontsize=8)
    return _save(figure, path)


# -------------------------------------------------------------------------- report


def build_report(
    paths: Sequence[str | Path] = (),
    out_dir: str | Path = "runs/report/exp",
    data: Optional[str | Path] = None,
    split: Optional[str] = None,
    device: str = "auto",
    amp: str = "auto",
    batch: int = 256,
) -> Report:
    """Collect runs, write report.md, runs.csv, by_noise.csv, strata.csv (cross_validation.csv
    with fold runs) and the PNGs into out_dir. split: of `data`, any name `poi evaluate` takes
    (PreparedDataset.split_names: fold3 too); default: per run, the one `poi evaluate` picks
    (choose_split: a --fold K run's own held-out fold, else test, else valid/val)."""
    from poi_cli.study.evaluate import plot_confusion

    if data is not None:
        # A missing split is the user's mistake, not a per-run note: stop before any work.
        from poi_cli.data.store import PreparedDataset, StoreError

        dataset = PreparedDataset(data)  # StoreError when it is no prepared folder
        if split is not None:
            try:  # the split names `poi evaluate` takes: a fold's held-out images (fold3) too
                dataset.check_split(split)
            except StoreError as error:
                raise ReportError(f"--split {split}: {error}") from None
    run_paths, skipped = find_runs(paths)
    runs: list[Run] = []
    used: set[str] = set()
    for path in run_paths:
        cv = cv_folder_of(path)  # a fold run of a --fold all: named after its cross-validation too
        base = _safe_name(path.name if cv is None else f"{cv.name}_{path.name}")
        name, number = base, 2
        while name in used:
            name, number = f"{base}_{number}", number + 1
        try:
            runs.append(load_run(path, name))
            used.add(name)
        except ReportError as error:
            skipped.append(str(error))
    if not runs:
        raise ReportError("no run folders to report" + (f" ({'; '.join(skipped)})" if skipped else ""))
    out = Path(out_dir)
    if any(out.resolve() == run.path.resolve() for run in runs):
        raise ReportError(f"--out {out} is a run folder; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    strata: list[dict] = []
    sections: list[str] = []
    for run in runs:
        curves = plot_curves(run, out / f"curves_{run.name}.png")
        if curves:
            files.append(curves)
        if data is not None:
            trained = None if split is None else trained_on(run.config, dataset, split)
            if trained:  # its accuracy there would be of faces it learnt (a fold run on another fold)
                run.notes.append(f"not scored on --split {split}: {trained}")
                continue
            try:
                evaluation, mapped = predict_run(run, data, split, device, batch, amp)
            except (ReportError, ValueError, OSError) as error:  # CheckpointError, StoreError are ValueErrors
                run.notes.append(f"no predictions: {error}")
                continue
            run.evaluation = evaluation
            if mapped.choice.ids is not None:  # picked by evaluate's rule: the images that selected best.pt
                run.notes.append(f"scored on {mapped.choice.name}: {mapped.choice.reason}")
            if evaluation.get("n_left_out"):  # not the same faces as a run that knows every class
                run.notes.append(f"eval on {evaluation.get('n_images')} images: {evaluation.get('class_mapping')}")
            w = mapped.predictions.consistency
            if w is not None:
                files.append(plot_consistency(run.name, w, mapped.correct, out / f"consistency_{run.name}.png"))
            else:
                run.notes.append("baseline (no PIN): no consistency histogram, strata or AURC")
        if run.evaluation and "confusion_matrix" in run.evaluation:
            e = run.evaluation
            files.append(_confusion(plot_confusion, np.array(e["confusion_matrix"]), e["classes"], out / f"confusion_{run.name}.png",
                                    f"{run.name} on {e.get('split')}: accuracy {e.get('accuracy', float('nan')):.2%}"))
            by_score, note = strata_of(e)
            strata += strata_rows(run.name, by_score)
            if note:
                run.notes.append(note)
    configs = [run.config for run in runs]
    summary = pd.DataFrame([summarise(run, variant, label) for run, variant, label
                            in zip(runs, variant_names(configs), data_labels(configs))], columns=SUMMARY_COLUMNS)
    seeds = seeds_table(summary)
    by_noise = by_noise_table(seeds)
    strata_frame = pd.DataFrame(strata, columns=STRATA_COLUMNS)
    cross_validation, cv_notes = cross_validation_table(runs, summary)
    # counts stay whole numbers in the CSV where another run has none (56, not 56.0)
    whole = summary.astype({column: "Int64" for column in INTEGER_COLUMNS})
    tables = [("runs.csv", whole), ("by_noise.csv", by_noise), ("by_noise_seeds.csv", seeds), ("strata.csv", strata_frame)]
    if not cross_validation.empty:
        tables.append((CV_TABLE, cross_validation.astype({column: "Int64" for column in CV_INTEGER_COLUMNS})))
    else:  # an earlier report's, in this (its own) folder: of runs this report does not hold
        (out / CV_TABLE).unlink(missing_ok=True)
    for name, frame in tables:
        atomic_write_text(out / name, frame.to_csv(index=False))
        files.append(out / name)

    columns = ["run", "method", "variant", "noise", "epochs_done", "epochs_planned", "missing_epochs", "final_val_acc",
               "best_val_acc", "best_epoch", "eval_acc", "eval_split", "eval_n"]
    shown = summary[columns[:3] + ["fold"] + columns[3:] if summary["fold"].notna().any() else columns]
    sections.append(f"{REPORT_TITLE}\n\nAccuracies in %. final = last finished epoch, best = best validation epoch "
                    "(best.pt); eval = best.pt on eval_split (the `--data` split: `--split`, else the one `poi evaluate` "
                    "picks for the run, a `--fold K` run's own held-out fold; or the run's eval/metrics.json), "
                    "of eval_n images (fewer where the model does not know every class: see the notes).\n")
    sections.append("## Runs (Tables II, III, X)\n\n" + _markdown(shown, percent=("noise",)))
    sections.append("## Best validation accuracy by method and noise rate (Table II)\n\n" + _markdown(by_noise))
    if not seeds.empty and (seeds["runs"] > 1).any():
        sections.append("## Mean and range over runs sharing method and noise (seeds)\n\n"
                        + _markdown(seeds, percent=("noise",)) + repeated_seeds_note(seeds))
    if not cross_validation.empty:
        sections.append("## Cross-validation (test accuracy over folds)\n\nRuns trained with `--fold K` each train on "
                        "every fold but K: they are no seeds of one recipe, and the tables above leave them out. "
                        "One row per cross-validation (a `poi train --fold all` folder, or fold runs trained one by one "
                        "that share data, method, variant, noise and seed): each fold run's accuracy on its own held-out "
                        "fold (its test set, never trained or selected on), mean ± sample standard deviation, min and "
                        "max over the folds, and pooled over all their images; not their validation accuracies. "
                        f"source: the folder's {CV_JSON} when there is one, else the fold runs' own evaluations "
                        "(eval/metrics.json, or `--data`'s predictions).\n\n" + cross_validation_markdown(cross_validation))
    calibration = calibration_table(summary)
    if not calibration.empty:
        sections.append("## Calibration (ECE, AURC; lower is better)\n\nMeasured on one seeded half of the evaluated images, "
                        "T_cal fitted on the other half. confidence = the largest of the run's reported probabilities "
                        "after temperature scaling (its prediction recipe's: the TRN's softmax unless `poi calibrate` "
                        "chose the PIN's fusion or the mirror), max_softmax = before it, consistency = the UEM's w; ece_floor_confidence = the ECE a "
                        "perfectly calibrated confidence would measure on as many images (ECE is biased upward "
                        "on a finite sample).\n\n" + _markdown(calibration))
    if not strata_frame.empty:
        sections.append("## Accuracy by confidence stratum (Table IV)\n\nImages ranked by the calibrated confidence and "
                        "by the consistency w; accuracy of the most and least confident fraction.\n\n"
                        + _markdown(strata_side_by_side(strata_frame), percent=("fraction",)))
    pictures = [f"![{p.stem}]({p.name})" for p in files if p.suffix == ".png"]
    if pictures:
        sections.append("## Figures\n\n" + "\n".join(pictures) + "\n")
    notes = ([f"* {run.name}: {note}" for run in runs for note in run.notes] + [f"* {note}" for note in cv_notes]
             + [f"* skipped {s}" for s in skipped])
    if notes:
        sections.append("## Notes\n\n" + "\n".join(notes) + "\n")
    atomic_write_text(out / "report.md", "\n".join(sections))
    files.insert(0, out / "report.md")
    return Report(out_dir=out, runs=runs, skipped=skipped, summary=summary, by_noise=by_noise, strata=strata_frame, files=files,
                  cross_validation=cross_validation)


def _confusion(plot, confusion: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    plot(confusion, list(classes), path, title=title)
    return path
