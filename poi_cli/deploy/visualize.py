"""`poi predict --save-vis DIR`: writes the pictures of deploy/drawing.py for images
(DIR/<stem>_poi.png) and hands a video's frames to video_vis.VideoVisWriter (an annotated
video and a timeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from poi_cli.core.atomic import real_path, save_image
from poi_cli.deploy.drawing import render
from poi_cli.deploy.pipeline import ImagePrediction
from poi_cli.deploy.video_vis import VideoVisWriter


class VisWriter:
    """Writes DIR/<image stem>_poi.png, numbering repeats; never over an input file.

    protected: every file the run reads (after glob and folder expansion); a name that
    resolves to one of them (symlinks followed) is skipped for the next number, so
    `poi predict v/a.jpg v/a_poi.png --save-vis v` keeps v/a_poi.png.
    """

    def __init__(self, out_dir: str | Path, show_au: bool = False, protected: Iterable[str | Path] = ()) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.show_au = show_au
        self.used: set[str] = set()
        self.protected = {real_path(p) for p in protected}
        self.video = None  # the video_vis.VideoVisWriter of the video being written
        self.notes: list[str] = []  # what could not be written (a timeline without matplotlib)
        self.written = 0  # pictures and videos finished

    def name(self, source: str, suffix: str) -> Path:
        """DIR/<stem><suffix>, numbered when taken in this run; never an input file (the
        source itself or any protected one)."""
        in_memory = source.startswith("<")
        stem = Path(source).stem if not in_memory else "image"
        avoid = set(self.protected)
        if not in_memory:
            avoid.add(real_path(source))
        head, dot, extension = suffix.rpartition(".")
        name, number = f"{stem}{suffix}", 2
        while name in self.used or real_path(self.out_dir / name) in avoid:
            name, number = f"{stem}{head}{number}{dot}{extension}", number + 1
        self.used.add(name)
        return self.out_dir / name

    def write(self, prediction: ImagePrediction) -> Optional[Path]:
        if getattr(prediction, "frame", None) is not None:  # a video's frame
            if self.video is not None and self.video.source != prediction.source:
                self.close()
            if self.video is None:
                self.video = VideoVisWriter(prediction.source, self.name(prediction.source, "_poi.mp4"),
                                            self.name(prediction.source, "_timeline.png"))
            self.video.write(prediction)
            return None
        picture = render(prediction, self.show_au)
        if picture is None:
            return None
        path = save_image(picture, self.name(prediction.source, "_poi.png"))
        self.written += 1
        return path

    def close(self) -> None:
        """Finish the video being written (its file appears now, whole)."""
        if self.video is not None:
            self.video.close()
            self.notes.extend(self.video.notes)
            self.video = None
            self.written += 1
