"""`poi predict`: every face in every image -> expression, confidence and action units.

    predictor = Predictor("runs/train/exp")              # a run folder or a checkpoint
    frame = predictor.predict(["photo.jpg", "album/"])    # pandas DataFrame, a row per face
    records = predictor.predict_records(["photo.jpg"], show_au=True)   # the JSON form

Per image: load (faces.load_image), detect every face (batched MTCNN), align each face
with faces.align_face (the function `poi prepare` uses) at the checkpoint's
Preprocessing.face_size (grey when its store was), normalise with
preprocess.to_model_input (the one training uses) and run the model in batches.

Per face the record holds the expression and (POI_SPEC section 4b):
* `probabilities`: the TRN's calibrated class probabilities softmax(z / T_cal), T_cal
  from the checkpoint (1 for an uncalibrated one, which a note says);
* `confidence`: the largest of them, a calibrated probability that the expression is right;
* `consistency`: the UEM's w of Eq. 10, how much the four facial regions of the PIN agree,
  from 0 (maximally split) to 1 (all see the same expression); None for a baseline model.
  It flags ambiguous faces; it is not a probability of being right.
With show_au, each AU's occurrence probability in each region that carries it (eye AUs:
left_eye, right_eye; mouth AUs: left_mouth, right_mouth; "left" is image-left; the table
is data_manifests/regions.json) and the four regions' own expression distributions
p_n = softmax(t_n / T_uem), the distributions w is computed from.

An image without a face gives one record with status `no_face`; an unreadable input one
with status `error` and a reason. Nothing is ever made up for them: their values are
None in the records (NaN in the DataFrame and CSV).

Video files (data.video.VIDEO_SUFFIXES) go frame by frame through the same pipeline
(inference/video.py): their records add `frame`, `timestamp` and `track`
(core.schema.VIDEO_COLUMNS). With detect=False (`--no-detect`) every image or frame is
taken whole as one face (Preprocessing.whole_face) and its record says `detector: none`.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from poi_cli.core.errors import PoiError, one_line
from poi_cli.core.atomic import atomic_write_text
from poi_cli.core import manifests
from poi_cli.core.manifests import REGION_NAMES, REGIONS, au_columns
from poi_cli.core.threads import DEFAULT_WORKERS
from poi_cli.core.schema import (DETECTOR_MTCNN, DETECTOR_NONE, LANDMARK_NAMES, PREDICT_STATUSES, STATUS_ERROR,
                                 STATUS_NO_FACE, STATUS_OK, VIDEO_COLUMNS)
from poi_cli.data.faces import Face, FaceDetector, ImageLoadError, load_image, to_rgb
from poi_cli.data.video import VIDEO_SUFFIXES, is_video_path
from poi_cli.data.preprocess import Preprocessing
from poi_cli.model.checkpoint import CheckpointError, CheckpointInfo, load_model, resolve_checkpoint
from poi_cli.model.network import tempered_log_probs

STATUSES = PREDICT_STATUSES  # ok, no_face, error (core.schema)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
# Which regions carry which AUs, by name (data_manifests/regions.json): eye AUs come from
# the two upper regions, mouth AUs from the two lower ones; "left" is image-left.
AU_REGIONS: dict[str, tuple[str, ...]] = {au: tuple(r.name for r in regions) for au, regions in manifests.AU_REGIONS.items()}
MODEL_ENV = "POI_MODEL"
BACKENDS = ("torch", "onnx")  # what runs the model: PyTorch, or ONNX Runtime (inference/onnx_backend.py)
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"
NO_MODEL_MESSAGE = (
    "no model: pass --model CKPT (a checkpoint or run folder from `poi train`) or set POI_MODEL=CKPT; "
    "this installation bundles no model (see docs/predict.md, 'Getting a model')"
)

ImageInput = Union[str, Path, Image.Image, np.ndarray]
if TYPE_CHECKING:  # pandas is imported where a DataFrame is built: it costs ~0.4 s of start-up
    import pandas as pd

    from poi_cli.inference.video import VideoOptions


class PredictError(PoiError):
    """Prediction cannot start (no model, bad checkpoint, bad device); one-line message."""


# ---------------------------------------------------------------------- model choice


def bundled_model() -> Optional[Path]:
    """The model shipped inside the package (poi_cli/weights/*.pt, first by name), if any."""
    if not BUNDLED_DIR.is_dir():
        return None
    found = sorted(p for p in BUNDLED_DIR.glob("*.pt") if p.is_file())
    return found[0] if found else None


def resolve_model(model: Optional[str | Path] = None) -> Path:
    """--model, else $POI_MODEL, else the bundled model, else PredictError saying how to get one."""
    for value, origin in ((model, "--model"), (os.environ.get(MODEL_ENV) or None, MODEL_ENV)):
        if value:
            try:
                return resolve_checkpoint(value)
            except CheckpointError as error:
                raise PredictError(f"{origin}: {error}") from None
    bundled = bundled_model()
    if bundled is None:
        raise PredictError(NO_MODEL_MESSAGE)
    return bundled


# ---------------------------------------------------------------------------- inputs


@dataclass
class InputItem:
    """One image to predict: a file (source = its path) or an in-memory image."""

    source: str
    path: Optional[Path] = None
    image: Optional[Image.Image] = None
    error: Optional[str] = None  # the input itself is unusable (nothing matched, not found)

    @property
    def is_video(self) -> bool:
        return self.path is not None and self.error is None and is_video_path(self.path)


def _folder_images(folder: Path) -> list[Path]:
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def expand_inputs(inputs: Iterable[ImageInput]) -> list[InputItem]:
    """Files (whatever their suffix), folders (recursively, image and video suffixes) and globs, in order.

    An input that matches nothing becomes an item with an error, so a batch reports it
    and goes on. A file reached twice is predicted once.
    """
    items: list[InputItem] = []
    seen: set[Path] = set()

    def add_file(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            items.append(InputItem(str(path), path=path))

    for number, value in enumerate(inputs):
        if isinstance(value, np.ndarray):
            value = Image.fromarray(value)
        if isinstance(value, Image.Image):
            items.append(InputItem(f"<image {number}>", image=value))
            continue
        text = str(value)
        path = Path(text)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                items.append(InputItem(text, error="folder holds no image or video files"))
            for file in found:
                add_file(file)
        elif path.exists():
            add_file(path)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            files = [f for m in matches for f in (_folder_images(Path(m)) if Path(m).is_dir() else [Path(m)])]
            if not files:
                items.append(InputItem(text, error="pattern matched no image or video files"))
            for file in files:
                add_file(file)
        else:
            items.append(InputItem(text, error="file not found"))
    return items


# --------------------------------------------------------------------------- records


def _num(value: Any, digits: int = 6) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def empty_record(source: str, status: str, reason: str, show_au: bool = False, detector: Optional[str] = None) -> dict:
    """The record of an image without a prediction (no_face or error): every value None
    (detector: the one that found nothing, for no_face)."""
    record = {
        "image": source, "face": None, "status": status, "reason": reason, "box": None, "landmarks": None,
        "detection_score": None, "detector": detector, "expression": None, "probabilities": None,
        "confidence": None, "consistency": None,
    }
    if show_au:
        record.update(aus=None, regions=None)
    return record


def face_record(
    source: str,
    index: int,
    face: Face,
    classes: Sequence[str],
    probabilities: np.ndarray,
    consistency: Optional[float],
    eye_aus: Optional[np.ndarray] = None,
    mouth_aus: Optional[np.ndarray] = None,
    region_probs: Optional[np.ndarray] = None,
    show_au: bool = False,
) -> dict:
    """The record of one face. eye_aus (2, 6) and mouth_aus (2, 7): [left, right] regions
    (Region.side); region_probs (4, C) in REGION_NAMES order. AU and region values are
    None when the model has no AU nets / no PIN. A face without landmarks is a whole
    image taken as a face (--no-detect): no landmarks, no score, detector `none`."""
    detected = face.landmarks is not None
    record = {
        "image": source, "face": index, "status": STATUS_OK, "reason": None,
        "box": [_num(v, 2) for v in face.box],
        "landmarks": [[_num(x, 2), _num(y, 2)] for x, y in face.landmarks] if detected else None,
        "detection_score": _num(face.score) if detected else None,
        "detector": DETECTOR_MTCNN if detected else DETECTOR_NONE,
        "expression": classes[int(np.argmax(probabilities))],
        "probabilities": {name: _num(p) for name, p in zip(classes, probabilities)},
        "confidence": _num(np.max(probabilities)),
        "consistency": _num(consistency),
    }
    if show_au:
        values_of = {"eye": eye_aus, "mouth": mouth_aus}
        aus: dict[str, dict[str, Optional[float]]] = {}
        for au, regions in manifests.AU_REGIONS.items():
            aus[au] = {}
            for region in regions:
                values = values_of[region.au_group]
                aus[au][region.name] = None if values is None else _num(values[region.side, region.aus.index(au)])
        record["aus"] = aus
        record["regions"] = {
            region.name: {name: None if region_probs is None else _num(region_probs[region.index, c])
                          for c, name in enumerate(classes)}
            for region in REGIONS
        }
    return record


def flat_columns(classes: Sequence[str], show_au: bool = False, video: bool = False, smoothed: bool = False) -> list[str]:
    """The CSV / DataFrame columns, OpenFace / py-feat style (one scalar per column).

    video: frame, timestamp, track after `image` (empty for images in a mixed batch);
    smoothed (`--smooth`): smoothed_expression and smoothed_<class> after the raw ones."""
    columns = ["image", *(VIDEO_COLUMNS if video else ()), "face", "status", "reason", "box_x1", "box_y1", "box_x2", "box_y2"]
    columns += [f"landmark_{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy"]
    columns += ["detection_score", "detector", "expression", *classes, "confidence", "consistency"]
    if smoothed:
        columns += ["smoothed_expression", *(f"smoothed_{name}" for name in classes)]
    if show_au:
        columns += au_columns()
        columns += [f"region_{region}_{name}" for region in REGION_NAMES for name in classes]
    return columns


def flatten_record(record: dict, classes: Sequence[str], show_au: bool = False) -> dict:
    """A nested record -> {column: scalar or None} with the columns of flat_columns."""
    row: dict[str, Any] = {k: record[k] for k in ("image", "face", "status", "reason", "detection_score", "expression",
                                                   "confidence", "consistency")}
    row["detector"] = record.get("detector")
    row.update({k: record.get(k) for k in VIDEO_COLUMNS})
    smoothed = record.get("smoothed") or {}
    row["smoothed_expression"] = smoothed.get("expression")
    row.update({f"smoothed_{name}": (smoothed.get("probabilities") or {}).get(name) for name in classes})
    box = record["box"] or [None] * 4
    row.update(zip(("box_x1", "box_y1", "box_x2", "box_y2"), box))
    points = record["landmarks"] or [[None, None]] * len(LANDMARK_NAMES)
    for name, (x, y) in zip(LANDMARK_NAMES, points):
        row[f"landmark_{name}_x"], row[f"landmark_{name}_y"] = x, y
    probabilities = record["probabilities"] or {}
    row.update({name: probabilities.get(name) for name in classes})
    if show_au:
        aus, regions = record.get("aus") or {}, record.get("regions") or {}
        for au, au_regions in AU_REGIONS.items():
            for region in au_regions:
                row[f"{au}_{region}"] = (aus.get(au) or {}).get(region)
        for region in REGION_NAMES:
            for name in classes:
                row[f"region_{region}_{name}"] = (regions.get(region) or {}).get(name)
    return row


def records_to_frame(records: Sequence[dict], classes: Sequence[str], show_au: bool = False) -> pd.DataFrame:
    """Records -> DataFrame (missing values NaN; `face`, `frame`, `track` nullable integers).

    Video columns appear when a record is of a video frame, smoothed ones when one is smoothed."""
    import pandas as pd

    video = any("frame" in r for r in records)
    smoothed = any("smoothed" in r for r in records)
    columns = flat_columns(classes, show_au, video, smoothed)
    frame = pd.DataFrame([flatten_record(r, classes, show_au) for r in records], columns=columns)
    integers = ("face", "frame", "track")
    numeric = [c for c in columns if c not in ("image", "status", "reason", "expression", "detector",
                                               "smoothed_expression", *integers)]
    frame[numeric] = frame[numeric].astype(float)
    for column in integers:
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def write_predictions_csv(records: Sequence[dict], classes: Sequence[str], path: str | Path, show_au: bool = False) -> Path:
    """One row per record (atomically: an interrupted write leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, records_to_frame(records, classes, show_au).to_csv(index=False))
    return path


def status_counts(records: Iterable[dict]) -> dict[str, int]:
    """How many records of each status (faces for ok, images for no_face / error)."""
    counts = dict.fromkeys(STATUSES, 0)
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts


# ------------------------------------------------------------------------- predictor


def whole_image_face(image: Image.Image) -> Face:
    """The face of --no-detect: the whole image, without landmarks or a detection score."""
    return Face(box=np.array([0, 0, image.width, image.height], np.float32), landmarks=None, score=float("nan"))


@dataclass
class ImagePrediction:
    """The records of one input image (one per face, or one no_face / error record)."""

    source: str
    image: Optional[Image.Image]  # None when it could not be read
    records: list[dict] = field(default_factory=list)


@dataclass
class PreparedImage:
    """One image loaded, its faces detected and aligned, waiting for the model."""

    source: str
    image: Optional[Image.Image]  # None when it could not be read (reason says why)
    reason: Optional[str]
    faces: list[Face]
    crops: list[np.ndarray]  # the aligned uint8 faces, in faces' order


class Predictor:
    """A trained POI model plus a face detector: images in, one record per face out.

    checkpoint: a checkpoint file or run folder; None resolves --model's fallbacks
    ($POI_MODEL, then the bundled model). detector: a faces.FaceDetector to share (made on
    first use otherwise). detect=False: each image is taken whole as one face (already
    cropped faces; `--no-detect`). backend: "torch", or "onnx" to run the same model with
    ONNX Runtime on the CPU (inference/onnx_backend.py). workers: threads that load, detect
    and align images while the model runs on faces from many images (inference/overlap.py);
    0 takes one chunk of images_per_batch images at a time. `timings` sums the seconds
    spent in each stage (over all workers).
    """

    def __init__(
        self,
        checkpoint: Optional[str | Path] = None,
        device: str = "cpu",
        detector: Optional[FaceDetector] = None,
        batch_size: int = 32,
        images_per_batch: int = 8,
        min_face_score: float = 0.95,
        detect: bool = True,
        backend: str = "torch",
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if batch_size < 1 or images_per_batch < 1:
            raise PredictError("batch sizes must be at least 1")
        if backend not in BACKENDS:
            raise PredictError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if workers < 0:
            raise PredictError(f"--workers must be 0 or more, got {workers}")
        if backend == "onnx" and device != "cpu":
            raise PredictError("--backend onnx runs on the CPU: use --device cpu (or --backend torch on a GPU)")
        self.checkpoint_path = resolve_model(checkpoint)
        try:
            self.device = torch.device(device)
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise PredictError("--device cuda: no CUDA GPU is visible to PyTorch")
            self.model, checkpoint_dict = load_model(self.checkpoint_path, self.device)
            info = CheckpointInfo.of(checkpoint_dict)
        except (CheckpointError, RuntimeError, ValueError) as error:
            raise PredictError(one_line(error)) from None
        config = self.model.config
        self.classes: list[str] = list(info.classes)
        if len(self.classes) != config.num_classes:
            raise PredictError(f"{self.checkpoint_path}: {len(self.classes)} class names for a {config.num_classes}-class model")
        # Faces are cut at the side the training store had (grey when it was: FERPlus,
        # CK+) and then resized by to_model_input, exactly the path training images took.
        self.preprocessing: Preprocessing = info.preprocessing
        self.has_pin = self.model.pin is not None
        self.has_aus = self.has_pin and config.prior_supervision
        self.notes: list[str] = []
        if not self.has_pin:
            self.notes.append("baseline model (no PIN): consistency, AUs and region distributions are not available (null/NaN)")
        elif not self.has_aus:
            self.notes.append("model trained without prior supervision (no AU nets): AU probabilities are null/NaN")
        # Reported probabilities are softmax(z / T_cal) (POI_SPEC 4b); argmax unchanged.
        self.calibration_temperature = info.calibration_temperature
        if info.calibration is None:
            self.notes.append("uncalibrated checkpoint (T_cal = 1): confidence is the raw softmax; "
                              "`poi calibrate` fits T_cal on a validation split")
        self.batch_size, self.images_per_batch = batch_size, images_per_batch
        self.min_face_score = min_face_score
        self.detect = detect
        self._detector = detector
        self.timings = dict.fromkeys(("load", "detection", "alignment", "model"), 0.0)
        self._timings_lock = threading.Lock()  # the overlapped pipeline's workers add to timings too
        self.workers = workers
        self.backend = backend
        self.onnx = None
        if backend == "onnx":  # the same model, exported in memory and run by ONNX Runtime
            from poi_cli.inference.onnx_backend import OnnxModel

            self.onnx = OnnxModel(self.model, self.calibration_temperature)

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def face_size(self) -> int:
        return self.preprocessing.face_size

    @property
    def grayscale(self) -> bool:
        return self.preprocessing.grayscale

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector(device=str(self.device), min_score=self.min_face_score)
        return self._detector

    # -- public API

    def predict(self, inputs: ImageInput | Sequence[ImageInput], show_au: bool = False, progress: bool = False) -> pd.DataFrame:
        """A DataFrame with a row per face (and per no_face / error image); see flat_columns."""
        return records_to_frame(self.predict_records(inputs, show_au, progress), self.classes, show_au)

    def predict_records(self, inputs: ImageInput | Sequence[ImageInput], show_au: bool = False,
                        progress: bool = False) -> list[dict]:
        """The nested records (the JSON form of `poi predict --json`)."""
        return [r for p in self.iter_predictions(inputs, show_au, progress) for r in p.records]

    def iter_predictions(self, inputs: ImageInput | Sequence[ImageInput], show_au: bool = False,
                         progress: bool = False, video: "Optional[VideoOptions]" = None) -> Iterator[ImagePrediction]:
        """ImagePredictions in input order, a chunk of images at a time (memory stays bounded).

        A video file gives one video.FramePrediction per sampled frame (video: how to
        sample, track and smooth it; VideoOptions() by default)."""
        if isinstance(inputs, (str, Path, Image.Image, np.ndarray)):
            inputs = [inputs]
        items = expand_inputs(inputs)
        from rich.console import Console

        from poi_cli.inference.video import VideoOptions, iter_video_file, progress_bar

        console = Console(stderr=True)  # stdout stays clean for --json
        images = [item for item in items if not item.is_video]
        with progress_bar(console, enabled=progress and console.is_terminal) as bar:
            task = bar.add_task("images", total=len(images), visible=bool(images))
            chunk: list[InputItem] = []
            for number, item in enumerate(items):
                if not item.is_video:
                    chunk.append(item)
                if self.workers > 0:  # overlapped: a whole run of images between videos at once
                    flush = chunk and (item.is_video or number == len(items) - 1)
                else:
                    flush = chunk and (len(chunk) == self.images_per_batch or item.is_video or number == len(items) - 1)
                if flush:
                    for prediction in self._predict_images(chunk, show_au):
                        yield prediction
                        bar.advance(task, 1)
                    chunk = []
                if item.is_video:
                    yield from iter_video_file(self, item.path, video or VideoOptions(), show_au, bar)

    def predict_video(self, path: str | Path, every: Optional[int] = None, fps: Optional[float] = None,
                      start: Optional[float] = None, end: Optional[float] = None, smooth: Optional[float] = None,
                      show_au: bool = False, progress: bool = False) -> pd.DataFrame:
        """A DataFrame with a row per face per sampled frame (frame, timestamp, track; see
        inference/video.py), a no_face row for a frame without a face."""
        records = [r for p in self.iter_video(path, every, fps, start, end, smooth, show_au, progress) for r in p.records]
        return records_to_frame(records, self.classes, show_au)

    def iter_video(self, source: "str | Path | Iterable[ImageInput]", every: Optional[int] = None,
                   fps: Optional[float] = None, start: Optional[float] = None, end: Optional[float] = None,
                   smooth: Optional[float] = None, show_au: bool = False, progress: bool = False) -> Iterator[ImagePrediction]:
        """video.FramePredictions one sampled frame at a time, as they are analysed (live use).

        source: a video file, or any iterable of frames (PIL images or uint8 arrays, e.g.
        from a camera); for those, `fps` is their rate (timestamps = index / fps; default
        the sampling cap) and every frame is analysed unless `every` says otherwise."""
        from poi_cli.inference.video import iter_video
        return iter_video(self, source, every=every, fps=fps, start=start, end=end, smooth=smooth,
                          show_au=show_au, progress=progress)

    # -- the pipeline

    def _load(self, item: InputItem) -> tuple[Optional[Image.Image], Optional[str]]:
        if item.error:
            return None, item.error
        if item.image is not None:
            return to_rgb(item.image), None
        try:
            return load_image(item.path), None
        except ImageLoadError as error:
            return None, str(error)

    def video_detector(self, max_side: int) -> FaceDetector:
        """The detector for video frames: frames shrunk to max_side for detection (made once)."""
        if getattr(self, "_video_detector", None) is None or self._video_detector.max_side != max_side:
            self._video_detector = FaceDetector(device=str(self.device), min_score=self.min_face_score, max_side=max_side)
        return self._video_detector

    def _add_time(self, stage: str, seconds: float) -> None:
        with self._timings_lock:
            self.timings[stage] += seconds

    def _predict_images(self, items: list[InputItem], show_au: bool) -> Iterator[ImagePrediction]:
        """Images (no videos) in input order: overlapped when workers > 0, else one chunk."""
        if self.workers > 0:
            from poi_cli.inference.overlap import iter_overlapped

            return iter_overlapped(self, items, show_au, self.workers)
        return iter(self._predict_chunk(items, show_au))

    def prepare_image(self, item: InputItem, detector: Optional[FaceDetector] = None) -> PreparedImage:
        """Load, detect and align one image (what each worker of the overlapped pipeline does)."""
        clock = time.perf_counter()
        image, reason = self._load(item)
        self._add_time("load", time.perf_counter() - clock)
        faces: list[Face] = []
        if image is not None:
            clock = time.perf_counter()
            faces = [whole_image_face(image)] if not self.detect else (detector or self.detector).detect([image])[0]
            self._add_time("detection", time.perf_counter() - clock)
        clock = time.perf_counter()
        crops = [self._align(image, face) for face in faces]
        self._add_time("alignment", time.perf_counter() - clock)
        return PreparedImage(item.source, image, reason, faces, crops)

    def _predict_chunk(self, items: list[InputItem], show_au: bool,
                       detector: Optional[FaceDetector] = None) -> list[ImagePrediction]:
        """The sequential path: load a chunk, detect it in one batched MTCNN pass, align, run the model."""
        clock = time.perf_counter()
        loaded = [self._load(item) for item in items]
        self._add_time("load", time.perf_counter() - clock)
        readable = [i for i, (image, _) in enumerate(loaded) if image is not None]

        clock = time.perf_counter()
        if not self.detect:  # --no-detect: the whole image is the face
            found = [[whole_image_face(loaded[i][0])] for i in readable]
        else:
            found = (detector or self.detector).detect([loaded[i][0] for i in readable]) if readable else []
        faces_of = dict(zip(readable, found))
        self._add_time("detection", time.perf_counter() - clock)

        clock = time.perf_counter()
        prepared = []
        for i, (item, (image, reason)) in enumerate(zip(items, loaded)):
            faces = faces_of.get(i, [])
            prepared.append(PreparedImage(item.source, image, reason, faces, [self._align(image, f) for f in faces]))
        self._add_time("alignment", time.perf_counter() - clock)
        return self.finish(prepared, show_au)

    def finish(self, prepared: Sequence[PreparedImage], show_au: bool) -> list[ImagePrediction]:
        """Run the model on every face of these images (in batches) and build their records."""
        crops = [crop for p in prepared for crop in p.crops]
        clock = time.perf_counter()
        outputs = self._run_model(crops)
        self._add_time("model", time.perf_counter() - clock)
        results, row = [], 0
        for p in prepared:
            result = ImagePrediction(p.source, p.image)
            if p.image is None:
                result.records.append(empty_record(p.source, STATUS_ERROR, p.reason, show_au))
            elif not p.faces:
                result.records.append(empty_record(p.source, STATUS_NO_FACE, "no face detected", show_au,
                                                   detector=DETECTOR_MTCNN))
            for k, face in enumerate(p.faces):
                result.records.append(face_record(
                    p.source, k, face, self.classes, outputs["probs"][row],
                    *(None if outputs[key] is None else outputs[key][row] for key in ("w", "eye", "mouth", "regions")),
                    show_au=show_au,
                ))
                row += 1
            results.append(result)
        return results

    def _align(self, image: Image.Image, face: Face) -> np.ndarray:
        if face.landmarks is None:
            return self.preprocessing.whole_face(image)
        return self.preprocessing.face(image, face.landmarks)

    @torch.no_grad()
    def _run_model(self, crops: list[np.ndarray]) -> dict[str, Optional[np.ndarray]]:
        """Aligned uint8 faces -> q, w, AU probabilities and region distributions (numpy)."""
        keys = ("probs", "w", "eye", "mouth", "regions")
        collected: dict[str, list] = {k: [] for k in keys}
        for start in range(0, len(crops), self.batch_size):
            batch = torch.from_numpy(np.stack(crops[start:start + self.batch_size])).to(self.device)
            if self.onnx is not None:  # --backend onnx: the same input, the same keys
                for key, value in self.onnx.run(self.preprocessing.model_input(batch)).items():
                    if value is not None:
                        collected[key].append(torch.from_numpy(value))
                continue
            out = self.model(self.preprocessing.model_input(batch), with_pin=self.has_pin)
            collected["probs"].append((out.trn_logits.float() / self.calibration_temperature).softmax(-1))
            if self.has_pin:
                collected["w"].append(out.consistency)
                # the regions' distributions of Eq. 10, from which consistency is computed
                collected["regions"].append(tempered_log_probs(out.region_logits, self.model.config.uem_temperature).exp())
            if self.has_aus:
                collected["eye"].append(out.eye_au_probs)
                collected["mouth"].append(out.mouth_au_probs)
        return {k: torch.cat(v).float().cpu().numpy() if v else None for k, v in collected.items()}
