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
import math
import os
import shlex
import signal
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, get_type_hints

import typer
from rich.console import Console

from poi_cli import __version__, render
from poi_cli.core.errors import FACENET_HINT, NEEDS_TRAIN_EXTRA, TRAIN_EXTRA_HINT, PoiError, one_line, torch_installed
from poi_cli.core.schema import STATUS_EXCLUDED, STATUS_MISSING, STATUS_OK
from poi_cli.core.layout import CONFIG_FILE
from poi_cli.core.threads import DEFAULT_WORKERS, THREADS_ENV, THREADS_HELP

app = typer.Typer(
    name="poi",
    help="Noise-robust facial expression recognition with POI (Prior-based Objective Inference).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # as git, pip and yolo take it
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error and exit non-zero (no traceback for bad input)."""
    # escaped: a message may hold brackets (pip install 'poi-fer[train]', a file name) that are not markup
    err_console.print(f"[bold red]error:[/] {escape_markup(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# What a command needs beyond the deploy runtime (`pip install poi-fer`), by the module
# that fails to import: the one-line message of run() for a command whose extra is missing.
EXTRA_HINTS = {
    **dict.fromkeys(("torch", "torchvision", "pandas", "matplotlib", "onnx"), TRAIN_EXTRA_HINT),
    "facenet_pytorch": FACENET_HINT,
}


def train_command(name: Optional[str] = None) -> Callable[[Callable[..., None]], Any]:
    """@app.command() of a command that needs the train extra. Where torch is not installed
    (the deploy install: found or not, never imported) its line in `poi --help` ends with
    NEEDS_TRAIN_EXTRA and its own --help names the pip command, so the list says what runs
    here before a command is tried; with torch, the help is the docstring alone."""
    def register(command: Callable[..., None]) -> Any:
        if torch_installed():
            return app.command(name)(command)
        doc = inspect.getdoc(command) or ""
        summary = doc.split("\n\n")[0]
        # escaped: the help is rich markup, where [train] would be a tag and vanish
        return app.command(name, short_help=escape_markup(f"{summary} {NEEDS_TRAIN_EXTRA}"),
                           help=escape_markup(f"{doc}\n\nNeeds the train extra, which is not installed: {TRAIN_EXTRA_HINT}"))(command)
    return register


def run(prog_name: str = "poi") -> None:
    """The `poi` entry point: the Typer app; SIGTERM (timeout, docker stop, systemd) stops a
    command as Ctrl-C does, so what it finished is kept (KeyboardInterrupt: each command's
    `interrupted` path); a command whose extra is not installed is stopped with one line
    naming the pip command, and an output that cannot be written where no command caught
    it (stdout on a full disk) with one line, never a traceback."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            app(prog_name=prog_name)
        finally:
            sys.stdout.flush()  # here, where a full disk is one line (at exit Python only warns, exit 120)
    except ModuleNotFoundError as error:
        module = (error.name or "").split(".")[0]
        if module not in EXTRA_HINTS:
            raise
        _exit_with(f"this command needs {module}, which is not installed: {EXTRA_HINTS[module]}")
    except OSError as error:  # click already answers a closed pipe (EPIPE) by exiting quietly
        # what stdout still holds goes nowhere, so that the exit does not fail on it again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _exit_with(f"stopped: {one_line(error)}")
    except UnicodeEncodeError as error:  # PYTHONIOENCODING=ascii, a C locale: a name it cannot print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _exit_with(f"stopped: the output's encoding ({error.encoding}) cannot show {error.object[error.start:error.end]!a}: "
                   "set PYTHONIOENCODING=utf-8 (or a UTF-8 locale)")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _exit_with(message: str) -> None:
    """fail() outside a Typer command: its exit status as SystemExit."""
    try:
        fail(message)
    except typer.Exit as exit_:
        raise SystemExit(exit_.exit_code) from None


def escape_markup(text: str) -> str:
    """Text printed as is by rich (brackets such as poi-fer[train] are not markup)."""
    from rich.markup import escape

    return escape(text)


@contextmanager
def user_errors(interrupted: str = "interrupted", unexpected: Optional[str] = None) -> Iterator[None]:
    """The one place where a command's errors become one line and a non-zero exit.

    PoiError is every error a user can cause (core/errors.py); ValueError covers bad
    option values (DeviceError is one) and OSError the files (permission, disk full).
    Ctrl-C exits 130 with `interrupted` (what was kept, where to resume). unexpected: for
    the commands that run third-party code (an exporter, a detector), any other exception
    is reported as one line starting with this text instead of a traceback.
    """
    try:
        yield
    except (typer.Exit, UnicodeEncodeError):  # an output that cannot show a name: run() says how to fix it
        raise
    except (PoiError, ValueError, OSError) as error:
        fail(one_line(error))
    except KeyboardInterrupt:
        fail(interrupted, 130)
    except Exception as error:
        if unexpected is None:
            raise
        fail(f"{unexpected}: {type(error).__name__}: {one_line(error)}")


def threads_option() -> Any:
    """The --threads option of every compute command (one definition)."""
    return typer.Option(None, "--threads", min=1, help=THREADS_HELP, rich_help_panel="Performance")


def backend_option() -> Any:
    """--backend of `poi predict` and `poi serve` (one definition; poi_cli/backends.py decides)."""
    return typer.Option("auto", "--backend", help="What runs the model: auto (ONNX Runtime on the CPU for an .onnx "
                        "model, the bundled one by default; torch for a .pt checkpoint or a GPU), onnx (a .pt is "
                        "exported in memory first), or torch (needs the train extra).", rich_help_panel="Performance")


def batch_option() -> Any:
    """--batch of the commands that run a checkpoint over a prepared split (`poi train` has its own)."""
    return typer.Option(256, min=1, help="Images per batch.")


