"""`poi evaluate`: a trained model on a prepared split.

Reports the TRN's accuracy and per-class recall, the confusion matrix (CSV and PNG, as
the paper's Fig. 11), the accuracy of the most and least confident 30/50/70% of the
images by the UEM consistency w (Table IV), and the accuracy of the PIN's intermediate
prediction p~* and of the plain region average (Fig. 13).

Classes are matched by name: a model trained on 8 classes evaluated on 7-class data
predicts among the 7 shared classes; on the reverse, images of a class the model does
not know are left out. The result says so in `class_mapping`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from poi_cli.core.atomic import save_figure, write_csv, write_json
from poi_cli.core.errors import PoiError
from poi_cli.core.metrics import confusion_matrix, per_class_recall
from poi_cli.core.runtime import select_device, use_bf16
from poi_cli.data.store import PreparedDataset
from poi_cli.model.checkpoint import load_model, resolve_checkpoint
from poi_cli.model.predictions import SplitPredictions, predict_split

STRATA = (0.3, 0.5, 0.7)


class EvaluateError(PoiError):
    """A model and a split that cannot be evaluated together; one-line message."""


def class_mapping(model_classes: list[str], data_classes: list[str]) -> tuple[list[str], list[int], np.ndarray, Optional[str]]:
    """(shared class names in data order, their model columns, data label -> shared index or -1, note)."""
    shared = [name for name in data_classes if name in model_classes]
    columns = [model_classes.index(name) for name in shared]
    label_map = np.array([shared.index(n) if n in shared else -1 for n in data_classes], dtype=np.int64)
    note = None
    if list(model_classes) != list(data_classes):
        parts = [f"model has {len(model_classes)} classes, data {len(data_classes)}: mapped by name"]
        only_model = [n for n in model_classes if n not in data_classes]
        only_data = [n for n in data_classes if n not in model_classes]
        if only_model:
            parts.append(f"predictions restricted to the {len(shared)} shared classes (never {', '.join(only_model)})")
        if only_data:
            parts.append(f"images of {', '.join(only_data)} left out (the model cannot predict them)")
        note = "; ".join(parts)
    return shared, columns, label_map, note


def confidence_strata(w: np.ndarray, correct: np.ndarray, fractions: tuple[float, ...] = STRATA) -> list[dict]:
    """Accuracy of the most and least confident `fraction` of the images, ranked by w (high = confident).

    Ties keep the images' order (stable sort), so the answer is deterministic.
    """
    order = np.argsort(-w, kind="stable")  # most confident first
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


@dataclass
class MappedPredictions:
    """A checkpoint's predictions on the images of a split whose class it knows, with the
    classes matched by name (class_mapping): what `poi evaluate` and `poi report` share."""

    checkpoint_path: Path
    checkpoint: dict
    dataset: PreparedDataset
    classes: list[str]  # the shared classes, in the data's order
    columns: list[int]  # the model's column of each shared class
    mapping_note: Optional[str]
    keep: np.ndarray  # (split size,) bool: images whose class the model knows
    targets: np.ndarray  # (n,) the shared class index of each kept image
    predictions: SplitPredictions  # over the kept images, labels in the model's columns

    @cached_property
    def predicted(self) -> np.ndarray:
        """The TRN's class among the shared ones (shared index), (n,)."""
        return self.restricted_argmax(self.predictions.trn_probs)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.targets

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @cached_property
    def confusion(self) -> np.ndarray:
        """Counts (classes x classes), row = true class."""
        return confusion_matrix(self.targets, self.predicted, len(self.classes))

    def restricted_argmax(self, probs: np.ndarray) -> np.ndarray:
        """argmax over the shared classes' columns of per-image probabilities (n, C)."""
        return probs[:, self.columns].argmax(1)

    def accuracy_of(self, probs: Optional[np.ndarray]) -> Optional[float]:
        """Accuracy of other per-image probabilities (a PIN output) among the shared classes."""
        return None if probs is None else float((self.restricted_argmax(probs) == self.targets).mean())


def predict_mapped(model_path: str | Path, prepared_dir: str | Path, split: str = "test", device: str = "auto",
                   batch: int = 256, amp: str = "auto") -> MappedPredictions:
    """A run folder (its best.pt) or a checkpoint on the images of `split` whose class it knows."""
    checkpoint_path = resolve_checkpoint(model_path)
    torch_device = select_device(device)
    model, checkpoint = load_model(checkpoint_path, torch_device)
    dataset = PreparedDataset(prepared_dir)
    data = dataset.split(split)
    model_classes = list(checkpoint["classes"])
    shared, columns, label_map, mapping_note = class_mapping(model_classes, dataset.classes)
    if not shared:
        raise EvaluateError(f"the model's classes ({', '.join(model_classes)}) share none with the data's")
    keep = label_map[data.labels] >= 0
    targets = label_map[data.labels][keep]
    if not keep.any():
        raise EvaluateError(f"no image of split {split!r} has a class the model knows")
    size = int(checkpoint["model_config"]["input_size"])
    predictions = predict_split(model, dataset.faces, data.store_rows[keep], np.asarray(columns)[targets], size, batch,
                                torch_device, use_bf16(amp, torch_device), progress=True)
    return MappedPredictions(checkpoint_path, checkpoint, dataset, shared, columns, mapping_note, keep, targets, predictions)


def evaluate(model_path: str | Path, prepared_dir: str | Path, split: str = "test", device: str = "auto",
             batch: int = 256, amp: str = "auto") -> dict:
    """Evaluate a run folder (its best.pt) or a checkpoint on a split of a prepared folder."""
    mapped = predict_mapped(model_path, prepared_dir, split, device, batch, amp)
    predictions, shared = mapped.predictions, mapped.classes
    confusion = mapped.confusion
    per_class = {
        name: {"n": int(confusion[i].sum()), "recall": recall}
        for i, (name, recall) in enumerate(zip(shared, per_class_recall(confusion)))
    }
    w = predictions.consistency
    notes = [mapped.mapping_note] if mapped.mapping_note else []
    if w is None:
        notes.append("baseline model (no PIN): no confidence strata and no PIN accuracies")
    elif predictions.gate_weights is None:
        notes.append("model trained without OIM: no intermediate prediction p~*")
    return {
        "checkpoint": str(mapped.checkpoint_path), "epoch": mapped.checkpoint.get("epoch"), "data": str(mapped.dataset.root),
        "split": split, "n_images": int(mapped.keep.sum()), "n_left_out": int((~mapped.keep).sum()),
        "classes": shared, "accuracy": mapped.accuracy,
        "mean_class_recall": float(np.mean([v["recall"] for v in per_class.values() if v["recall"] is not None])),
        "per_class": per_class, "confusion_matrix": confusion.tolist(),
        "confidence_strata": None if w is None else confidence_strata(w, mapped.correct),
        "confidence_quantiles": None if w is None else confidence_quantiles(w),
        "pin_intermediate_accuracy": mapped.accuracy_of(predictions.intermediate_probs()),
        "pin_average_accuracy": mapped.accuracy_of(predictions.region_average()),
        "trn_accuracy": mapped.accuracy,
        "class_mapping": mapped.mapping_note, "notes": notes,
    }


def confidence_quantiles(w: np.ndarray) -> dict[str, float]:
    """Where the UEM w of the images lies: min, 5 %, 25 %, 50 %, 75 % quantiles, max.
    (Its scale depends on the model: a w packed near 1 ranks images but says little alone.)"""
    points = {"min": 0.0, "q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "max": 1.0}
    return {name: float(np.quantile(w, q)) for name, q in points.items()}


def write_reports(result: dict, out_dir: str | Path) -> list[Path]:
    """metrics.json, confusion_matrix.csv (counts, rows = true class) and confusion_matrix.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = result["classes"]
    write_json(out / "metrics.json", result)
    rows = [{"true_class": name, **dict(zip(classes, counts))} for name, counts in zip(classes, result["confusion_matrix"])]
    write_csv(out / "confusion_matrix.csv", ["true_class", *classes], rows)
    plot_confusion(np.array(result["confusion_matrix"]), classes, out / "confusion_matrix.png",
                   title=f"{result['split']}: accuracy {result['accuracy']:.2%} ({result['n_images']} images)")
    return [out / "metrics.json", out / "confusion_matrix.csv", out / "confusion_matrix.png"]


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix in percent (like the paper's Fig. 11)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = confusion.sum(1, keepdims=True)
    percent = np.divide(confusion * 100.0, totals, out=np.zeros(confusion.shape), where=totals > 0)
    figure, axes = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.7 * len(classes)))
    axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i in range(len(classes)):
        for j in range(len(classes)):
            axes.text(j, i, f"{percent[i, j]:.1f}", ha="center", va="center", fontsize=8,
                      color="white" if percent[i, j] > 50 else "black")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)

