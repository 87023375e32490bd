"""MTCNN face detection without torch: facenet-pytorch's P-, R- and O-nets run by ONNX Runtime.

The three nets are exported to poi_cli/weights/mtcnn/*.onnx by scripts/export_mtcnn_onnx.py
(data_manifests/weights.json says where they come from); everything around them is numpy:
the algorithm of Zhang et al. (2016) as facenet-pytorch 2.6.0 runs it, so that OnnxMTCNN
finds the faces FaceDetector finds, with the same boxes and landmarks:

1. P-net (proposal): on each level of an image pyramid, every 12 x 12 window that P-net
   scores >= thresholds[0] becomes a box; NMS per level (IoU 0.5) and over all levels
   (0.7); P-net's regression; made square.
2. R-net (refine): each candidate cut out and resized to 24 x 24; kept when R-net scores it
   > thresholds[1]; NMS (0.7), regression, square.
3. O-net (output): each candidate at 48 x 48; kept when O-net scores it > thresholds[2];
   five landmarks, regression, NMS over the smaller box ("min", 0.7).

Resizing is "area" averaging (torch's interpolate(mode="area"), i.e. adaptive average
pooling), computed from one integral image per image for all pyramid levels and all crops.
The conventions are facenet-pytorch's: sizes x2 - x1 for P-net's regression, x2 - x1 + 1
for R-/O-net's and for the landmarks (the nets' regressions were fitted that way), crops
clipped to the canvas (the original MATLAB code zero-pads them), float32 box arithmetic.
One difference: every NMS measures areas as (x2 - x1) * (y2 - y1), where facenet-pytorch's
last one adds 1 to each side; it can only matter for two faces overlapping by about 70 %.

No torch is imported: the deploy runtime can detect faces with numpy, Pillow and ONNX
Runtime alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from poi_cli.core.schema import DETECTOR_MTCNN, NUM_LANDMARKS
from poi_cli.core.threads import onnx_session_options
from poi_cli.data.faces import Face, FaceDetector, FaceDetectorError, canvas_shape, shrunk_arrays

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "mtcnn"
# facenet-pytorch's pyramid step: each level is 0.709 (about 1/sqrt(2)) times the one before.
PYRAMID_FACTOR = 0.709
# The face size (px) whose pyramid OnnxMTCNN's levels are taken from: prediction's torch
# FaceDetector searches from 20 px faces up (see pyramid_scales).
PYRAMID_GRID_FACE = 20.0
PNET_WINDOW = 12  # P-net sees 12 x 12 windows ...
PNET_STRIDE = 2  # ... every 2 pixels of a pyramid level
RNET_SIZE = 24
ONET_SIZE = 48
# Work per net call. Larger calls spill the CPU caches and run slower on one thread
# (measured: 16 images of a 193 x 251 level in one P-net call took 1.3-2x as long as one
# call each, O-net on 256 crops at once 1.2x as long as on 16 at a time).
PNET_CALL_PIXELS = 32768  # pyramid-level pixels per P-net call (at least one image)
NET_BATCH = 32  # candidates per R-net / O-net call
# Output values area_resize computes per step: its int64 index arrays (8 bytes each) then fit in a 1 MB L2 cache.
CACHE_ELEMENTS = 32768
# Widths of R-net's outputs (box regression, probability) and O-net's (regression, landmarks, probability).
OUTPUT_WIDTHS = {"rnet": (4, 2), "onet": (4, 2 * NUM_LANDMARKS, 2)}


# ------------------------------------------------------------------------ box arithmetic

def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression: indices of the boxes kept, highest score first.

    A box is dropped when it overlaps an already kept box by more than `threshold`:
    overlap is intersection / union (mode "union", the IoU) or intersection / the smaller
    area (mode "min", which also removes a small box lying inside a larger one: MTCNN's
    last stage). Boxes (N, 4) are x1, y1, x2, y2 with area (x2 - x1) * (y2 - y1).
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', got {mode!r}")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0)
        height = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0)
        inter = width * height
        denominator = areas[best] + areas[rest] - inter if mode == "union" else np.minimum(areas[best], areas[rest])
        overlap = inter / np.maximum(denominator, 1e-12)  # a degenerate box overlaps nothing (inter is 0)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float,
                mode: str = "union") -> np.ndarray:
    """nms within each group (an image; boxes of two images never suppress each other):
    indices kept, grouped by group, highest score first within a group."""
    order = np.argsort(groups, kind="stable")
    starts = np.flatnonzero(np.diff(groups[order])) + 1
    kept = [members[nms(boxes[members], scores[members], threshold, mode)] for members in np.split(order, starts)
            if members.size]
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.intp)


def regress(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool) -> np.ndarray:
    """Boxes moved by a net's regression output: each edge shifts by its offset times the box's size.

    The size is x2 - x1 for P-net's output (inclusive=False) and x2 - x1 + 1 for R-net's and
    O-net's (inclusive=True, the pixel-inclusive convention of the original MATLAB code):
    the offsets were fitted with those conventions.
    """
    extra = 1.0 if inclusive else 0.0
    sizes = np.stack([boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra], axis=1)
    return boxes + offsets * np.tile(sizes, 2)


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square around their centres, side max(width, height) (MTCNN's rerec):
    R-net and O-net take square crops, so a face is not squashed."""
    sizes = boxes[:, 2:4] - boxes[:, 0:2]
    side = sizes.max(axis=1, keepdims=True)
    top_left = boxes[:, 0:2] + sizes * 0.5 - side * 0.5
    return np.concatenate([top_left, top_left + side], axis=1)


