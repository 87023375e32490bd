"""The record of one face (or of an image without one): FaceRecord, typed.

    record.expression, record.confidence, record.probabilities["happiness"]
    record.to_dict()          # the JSON form (`poi predict --json`, `poi serve`)
    record.to_row(classes)    # the flat CSV / DataFrame row (flat_columns)

Every value is the model's, rounded for printing (probabilities to 6 digits, pixels to 2);
nothing is made up for an image without a face or an unreadable input: their values are
None (null in JSON, empty in CSV, NaN in a DataFrame). POI_SPEC section 4b says what each
field means: `probabilities` are the calibrated softmax(log p / T_cal) of the model's
recipe (the TRN's softmax(z / T_cal) by default), `confidence` the largest of them,
`consistency` the UEM's w of Eq. 10, `regions_agree` how many of the four regions' own
expressions (argmax t_n) equal `expression` (0-4), `pin_expression` the argmax of the
PIN's objective inference p~* at T = 1 (Eq. 7); the last three None for a baseline model,
`pin_expression` also for a model without OIM or an ONNX file exported before it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import numpy as np

from poi_cli.core import manifests
from poi_cli.core.atomic import is_stream, refuse_write_protected
from poi_cli.core.errors import PANDAS_HINT, PoiError
from poi_cli.core.manifests import REGION_NAMES, REGIONS, au_columns
from poi_cli.core.outputs import regions_agreeing
from poi_cli.core.schema import (DETECTOR_MTCNN, DETECTOR_NONE, LANDMARK_NAMES, PREDICT_STATUSES, STATUS_ERROR, STATUS_OK,
                               VIDEO_COLUMNS)

if TYPE_CHECKING:  # pandas is imported where a DataFrame is built (it is not a deploy dependency)
    import pandas as pd

    from poi_cli.data.faces import Face

# Which regions carry which AUs, by name (data_manifests/regions.json): eye AUs come from
# the two upper regions, mouth AUs from the two lower ones; "left" is image-left.
AU_REGIONS: dict[str, tuple[str, ...]] = {au: tuple(r.name for r in regions) for au, regions in manifests.AU_REGIONS.items()}


def _num(value: Any, digits: int = 6) -> Optional[float]:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class VideoPosition:
    """Where a video frame's record sits: the frame's index among all decoded frames, its
    time in seconds from the first frame, and the face's track id (None on no_face rows)."""

    frame: int
    timestamp: Optional[float]
    track: Optional[int] = None


@dataclass(frozen=True)
class Smoothed:
    """A track's probabilities smoothed over time (`--smooth`); None values off a track."""

    expression: Optional[str] = None
    probabilities: Optional[dict[str, float]] = None


