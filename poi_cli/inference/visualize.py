"""`poi predict --save-vis DIR`: the photo with each face's box, expression and confidence,
and (with --show-au) a panel of AU bars per facial region for every face, like the paper's
Fig. 9/10. Videos go to video_vis.VideoVisWriter (an annotated video and a timeline).

Pure PIL: no figure machinery, so drawing stays cheap next to detection.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional

from PIL import Image, ImageDraw, ImageFont

from poi_cli.core.atomic import save_image
from poi_cli.core.manifests import AU_GROUPS, REGIONS
from poi_cli.core.schema import STATUS_OK
from poi_cli.inference.predict import ImagePrediction

MAX_SIDE = 1024  # the photo is shown at most this large
REGION_WIDTH, ROW, BAR = 210, 13, 90  # panel geometry in pixels
BOX_COLOUR, TEXT_COLOUR, BAR_COLOUR, BACKGROUND = (40, 220, 90), (255, 255, 255), (70, 140, 230), (24, 24, 24)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _label(record: dict) -> str:
    probability = record["probabilities"][record["expression"]]
    consistency = record.get("consistency")
    name = f"T{record['track']}" if record.get("track") is not None else record["face"]  # a video's faces: track ids
    text = f"{name}: {record['expression']} {probability:.0%}"
    return text + (f"  consistency {consistency:.2f}" if consistency is not None else "")


def _text_box(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text(xy, text, fill=TEXT_COLOUR, font=font)


def draw_faces(image: Image.Image, records: list[dict]) -> Image.Image:
    """A copy of the image (at most MAX_SIDE) with boxes, landmarks and labels."""
    scale = min(1.0, MAX_SIDE / max(image.size))
    canvas = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale))) if scale < 1 else image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = _font(max(12, canvas.width // 60))
    line = max(2, canvas.width // 300)
    for record in records:
        if record["status"] != STATUS_OK:
            _text_box(draw, (5, 5), record["status"].replace("_", " "), font)
            continue
        x1, y1, x2, y2 = (v * scale for v in record["box"])
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=line)
        for x, y in record["landmarks"] or ():  # none for --no-detect
            draw.ellipse((x * scale - line, y * scale - line, x * scale + line, y * scale + line), fill=BOX_COLOUR)
        height = draw.textbbox((0, 0), "Ag", font=font)[3]
        _text_box(draw, (x1, max(0, y1 - height - 6)), _label(record), font)
    return canvas


def draw_au_panel(record: dict) -> Image.Image:
    """One face's AU probabilities per region (a block per AU group: eye regions above,
    mouth regions below; image-left on the left) with each region's own most likely
    expression. The layout follows data_manifests/regions.json."""
    font = _font(11)
    groups = list(AU_GROUPS)
    height = ROW * (3 + sum(len(aus) for aus in AU_GROUPS.values()) + 2) + 10
    panel = Image.new("RGB", (2 * REGION_WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    draw.text((6, 4), _label(record), fill=TEXT_COLOUR, font=font)
    aus, regions = record.get("aus") or {}, record.get("regions") or {}
    for region in REGIONS:
        block = groups.index(region.au_group)
        x = 6 + region.side * REGION_WIDTH
        y = 4 + ROW * (1.5 + sum(len(AU_GROUPS[g]) + 1.5 for g in groups[:block]))
        distribution = regions.get(region.name) or {}
        known = {k: v for k, v in distribution.items() if v is not None}
        top = f" ({max(known, key=known.get)} {max(known.values()):.0%})" if known else ""
        draw.text((x, y), f"{region.name}{top}", fill=(200, 200, 200), font=font)
        y += ROW
        for au in region.aus:
            value: Optional[float] = (aus.get(au) or {}).get(region.name)
            draw.text((x, y), au, fill=TEXT_COLOUR, font=font)
            draw.rectangle((x + 40, y + 2, x + 40 + BAR, y + ROW - 3), outline=(90, 90, 90))
            if value is not None:
                draw.rectangle((x + 40, y + 2, x + 40 + BAR * value, y + ROW - 3), fill=BAR_COLOUR)
            draw.text((x + 46 + BAR, y), "n/a" if value is None else f"{value:.2f}", fill=TEXT_COLOUR, font=font)
            y += ROW
    return panel


def render(prediction: ImagePrediction, show_au: bool = False) -> Optional[Image.Image]:
    """The picture for one image (None when the image could not be read)."""
    if prediction.image is None:
        return None
    picture = draw_faces(prediction.image, prediction.records)
    faces = [r for r in prediction.records if r["status"] == STATUS_OK and "aus" in r]
    if not (show_au and faces):
        return picture
    panels = [draw_au_panel(r) for r in faces]
    return place_panels(picture, panels)


def place_panels(picture: Image.Image, panels: list[Image.Image]) -> Image.Image:
    """The picture with every panel to its right, in columns as tall as the picture (at least one panel)."""
    width, height = panels[0].size
    per_column = max(1, picture.height // height)
    columns = math.ceil(len(panels) / per_column)
    out = Image.new("RGB", (picture.width + columns * width, max(picture.height, min(len(panels), per_column) * height)),
                    BACKGROUND)
    out.paste(picture, (0, 0))
    for k, panel in enumerate(panels):
        out.paste(panel, (picture.width + (k // per_column) * width, (k % per_column) * height))
    return out


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
        self.protected = {Path(p).resolve() for p in protected}
        self.video = None  # the video_vis.VideoVisWriter of the video being written

    def name(self, source: str, suffix: str) -> Path:
        """DIR/<stem><suffix>, numbered when taken in this run; never an input file (the
        source itself or any protected one)."""
        in_memory = source.startswith("<")
        stem = Path(source).stem if not in_memory else "image"
        avoid = set(self.protected)
        if not in_memory:
            avoid.add(Path(source).resolve())
        head, dot, extension = suffix.rpartition(".")
        name, number = f"{stem}{suffix}", 2
        while name in self.used or (self.out_dir / name).resolve() in avoid:
            name, number = f"{stem}{head}{number}{dot}{extension}", number + 1
        self.used.add(name)
        return self.out_dir / name

    def write(self, prediction: ImagePrediction) -> Optional[Path]:
        if getattr(prediction, "frame", None) is not None:  # a video's frame
            if self.video is not None and self.video.source != prediction.source:
                self.video.close()
                self.video = None
            if self.video is None:
                from poi_cli.inference.video_vis import VideoVisWriter

                self.video = VideoVisWriter(prediction.source, self.name(prediction.source, "_poi.mp4"),
                                            self.name(prediction.source, "_timeline.png"))
            self.video.write(prediction)
            return None
        picture = render(prediction, self.show_au)
        if picture is None:
            return None
        return save_image(picture, self.name(prediction.source, "_poi.png"))

    def close(self) -> None:
        """Finish the video being written (its file appears now, whole)."""
        if self.video is not None:
            self.video.close()
            self.video = None
