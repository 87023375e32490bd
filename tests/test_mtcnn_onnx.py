"""OnnxMTCNN (poi_cli/data/mtcnn.py): MTCNN on ONNX Runtime without torch.

The box arithmetic is pinned on hand-computed values; the detector is checked on the
committed public-domain astronaut photo against the torch FaceDetector it replaces
(skipped without facenet-pytorch), for batch independence, for images without a face or too small
to search, and for never importing torch.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poi_cli.data.faces import FaceDetectorError
from poi_cli.data.mtcnn import (
    WEIGHTS_DIR,
    OnnxMTCNN,
    area_resize,
    batched_nms,
    crop_bounds,
    generate_boxes,
    integral_image,
    landmarks_in_box,
    nms,
    pyramid_scales,
    regress,
    square,
)
from poi_cli.deploy.tracking import box_iou

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.deploy  # `make test` runs it again in .venv-deploy (no torch, no scikit-image)
ASTRONAUT = Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"  # public domain (NASA), committed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector() -> OnnxMTCNN:
    return OnnxMTCNN(threads=1)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


# ------------------------------------------------------------------------ box arithmetic

# D lies inside A (IoU 0.25, overlap of the smaller 1.0); B is A shifted by 1 px (IoU 90/110);
# C is apart from all.
BOXES = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 5, 5]], dtype=np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.95], dtype=np.float32)


def test_nms_union_drops_boxes_overlapping_a_better_one_by_iou() -> None:
    # D kept first; D-A IoU 0.25 and D-B IoU 20/105 stay; A drops B (IoU 0.82); C stays.
    assert nms(BOXES, SCORES, 0.5).tolist() == [3, 0, 2]
    assert nms(BOXES, SCORES, 0.85).tolist() == [3, 0, 1, 2]  # 0.82 is not above 0.85


def test_nms_min_drops_boxes_inside_a_better_one() -> None:
    # D kept; A (overlap 25 / min(25, 100) = 1) and B (20 / 25 = 0.8) inside it dropped.
    assert nms(BOXES, SCORES, 0.5, mode="min").tolist() == [3, 2]
    assert nms(BOXES, SCORES, 0.9, mode="min").tolist() == [3, 1, 2]  # B's 0.8 stays; A's 1.0 not


def test_nms_keeps_an_overlap_equal_to_the_threshold() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=np.float32)  # IoU exactly 0.5
    assert nms(boxes, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]


def test_batched_nms_never_suppresses_across_images() -> None:
    boxes = np.concatenate([BOXES, BOXES])
    scores = np.concatenate([SCORES, SCORES])
    groups = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == [7, 4, 6, 3, 0, 2]
    assert batched_nms(boxes[:0], scores[:0], groups[:0], 0.5).tolist() == []


def test_regress_pnet_and_rnet_conventions() -> None:
    box = np.array([[10, 20, 30, 60]], dtype=np.float32)  # 20 x 40 (21 x 41 pixel-inclusive)
    offsets = np.array([[0.1, -0.1, 0.2, 0.05]], dtype=np.float32)
    np.testing.assert_allclose(regress(box, offsets, inclusive=False), [[12, 16, 34, 62]], rtol=1e-6)
    np.testing.assert_allclose(regress(box, offsets, inclusive=True), [[12.1, 15.9, 34.2, 62.05]], rtol=1e-6)


def test_square_keeps_the_centre_and_takes_the_longer_side() -> None:
    boxes = np.array([[10, 20, 30, 60], [0, 0, 8, 4]], dtype=np.float32)
    np.testing.assert_allclose(square(boxes), [[0, 20, 40, 60], [0, -2, 8, 6]])


def test_crop_bounds_truncate_and_clip_to_the_canvas() -> None:
    boxes = np.array([[-3.7, 2.9, 50.2, 70.9], [10.5, 10.5, 20.5, 20.5], [-30, 5, -20, 15]], dtype=np.float32)
    bounds = crop_bounds(boxes, widths=np.array([48, 48, 48]), heights=np.array([64, 64, 64]))
    # Pixels x1 - 1 .. x2 - 1 of the truncated box; the third lies left of the canvas: empty.
    assert bounds.tolist() == [[0, 1, 48, 64], [9, 9, 20, 20], [0, 4, -20, 15]]


def test_generate_boxes_maps_windows_to_canvas_pixels() -> None:
    probability = np.zeros((2, 2, 3), dtype=np.float32)
    probability[1, 1, 2] = 0.9  # image 1, row 1, column 2: the window at x = 4, y = 2 of the level
    probability[0, 0, 0] = 0.5  # below the threshold
    offsets = np.arange(2 * 4 * 2 * 3, dtype=np.float32).reshape(2, 4, 2, 3)
    boxes, scores, found, image = generate_boxes(probability, offsets, scale=0.5, threshold=0.6)
    # floor((2 * x + 1) / s), floor((2 * x + 12) / s) with s = 0.5
    assert boxes.tolist() == [[10, 6, 32, 28]]
    assert scores.tolist() == pytest.approx([0.9]) and image.tolist() == [1]
    assert found.tolist() == offsets[1, :, 1, 2][None].tolist()


def test_landmarks_are_fractions_of_the_pixel_inclusive_box() -> None:
    box = np.array([[9, 19, 29, 39]], dtype=np.float32)  # 21 x 21 pixels
    points = np.array([[0, 0.5, 1, 0.25, 0.75, 0, 0.2, 0.4, 0.6, 1]], dtype=np.float32)
    expected = [[8, 18], [18.5, 22.2], [29, 26.4], [13.25, 30.6], [23.75, 39]]
    np.testing.assert_allclose(landmarks_in_box(box, points)[0], expected, rtol=1e-6)


def test_pyramid_starts_on_predictions_grid() -> None:
    # Prediction's torch pyramid for 20 px faces: 12/20 * 0.709**k while the short side >= 12 px.
    grid = [0.6 * 0.709**k for k in range(4)]  # a 60 px side at these scales: 36, 25.5, 18.1, 12.8 px
    assert pyramid_scales(60, 20) == pytest.approx(grid)
    # 40 px: from the grid's 39.8 px level (12 / (0.6 * 0.709**2)), down to the same last level.
    assert pyramid_scales(60, 40) == pytest.approx(grid[2:])
    assert pyramid_scales(1024, 40)[0] == pytest.approx(0.6 * 0.709**2)
    assert pyramid_scales(1024, 12)[0] == pytest.approx(0.6 / 0.709**2)  # 10 px level: finer than the grid's start


def test_integral_image_and_area_resize() -> None:
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    table = integral_image(array)
    expected = np.zeros((6, 3, 8), dtype=np.int64)
    expected[1:, :, 1:] = array.astype(np.int64).cumsum(0).cumsum(1).transpose(0, 2, 1)
    assert np.array_equal(table, expected)

    row = np.zeros((1, 3, 3), dtype=np.uint8)
    row[0, :, 0] = [0, 3, 6]  # red channel 0, 3, 6
    # 3 -> 2 outputs: bins [0, 2) and [1, 3) overlap (adaptive average pooling).
    resized = area_resize(integral_image(row), np.array([[0, 0, 3, 1]]), 1, 2)
    np.testing.assert_allclose(resized[0, 0], [[1.5, 4.5]])
    # A region reaching past the image: the canvas there is black, counted in the mean.
    padded = area_resize(integral_image(row), np.array([[0, 0, 6, 1]]), 1, 2)
    np.testing.assert_allclose(padded[0, 0], [[3.0, 0.0]])


# ------------------------------------------------------------------------------ detector

def test_one_face_on_astronaut(detector: OnnxMTCNN, astronaut: Image.Image) -> None:
    faces = detector.detect([astronaut])[0]
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.99 and face.box.dtype == np.float32 and face.landmarks.shape == (5, 2)
    x1, y1, x2, y2 = face.box
    eye_left, eye_right, nose, mouth_left, mouth_right = face.landmarks
    assert eye_left[0] < eye_right[0] and mouth_left[0] < mouth_right[0]  # image-left first
    assert max(eye_left[1], eye_right[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert np.all((face.landmarks >= [x1, y1]) & (face.landmarks <= [x2, y2]))


def test_same_face_as_the_torch_detector(detector: OnnxMTCNN, astronaut: Image.Image) -> None:
    pytest.importorskip("facenet_pytorch")
    from poi_cli.data.faces import FaceDetector

    reference = FaceDetector().detect([astronaut])[0]
    assert len(reference) == 1
    face = detector.detect([astronaut])[0][0]
    assert box_iou(face.box, reference[0].box) >= 0.8
    assert np.abs(face.landmarks - reference[0].landmarks).max() < 3.0
    assert face.score == pytest.approx(reference[0].score, abs=1e-3)


def test_no_face(detector: OnnxMTCNN) -> None:
    grey = Image.new("RGB", (320, 240), (128, 128, 128))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    assert detector.detect([grey, noise]) == [[], []]
    assert detector.detect([]) == []


def test_an_images_faces_do_not_depend_on_the_batch(detector: OnnxMTCNN, astronaut: Image.Image) -> None:
    camera = astronaut.transpose(Image.Transpose.FLIP_TOP_BOTTOM)  # 512 x 512 too: shares the astronaut's P-net calls
    coffee = Image.new("RGB", (600, 400), (90, 120, 150))  # another canvas
    alone = detector.detect([astronaut])[0]
    for batch in ([astronaut, camera], [coffee, astronaut, camera]):
        together = detector.detect(batch)[batch.index(astronaut)]
        assert len(together) == len(alone)
        for a, b in zip(alone, together):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)


def test_images_below_the_minimum_face_size_give_no_face(detector: OnnxMTCNN) -> None:
    tiny = Image.new("RGB", (30, 30), (200, 150, 120))
    strip = Image.new("RGB", (300, 20), (200, 150, 120))
    assert detector.detect([tiny, strip]) == [[], []]


def test_large_images_are_shrunk_and_mapped_back(detector: OnnxMTCNN, astronaut: Image.Image) -> None:
    full = detector.detect([astronaut])[0][0]
    small = OnnxMTCNN(max_side=256, threads=1).detect([astronaut])[0]
    assert len(small) == 1
    assert box_iou(small[0].box, full.box) >= 0.8  # in the original's pixels
    assert np.abs(small[0].landmarks - full.landmarks).max() < 6.0


def test_min_score_drops_faces(astronaut: Image.Image) -> None:
    assert OnnxMTCNN(min_score=1.01, threads=1).detect([astronaut]) == [[]]


def test_missing_weights_and_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FaceDetectorError, match="export_mtcnn_onnx"):
        OnnxMTCNN(weights_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(FaceDetectorError, match="pip install onnxruntime"):
        OnnxMTCNN()


def test_shipped_weights_match_the_manifest() -> None:
    files = json.loads((ROOT / "data_manifests" / "weights.json").read_text())["files"]
    for net in ("pnet", "rnet", "onet"):
        entry = files[f"mtcnn/{net}.onnx"]
        assert hashlib.sha256((WEIGHTS_DIR / f"{net}.onnx").read_bytes()).hexdigest() == entry["sha256"]
        assert entry["licence"].startswith("MIT")


def test_detection_never_imports_torch(tmp_path: Path, astronaut: Image.Image) -> None:
    astronaut.save(tmp_path / "astronaut.png")
    code = textwrap.dedent(f"""
        import sys
        from PIL import Image
        from poi_cli.data.mtcnn import OnnxMTCNN
        faces = OnnxMTCNN(threads=1).detect([Image.open({str(tmp_path / "astronaut.png")!r}).convert("RGB")])
        assert len(faces[0]) == 1, faces
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
