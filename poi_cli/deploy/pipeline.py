"""The stages of labelling faces in images: load, detect, align, run the model, build
the records. Predictor (deploy/predict.py) is this pipeline plus its public API; the
drivers that feed it many images (overlap.py: threads ahead of the model) or video frames
(video.py) use its public stages, so none of them imports predict.py.

    pipeline.predict_chunk(items, show_au)     # the sequential path: one batched detection
    pipeline.prepare_image(item)               # one image loaded, detected, aligned
    pipeline.finish(prepared, show_au)         # the model on their faces -> ImagePredictions

Per image: load (faces.load_image), detect every face (data/mtcnn.py: MTCNN run by ONNX
Runtime, the detector `poi prepare` uses), align each face with faces.align_face at the
model's Preprocessing.face_size (grey when its training store was), normalise
(preprocess.model_input_array, the numpy twin of the training path) and run the model in
batches. An image without a face gives one record with status `no_face`; an unreadable
input one with status `error` and a reason.
"""

from __future__ import annotations

import glob
import io
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from poi_cli.core.atomic import real_path
from poi_cli.core.errors import one_line
from poi_cli.core.outputs import ModelOutputs, clipped_temperature_caveat
from poi_cli.core.schema import DETECTOR_MTCNN, DETECTOR_NONE, STATUS_ERROR, STATUS_NO_FACE
from poi_cli.core.threads import DEFAULT_WORKERS
from poi_cli.data.faces import (BLANK_REASON, DETECTORS, Face, ImageLoadError, decode_image, is_blank, load_image,
                                make_detector, require_detector, to_rgb, upright)
from poi_cli.data.preprocess import Preprocessing
from poi_cli.data.video import VIDEO_SUFFIXES, is_video_path
from poi_cli.deploy.records import FaceRecord
from poi_cli.deploy.runner import ModelRunner

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray, bytes, Any, "InputItem"]  # Any: an open binary file


class PipelineError(ValueError):
    """A bad pipeline setting (batch sizes, workers, detector name); one-line message."""


# ---------------------------------------------------------------------------- inputs


@dataclass
class InputItem:
    """One image to predict: a file (source = its path), an in-memory image, or an image file's
    bytes or open binary file (`encoded`, decoded when the image is loaded, not when listed)."""

    source: str
    path: Optional[Path] = None
    image: Optional[Image.Image] = None
    error: Optional[str] = None  # the input itself is unusable (nothing matched, not found)
    encoded: Any = None

    @property
    def is_video(self) -> bool:
        return self.path is not None and self.error is None and is_video_path(self.path)


def _folder_images(folder: Path) -> tuple[list[Path], list[InputItem]]:
    """Every entry of the folder (recursively; links to folders not followed) named like an
    image or a video that is not a folder: files, and also broken symlinks, symlink loops
    and FIFOs, which then get an error record from load_image instead of vanishing from the
    batch; and an error item for each folder that could not be listed (no permission), which
    would otherwise vanish with its images."""
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    unreadable: list[InputItem] = []

    def cannot_list(error: OSError) -> None:
        unreadable.append(InputItem(str(error.filename or folder), error=f"cannot read the folder: {one_line(error)}"))

    found = [Path(root) / name for root, _, names in os.walk(folder, onerror=cannot_list) for name in names]
    return sorted(p for p in found if p.suffix.lower() in suffixes and not p.is_dir()), unreadable


def _array_problem(array: np.ndarray) -> Optional[str]:
    """Why an in-memory array is not an image poi reads (None: it is): uint8, (H, W) grey or
    (H, W, 3) RGB or (H, W, 4) RGBA."""
    if array.dtype == np.uint8 and array.size and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        return None
    return (f"an image array must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4); "
            f"this one is {array.dtype} of shape {tuple(array.shape)}")