def crop_bounds(boxes: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Integer pixel bounds x0, y0, x1, y1 (half-open) of each box's crop, clipped to its canvas.

    Coordinates are truncated and the box taken as covering pixels x1 - 1 .. x2 - 1 (the
    MATLAB 1-based legacy facenet-pytorch keeps); a crop may be empty (x1 <= x0) when the
    box lies outside the canvas.
    """
    fixed = np.trunc(boxes).astype(np.int64)
    x0 = np.maximum(fixed[:, 0], 1) - 1
    y0 = np.maximum(fixed[:, 1], 1) - 1
    x1 = np.minimum(fixed[:, 2], widths)
    y1 = np.minimum(fixed[:, 3], heights)
    return np.stack([x0, y0, x1, y1], axis=1)


def pyramid_scales(min_side: int, min_face_size: float, grid_face_size: float = PYRAMID_GRID_FACE,
                   factor: float = PYRAMID_FACTOR) -> list[float]:
    """Scales of P-net's image pyramid for a canvas whose shorter side is `min_side`.

    A level of scale s finds faces of about 12 / s px (P-net's 12 px window). The levels are
    those of facenet-pytorch's pyramid for `grid_face_size` faces (12 / grid_face_size times
    factor**k), from the coarsest one whose face size is at most min_face_size, down to a
    level whose short side is 12 px. Sharing the grid of prediction's torch detector
    (min_face_size 20) means that a face found on the shared levels gets the same
    candidates, and so the same box and landmarks, as FaceDetector gives it; a pyramid
    started at 12 / min_face_size instead (facenet-pytorch's rule) moves every level a
    little and every landmark by a pixel or two, enough to change the expression read
    from some faces.
    """
    scale = PNET_WINDOW / grid_face_size
    side = min_side * scale
    limit = min_face_size * (1 + 1e-9)  # a level exactly at min_face_size counts despite rounding
    while PNET_WINDOW / scale > limit:  # a grid finer than min_face_size: go finer
        scale /= factor
        side /= factor
    while PNET_WINDOW / (scale * factor) <= limit:  # coarser levels still find min_face_size faces
        scale *= factor
        side *= factor
    scales = []
    while side >= PNET_WINDOW:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def generate_boxes(probability: np.ndarray, offsets: np.ndarray, scale: float,
                   threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """P-net's output on one pyramid level -> candidate windows in canvas pixels.

    probability (B, h, w): face probability of each 12 x 12 window (stride 2); offsets
    (B, 4, h, w) its regression. Returns the windows scored >= threshold as boxes (N, 4),
    scores (N,), offsets (N, 4) and the image index (N,) of each.
    """
    image, row, col = np.nonzero(probability >= threshold)
    # float32 like the nets' outputs (and facenet-pytorch): the floor of a quotient near an
    # integer, and so which windows NMS keeps, depends on the precision.
    position = np.stack([col, row], axis=1).astype(np.float32)
    scale = np.float32(scale)
    top_left = np.floor((PNET_STRIDE * position + 1) / scale)
    bottom_right = np.floor((PNET_STRIDE * position + PNET_WINDOW) / scale)
    boxes = np.concatenate([top_left, bottom_right], axis=1)
    return boxes, probability[image, row, col], offsets[image, :, row, col], image


def landmarks_in_box(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """O-net's landmarks (N, 10: five x then five y, as fractions of its input box) -> (N, 5, 2) pixels."""
    sizes = boxes[:, 2:4] - boxes[:, 0:2] + 1
    x = points[:, :NUM_LANDMARKS] * sizes[:, :1] + boxes[:, :1] - 1
    y = points[:, NUM_LANDMARKS:] * sizes[:, 1:] + boxes[:, 1:2] - 1
    return np.stack([x, y], axis=2)


# ------------------------------------------------------------------------------ pixels

def integral_image(array: np.ndarray) -> np.ndarray:
    """Summed-area table of a uint8 (H, W, 3) image, rows holding the three channels one after
    the other: (H + 1, 3, W + 1), entry [y, c, x] = sum of array[:y, :x, c]. int32 while the
    sums fit (the usual case), else int64."""
    height, width = array.shape[:2]
    dtype = np.int32 if 255 * height * width < 2**31 else np.int64
    table = np.zeros((height + 1, 3, width + 1), dtype=dtype)
    np.cumsum(np.ascontiguousarray(array.transpose(0, 2, 1)), axis=2, dtype=dtype, out=table[1:, :, 1:])
    # Down the rows one row at a time: numpy's cumsum along a leading axis walks the array
    # column by column and is several times slower than these contiguous row additions.
    for y in range(2, height + 1):
        np.add(table[y], table[y - 1], out=table[y])
    return table


def _bins(starts: np.ndarray, lengths: np.ndarray, size: int, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adaptive-average-pooling bins of `size` outputs over [start, start + length) for each
    row (start >= 0): bin i covers floor(i * L / size) .. ceil((i + 1) * L / size). Returns
    its integral table indices (clipped to the image, beyond which the canvas is black) and
    its pixel count."""
    i = np.arange(size)
    lengths = lengths[:, None]
    begin = starts[:, None] + (i * lengths) // size
    end = starts[:, None] - ((-(i + 1) * lengths) // size)
    return np.minimum(begin, limit), np.minimum(end, limit), end - begin


def area_resize(table: np.ndarray, bounds: np.ndarray, height: int, width: int) -> np.ndarray:
    """The canvas regions `bounds` (N, 4: x0, y0, x1, y1, half-open) averaged down (or up) to
    float32 (N, 3, height, width), as torch's interpolate(mode="area") does; `table` is the
    image's integral_image (the canvas beyond the image is black).

    A few regions at a time, so that the index arrays stay in the CPU cache (1.4x faster
    than all at once for R-net's and O-net's crops)."""
    out = np.empty((len(bounds), 3, height, width), dtype=np.float32)
    step = max(1, CACHE_ELEMENTS // (3 * height * width))
    for start in range(0, len(bounds), step):
        out[start : start + step] = _region_means(table, bounds[start : start + step], height, width)
    return out


def _region_means(table: np.ndarray, bounds: np.ndarray, height: int, width: int) -> np.ndarray:
    """area_resize of a few regions: four corner lookups in the integral table per output pixel."""
    rows, _, cols = table.shape
    y_begin, y_end, y_count = _bins(bounds[:, 1], bounds[:, 3] - bounds[:, 1], height, rows - 1)
    x_begin, x_end, x_count = _bins(bounds[:, 0], bounds[:, 2] - bounds[:, 0], width, cols - 1)
    # Flat indices into the table, shaped (N, 3, height, width): one take per corner.
    channel = (np.arange(3) * cols)[None, :, None, None]
    y_begin = (y_begin * (3 * cols))[:, None, :, None] + channel
    y_end = (y_end * (3 * cols))[:, None, :, None] + channel
    x_begin, x_end = x_begin[:, None, None, :], x_end[:, None, None, :]
    flat = table.reshape(-1)
    sums = flat.take(y_end + x_end) - flat.take(y_begin + x_end) - flat.take(y_end + x_begin) + flat.take(y_begin + x_begin)
    counts = y_count[:, None, :, None] * x_count[:, None, None, :]
    return sums.astype(np.float32) / counts.astype(np.float32)


def net_input(pixels: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) pixel values -> the nets' float32 input, (pixel - 127.5) / 128."""
    return (pixels - np.float32(127.5)) * np.float32(0.0078125)


# ---------------------------------------------------------------------------- detector

class OnnxMTCNN:
    """Batched MTCNN on ONNX Runtime (CPU); no torch. The same faces as FaceDetector, faster.

    Same conventions as poi_cli.data.faces.FaceDetector: images shrunk to `max_side`,
    each searched on its own black-padded canvas (sides rounded up to multiples of 64);
    boxes and landmarks in original pixels; faces centred in the padding and faces scored
    below `min_score` dropped; sorted by score, highest first. Images of equal canvas size
    share P-net calls (small pyramid levels only: see PNET_CALL_PIXELS); R-net and O-net
    run on the candidates of all images of a detect() call together (NET_BATCH a call),
    in rounds of at most FaceDetector.MAX_BATCH_PIXELS canvas pixels (each image's integral
    table, 12 bytes a pixel, lives for its round: at most ~200 MB).

    min_face_size defaults to 40 px, where prediction's torch detector uses 20. P-net's work
    grows as 1 / min_face_size^2 (40 px: a quarter of the pixels), and so do its
    candidates for R-net and O-net; and faces under 40 px, upscaled more than twice to the
    expression model's 96 px input, carry little expression to read. The pyramid starts at
    the 39.8 px level of prediction's grid (pyramid_scales), so the faces both detectors
    find get the same boxes and landmarks. Measured by benchmarks/detector_compare.py (one
    thread each, CPU time): 5.3x torch's speed on SFEW faces pasted into 800 x 600 scenes,
    4.3x on the shared photos (where shrinking large photos costs both the same); the same
    recall from 48 px faces up (85 % against 90 % at 32 px); the same expression on 357 of
    the 358 faces both found. From 57 px (the grid's 56 px level) it is faster still
    (8.2x, 5.4x) but finds 55 % of the 32 px faces and 88 % of the 48 px ones (torch: 90 %,
    92 %).
    """

    name = DETECTOR_MTCNN
    DEFAULT_MIN_FACE_SIZE = 40

    def __init__(
        self,
        min_face_size: int = DEFAULT_MIN_FACE_SIZE,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        max_side: int = 1024,
        min_score: float = 0.0,
        threads: Optional[int] = None,
        weights_dir: Optional[Path] = None,
    ) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise FaceDetectorError("face detection with OnnxMTCNN needs ONNX Runtime: pip install onnxruntime") from None
        if max_side < 32:
            raise ValueError(f"max_side must be at least 32, got {max_side}")
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be positive, got {min_face_size}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs three values (P-, R-, O-net), got {len(thresholds)}")
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_side = int(max_side)
        self.min_score = float(min_score)  # see FaceDetector: prediction asks for 0.95
        weights_dir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
        options = onnx_session_options(threads)
        self.sessions = {}
        for net in ("pnet", "rnet", "onet"):
            path = weights_dir / f"{net}.onnx"
            if not path.is_file():
                raise FaceDetectorError(f"MTCNN weights missing: {path} (run scripts/export_mtcnn_onnx.py)")
            self.sessions[net] = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                              providers=["CPUExecutionProvider"])

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        """Faces of every image (sorted by score, highest first; [] when none)."""
        results: list[list[Face]] = [[] for _ in images]
        arrays, factors = shrunk_arrays(images, self.max_side)
        # MTCNN cannot search an image whose short side is below the smallest face size.
        searchable = [i for i, a in enumerate(arrays) if min(a.shape[:2]) >= self.min_face_size]
        searchable.sort(key=lambda i: canvas_shape(*arrays[i].shape[:2]))  # equal canvases side by side
        for members in self._rounds(searchable, arrays):
            found = self._detect_round([arrays[i] for i in members])
            for index, (boxes, scores, landmarks) in zip(members, found):
                results[index] = self._faces(arrays[index], boxes, scores, landmarks, factors[index])
        return results

    def _rounds(self, indices: list[int], arrays: list[np.ndarray]) -> list[list[int]]:
        """Consecutive runs of `indices` of at most MAX_BATCH_PIXELS canvas pixels (at least one image each)."""
        rounds: list[list[int]] = []
        pixels = 0
        for index in indices:
            height, width = canvas_shape(*arrays[index].shape[:2])
            if not rounds or pixels + height * width > FaceDetector.MAX_BATCH_PIXELS:
                rounds.append([])
                pixels = 0
            rounds[-1].append(index)
            pixels += height * width
        return rounds

    def _detect_round(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Boxes (n, 4), scores (n,) and landmarks (n, 5, 2) in shrunk-image pixels, per image."""
        tables = [integral_image(array) for array in arrays]
        canvases = np.array([canvas_shape(*array.shape[:2]) for array in arrays]).reshape(-1, 2)
        boxes, image = self._propose(tables, canvases)
        boxes, scores, image = self._refine(tables, canvases, boxes, image)
        boxes, scores, landmarks, image = self._output(tables, canvases, boxes, image)
        return [(boxes[image == k], scores[image == k], landmarks[image == k]) for k in range(len(arrays))]

    def _propose(self, tables: list[np.ndarray], canvases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1, P-net: square candidate boxes (canvas pixels) and their image indices."""
        per_shape = []
        for shape in sorted(set(map(tuple, canvases))):
            members = np.flatnonzero((canvases == shape).all(axis=1))
            height, width = shape
            found = [self._pnet_level([tables[k] for k in members], height, width, scale)
                     for scale in pyramid_scales(min(height, width), self.min_face_size)]
            boxes, scores, offsets, image = (np.concatenate(parts) for parts in zip(*found))
            keep = batched_nms(boxes, scores, image, 0.7)  # over all levels, per image
            per_shape.append((regress(boxes[keep], offsets[keep], inclusive=False), members[image[keep]]))
        boxes, image = (np.concatenate(parts) for parts in zip(*per_shape))
        return square(boxes), image

    def _pnet_level(self, tables: list[np.ndarray], height: int, width: int,
                    scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """P-net on one pyramid level of equal-canvas images: windows after NMS within the level (IoU 0.5)."""
        size = (int(height * scale + 1), int(width * scale + 1))  # facenet-pytorch's level size
        whole = np.array([[0, 0, width, height]])
        per_call = max(1, PNET_CALL_PIXELS // (size[0] * size[1]))
        outputs = []
        for start in range(0, len(tables), per_call):  # each call's level made just before it runs
            level = np.concatenate([area_resize(table, whole, *size) for table in tables[start : start + per_call]])
            outputs.append(self.sessions["pnet"].run(None, {"input": net_input(level)}))
        offsets, probability = (np.concatenate(parts) for parts in zip(*outputs))
        boxes, scores, offsets, image = generate_boxes(probability[:, 1], offsets, scale, self.thresholds[0])
        keep = batched_nms(boxes, scores, image, 0.5)
        return boxes[keep], scores[keep], offsets[keep], image[keep]

    def _refine(self, tables: list[np.ndarray], canvases: np.ndarray, boxes: np.ndarray,
                image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 2, R-net: the candidates it scores > thresholds[1], after NMS (0.7), regressed and squared."""
        boxes, image, crops = self._crops(tables, canvases, boxes, image, RNET_SIZE)
        offsets, probability = self._run("rnet", crops)
        scores = probability[:, 1]
        passed = scores > self.thresholds[1]
        boxes, scores, offsets, image = boxes[passed], scores[passed], offsets[passed], image[passed]
        keep = batched_nms(boxes, scores, image, 0.7)
        return square(regress(boxes[keep], offsets[keep], inclusive=True)), scores[keep], image[keep]

    def _output(self, tables: list[np.ndarray], canvases: np.ndarray, boxes: np.ndarray,
                image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Stage 3, O-net: final boxes, scores and landmarks ("min" NMS 0.7), with their image indices."""
        boxes, image, crops = self._crops(tables, canvases, boxes, image, ONET_SIZE)
        offsets, points, probability = self._run("onet", crops)
        scores = probability[:, 1]
        passed = scores > self.thresholds[2]
        boxes, scores, offsets, points, image = boxes[passed], scores[passed], offsets[passed], points[passed], image[passed]
        landmarks = landmarks_in_box(boxes, points)  # relative to the box O-net saw, before its regression
        boxes = regress(boxes, offsets, inclusive=True)
        keep = batched_nms(boxes, scores, image, 0.7, mode="min")
        return boxes[keep], scores[keep], landmarks[keep], image[keep]

    def _crops(self, tables: list[np.ndarray], canvases: np.ndarray, boxes: np.ndarray, image: np.ndarray,
               size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each candidate's canvas region at size x size (the net's input pixels); candidates
        whose region is empty (the box lies off the canvas) are dropped."""
        bounds = crop_bounds(boxes, canvases[image, 1], canvases[image, 0])
        valid = (bounds[:, 2] > bounds[:, 0]) & (bounds[:, 3] > bounds[:, 1])
        boxes, image, bounds = boxes[valid], image[valid], bounds[valid]
        order = np.argsort(image, kind="stable")  # grouped by image: each group reads its own integral table
        boxes, image, bounds = boxes[order], image[order], bounds[order]
        crops = np.empty((len(boxes), 3, size, size), dtype=np.float32)
        for k in np.unique(image):
            rows = image == k
            crops[rows] = area_resize(tables[k], bounds[rows], size, size)
        return boxes, image, crops

    def _run(self, net: str, crops: np.ndarray) -> list[np.ndarray]:
        """R-net or O-net on all crops, NET_BATCH at a time (see there); each output concatenated."""
        session = self.sessions[net]
        if not len(crops):  # ONNX Runtime cannot run the nets' flatten on an empty batch
            return [np.zeros((0, width), np.float32) for width in OUTPUT_WIDTHS[net]]
        outputs = [session.run(None, {"input": net_input(crops[start:start + NET_BATCH])})
                   for start in range(0, len(crops), NET_BATCH)]
        return [np.concatenate(parts) for parts in zip(*outputs)]

    def _faces(self, array: np.ndarray, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray,
               factor: float) -> list[Face]:
        """One image's Face list in original pixels: faces centred in the padding or below min_score dropped."""
        centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
        centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (centre_x >= 0) & (centre_x < array.shape[1]) & (centre_y >= 0) & (centre_y < array.shape[0])
        kept = np.flatnonzero(inside & (scores >= self.min_score))
        kept = kept[np.argsort(-scores[kept], kind="stable")]
        back = 1.0 / factor  # shrunk -> original pixels, as FaceDetector maps them
        return [Face(box=(boxes[k] * back).astype(np.float32), landmarks=(landmarks[k] * back).astype(np.float32),
                     score=float(scores[k])) for k in kept]