def amp_option() -> Any:
    """--amp of the commands that run a checkpoint over a prepared split (`poi train` has its own, in TrainConfig)."""
    return typer.Option("auto", help="bf16 autocast: auto (bf16 where the CPU or GPU has it), bf16 or off (float32, "
                                     "as the deploy runtime computes).")


def check_amp(amp: str) -> None:
    """--amp checked before the work, where a command may end up running no model (report
    without --data, clean of an audit.csv); one line, as core.runtime.use_bf16 says it."""
    from poi_cli.core.schema import check_amp as check  # not core.runtime's use_bf16: that imports torch

    with user_errors():
        check(amp)


def device_option(default: str = "auto", onnx: bool = False, when: str = "") -> Any:
    """--device of every command that runs a model (one definition; core.runtime.select_device's
    choices); onnx: the command also runs .onnx models (predict, serve), which run on the CPU;
    when: the command runs one only then (`with --data`)."""
    return typer.Option(default, "--device", help=f"{when.capitalize() + ': ' if when else ''}auto, cpu, cuda or mps "
                        "(auto: CUDA, else MPS, else the CPU" + ("; an .onnx model runs on the CPU)." if onnx else ")."))


def detector_option() -> Any:
    """--detector of `poi predict`, `poi serve` and `poi prepare` (one definition)."""
    return typer.Option("mtcnn", "--detector", help="mtcnn (MTCNN run by ONNX Runtime, no torch) or mtcnn-torch "
                        "(the same networks through facenet-pytorch; needs the train extra).")


def use_threads(threads: Optional[int], import_torch: bool = True) -> int:
    """Apply --threads / $POI_THREADS before any tensor work (poi_cli.core.threads);
    import_torch=False for the deploy commands (predict, serve), which run without torch."""
    from poi_cli.core.threads import configure_threads

    with user_errors():
        return configure_threads(threads, import_torch)
    raise AssertionError("unreachable: user_errors exits")


def show(*items: render.Item, to: Optional[Console] = None) -> None:
    """Print render's tables and lines, in order (on stdout unless `to` says otherwise).

    A `render.Line` is printed as a string with its own highlight and soft_wrap; one
    print per item, so lines never run together.
    """
    to = to or console
    for item in items:
        if isinstance(item, render.Line):
            to.print(item.text, highlight=item.highlight, soft_wrap=item.soft_wrap, markup=False, emoji=False)
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


