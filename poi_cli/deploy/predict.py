"""`poi predict`: every face in every image -> expression, confidence and action units.

    predictor = Predictor()                              # the bundled model; or an .onnx file, or a runner
    records = predictor.predict_records(["photo.jpg", "album/"], show_au=True)   # the JSON form
    frame = predictor.predict(["photo.jpg"])             # a pandas DataFrame, a row per face (needs pandas)
    for prediction in predictor.iter_predictions(["a.jpg", "clip.mp4"]): ...     # typed: FaceRecord

This is the deploy runtime: it imports no torch (tests/test_deploy.py runs it with torch
blocked). The model is a runner (deploy/runner.py: ModelRunner): ONNX Runtime on an
exported .onnx file, or, when poi_cli/backends.py is asked for a `.pt` checkpoint and torch
is installed, the torch runner (model/runner.py), used the same way. The stages (load,
detect, align, model, records) are deploy/pipeline.py's; Predictor drives them over files,
folders and globs (overlap.py: threads ahead of the model) and videos (video.py).

Per face the record (deploy/records.FaceRecord) holds the expression and (POI_SPEC 4b):
* `probabilities`: the calibrated class probabilities softmax(log p / T_cal), p the model's
  prediction recipe (the TRN's softmax(z) by default, or its mean with the PIN's p~* and / or
  over the face and its mirror) and T_cal from the model (1 for an uncalibrated one, which
  a note says); the runner computes them;
* `confidence`: the largest of them, a calibrated probability that the expression is right;
* `consistency`: the UEM's w of Eq. 10, how much the four facial regions of the PIN agree,
  from 0 (maximally split) to 1 (all see the same expression); None for a baseline model.
  It flags ambiguous faces; it is not a probability of being right;
* `regions_agree`: how many of the four regions' own expressions are the predicted one
  (0-4), and `pin_expression`: the argmax of the PIN's p~* at T = 1; None without them.
With show_au, each AU's occurrence probability in each region that carries it (eye AUs:
left_eye, right_eye; mouth AUs: left_mouth, right_mouth; "left" is image-left; the table
is data_manifests/regions.json) and the four regions' own expression distributions
p_n = softmax(t_n / T_uem), the distributions w is computed from.

Video files (data.video.VIDEO_SUFFIXES) go frame by frame through the same pipeline
(deploy/video.py): their records add `frame`, `timestamp` and `track`. With detect=False
(`--no-detect`) every image or frame is taken whole as one face and its record says
`detector: none`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from itertools import groupby, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

from poi_cli.core.atomic import is_stream
from poi_cli.core.errors import TRAIN_EXTRA_HINT, PoiError, one_line
from poi_cli.core.layout import no_checkpoint_message, run_checkpoint
from poi_cli.core.progress import progress_bar
from poi_cli.core.schema import STATUS_ERROR
from poi_cli.core.threads import DEFAULT_WORKERS
from poi_cli.deploy.overlap import iter_overlapped
from poi_cli.deploy.pipeline import (FacePipeline, ImageInput, ImagePrediction, InputItem, PipelineError, as_inputs,
                                     check_pipeline_options, iter_input_items)
from poi_cli.deploy.records import (FaceRecord, PredictionsCsv, RecordsError, import_pandas, records_to_frame,
                                    shown_name, status_counts)
from poi_cli.deploy.runner import ModelFileError, ModelRunner, OnnxRunner, written_by_torch_save
from poi_cli.deploy.video import (FramePrediction, VideoOptions, VideoSummaries, iter_video, iter_video_file,
                                  write_video_summaries)
from poi_cli.deploy.visualize import VisWriter

if TYPE_CHECKING:
    import pandas as pd

MODEL_ENV = "POI_MODEL"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"
ONNX_SUFFIX = ".onnx"
NO_MODEL_MESSAGE = (
    "no model: pass --model MODEL (an .onnx file from `poi export --full`, or a checkpoint) or set POI_MODEL; "
    "this installation bundles no model (see 'Getting a model' in docs/predict.md of the source repository)"
)


class PredictError(PoiError):
    """Prediction cannot start (no model, bad model file, bad option); one-line message."""


# ---------------------------------------------------------------------- model choice


def bundled_model(suffix: str = ONNX_SUFFIX) -> Optional[Path]:
    """The model shipped inside the package with this suffix (poi_cli/weights/, first by name), if any."""
    if not BUNDLED_DIR.is_dir():
        return None
    found = sorted(p for p in BUNDLED_DIR.glob(f"*{suffix}") if p.is_file() and p.parent == BUNDLED_DIR)
    return found[0] if found else None


def is_bundled(path: str | Path) -> bool:
    """Whether this model file is one the package ships (poi_cli/weights/, not its mtcnn/)."""
    return Path(path).resolve().parent == BUNDLED_DIR


def resolve_model(model: Optional[str | Path] = None, suffix: str = ONNX_SUFFIX) -> Path:
    """--model, else $POI_MODEL, else the bundled model of this suffix (.onnx for ONNX
    Runtime, .pt for torch; the other one when only it is bundled), else PredictError
    saying how to get one. A folder given is a run folder: one without its checkpoint is
    PredictError too, with or without torch."""
    for value, origin in ((model, "--model"), (os.environ.get(MODEL_ENV) or None, MODEL_ENV)):
        if value:
            path = Path(value)
            if not path.exists():
                raise PredictError(f"{origin}: no such model file or run folder: {path}")
            if path.is_dir() and run_checkpoint(path) is None:  # before asking for torch to read a folder of nothing
                raise PredictError(f"{origin}: {no_checkpoint_message(path)}")
            return path
    bundled = bundled_model(suffix) or bundled_model(".pt" if suffix == ONNX_SUFFIX else ONNX_SUFFIX)
    if bundled is None:
        raise PredictError(NO_MODEL_MESSAGE)
    return bundled


def open_onnx_model(model: Optional[str | Path] = None, threads: Optional[int] = None, batch_size: int = 32) -> OnnxRunner:
    """The deploy runtime's model: an .onnx file (resolve_model's fallbacks) on ONNX Runtime.
    A torch checkpoint or run folder is refused with the two ways to run it."""
    if model is not None and not str(model).strip():
        raise PredictError("model: an empty name (give an .onnx file, or None for the bundled model)")
    path = resolve_model(model)
    if path.is_file() and path.suffix.lower() != ONNX_SUFFIX and not written_by_torch_save(path):
        raise PredictError(f"{path} is not a model file: give an .onnx from `poi export --full` (or, with torch, "
                           "a .pt checkpoint or a run folder)")
    if path.is_dir() or path.suffix.lower() != ONNX_SUFFIX:
        raise PredictError(f"{path} is a PyTorch checkpoint or run folder: running it needs torch ({TRAIN_EXTRA_HINT}), "
                           f"or export it once with `poi export {path} --format onnx --full`")
    try:
        return OnnxRunner(path, threads=threads, batch_size=batch_size)
    except ModelFileError as error:
        raise PredictError(str(error)) from None


# ------------------------------------------------------------------------- predictor


class Predictor(FacePipeline):
    """A model plus a face detector: images, folders, globs and videos in, one typed record
    per face out (deploy/records.FaceRecord).

    model: a runner (deploy/runner.ModelRunner: an OnnxRunner, or the torch runner that
    poi_cli/backends.py builds), or an .onnx path; None resolves --model's fallbacks
    ($POI_MODEL, then the bundled model). The other options are FacePipeline's
    (deploy/pipeline.py): detector, batch sizes, min_face_score, detect, workers, threads.
    """

    def __init__(self, model: "ModelRunner | str | Path | None" = None, detector: Any = "mtcnn", batch_size: int = 32,
                 images_per_batch: int = 8, min_face_score: float = 0.95, detect: bool = True,
                 workers: int = DEFAULT_WORKERS, threads: Optional[int] = None) -> None:
        try:  # the options first: a bad one is not the model file's fault
            check_pipeline_options(detector, batch_size, images_per_batch, min_face_score, workers, threads)
        except PipelineError as error:
            raise PredictError(str(error)) from None
        runner = (model if hasattr(model, "run") and hasattr(model, "classes")
                  else open_onnx_model(model, threads=threads, batch_size=batch_size))
        try:
            super().__init__(runner, detector, batch_size, images_per_batch, min_face_score, detect, workers, threads)  # type: ignore[arg-type]
        except PipelineError as error:
            raise PredictError(str(error)) from None

    # -- public API

    def predict(self, inputs: ImageInput | Sequence[ImageInput], show_au: bool = False, progress: bool = False) -> pd.DataFrame:
        """A DataFrame with a row per face (and per no_face / error image): the columns of `poi
        predict --csv` for the same inputs (records.flat_columns; the video ones when a video is
        among them, as PredictionsCsv has them). Needs pandas (PredictError before the work)."""
        self._need_pandas()
        items = list(iter_input_items(as_inputs(inputs)))
        records = [r for p in self.iter_predictions(items, show_au, progress, keep_images=False) for r in p.records]
        return self._frame(records, show_au, video=any(item.is_video for item in items))

    def predict_records(self, inputs: ImageInput | Sequence[ImageInput], show_au: bool = False,
                        progress: bool = False) -> list[dict]:
        """The nested records (the JSON form of `poi predict --json`)."""
        return [r.to_dict() for p in self.iter_predictions(inputs, show_au, progress, keep_images=False) for r in p.records]

    def iter_predictions(self, inputs: ImageInput | Iterable[ImageInput], show_au: bool = False,
                         progress: bool = False, video: "Optional[VideoOptions]" = None,
                         keep_images: bool = True) -> Iterator[ImagePrediction]:
        """ImagePredictions in input order, a chunk of images at a time (memory stays bounded:
        a generator of inputs is read as the chunks are taken, so an endless one streams).
        keep_images=False: each prediction's `.image` is None (the decoded picture is let go once
        its faces are cut out, so large photos waiting for the model hold their faces only).

        A video file gives one video.FramePrediction per sampled frame (video: how to
        sample, track and smooth it; VideoOptions() by default)."""
        inputs = as_inputs(inputs)
        counted = isinstance(inputs, (list, tuple))  # a generator's length is not known: no total on the bar
        items: Iterable[InputItem] = list(iter_input_items(inputs)) if counted else iter_input_items(inputs)
        from rich.console import Console

        console = Console(stderr=True)  # stdout stays clean for --json
        total = sum(not item.is_video for item in items) if counted else None  # type: ignore[union-attr]
        with progress_bar(console, enabled=progress) as bar:  # drawn only on a terminal
            task = bar.add_task("images", total=total, visible=total is None or total > 0)
            for is_video, run in groupby(items, key=lambda item: item.is_video):
                if is_video:
                    for item in run:
                        yield from iter_video_file(self, item.path, video or VideoOptions(), show_au, bar)
                    continue
                for prediction in self._predict_images(run, show_au, keep_images):
                    yield prediction
                    bar.advance(task, 1)

    def predict_video(self, path: str | Path, every: Optional[int] = None, fps: Optional[float] = None,
                      start: Optional[float] = None, end: Optional[float] = None, smooth: Optional[float] = None,
                      show_au: bool = False, progress: bool = False) -> pd.DataFrame:
        """A DataFrame with a row per face per sampled frame (frame, timestamp, track; see
        deploy/video.py), a no_face row for a frame without a face. Needs pandas (PredictError
        before the work)."""
        self._need_pandas()
        records = [r for p in self.iter_video(path, every, fps, start, end, smooth, show_au, progress) for r in p.records]
        return self._frame(records, show_au, video=True)  # frame, timestamp, track also for a video that cannot be read

    def iter_video(self, source: "str | Path | Iterable[ImageInput]", every: Optional[int] = None,
                   fps: Optional[float] = None, start: Optional[float] = None, end: Optional[float] = None,
                   smooth: Optional[float] = None, show_au: bool = False, progress: bool = False) -> Iterator[ImagePrediction]:
        """video.FramePredictions one sampled frame at a time, as they are analysed (live use).

        source: a video file, or any iterable of frames (PIL images or uint8 arrays, e.g.
        from a camera); for those, `fps` is their rate (timestamps = index / fps; default
        the sampling cap) and every frame is analysed unless `every` says otherwise."""
        return iter_video(self, source, every=every, fps=fps, start=start, end=end, smooth=smooth,
                          show_au=show_au, progress=progress)

    # -- driving the stages

    def _predict_images(self, items: Iterable[InputItem], show_au: bool, keep_images: bool) -> Iterator[ImagePrediction]:
        """Images (no videos) in input order: overlapped when workers > 0 (its window reads
        ahead), else in chunks of images_per_batch."""
        if self.workers > 0:
            yield from iter_overlapped(self, items, show_au, self.workers, keep_images)
            return
        items = iter(items)
        while chunk := list(islice(items, self.images_per_batch)):
            yield from self.predict_chunk(chunk, show_au, keep_images=keep_images)

    @staticmethod
    def _need_pandas() -> None:
        """The DataFrame methods check for pandas first: without it, the work would be lost."""
        try:
            import_pandas()
        except RecordsError as error:
            raise PredictError(str(error)) from None

    def _frame(self, records: Sequence[Any], show_au: bool, video: Optional[bool] = None) -> "pd.DataFrame":
        try:
            return records_to_frame(records, self.classes, show_au, video)
        except RecordsError as error:
            raise PredictError(str(error)) from None


# ------------------------------------------------------------------ `poi predict` as a whole


# which records predict_files keeps in memory (PredictRun.records): all (--json, the library),
# the images' (the terminal table, which shows no video frame), or none (--csv: the rows are in
# the file; a long video's records would otherwise grow by about 7 KB a face with --show-au)
KEEP_ALL, KEEP_IMAGES, KEEP_NONE = "all", "images", "none"
INTERRUPTED = "interrupted (Ctrl-C)"  # the `stopped` of the video being read when the run was stopped


@dataclass
class PredictRun:
    """What `poi predict` did: the records it kept (`keep`), how many of each status, the
    first record, per input the statuses of its records (a video's frames share one input),
    which inputs were videos (also one that could not be opened, which has no summary), the
    video summaries, and whether Ctrl-C stopped it."""

    records: list[FaceRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: status_counts([]))
    first: Optional[FaceRecord] = None
    statuses: dict[str, set[str]] = field(default_factory=dict)
    videos: set[str] = field(default_factory=set)
    summaries: list[dict] = field(default_factory=list)
    interrupted: bool = False
    pictures_in: Optional[Path] = None  # the --save-vis folder, once it could be made

    @property
    def inputs(self) -> int:
        return len(self.statuses)

    @property
    def images(self) -> int:
        return len(self.statuses) - len(self.videos)

    @property
    def kept(self) -> str:
        """What an interrupted run kept: `3 inputs`, or, where it stopped in a video, `2 inputs and
        the frames of clip.mp4 read before the stop` (that video may not have been read to its end)."""
        last = next(reversed(self.statuses), None)
        if last is None or last not in self.videos:
            return f"{self.inputs} input{'' if self.inputs == 1 else 's'}"
        before = self.inputs - 1
        return (f"{before} input{'' if before == 1 else 's'} and " if before else "") + f"the frames of {last} read before the stop"

    @property
    def has_records(self) -> bool:
        return self.first is not None

    @property
    def none_readable(self) -> bool:
        """Every input failed (the exit status is then 1, whatever else happened)."""
        return bool(self.statuses) and all(s == {STATUS_ERROR} for s in self.statuses.values())


def _stop_pictures(writer: VisWriter, error: OSError, run: PredictRun, note: Callable[[str], None]) -> None:
    """A picture or video that cannot be written stops the pictures (with a note; the video
    being written is removed), not the predictions: returns the writer's replacement, None."""
    note(f"--save-vis stopped: {one_line(error)}")
    writer.abandon()
    if not writer.written:  # the summary names the folder only when it holds a picture
        run.pictures_in = None
    return None


def predict_files(predictor: Predictor, items: Sequence[InputItem], show_au: bool = False,
                  csv_file: Optional[str | Path] = None, save_vis: Optional[str | Path] = None,
                  protected: Sequence[Path] = (), video: Optional[VideoOptions] = None, progress: bool = True,
                  note: Callable[[str], None] = lambda text: None, keep: str = KEEP_ALL) -> PredictRun:
    """`poi predict` once the model is loaded: every input predicted in order, its rows
    appended to csv_file (PredictionsCsv) and its pictures written to save_vis as they come (a
    picture that cannot be written stops the pictures, with a note, not the predictions),
    then the video summaries.

    Ctrl-C ends the run with interrupted=True keeping what finished (the CSV's rows of the
    inputs done, the video being annotated). protected: every file the run reads; no
    picture is written over one. keep: which records stay in PredictRun.records (KEEP_ALL,
    KEEP_IMAGES, KEEP_NONE; the counts and summaries cover every record)."""
    if keep not in (KEEP_ALL, KEEP_IMAGES, KEEP_NONE):
        raise ValueError(f"keep must be {KEEP_ALL!r}, {KEEP_IMAGES!r} or {KEEP_NONE!r}, got {keep!r}")
    run = PredictRun()
    summaries = VideoSummaries()
    video_sources = {item.source for item in items if item.is_video}
    ended: set[str] = set()  # the videos read to their end (or to where they broke)
    table = None if not csv_file else PredictionsCsv(
        csv_file, predictor.classes, show_au, video=bool(video_sources),
        smoothed=bool(video_sources) and video is not None and video.smooth is not None)
    writer = None  # None once the pictures stopped
    if save_vis:
        try:
            writer = VisWriter(save_vis, show_au, protected=protected)
            run.pictures_in = Path(save_vis)
        except OSError as error:  # a file where the folder should be, no permission: predict anyway
            note(f"--save-vis {save_vis}: no pictures, the folder cannot be made ({one_line(error)})")
    finished = False
    try:
        # the pictures are drawn on (--save-vis) or let go once their faces are cut out
        for prediction in predictor.iter_predictions(items, show_au, progress=progress, video=video,
                                                     keep_images=writer is not None):
            run.statuses.setdefault(prediction.source, set()).update(r.status for r in prediction.records)
            if prediction.source in video_sources:
                run.videos.add(prediction.source)
                if isinstance(prediction, FramePrediction) and prediction.last:
                    ended.add(prediction.source)
            status_counts(prediction.records, into=run.counts)
            for record in prediction.records:
                run.first = run.first or record
                summaries.add(record)
                if keep == KEEP_ALL or (keep == KEEP_IMAGES and record.video is None):
                    run.records.append(record)
            if table is not None:
                table.append(prediction.records)
            if writer is not None:
                try:
                    writer.write(prediction)
                except OSError as error:  # a full disk, a read-only folder: the predictions go on
                    if error.errno == errno.ENAMETOOLONG and not isinstance(prediction, FramePrediction):
                        # this photo's name alone: the next photos' pictures still come
                        note(f"--save-vis: no picture of {shown_name(prediction.source)}: {one_line(error)}")
                    else:
                        writer = _stop_pictures(writer, error, run, note)
        finished = True
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        if table is not None:  # what finished is in it already; a failed run leaves its rows too
            table.close(finished)
    vis_name = None  # the summaries' names in the --save-vis folder, while it takes files
    if writer is not None:
        try:
            writer.close()
        except OSError as error:  # the video's last frames or its timeline: the CSV and summaries still come
            writer = _stop_pictures(writer, error, run, note)
    if writer is not None:
        for text in [*writer.notes, writer.kept_note()]:
            if text:
                note(text)
        vis_name = writer.summary_path
    run.summaries = summaries.summaries()
    if run.interrupted:  # the summaries of the rows kept: the video read when Ctrl-C came says so
        for summary in run.summaries:
            if summary["video"] not in ended and summary["stopped"] is None:
                summary["stopped"] = INTERRUPTED
    # beside a CSV file this run wrote (one it left as it was keeps its summary); none beside a
    # stream (/dev/stdout.summary.json)
    rewritten = table is not None and table.opened and not is_stream(csv_file)
    write_video_summaries(run.summaries, csv_file if rewritten else None, vis_name)
    return run
