"""Small hand-computed checks of poi_cli/data: faces.py (template, face_at, scaling, the blank
check, the formats poi opens, EXIF, the size limits), store.py (PreparedDataset's checks, label
files, split selection, DROPPED_LABEL) and preprocess.py (normalisation, Preprocessing).

Each test guards one bug a mutation audit found the rest of the suite let through. The tests
marked `deploy` import neither torch nor pandas (this file is collected in .venv-deploy too), so
every torch or pandas import is inside a test. Everything is generated in tmp_path.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poi_cli.data import faces
from poi_cli.data.faces import Face, ImageLoadError, face_at, is_blank, largest_face, load_image, shrink, similarity_transform
from poi_cli.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, model_input_array

from conftest import add_folds, make_prepared
from test_faces import png_header_only

deploy = pytest.mark.deploy


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_face(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face(box=np.array([x1, y1, x2, y2], np.float32), landmarks=np.zeros((5, 2), np.float32), score=0.9)


# ------------------------------------------------------------------------------ faces.py


@deploy
def test_the_template_is_arcfaces_five_points_scaled_by_size_over_112():
    # guards a typo in a template coordinate, or a wrong scale factor for other crop sizes
    arcface = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
    np.testing.assert_array_equal(faces.TEMPLATE_112, np.array(arcface, np.float32))
    np.testing.assert_allclose(faces.template(56), np.array(arcface) / 2, rtol=1e-6)
    np.testing.assert_allclose(faces.template(224)[0], [76.5892, 103.3926], rtol=1e-6)


@deploy
def test_face_at_counts_a_point_on_the_box_edge_and_checks_y_against_y2():
    # guards < for <= on the box's left edge, and y compared with x2 instead of y2
    face = box_face(10, 0, 20, 100)
    assert face_at([face], np.array([10.0, 50.0])) is face  # on the left edge
    assert face_at([face], np.array([20.0, 100.0])) is face  # on the bottom-right corner
    assert face_at([face], np.array([15.0, 50.0])) is face  # y = 50 > x2 = 20, still inside
    assert face_at([face], np.array([15.0, 100.5])) is None
    assert face_at([face], np.array([9.9, 50.0])) is None


@deploy
def test_face_at_takes_the_nearest_box_centre_by_x_and_y():
    # guards max for min, and the y distance measured from x: A's centre (50, 70), B's (60, 30), point (50, 30):
    # squared distances A 0 + 1600, B 100 + 0 (with y's term taken from x: A 400, B 500)
    a, b = box_face(0, 0, 100, 140), box_face(20, 0, 100, 60)
    assert face_at([a, b], np.array([50.0, 30.0])) is b
    assert face_at([b, a], np.array([50.0, 30.0])) is b
    assert face_at([], np.array([0.0, 0.0])) is None


@deploy
def test_largest_face_is_by_width_times_height():
    # guards an area from the wrong coordinates: tall 10 x 100 = 1000 beats square 30 x 30 = 900
    # (with y2 - x1 for the height: 10 x 50 = 500 would lose)
    tall, square = box_face(50, 0, 60, 100), box_face(0, 0, 30, 30)
    assert largest_face([square, tall]) is tall
    assert largest_face([tall, square]) is tall


@deploy
def test_scaled_multiplies_box_and_landmarks_by_the_factor():
    # guards a detection mapped back from a shrunk image by dividing its landmarks (or box) instead
    face = Face(box=np.array([1, 2, 3, 4], np.float32), landmarks=np.arange(10, dtype=np.float32).reshape(5, 2), score=0.5)
    scaled = faces._scaled(face, 2.5)
    np.testing.assert_allclose(scaled.box, [2.5, 5.0, 7.5, 10.0])
    np.testing.assert_allclose(scaled.landmarks, np.arange(10).reshape(5, 2) * 2.5)
    assert scaled.score == 0.5 and scaled.box.dtype == np.float32 and scaled.landmarks.dtype == np.float32
    assert faces._scaled(face, 1.0) is face


@deploy
def test_shrink_returns_the_factor_that_maps_back():
    # guards the factor inverted (original / shrunk): detections would be mapped back 16x off
    image, factor = shrink(Image.new("RGB", (200, 100)), 50)
    assert image.size == (50, 25) and factor == 0.25
    same, one = shrink(Image.new("RGB", (50, 30)), 50)
    assert same.size == (50, 30) and one == 1.0


@deploy
def test_is_blank_needs_every_band_constant():
    # guards all -> any: an image with one flat channel is not blank; and grey (one band) images
    flat_red = np.zeros((8, 8, 3), np.uint8)
    flat_red[..., 1] = np.arange(8)[None, :] * 30
    assert not is_blank(Image.fromarray(flat_red))
    assert is_blank(Image.new("RGB", (8, 8), (7, 7, 7)))
    assert is_blank(Image.new("L", (8, 8), 3))
    assert not is_blank(Image.fromarray((np.arange(64).reshape(8, 8)).astype(np.uint8)))


@deploy
def test_a_bmp_is_read_and_an_ico_is_not(tmp_path):
    # guards IMAGE_FORMATS losing BMP, or gaining ICO (decoded whole inside Image.open)
    noise(20, 18).save(tmp_path / "photo.bmp")
    assert load_image(tmp_path / "photo.bmp").size == (20, 18)
    noise(32, 32).save(tmp_path / "icon.ico")
    with pytest.raises(ImageLoadError, match="not an image in a format poi reads"):
        load_image(tmp_path / "icon.ico")
    assert "BMP" in faces.IMAGE_FORMATS and "ICO" not in faces.IMAGE_FORMATS


@deploy
def test_exif_orientation_6_turns_the_photo_upright():
    # guards the orientation test negated or the wrong EXIF tag (0x0112): a sideways photo stays sideways
    stored = Image.new("RGB", (40, 20), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 20, 20))  # the left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    buffer.seek(0)
    turned = np.asarray(faces.decode_image(buffer))
    assert turned.shape == (40, 20, 3)  # 6: rotate 90 degrees clockwise to view
    assert turned[:18].mean() > 200 and turned[22:].mean() < 50  # the stored left half is now the top
    plain = Image.new("RGB", (40, 20))
    assert faces.upright(plain) is plain


@deploy
def test_the_size_limits_are_inclusive(tmp_path):
    # guards < MIN_SIDE -> <= (16 px refused) and > MAX_PIXELS -> >= (exactly 100 Mpx refused)
    noise(16, 40).save(tmp_path / "narrow.png")
    assert load_image(tmp_path / "narrow.png").size == (16, 40)
    noise(40, 15).save(tmp_path / "short.png")
    with pytest.raises(ImageLoadError, match="too small"):
        load_image(tmp_path / "short.png")
    png_header_only(tmp_path / "limit.png", 10000, 10000)  # exactly MAX_PIXELS: allowed, then has no pixel data
    with pytest.raises(ImageLoadError) as error:
        load_image(tmp_path / "limit.png")
    assert "too large" not in str(error.value)
    png_header_only(tmp_path / "over.png", 10000, 10001)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(tmp_path / "over.png")


@deploy
def test_similarity_transform_of_a_mirror_image_is_the_best_rotation_scaled_down():
    # guards the scale ignoring the reflection sign: cov = diag(-2, 0.5), var 2.5: a 180 degree
    # turn scaled by (2 - 0.5) / 2.5 = 0.6 (the reflection's scale would be 1)
    src = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    dst = src * np.array([-1.0, 1.0])
    np.testing.assert_allclose(similarity_transform(src, dst), [[-0.6, 0.0, 0.0], [0.0, -0.6, 0.0]], atol=1e-12)


@deploy
def test_align_face_of_a_large_face_lands_on_the_template():
    # guards the box-filter shrink of a large face: its landmarks must move by (k - 1) / 2 before / k
    size = 32
    # landmarks at 8x the template, so reduce(8) runs; a bright 8x8 block on each landmark's pixel block
    points = faces.template(size).astype(np.float64) * 8 + 3.5  # centre of each 8x8 input block
    canvas = np.zeros((size * 8, size * 8, 3), np.uint8)
    for x, y in points:
        cx, cy = int(x - 3.5), int(y - 3.5)
        canvas[cy: cy + 8, cx: cx + 8] = 255
    crop = faces.align_face(Image.fromarray(canvas), points, size)
    for x, y in faces.template(size):
        assert crop[int(round(y)), int(round(x))].min() > 100  # each landmark lands on its bright block


# ------------------------------------------------------------------------------ store.py


def edit_manifest(root: Path, **columns) -> None:
    import pandas as pd

    manifest = pd.read_csv(root / "manifest.csv", dtype={"id": str})
    for change in columns.values():
        changed = change(manifest)
        manifest = manifest if changed is None else changed
    manifest.to_csv(root / "manifest.csv", index=False)


def edit_meta(root: Path, change) -> None:
    meta = json.loads((root / "prepared.json").read_text())
    change(meta)
    (root / "prepared.json").write_text(json.dumps(meta))


def small_store(tmp_path: Path, **splits: int) -> Path:
    return make_prepared(tmp_path / "store", size=8, num_classes=3, splits=splits or {"train": 1, "valid": 1})


def test_a_store_of_another_format_or_without_classes_is_refused(tmp_path):
    # guards the format check and the empty-classes check being dropped
    from poi_cli.data.store import PreparedDataset, StoreError

    root = small_store(tmp_path)
    edit_meta(root, lambda m: m.update(format=2))
    with pytest.raises(StoreError, match="unsupported store format 2"):
        PreparedDataset(root)
    edit_meta(root, lambda m: m.update(format=1, classes=[]))
    with pytest.raises(StoreError, match="names no classes"):
        PreparedDataset(root)


def test_a_manifest_without_store_index_or_with_a_repeated_id_is_refused(tmp_path):
    # guards store_index dropped from the required columns, and the repeated-id check dropped
    from poi_cli.data.store import PreparedDataset, StoreError

    root = small_store(tmp_path)
    edit_manifest(root, x=lambda m: m.__setitem__("id", [m["id"][0], *m["id"][:-1]]))  # row 1 repeats row 0's id
    with pytest.raises(StoreError, match="appears more than once"):
        PreparedDataset(root)
    root = make_prepared(tmp_path / "other", size=8, num_classes=3, splits={"train": 1})
    edit_manifest(root, x=lambda m: m.drop(columns=["store_index"]))
    with pytest.raises(StoreError, match="lacks the column.s. store_index"):
        PreparedDataset(root)


def test_a_faces_npy_that_is_not_uint8_is_refused(tmp_path):
    # guards the dtype check of faces.npy being dropped (float faces would be read as pixels)
    from poi_cli.data.store import PreparedDataset, StoreError

    root = small_store(tmp_path)
    np.save(root / "faces.npy", np.zeros((6, 8, 8, 3), np.float32))
    with pytest.raises(StoreError, match="float32 .* not uint8 faces"):
        PreparedDataset(root)


def test_store_index_and_label_bounds_are_exclusive_at_the_top(tmp_path):
    # guards >= -> > on store_index (one past faces.npy's rows) and on the label (num_classes), the
    # label's < 0 check dropped, and a fractional store_index read as a row
    from poi_cli.data.store import PreparedDataset, StoreError

    root = small_store(tmp_path)  # 6 faces: train rows 0-2, valid rows 3-5
    data = PreparedDataset(root)
    assert data.split("train").store_rows.tolist() == [0, 1, 2]
    for column, value, message in (("store_index", 6, "store_index 6, outside"), ("store_index", 1.5, "store_index 1.5"),
                                   ("label", 3, "label 3, not a class index"), ("label", -1, "label -1, not a class index")):
        root = small_store(tmp_path / f"{column}{value}")

        def change(m, column=column, value=value):
            m[column] = m[column].astype(float if isinstance(value, float) else m[column].dtype)
            m.loc[0, column] = value

        edit_manifest(root, x=change)
        with pytest.raises(StoreError, match=message):
            PreparedDataset(root).split("train")


def test_validation_split_prefers_valid_then_val_but_not_the_excluded_one(tmp_path):
    # guards the preference order swapped and `exclude` ignored
    from poi_cli.data.store import PreparedDataset

    root = small_store(tmp_path, train=1, val=1, valid=1, test=1)
    data = PreparedDataset(root)
    assert data.validation_split() == "valid"
    assert data.validation_split(exclude="valid") == "val"
    assert data.validation_split(exclude="val") == "valid"
    only_test = PreparedDataset(small_store(tmp_path / "t", train=1, test=1))
    assert only_test.validation_split() is None


def test_old_stores_take_grayscale_from_their_meta(tmp_path):
    # guards the pre-Preprocessing fallback ignoring prepared.json's grayscale
    from poi_cli.data.store import PreparedDataset

    root = small_store(tmp_path)
    edit_meta(root, lambda m: (m.pop("preprocessing"), m.update(grayscale=True)))
    assert PreparedDataset(root).preprocessing == Preprocessing(face_size=8, input_size=8, grayscale=True)


def write_labels(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_label_file_label_must_be_below_the_class_count_or_dropped(tmp_path):
    # guards >= -> > on len(classes), DROPPED_LABEL refused by the range check, and its value
    from poi_cli.data.store import DROPPED_LABEL, StoreError, read_label_file

    classes = ["a", "b", "c"]
    assert DROPPED_LABEL == -1
    table = read_label_file(write_labels(tmp_path / "ok.csv", "id,label\nx,2\ny,-1\n"), classes)
    assert table["label"].tolist() == [2, -1]
    with pytest.raises(StoreError, match=r"row 2: label 3 is not a class index \(0 to 2"):
        read_label_file(write_labels(tmp_path / "three.csv", "id,label\nx,3\n"), classes)
    with pytest.raises(StoreError, match="row 3: clean_label -2 is not a class index"):
        read_label_file(write_labels(tmp_path / "neg.csv", "id,label,clean_label\nx,0,0\ny,1,-2\n"), classes)


def test_label_names_leave_dropped_empty_and_an_empty_name_is_no_contradiction(tmp_path):
    # guards k >= 0 -> k > 0 (class 0 losing its name) and an empty label_name read as contradicting
    from poi_cli.data.store import StoreError, label_names, read_label_file

    classes = ["a", "b", "c"]
    assert label_names([0, -1, 2], classes) == ["a", "", "c"]
    table = read_label_file(write_labels(tmp_path / "l.csv", "id,label,label_name\nx,0,a\ny,1,\nz,-1,\n"), classes)
    assert table["label"].tolist() == [0, 1, -1]
    with pytest.raises(StoreError, match="row 3: label_name 'c' contradicts label 1"):
        read_label_file(write_labels(tmp_path / "bad.csv", "id,label,label_name\nx,0,a\ny,1,c\n"), classes)


def test_apply_label_file_drops_minus_one_and_keeps_the_manifest_labels_as_clean(tmp_path):
    # guards dropped images kept, clean labels taken from the noisy file, and a trained image with clean_label -1
    from poi_cli.data.store import PreparedDataset, StoreError

    root = small_store(tmp_path)
    data = PreparedDataset(root)
    ids = data.split("train").ids.tolist()  # labels 0, 1, 2
    path = write_labels(tmp_path / "noisy.csv", f"id,label\n{ids[0]},2\n{ids[1]},-1\n{ids[2]},0\n")
    split = data.split("train", labels_file=path)
    assert split.ids.tolist() == [ids[0], ids[2]]
    assert split.labels.tolist() == [2, 0] and split.clean_labels.tolist() == [0, 2]
    assert split.store_rows.tolist() == [0, 2]
    bad = write_labels(tmp_path / "bad.csv", f"id,label,clean_label\n{ids[0]},1,-1\n{ids[1]},1,1\n{ids[2]},2,2\n")
    with pytest.raises(StoreError, match="is trained on .label 1. but its clean_label is -1"):
        data.split("train", labels_file=bad)


def test_folds_are_zero_to_folds_minus_one_and_exclude_fold_leaves_that_fold_out(tmp_path):
    # guards check_fold accepting fold == folds, and exclude_fold keeping only the excluded fold
    from poi_cli.data.store import PreparedDataset, StoreError

    root = add_folds(small_store(tmp_path, train=2), folds=3)  # 6 train images dealt round robin: folds 0,1,2,0,1,2
    data = PreparedDataset(root)
    with pytest.raises(StoreError, match=r"fold 3 is not in 0..2"):
        data.check_fold(3)
    data.check_fold(2)
    assert data.split("train", exclude_fold=1).store_rows.tolist() == [0, 2, 3, 5]
    assert data.split("fold1").store_rows.tolist() == [1, 4]


# ------------------------------------------------------------------------------ preprocess.py


@deploy
def test_numpy_model_input_is_x_minus_mean_over_std_per_channel():
    # guards mean and std swapped or multiplied, and the ImageNet constants reordered
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    faces_ = np.zeros((1, 2, 2, 3), np.uint8)
    faces_[..., 0] = 255  # red 1.0, green and blue 0
    out = model_input_array(faces_, 2)
    expected = [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]
    np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-5)
    assert out.shape == (1, 3, 2, 2)


@deploy
def test_preprocessing_model_input_array_is_at_input_size():
    # guards the numpy path resizing to face_size instead of the model's input_size
    out = Preprocessing(face_size=8, input_size=4).model_input_array(np.zeros((2, 8, 8, 3), np.uint8))
    assert out.shape == (2, 3, 4, 4)


def test_torch_normalize_and_to_model_input_by_hand():
    # guards mean/std swapped in normalize and /256 for /255
    torch = pytest.importorskip("torch")
    from poi_cli.data.preprocess import normalize, to_model_input

    x = torch.full((1, 3, 1, 1), 0.5)
    np.testing.assert_allclose(normalize(x).flatten().numpy(), [(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
                               rtol=1e-6)
    white = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    np.testing.assert_allclose(to_model_input(white, 2)[0, :, 0, 0].numpy(),
                               [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], rtol=1e-6)


@deploy
def test_preprocessing_rejects_zero_std_and_zero_input_size():
    # guards std <= 0 -> < 0 (division by zero) and the input_size check dropped
    with pytest.raises(ValueError):
        Preprocessing(face_size=8, input_size=8, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError):
        Preprocessing(face_size=8, input_size=0)


@deploy
def test_for_model_changes_the_input_size_only_and_from_dict_reads_std():
    # guards for_model writing the model's size into face_size, and from_dict ignoring std
    assert Preprocessing(96, 96).for_model(64) == Preprocessing(face_size=96, input_size=64)
    custom = Preprocessing(8, 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125))
    assert Preprocessing.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom


@deploy
def test_a_grey_preprocessing_aligns_photos_to_grey():
    # guards Preprocessing.face ignoring grayscale: a colour photo must become three equal channels
    photo = noise(64, 64)
    points = faces.template(16).astype(np.float64) * 2 + 10
    grey = Preprocessing(16, 16, grayscale=True).face(photo, points)
    assert grey.shape == (16, 16, 3) and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    colour = Preprocessing(16, 16).face(photo, points)
    assert not (colour[..., 0] == colour[..., 1]).all()


@deploy
def test_align_face_box_filters_a_face_shrunk_between_2_and_4_times():
    # guards the box-filter threshold (scale < 0.5): at 1/3 scale bilinear sampling alone aliases a
    # 1 px checkerboard into stripes of 0..255; reduce(3) first averages it to 4/9 or 5/9 of 255
    size = 32
    board = ((np.indices((size * 3 + 40, size * 3 + 40)).sum(0) % 2) * 255).astype(np.uint8)
    points = faces.template(size).astype(np.float64) * 3 + 20
    crop = faces.align_face(Image.fromarray(board).convert("RGB"), points, size)[..., 0].astype(float)
    assert 100 <= crop.min() and crop.max() <= 155  # between 113 and 142, bilinear-blended
