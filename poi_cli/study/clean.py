"""`poi clean`: an audit made into a label file that `poi train --labels` takes.

    audit (poi audit: suspicion per image, the PIN's suggested label)
      -> select the most suspect images: suspicion >= --threshold, or the top --fraction,
         or (--auto, relabel only) the top fraction chosen on the validation split:
           rho = the noise rate the audit implies (estimate_noise_rate),
           the validation labels flipped at rho, scored by the same model, and the
           fraction that leaves the fewest wrong labels there (noise_after_selection)
      -> relabel them to the suggested label (--relabel), or leave them out (--drop)
      -> labels.csv (id, label, label_name[, clean_label], given_label, action, suspicion)
         and labels.json (what changed, and, when the clean labels are known, how many of
         the changed labels were wrong before and right after)

The prepared folder is only read. A dropped image gets label -1 in the file: training
leaves it out (store.apply_label_file), so the file still names every image of the split
and a mismatched file is still caught.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from poi_cli.core.atomic import atomic_write_text, interrupted_command, write_new_or_same
from poi_cli.core.errors import PoiError
from poi_cli.core.layout import HELD_OUT_COLUMN
from poi_cli.data.noise import flip_labels, split_noise_targets
from poi_cli.data.store import DROPPED_LABEL, PreparedDataset, SplitData, label_file_outputs, label_names
from poi_cli.model.checkpoint import (BEST, CONFIG_FILE, HELDOUT_FILE, LAST, load_checkpoint, read_heldout_ids,
                                      resolve_checkpoint)

AUTO_SEED = 0  # seed of the simulated flips on the validation split
AUTO_MIN_VALID = 100  # --auto's estimate from fewer validation images is said to be rough (valid_caveat)
MAX_NOISE_RATE = 0.95

# An in-sample suggestion that agrees with the training labels this much more often than it is
# right on valid comes from a model that fitted those labels, wrong ones included: its audit
# cannot see their noise, and rho comes out too low (measured on the 3,000-image study: a run
# that memorised 30 % noise agreed with 99.8 % of its labels and was right on 41 % of valid;
# POI at 0 % noise without memorising, 74 % and 69 %; docs/results/ferplus.md).
FITTED_MARGIN = 0.10
FITTED_ADVICE = ("the model has fitted its training labels, wrong ones included, so an audit of its own training "
                 "set cannot find their noise: audit out of fold (`poi audit RUN DATA --cross-fit 5 --out AUDIT`, "
                 "then `poi clean AUDIT/audit.csv DATA --auto`; with `poi train --rounds 2`: --clean-cross-fit 5)")

CLEAN_MODES = ("relabel", "drop")
AUDIT_REQUIRED = ("id", "given_label", "suggested_label", "suspicion")


class CleanError(PoiError):
    """A cleaning that cannot run; one-line message."""


@dataclass
class CleanResult:
    labels: pd.DataFrame  # the label file, one row per audited image, in the audit's order
    summary: dict


def read_audit_csv(path: str | Path) -> pd.DataFrame:
    """An audit.csv of `poi audit`, checked for the columns cleaning needs (and that the audit
    that wrote it finished: one stopped between its files may pair it with an older summary)."""
    from poi_cli.study.audit import AUDIT_OUTPUTS

    path = Path(path)
    if interrupted_command(path.parent) == AUDIT_OUTPUTS.command:
        raise CleanError(f"the audit in {path.parent} was stopped before it finished; run the same poi audit again")
    try:
        table = pd.read_csv(path, dtype={"id": str})
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise CleanError(f"cannot read {path} as an audit CSV: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    missing = [c for c in AUDIT_REQUIRED if c not in table.columns]
    if missing:
        raise CleanError(f"{path} is not an audit CSV of `poi audit`: it lacks {', '.join(missing)}")
    if table.empty:
        raise CleanError(f"{path} holds no audited images")
    if table["suspicion"].isna().any() or table["id"].duplicated().any():
        raise CleanError(f"{path}: every row needs a suspicion and a distinct id")
    return table


def check_selection(threshold: Optional[float], fraction: Optional[float]) -> None:
    """--threshold within the suspicion scores' range (w * (1 - p*_y) lies in [0, 1]; 0 would select
    every image, as `poi train --clean-threshold`), --fraction in [0, 1]; nan fails both."""
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise CleanError(f"--threshold must lie in (0, 1] (suspicion scores lie in [0, 1]), got {threshold}")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise CleanError(f"--fraction must lie in [0, 1], got {fraction}")


def held_out_rows(audit_table: pd.DataFrame) -> np.ndarray:
    """(rows,) bool: the audit's images the run held out for validation (HELD_OUT_COLUMN; an
    older audit without the column, or an empty cell, holds none)."""
    if HELD_OUT_COLUMN not in audit_table:
        return np.zeros(len(audit_table), dtype=bool)
    return audit_table[HELD_OUT_COLUMN].fillna(False).to_numpy(bool)


def select_suspects(suspicion: np.ndarray, threshold: Optional[float], fraction: Optional[float]) -> np.ndarray:
    """Boolean mask: suspicion >= threshold, or the ceil(fraction * n) most suspect (ties by order)."""
    if (threshold is None) == (fraction is None):
        raise CleanError("give exactly one of --threshold and --fraction")
    check_selection(threshold, fraction)
    if threshold is not None:
        return suspicion >= threshold
    chosen = np.zeros(len(suspicion), dtype=bool)
    chosen[np.argsort(-suspicion, kind="stable")[: math.ceil(fraction * len(suspicion))]] = True
    return chosen


def estimate_noise_rate(agreement: float, accuracy: float, num_classes: float) -> float:
    """The share of wrong labels implied by how often the suggestion agrees with them.

    Under symmetric noise at rate rho, a suggestion that is right with probability a (its
    accuracy on clean validation labels) agrees with a given label with probability
    g = a (1 - rho) + rho (1 - a) / (C - 1); solved for rho, clipped to [0, 0.95]."""
    chance = (1.0 - accuracy) / (num_classes - 1)
    if accuracy <= chance:  # a suggestion no better than chance tells nothing about the labels
        return 0.0
    return float(np.clip((accuracy - agreement) / (accuracy - chance), 0.0, MAX_NOISE_RATE))


def fitted_training_labels(agreement: float, accuracy: float) -> bool:
    """Whether the model of an in-sample audit fitted its training labels (FITTED_MARGIN)."""
    return agreement - accuracy > FITTED_MARGIN


def noise_after_selection(suspicion: np.ndarray, suggested: np.ndarray, given: np.ndarray,
                          clean: np.ndarray) -> np.ndarray:
    """Share of wrong labels after relabelling the k most suspect images to their
    suggestion, for k = 0..n (entry k; ties by order, as select_suspects)."""
    order = np.argsort(-suspicion, kind="stable")
    wrong = (given != clean)[order].astype(np.int64)
    changes = (suggested != given)[order]
    # relabelling image i turns its "wrong" into "suggestion wrong"; an equal suggestion changes nothing
    delta = np.where(changes, (suggested != clean)[order].astype(np.int64) - wrong, 0)
    return (wrong.sum() + np.concatenate([[0], np.cumsum(delta)])) / max(len(order), 1)


def choose_fraction(train_given: np.ndarray, train_suggested: np.ndarray, valid_objective: np.ndarray,
                    valid_w: np.ndarray, valid_clean: np.ndarray, seed: int = AUTO_SEED,
                    classes: Optional[Sequence[int] | np.ndarray] = None) -> dict:
    """The fraction of the training images to relabel, chosen on the (clean) validation split.

    The noise rate rho of the training labels is estimated from the audit (estimate_noise_rate);
    the validation labels are flipped at rho (seeded), scored by the same model as the audit
    scores the training images (suspicion = w (1 - p*_y)), and the fraction of most suspect
    images whose relabelling leaves the fewest wrong labels there is returned, with the figures.
    classes: the classes the dataset labels (noise_targets; default all): symmetric noise is
    among them, so they are the C of the estimate and the classes the flips go to; on a combined
    folder each validation face's own (split_noise_targets' mask: C is their mean count)."""
    from poi_cli.study.audit import suspicion_score

    num_classes = valid_objective.shape[1]
    targets = (list(range(num_classes)) if classes is None else np.asarray(classes, dtype=bool)
               if np.ndim(classes) == 2 else list(classes))
    suggested = valid_objective.argmax(1)
    accuracy = float((suggested == valid_clean).mean())
    agreement = float((train_suggested == train_given).mean())
    count = float(targets.sum(1).mean()) if isinstance(targets, np.ndarray) else len(targets)
    rho = estimate_noise_rate(agreement, accuracy, count)
    noisy = flip_labels(valid_clean, num_classes, rho, seed, classes=targets)
    curve = noise_after_selection(suspicion_score(valid_objective, valid_w, noisy), suggested, noisy, valid_clean)
    best = int(np.argmin(curve))  # the first minimum: the fewest changes among equals
    return {
        "fraction": best / len(valid_clean), "estimated_noise_rate": rho, "suggestion_accuracy_valid": accuracy,
        "suggestion_agreement_train": agreement, "valid_images": int(len(valid_clean)),
        "valid_noise_before": float(curve[0]), "valid_noise_after": float(curve[best]),
    }


def validation_data(model_path: str | Path, dataset: PreparedDataset) -> tuple[SplitData, str]:
    """The images --auto chooses on: the store's validation split, else the run's held-out ones."""
    if (name := dataset.validation_split()) is not None:
        return dataset.split(name), name
    run = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent  # a checkpoint: its run folder
    if (run / CONFIG_FILE).is_file() and (run / HELDOUT_FILE).is_file():
        ids = read_heldout_ids(run)
        train_split = json.loads((run / CONFIG_FILE).read_text()).get("train_split", "train")
        return dataset.split(train_split, ids=ids), f"{len(ids)} images of {train_split} the run held out"
    raise CleanError(f"--auto chooses on validation labels: {dataset.root} has no valid/val split and "
                     f"{model_path} no held-out images ({HELDOUT_FILE})")


def validation_scores(models: Sequence[str | Path], dataset: PreparedDataset, data: SplitData,
                      device: str = "auto", amp: str = "auto", batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """p* (n, C) and w (n,) of the validation images, each scored by one of `models`: one model,
    or the K fold models of a cross-fitted audit, model k scoring a seeded 1/K of the images as
    it scored 1/K of the training images, so that the suggestion's valid accuracy is that of the
    models whose suggestions the audit holds (estimate_noise_rate compares the two)."""
    n = len(data.labels)
    part = np.random.default_rng(AUTO_SEED).permutation(n) % len(models)
    objective, w = np.zeros((n, len(dataset.classes))), np.zeros(n)
    for k, model in enumerate(models):
        rows = part == k
        part_data = SplitData(data.store_rows[rows], data.labels[rows], data.ids[rows])
        objective[rows], w[rows] = objective_of(model, dataset, part_data, device, amp, batch)
    return objective, w


def objective_of(model_path: str | Path, dataset: PreparedDataset, data: SplitData,
                 device: str, amp: str = "auto", batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One model's p* at T = 1 and w on `data`."""
    from poi_cli.study.audit import objective_inference, predict_own_classes, require_objective_inference

    checkpoint = load_checkpoint(resolve_checkpoint(model_path))
    require_objective_inference(checkpoint, model_path)
    predictions = predict_own_classes(checkpoint, dataset, data, device, batch, amp)
    return objective_inference(predictions, model_path), predictions.consistency  # the path names the model in an error


