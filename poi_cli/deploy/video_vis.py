"""`poi predict clip.mp4 --save-vis DIR`: DIR/clip_poi.mp4, the sampled frames with each face's
box, track id, expression and confidence, and DIR/clip_timeline.png, each track's class
probabilities over time (the smoothed ones, raw ones faint, with --smooth).

The video is encoded (H.264, at the sampling rate) into a temp file beside the target
and renamed when the video ends, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np

from poi_cli.core.atomic import save_figure, temp_beside
from poi_cli.deploy.drawing import draw_faces

MAX_TIMELINE_TRACKS = 8  # the longest tracks get a panel each
VIDEO_COMMENT = "poi predict --save-vis"  # the annotated video's container comment: poi's own file


def is_poi_video(path: str | Path) -> bool:
    """`path` is an annotated video `poi predict --save-vis` wrote (its container's comment)."""
    try:
        import av

        with av.open(str(path)) as container:
            return container.metadata.get("comment") == VIDEO_COMMENT
    except Exception:  # noqa: BLE001 - anything unreadable (or no PyAV) is not poi's
        return False


class VideoVisWriter:
    """Frames in (video.FramePrediction), an annotated video and a timeline out (on close)."""

    def __init__(self, source: str, video_path: Path, timeline_path: Path) -> None:
        self.source, self.video_path, self.timeline_path = source, Path(video_path), Path(timeline_path)
        self._container: Any = None
        self._stream: Any = None
        self._temp: Optional[str] = None
        self.series: dict[int, list[tuple[float, list[float], Optional[list[float]]]]] = {}
        self.classes: list[str] = []
        self.notes: list[str] = []  # what close() could not write

    def write(self, prediction: Any) -> None:
        try:
            self._write(prediction)
        except OSError as error:  # named by the video asked for, not its temp file
            raise self._named(error) from None

    def _named(self, error: OSError) -> OSError:
        if self._temp is not None and error.filename == self._temp:
            return OSError(error.errno, error.strerror, str(self.video_path))
        return error

    def _write(self, prediction: Any) -> None:
        for record in prediction.records:
            if record.is_face and record.video is not None and record.video.track is not None:
                self.classes = list(record.probabilities)
                smoothed = record.smoothed.probabilities if record.smoothed is not None else None
                self.series.setdefault(record.video.track, []).append(
                    (record.video.timestamp, list(record.probabilities.values()),
                     list(smoothed.values()) if smoothed else None))
        if prediction.image is None:
            return
        picture = np.asarray(draw_faces(prediction.image, prediction.records))
        picture = np.ascontiguousarray(picture[: picture.shape[0] // 2 * 2, : picture.shape[1] // 2 * 2])
        if self._container is None:
            self._open(picture.shape[1], picture.shape[0], prediction.fps or 10.0)
        import av

        for packet in self._stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
            self._container.mux(packet)

    def _open(self, width: int, height: int, fps: float) -> None:
        import av

        handle, self._temp = temp_beside(self.video_path)  # a killed run's temp video is removed by the next
        os.close(handle)
        self._container = av.open(self._temp, mode="w", format="mp4")
        self._container.metadata["comment"] = VIDEO_COMMENT
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.codec_context.options = {"preset": "veryfast"}  # encoding stays small next to detection

    def close(self) -> None:
        if self._container is not None:
            try:
                try:
                    for packet in self._stream.encode():
                        self._container.mux(packet)
                finally:
                    self._container.close()
                os.chmod(self._temp, 0o644)
                os.replace(self._temp, self.video_path)
            except BaseException as error:  # a full disk at the end: no half video left, under any name
                named = self._named(error) if isinstance(error, OSError) else error
                self.abandon()
                if named is not error:
                    raise named from None
                raise
            self._container = None
        if self.series:
            try:
                figure = self.timeline()
            except ImportError:  # matplotlib is not part of the deploy runtime
                self.notes.append(f"{self.timeline_path.name} not written: the timeline needs matplotlib "
                                  "(pip install matplotlib)")
                return
            save_figure(figure, self.timeline_path)

    def abandon(self) -> None:
        """Stop writing (a write failed: a full disk): the temp video is removed, nothing replaced."""
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # the same full disk again: the file goes anyway
                pass
        if self._temp is not None:
            Path(self._temp).unlink(missing_ok=True)

    def timeline(self) -> Any:
        """One panel per track (the longest MAX_TIMELINE_TRACKS): class probabilities over time."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tracks = sorted(self.series, key=lambda t: -len(self.series[t]))[:MAX_TIMELINE_TRACKS]
        tracks.sort()
        figure, axes = plt.subplots(len(tracks), 1, figsize=(10, 2.2 * len(tracks) + 0.6), squeeze=False, sharex=True)
        colours = plt.get_cmap("tab10")
        for axis, track in zip(axes[:, 0], tracks):
            points = self.series[track]
            times = [p[0] for p in points]
            raw = np.array([p[1] for p in points])
            smoothed = np.array([p[2] for p in points]) if points[0][2] is not None else None
            for c, name in enumerate(self.classes):
                if smoothed is not None:
                    axis.plot(times, raw[:, c], color=colours(c % 10), alpha=0.25, linewidth=0.8)
                    axis.plot(times, smoothed[:, c], color=colours(c % 10), label=name, linewidth=1.5)
                else:
                    axis.plot(times, raw[:, c], color=colours(c % 10), label=name, linewidth=1.2,
                              marker="." if len(times) < 60 else None)
            axis.set_ylim(0, 1)
            axis.set_ylabel(f"track {track}")
            axis.grid(alpha=0.3)
        axes[0, 0].legend(ncol=min(len(self.classes), 8), fontsize=8, loc="upper left", bbox_to_anchor=(0, 1.35))
        axes[-1, 0].set_xlabel("time (s)")
        figure.suptitle(f"{Path(self.source).name}: class probabilities per track", y=0.995)
        figure.tight_layout()
        return figure
