"""Pictures of predictions, pure PIL (no figure machinery, so drawing stays cheap next to
detection): each face's box, expression and confidence, and (with --show-au) a panel of AU
bars per facial region for every face, like the paper's Fig. 9/10.

Used by visualize.VisWriter (`--save-vis` of images) and video_vis.VideoVisWriter (the
frames of an annotated video); it imports neither, so they do not import each other.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

from PIL import Image, ImageDraw, ImageFont

from poi_cli.core.manifests import AU_GROUPS, REGIONS
from poi_cli.deploy.records import shown_percent

if TYPE_CHECKING:
    from poi_cli.deploy.pipeline import ImagePrediction
    from poi_cli.deploy.records import FaceRecord

MAX_SIDE = 1024  # the photo is shown at most this large
# and at least this large: a label in a legible font is about 200 px wide, so on an aligned
# 96-px face (or a 48-px FERPlus one) it was cut at the picture's edge
MIN_SIDE = 384
# and at least this wide (a tall portrait crop, 150 x 400, cut it too), unless that would make
# the longer side over MAX_STRETCHED_SIDE (a strip of a few pixels is not enlarged without end)
MIN_WIDTH, MAX_STRETCHED_SIDE = 256, 4096
REGION_WIDTH, ROW, BAR = 210, 13, 90  # panel geometry in pixels
BOX_COLOUR, TEXT_COLOUR, BAR_COLOUR, BACKGROUND = (40, 220, 90), (255, 255, 255), (70, 140, 230), (24, 24, 24)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _label(record: FaceRecord) -> str:
    probability = record.probabilities[record.expression]
    track = record.video.track if record.video is not None else None
    name = f"T{track}" if track is not None else record.face  # a video's faces: track ids
    text = f"{name}: {record.expression} {shown_percent(probability, decimals=0)}"
    return text + (f"  regions {record.regions_agree}/4" if record.regions_agree is not None else "")


def _text_box(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, picture_width: int) -> None:
    """The text on a black box, moved left as far as needed to end inside the picture."""
    width = draw.textbbox((0, 0), text, font=font)[2]
    xy = (max(2.0, min(xy[0], picture_width - width - 5)), xy[1])  # its box ends 2 px in
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text(xy, text, fill=TEXT_COLOUR, font=font)


def draw_faces(image: Image.Image, records: list[FaceRecord]) -> Image.Image:
    """A copy of the image (its longer side brought within MIN_SIDE..MAX_SIDE, its width to
    MIN_WIDTH at least) with boxes, landmarks and labels."""
    longer = max(image.size)
    scale = MAX_SIDE / longer if longer > MAX_SIDE else MIN_SIDE / longer if longer < MIN_SIDE else 1.0
    scale = max(scale, min(MIN_WIDTH / image.width, MAX_STRETCHED_SIDE / longer))
    canvas = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale))) if scale != 1 else image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = _font(max(12, canvas.width // 60))
    line = max(2, canvas.width // 300)
    for record in records:
        if not record.is_face:
            _text_box(draw, (5, 5), record.status.replace("_", " "), font, canvas.width)
            continue
        x1, y1, x2, y2 = (v * scale for v in record.box)
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=line)
        for x, y in record.landmarks or ():  # none for --no-detect
            draw.ellipse((x * scale - line, y * scale - line, x * scale + line, y * scale + line), fill=BOX_COLOUR)
        height = draw.textbbox((0, 0), "Ag", font=font)[3]
        _text_box(draw, (x1, max(0, y1 - height - 6)), _label(record), font, canvas.width)
    return canvas


def draw_au_panel(record: FaceRecord) -> Image.Image:
    """One face's AU probabilities per region (a block per AU group: eye regions above,
    mouth regions below; image-left on the left) with each region's own most likely
    expression. The layout follows data_manifests/regions.json."""
    font = _font(11)
    groups = list(AU_GROUPS)
    height = ROW * (3 + sum(len(aus) for aus in AU_GROUPS.values()) + 2) + 10
    panel = Image.new("RGB", (2 * REGION_WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    draw.text((6, 4), _label(record), fill=TEXT_COLOUR, font=font)
    aus, regions = record.aus or {}, record.regions or {}
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
    faces = [r for r in prediction.records if r.is_face and r.with_au]
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


