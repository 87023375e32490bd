"""`poi predict --save-vis DIR`: writes the pictures of deploy/drawing.py for images
(DIR/<stem>_poi.png) and hands a video's frames to video_vis.VideoVisWriter (an annotated
video and a timeline).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from poi_cli.core.atomic import is_poi_png, real_path, save_image
from poi_cli.deploy.drawing import render
from poi_cli.deploy.pipeline import ImagePrediction
from poi_cli.deploy.video import is_video_summary
from poi_cli.deploy.video_vis import VideoVisWriter, is_poi_video

# how a file already in the folder is known as poi's own earlier output, which a re-run replaces
OWN_OUTPUT = {".png": is_poi_png, ".mp4": is_poi_video, ".json": is_video_summary}


def is_own_output(path: str | Path) -> bool:
    """`path` is a picture, annotated video or summary `poi predict --save-vis` wrote (OWN_OUTPUT)."""
    path = Path(path)
    own = OWN_OUTPUT.get(path.suffix.lower())
    return own is not None and path.is_file() and not path.is_symlink() and own(path)


class VisWriter:
    """Writes DIR/<image stem>_poi.png, numbering repeats; never over an input file, nor over
    a file there that poi did not write.

    protected: every file the run reads (after glob and folder expansion); a name that
    resolves to one of them (symlinks followed) is skipped for the next number, so
    `poi predict v/a.jpg v/a_poi.png --save-vis v` keeps v/a_poi.png. So is a name taken by
    a file that is not poi's own earlier output (OWN_OUTPUT: its PNG text chunk, its video's
    comment, its summary's keys), with a note; poi's own is replaced (a re-run).
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
        self.summaries: dict[str, Path] = {}  # a video's summary file, named with its pictures
        self.kept: list[Path] = []  # files there that poi did not write, numbered around

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
        while True:
            path = self.out_dir / name
            if name not in self.used and real_path(path) not in avoid:
                if not self.not_own(path):
                    break
                self.kept.append(path)
            name, number = f"{stem}{head}{number}{dot}{extension}", number + 1
        self.used.add(name)
        return self.out_dir / name

    def kept_note(self) -> Optional[str]:
        """One line for the files numbered around (a folder of another tool's, or of a poi from
        before its pictures were marked, would otherwise say it once per picture)."""
        if not self.kept:
            return None
        return (f"--save-vis kept {len(self.kept)} file{'s' if len(self.kept) > 1 else ''} in {self.out_dir} that poi did "
                f"not write (e.g. {self.kept[0].name}): the new ones are numbered (a_poi2.png)")

    def not_own(self, path: Path) -> bool:
        """Something is at `path` that a re-run must not replace: not poi's own earlier output."""
        return os.path.lexists(path) and not is_own_output(path)

    def summary_path(self, source: str) -> Path:
        """Where a video's summary goes: <stem>_summary.json, numbered as its pictures are."""
        if source not in self.summaries:
            self.summaries[source] = self.name(source, "_summary.json")
        return self.summaries[source]

    def write(self, prediction: ImagePrediction) -> Optional[Path]:
        if getattr(prediction, "frame", None) is not None:  # a video's frame
            if self.video is not None and self.video.source != prediction.source:
                self.close()
            if self.video is None:
                self.video = VideoVisWriter(prediction.source, self.name(prediction.source, "_poi.mp4"),
                                            self.name(prediction.source, "_timeline.png"))
                self.summary_path(prediction.source)
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
            video, self.video = self.video, None
            video.close()
            self.notes.extend(video.notes)
            self.written += 1

    def abandon(self) -> None:
        """Stop after a failed write: the video being written is left out (its temp file removed)."""
        video, self.video = self.video, None
        if video is not None:
            video.abandon()
