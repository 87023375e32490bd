"""`poi predict clip.mp4`: a row per face per sampled frame, faces followed as tracks.

    frame = predictor.predict_video("clip.mp4", fps=5, smooth=0.5)   # DataFrame
    for prediction in predictor.iter_video("clip.mp4"):              # live: frame by frame
        print(prediction.frame, prediction.timestamp, prediction.records)

Frames come from data.video.VideoReader (streamed: one decoded frame at a time, a batch
of `frames_per_batch` sampled frames in memory) and go through the same face
pipeline as photos (pipeline.FacePipeline.predict_chunk: detection, alignment, model, the
per-face records),
so a frame's rows are exactly the rows the same picture would give as a photo, plus:

* `frame`, `timestamp`: the frame's index among all decoded frames and its time (s);
* `track`: the face's id from tracking.IoUTracker (null on no_face rows);
* with smooth=SECONDS, `smoothed`: {expression, probabilities}, an exponential moving
  average of the track's probabilities (time constant SECONDS); the raw ones stay.

A frame without a face gives a `no_face` row, so the timeline has no holes. A video
that breaks off (corrupt, truncated) keeps its frames and ends with an `error` row whose
reason says where it stopped; a file that is no video gives one `error` row.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from poi_cli.core.progress import progress_bar
from poi_cli.core.schema import STATUS_ERROR
from poi_cli.data.video import VideoError, VideoFrame, VideoReader, VideoSampling
from poi_cli.deploy.pipeline import FacePipeline, ImagePrediction, InputItem, in_memory_image
from poi_cli.deploy.records import FaceRecord, Smoothed, VideoPosition
from poi_cli.deploy.tracking import DEFAULT_MAX_GAP, IoUTracker, TrackSmoother

FRAMES_PER_BATCH = 8  # sampled frames detected and classified together
# Frames are shrunk to this long side for detection (boxes and landmarks are mapped back,
# faces are aligned from the full frame): MTCNN's cost grows with the pixels, and a face
# under 20 px at this scale (40 px in a 1280x720 frame) is too small to read an expression.
DETECT_SIDE = 640


@dataclass(frozen=True)
class VideoOptions:
    """How a video is sampled (data.video.VideoSampling), tracked and smoothed."""

    sampling: VideoSampling = field(default_factory=VideoSampling)
    smooth: Optional[float] = None  # seconds: the time constant of the smoothing; None: none
    max_gap: float = DEFAULT_MAX_GAP  # seconds a lost face keeps its track id
    frames_per_batch: int = FRAMES_PER_BATCH
    detect_side: int = DETECT_SIDE

    def __post_init__(self) -> None:
        if self.smooth is not None and not self.smooth > 0:
            raise VideoError(f"--smooth must be a positive number of seconds, got {self.smooth}")
        if self.frames_per_batch < 1:
            raise VideoError("frames_per_batch must be at least 1")


@dataclass
class FramePrediction(ImagePrediction):
    """The records of one sampled frame (image None for the error row that ends a broken video)."""

    frame: Optional[int] = None
    timestamp: Optional[float] = None
    fps: Optional[float] = None  # the sampling rate, for an annotated video
    last: bool = False  # a video file's last prediction: it was read to its end (or to where it broke)


@dataclass
class LiveFrame(VideoFrame):
    """A frame a program handed in (a camera's): image None and `error` the reason when it is
    no image poi reads (its row is an error record; the stream goes on)."""

    error: Optional[str] = None


def _frames_of(source: Iterable[Any], fps: Optional[float], every: Optional[int]) -> Iterator[LiveFrame]:
    """Live frames (PIL images or uint8 arrays, as predict_records takes them) -> LiveFrames timed at index / fps."""
    if fps is not None and not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise VideoError(f"fps must be a positive number of frames per second, got {fps!r}")
    if every is not None and (not isinstance(every, numbers.Integral) or every < 1):
        raise VideoError(f"every must be a whole number of at least 1, got {every!r}")
    rate = fps or VideoSampling().max_fps
    for index, value in enumerate(source):
        if every and index % every:
            continue
        image, reason = (None, "a live frame is a PIL image or a uint8 array, not a file name") if isinstance(
            value, (str, os.PathLike)) else in_memory_image(value)
        yield LiveFrame(index, round(index / rate, 6), image, reason)  # type: ignore[arg-type]


def iter_video(pipeline: FacePipeline, source: Any, every: Optional[int] = None, fps: Optional[float] = None,
               start: Optional[float] = None, end: Optional[float] = None, smooth: Optional[float] = None,
               show_au: bool = False, progress: bool = False) -> Iterator[FramePrediction]:
    """Predictor.iter_video's work: a file (path) or an iterable of live frames."""
    if isinstance(source, (str, Path)):
        options = VideoOptions(VideoSampling(every=every, fps=fps, start=start, end=end), smooth=smooth)
        from rich.console import Console

        console = Console(stderr=True)
        with progress_bar(console, enabled=progress) as bar:  # drawn only on a terminal
            yield from iter_video_file(pipeline, Path(source), options, show_au, bar)
        return
    options = VideoOptions(smooth=smooth, frames_per_batch=1)  # live: each frame as soon as it comes
    yield from _predict_frames(pipeline, "<live>", _frames_of(source, fps, every), options, show_au, None, fps)


def iter_video_file(pipeline: FacePipeline, path: Path, options: VideoOptions, show_au: bool,
                    bar: Any = None) -> Iterator[ImagePrediction]:
    """The FramePredictions of one video file (a single error ImagePrediction if it is no video)."""
    source = str(path)
    try:
        reader = VideoReader(path, options.sampling)
    except VideoError as error:
        reason = str(error).removeprefix(f"{path}: ")  # a FramePrediction (frame None), as iter_video promises
        yield FramePrediction(source, None, [FaceRecord.empty(source, STATUS_ERROR, reason, show_au)], last=True)
        return
    task = None
    if bar is not None:
        task = bar.add_task(path.name, total=reader.expected_frames(), unit="frames")
    rate = options.sampling.rate(reader.info.fps)
    held = None  # one prediction behind, so that the last one goes out marked `last`
    for prediction in _predict_frames(pipeline, source, iter(reader), options, show_au, (bar, task), rate):
        if held is not None:
            yield held
        held = prediction
    if reader.stopped:
        if held is not None:
            yield held
        record = FaceRecord.empty(source, STATUS_ERROR, reader.stopped, show_au)
        held = FramePrediction(source, None, [record.on_frame(VideoPosition(reader.decoded, None))], frame=reader.decoded)
    if held is not None:
        held.last = True
        yield held
    if bar is not None:
        bar.remove_task(task)


def _predict_frames(pipeline: FacePipeline, source: str, frames: Iterator[VideoFrame], options: VideoOptions,
                    show_au: bool, progress: Any, rate: Optional[float]) -> Iterator[FramePrediction]:
    tracker = IoUTracker(max_gap=options.max_gap)
    smoother = TrackSmoother(options.smooth) if options.smooth else None
    classes = pipeline.classes
    done = 0
    batch: list[VideoFrame] = []
    finished = False
    while not finished:
        frame = next(frames, None)
        if frame is not None:
            batch.append(frame)
        finished = frame is None
        if batch and (finished or len(batch) == options.frames_per_batch):
            items = [InputItem(source, image=f.image, error=getattr(f, "error", None)) for f in batch]
            detector = pipeline.video_detector(options.detect_side) if pipeline.detect else None
            for f, prediction in zip(batch, pipeline.predict_chunk(items, show_au, detector)):
                faces = [r for r in prediction.records if r.is_face]
                tracks = iter(tracker.update([r.box for r in faces], f.timestamp))
                records = []
                for record in prediction.records:
                    track = next(tracks) if record.is_face else None
                    smoothed = None
                    if smoother is not None:
                        smoothed = Smoothed()
                        if track is not None:
                            values = smoother.update(track, f.timestamp, [record.probabilities[c] for c in classes])
                            smoothed = Smoothed(classes[int(np.argmax(values))],
                                                {c: round(float(v), 6) for c, v in zip(classes, values)})
                    records.append(record.on_frame(VideoPosition(f.index, f.timestamp, track), smoothed))
                yield FramePrediction(source, f.image, records, frame=f.index, timestamp=f.timestamp, fps=rate)
            done += len(batch)
            batch = []
            if progress is not None and progress[0] is not None:
                bar, task = progress
                bar.update(task, completed=done)


# --------------------------------------------------------------------------- summary


def video_summary(records: Iterable[FaceRecord]) -> list[dict]:
    """Per video (records with a `frame`): frames, frames with a face, and per track its span,
    dominant expression and the share of its frames per expression (the smoothed
    expression when the records are smoothed), in order of appearance."""
    summaries = VideoSummaries()
    for record in records:
        summaries.add(record)
    return summaries.summaries()


class VideoSummaries:
    """video_summary a record at a time: what `poi predict --csv` keeps of a video's rows (a few
    numbers per frame, not the records, which it writes as they come)."""

    def __init__(self) -> None:
        self.videos: dict[str, dict] = {}

    def add(self, record: FaceRecord) -> None:
        if record.video is None:
            return
        video = self.videos.setdefault(record.image, {"frames": set(), "faces": set(), "tracks": {}, "stopped": None,
                                                         "first": None, "last": None, "smoothed": False})
        if record.status == STATUS_ERROR:
            video["stopped"] = record.reason
            return
        video["frames"].add(record.video.frame)
        timestamp = record.video.timestamp
        video["first"] = timestamp if video["first"] is None else min(video["first"], timestamp)
        video["last"] = timestamp if video["last"] is None else max(video["last"], timestamp)
        if not record.is_face:
            return
        video["faces"].add(record.video.frame)
        smoothed = record.smoothed.expression if record.smoothed is not None else None
        video["smoothed"] |= smoothed is not None
        track = video["tracks"].setdefault(record.video.track, {"expressions": Counter(), "first": timestamp,
                                                                "last": timestamp})
        track["expressions"][smoothed or record.expression] += 1
        track["last"] = timestamp

    def summaries(self) -> list[dict]:
        summaries = []
        for source, video in self.videos.items():
            tracks = []
            for track_id, track in video["tracks"].items():
                total = sum(track["expressions"].values())
                shares = {name: round(count / total, 4) for name, count in track["expressions"].most_common()}
                tracks.append({"track": track_id, "frames": total, "first": track["first"], "last": track["last"],
                               "dominant": next(iter(shares)), "share": shares})
            summaries.append({
                "video": source, "frames": len(video["frames"]), "frames_with_face": len(video["faces"]),
                "start": video["first"], "end": video["last"], "tracks": tracks,
                "expressions_from": "smoothed" if video["smoothed"] else "raw",
                # frames analysed, none with a face (a video that gave no frame is `stopped`, not faceless)
                "no_face": bool(video["frames"]) and not video["faces"], "stopped": video["stopped"],
            })
        return summaries


def csv_summary_path(csv_file: str | Path) -> Path:
    """The videos' summaries beside `--csv FILE`: FILE.summary.json (rows.csv.summary.json), one
    name per CSV (rows.csv and rows.tsv shared rows.summary.json: one run's replaced the other's)."""
    return Path(f"{csv_file}.summary.json")


def is_video_summary(path: str | Path) -> bool:
    """`path` holds summaries `poi predict` wrote for videos: one (the --save-vis folder's) or a
    list (beside the CSV), each an object with the video and its tracks."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    values = values if isinstance(values, list) else [values]
    return bool(values) and all(isinstance(v, dict) and "video" in v and "tracks" in v for v in values)


def write_video_summaries(summaries: Sequence[dict], csv_file: Optional[str | Path] = None,
                          vis_name: Optional[Callable[[str], Path]] = None) -> list[Path]:
    """The summaries as JSON: beside the CSV (csv_summary_path, all videos) and in the
    --save-vis folder (`vis_name(video)`: VisWriter's <video stem>_summary.json, numbered
    as its pictures are); atomically. Without videos nothing, and the summary poi wrote beside
    an earlier CSV of that name is removed with the rows it described."""
    from poi_cli.core.atomic import write_json

    written: list[Path] = []
    if csv_file and not summaries:  # the CSV was written anew: a summary of the videos it held is stale
        stale = csv_summary_path(csv_file)
        if stale.is_file() and is_video_summary(stale):
            stale.unlink()
    if not summaries:
        return written
    if csv_file:
        path = csv_summary_path(csv_file)
        write_json(path, list(summaries))
        written.append(path)
    if vis_name is not None:
        for summary in summaries:
            path = vis_name(summary["video"])
            write_json(path, summary)
            written.append(path)
    return written