def expand_inputs(inputs: Iterable[ImageInput], on_repeat: Optional[Callable[[Path], None]] = None,
                  skip: Optional[Callable[[Path], bool]] = None) -> list[InputItem]:
    """Files (whatever their suffix), folders (recursively, image and video suffixes) and globs, in order.

    An input that matches nothing becomes an item with an error, so a batch reports it
    and goes on. A file reached twice is predicted once (on_repeat is called with each
    name of it after the first). skip: files a folder or a pattern holds that are left out (a
    file named itself is not). (iter_input_items, all at once.)
    """
    return list(iter_input_items(inputs, on_repeat, skip))


def is_single_input(value: Any) -> bool:
    """Whether `value` is one input (a path, an image, an array, an image file's bytes or an
    open binary file) rather than an iterable of them."""
    return isinstance(value, (str, os.PathLike, Image.Image, np.ndarray, InputItem)) or is_encoded(value)


def as_inputs(inputs: Any) -> Iterable[Any]:
    """One input as a list of it; an iterable of inputs as it is (a generator stays lazy)."""
    if is_single_input(inputs):
        return [inputs]
    if isinstance(inputs, Mapping) or not isinstance(inputs, Iterable):
        raise TypeError("inputs: a path, a PIL image, a numpy array, an image file's bytes or an open binary file, "
                        f"or an iterable of them; got {type(inputs).__name__}")
    return inputs


def in_memory_image(value: Any) -> tuple[Optional[Image.Image], Optional[str]]:
    """An input that is no file name as a PIL image, or why it cannot be one: a PIL image; a
    uint8 array (_array_problem); an image file's bytes or an open binary file (decoded as a
    file on disk is: faces.decode_image)."""
    if isinstance(value, Image.Image):
        return value, None
    if isinstance(value, np.ndarray):
        if reason := _array_problem(value):  # Pillow would raise a TypeError of its own
            return None, reason
        return Image.fromarray(value), None
    if is_encoded(value):
        return decode_encoded(value)
    return None, (f"not an image input: a path, a PIL image, a numpy array, an image file's bytes or an open "
                  f"binary file; got {type(value).__name__}")


def is_encoded(value: Any) -> bool:
    """An image file's bytes or an open binary file (not yet an image)."""
    return isinstance(value, (bytes, bytearray, memoryview)) or hasattr(value, "read")


def decode_encoded(value: Any) -> tuple[Optional[Image.Image], Optional[str]]:
    """An image file's bytes or open binary file decoded as a file on disk is (faces.decode_image),
    or why it cannot be."""
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            if not len(value):
                return None, "empty bytes (no image file in them)"
            return decode_image(io.BytesIO(value)), None
        return decode_image(value), None
    except ImageLoadError as error:
        return None, str(error)


def iter_input_items(inputs: Iterable[ImageInput], on_repeat: Optional[Callable[[Path], None]] = None,
                     skip: Optional[Callable[[Path], bool]] = None) -> Iterator[InputItem]:
    """expand_inputs one input at a time (a generator of inputs is read as the items are taken)."""
    seen: set[Path] = set()

    def file_item(path: Path) -> Iterator[InputItem]:
        key = real_path(path)  # a symlink loop must not stop the batch
        if key not in seen:
            seen.add(key)
            yield InputItem(str(path), path=path)
        elif on_repeat is not None:
            on_repeat(path)

    def folder_items(folder: Path) -> tuple[list[InputItem], int]:
        """The folder's files (those not reached before) and its unreadable folders; how many it holds."""
        files, unreadable = _folder_images(folder)
        if skip is not None:
            files = [file for file in files if not skip(file)]
        return [*unreadable, *(item for file in files for item in file_item(file))], len(files) + len(unreadable)

    for number, value in enumerate(inputs):
        if isinstance(value, InputItem):  # expanded already (`poi predict` expands once, to protect its inputs)
            yield value
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if is_encoded(value):  # decoded when loaded: a list of encoded photos is not held decoded all at once
            yield InputItem(f"<image {number}>", encoded=value)
            continue
        if not isinstance(value, str):
            image, reason = in_memory_image(value)
            yield InputItem(f"<image {number}>", image=image, error=reason)
            continue
        text = value
        if not text.strip():  # Path("") is the current folder: an unset $DIR must not predict it
            yield InputItem(repr(text), error="an empty name (give a file, a folder or a pattern)")
            continue
        path = Path(text)
        found: list[InputItem] = []
        try:  # a name too long, a folder on the way without permission: this input's error, not the batch's
            if path.is_dir():
                found, held = folder_items(path)
                if not held:
                    found = [InputItem(text, error="folder holds no image or video files")]
            elif path.exists() or path.is_symlink():
                found = list(file_item(path))
            elif glob.has_magic(text):
                matched = 0
                for match in map(Path, sorted(glob.glob(text, recursive=True))):
                    if match.is_dir():
                        items, held = folder_items(match)
                        found.extend(items)
                        matched += held
                    elif skip is None or not skip(match):
                        found.extend(file_item(match))
                        matched += 1
                if not matched:
                    found = [InputItem(text, error="pattern matched no image or video files")]
            else:
                found = [InputItem(text, error="file not found")]
        except OSError as error:
            found = [InputItem(text, error=f"cannot read it: {one_line(error)}")]
        yield from found


