"""Video files in, sampled RGB frames out, streamed (PyAV; its wheels carry FFmpeg).

    reader = VideoReader("clip.mp4", VideoSampling(fps=5, start=2.0, end=10.0))
    for frame in reader:                  # VideoFrame(index, timestamp, image), one at a time
        ...
    if reader.stopped:                    # a corrupt or truncated file: where and why it ended
        print(reader.stopped)

Frames are decoded one at a time and only the sampled ones are converted to RGB, so
memory does not grow with the video's length. `index` counts every decoded frame from
the start of the file (0-based, whether sampled or not) and `timestamp` is its
presentation time in seconds from the first frame, so rows of several runs with other
sampling line up.

Sampling (VideoSampling): `every=N` keeps every N-th frame from the first one in
[start, end); `fps=F` keeps the first frame at or after each tick of a 1/F-second grid
starting at `start`; neither: every frame up to DEFAULT_MAX_FPS, above which the video is
sampled at DEFAULT_MAX_FPS (expressions change over a tenth of a second or more, and the
detector is the expensive part).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from poi_cli.core.errors import PoiError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp", ".ogv"})
DEFAULT_MAX_FPS = 10.0  # the default sampling: every frame, up to this rate


class VideoError(PoiError):
    """A file that cannot be opened as a video (not a video, no video stream); one line."""


# A frame belongs to [start, end) unless it lies past end by more than time-base rounding.
END_SLACK = 1e-3
SLACK_FRAMES = 9  # the frame intervals whose median is a frame's length for the sampling slack


def is_video_path(path: str | Path) -> bool:
    """True for a file name with a video suffix (VIDEO_SUFFIXES)."""
    return Path(str(path)).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoSampling:
    """Which frames to analyse: every N-th, or F per second (not both), within [start, end) seconds."""

    every: Optional[int] = None
    fps: Optional[float] = None
    start: Optional[float] = None
    end: Optional[float] = None
    max_fps: float = DEFAULT_MAX_FPS  # the default rate cap when neither every nor fps is given

    def __post_init__(self) -> None:
        for flag, value in (("--fps", self.fps), ("--start", self.start), ("--end", self.end)):
            if value is not None and not math.isfinite(value):
                raise VideoError(f"{flag} must be a number of {'frames per second' if flag == '--fps' else 'seconds'}, "
                                 f"got {value}")
        if self.every is not None and self.fps is not None:
            raise VideoError("--every and --fps exclude each other: choose one")
        if self.every is not None and self.every < 1:
            raise VideoError(f"--every must be at least 1, got {self.every}")
        if self.fps is not None and not self.fps > 0:
            raise VideoError(f"--fps must be positive, got {self.fps}")
        if self.start is not None and self.start < 0:
            raise VideoError(f"--start must be 0 or more seconds, got {self.start}")
        if self.end is not None and not self.end > 0:  # the first frame is at 0 s: nothing would be analysed
            raise VideoError(f"--end must be a positive number of seconds, got {self.end}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise VideoError(f"--end ({self.end} s) must come after --start ({self.start} s)")

    def rate(self, video_fps: Optional[float]) -> Optional[float]:
        """The sampling rate in frames per second (None: every N-th frame of an unknown rate)."""
        if self.fps is not None:
            return self.fps if not video_fps else min(self.fps, video_fps)
        if self.every is not None:
            return video_fps / self.every if video_fps else None
        return min(video_fps, self.max_fps) if video_fps else self.max_fps

    def step(self) -> Optional[float]:
        """Seconds between sampling ticks (None: every N-th frame). Not capped at the video's
        average rate: a variable-rate video's fast parts are sampled at the rate asked for (a
        slower part gives every frame, as a slower video does)."""
        if self.every is not None:
            return None
        return 1.0 / (self.fps if self.fps is not None else self.max_fps)

    def describe(self, video_fps: Optional[float]) -> str:
        """`every frame (25 fps)`, `5 fps`, `every 3rd frame (8.3 fps)`: for the terminal."""
        if self.every is not None:
            rate = f" ({video_fps / self.every:.3g} fps)" if video_fps else ""
            return f"every frame{rate}" if self.every == 1 else f"every {self.every} frames{rate}"
        rate = self.rate(video_fps)
        if self.fps is None and video_fps and rate == video_fps:
            return f"every frame ({video_fps:.3g} fps)"
        return f"{rate:.3g} fps" + ("" if self.fps is not None else f" (default cap; the video has {video_fps:.3g} fps)" if video_fps else "")


@dataclass
class VideoFrame:
    """One sampled frame: its index among all decoded frames, its time in seconds, RGB pixels."""

    index: int
    timestamp: float
    image: Image.Image


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream (any value may be unknown: None)."""

    fps: Optional[float]
    frames: Optional[int]
    duration: Optional[float]
    width: int
    height: int