def auto_fraction(model_path: str | Path, prepared_dir: str | Path, audit_table: pd.DataFrame,
                  device: str = "auto", fold_models: Optional[Sequence[str | Path]] = None, amp: str = "auto",
                  cleaned_split: Optional[str] = None, batch: int = 256) -> dict:
    """choose_fraction for an audit of `model_path` (the model the audit used, or the run it is
    of); a cross-fitted audit's suggestions come from `fold_models`, which then score valid.
    cleaned_split: the split whose labels are cleaned, which cannot be the one the noise rate is
    estimated on (the estimate would be circular: 0 by construction)."""
    dataset = PreparedDataset(prepared_dir)
    data, name = validation_data(model_path, dataset)
    audit_table = audit_table[~held_out_rows(audit_table)]  # the training images: the held-out ones are the validation
    if cleaned_split is not None and name == cleaned_split:
        raise CleanError(f"--auto estimates the noise rate on {name}, the split being cleaned: that is circular; "
                         "clean the training split, or choose --threshold or --fraction yourself")
    models = list(fold_models or [model_path])
    objective, w = validation_scores(models, dataset, data, device, amp, batch)
    chosen = choose_fraction(audit_table["given_label"].to_numpy(np.int64), audit_table["suggested_label"].to_numpy(np.int64),
                             objective, w, data.labels, classes=split_noise_targets(dataset, data.store_rows))
    # out of fold (fold models) the suggestion never saw the label it is compared with
    fitted = len(models) == 1 and fitted_training_labels(chosen["suggestion_agreement_train"],
                                                          chosen["suggestion_accuracy_valid"])
    return {**chosen, "valid_split": name, "valid_scored_by": len(models), "fitted_training_labels": fitted,
            "valid_caveat": valid_caveat(data.labels, audit_table["given_label"].to_numpy(np.int64), dataset, name)}


