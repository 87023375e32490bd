"""The `poi` command line: thin wrappers over the library functions."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from poi_cli import __version__

app = typer.Typer(
    name="poi",
    help="Noise-robust facial expression recognition with POI (Prior-based Objective Inference).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error and exit non-zero (no traceback for bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"poi {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Noise-robust facial expression recognition with POI (Prior-based Objective Inference)."""


@app.command()
def info(
    arch: str = typer.Option("resnet18", help="Backbone: resnet18, resnet34, resnet50, or resnet10 (one block per stage; the bundled model)."),
    classes: int = typer.Option(7, "--classes", help="Number of expression classes (7 or 8)."),
    size: int = typer.Option(224, help="Input size in pixels (a multiple of 16 from 64 to 448)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Parameter counts and GFLOPs (multiply-accumulates) of the training model and the deployed TRN."""
    from poi_cli.model.info import model_info

    try:
        result = model_info(arch=arch, num_classes=classes, input_size=size)
    except ValueError as error:
        fail(str(error))
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"POI {arch}, {classes} classes, {size}x{size} input (L_sub = {result['subregion_size']})")
    table.add_column("model")
    table.add_column("parameters (M)", justify="right")
    table.add_column("GFLOPs (MACs)", justify="right")
    table.add_row("deployed TRN (inference)", f"{result['trn_params'] / 1e6:.2f}", f"{result['trn_gflops']:.2f}")
    table.add_row("full model (training: TRN + PIN)", f"{result['full_params'] / 1e6:.2f}", f"{result['full_gflops']:.2f}")
    console.print(table)


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="raf-db, ferplus, affectnet, ckplus, sfew or folder (one sub-folder per class)."),
    raw_dir: str = typer.Argument(..., help="The dataset as downloaded (official layout); only read."),
    out: str = typer.Option(..., "--out", help="Folder for manifest.csv, faces.npy and prepared.json."),
    size: int = typer.Option(224, help="Side of the stored square faces, in pixels."),
    detect: Optional[bool] = typer.Option(None, "--detect/--no-detect", help="Run MTCNN (default: per dataset; off where faces ship cropped)."),
    device: str = typer.Option("cpu", help="Torch device for face detection."),
    batch_size: int = typer.Option(32, help="Images per detection batch."),
    splits: Optional[str] = typer.Option(None, help="Comma-separated splits to prepare (default: all found)."),
) -> None:
    """Detect, align and store a dataset's faces for training (resumable; see docs/datasets.md)."""
    from poi_cli.data.datasets import LayoutError
    from poi_cli.data.prepare import PrepareError, prepare as run_prepare

    chosen = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    try:
        result = run_prepare(dataset, raw_dir, out, size=size, detect=detect, device=device,
                             batch_size=batch_size, splits=chosen)
    except (LayoutError, PrepareError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(f"interrupted: finished images are saved in {out}; run the same command again to resume", 130)
    except Exception as error:  # e.g. the detector cannot start: still one line, never a traceback
        fail(f"{type(error).__name__}: {error}")
    if result.already_done:
        console.print(f"{result.out_dir} is already prepared with these settings: nothing to do.")
    statuses = sorted({s for counts in result.counts.values() for s in counts}, key=lambda s: (s != "ok", s))
    console.print(f"{dataset} -> {result.out_dir}", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("split")
    for status in statuses:
        table.add_column(status, justify="right")
    for split, counts in sorted(result.counts.items()):
        table.add_row(split, *(str(counts.get(s, 0)) for s in statuses))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if not result.already_done:
        resumed = f", {result.resumed} done by an earlier run" if result.resumed else ""
        speed = result.images_per_second
        speed_text = f"{speed:.0f}" if speed >= 10 else f"{speed:.2f}"
        console.print(f"{result.processed} images in {result.seconds:.1f} s ({speed_text} images/s){resumed}", highlight=False)


@app.command()
def noise(
    prepared_dir: str = typer.Argument(..., help="A folder written by `poi prepare`."),
    rate: float = typer.Option(..., help="Probability of flipping each label (0..1), e.g. 0.2."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives byte-identical files."),
    split: str = typer.Option("train", help="Split whose labels are flipped."),
    out: Optional[str] = typer.Option(None, help="Label file to write (default PREPARED_DIR/labels/<split>_noise<pct>_seed<seed>.csv)."),
) -> None:
    """Symmetric label noise: write a label file for `poi train --labels` (the manifest is not changed)."""
    from poi_cli.data.noise import write_noisy_labels
    from poi_cli.data.store import StoreError

    try:
        path, summary = write_noisy_labels(prepared_dir, rate, seed=seed, split=split, out=out)
    except (StoreError, ValueError, OSError) as error:
        fail(str(error))
    table = Table(title=f"{summary['split']}: {summary['flipped']} of {summary['images']} labels flipped "
                        f"(realised rate {summary['realised_rate']:.4f}, asked {rate:g}, seed {seed})")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("flipped", justify="right")
    table.add_column("noisy labels", justify="right")
    for name, row in summary["per_class"].items():
        table.add_row(name, str(row["images"]), str(row["flipped"]), str(row["noisy_labels"]))
    console.print(table)
    console.print(f"wrote {path} and {path.with_suffix('.json').name}; train with --labels {path}", highlight=False, soft_wrap=True)


from poi_cli.train import config as _train_config  # plain dataclass, no torch: the options of `poi train`


def _config_parameter(f: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    """The Typer parameter of a TrainConfig field, from its metadata (help, section, flags)."""
    meta, default = f.metadata, _train_config.field_default(f)
    panel = meta["section"].capitalize()
    if meta["argument"]:
        info = typer.Argument(None, help=meta["help"], show_default=False)
        return inspect.Parameter(meta["argument"], inspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[str])
    flags = meta["flags"] or (f"--{f.name.replace('_', '-')}",)
    if meta["invert"]:  # --baseline, --no-prior, ...: the flag turns the field off
        default = False
    elif isinstance(default, list):  # comma-separated on the command line
        default, annotation = ",".join(map(str, default)), str
    elif annotation is bool and not meta["flags"] and default:
        flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
    info = typer.Option(default, *flags, help=meta["help"], rich_help_panel=panel)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _config_cli_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that are `poi train` options (or its argument)."""
    return [f for f in dataclasses.fields(_train_config.TrainConfig) if f.metadata["cli"]]


def _with_config_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command(**options)` one CLI parameter per TrainConfig field (the signature Typer reads)."""
    hints = get_type_hints(_train_config.TrainConfig)
    command.__signature__ = inspect.Signature([_config_parameter(f, hints[f.name]) for f in _config_cli_fields()])
    return command


def _config_from_options(options: dict[str, Any]) -> "_train_config.TrainConfig":
    """The TrainConfig of parsed `poi train` options (None: the field's default)."""
    values = {}
    for f in _config_cli_fields():
        value = options[f.metadata["argument"] or f.name]
        if value is not None:
            values[f.name] = not value if f.metadata["invert"] else value
    return _train_config.TrainConfig(**values)


@app.command()
@_with_config_options
def train(**options: Any) -> None:
    """Train POI (or the baseline / an ablation) on a prepared dataset; see docs/training.md."""
    from poi_cli.model.checkpoint import CheckpointError
    from poi_cli.train.engine import TrainError
    from poi_cli.model.pretrained import PretrainedError
    from poi_cli.data.store import StoreError

    try:
        config = _config_from_options(options)
    except ValueError as error:
        fail(str(error))
    if not config.data and config.resume is None:
        fail("give a prepared folder (PREPARED_DIR) or --resume RUN_DIR")
    from poi_cli.train.engine import train as run_train

    try:
        run_dir = run_train(config, console=console)
    except (TrainError, StoreError, CheckpointError, PretrainedError, ValueError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted: finished epochs are saved; continue with --resume RUN_DIR", 130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        console.print(f"done: {run_dir} (results.csv, best.pt, last.pt); evaluate with `poi evaluate {run_dir} PREPARED_DIR`",
                      highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="A run folder (its best.pt) or a checkpoint file."),
    prepared_dir: str = typer.Argument(..., help="A folder written by `poi prepare`."),
    split: str = typer.Option("test", help="Split to evaluate."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    out: Optional[str] = typer.Option(None, help="Folder for metrics.json, confusion_matrix.csv and .png, reliability.png, risk_coverage.png (default runs/evaluate/exp, numbered)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    batch: int = typer.Option(256, help="Images per batch."),
    amp: str = typer.Option("auto", help="bf16 autocast: auto, bf16 or off."),
) -> None:
    """Accuracy, per-class recall, confusion matrix, calibration of confidence and consistency, strata and PIN accuracies of a model."""
    from poi_cli.core.atomic import next_run_dir
    from poi_cli.model.checkpoint import CheckpointError
    from poi_cli.inference.evaluate import evaluate as run_evaluate, write_reports
    from poi_cli.data.store import StoreError

    try:
        result = run_evaluate(model, prepared_dir, split=split, device=device, batch=batch, amp=amp)
        out_dir = next_run_dir("runs/evaluate", "exp") if out is None else out
        files = write_reports(result, out_dir)
    except (CheckpointError, StoreError, ValueError, OSError) as error:  # DeviceError is a ValueError
        fail(str(error))
    if as_json:
        print(json.dumps(result))
        return
    for note in result["notes"]:
        console.print(f"note: {note}", highlight=False)
    table = Table(title=f"{result['checkpoint']} on {result['split']} ({result['n_images']} images)")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("recall", justify="right")
    for name, row in result["per_class"].items():
        table.add_row(name, str(row["n"]), "-" if row["recall"] is None else f"{row['recall']:.2%}")
    console.print(table)
    lines = [f"accuracy (TRN) {result['accuracy']:.2%}, mean class recall {result['mean_class_recall']:.2%}"]
    if result["pin_average_accuracy"] is not None:
        pin = result["pin_intermediate_accuracy"]
        lines.append(f"PIN intermediate p~* {'-' if pin is None else f'{pin:.2%}'}, region average {result['pin_average_accuracy']:.2%}")
    if result.get("consistency_quantiles"):
        q = result["consistency_quantiles"]
        lines.append(f"consistency w: min {q['min']:.4f}, 5% {q['q05']:.4f}, median {q['median']:.4f}, max {q['max']:.4f}")
    lines += _strata_lines(result)
    lines += _calibration_lines(result)
    lines.append(f"wrote {', '.join(str(f) for f in files)}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _strata_lines(result: dict) -> list[str]:
    """`poi evaluate`'s Table IV lines: accuracy of the most / least confident images by each score."""
    by_score = {name: result.get(f"{name}_strata") or [] for name in ("confidence", "consistency")}
    lines = []
    for index, s in enumerate(by_score["confidence"]):
        parts = [f"by confidence {s['most_confident_accuracy']:.2%} / {s['least_confident_accuracy']:.2%}"]
        if index < len(by_score["consistency"]):
            w = by_score["consistency"][index]
            parts.append(f"by consistency {w['most_confident_accuracy']:.2%} / {w['least_confident_accuracy']:.2%}")
        lines.append(f"{s['fraction']:.0%} most / least confident: {'; '.join(parts)}")
    return lines


def _calibration_lines(result: dict) -> list[str]:
    """`poi evaluate`'s calibration lines: the protocol, then one per score (ECE, NLL, AURC, accuracy at 80 % coverage)."""
    calibration = result.get("calibration")
    if not calibration:
        return []
    stored = result.get("checkpoint_temperature")
    lines = [f"calibration study: {calibration['protocol']}; T fitted there {calibration['temperature_half']:.3f} "
             f"(checkpoint T_cal {'none' if stored is None else f'{stored:.3f}'})"]
    for name, row in calibration["scores"].items():
        if row is None:
            lines.append(f"  {name}: - (baseline model: no UEM w)")
            continue
        nll = "-" if row["nll"] is None else f"{row['nll']:.4f}"
        lines.append(f"  {name}: ECE {row['ece']:.4f}, NLL {nll}, AURC {row['aurc']:.4f}, "
                     f"accuracy at 80% coverage {row['accuracy_at_80']:.2%}")
    return lines


@app.command()
def predict(
    inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint or run folder (default: $POI_MODEL, then the bundled model)."),
    show_au: bool = typer.Option(False, "--show-au", help="Add AU probabilities per region and the regions' own expression distributions."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of per-face records to stdout."),
    csv_file: Optional[str] = typer.Option(None, "--csv", help="Write one row per face (flat columns) to this CSV file."),
    save_vis: Optional[str] = typer.Option(None, "--save-vis", help="Folder for annotated PNGs (boxes, expression, probability, consistency, AU bars)."),
    device: str = typer.Option("cpu", help="cpu or cuda (detection and model)."),
    batch: int = typer.Option(32, help="Faces per model batch."),
    min_score: float = typer.Option(0.95, "--min-score", help="Drop detections scored below this (MTCNN's false positives score about 0.8-0.92)."),
) -> None:
    """Expression, confidence (calibrated probability), consistency (UEM w) and action units of every face in images; see docs/predict.md."""
    from poi_cli.data.faces import FaceDetectorError
    from poi_cli.inference.predict import PredictError, Predictor, STATUS_ERROR, status_counts, write_predictions_csv

    if as_json and csv_file:
        fail("--json and --csv exclude each other: choose one output")
    if csv_file and any(Path(csv_file).resolve() == Path(i).resolve() for i in inputs):
        fail(f"--csv {csv_file} is one of the inputs; choose another file")
    try:
        predictor = Predictor(model, device=device, batch_size=batch, min_face_score=min_score)
    except (PredictError, ValueError) as error:
        fail(str(error))
    for note in predictor.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    writer = None
    if save_vis:
        from poi_cli.inference.visualize import VisWriter

        writer = VisWriter(save_vis, show_au)
    records: list[dict] = []
    images = 0
    try:
        for prediction in predictor.iter_predictions(inputs, show_au, progress=True):
            images += 1
            records.extend(prediction.records)
            if writer is not None:
                writer.write(prediction)
    except FaceDetectorError as error:
        fail(str(error))
    except KeyboardInterrupt:
        if csv_file and records:
            write_predictions_csv(records, predictor.classes, csv_file, show_au)
            fail(f"interrupted: the {images} images finished are in {csv_file}", 130)
        fail("interrupted", 130)
    counts = status_counts(records)
    if images == 1 and records[0]["status"] == STATUS_ERROR:
        fail(f"{records[0]['image']}: {records[0]['reason']}")
    if as_json:
        print(json.dumps(records))
    elif csv_file:
        write_predictions_csv(records, predictor.classes, csv_file, show_au)
    else:
        table = Table(title=f"{predictor.checkpoint_path} ({len(predictor.classes)} classes)")
        for column in ("image", "face", "expression", "confidence", "consistency", *(("AUs > 0.5",) if show_au else ()), "status"):
            table.add_column(column, justify="right" if column in ("face", "confidence", "consistency") else "left",
                             overflow="fold")
        for r in records:
            ok = r["status"] == "ok"
            cells = [r["image"], "" if r["face"] is None else str(r["face"]), r["expression"] or "-",
                     f"{r['confidence']:.1%}" if ok else "-",
                     f"{r['consistency']:.3f}" if ok and r["consistency"] is not None else "-"]
            if show_au:
                active = [f"{au}({','.join(reg.split('_')[0][0].upper() for reg, p in regions.items() if p >= 0.5)})"
                          for au, regions in (r.get("aus") or {}).items() if any(p is not None and p >= 0.5 for p in regions.values())]
                cells.append(" ".join(active) or "-")
            cells.append(r["status"] if ok else f"{r['status']}: {r['reason']}")
            table.add_row(*cells)
        console.print(table)
    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    summary = (f"{count(images, 'image')}: {count(counts['ok'], 'face')} predicted, {count(counts['no_face'], 'image')} without a face, "
               f"{count(counts['error'], 'error')}" + (f"; wrote {csv_file}" if csv_file else "") + (f"; pictures in {save_vis}" if save_vis else ""))
    (err_console if as_json else console).print(summary, highlight=False, soft_wrap=True)
    if images and counts["error"] == images:
        raise typer.Exit(1)


@app.command()
def export(
    checkpoint: str = typer.Argument(..., help="A checkpoint file or a run folder (its best.pt)."),
    format: str = typer.Option("onnx", "--format", help="onnx, torchscript, or weights (packed fp16 TRN + PIN weights, a checkpoint poi predict reads)."),
    full: bool = typer.Option(False, "--full", help="The full model (calibrated probabilities, confidence, consistency, AUs) instead of the deployed TRN alone."),
    out: Optional[str] = typer.Option(None, "--out", help="File to write (default beside the checkpoint: best.trn.onnx, best.full.torchscript.pt, best.fp16.pt, ...)."),
    tolerance: Optional[float] = typer.Option(None, help="Largest accepted difference from PyTorch on random input (default 1e-3; 1e-2 for weights)."),
    opset: int = typer.Option(17, help="ONNX opset."),
) -> None:
    """Export to ONNX, TorchScript or packed fp16 weights and check the result against PyTorch; see docs/predict.md."""
    from poi_cli.inference.export import ExportError, export_model

    try:
        result = export_model(checkpoint, format=format, full=full, out=out, tolerance=tolerance, opset=opset)
    except (ExportError, OSError) as error:
        fail(str(error))
    except Exception as error:  # an exporter failure: one line, never a traceback
        fail(f"export failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    what = "full model (TRN + PIN)" if result.full else "deployed TRN"
    what = f"fp16 weights of the {what}" if result.format == "weights" else what
    console.print(f"wrote {result.path}: {what}, outputs {', '.join(result.output_names)}", highlight=False, soft_wrap=True)
    details = ", ".join(f"{name} {diff:.2e}" for name, diff in result.per_output_diff.items())
    console.print(f"largest difference from PyTorch on random input {tuple(result.input_shape)}: {result.max_abs_diff:.2e} "
                  f"({details}; tolerance {result.tolerance:g})", highlight=False, soft_wrap=True)
    if not result.passed:
        fail(f"the exported model differs from PyTorch by {result.max_abs_diff:.2e} > {result.tolerance:g}")


@app.command()
def report(
    run_dirs: Optional[list[str]] = typer.Argument(None, help="Run folders, or folders of runs (default: runs/train)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for report.md, CSVs and PNGs (default runs/report/exp, numbered)."),
    data: Optional[str] = typer.Option(None, "--data", help="A prepared folder: predict it with each run's best.pt for confusion matrices, consistency histograms, strata and calibration figures."),
    split: str = typer.Option("test", help="Split of --data to predict."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps (with --data)."),
) -> None:
    """Tables (final / best accuracy, noise, ablations, calibration, confidence and consistency strata) and plots of training runs; see docs/predict.md."""
    from poi_cli.core.atomic import next_run_dir
    from poi_cli.inference.report import ReportError, build_report

    try:
        out_dir = out or next_run_dir("runs/report", "exp")
        result = build_report(run_dirs or [], out_dir, data=data, split=split, device=device)
    except (ReportError, ValueError, OSError) as error:
        fail(str(error))
    for reason in result.skipped:
        err_console.print(f"skipped {reason}", highlight=False, soft_wrap=True)
    table = Table(title=f"{len(result.runs)} runs (accuracy %)")
    for column in ("run", "method", "noise", "epochs", "final val", "best val (epoch)", "best.pt evaluated"):
        table.add_column(column, justify="left" if column in ("run", "method") else "right")

    def pct(value) -> str:
        return "-" if value is None or value != value else f"{100 * value:.2f}"

    for _, row in result.summary.iterrows():
        planned = "?" if row["epochs_planned"] is None or row["epochs_planned"] != row["epochs_planned"] else int(row["epochs_planned"])
        best = "-" if row["best_epoch"] is None or row["best_epoch"] != row["best_epoch"] else f"{pct(row['best_val_acc'])} ({int(row['best_epoch'])})"
        table.add_row(row["run"], row["method"], pct(row["noise"]), f"{row['epochs_done']}/{planned}", pct(row["final_val_acc"]), best, pct(row["eval_acc"]) + (f" ({row['eval_split']})" if isinstance(row["eval_split"], str) else ""))
    console.print(table)
    console.print(f"wrote {len(result.files)} files in {result.out_dir} (report.md, runs.csv, by_noise.csv, strata.csv, PNGs)",
                  highlight=False, soft_wrap=True)


@app.command()
def audit(
    model: str = typer.Argument(..., help="A POI run folder (its best.pt) or checkpoint; the PIN's objective inference scores the labels."),
    prepared_dir: str = typer.Argument(..., help="A folder written by `poi prepare`."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label file to audit (default: the labels the run trained on, else the manifest's)."),
    split: str = typer.Option("train", help="Split to audit (the training split, or a held-out one)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="A baseline run: adds its per-image loss (small-loss trick) as a reference score."),
    out: Optional[str] = typer.Option(None, help="Folder for audit.csv, audit_summary.json, contact_sheet.png (default runs/audit/exp, numbered)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    batch: int = typer.Option(256, help="Images per batch."),
) -> None:
    """Rank every labelled image by how strongly the PIN's objective inference disagrees with its label; see docs/audit.md."""
    from poi_cli.inference.audit import SUSPICION_THRESHOLDS, AuditError, audit as run_audit, write_audit
    from poi_cli.core.atomic import next_run_dir
    from poi_cli.model.checkpoint import CheckpointError
    from poi_cli.data.store import StoreError

    try:
        result = run_audit(model, prepared_dir, labels_file=labels, split=split, baseline=baseline, device=device, batch=batch)
        files = write_audit(result, next_run_dir("runs/audit", "exp") if out is None else out)
    except (AuditError, CheckpointError, StoreError, ValueError, OSError) as error:  # DeviceError is a ValueError
        fail(str(error))
    summary = result.summary
    console.print(f"audited {summary['n_images']} images of split {summary['split']}: {summary['mode']}; {summary['labels']}", highlight=False)
    table = Table(title="suspect labels (suspicion = w * (1 - p*[given label]))")
    table.add_column("class")
    for threshold in SUSPICION_THRESHOLDS:
        table.add_column(f">= {threshold}", justify="right")
    for name, counts in summary["suspects_per_class"].items():
        table.add_row(name, *(str(counts[str(t)]) for t in SUSPICION_THRESHOLDS))
    table.add_row("all", *(str(summary["suspects"][str(t)]) for t in SUSPICION_THRESHOLDS), style="bold")
    console.print(table)
    if summary["detection"] is None:
        console.print(f"note: {summary['detection_note']}", highlight=False)
    else:
        detection = Table(title=f"finding the {summary['flipped']} flipped labels ({summary['realised_noise_rate']:.2%})")
        for column in ("score", "ROC AUC", "precision @ noise count", "recall @ top 10%", "@ 20%", "@ 30%"):
            detection.add_column(column, justify="left" if column == "score" else "right")
        for name, m in summary["detection"].items():
            cells = [m["roc_auc"], m["precision_at_noise_count"], m["recall_at_top_10pct"], m["recall_at_top_20pct"], m["recall_at_top_30pct"]]
            detection.add_row(name, *("-" if v is None else f"{v:.3f}" for v in cells))
        console.print(detection)
        recovered = summary["suggested_recovers_clean_label"]
        if recovered is not None:
            console.print(f"the suggested label (argmax p*) is the clean label for {recovered:.2%} of the flipped images", highlight=False)
    console.print(f"wrote {', '.join(str(f) for f in files)}", highlight=False)


@app.command()
def clean(
    audit_or_run: str = typer.Argument(..., help="An audit.csv from `poi audit`, or a POI run folder / checkpoint (audited first)."),
    prepared_dir: str = typer.Argument(..., help="The prepared folder the audit is of (only read)."),
    out: str = typer.Option(..., "--out", help="The label file to write (.csv; its summary goes beside it as .json)."),
    relabel: bool = typer.Option(True, "--relabel/--drop", help="Relabel the suspects to the PIN's suggested label, or leave them out of training."),
    threshold: Optional[float] = typer.Option(None, help="Select images with suspicion >= this."),
    fraction: Optional[float] = typer.Option(None, help="Select this fraction of the images, most suspect first."),
    labels: Optional[str] = typer.Option(None, "--labels", help="With a run: the label file to audit (default: the labels it trained on)."),
    split: str = typer.Option("train", help="The split the audit covers."),
    device: str = typer.Option("auto", help="With a run: auto, cpu, cuda or mps."),
) -> None:
    """Turn an audit into a label file for `poi train --labels`: relabel or drop the most suspect images."""
    from poi_cli.core.errors import PoiError
    from poi_cli.inference.clean import clean as run_clean, write_clean

    try:
        result = run_clean(audit_or_run, prepared_dir, "relabel" if relabel else "drop", threshold, fraction,
                           labels_file=labels, split=split, device=device)
        files = write_clean(result, out)
    except (PoiError, OSError) as error:
        fail(str(error))
    s = result.summary
    action = "relabelled" if relabel else "dropped"
    console.print(f"{s['n_selected']} of {s['n_images']} images selected, {s['n_changed']} {action}", highlight=False)
    if "changed_wrong_before" in s:
        line = f"of the {s['n_changed']} {action}: {s['changed_wrong_before']} had a wrong label"
        if relabel:
            line += f", {s['changed_right_after']} now have the right one"
        after = "-" if s["noise_rate_after"] is None else f"{s['noise_rate_after']:.2%}"
        console.print(f"{line}; label noise {s['noise_rate_before']:.2%} -> {after}", highlight=False)
    console.print(f"wrote {', '.join(str(f) for f in files)}; train with `poi train {prepared_dir} --labels {files[0]}`",
                  highlight=False, soft_wrap=True)


@app.command()
def calibrate(
    model: str = typer.Argument(..., help="A run folder (its best.pt) or a checkpoint."),
    prepared_dir: str = typer.Argument(..., help="A prepared folder with the model's classes."),
    split: Optional[str] = typer.Option(None, help="Split to fit on (default valid, else val; never the test split)."),
    out: Optional[str] = typer.Option(None, help="Where to write the calibrated copy (default <checkpoint>.calibrated.pt beside it)."),
    in_place: bool = typer.Option(False, "--in-place", help="Rewrite the checkpoint itself (atomically) instead of a copy."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    batch: int = typer.Option(256, help="Images per batch."),
) -> None:
    """Fit the temperature T_cal that makes `confidence` a calibrated probability, and store it in the checkpoint."""
    from poi_cli.core.errors import PoiError
    from poi_cli.inference.calibrate import calibrate as run_calibrate

    try:
        result = run_calibrate(model, prepared_dir, split=split, out=out, in_place=in_place, device=device, batch=batch)
    except (PoiError, OSError) as error:
        fail(str(error))
    c = result.calibration
    before = "uncalibrated (T_cal = 1)" if result.previous is None else f"T_cal {result.previous.temperature:.4f}"
    console.print(f"T_cal = {c.temperature:.4f} fitted on {c.n_images} images of split {c.split} (was {before}); "
                  f"NLL {c.nll_before:.4f} -> {c.nll_after:.4f}", highlight=False, soft_wrap=True)
    console.print(f"wrote {result.written}", highlight=False, soft_wrap=True)