# a display rotation that is a multiple of 90 degrees: an exact transpose, no resampling
QUARTER_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, -180: Image.Transpose.ROTATE_180,
                 -90: Image.Transpose.ROTATE_270, 270: Image.Transpose.ROTATE_270}


def upright_frame(image: Image.Image, rotation: int) -> Image.Image:
    """A decoded frame as a player shows it: turned by its display matrix's rotation (degrees
    counterclockwise, PyAV's VideoFrame.rotation). A phone's portrait video stores landscape
    frames with a rotation of -90: read as stored, every face lay on its side and the detector
    found none (images are turned upright by their EXIF orientation the same way)."""
    if not rotation:
        return image
    if rotation in QUARTER_TURNS:
        return image.transpose(QUARTER_TURNS[rotation])
    return image.rotate(rotation, expand=True)


class VideoReader:
    """Iterate the sampled frames of a video file, decoding one frame at a time.

    Opening raises VideoError when the file is no video. A stream that breaks off
    (corrupt data, a truncated file) ends the iteration instead: the frames before are
    kept and `stopped` says where and why (None after a clean end).
    """

    def __init__(self, path: str | Path, sampling: Optional[VideoSampling] = None) -> None:
        import av

        self.path = Path(path)
        self.sampling = sampling or VideoSampling()
        if not self.path.is_file():
            raise VideoError(f"{self.path}: file not found")
        try:
            self._container = av.open(str(self.path), mode="r")
        except Exception as error:  # av.FFmpegError (InvalidDataError...), OSError
            raise VideoError(f"{self.path}: not a video FFmpeg can read ({_reason(error)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path}: the file has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-parallel decoding: decoding stays far below detection's cost
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / 1_000_000  # AV_TIME_BASE
        self.info = VideoInfo(fps=float(rate) if rate else None, frames=int(stream.frames) or None,
                              duration=duration, width=stream.codec_context.width, height=stream.codec_context.height)
        self.stopped: Optional[str] = None
        self.decoded = 0  # frames decoded so far (sampled or not)
        self.last_timestamp: Optional[float] = None

    def expected_frames(self) -> Optional[int]:
        """About how many frames the sampling will give (for a progress bar), None if unknown."""
        duration = self.info.duration
        if duration is None and self.info.frames and self.info.fps:
            duration = self.info.frames / self.info.fps
        if duration is None:
            return None
        start = self.sampling.start or 0.0
        end = min(duration, self.sampling.end) if self.sampling.end is not None else duration
        rate = self.sampling.rate(self.info.fps)
        return max(0, math.ceil((end - start) * rate)) if rate else None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[VideoFrame]:
        sampling, fps = self.sampling, self.info.fps
        start = sampling.start or 0.0
        step = sampling.step()
        # A frame counts for a tick from half a frame before it (timestamps are rounded to the
        # container's time base, and a camera's jitter them): half the median of the last
        # frames' intervals, not of the average frame (a variable-rate video's average frame
        # can be longer than a tick), and at most half a tick.
        intervals: deque[float] = deque(maxlen=SLACK_FRAMES)
        next_tick, first_kept, kept, reached_end = start, None, 0, False
        origin: Optional[float] = None
        frames = self._container.decode(self._stream)
        try:
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except Exception as error:  # av.FFmpegError mid-stream: corrupt or cut data
                    self.stopped = self._where(f"decoding failed ({_reason(error)})")
                    break
                index = self.decoded
                self.decoded += 1
                time = frame.time
                if time is None:
                    time = index / fps if fps else float(index)
                if origin is None:
                    origin = time  # some containers start at a non-zero time
                timestamp = round(time - origin, 6)
                if self.last_timestamp is not None and timestamp <= self.last_timestamp:
                    # Presentation times out of order (AVI with B-frames stores none): count frames.
                    timestamp = round(self.last_timestamp + (1.0 / fps if fps else 1.0), 6)
                if self.last_timestamp is not None:
                    intervals.append(timestamp - self.last_timestamp)
                self.last_timestamp = timestamp
                frame_length = statistics.median(intervals) if intervals else (1.0 / fps if fps else 0.0)
                slack = max(0.5 * frame_length, 1e-6)
                if step is not None:
                    slack = min(slack, step / 2)
                if timestamp < start - slack:
                    continue
                if sampling.end is not None and timestamp >= sampling.end - END_SLACK:
                    reached_end = True
                    break
                if step is not None:  # --fps or the default rate
                    if timestamp < next_tick - slack:
                        continue
                    # the next tick after this frame (ticks skipped by a slow video are not owed)
                    next_tick += step * max(1, math.floor((timestamp + slack - next_tick) / step) + 1)
                else:  # --every N
                    first_kept = index if first_kept is None else first_kept
                    if (index - first_kept) % sampling.every:
                        continue
                kept += 1
                yield VideoFrame(index, timestamp, upright_frame(frame.to_image(), frame.rotation))
        finally:
            self.close()
        if self.stopped is None and not reached_end:  # with --end too: a file cut before it
            self._check_complete()
        if self.stopped is None and kept == 0 and self.decoded:
            length = f"{self.last_timestamp + (1.0 / fps if fps else 0.0):.2f} s" if self.last_timestamp is not None else "shorter"
            self.stopped = f"no frame in the --start/--end window (the video is {length})"

    def _check_complete(self) -> None:
        """A file cut short often just ends: compare with the length the header announced."""
        expected, fps = self.info.duration, self.info.fps
        if expected is None or fps is None or self.last_timestamp is None:
            if self.decoded == 0:
                self.stopped = "no frame could be decoded"
            return
        if self.last_timestamp + 2.5 / fps < expected:
            self.stopped = self._where(f"the file ends early (the header says {expected:.2f} s; truncated?)")

    def _where(self, why: str) -> str:
        if self.last_timestamp is None:
            return f"stopped before the first frame: {why}"
        return f"stopped after frame {self.decoded - 1} (t = {self.last_timestamp:.2f} s): {why}"


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


def write_video(path: str | Path, frames: "Iterator[np.ndarray] | list[np.ndarray]", fps: float,
                codec: Optional[str] = None, rotation: int = 0) -> Path:
    """Encode uint8 (H, W, 3) RGB frames as a video (tests and benchmarks make their clips with it).

    Sides are cropped to even numbers (yuv420p needs them). The container follows the
    suffix (mp4, mkv, avi...); the codec defaults to H.264 (VP9 for webm, MPEG-4 part 2 for avi).
    rotation: the stream's display rotation in degrees counterclockwise (a phone's portrait
    video: -90), which players (and upright_frame) apply to the stored frames.
    """
    import av
    from fractions import Fraction

    path = Path(path)
    codec = codec or {".webm": "libvpx-vp9", ".avi": "mpeg4"}.get(path.suffix.lower(), "libx264")
    container = av.open(str(path), mode="w")
    try:
        stream = None
        for array in frames:
            array = np.ascontiguousarray(array[: array.shape[0] // 2 * 2, : array.shape[1] // 2 * 2])
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = array.shape[1], array.shape[0]
                stream.pix_fmt = "yuv420p"
                if rotation:
                    stream.set_display_rotation(rotation)
                if codec == "libx264":
                    stream.codec_context.options = {"preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    return path