@train_command()
def info(
    arch: str = typer.Option("resnet18", help="Backbone: resnet18, resnet34, resnet50, or resnet10 (one block per stage; the bundled model)."),
    classes: int = typer.Option(7, "--classes", min=2, help="Number of expression classes (FER datasets: 7 or 8)."),
    size: int = typer.Option(224, help="Input size in pixels (a multiple of 16 from 64 to 448)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Parameter counts and GFLOPs (multiply-accumulates) of the training model and the deployed TRN."""
    from poi_cli.model.info import model_info

    with user_errors():
        result = model_info(arch=arch, num_classes=classes, input_size=size)
    if as_json:
        print(json.dumps(result))
        return
    show(render.info_table(result, arch, classes, size))


@train_command()
def prepare(
    dataset: str = typer.Argument(..., metavar="DATASET", help="raf-db, ferplus, affectnet, ckplus, sfew or folder (one sub-folder per class)."),
    raw_dir: str = typer.Argument(..., metavar="RAW_DIR", help="The dataset as downloaded (official layout); only read."),
    out: str = typer.Option(..., "--out", help="Folder for manifest.csv, faces.npy and prepared.json."),
    size: int = typer.Option(224, help="Side of the stored square faces, in pixels (32 to 1024)."),
    detect: Optional[bool] = typer.Option(None, "--detect/--no-detect", help="Run MTCNN (default: per dataset; off where faces ship cropped)."),
    detector: str = detector_option(),
    device: str = typer.Option("cpu", help="Torch device of --detector mtcnn-torch."),
    batch_size: int = typer.Option(32, "--batch", "--batch-size", help="Images per detection batch (--batch, as in every other command)."),
    splits: Optional[str] = typer.Option(None, help="Comma-separated splits to prepare (default: all found; valid or validation name val, training train)."),
    folds: Optional[int] = typer.Option(None, help="Subject-independent folds of train, a fold column for `poi train --fold` (default: 10 for CK+, none elsewhere; 0 for none)."),
    fold_seed: int = typer.Option(0, help="Seed of --folds and --test-fraction."),
    test_fraction: float = typer.Option(0.0, help="Move a random, class-stratified share of train to split test instead of folds (0.2: the POI paper's CK+ 8:2, image-level)."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Detect, align and store a dataset's faces for training (resumable; see docs/datasets.md in the source repository)."""
    use_threads(threads)
    from poi_cli.data.prepare import prepare as run_prepare

    chosen = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    # unexpected: e.g. the detector cannot start: still one line, never a traceback
    with user_errors(f"interrupted: finished images are saved in {out}; run the same command again to resume",
                     unexpected="prepare failed"):
        result = run_prepare(dataset, raw_dir, out, size=size, detect=detect, device=device, detector=detector,
                             batch_size=batch_size, splits=chosen, folds=folds, fold_seed=fold_seed,
                             test_fraction=test_fraction)
    show(*render.prepare_summary(dataset, result))
    statuses = Counter()
    for per_split in result.counts.values():
        statuses.update(per_split)
    if not statuses.get(STATUS_OK):  # an empty store trains nothing: most often RAW_DIR is not the folder the layout starts in
        found = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "no image"
        hint = (f": is {raw_dir} the folder docs/datasets.md (in the source repository) names for {dataset}?"
                if set(statuses) <= {STATUS_MISSING, STATUS_EXCLUDED} else " (the manifest's reason column says why)")
        fail(f"no face was stored in {out} ({found}){hint}")


@train_command()
def noise(
    prepared_dir: str = typer.Argument(..., metavar="PREPARED_DIR", help="A folder written by `poi prepare`."),
    rate: float = typer.Option(..., help="Probability of flipping each label (0..1), e.g. 0.2."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives byte-identical files."),
    split: str = typer.Option("train", help="Split whose labels are flipped."),
    out: Optional[str] = typer.Option(None, help="Label file to write (default PREPARED_DIR/labels/<split>_noise<pct>_seed<seed>.csv)."),
    subset: Optional[int] = typer.Option(None, help="Keep only this many images (a seeded random choice; the others "
                                                    "are labelled -1, left out of training): a reduced study."),
    subset_seed: int = typer.Option(0, help="Seed of --subset's choice (independent of --seed)."),
) -> None:
    """Symmetric label noise: write a label file for `poi train --labels` (the manifest is not changed)."""
    from poi_cli.data.noise import write_noisy_labels

    with user_errors():
        path, summary = write_noisy_labels(prepared_dir, rate, seed=seed, split=split, out=out,
                                           subset=subset, subset_seed=subset_seed)
    show(*render.noise_summary(path, summary, rate, seed))


@train_command()
def combine(
    prepared_dirs: list[str] = typer.Argument(..., metavar="PREPARED_DIR", help="Two or more folders written by `poi prepare` (same --size); only read."),
    out: str = typer.Option(..., "--out", help="The combined folder to write (prepared.json and manifest.csv; no faces are copied)."),
    weights: Optional[str] = typer.Option(None, help="Comma-separated sampling weights, one per folder: each training image "
                                                     "of a folder is drawn this many times per epoch on average (default 1 each)."),
) -> None:
    """Several prepared datasets as one for `poi train` (classes matched by name, validation per dataset)."""
    from poi_cli.data.combined import combine as run_combine, member_summary, parse_weights

    with user_errors():
        root = run_combine(prepared_dirs, out, parse_weights(weights, len(prepared_dirs)))
        show(*render.combine_summary(root, *member_summary(root)))


from poi_cli.train import config as _train_config  # plain dataclass, no torch: the options of `poi train`


def _config_parameter(f: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    """The Typer parameter of a TrainConfig field, from its metadata (help, section, flags)."""
    meta, default = f.metadata, _train_config.field_default(f)
    panel = meta["section"].capitalize()
    if meta["argument"]:
        info = typer.Argument(None, metavar=meta["argument"].upper(), help=meta["help"], show_default=False)
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
    parameters = [_config_parameter(f, hints[f.name]) for f in _config_cli_fields()]
    parameters.append(inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=threads_option(),
                                        annotation=Optional[int]))
    command.__signature__ = inspect.Signature(parameters)
    return command


def _config_from_options(options: dict[str, Any]) -> "_train_config.TrainConfig":
    """The TrainConfig of parsed `poi train` options (None: the field's default)."""
    values = {}
    for f in _config_cli_fields():
        value = options[f.metadata["argument"] or f.name]
        if value is not None:
            values[f.name] = not value if f.metadata["invert"] else value
    return _train_config.TrainConfig(**values)


def _ignored_by_resume(config: Any) -> list[str]:
    """The options given with --resume that differ from the run's own (which --resume keeps;
    only --device may change): `--epochs 5 (the run's: 40)`. Options left at their defaults
    cannot be told from ones not given, and name nothing."""
    try:
        saved = _train_config.TrainConfig.from_dict(json.loads((Path(config.resume) / CONFIG_FILE).read_text()))
    except (OSError, ValueError, TypeError, AttributeError):
        return []  # no readable config.json: resume itself says so
    defaults, ignored = _train_config.TrainConfig(), []
    for f in _config_cli_fields():
        given, own = getattr(config, f.name), getattr(saved, f.name)
        if f.name in ("resume", "device") or given == getattr(defaults, f.name):
            continue
        if f.metadata.get("path") or f.name == "data":
            given, own = (None if v is None else str(Path(v).resolve()) for v in (given, own))
        if given != own:
            flag = f.metadata["argument"].upper() if f.metadata["argument"] else (
                f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",))[0]
            ignored.append(flag if isinstance(given, bool) else f"{flag} {given} (the run's: {own})")
    return ignored


def _threads_of_run(run_dir: Optional[str]) -> Optional[int]:
    """The CPU threads a run to --resume trained with (its config.json's resolved.threads; none
    before poi recorded them), read without torch: they are applied before torch starts."""
    if not run_dir:
        return None
    try:
        threads = json.loads((Path(run_dir) / CONFIG_FILE).read_text())["resolved"]["threads"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return threads if isinstance(threads, int) and threads >= 1 else None


@train_command()
@_with_config_options
def train(**options: Any) -> None:
    """Train POI (or the baseline / an ablation) on a prepared dataset; see docs/training.md in the source repository."""
    threads, recorded = options.pop("threads", None), _threads_of_run(options.get("resume"))
    from_env = bool(os.environ.get(THREADS_ENV, "").strip())
    count = use_threads(recorded if threads is None and not from_env and recorded else threads)
    if recorded and count != recorded:
        show(render.Line(f"note: {options['resume']} trained with {recorded} CPU thread{'s' * (recorded > 1)}; with "
                         f"{count} its numbers differ from a run never stopped (--threads {recorded} keeps them)", soft_wrap=True),
             to=err_console)
    with user_errors():
        config = _config_from_options(options)
    if not config.data and config.resume is None:
        fail("give a prepared folder (PREPARED_DIR) or --resume RUN_DIR")
    if config.resume:
        ignored = _ignored_by_resume(config)
        if ignored:
            show(render.Line(f"note: --resume continues {config.resume} with its own options; ignored: "
                             f"{', '.join(ignored)} (a new run takes them; --fine-tune starts one from this run)", soft_wrap=True),
                 to=err_console)
        # and ignored they are: neither checked (--soft-labels --noise was refused after this note)
        # nor acted on (--fold all went to the cross-validation, which refuses --resume)
        config = _train_config.TrainConfig(resume=config.resume, device=config.device)
    from poi_cli.pipeline import train_folds, train_rounds
    from poi_cli.train.engine import TrainingInterrupted

    announce = lambda line: show(render.Line(line))  # noqa: E731
    # --fold all refuses --resume (pipeline.train_folds): the same command again is what resumes it
    interrupted = ("interrupted: finished folds and epochs are saved; run the same command again to resume"
                   if config.fold == _train_config.ALL_FOLDS else
                   "interrupted: finished epochs are saved; continue with --resume RUN_DIR")
    with user_errors(interrupted):
        if config.fold == _train_config.ALL_FOLDS:
            summary = train_folds(config, console=console, announce=announce)
            show(*render.folds_summary(summary))
            return
        try:
            run_dir = train_rounds(config, console=console, announce=announce)[-1]
        except KeyboardInterrupt as error:  # the folder is known: name it in the command that continues
            stop = TrainingInterrupted.within(error)  # also after a second Ctrl-C during the first one's cleanup
            if stop is None:
                raise
            fail(f"interrupted: finished epochs are saved in {stop.run_dir}; continue with "
                 f"`poi train --resume {shlex.quote(str(stop.run_dir))}`", 130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        from poi_cli.train.run_folder import run_summary

        show(render.train_done(run_dir, run_summary(run_dir)))


@train_command()
def evaluate(
    model: str = typer.Argument(..., metavar="RUN_DIR_OR_CKPT", help="A run folder (its best.pt) or a checkpoint file."),
    prepared_dir: str = typer.Argument(..., metavar="PREPARED_DIR", help="A folder written by `poi prepare`."),
    split: Optional[str] = typer.Option(None, help="Split to evaluate (fold3: fold 3's held-out images). Default: a --fold run's own fold, else test, else valid/val, else the images the run held out of train."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    out: Optional[str] = typer.Option(None, help="Folder for metrics.json, confusion_matrix.csv and .png, reliability.png, risk_coverage.png (default runs/evaluate/exp, numbered)."),
    device: str = device_option(),
    batch: int = batch_option(),
    amp: str = amp_option(),
    threads: Optional[int] = threads_option(),
) -> None:
    """Accuracy, per-class recall, confusion matrix, calibration of confidence and consistency, strata and PIN accuracies of a model."""
    use_threads(threads)
    from poi_cli.core.atomic import command_output_folder
    from poi_cli.study.evaluate import EVALUATE_OUTPUTS, evaluate as run_evaluate, write_reports

    with user_errors(), command_output_folder(out, "--out", "runs/evaluate", EVALUATE_OUTPUTS) as out_dir:  # before the work
        result = run_evaluate(model, prepared_dir, split=split, device=device, batch=batch, amp=amp)
        files = write_reports(result, out_dir)
    if as_json:
        print(json.dumps(result))
        return
    show(*render.evaluate_summary(result, files))


@app.command()
def predict(
    inputs: list[str] = typer.Argument(..., metavar="INPUT", help="Image or video files, folders (searched recursively) or glob patterns."),
    model: Optional[str] = typer.Option(None, "--model", help="An .onnx file from `poi export --full`, a checkpoint or a run folder (default: $POI_MODEL, then the bundled model)."),
    show_au: bool = typer.Option(False, "--show-au", help="Add AU probabilities per region and the regions' own expression distributions."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of per-face records to stdout (not with --csv)."),
    csv_file: Optional[str] = typer.Option(None, "--csv", help="Write one row per face (flat columns) to this CSV file, as they come (not with --json)."),
    save_vis: Optional[str] = typer.Option(None, "--save-vis", help="Folder for annotated PNGs (boxes, expression, probability, consistency, AU bars)."),
    device: str = device_option(onnx=True),
    detector: str = detector_option(),
    batch: int = typer.Option(32, min=1, help="Faces per model batch."),
    min_score: float = typer.Option(0.95, "--min-score", min=0.0, max=1.0, help="Drop detections scored below this (MTCNN's false positives score about 0.8-0.92)."),
    no_detect: bool = typer.Option(False, "--no-detect", "--aligned", help="Take each image or frame whole as one face (already-cropped faces, e.g. FER datasets); no detector."),
    every: Optional[int] = typer.Option(None, "--every", help="Video: analyse every N-th frame (not with --fps).", rich_help_panel="Video"),
    fps: Optional[float] = typer.Option(None, "--fps", help="Video: analyse F frames per second (default: every frame, at most 10 per second; not with --every).", rich_help_panel="Video"),
    start: Optional[float] = typer.Option(None, "--start", help="Video: first second to analyse.", rich_help_panel="Video"),
    end: Optional[float] = typer.Option(None, "--end", help="Video: second to stop at.", rich_help_panel="Video"),
    smooth: Optional[float] = typer.Option(None, "--smooth", help="Video: add each track's probabilities smoothed over SECONDS (exponential moving average); raw values stay.", rich_help_panel="Video"),
    backend: str = backend_option(),
    workers: int = typer.Option(DEFAULT_WORKERS, "--workers", min=0, help="Threads that load, detect and align images ahead of the model, which runs on batches of faces from many images (0: the sequential path, one chunk of 8 images at a time).", rich_help_panel="Performance"),
    threads: Optional[int] = threads_option(),
) -> None:
    """Expression, confidence (calibrated probability), consistency (UEM w) and action units of every face in images and videos; see docs/predict.md in the source repository."""
    use_threads(threads, import_torch=False)
    from contextlib import ExitStack

    from poi_cli.core.atomic import is_stream, output_file, refuse_input_as_output
    from poi_cli.core.locks import claim
    from poi_cli.data.video import VideoSampling
    from poi_cli.backends import open_runner
    from poi_cli.deploy.pipeline import expand_inputs
    from poi_cli.deploy.predict import Predictor
    from poi_cli.deploy.records import is_predictions_csv, shown_name
    from poi_cli.deploy.video import VideoOptions, csv_summary_path, is_video_summary

    if as_json and csv_file:
        fail("--json and --csv exclude each other: choose one output")
    for option, value in (("--csv", csv_file), ("--save-vis", save_vis)):
        if value is not None and not value.strip():
            fail(f"{option} needs a name")
    # Expanded once: every file read, after glob and folder expansion (no output may land on
    # one of them), is also what is predicted.
    repeated: list[Path] = []
    skipped: list[Path] = []
    items = expand_inputs(inputs, on_repeat=repeated.append, skip=_own_pictures_in(save_vis, skipped))
    if skipped:  # `poi predict photos --save-vis photos/vis` again: its pictures are no new photos
        files = f"{len(skipped)} file{'s' if len(skipped) > 1 else ''} that poi wrote"
        show(*render.note_lines([f"{files} in --save-vis {save_vis} (e.g. {shown_name(str(skipped[0]))}) "
                                 f"{'are' if len(skipped) > 1 else 'is'} not read as input"], soft_wrap=True),
             to=err_console)
    input_files = [item.path for item in items if item.path is not None]
    if repeated:  # each file is predicted once: say so, or its other names seem to vanish from the rows
        names = f"{len(repeated)} name{'s' if len(repeated) > 1 else ''} (given twice, or found in a folder)"
        show(*render.note_lines([f"{names} reach{'' if len(repeated) > 1 else 'es'} a file already read (e.g. "
                                 f"{shown_name(str(repeated[0]))}: a link, or the same file again): each file is "
                                 "predicted once, under its first name"], soft_wrap=True), to=err_console)
    model_file = model or os.environ.get("POI_MODEL")  # read too: never written over
    with ExitStack() as held:
        with user_errors():
            if save_vis:  # a file where the folder (or one above it) should be: known before the work
                blocking = next((p for p in (Path(save_vis), *Path(save_vis).parents) if p.exists() and not p.is_dir()), None)
                if blocking is not None:
                    fail(f"--save-vis {save_vis}: {blocking} is a file, not a folder: give a folder for the pictures")
            if csv_file:
                if Path(csv_file).is_dir():
                    fail(f"--csv {csv_file} is a folder: give the CSV file's name")
                refuse_input_as_output(csv_file, [*input_files, *([model_file] if model_file else [])], "--csv")
                # written in place, row by row (PredictionsCsv): no temp file
                output_file(csv_file, "--csv", replaces=("a CSV `poi predict` wrote", is_predictions_csv), atomic=False)
                if not is_stream(csv_file) and any(item.is_video for item in items):  # summaries beside the CSV
                    summary = csv_summary_path(csv_file)
                    refuse_input_as_output(summary, [*input_files, *([model_file] if model_file else [])], "--csv")
                    output_file(summary, "--csv", replaces=("a video summary `poi predict` wrote", is_video_summary))
            video = VideoOptions(VideoSampling(every=every, fps=fps, start=start, end=end), smooth=smooth)
            runner = open_runner(model, backend=backend, device=device, threads=threads, batch_size=batch)
            predictor = Predictor(runner, detector=detector, batch_size=batch, min_face_score=min_score,
                                  detect=not no_detect, workers=workers, threads=threads)
            # one writer per CSV and per pictures folder (two runs' face_poi.png replaced each other),
            # claimed once nothing can refuse the run (a refused run left the folders made for the
            # lock: `--csv new/sub/rows.csv` with a missing model left new/sub); /dev/stdout or a pipe
            # has no lock file beside it; a dangling link is not followed (the note of a folder that
            # cannot be made says so)
            if csv_file and not is_stream(csv_file):
                held.enter_context(claim(csv_file, "--csv"))
            if save_vis and not (os.path.islink(save_vis) and not os.path.exists(save_vis)):
                try:
                    held.enter_context(claim(save_vis, "--save-vis", inside=True))
                except OSError:  # the folder cannot be made: predict_files says so and predicts without pictures
                    pass
        _predict_and_write(predictor, items, input_files, show_au, as_json, csv_file, save_vis, video)


def _own_pictures_in(save_vis: Optional[str], skipped: list[Path]) -> Optional[Callable[[Path], bool]]:
    """expand_inputs' skip for `poi predict`: the pictures, videos and summaries poi wrote in the
    --save-vis folder (an input folder holding it would predict them), each added to `skipped`."""
    if not save_vis:
        return None
    from poi_cli.core.atomic import real_path
    from poi_cli.deploy.visualize import is_own_output

    folder = real_path(save_vis)

    def skip(path: Path) -> bool:
        if folder in real_path(path).parents and is_own_output(path):
            skipped.append(path)
            return True
        return False

    return skip


def _predict_and_write(predictor: Any, items: list[Any], input_files: list[Path], show_au: bool, as_json: bool,
                       csv_file: Optional[str], save_vis: Optional[str], video: Any) -> None:
    """The body of `poi predict` once the model is loaded (and the CSV claimed): the
    library's predict_files, then what it did, printed."""
    from poi_cli.core.atomic import is_stream
    from poi_cli.deploy.predict import KEEP_ALL, KEEP_IMAGES, KEEP_NONE, is_bundled, predict_files

    show(*render.note_lines(predictor.notes, soft_wrap=True), to=err_console)
    note = lambda text: show(*render.note_lines([text], soft_wrap=True), to=err_console)  # noqa: E731
    with user_errors():  # the detector cannot start: one line
        # the records --json prints, the images' for the table, none for --csv (its rows are in the file)
        keep = KEEP_ALL if as_json else KEEP_NONE if csv_file else KEEP_IMAGES
        run = predict_files(predictor, items, show_au, csv_file, save_vis, input_files, video, note=note, keep=keep)
    # One rule for one bad input and many: the records (error ones included) are always
    # written, and the exit status is 1 when no input could be read. Interrupted, the
    # finished records are printed as a whole JSON list, as --csv keeps them.
    if as_json and (run.has_records or not run.interrupted):
        print(json.dumps([r.to_dict() for r in run.records]))
    if run.interrupted:
        if csv_file and run.has_records:
            fail(f"interrupted: the records of {run.kept} are in {csv_file}", 130)
        if as_json and run.has_records:
            fail(f"interrupted: the records of {run.kept} are printed", 130)
        fail("interrupted", 130)
    if not as_json and not csv_file and len(run.summaries) < run.inputs:  # videos' per-frame rows: --csv / --json
        show(render.predict_table(run.records, predictor.model_path, predictor.classes, show_au,
                                  bundled=is_bundled(predictor.model_path)))
    if run.none_readable:
        if run.inputs == 1:
            fail(f"{run.first.image}: {run.first.reason}")
        fail(f"none of the {run.inputs} inputs could be read")
    # the rows alone on stdout when they go there (--json, --csv /dev/stdout): the rest on stderr
    to = err_console if as_json or (csv_file and is_stream(csv_file)) else console
    show(*render.video_summaries(run.summaries), to=to)
    show(render.predict_summary(run.images, run.counts, csv_file, run.pictures_in,
                                videos=len(run.videos), frames=sum(v["frames"] for v in run.summaries)), to=to)


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", help="An .onnx file from `poi export --full`, a checkpoint or a run folder (default: $POI_MODEL, then the bundled model)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface, e.g. in Docker)."),
    port: int = typer.Option(8000, help="TCP port."),
    device: str = device_option(onnx=True),
    detector: str = detector_option(),
    min_score: float = typer.Option(0.95, "--min-score", min=0.0, max=1.0, help="Drop detections scored below this (as in poi predict)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body, in MiB (413 above)."),
    max_pixels: float = typer.Option(40.0, "--max-megapixels", help="Largest image, in megapixels (413 above; at most 100)."),
    max_files: int = typer.Option(16, "--max-files", help="Images per request (400 above)."),
    max_request_pixels: float = typer.Option(160.0, "--max-request-megapixels", help="All images of one request together, in megapixels (413 above)."),
    max_in_flight: int = typer.Option(64, "--max-in-flight", help="Requests whose body has arrived, served at once (429 above)."),
    max_client_mb: Optional[float] = typer.Option(None, "--max-client-mb", help="Request bodies one client address may have the server hold at once, in MiB (503 above; default 64, or --max-upload-mb where larger; at most 256, the server's total). Behind a proxy that does not pass on the client's address, every client is the proxy: raise it to 256."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds a request's body may take to arrive after its headers (408 after; at least 1)."),
    backend: str = backend_option(),
    threads: Optional[int] = threads_option(),
) -> None:
    """An HTTP JSON API: POST /predict (images as multipart field `files`), GET /health, /model, /docs; see docs/serve.md in the source repository."""
    use_threads(threads, import_torch=False)
    from poi_cli.backends import open_runner
    from poi_cli.deploy.predict import Predictor
    from poi_cli.deploy.serve import MiB, ServeLimits, serve as run_serve

    for flag, value in (("--max-upload-mb", max_upload_mb), ("--max-megapixels", max_pixels), ("--max-files", max_files),
                        ("--max-request-megapixels", max_request_pixels), ("--max-in-flight", max_in_flight),
                        ("--body-timeout", body_timeout), *((("--max-client-mb", max_client_mb),) if max_client_mb is not None else ())):
        if not 0 < value < math.inf:  # named as the user typed it, before ServeLimits converts it (nan fails too)
            fail(f"{flag} must be a positive number, got {value:g}")
    converted = {"--max-upload-mb": (max_upload_mb, MiB, "byte"), "--max-megapixels": (max_pixels, 1e6, "pixel"),
                 **({"--max-client-mb": (max_client_mb, MiB, "byte")} if max_client_mb is not None else {}),
                 "--max-request-megapixels": (max_request_pixels, 1e6, "pixel")}
    whole = {flag: int(value * unit) for flag, (value, unit, _) in converted.items()}
    for flag, (value, _, unit_name) in converted.items():
        if whole[flag] < 1:
            fail(f"{flag} {value:g} is less than one {unit_name}")
    with user_errors():
        limits = ServeLimits(max_request_bytes=whole["--max-upload-mb"], max_files=max_files,
                             max_pixels=whole["--max-megapixels"], max_request_pixels=whole["--max-request-megapixels"],
                             max_in_flight=max_in_flight, body_timeout_s=body_timeout,
                             max_client_buffered_bytes=whole.get("--max-client-mb"))
        runner = open_runner(model, backend=backend, device=device, threads=threads)
        predictor = Predictor(runner, detector=detector, min_face_score=min_score, images_per_batch=limits.batch_images,
                              threads=threads)
    show(*render.note_lines(predictor.notes, soft_wrap=True), to=err_console)
    warn = lambda text: err_console.print(f"[yellow]warning:[/] {escape_markup(text)}", highlight=False,  # noqa: E731
                                          soft_wrap=True)
    with user_errors():  # a bad port, an address in use: ServeError, one line
        try:
            run_serve(predictor, host=host, port=port, limits=limits, warn=warn)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM, re-raised by older uvicorns once shut down: a server's end
            pass
        err_console.print("server stopped", highlight=False)  # uvicorn 0.55 returns after its own shutdown


@train_command()
def export(
    checkpoint: str = typer.Argument(..., metavar="CKPT", help="A checkpoint file or a run folder (its best.pt)."),
    format: str = typer.Option("onnx", "--format", help="onnx, torchscript, or weights (packed fp16 TRN + PIN weights, a checkpoint poi predict reads)."),
    full: bool = typer.Option(False, "--full", help="The full model (calibrated probabilities, confidence, consistency, AUs) instead of the deployed TRN alone."),
    out: Optional[str] = typer.Option(None, "--out", help="File to write (default beside the checkpoint: best.trn.onnx, best.full.torchscript.pt, best.fp16.pt, ...)."),
    tolerance: Optional[float] = typer.Option(None, help="Largest accepted difference from PyTorch on random input (default 1e-3; 1e-2 for weights)."),
    opset: int = typer.Option(17, min=13, help="ONNX opset, from 13 up to the highest the installed torch exports."),
    fp16_weights: bool = typer.Option(False, "--fp16-weights", help="ONNX: store the weights as float16 (half the file), computed in float32; how the bundled .onnx is made from the bundled fp16 checkpoint."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Export to ONNX, TorchScript or packed fp16 weights and check the result against PyTorch; see docs/predict.md in the source repository."""
    use_threads(threads)
    from poi_cli.model.export import export_model

    with user_errors(unexpected="export failed"):  # an exporter failure: one line, never a traceback
        result = export_model(checkpoint, format=format, full=full, out=out, tolerance=tolerance, opset=opset,
                              fp16_weights=fp16_weights)
    show(*render.export_summary(result))
    if not result.passed:
        why = ("; --fp16-weights rounds float32 weights, and the check compares with the float32 model: pack it "
               "first (`--format weights`) and export that, or raise --tolerance") if fp16_weights else ""
        fail(f"the exported model differs from PyTorch by {result.max_diff:.2e} > {result.tolerance:g}, so {result.path} "
             f"was not written{why}")


@train_command()
def report(
    run_dirs: Optional[list[str]] = typer.Argument(None, metavar="RUN_DIR", help="Run folders, or folders of runs (default: runs/train)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for report.md, CSVs and PNGs (default runs/report/exp, numbered)."),
    data: Optional[str] = typer.Option(None, "--data", help="A prepared folder: predict it with each run's best.pt for confusion matrices, consistency histograms, strata and calibration figures."),
    split: Optional[str] = typer.Option(None, help="Split of --data to predict (fold3: fold 3's held-out images; default: the one `poi evaluate` picks per run: a --fold K run's own held-out fold, else test, else valid/val). A run is not scored on a split it trained on (a note says so)."),
    device: str = device_option(when="with --data"),
    batch: int = batch_option(),
    amp: str = amp_option(),
    threads: Optional[int] = threads_option(),
) -> None:
    """Tables (final / best accuracy, noise, ablations, calibration, confidence and consistency strata) and plots of training runs; see docs/predict.md in the source repository."""
    use_threads(threads)
    check_amp(amp)
    from poi_cli.core.atomic import command_output_folder
    from poi_cli.study.report import REPORT_OUTPUTS, build_report

    with user_errors(), command_output_folder(out, "--out", "runs/report", REPORT_OUTPUTS) as out_dir:
        result = build_report(run_dirs or [], out_dir, data=data, split=split, device=device, amp=amp, batch=batch)
    show(*render.report_skipped(result), to=err_console)
    show(*render.report_summary(result))


@train_command()
def audit(
    model: str = typer.Argument(..., metavar="RUN_DIR_OR_CKPT", help="A POI run folder (its best.pt) or checkpoint; the PIN's objective inference scores the labels."),
    prepared_dir: str = typer.Argument(..., metavar="PREPARED_DIR", help="A folder written by `poi prepare`."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label file to audit (default: the labels the run trained on, else the manifest's)."),
    split: str = typer.Option("train", help="Split to audit (the training split, or a held-out one)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="A baseline run: adds its per-image loss (small-loss trick) as a reference score."),
    out: Optional[str] = typer.Option(None, help="Folder for audit.csv, audit_summary.json, contact_sheet.png (default runs/audit/exp, numbered)."),
    cross_fit: int = typer.Option(0, "--cross-fit", help="Score out of fold (0, or K of 2 or more; not with --labels, --baseline or --split): train K models with the run's recipe, each leaving a K-th of its training split out (under OUT/crossfit/, resumable). 0: the run itself scores its own training set."),
    device: str = device_option(),
    batch: int = batch_option(),
    amp: str = amp_option(),
    threads: Optional[int] = threads_option(),
) -> None:
    """Rank every labelled image by how strongly the PIN's objective inference disagrees with its label; see docs/audit.md in the source repository."""
    use_threads(threads)
    from poi_cli.study.audit import AUDIT_OUTPUTS, SUSPICION_THRESHOLDS, audit as run_audit, write_audit
    from poi_cli.core.atomic import command_output_folder

    if cross_fit and (labels or baseline or split != "train"):
        fail("--cross-fit audits the labels the run trained on, on its training split: drop --labels, --baseline and --split")
    with (user_errors("interrupted: finished fold models are kept; run the same command again to resume"),
          command_output_folder(out, "--out", "runs/audit", AUDIT_OUTPUTS) as out_dir):
        if cross_fit:
            from poi_cli.pipeline import cross_fit_audit

            result = cross_fit_audit(model, prepared_dir, cross_fit, out_dir, device, batch, console)
        else:
            result = run_audit(model, prepared_dir, labels_file=labels, split=split, baseline=baseline, device=device, batch=batch,
                               amp=amp)
        files = write_audit(result, out_dir)
    show(*render.audit_summary(result.summary, files, SUSPICION_THRESHOLDS))


@train_command()
def clean(
    audit_or_run: str = typer.Argument(..., metavar="AUDIT_CSV_OR_RUN", help="An audit.csv from `poi audit` (or its folder), or a POI run folder / checkpoint (audited first)."),
    prepared_dir: str = typer.Argument(..., metavar="PREPARED_DIR", help="The prepared folder the audit is of (only read)."),
    out: str = typer.Option(..., "--out", help="The label file to write (.csv; its summary goes beside it as .json)."),
    relabel: bool = typer.Option(True, "--relabel/--drop", help="Relabel the suspects to the PIN's suggested label, or leave them out of training."),
    threshold: Optional[float] = typer.Option(None, help="Select images with suspicion >= this, in (0, 1] (suspicion lies in [0, 1]). One of --threshold, --fraction and --auto."),
    fraction: Optional[float] = typer.Option(None, help="Select this fraction of the images (of those the run trained on, not its held-out ones), in [0, 1], most suspect first. One of --threshold, --fraction and --auto."),
    auto: bool = typer.Option(False, "--auto", help="Relabel the fraction chosen on the validation split: its labels "
                                                    "flipped at the noise rate the audit implies, the fraction that leaves "
                                                    "the fewest wrong (docs/audit.md in the source repository; not with --drop)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="With a run: the label file to audit (default: the labels it trained on)."),
    split: Optional[str] = typer.Option(None, help="The split the audit covers (default: an audit.csv's own, from its summary; else train)."),
    device: str = device_option(when="with a run"),
    batch: int = batch_option(),
    amp: str = amp_option(),
    threads: Optional[int] = threads_option(),
) -> None:
    """Turn an audit into a label file for `poi train --labels`: relabel or drop the most suspect images."""
    use_threads(threads)
    check_amp(amp)
    from poi_cli.core.atomic import output_file, refuse_input_as_output, refuse_poi_file
    from poi_cli.data.store import label_file_outputs
    from poi_cli.study.clean import clean as run_clean, clean_inputs, write_clean

    with user_errors():
        # the label file and its summary beside it: never over anything this command reads,
        # nor any prepared or run folder's own file
        for written in label_file_outputs(out):
            refuse_input_as_output(written, [prepared_dir, *clean_inputs(audit_or_run), *([labels] if labels else [])], "--out")
            refuse_poi_file(written, "--out")
        output_file(out, "--out")
        result = run_clean(audit_or_run, prepared_dir, "relabel" if relabel else "drop", threshold, fraction,
                           labels_file=labels, split=split, device=device, auto=auto, amp=amp, batch=batch)
        files = write_clean(result, out)
    show(*render.clean_summary(result.summary, relabel, files, prepared_dir))


@train_command()
def calibrate(
    model: str = typer.Argument(..., metavar="RUN_DIR_OR_CKPT", help="A run folder (its best.pt) or a checkpoint."),
    prepared_dir: str = typer.Argument(..., metavar="PREPARED_DIR", help="A prepared folder with the model's classes."),
    split: Optional[str] = typer.Option(None, help="Split to fit on (default valid, else val; on a store with neither, the images the model's run held out of its training split). Never test, nor fold K for a run trained with --fold K: fitting on the images a model is scored on makes those figures optimistic. A store whose only labelled split is test: calibrate on the validation split of the store the model trained on (T_cal carries over; `poi evaluate` measures calibration on test honestly)."),
    out: Optional[str] = typer.Option(None, help="Where to write the calibrated copy (default <checkpoint>.calibrated.pt beside it; not with --in-place)."),
    in_place: bool = typer.Option(False, "--in-place", help="Rewrite the checkpoint itself (atomically) instead of a copy."),
    fusion: str = typer.Option("auto", help="Reported probabilities: trn (the TRN alone), trn+pin (the mean of the TRN's and the PIN's p~* at T = 1) or auto (the one with the lowest NLL after temperature scaling on the split; ties to the cheaper)."),
    flip: str = typer.Option("auto", help="Average over the image and its mirror: on, off or auto (chosen with --fusion on the split; a mirror doubles the model's work)."),
    device: str = device_option(),
    batch: int = batch_option(),
    amp: str = amp_option(),
    threads: Optional[int] = threads_option(),
) -> None:
    """Choose how the reported probabilities are made (TRN or TRN + PIN, with or without the mirror) and fit the temperature T_cal that makes `confidence` a calibrated probability after it; store both in the checkpoint."""
    use_threads(threads)
    from poi_cli.study.calibrate import calibrate as run_calibrate

    with user_errors():
        result = run_calibrate(model, prepared_dir, split=split, out=out, in_place=in_place, device=device, batch=batch,
                               fusion=fusion, flip=flip, amp=amp)
    show(*render.calibrate_summary(result))


@train_command("refit-head")
def refit_head(
    model: str = typer.Argument(..., metavar="RUN_DIR_OR_CKPT", help="A run folder (its best.pt) or a checkpoint."),
    prepared_dir: str = typer.Argument(..., metavar="PREPARED_DIR", help="The prepared (or combined) folder whose training split the head is fitted on and whose validation split chooses it."),
    out: Optional[str] = typer.Option(None, help="Where to write the model with the new head (default beside the checkpoint: best.pt -> best.refit.pt; never the checkpoint itself)."),
    class_power: str = typer.Option("0,0.25,0.5", help="Class balance q to try, comma-separated: each image weighs N_class^-q (0: as the data is; 1: every class the same total weight)."),
    l2: str = typer.Option("1e-05,0.0001", "--l2", help="Pull of the new weights towards the trained ones, comma-separated values to try."),
    select: str = typer.Option("accuracy", help="accuracy or recall: choose the head by the validation split's accuracy or its mean class recall (a combined folder: the mean over its members)."),
    split: Optional[str] = typer.Option(None, help="Split to choose on (default valid, else val; never train or test)."),
    device: str = device_option(),
    batch: int = batch_option(),
    amp: str = amp_option(),
    threads: Optional[int] = threads_option(),
) -> None:
    """Fit the TRN's classifier again on the frozen features it reads (layer4, pooled) of the training images, class-balanced, chosen on validation (cRT); then `poi calibrate` the new file."""
    use_threads(threads)
    from poi_cli.train.head_refit import parse_grid, refit_head as run_refit

    with user_errors():
        result = run_refit(model, prepared_dir, out=out, class_powers=parse_grid(class_power, "--class-power"),
                           l2s=parse_grid(l2, "--l2"), select=select, split=split, device=device, batch=batch, amp=amp,
                           announce=lambda line: show(render.Line(line, soft_wrap=True)))
    show(*render.refit_summary(result))


if __name__ == "__main__":  # `python -m poi_cli.cli` as `python -m poi_cli` (it printed nothing and exited 0)
    run(prog_name="poi")