@dataclass(frozen=True)
class FaceRecord:
    """One face of one image or frame, or one no_face / error record (face None)."""

    image: str
    status: str
    face: Optional[int] = None
    reason: Optional[str] = None
    box: Optional[list[float]] = None  # x1, y1, x2, y2 in the original image's pixels
    landmarks: Optional[list[list[float]]] = None  # (5, 2) in core.schema.LANDMARK_NAMES order
    detection_score: Optional[float] = None
    detector: Optional[str] = None  # what found the face (or found none); "none" for --no-detect
    expression: Optional[str] = None
    probabilities: Optional[dict[str, float]] = None
    confidence: Optional[float] = None
    consistency: Optional[float] = None
    regions_agree: Optional[int] = None  # 0-4: regions whose own expression is `expression`
    pin_expression: Optional[str] = None  # the PIN's objective inference, argmax p~* (T = 1)
    aus: Optional[dict[str, dict[str, Optional[float]]]] = None  # AU -> region -> probability
    regions: Optional[dict[str, dict[str, Optional[float]]]] = None  # region -> class -> p_n
    with_au: bool = False  # --show-au: aus and regions belong to the record (null when unknown)
    video: Optional[VideoPosition] = None
    smoothed: Optional[Smoothed] = None

    @property
    def is_face(self) -> bool:
        return self.status == STATUS_OK

    @classmethod
    def empty(cls, source: str, status: str, reason: str, show_au: bool = False,
              detector: Optional[str] = None) -> "FaceRecord":
        """An image without a prediction (no_face or error): every value None (detector:
        the one that found nothing, for no_face)."""
        return cls(image=source, status=status, reason=reason, detector=detector, with_au=show_au)

    @classmethod
    def of_face(cls, source: str, index: int, face: "Face", classes: Sequence[str], probabilities: np.ndarray,
                consistency: Optional[float], eye_aus: Optional[np.ndarray] = None,
                mouth_aus: Optional[np.ndarray] = None, region_probs: Optional[np.ndarray] = None,
                show_au: bool = False, detector: str = DETECTOR_MTCNN,
                pin_probs: Optional[np.ndarray] = None) -> "FaceRecord":
        """One face. eye_aus (2, 6) and mouth_aus (2, 7): [left, right] regions (Region.side);
        region_probs (4, C) in REGION_NAMES order; pin_probs (C,) the PIN's p~* at T = 1.
        AU and region values are None when the model has no AU nets / no PIN. A face without
        landmarks is a whole image taken as a face (--no-detect): no landmarks, no score,
        detector `none`."""
        if not np.isfinite(probabilities).all():  # a diverged model: argmax would name the first class
            return cls.empty(source, STATUS_ERROR, "the model's output is not finite (NaN or infinity): a broken model",
                             show_au)
        detected = face.landmarks is not None
        predicted = int(np.argmax(probabilities))
        aus = regions = None
        if show_au:
            values_of = {"eye": eye_aus, "mouth": mouth_aus}
            aus = {au: {region.name: None if values_of[region.au_group] is None
                        else _num(values_of[region.au_group][region.side, region.aus.index(au)])
                        for region in au_regions}
                   for au, au_regions in manifests.AU_REGIONS.items()}
            regions = {region.name: {name: None if region_probs is None else _num(region_probs[region.index, c])
                                     for c, name in enumerate(classes)}
                       for region in REGIONS}
        return cls(
            image=source, status=STATUS_OK, face=index, box=[_num(v, 2) for v in face.box],
            landmarks=[[_num(x, 2), _num(y, 2)] for x, y in face.landmarks] if detected else None,
            detection_score=_num(face.score) if detected else None,
            detector=detector if detected else DETECTOR_NONE,
            expression=classes[predicted],
            probabilities={name: _num(p) for name, p in zip(classes, probabilities)},
            confidence=_num(np.max(probabilities)), consistency=_num(consistency),
            regions_agree=None if region_probs is None else int(regions_agreeing(region_probs, predicted)),
            pin_expression=None if pin_probs is None else classes[int(np.argmax(pin_probs))],
            aus=aus, regions=regions, with_au=show_au,
        )

    def on_frame(self, position: VideoPosition, smoothed: Optional[Smoothed] = None) -> "FaceRecord":
        """The same record as a video frame's (video columns, and the smoothing if any)."""
        return replace(self, video=position, smoothed=smoothed)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the video columns right after `image`, aus and regions with
        --show-au, `smoothed` last when smoothing is on."""
        out: dict[str, Any] = {"image": shown_name(self.image)}
        if self.video is not None:
            out.update(frame=self.video.frame, timestamp=self.video.timestamp, track=self.video.track)
        out.update(face=self.face, status=self.status, reason=self.reason, box=self.box, landmarks=self.landmarks,
                   detection_score=self.detection_score, detector=self.detector, expression=self.expression,
                   probabilities=self.probabilities, confidence=self.confidence, consistency=self.consistency,
                   regions_agree=self.regions_agree, pin_expression=self.pin_expression)
        if self.with_au:
            out.update(aus=self.aus, regions=self.regions)
        if self.smoothed is not None:
            out["smoothed"] = {"expression": self.smoothed.expression, "probabilities": self.smoothed.probabilities}
        return out

    def to_row(self, classes: Sequence[str]) -> dict[str, Any]:
        """{column: scalar or None}: exactly flat_columns for this record (its AU columns with
        --show-au, its video and smoothed columns when it has them), in their order."""
        row: dict[str, Any] = {"image": shown_name(self.image), "face": self.face, "status": self.status, "reason": self.reason,
                               "detection_score": self.detection_score, "detector": self.detector,
                               "expression": self.expression, "confidence": self.confidence,
                               "consistency": self.consistency, "regions_agree": self.regions_agree,
                               "pin_expression": self.pin_expression}
        video = self.video or VideoPosition(None, None, None)  # type: ignore[arg-type]
        row.update(frame=video.frame, timestamp=video.timestamp, track=video.track)
        smoothed = self.smoothed or Smoothed()
        row["smoothed_expression"] = smoothed.expression
        row.update({f"smoothed_{name}": (smoothed.probabilities or {}).get(name) for name in classes})
        row.update(zip(("box_x1", "box_y1", "box_x2", "box_y2"), self.box or [None] * 4))
        for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks or [[None, None]] * len(LANDMARK_NAMES)):
            row[f"landmark_{name}_x"], row[f"landmark_{name}_y"] = x, y
        row.update({name: (self.probabilities or {}).get(name) for name in classes})
        if self.with_au:
            aus, regions = self.aus or {}, self.regions or {}
            for au, au_regions in AU_REGIONS.items():
                for region in au_regions:
                    row[f"{au}_{region}"] = (aus.get(au) or {}).get(region)
            for region in REGION_NAMES:
                for name in classes:
                    row[f"region_{region}_{name}"] = (regions.get(region) or {}).get(name)
        columns = flat_columns(classes, self.with_au, self.video is not None, self.smoothed is not None)
        return {column: row.get(column) for column in columns}


def shown_percent(probability: float, decimals: int = 1) -> str:
    """A probability as the table and the pictures show it: `96.1%`, but never rounded to a
    certainty the model does not claim (0.99999 is `>99.9%`, not `100.0%`; 0.00001 `<0.1%`)."""
    text = f"{probability:.{decimals}%}"
    step = 10.0 ** -decimals
    if probability < 1 and float(text[:-1]) >= 100:
        return f">{100 - step:.{decimals}f}%"
    if probability > 0 and float(text[:-1]) <= 0:
        return f"<{step:.{decimals}f}%"
    return text


def shown_name(name: str) -> str:
    """A file name as JSON and CSV give it: valid UTF-8 always. A name whose bytes are not
    UTF-8 (Python holds them as lone surrogates, '\\udcff') shows them as backslash escapes
    (`a\\xff.jpg`): a strict JSON parser rejects a lone surrogate, and a UTF-8 CSV cannot hold one."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def flat_columns(classes: Sequence[str], show_au: bool = False, video: bool = False, smoothed: bool = False) -> list[str]:
    """The CSV / DataFrame columns, OpenFace / py-feat style (one scalar per column).

    video: frame, timestamp, track after `image` (empty for images in a mixed batch);
    smoothed (`--smooth`): smoothed_expression and smoothed_<class> after the raw ones."""
    columns = ["image", *(VIDEO_COLUMNS if video else ()), "face", "status", "reason", "box_x1", "box_y1", "box_x2", "box_y2"]
    columns += [f"landmark_{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy"]
    columns += ["detection_score", "detector", "expression", *classes, "confidence", "consistency", "regions_agree",
                "pin_expression"]
    if smoothed:
        columns += ["smoothed_expression", *(f"smoothed_{name}" for name in classes)]
    if show_au:
        columns += au_columns()
        columns += [f"region_{region}_{name}" for region in REGION_NAMES for name in classes]
    return columns