def valid_caveat(valid_labels: np.ndarray, train_labels: np.ndarray, dataset: PreparedDataset, name: str) -> Optional[str]:
    """Why --auto's estimate from the validation split should not be trusted, or None: too few
    images (one image's answer moves the rate by 1/n), or classes the training labels use that
    validation lacks (a model answering one class to everything looked 100 % right on a one-class
    split, and --auto relabelled half of training to that class)."""
    missing = sorted(set(train_labels.tolist()) - set(valid_labels.tolist()))
    if missing:
        names = ", ".join(dataset.classes[c] for c in missing[:3]) + (", ..." if len(missing) > 3 else "")
        return (f"{name} has no image of {len(missing)} class{'es' * (len(missing) > 1)} the training labels use "
                f"({names}): the estimate says nothing about them; check the result, or choose --fraction yourself")
    if len(valid_labels) < AUTO_MIN_VALID:
        return (f"{name} has {len(valid_labels)} images, fewer than {AUTO_MIN_VALID}: the estimated rate is rough; "
                "check the result, or choose --fraction yourself")
    return None


def clean_labels(audit_table: pd.DataFrame, classes: list[str], mode: str = "relabel",
                 threshold: Optional[float] = None, fraction: Optional[float] = None) -> CleanResult:
    """The label file that relabels (or drops) the selected suspects of an audit."""
    if mode not in CLEAN_MODES:
        raise CleanError(f"mode must be one of {', '.join(CLEAN_MODES)}, got {mode!r}")
    given = audit_table["given_label"].to_numpy(np.int64)
    suggested = audit_table["suggested_label"].to_numpy(np.int64)
    suspicion = audit_table["suspicion"].to_numpy(np.float64)
    if given.min() < 0 or max(given.max(), suggested.max()) >= len(classes):
        raise CleanError(f"the audit's labels lie outside 0..{len(classes) - 1} of the prepared data's classes")
    # the images the run held out for validation keep their labels (core.layout.HELD_OUT_COLUMN):
    # a later round validates on them as round 1 did, not on labels its teacher suggested; a
    # --fraction is of the images the run trained on
    held_out = held_out_rows(audit_table)
    selected = np.zeros(len(given), dtype=bool)
    selected[~held_out] = select_suspects(suspicion[~held_out], threshold, fraction)
    if mode == "relabel":
        changed = selected & (suggested != given)  # a suggestion equal to the label changes nothing
        new = np.where(changed, suggested, given)
    else:
        changed = selected
        new = np.where(changed, DROPPED_LABEL, given)
    labels = pd.DataFrame({
        "id": audit_table["id"].to_numpy(str), "label": new,
        "label_name": label_names(new, classes),
    })
    clean = audit_table["clean_label"].to_numpy(np.int64) if "clean_label" in audit_table else None
    if clean is not None:
        labels["clean_label"] = clean
    labels["given_label"] = given
    labels["action"] = np.where(changed, mode, "")
    labels["suspicion"] = suspicion
    summary = _summary(given, new, clean, selected, changed, mode, threshold, fraction)
    if held_out.any():
        summary["n_held_out_kept"] = int(held_out.sum())
    return CleanResult(labels, summary)


