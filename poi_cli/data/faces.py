"""Face loading, detection (MTCNN) and 5-point alignment.

`poi prepare` and `poi predict` both go through this module, so a face is cut out the
same way at training and at prediction time:

    image = load_image(path)                       # RGB, EXIF-rotated, 8 bit
    faces = FaceDetector().detect([image])[0]      # sorted by score, may be empty
    face = largest_face(faces)
    crop = align_face(image, face.landmarks, 224)  # uint8 (224, 224, 3)

Datasets that ship faces already cropped (FERPlus, CK+48, SFEW/RAF-DB aligned) skip
detection: `resize_face(image, 224)`. See docs/faces.md for the template and conventions.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from poi_cli.core.errors import FACENET_HINT, PoiError, one_line
from poi_cli.core.schema import NUM_LANDMARKS

# Images smaller than this on either side carry too little face to recognise anything.
MIN_SIDE = 16
# Decompression-bomb guard: refuse images above this many pixels before decoding them.
MAX_PIXELS = 100_000_000
_OPEN_LOCK = threading.Lock()
EXIF_ORIENTATION = 0x0112  # the EXIF tag of how a photo is turned
# The formats poi opens (Pillow's names; JPEG covers MPO, the camera JPEGs of several pictures;
# AVIF where the installed Pillow reads it, 11.3 on). Opening any of them parses a header only.
# Pillow's others are left out: some decode whole inside Image.open, so that neither the size
# check nor a server's budgets come first (an ICO holding a 13000 x 13000 PNG: 650 MB), some
# run outside programs (EPS: Ghostscript), and none is a photo format.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "JPEG2000", "BMP", "DIB", "TIFF", "GIF", "PPM", "TGA")
UNKNOWN_FORMAT = ("not an image in a format poi reads (JPEG, PNG, WebP, AVIF, JPEG 2000, BMP, TIFF, GIF, PPM/PGM, "
                  "TGA)")


# ----------------------------------------------------------------------------- loading

class ImageLoadError(Exception):
    """An image file that cannot be used; str(error) is a short one-line reason."""


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image, upright per its EXIF orientation.

    Conversions: CMYK -> RGB; 16-bit grey (I;16) scaled by 255/65535 (not clipped; I and
    F modes: see docs/faces.md); alpha (RGBA, LA, P with transparency) composited on
    white; grey -> RGB by repetition.
    Raises ImageLoadError (missing, empty, not an image, truncated, too small, too
    large). The file is only opened for reading.
    """
    path = Path(path)
    if not path.exists():
        if not path.is_symlink():
            raise ImageLoadError("file not found")
        try:
            os.stat(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise ImageLoadError("symlink loop (the link leads back to itself)") from None
        raise ImageLoadError("broken symlink (its target is missing)")
    if not path.is_file():
        raise ImageLoadError("not a regular file")
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError("empty file (0 bytes)")
        with open(path, "rb") as handle:
            return decode_image(handle)
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except OSError as error:
        raise ImageLoadError(f"cannot read it ({one_line(error)})") from None


def open_image(handle: BinaryIO) -> Image.Image:
    """Image.open of one of IMAGE_FORMATS: the header parsed, nothing decoded (PIL's own errors:
    UnidentifiedImageError for another format, DecompressionBombError over twice its limit)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        # Our MAX_PIXELS check replaces PIL's bomb warning. catch_warnings swaps a
        # process-wide filter list, so our loader threads take turns here (opening
        # only parses the header: it is quick).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.init()  # a name Pillow has no plugin for (AVIF before 11.3) is a KeyError in Image.open
        return Image.open(handle, formats=[name for name in IMAGE_FORMATS if name in Image.OPEN])


def decode_image(handle: BinaryIO) -> Image.Image:
    """An image file's bytes (an open binary file: from disk, or io.BytesIO of bytes in memory)
    as load_image reads them: its checks, conversions and ImageLoadError reasons."""
    try:
        image = open_image(handle)
        width, height = image.size  # header only: nothing decoded yet
        if width * height > MAX_PIXELS:
            raise ImageLoadError(_too_large(width, height))
        if min(width, height) < MIN_SIDE:
            raise ImageLoadError(f"image too small: {width}x{height} (minimum {MIN_SIDE} px per side)")
        image.load()  # force the full decode so that truncated files fail here
        return to_rgb(upright(image))
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(_too_large_from_message(str(error))) from None
    except UnidentifiedImageError:
        raise ImageLoadError(UNKNOWN_FORMAT) from None
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, zlib errors...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageLoadError(f"cannot decode image ({reason})") from None


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a phone's photo stored sideways); the
    image itself where it has none, or a broken EXIF block (the pixels as stored)."""
    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return image
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _too_large(width: int, height: int) -> str:
    return f"image too large: {width}x{height} = {width * height / 1e6:.0f} megapixels (limit {MAX_PIXELS / 1e6:.0f})"


def _too_large_from_message(message: str) -> str:
    # PIL refuses more than twice its own limit inside Image.open, before we see the size;
    # its message reads "Image size (N pixels) exceeds limit of ...".
    match = re.search(r"\((\d+) pixels\)", message)
    if match is None:
        return f"image too large (limit {MAX_PIXELS / 1e6:.0f} megapixels)"
    return f"image too large: {int(match.group(1)) / 1e6:.0f} megapixels (limit {MAX_PIXELS / 1e6:.0f})"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (see load_image for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale high-bit-depth grey to 0..255 by its nominal range (no clipping)."""
    values = np.nan_to_num(values.astype(np.float64))
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F":
        # Float images: [0, 1] data is the common convention; anything else is stretched.
        low, high = float(values.min()), float(values.max())
        top = 1.0 if low >= 0.0 and high <= 1.0 else None
        if top is None:
            values = values - low
            top = max(high - low, 1e-12)
    else:  # "I": 32-bit ints; PIL gives 16-bit PNG/TIFF this mode on some versions
        high = float(values.max()) if values.size else 0.0
        top = 255.0 if high <= 255 else 65535.0 if high <= 65535 else high
        values = np.clip(values, 0, None)
    return np.round(values * (255.0 / top)).clip(0, 255).astype(np.uint8)


def is_grayscale(image: Image.Image | np.ndarray) -> bool:
    """True when all three channels are equal (or the image has one channel)."""
    if isinstance(image, Image.Image):
        if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
            return True
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2 or array.shape[-1] == 1:
        return True
    return bool(np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2]))


BLANK_REASON = "blank image: every pixel is the same colour"


def is_blank(image: Image.Image) -> bool:
    """True when every pixel has the same value in every band: a picture with nothing in it.
    Released face crops have such files where the release's own alignment failed (SFEW 2.0
    val: 12 of 431 are black), and a model scored on them is scored on no face."""
    extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return all(low == high for low, high in bands)


# --------------------------------------------------------------------------- detection

@dataclass
class Face:
    """One detected face, in the original image's pixel coordinates."""

    box: np.ndarray  # float32 (4,): x1, y1, x2, y2
    landmarks: np.ndarray  # float32 (5, 2) in schema.LANDMARK_NAMES order (image-left first)
    score: float  # MTCNN's detection probability


class FaceDetectorError(PoiError, RuntimeError):
    """The detector cannot run (missing package); the message says what to do."""


# Both detectors search each image on a canvas of its own: shrunk to max_side, padded to
# multiples of CANVAS_STEP, so an image's faces do not depend on the rest of its batch.
CANVAS_STEP = 64


def shrink(image: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """The image with its longer side at most max_side, and the x factor applied (the
    per-axis factors differ from the asked one by rounding; the x one maps back)."""
    longer = max(image.size)
    if longer <= max_side:
        return image, 1.0
    scale = max_side / longer
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR), size[0] / image.width


def shrunk_arrays(images: Sequence[Image.Image], max_side: int) -> tuple[list[np.ndarray], list[float]]:
    """Each image as RGB uint8, shrunk to max_side, and the factor that maps it back."""
    shrunk = [shrink(to_rgb(image), max_side) for image in images]
    return [np.asarray(image) for image, _ in shrunk], [factor for _, factor in shrunk]


def canvas_shape(height: int, width: int, step: int = CANVAS_STEP) -> tuple[int, int]:
    """The canvas an image is searched on: its sides rounded up to multiples of `step`."""
    return (-(-height // step) * step, -(-width // step) * step)


def facenet_mtcnn() -> Any:
    """facenet-pytorch's MTCNN class (imports torch), or FaceDetectorError saying how to install it."""
    try:
        from facenet_pytorch import MTCNN
    except Exception as error:  # ImportError, or a broken install failing inside the import
        raise FaceDetectorError(
            f"the torch MTCNN (--detector mtcnn-torch) needs facenet-pytorch, which failed to import ({type(error).__name__}): {FACENET_HINT}"
        ) from None
    return MTCNN


class FaceDetector:
    """Batched MTCNN (facenet-pytorch; its weights ship inside the wheel, nothing is downloaded).

    Each image is shrunk so that its longer side is at most `max_side`, then padded
    (black, bottom and right) to a canvas whose sides are the next multiples of
    CANVAS_STEP. The canvas depends on the image alone, so an image gives the same faces
    whatever else is in the batch (MTCNN's pyramid, and so its output, changes with the
    canvas size). Images that share a canvas size go through one MTCNN call; boxes and
    landmarks are mapped back to the original image's pixels.
    """

    # Pixels per MTCNN call (bounds memory: 16 canvases of 1024 x 1024).
    MAX_BATCH_PIXELS = 16 * 1024 * 1024

    def __init__(
        self,
        device: str = "cpu",
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        max_side: int = 1024,
        min_score: float = 0.0,
    ) -> None:
        MTCNN = facenet_mtcnn()
        from poi_cli.core.runtime import select_device  # auto: CUDA, else MPS, else CPU; a missing GPU is one line

        if max_side < 32:
            raise ValueError(f"max_side must be at least 32, got {max_side}")
        self.device = select_device(device)
        self.min_face_size = int(min_face_size)
        self.max_side = int(max_side)
        # Faces scored below min_score are dropped after detection. MTCNN scores real
        # faces above 0.99 on photos; its false positives (hair, chair backs) often score
        # 0.8-0.92, so prediction asks for 0.95 while prepare keeps everything and
        # picks the largest face.
        self.min_score = float(min_score)
        self.mtcnn = MTCNN(
            keep_all=True, select_largest=False, min_face_size=self.min_face_size,
            thresholds=list(thresholds), device=self.device,
        ).eval()

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        """Faces of every image (sorted by score, highest first; [] when none)."""
        results: list[list[Face]] = [[] for _ in images]
        arrays, scales = shrunk_arrays(images, self.max_side)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, array in enumerate(arrays):
            height, width = array.shape[:2]
            # MTCNN cannot search an image whose short side is below the smallest face size.
            if min(height, width) >= self.min_face_size:
                groups.setdefault(canvas_shape(height, width), []).append(index)
        for shape, indices in groups.items():
            per_call = max(1, self.MAX_BATCH_PIXELS // (shape[0] * shape[1]))
            for start in range(0, len(indices), per_call):
                chunk = indices[start : start + per_call]
                found = self._detect_canvas([arrays[i] for i in chunk], shape)
                for index, faces in zip(chunk, found):
                    results[index] = [_scaled(face, 1.0 / scales[index]) for face in faces]
        return results

    def _detect_canvas(self, arrays: list[np.ndarray], shape: tuple[int, int]) -> list[list[Face]]:
        # Top-left placement: canvas pixel (x, y) is image pixel (x, y), so no offset to undo.
        canvas = np.zeros((len(arrays), *shape, 3), dtype=np.uint8)
        for k, array in enumerate(arrays):
            canvas[k, : array.shape[0], : array.shape[1]] = array
        boxes, probs, points = self.mtcnn.detect(canvas, landmarks=True)
        results = []
        for k, array in enumerate(arrays):
            faces = []
            if boxes[k] is not None:
                for box, prob, point in zip(
                    np.asarray(boxes[k], np.float32), np.asarray(probs[k], np.float32), np.asarray(points[k], np.float32)
                ):
                    # A face centred in the padding is not in this image.
                    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                    if 0 <= cx < array.shape[1] and 0 <= cy < array.shape[0] and prob >= self.min_score:
                        faces.append(Face(box=box.copy(), landmarks=point.reshape(NUM_LANDMARKS, 2).copy(), score=float(prob)))
            faces.sort(key=lambda f: -f.score)
            results.append(faces)
        return results


# Detectors by name: MTCNN run by ONNX Runtime (data/mtcnn.py; the default of prepare,
# predict and serve: no torch), or the same networks through facenet-pytorch (FaceDetector
# above; needs torch and facenet-pytorch).
DETECTORS = ("mtcnn", "mtcnn-torch")


def require_detector(name: str) -> None:
    """FaceDetectorError now, with the line make_detector would give at the first image, when the
    detector `name` cannot run here (the torch one without facenet-pytorch or torch): a
    pipeline that names it fails where it is made, not at its first prediction."""
    if name == "mtcnn-torch":
        facenet_mtcnn()


def make_detector(name: str = "mtcnn", min_score: float = 0.0, max_side: int = 1024, threads: Optional[int] = None,
                  device: str = "cpu") -> Any:
    """A face detector by name (DETECTORS): detect(images) -> faces per image, sorted by score."""
    if name == "mtcnn":
        from poi_cli.data.mtcnn import OnnxMTCNN

        return OnnxMTCNN(min_score=min_score, max_side=max_side, threads=threads)
    if name == "mtcnn-torch":
        return FaceDetector(device=device, min_score=min_score, max_side=max_side)
    raise ValueError(f"--detector must be one of {', '.join(DETECTORS)}, got {name!r}")


def _scaled(face: Face, factor: float) -> Face:
    if factor == 1.0:
        return face
    return Face(
        box=(face.box * factor).astype(np.float32),
        landmarks=(face.landmarks * factor).astype(np.float32),
        score=face.score,
    )


def largest_face(faces: list[Face]) -> Face | None:
    """The face with the largest box area (None for no faces)."""
    if not faces:
        return None
    return max(faces, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))


def face_at(faces: list[Face], point: np.ndarray) -> Face | None:
    """The face whose box holds `point` (x, y), the nearest box centre where several do; None
    where none does. A dataset's own face box or landmarks say which face of a photo is the
    labelled one; detection under --detect keeps that face, not the largest."""
    x, y = float(point[0]), float(point[1])
    holding = [f for f in faces if f.box[0] <= x <= f.box[2] and f.box[1] <= y <= f.box[3]]
    if not holding:
        return None
    return min(holding, key=lambda f: (float(f.box[0] + f.box[2]) / 2 - x) ** 2 + (float(f.box[1] + f.box[3]) / 2 - y) ** 2)


# --------------------------------------------------------------------------- alignment

# The ArcFace/insightface 5-point template for a 112x112 crop: left eye, right eye, nose
# tip, left mouth corner, right mouth corner (core.schema.LANDMARK_NAMES order), in
# pixel-index coordinates (pixel (i, j) has its centre at x = i, y = j).
ALIGNMENT_TEMPLATE = "arcface_5point_112"  # its name in Preprocessing (store, checkpoint)
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def template(size: int) -> np.ndarray:
    """TEMPLATE_112 scaled to a size x size crop (float32 (5, 2))."""
    return (TEMPLATE_112 * (size / 112.0)).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src to dst.

    Umeyama (1991) without reflection. Returns the 2x3 matrix M with dst ~ M @ [x, y, 1].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (N >= 2, 2) point arrays, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # the best orthogonal map would be a reflection; take the best rotation
    rotation = u @ np.diag(d) @ vt
    variance = (src_c**2).sum() / len(src)
    if variance == 0:
        raise ValueError("source points are all identical")
    scale = float((singular * d).sum() / variance)
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = 224) -> np.ndarray:
    """Warp the face so its 5 landmarks sit on template(size): uint8 (size, size, 3).

    Bilinear sampling; parts of the crop outside the image are black. A large face is
    first shrunk by an integer box filter so that bilinear sampling does not alias.
    """
    image = to_rgb(image)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(NUM_LANDMARKS, 2)
    if not np.all(np.isfinite(landmarks)):
        raise ValueError("landmarks must be finite numbers")
    matrix = similarity_transform(landmarks, template(size))
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))  # output pixels per input pixel
    factor = int(1.0 / scale) if scale < 0.5 else 1
    if factor >= 2:
        # reduce(k): output pixel i covers input [k*i, k*i + k), centre k*i + (k-1)/2.
        image = image.reduce(factor)
        landmarks = (landmarks - (factor - 1) / 2.0) / factor
        matrix = similarity_transform(landmarks, template(size))
    # PIL wants the output->input map in its continuous coordinates (pixel centre at
    # i + 0.5); convert from our pixel-index coordinates (centre at i).
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    linear, shift = inverse[:, :2], inverse[:, 2]
    shift = shift + 0.5 - linear @ np.array([0.5, 0.5])
    data = (linear[0, 0], linear[0, 1], shift[0], linear[1, 0], linear[1, 1], shift[1])
    warped = image.transform((size, size), Image.AFFINE, data, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(warped, dtype=np.uint8).copy()


def resize_face(image: Image.Image, size: int = 224) -> np.ndarray:
    """A face already cropped by its dataset, resized (whole, not cropped) to uint8 (size, size, 3)."""
    image = to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()