def is_predictions_csv(path: str | Path) -> bool:
    """Whether a file is a CSV `poi predict --csv` wrote: its header is exactly flat_columns for
    its own classes (the columns between expression and confidence), with or without the
    video, smoothed and AU columns. The one kind of existing file --csv may replace: a table of
    the user's, or a poi CSV the user has since edited (a column added), is not."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader([handle.readline(1 << 20)]), [])
    except (OSError, UnicodeDecodeError):
        return False
    if not header or header[0] != "image" or "expression" not in header or "confidence" not in header:
        return False
    classes = header[header.index("expression") + 1:header.index("confidence")]
    return any(header == flat_columns(classes, show_au, video, smoothed)
               for show_au in (False, True) for video in (False, True) for smoothed in (False, True))


def record_columns(records: Sequence[FaceRecord], classes: Sequence[str], show_au: bool = False,
                   video: Optional[bool] = None) -> list[str]:
    """flat_columns for these records: video columns when one is of a video frame (or `video`
    says so), smoothed ones when one is smoothed."""
    kinds = _kinds(records)
    return flat_columns(classes, show_au, kinds["video"] if video is None else video, kinds["smoothed"])


def _kinds(records: Sequence[FaceRecord]) -> dict[str, bool]:
    return {"video": any(r.video is not None for r in records), "smoothed": any(r.smoothed is not None for r in records)}


class RecordsError(PoiError):
    """Records cannot be given in the form asked for (pandas missing); one line."""


def import_pandas() -> Any:
    """pandas, or RecordsError saying how to install it (it is not a deploy dependency)."""
    try:
        import pandas
    except ImportError:
        raise RecordsError(f"a DataFrame needs pandas, which is not installed ({PANDAS_HINT}); predict_records "
                           "gives the records without it") from None
    return pandas


def records_to_frame(records: Sequence[FaceRecord], classes: Sequence[str], show_au: bool = False,
                     video: Optional[bool] = None) -> "pd.DataFrame":
    """Records -> DataFrame (missing values NaN; `face`, `frame`, `track` nullable integers;
    video: the video columns whatever the records, see record_columns).

    pandas is not a dependency of the deploy runtime: this one function needs it."""
    pd = import_pandas()
    columns = record_columns(records, classes, show_au, video)
    frame = pd.DataFrame([r.to_row(classes) for r in records], columns=columns)
    integers = ("face", "frame", "track", "regions_agree")
    numeric = [c for c in columns if c not in ("image", "status", "reason", "expression", "detector",
                                               "smoothed_expression", "pin_expression", *integers)]
    frame[numeric] = frame[numeric].astype(float)
    for column in integers:
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


class PredictionsCsv:
    """`poi predict --csv`: rows appended as the predictions come, each batch of rows in one
    write of whole lines, flushed (OpenFace's way: `tail -f` follows it, and a run that is
    killed, even by SIGKILL, leaves the rows of every face it finished and no torn line). The
    one file poi writes in place rather than atomically (core.atomic): it is opened at the first
    row, so a run that predicts nothing leaves an earlier file as it was.

    The columns are fixed before the first row: flat_columns for the inputs' kinds (video: the
    video columns, smoothed: the smoothed ones), also when no row ends up using them."""

    def __init__(self, path: str | Path, classes: Sequence[str], show_au: bool = False, video: bool = False,
                 smoothed: bool = False):
        self.path, self.classes = Path(path), tuple(classes)
        self.columns = flat_columns(classes, show_au, video, smoothed)
        self._file: Optional[Any] = None
        self.opened = False  # the file was (re)written by this run

    def append(self, records: Sequence[FaceRecord]) -> None:
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        if self._file is None:
            if not is_stream(self.path):
                refuse_write_protected(self.path)
                if self.path.is_symlink():  # replaced, as every other output's name is, never written through
                    self.path.unlink()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", newline="", encoding="utf-8")
            self.opened = True
            writer.writeheader()
        for record in records:
            row = record.to_row(self.classes)
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in self.columns})
        self._file.write(buffer.getvalue())
        self._file.flush()

    def close(self, finished: bool = True) -> None:
        """finished: the run went to its end, so a table without rows is written too (its
        header); an interrupted run that wrote no row leaves no file (or the earlier one)."""
        if self._file is None and finished:
            self.append([])
        if self._file is not None:
            self._file.close()
            self._file = None


def write_predictions_csv(records: Sequence[FaceRecord], classes: Sequence[str], path: str | Path,
                          show_au: bool = False) -> Path:
    """One row per record, the columns of record_columns, empty cells for missing values (no
    pandas needed)."""
    table = PredictionsCsv(path, classes, show_au, **_kinds(records))
    table.append(records)
    table.close()
    return table.path


def status_counts(records: Iterable[FaceRecord], into: Optional[dict[str, int]] = None) -> dict[str, int]:
    """How many records of each status (faces for ok, images for no_face / error); `into`: add
    them to these counts (a run counting as its records come)."""
    counts = dict.fromkeys(PREDICT_STATUSES, 0) if into is None else into
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts
