"""`poi audit`: rank labelled images by how strongly the PIN's objective inference
disagrees with their annotation (the paper's Fig. 7, made into a curation tool).

For every image of a split: the given label y, the TRN prediction, the PIN's objective
inference p* = sum_n w_n softmax(t_n) (the OIM-gated mixture of Eq. 7, taken at T = 1),
the UEM consistency w (Eq. 10) and

    suspicion = w * (1 - p*_y)

the probability mass the objective inference puts away from the given label, trusted in
proportion to how much the four facial regions agree. The suggested label is argmax p*.
Why T = 1: Eq. 7's p~* is softened by T = 3 for distillation, so its largest class rarely
passes 0.3 and every image would look suspect at any useful threshold; at T = 1 the
mixture is on the scale of the TRN's own probabilities (same regions, same gate).
When the clean labels are known (labels from `poi noise`, or a run trained with
`--noise`), it also measures how well each score finds the flipped labels, against two
references: 1 - q_y of the same model's TRN, and (with `--baseline RUN`) the baseline
model's own cross-entropy on each image (the small-loss trick).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
from poi_cli.core.errors import PoiError
from poi_cli.core.atomic import FolderOutputs, atomic_write_text, json_with_keys, save_image, write_json
from poi_cli.core.layout import CONFIG_FILE, HELD_OUT_COLUMN
from poi_cli.core.metrics import roc_auc
from poi_cli.data.folds import fold_split_name, parse_fold_split
from poi_cli.data.noise import flip_split_labels
from poi_cli.data.store import PreparedDataset, SplitData
from poi_cli.model.checkpoint import (CheckpointInfo, held_out_fold, held_out_mask, load_checkpoint, resolve_checkpoint,
                                     trained_on_folder)
from poi_cli.model.predictions import SplitPredictions, predict_checkpoint_split

SUSPICION_THRESHOLDS = (0.5, 0.7, 0.9)
AUDIT_CSV_FILE = "audit.csv"
AUDIT_SUMMARY_FILE = "audit_summary.json"  # beside audit.csv; `poi clean --auto` and `poi report` read it
# what `poi audit --out` writes (write_audit); a folder is its own where audit_summary.json is an audit's
AUDIT_OUTPUTS = FolderOutputs("poi audit", (AUDIT_CSV_FILE, AUDIT_SUMMARY_FILE, "contact_sheet.png"), AUDIT_SUMMARY_FILE,
                              lambda path: json_with_keys(path, "checkpoint", "split", "n_images", "suspects"))
TOP_FRACTIONS = (0.1, 0.2, 0.3)
AUDIT_COLUMNS = (
    "rank", "id", "source", "given_label", "given_name", "suggested_label", "suggested_name",
    "pin_prob_given", "trn_label", "trn_name", "trn_prob_given", "consistency", "suspicion",
)


class AuditError(PoiError):
    """An audit that cannot run; the message says why in one line."""


NO_OBJECTIVE_INFERENCE = "{path} has no objective inference (a baseline or no-OIM model): audit needs a full POI model"


@dataclass
class AuditResult:
    table: pd.DataFrame  # one row per image, most suspect first (AUDIT_COLUMNS, + clean_label, flipped)
    summary: dict  # counts, per-class suspects, detection metrics when clean labels are known
    faces: np.ndarray = field(repr=False, default=None)  # the store's faces (memory-mapped)
    store_rows: np.ndarray = field(repr=False, default=None)  # table row -> faces row


def suspicion_score(objective_probs: np.ndarray, w: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """w * (1 - p*_y): high when the confident objective inference rejects the given label."""
    return w * (1.0 - objective_probs[np.arange(len(labels)), labels])


def detection_metrics(scores: np.ndarray, flipped: np.ndarray) -> dict:
    """How well `scores` (high = suspect) find the flipped labels."""
    order = np.argsort(-scores, kind="stable")
    ranked = flipped[order].astype(bool)
    n_flipped = int(flipped.sum())
    metrics = {
        "roc_auc": roc_auc(scores, flipped),
        "precision_at_noise_count": float(ranked[:n_flipped].mean()) if n_flipped else None,
    }
    for fraction in TOP_FRACTIONS:
        k = max(1, int(round(fraction * len(ranked))))
        metrics[f"recall_at_top_{round(fraction * 100)}pct"] = float(ranked[:k].sum() / n_flipped) if n_flipped else None
    return metrics


def _trained_on(config: dict, dataset: PreparedDataset, split: str) -> bool:
    """Whether the run of `config` (a checkpoint's TrainConfig dict) trained on this split of this prepared folder."""
    return trained_on_folder(config, dataset.root) and split == config.get("train_split", "train")


def _audited_labels(data: SplitData, config: dict, dataset: PreparedDataset, trained_on: bool,
                    labels_file: Optional[str | Path]) -> tuple[SplitData, str]:
    """The labels to audit: a label file, else the (noisy) labels the run itself trained on."""
    if labels_file is not None:
        return data, f"labels from {labels_file}"
    if trained_on and config.get("labels"):
        return dataset.split(config.get("train_split", "train"), config["labels"]), f"the labels the run trained on ({config['labels']})"
    if trained_on and config.get("noise"):
        seed = config.get("noise_seed", 0)
        noisy = flip_split_labels(dataset, data.store_rows, data.labels, config["noise"], seed)
        return SplitData(data.store_rows, noisy, data.ids, data.labels), f"the labels the run trained on (--noise {config['noise']} --noise-seed {seed})"
    return data, "the prepared manifest's labels"


def predict_own_classes(checkpoint: Mapping[str, Any], dataset: PreparedDataset, data: SplitData, device: str = "auto",
                        batch: int = 256, amp: str = "auto", name: str = "the model") -> SplitPredictions:
    """A loaded checkpoint's predictions on `data`, a split of `dataset`, whose classes must be
    the model's own (AuditError otherwise, naming the model as `name`: a suspicion compares the
    label with the model's p*)."""
    classes = CheckpointInfo.of(checkpoint).classes
    if list(classes) != dataset.classes:
        raise AuditError(
            f"{name}'s classes ({', '.join(classes)}) differ from the data's ({', '.join(dataset.classes)}); "
            "audit needs a model trained on the same label space"
        )
    return predict_checkpoint_split(checkpoint, dataset.faces, data.store_rows, data.labels, device, batch, amp)


def audit(
    model_path: str | Path,
    prepared_dir: str | Path,
    labels_file: Optional[str | Path] = None,
    split: str = "train",
    baseline: Optional[str | Path] = None,
    device: str = "auto",
    batch: int = 256,
    amp: str = "auto",
) -> AuditResult:
    """Score every image of `split` for label suspicion with a POI model (see module doc)."""
    dataset = PreparedDataset(prepared_dir)
    checkpoint_path = resolve_checkpoint(model_path)
    checkpoint = load_checkpoint(checkpoint_path)
    require_objective_inference(checkpoint, checkpoint_path)  # before predicting the split, not after
    config = CheckpointInfo.of(checkpoint).config
    trained_on = _trained_on(config, dataset, split)
    # The images audited are those with a label: a label file may leave some out (-1).
    data, label_source = audited_labels(dataset, split, config, trained_on, labels_file)
    predictions = predict_own_classes(checkpoint, dataset, data, device, batch, amp)
    baseline_probs = None
    if baseline is not None:
        baseline_checkpoint = load_checkpoint(resolve_checkpoint(baseline))
        baseline_probs = predict_own_classes(baseline_checkpoint, dataset, data, device, batch, amp,
                                             name=f"--baseline {baseline}").trn_probs
    run_dir = Path(checkpoint_path).parent  # a checkpoint in its run folder: the images it held out are marked
    held = held_out_by_run(run_dir, data, trained_on)
    mode = "the model's own training set" if trained_on else "a held-out split (the model never trained on it)"
    if held.any():
        mode += f", but {int(held.sum())} images it held out for validation ({HELD_OUT_COLUMN})"
    return audit_of(dataset, data, objective_inference(predictions, checkpoint_path), predictions.trn_probs,
                    predictions.consistency, label_source=label_source, mode=mode,
                    # absolute: poi clean --auto reloads it from wherever it runs
                    checkpoint=str(Path(checkpoint_path).resolve()),
                    split=split, baseline_probs=baseline_probs,
                    extra_columns={HELD_OUT_COLUMN: held})


def held_out_by_run(run_dir: Path, data: SplitData, trained_on: bool) -> np.ndarray:
    """(n,) bool: the images of `data` that the run in run_dir held out of its training split."""
    held = held_out_mask(run_dir, data.ids) if trained_on and (run_dir / CONFIG_FILE).is_file() else None
    return np.zeros(len(data.ids), dtype=bool) if held is None else held


def require_objective_inference(checkpoint: Mapping[str, Any], checkpoint_path: str | Path) -> None:
    """AuditError, before any work, for a model without the PIN's objective inference p*
    (a baseline or no-OIM model): the audit's suspicion is computed from p*."""
    config = CheckpointInfo.of(checkpoint).model_config
    if not (config.use_pin and config.use_oim):
        raise AuditError(NO_OBJECTIVE_INFERENCE.format(path=checkpoint_path))


def objective_inference(predictions: SplitPredictions, checkpoint_path: str | Path) -> np.ndarray:
    """p* at T = 1, on the TRN's probability scale (see the module doc); AuditError for a model without it."""
    objective = predictions.intermediate_probs(1.0)
    if objective is None:
        raise AuditError(NO_OBJECTIVE_INFERENCE.format(path=checkpoint_path))
    return objective


def audited_labels(dataset: PreparedDataset, split: str, config: dict, trained_on: bool,
                   labels_file: Optional[str | Path] = None) -> tuple[SplitData, str]:
    """The split with the labels to audit, and where they come from: a label file, else the
    (noisy) labels the run itself trained on (config: its config.json), else the manifest's.
    A --fold K run's training split leaves out fold K, its test set: an audit (and the
    cross-fit's models, and the cleaning) of its images would carry their labels into the
    next round's training labels."""
    held = held_out_fold(config) if trained_on and split == config.get("train_split", "train") else None
    number = parse_fold_split(held or "")
    fold = None if number is None else fold_split_name(number)
    excluded = number if fold is not None and fold in dataset.fold_splits() else None
    # without the test fold before --noise flips them, as train.data.select_data does: the flips
    # are drawn in the order of the images, so flipping the whole split gave other labels
    data, source = _audited_labels(dataset.split(split, labels_file, exclude_fold=excluded), config, dataset,
                                   trained_on, labels_file)
    if excluded is not None:  # (a run's label file is read whole by _audited_labels)
        keep = ~np.isin(data.ids, dataset.split(fold).ids)
        data = SplitData(data.store_rows[keep], data.labels[keep], data.ids[keep],
                         None if data.clean_labels is None else data.clean_labels[keep])
        source += f", without {fold} (the run's held-out test fold)"
    return data, source


def audit_of(dataset: PreparedDataset, data: SplitData, objective: np.ndarray, trn: np.ndarray, w: np.ndarray, *,
             label_source: str, mode: str, checkpoint: str, split: str, baseline_probs: Optional[np.ndarray] = None,
             extra_columns: Optional[dict[str, np.ndarray]] = None) -> AuditResult:
    """The audit table and summary from per-image p* (n, C), TRN probabilities (n, C) and w (n,),
    in `data`'s order, whichever model(s) produced them (one model, or K cross-fitted ones)."""
    labels, names = data.labels, dataset.classes
    index = np.arange(len(labels))
    scores = {
        "pin_suspicion": suspicion_score(objective, w, labels),
        "trn_one_minus_q": 1.0 - trn[index, labels],
    }
    if baseline_probs is not None:
        scores["baseline_loss"] = -np.log(np.clip(baseline_probs[index, labels], 1e-12, None))
    suggested, trn_label = objective.argmax(1), trn.argmax(1)
    sources = dataset.manifest.set_index("id").loc[data.ids, "source"].to_numpy()
    table = pd.DataFrame({
        "id": data.ids, "source": sources,
        "given_label": labels, "given_name": [names[k] for k in labels],
        "suggested_label": suggested, "suggested_name": [names[k] for k in suggested],
        "pin_prob_given": objective[index, labels], "trn_label": trn_label,
        "trn_name": [names[k] for k in trn_label], "trn_prob_given": trn[index, labels],
        "consistency": w, "suspicion": scores["pin_suspicion"],
    })
    clean_known = data.clean_labels is not None
    if clean_known:
        table["clean_label"] = data.clean_labels
        table["flipped"] = data.clean_labels != labels
    if "baseline_loss" in scores:
        table["baseline_loss"] = scores["baseline_loss"]
    for name, values in (extra_columns or {}).items():
        table[name] = values
    order = np.argsort(-table["suspicion"].to_numpy(), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))

    summary: dict = {
        "checkpoint": checkpoint, "data": str(dataset.root), "split": split, "n_images": int(len(table)),
        "labels": label_source, "mode": mode,
        "suspects": {str(t): int((table["suspicion"] >= t).sum()) for t in SUSPICION_THRESHOLDS},
        "suspects_per_class": {
            name: {str(t): int(((table["given_label"] == c) & (table["suspicion"] >= t)).sum()) for t in SUSPICION_THRESHOLDS}
            for c, name in enumerate(names)
        },
    }
    if clean_known:
        flipped = data.clean_labels != labels
        summary["flipped"] = int(flipped.sum())
        summary["realised_noise_rate"] = float(flipped.mean())
        summary["detection"] = {name: detection_metrics(score, flipped) for name, score in scores.items()}
        summary["suggested_recovers_clean_label"] = float((suggested[flipped] == data.clean_labels[flipped]).mean()) if flipped.any() else None
    else:
        summary["detection"] = None
        summary["detection_note"] = "clean labels unknown (no label file with clean_label, no --noise run): detection metrics skipped"
    return AuditResult(table=table, summary=summary, faces=dataset.faces, store_rows=data.store_rows[order])


def contact_sheet(result: AuditResult, path: str | Path, count: int = 48, columns: int = 8, tile: int = 96) -> Path:
    """PNG grid of the `count` most suspect faces, captioned given -> suggested and the score."""
    from PIL import Image, ImageDraw

    count = min(count, len(result.table))
    rows = max(1, -(-count // columns))
    caption = 26
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for k in range(count):
        row = result.table.iloc[k]
        face = Image.fromarray(np.asarray(result.faces[result.store_rows[k]])).resize((tile, tile), Image.BILINEAR)
        x, y = (k % columns) * tile, (k // columns) * (tile + caption)
        sheet.paste(face, (x, y))
        draw.text((x + 2, y + tile + 1), f"{row['given_name'][:8]}>{row['suggested_name'][:8]}", fill="black")
        draw.text((x + 2, y + tile + 13), f"#{row['rank']} s={row['suspicion']:.2f}", fill="firebrick")
    return save_image(sheet, path)


def write_audit(result: AuditResult, out_dir: str | Path, sheet_count: int = 48) -> list[Path]:
    """audit.csv (most suspect first), audit_summary.json and contact_sheet.png in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / AUDIT_CSV_FILE
    atomic_write_text(csv_path, result.table.to_csv(index=False, float_format="%.6g"))
    write_json(out / AUDIT_SUMMARY_FILE, result.summary)
    return [csv_path, out / AUDIT_SUMMARY_FILE, contact_sheet(result, out / "contact_sheet.png", sheet_count)]
