"""poi_cli.data.faces: image loading, MTCNN detection (batched) and 5-point alignment.

Everything is generated in tmp_path or taken from skimage.data (the astronaut photo is
public domain); nothing here needs ../shared.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poi_cli.data import faces
from poi_cli.data.faces import (
    Face, FaceDetector, FaceDetectorError, ImageLoadError, align_face, is_grayscale, largest_face,
    load_image, resize_face, similarity_transform, template,
)


# ------------------------------------------------------------------------------ helpers

def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def load_unchanged(path: Path) -> Image.Image:
    """load_image, asserting the file is byte-for-byte and mtime unchanged afterwards."""
    before = snapshot(path)
    try:
        return load_image(path)
    finally:
        assert snapshot(path) == before


def load_error(path: Path) -> str:
    before = snapshot(path) if path.is_file() else None
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    if before is not None:
        assert snapshot(path) == before
    message = str(info.value)
    assert message and "\n" not in message
    return message


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height (8-bit RGB) with no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


def blob_image(points: np.ndarray, size: tuple[int, int], sigma: float) -> Image.Image:
    """Grey image with a bright Gaussian blob centred on each point (pixel-index coordinates)."""
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float64)
    value = np.zeros_like(xs)
    for x, y in points:
        value += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return Image.fromarray((np.clip(value, 0, 1) * 255).astype(np.uint8)).convert("RGB")


def blob_centres(crop: np.ndarray, near: np.ndarray, radius: int) -> np.ndarray:
    """Intensity-weighted centroid of the crop around each expected point."""
    grey = crop[..., 0].astype(np.float64)
    centres = []
    for x, y in near:
        x0, y0 = int(round(x)) - radius, int(round(y)) - radius
        window = grey[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
        ys, xs = np.mgrid[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]]
        centres.append([(xs * window).sum() / window.sum(), (ys * window).sum() / window.sum()])
    return np.array(centres)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.astronaut())


# ------------------------------------------------------------------------------ loading

def test_missing_empty_garbage_and_directory(tmp_path):
    assert "not found" in load_error(tmp_path / "nope.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in load_error(tmp_path / "empty.png")
    (tmp_path / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    assert "not an image" in load_error(tmp_path / "garbage.jpg")
    (tmp_path / "folder.png").mkdir()
    assert "not a regular file" in load_error(tmp_path / "folder.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_an_error(tmp_path, fmt):
    whole = tmp_path / f"whole.{fmt.lower()}"
    noise_image((96, 96)).save(whole, fmt)
    load_unchanged(whole)  # the intact file loads
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "cannot decode" in load_error(cut)


def test_too_small_and_too_large_are_refused_before_decoding(tmp_path):
    noise_image((15, 40)).save(tmp_path / "tiny.png")
    assert "too small" in load_error(tmp_path / "tiny.png")
    noise_image((16, 16)).save(tmp_path / "smallest.png")
    assert load_unchanged(tmp_path / "smallest.png").size == (16, 16)
    # 400 Mpx: PIL itself refuses this inside Image.open; 120 Mpx: only our limit does.
    for width, height in ((20000, 20000), (12000, 10000)):
        path = tmp_path / f"huge_{width}.png"
        png_header_only(path, width, height)
        assert "too large" in load_error(path)


def test_formats_that_decode_inside_open_are_refused_unread(tmp_path, monkeypatch):
    """An ICO holding a PNG is decoded whole inside PIL's Image.open, before the size check (a
    2.6 MB icon of 13000 x 13000 took 650 MB, and a server's decode outside its budgets);
    poi opens the photo formats only (faces.IMAGE_FORMATS)."""
    inner = tmp_path / "inner.png"
    png_header_only(inner, 13000, 13000)
    png = inner.read_bytes()
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)  # 0 x 0: "256 px or more"
    (tmp_path / "icon.ico").write_bytes(struct.pack("<HHH", 0, 1, 1) + entry + png)
    decoded = []
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self, *a: decoded.append(self.format) or None)
    assert load_error(tmp_path / "icon.ico") == faces.UNKNOWN_FORMAT
    assert decoded == []
    noise_image((40, 40)).save(tmp_path / "small.ico")
    assert load_error(tmp_path / "small.ico") == faces.UNKNOWN_FORMAT



@pytest.mark.parametrize("fmt,feature", [("AVIF", "avif"), ("JPEG2000", "jpg_2000"), ("WEBP", "webp")])
def test_photo_formats_of_phones_and_cameras_are_read(tmp_path, fmt, feature):
    from PIL import features

    if not features.check(feature):
        pytest.skip(f"this Pillow has no {fmt}")
    noise_image((40, 32)).save(tmp_path / f"photo.{fmt.lower()}", fmt)
    assert load_unchanged(tmp_path / f"photo.{fmt.lower()}").size == (40, 32)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, "JPEG", quality=95)  # pure red in CMYK
    image = load_unchanged(path)
    assert image.mode == "RGB"
    r, g, b = np.asarray(image).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    image = np.asarray(load_unchanged(path))
    assert image.dtype == np.uint8 and image.shape == (32, 256, 3)
    grey = image[0, :, 0]
    assert grey.min() == 0 and grey.max() == 255
    assert len(np.unique(grey)) > 200  # the whole ramp survives, not a clip to 255
    assert np.all(np.diff(grey.astype(int)) >= 0)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red where opaque
    rgba[:, :10, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    image = np.asarray(load_unchanged(tmp_path / "alpha.png"))
    assert image.shape == (20, 20, 3)
    assert tuple(image[5, 2]) == (200, 0, 0)
    assert tuple(image[5, 15]) == (255, 255, 255)
    # A palette image with a transparent index, and grey + alpha, follow the same rule.
    palette = Image.fromarray(np.array([[0, 1] * 10] * 20, dtype=np.uint8), "P")
    palette.putpalette([0, 0, 255, 0, 255, 0])
    palette.save(tmp_path / "palette.png", transparency=1)
    assert tuple(np.asarray(load_unchanged(tmp_path / "palette.png"))[0, :2].ravel()) == (0, 0, 255, 255, 255, 255)
    Image.new("LA", (20, 20), (0, 0)).save(tmp_path / "la.png")
    assert np.all(np.asarray(load_unchanged(tmp_path / "la.png")) == 255)


def test_grey_becomes_three_equal_channels(tmp_path):
    grey = (np.arange(400).reshape(20, 20) % 251).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    image = load_unchanged(tmp_path / "grey.png")
    assert image.mode == "RGB" and is_grayscale(image)
    assert np.array_equal(np.asarray(image)[..., 1], grey)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    stored[:, :20] = (255, 0, 0)  # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    image = load_unchanged(path)
    assert image.size == (20, 40)  # now 20 wide, 40 high
    pixels = np.asarray(image).astype(int)
    assert pixels[:20, :, 0].mean() > 200 and pixels[20:, :, 0].mean() < 50  # the left half is now on top


def test_is_grayscale_and_resize_face():
    grey = Image.fromarray(np.full((48, 48), 90, np.uint8), "L")
    assert is_grayscale(grey) and is_grayscale(grey.convert("RGB"))
    colour = np.full((48, 48, 3), 90, np.uint8)
    colour[0, 0, 2] = 91
    assert not is_grayscale(colour) and not is_grayscale(Image.fromarray(colour))
    resized = resize_face(grey, 224)
    assert resized.shape == (224, 224, 3) and resized.dtype == np.uint8 and is_grayscale(resized)
    assert resize_face(Image.fromarray(colour).resize((143, 181)), 96).shape == (96, 96, 3)


# ---------------------------------------------------------------------------- alignment

def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    angle, scale, shift = 0.6, 2.7, np.array([-31.0, 112.5])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = rng.uniform(0, 300, (5, 2))
    dst = src @ (scale * rotation).T + shift
    matrix = similarity_transform(src, dst)
    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-7)
    # A mirrored point set is fitted by the best rotation, never by a reflection.
    mirrored = similarity_transform(src, dst * np.array([-1.0, 1.0]))
    assert np.linalg.det(mirrored[:, :2]) > 0


@pytest.mark.parametrize("face_scale", [0.6, 1.3, 3.5])  # 0.6 enlarges; 3.5 takes the box-filter path
def test_align_face_puts_landmarks_on_the_template(face_scale):
    angle = 0.35
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # Landmarks of a face somewhere in a larger photo: the template, rotated, scaled, moved.
    landmarks = template(224) @ (face_scale * rotation).T + np.array([150.0, 90.0])
    size = (int(landmarks[:, 0].max() + 200), int(landmarks[:, 1].max() + 200))
    photo = blob_image(landmarks, size, sigma=2.0 * face_scale)
    crop = align_face(photo, landmarks, 224)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    found = blob_centres(crop, template(224), radius=6)
    # Sub-pixel: a half-pixel convention slip shows up as 0.2-0.8 px here.
    np.testing.assert_allclose(found, template(224), atol=0.05)


def test_template_and_largest_face():
    assert template(112).dtype == np.float32
    np.testing.assert_allclose(template(224), faces.TEMPLATE_112 * 2)
    small = Face(np.array([0, 0, 10, 10], np.float32), np.zeros((5, 2), np.float32), 0.99)
    big = Face(np.array([0, 0, 30, 20], np.float32), np.zeros((5, 2), np.float32), 0.80)
    assert largest_face([small, big]) is big
    assert largest_face([]) is None


# ---------------------------------------------------------------------------- detection

def test_astronaut_detect_align_redetect(detector, astronaut):
    found = detector.detect([astronaut])[0]
    assert len(found) == 1
    face = found[0]
    assert face.box.shape == (4,) and face.landmarks.shape == (5, 2) and face.score > 0.9
    assert face.box.dtype == np.float32 and face.landmarks.dtype == np.float32
    x1, y1, x2, y2 = face.box
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
    assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
    # The fitted similarity takes the landmarks near the template (a smile widens the
    # mouth, so the 5-point least-squares fit cannot be exact)...
    matrix = similarity_transform(face.landmarks, template(224))
    expected = apply(matrix, face.landmarks)
    assert np.abs(expected[:2] - template(224)[:2]).max() < 6  # eyes
    assert np.abs(expected - template(224)).max() < 12
    # ...and the detector, run again on the aligned crop, finds them where the matrix says.
    crop = align_face(astronaut, face.landmarks, 224)
    again = detector.detect([Image.fromarray(crop)])[0]
    assert len(again) == 1
    assert np.abs(again[0].landmarks - expected).max() < 4


def test_batched_detection_equals_per_image(detector, astronaut, monkeypatch):
    small = astronaut.resize((256, 256))  # small images keep this test fast
    wide = Image.new("RGB", (450, 200), (40, 60, 80))
    wide.paste(astronaut.resize((190, 190)), (235, 5))
    images = [
        small,
        wide,  # another size, face elsewhere and smaller
        Image.new("RGB", (150, 100), (128, 128, 128)),  # no face
        small.copy(),  # same size as the first
        astronaut.resize((240, 250)),  # another size, same 256 x 256 canvas
        Image.new("RGB", (15, 200)),  # narrower than the smallest face: no face, no crash
    ]
    calls = []
    original = detector.mtcnn.detect
    monkeypatch.setattr(detector.mtcnn, "detect", lambda batch, **kw: calls.append(len(batch)) or original(batch, **kw))
    batched = detector.detect(images)
    assert sorted(calls) == [1, 1, 3]  # one call per canvas size; the 15 px wide image is skipped
    single = [detector.detect([image])[0] for image in images]
    assert [len(f) for f in batched] == [len(f) for f in single] == [1, 1, 0, 1, 1, 0]
    for many, one in zip(batched, single):
        for a, b in zip(many, one):
            np.testing.assert_allclose(a.box, b.box, atol=0.05)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.05)
            assert abs(a.score - b.score) < 1e-4
    # The pasted face is reported in the wide image's own pixels.
    cx = (batched[1][0].box[0] + batched[1][0].box[2]) / 2
    assert 235 < cx < 425


def test_large_images_are_shrunk_and_mapped_back(detector, astronaut):
    face = FaceDetector(max_side=256).detect([astronaut])[0][0]
    full = detector.detect([astronaut])[0][0]
    # Detected on a 256 px copy, reported in the 512 px original's coordinates.
    assert np.abs(face.landmarks - full.landmarks).max() < 6


def test_missing_facenet_gives_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # makes the import fail
    with pytest.raises(FaceDetectorError, match="scripts/setup.sh"):
        FaceDetector()


def test_high_bit_depth_modes_keep_their_range():
    ints = Image.fromarray(np.array([[0, 1000, 65535]] * 3, dtype=np.int32), "I")
    assert tuple(np.asarray(faces.to_rgb(ints))[0, :, 0]) == (0, 4, 255)
    small_ints = Image.fromarray(np.array([[0, 100, 255]] * 3, dtype=np.int32), "I")
    assert tuple(np.asarray(faces.to_rgb(small_ints))[0, :, 0]) == (0, 100, 255)
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]] * 3, dtype=np.float32), "F")
    assert tuple(np.asarray(faces.to_rgb(floats))[0, :, 0]) == (0, 128, 255)


def test_min_score_drops_low_scored_detections(detector, astronaut):
    score = detector.detect([astronaut])[0][0].score
    assert len(FaceDetector(min_score=score - 1e-3).detect([astronaut])[0]) == 1
    assert FaceDetector(min_score=score + 1e-6).detect([astronaut])[0] == []