def _summary(given: np.ndarray, new: np.ndarray, clean: Optional[np.ndarray], selected: np.ndarray,
             changed: np.ndarray, mode: str, threshold: Optional[float], fraction: Optional[float]) -> dict:
    summary: dict = {
        "mode": mode, "threshold": threshold, "fraction": fraction, "n_images": int(len(given)),
        "n_selected": int(selected.sum()), "n_changed": int(changed.sum()),
    }
    if clean is None:
        summary["clean_labels"] = "unknown: no clean_label in the audit (a run trained with --noise or a poi noise label file has them)"
        return summary
    wrong = given != clean
    kept = new != DROPPED_LABEL
    summary.update({
        "changed_wrong_before": int((changed & wrong).sum()),
        "noise_rate_before": float(wrong.mean()),
        "noise_rate_after": float((new[kept] != clean[kept]).mean()) if kept.any() else None,
    })
    if mode == "relabel":
        summary["changed_right_after"] = int((changed & (new == clean)).sum())
        summary["changed_right_before"] = int((changed & ~wrong).sum())  # clean labels made wrong
    else:
        summary["dropped_clean"] = int((changed & ~wrong).sum())
        summary["n_kept"] = int(kept.sum())
    return summary


def clean(audit_or_run: str | Path, prepared_dir: str | Path, mode: str = "relabel",
          threshold: Optional[float] = None, fraction: Optional[float] = None,
          labels_file: Optional[str | Path] = None, split: Optional[str] = None, device: str = "auto",
          auto: bool = False, amp: str = "auto", batch: int = 256) -> CleanResult:
    """Clean the labels of `split` from an audit.csv, or from a run (audited here first);
    `auto`: relabel the fraction choose_fraction picks on the validation split. split None:
    the split the audit covers (its summary's), else train."""
    # every choice checked before a run is audited (the audit of a whole split comes first)
    check_selection(threshold, fraction)
    if auto and (mode != "relabel" or threshold is not None or fraction is not None):
        raise CleanError("--auto chooses the fraction to relabel itself: without --drop, --threshold or --fraction")
    if not auto and (threshold is None) == (fraction is None):
        raise CleanError("give exactly one of --threshold, --fraction and --auto")
    dataset = PreparedDataset(prepared_dir)
    source = audit_source(audit_or_run)
    model_path: str | Path = source
    fold_models = None
    is_audit = source.is_file() and source.suffix.lower() == ".csv"
    split = split or (audited_split(source) if is_audit else None) or "train"
    if is_audit:
        table = read_audit_csv(source)
        if auto:
            model_path, fold_models = _audited_models(source)
    else:
        from poi_cli.study.audit import audit

        table = audit(source, prepared_dir, labels_file=labels_file, split=split, device=device, batch=batch, amp=amp).table
    result = clean_audit(table, dataset, split, model_path, str(source), mode, threshold, fraction, auto, device,
                         fold_models, amp, batch)
    if result.summary.get("n_held_out_kept") and (run := _audited_run(source, is_audit)) is not None:
        result.summary["held_out_run"] = str(run)  # whose hold-out they are: the next round's --heldout-from
    return result


def _audited_run(source: Path, is_audit: bool) -> Optional[Path]:
    """The run folder with the held-out images an audit (an audit.csv, by its summary) or a run
    folder or checkpoint is of; None where it cannot be found (an audit.csv without its summary)."""
    if is_audit:
        try:
            source = Path(audited_model(json.loads(audit_summary_path(source).read_text())))
        except (OSError, ValueError, KeyError):
            return None
    run = (source if source.is_dir() else source.parent).resolve()
    return run if (run / HELDOUT_FILE).is_file() else None


def clean_audit(table: pd.DataFrame, dataset: PreparedDataset, split: str, model_path: str | Path, audit_name: str,
                mode: str = "relabel", threshold: Optional[float] = None, fraction: Optional[float] = None,
                auto: bool = False, device: str = "auto", fold_models: Optional[Sequence[str | Path]] = None,
                amp: str = "auto", batch: int = 256) -> CleanResult:
    """clean_labels for an audit table of `split`, the fraction chosen on valid with `model_path`'s
    model (a cross-fitted audit: its `fold_models`) when `auto`; the label file covers the whole
    split (cover_split)."""
    split_data = dataset.split(split)
    ids = set(split_data.ids)
    unknown = [i for i in table["id"] if i not in ids]
    if unknown:
        raise CleanError(f"{len(unknown)} audited images are not in split {split!r} of {dataset.root} (first: {unknown[0]})")
    chosen = auto_fraction(model_path, dataset.root, table, device, fold_models, amp, split, batch) if auto else None
    result = clean_labels(table, list(dataset.classes), mode, threshold, chosen["fraction"] if chosen else fraction)
    result.summary.update({"audit": audit_name, "data": str(dataset.root), "split": split})
    if chosen:
        result.summary["auto"] = chosen
    return cover_split(result, split_data)


def cover_split(result: CleanResult, data: SplitData) -> CleanResult:
    """Rows for the split's images the audit did not score (a run whose label file left them
    out, e.g. a `poi noise --subset` file): label -1, so that the file names every image of
    the split, as `poi train --labels` requires, and those images stay out of training."""
    missing = ~np.isin(data.ids, result.labels["id"].to_numpy(str))
    if not missing.any():
        return result
    extra = pd.DataFrame({"id": data.ids[missing], "label": DROPPED_LABEL, "label_name": ""})
    if "clean_label" in result.labels:
        extra["clean_label"] = data.labels[missing]  # the manifest's, as for a file without clean_label
    extra["given_label"] = DROPPED_LABEL
    extra["action"] = "not audited"
    extra["suspicion"] = np.nan
    result.labels = pd.concat([result.labels, extra], ignore_index=True)
    result.summary["n_not_audited"] = int(missing.sum())
    return result


def audited_model(audit_summary: dict) -> str:
    """The run (a cross-fitted audit: "model") or checkpoint an audit_summary.json names."""
    return audit_summary.get("model") or audit_summary["checkpoint"]


def audit_summary_path(audit_csv: str | Path) -> Path:
    """The audit_summary.json that `poi audit` writes beside its audit.csv."""
    from poi_cli.study.audit import AUDIT_SUMMARY_FILE

    return Path(audit_csv).with_name(AUDIT_SUMMARY_FILE)


def audit_source(audit_or_run: str | Path) -> Path:
    """`poi clean`'s first argument as it is read: the folder `poi audit --out` wrote (an
    audit.csv, no checkpoint) is its audit.csv; a .csv that is not there is a one-line error
    (it was taken for a run: "no such run folder or checkpoint")."""
    from poi_cli.study.audit import AUDIT_CSV_FILE

    source = Path(audit_or_run)
    if source.is_dir() and (source / AUDIT_CSV_FILE).is_file() and not any((source / n).exists() for n in (BEST, LAST)):
        return source / AUDIT_CSV_FILE
    if source.suffix.lower() == ".csv" and not source.exists():
        raise CleanError(f"no such audit CSV: {source} (`poi audit` writes OUT/{AUDIT_CSV_FILE})")
    return source


def clean_inputs(audit_or_run: str | Path) -> list[Path]:
    """What `poi clean` reads through its first argument, so that --out is never one of them: an
    audit CSV and the summary beside it, or a run / checkpoint; and the run folder behind either
    (the audit's model) with the label file that run trained on, which the audit read."""
    source = audit_source(audit_or_run)
    inputs, model = [source], source
    if source.suffix.lower() == ".csv":
        inputs.append(audit_summary_path(source))
        try:
            model = Path(audited_model(json.loads(audit_summary_path(source).read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            return inputs  # no summary: only --auto needs it, and says so
    run = model if model.is_dir() else model.parent
    try:
        trained_on = json.loads((run / CONFIG_FILE).read_text()).get("labels")
    except (OSError, ValueError, AttributeError):
        return inputs
    return [*inputs, run, *([Path(trained_on)] if trained_on else [])]


def audited_split(audit_csv: Path) -> Optional[str]:
    """The split an audit.csv covers (its audit_summary.json's "split"), or None."""
    try:
        split = json.loads(audit_summary_path(audit_csv).read_text()).get("split")
    except (OSError, ValueError, AttributeError):
        return None
    return split if isinstance(split, str) else None


def _audited_models(audit_csv: Path) -> tuple[str, Optional[list[str]]]:
    """The model an audit.csv was made with and, for a cross-fitted audit, its fold models
    (its audit_summary.json: "model" the run, "fold_models"; else "checkpoint"), for --auto."""
    summary = audit_summary_path(audit_csv)
    try:
        content = json.loads(summary.read_text())
        return audited_model(content), content.get("fold_models")
    except (OSError, ValueError, KeyError):
        raise CleanError(f"--auto needs the model the audit used: {summary} is missing or names no checkpoint; "
                         "give the run folder instead of the audit CSV") from None


def write_clean(result: CleanResult, out: str | Path, replace: bool = False) -> list[Path]:
    """The label file (CSV) and its summary beside it (same name, .json); never over an
    existing file with other contents (write_new_or_same) unless `replace` (`--rounds`
    rewriting its own clean/ folder)."""
    out, summary = label_file_outputs(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    texts = {out: result.labels.to_csv(index=False, float_format="%.6g"),
             summary: json.dumps(result.summary, indent=2) + "\n"}
    if replace:
        for path, text in texts.items():
            atomic_write_text(path, text)
    else:
        write_new_or_same(texts, "--out")
    return [out, summary]