# ------------------------------------------------------------------------- pipeline


def check_pipeline_options(detector: Any, batch_size: int, images_per_batch: int, min_face_score: float, workers: int,
                           threads: Optional[int]) -> None:
    """FacePipeline's options, checked before anything is opened (PipelineError, one line)."""
    if batch_size < 1 or images_per_batch < 1:
        raise PipelineError("batch sizes must be at least 1")
    if workers < 0:
        raise PipelineError(f"--workers must be 0 or more, got {workers}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise PipelineError(f"threads must be a whole number of at least 1 (or None), got {threads!r}")
    if not 0 <= min_face_score <= 1:
        raise PipelineError(f"min_face_score must be in [0, 1], got {min_face_score}")
    if isinstance(detector, str) and detector not in DETECTORS:
        raise PipelineError(f"--detector must be one of {', '.join(DETECTORS)}, got {detector!r}")


def whole_image_face(image: Image.Image) -> Face:
    """The face of --no-detect: the whole image, without landmarks or a detection score."""
    return Face(box=np.array([0, 0, image.width, image.height], np.float32), landmarks=None, score=float("nan"))


@dataclass
class ImagePrediction:
    """The records of one input image (one per face, or one no_face / error record)."""

    source: str
    image: Optional[Image.Image]  # None when it could not be read, or was not kept (keep_images=False)
    records: list[FaceRecord] = field(default_factory=list)


@dataclass
class PreparedImage:
    """One image loaded, its faces detected and aligned, waiting for the model."""

    source: str
    image: Optional[Image.Image]  # None when it could not be read (reason says why), or is not kept
    reason: Optional[str]  # why it could not be read (None: it was)
    faces: list[Face]
    crops: list[np.ndarray]  # the aligned uint8 faces, in faces' order
    blank: bool = False  # every pixel the same colour: no face looked for


class FacePipeline:
    """A model runner plus a face detector, as stages (see the module docstring).

    runner: deploy/runner.ModelRunner (ONNX Runtime, or the torch runner that
    poi_cli/backends.py builds). detector: a detector to share, or a name in
    data.faces.DETECTORS (made on first use). detect=False: each image is taken whole as
    one face (already cropped faces; `--no-detect`). workers: threads that load, detect and
    align images while the model runs (overlap.py); 0: chunks of images_per_batch images.
    threads: ONNX Runtime's threads for the detector. `timings` sums the seconds spent in
    each stage (over all workers).
    """

    def __init__(
        self,
        runner: ModelRunner,
        detector: Any = "mtcnn",
        batch_size: int = 32,
        images_per_batch: int = 8,
        min_face_score: float = 0.95,
        detect: bool = True,
        workers: int = DEFAULT_WORKERS,
        threads: Optional[int] = None,
    ) -> None:
        check_pipeline_options(detector, batch_size, images_per_batch, min_face_score, workers, threads)
        if detect and isinstance(detector, str):  # a detector that cannot run: FaceDetectorError here, one line
            require_detector(detector)
        self.runner = runner
        self.model_path: Path = self.runner.path
        self.classes: list[str] = list(self.runner.classes)
        # Faces are cut at the side the training store had (grey when it was: FERPlus,
        # CK+) and then resized to the model's input, exactly the path training images took.
        self.preprocessing: Preprocessing = self.runner.preprocessing
        self.has_pin = self.runner.has_pin
        self.has_aus = self.runner.has_aus
        self.notes: list[str] = []
        if not self.has_pin:
            self.notes.append("no PIN outputs (a baseline model, or a TRN-only export: `poi export --full` keeps them): "
                              "consistency, AUs and region distributions are not available (null/NaN)")
        elif not self.has_aus:
            self.notes.append("model trained without prior supervision (no AU nets): AU probabilities are null/NaN")
        if self.has_pin and not self.runner.has_pin_expression:
            self.notes.append("no objective inference of the PIN (a model trained with --no-oim, or an .onnx exported "
                              "before poi wrote it: `poi export --full` again): pin_expression is null")
        # Reported probabilities are softmax(log p / T_cal), p the runner's recipe (POI_SPEC 4b); the
        # runner (or the exported graph) computes them.
        self.calibration_temperature = self.runner.calibration_temperature
        self.recipe = self.runner.recipe
        if not self.runner.calibrated:
            self.notes.append("uncalibrated model (T_cal = 1): confidence is the raw softmax; "
                              "`poi calibrate` fits T_cal on a validation split")
        elif clipped_temperature_caveat(self.calibration_temperature) is not None:  # as evaluate says it
            self.notes.append(f"the model's calibration: {clipped_temperature_caveat(self.calibration_temperature)}")
        self.batch_size, self.images_per_batch = batch_size, images_per_batch
        self.min_face_score = min_face_score
        self.detect = detect
        self.threads = threads
        self.detector_name = detector if isinstance(detector, str) else getattr(detector, "name", DETECTOR_MTCNN)
        self._detector = None if isinstance(detector, str) else detector
        self._detector_lock = threading.Lock()
        self._video_detector: Any = None
        self.timings = dict.fromkeys(("load", "detection", "alignment", "model"), 0.0)
        self._timings_lock = threading.Lock()  # the overlapped pipeline's workers add to timings too
        self.workers = workers

    @property
    def backend(self) -> str:
        return self.runner.backend

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
    def detector(self) -> Any:
        with self._detector_lock:  # threads sharing a new pipeline make one detector, not one each
            if self._detector is None:
                self._detector = make_detector(self.detector_name, self.min_face_score, threads=self.threads,
                                               device=getattr(self.runner, "device_name", "cpu"))
        return self._detector

    # -- the stages

    def load(self, item: InputItem) -> tuple[Optional[Image.Image], Optional[str]]:
        if item.error:
            return None, item.error
        if item.encoded is not None:
            return decode_encoded(item.encoded)  # upright and RGB already
        if item.image is not None:
            try:  # a closed image, or a lazily opened file that is truncated: this image's error, not the batch's
                item.image.load()  # decoded here, where its error is this image's
                return to_rgb(upright(item.image)), None  # Image.open(photo) as its path would be read
            except (OSError, ValueError) as error:
                return None, f"cannot read the image: {one_line(error)}"
        try:
            return load_image(item.path), None
        except ImageLoadError as error:
            return None, str(error)

    def video_detector(self, max_side: int) -> Any:
        """The detector for video frames: frames shrunk to max_side for detection (made once)."""
        if self._video_detector is None or self._video_detector.max_side != max_side:
            self._video_detector = make_detector(self.detector_name, self.min_face_score, max_side, self.threads,
                                                 getattr(self.runner, "device_name", "cpu"))
        return self._video_detector

    def _add_time(self, stage: str, seconds: float) -> None:
        with self._timings_lock:
            self.timings[stage] += seconds

    def prepare_image(self, item: InputItem, detector: Any = None, keep_image: bool = True) -> PreparedImage:
        """Load, detect and align one image (what each worker of the overlapped pipeline does).
        keep_image=False lets the decoded picture go once its faces are cut out: images waiting
        for the model then hold their faces only (a 24-megapixel photo is 72 MB decoded)."""
        clock = time.perf_counter()
        image, reason = self.load(item)
        self._add_time("load", time.perf_counter() - clock)
        faces: list[Face] = []
        blank = image is not None and is_blank(image)
        if image is not None:
            clock = time.perf_counter()
            faces = self._find_faces([image], [blank], detector)[0]
            self._add_time("detection", time.perf_counter() - clock)
        clock = time.perf_counter()
        crops = [self._align(image, face) for face in faces]
        self._add_time("alignment", time.perf_counter() - clock)
        return PreparedImage(item.source, image if keep_image else None, reason, faces, crops, blank)

    def predict_chunk(self, items: list[InputItem], show_au: bool, detector: Any = None,
                      keep_images: bool = True) -> list[ImagePrediction]:
        """The sequential path: load a chunk, detect it in one batched MTCNN pass, align, run the model
        (keep_images: as prepare_image's keep_image)."""
        clock = time.perf_counter()
        loaded = [self.load(item) for item in items]
        self._add_time("load", time.perf_counter() - clock)
        readable = [i for i, (image, _) in enumerate(loaded) if image is not None]
        blank = {i: is_blank(loaded[i][0]) for i in readable}

        clock = time.perf_counter()
        faces_of = dict(zip(readable, self._find_faces([loaded[i][0] for i in readable], [blank[i] for i in readable],
                                                        detector)))
        self._add_time("detection", time.perf_counter() - clock)

        clock = time.perf_counter()
        prepared = []
        for i, (item, (image, reason)) in enumerate(zip(items, loaded)):
            faces = faces_of.get(i, [])
            prepared.append(PreparedImage(item.source, image if keep_images else None, reason, faces,
                                          [self._align(image, f) for f in faces], blank.get(i, False)))
        self._add_time("alignment", time.perf_counter() - clock)
        del loaded
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
            if p.reason is not None:
                result.records.append(FaceRecord.empty(p.source, STATUS_ERROR, p.reason, show_au))
            elif not p.faces:
                reason = BLANK_REASON if p.blank else "no face detected"
                result.records.append(FaceRecord.empty(p.source, STATUS_NO_FACE, reason, show_au,
                                                       detector=self.detector_name if self.detect else DETECTOR_NONE))
            for k, face in enumerate(p.faces):
                result.records.append(FaceRecord.of_face(
                    p.source, k, face, self.classes, outputs.probabilities[row],
                    *(None if values is None else values[row] for values in (
                        outputs.consistency, outputs.eye_aus, outputs.mouth_aus, outputs.region_probabilities)),
                    show_au=show_au, detector=self.detector_name,
                    pin_probs=None if outputs.pin_probabilities is None else outputs.pin_probabilities[row],
                ))
                row += 1
            results.append(result)
        return results

    def _find_faces(self, images: Sequence[Image.Image], blank: Sequence[bool], detector: Any = None) -> list[list[Face]]:
        """The faces of each image, in one batched detector pass (--no-detect: the whole image is the
        face). A blank image (is_blank) has none and is never shown to the detector (finish() gives the reason)."""
        looked = [k for k in range(len(images)) if not blank[k]]
        if not self.detect:
            found = [[whole_image_face(images[k])] for k in looked]
        else:
            found = (detector or self.detector).detect([images[k] for k in looked]) if looked else []
        faces: list[list[Face]] = [[] for _ in images]
        for k, image_faces in zip(looked, found):
            faces[k] = image_faces
        return faces

    def _align(self, image: Image.Image, face: Face) -> np.ndarray:
        if face.landmarks is None:
            return self.preprocessing.whole_face(image)
        return self.preprocessing.face(image, face.landmarks)

    def _run_model(self, crops: list[np.ndarray]) -> ModelOutputs:
        """Aligned uint8 faces -> the runner's ModelOutputs (it batches them)."""
        if not crops:
            return ModelOutputs.concatenate([], len(self.classes))
        return self.runner.run(np.stack(crops))
