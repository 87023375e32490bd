"""The `poi` command line: thin wrappers over the library functions.

Each command parses its options, calls one library function, turns the library's errors
into one-line `fail` messages, and prints what poi_cli/render.py (the presentation layer)
builds from the result. Library modules are imported inside the commands, so `poi --help`
never loads torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, get_type_hints

import typer
from rich.console import Console

from poi_cli import __version__, render

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


def show(*items: render.Item, to: Optional[Console] = None) -> None:
    """Print render's tables and lines, in order (on stdout unless `to` says otherwise).

    A `render.Line` is printed as a string with its own highlight and soft_wrap; one
    print per item, so lines never run together.
    """
    to = to or console
    for item in items:
        if isinstance(item, render.Line):
            to.print(item.text, highlight=item.highlight, soft_wrap=item.soft_wrap)
        else:
            to.print(item)


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
    show(render.info_table(result, arch, classes, size))


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
    show(*render.prepare_summary(dataset, result))


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
    show(*render.noise_summary(path, summary, rate, seed))


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
    from poi_cli.pipeline import train_rounds

    try:
        run_dir = train_rounds(config, console=console, announce=lambda line: show(render.Line(line)))[-1]
    except (TrainError, StoreError, CheckpointError, PretrainedError, ValueError, OSError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted: finished epochs are saved; continue with --resume RUN_DIR", 130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        show(render.train_done(run_dir))


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
    show(*render.evaluate_summary(result, files))


@app.command()
def predict(
    inputs: list[str] = typer.Argument(..., help="Image or video files, folders (searched recursively) or glob patterns."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint or run folder (default: $POI_MODEL, then the bundled model)."),
    show_au: bool = typer.Option(False, "--show-au", help="Add AU probabilities per region and the regions' own expression distributions."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of per-face records to stdout."),
    csv_file: Optional[str] = typer.Option(None, "--csv", help="Write one row per face (flat columns) to this CSV file."),
    save_vis: Optional[str] = typer.Option(None, "--save-vis", help="Folder for annotated PNGs (boxes, expression, probability, consistency, AU bars)."),
    device: str = typer.Option("cpu", help="cpu or cuda (detection and model)."),
    batch: int = typer.Option(32, help="Faces per model batch."),
    min_score: float = typer.Option(0.95, "--min-score", help="Drop detections scored below this (MTCNN's false positives score about 0.8-0.92)."),
    no_detect: bool = typer.Option(False, "--no-detect", "--aligned", help="Take each image or frame whole as one face (already-cropped faces, e.g. FER datasets); no detector."),
    every: Optional[int] = typer.Option(None, "--every", help="Video: analyse every N-th frame.", rich_help_panel="Video"),
    fps: Optional[float] = typer.Option(None, "--fps", help="Video: analyse F frames per second (default: every frame, at most 10 per second).", rich_help_panel="Video"),
    start: Optional[float] = typer.Option(None, "--start", help="Video: first second to analyse.", rich_help_panel="Video"),
    end: Optional[float] = typer.Option(None, "--end", help="Video: second to stop at.", rich_help_panel="Video"),
    smooth: Optional[float] = typer.Option(None, "--smooth", help="Video: add each track's probabilities smoothed over SECONDS (exponential moving average); raw values stay.", rich_help_panel="Video"),
) -> None:
    """Expression, confidence (calibrated probability), consistency (UEM w) and action units of every face in images and videos; see docs/predict.md."""
    from poi_cli.core.errors import PoiError
    from poi_cli.data.faces import FaceDetectorError
    from poi_cli.data.video import VideoSampling
    from poi_cli.inference.predict import PredictError, Predictor, STATUS_ERROR, status_counts, write_predictions_csv
    from poi_cli.inference.video import VideoOptions, video_summary, write_video_summaries

    if as_json and csv_file:
        fail("--json and --csv exclude each other: choose one output")
    if csv_file and any(Path(csv_file).resolve() == Path(i).resolve() for i in inputs):
        fail(f"--csv {csv_file} is one of the inputs; choose another file")
    try:
        video = VideoOptions(VideoSampling(every=every, fps=fps, start=start, end=end), smooth=smooth)
        predictor = Predictor(model, device=device, batch_size=batch, min_face_score=min_score, detect=not no_detect)
    except (PoiError, ValueError) as error:
        fail(str(error))
    show(*render.note_lines(predictor.notes, soft_wrap=True), to=err_console)
    writer = None
    if save_vis:
        from poi_cli.inference.visualize import VisWriter

        writer = VisWriter(save_vis, show_au)
    records: list[dict] = []
    statuses: dict[str, set] = {}  # per input (a video's frames share one): the statuses of its records
    try:
        for prediction in predictor.iter_predictions(inputs, show_au, progress=True, video=video):
            statuses.setdefault(prediction.source, set()).update(r["status"] for r in prediction.records)
            records.extend(prediction.records)
            if writer is not None:
                writer.write(prediction)
    except FaceDetectorError as error:
        fail(str(error))
    except KeyboardInterrupt:
        if writer is not None:
            writer.close()
        if csv_file and records:
            write_predictions_csv(records, predictor.classes, csv_file, show_au)
            fail(f"interrupted: the {len(statuses)} inputs finished are in {csv_file}", 130)
        fail("interrupted", 130)
    if writer is not None:
        writer.close()
    images = len(statuses)
    counts = status_counts(records)
    summaries = video_summary(records)
    if images == 1 and records[0]["status"] == STATUS_ERROR:
        fail(f"{records[0]['image']}: {records[0]['reason']}")
    if as_json:
        print(json.dumps(records))
    elif csv_file:
        write_predictions_csv(records, predictor.classes, csv_file, show_au)
    if not (as_json or csv_file) and len(summaries) < images:  # the per-frame rows of videos: --csv / --json
        show(render.predict_table([r for r in records if "frame" not in r], predictor.checkpoint_path,
                                  predictor.classes, show_au))
    to = err_console if as_json else console
    show(*render.video_summaries(summaries), to=to)
    write_video_summaries(summaries, csv_file, save_vis)
    show(render.predict_summary(images - len(summaries), counts, csv_file, save_vis, videos=len(summaries),
                                frames=sum(v["frames"] for v in summaries)), to=to)
    if images and sum(s == {STATUS_ERROR} for s in statuses.values()) == images:
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
    show(*render.export_summary(result))
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
    show(*render.report_skipped(result), to=err_console)
    show(*render.report_summary(result))


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
    show(*render.audit_summary(result.summary, files, SUSPICION_THRESHOLDS))


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
    show(*render.clean_summary(result.summary, relabel, files, prepared_dir))


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
    show(*render.calibrate_summary(result))
