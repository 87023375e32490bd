"""Small hand-computed checks of `poi prepare`'s parts: data/mtcnn.py (the numpy around the ONNX
nets: NMS, the pyramid, P-net's windows, the input scaling, the rounds, the crops, the last two
stages and the mapping back, driven by stub nets), data/prepare.py (argument and OUT_DIR checks,
the protocol, the settings, the journal, the notes), data/datasets/common.py and folders.py
(image listing, the class-folder tree) and data/duplicates.py (the notes on repeated faces).

Each test guards one behaviour a mutation audit found the rest of the suite let through. The tests
marked `deploy` import neither torch nor pandas (this file is collected in .venv-deploy too): the
pandas modules (prepare.py, duplicates.py) are imported inside their tests. The MTCNN stubs need no
ONNX Runtime: OnnxMTCNN is built without __init__ and its nets are fakes. Everything is generated
in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poi_cli.data.datasets.common import (Item, LayoutError, ParsedDataset, expected_counts, labelled_classes,
                                          list_images, missing_reason)
from poi_cli.data.datasets.folders import below_wrappers, class_folder_items, parse_folder
from poi_cli.data.faces import FaceDetector
from poi_cli.data.mtcnn import (OnnxMTCNN, generate_boxes, integral_image, net_input, nms, pyramid_scales)

deploy = pytest.mark.deploy


def png(path: Path, value: int = 100, size: tuple[int, int] = (40, 40), mode: str = "RGB") -> Path:
    """A small image with a gradient (not blank), written at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) % 50 + value).astype(np.uint8)
    image = Image.fromarray(pixels) if mode == "L" else Image.fromarray(np.stack([pixels, pixels // 2, 255 - pixels], axis=2))
    image.save(path)
    return path


class FakeNet:
    """A stand-in ONNX session: run() records its input and returns `outputs` cut to the batch."""

    def __init__(self, *outputs: np.ndarray) -> None:
        self.outputs, self.inputs = outputs, []

    def run(self, _names, feed):
        batch = feed["input"]
        self.inputs.append(batch)
        return [output[: len(batch)] for output in self.outputs]


def stub_detector(**nets: FakeNet) -> OnnxMTCNN:
    """OnnxMTCNN without its ONNX sessions (no onnxruntime needed): the numpy around the nets."""
    detector = object.__new__(OnnxMTCNN)
    detector.min_face_size, detector.thresholds, detector.max_side, detector.min_score = 40, (0.6, 0.7, 0.7), 1024, 0.0
    detector.sessions = dict(nets)
    return detector


def uniform_table(height: int, width: int, value: int = 200) -> np.ndarray:
    return integral_image(np.full((height, width, 3), value, np.uint8))


# ------------------------------------------------------------------------- mtcnn.py: numpy


@deploy
def test_nms_min_keeps_a_degenerate_box():
    # guards the 1e-12 floor of the denominator: a zero-area box overlaps nothing (0 / 0 would be NaN,
    # and NaN <= threshold is False, so "min" mode dropped it)
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 5]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8]), 0.5, mode="min").tolist() == [0, 1]


@deploy
def test_pyramid_keeps_a_level_exactly_at_min_face_size_and_a_last_level_of_12_px():
    # guards the (1 + 1e-9) tolerance: 20 * (1 / 0.709) px is the grid's second level (20 / 0.709 = 28.2 px)
    # 1 ulp low, and without the tolerance that level was left for the finer 20 px one (scale 0.6)
    assert pyramid_scales(200, 20 * (1 / 0.709))[0] == pytest.approx(0.6 * 0.709)
    # guards side >= 12: a 20 px side at scale 0.6 is exactly P-net's 12 px window, still one level
    assert pyramid_scales(20, 20) == pytest.approx([0.6])


@deploy
def test_generate_boxes_keeps_a_window_scored_exactly_at_the_threshold():
    # guards >= (P-net's rule: windows scoring thresholds[0] or more): 0.5 is exact in float32
    probability = np.array([[[0.5, 0.49]]], np.float32)
    boxes, scores, _, image = generate_boxes(probability, np.zeros((1, 4, 1, 2), np.float32), scale=1.0, threshold=0.5)
    assert boxes.tolist() == [[1, 1, 12, 12]] and scores.tolist() == [0.5] and image.tolist() == [0]


@deploy
def test_net_input_maps_0_and_255_symmetrically_around_127_5():
    # guards the centre 127.5 (facenet-pytorch's (x - 127.5) / 128): 0 -> -127.5 / 128, 255 -> +127.5 / 128
    np.testing.assert_array_equal(net_input(np.array([0, 127.5, 255], np.float32)), [-0.99609375, 0, 0.99609375])


# ------------------------------------------------------------------- mtcnn.py: stubbed nets


@deploy
def test_an_image_whose_short_side_equals_min_face_size_is_searched():
    # guards >= in detect(): a 40 px short side can hold a 40 px face; 39 px cannot
    detector = stub_detector()
    seen = []

    def record(arrays):
        seen.extend(array.shape for array in arrays)
        return [(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))) for _ in arrays]

    detector._detect_round = record
    found = detector.detect([Image.new("RGB", (60, 40)), Image.new("RGB", (60, 39))])
    assert found == [[], []] and seen == [(40, 60, 3)]


@deploy
def test_rounds_hold_at_most_max_batch_pixels_inclusive():
    # guards pixels + this image > MAX_BATCH_PIXELS: four 2048 x 2048 canvases fill a 16 Mi-pixel round
    # exactly, the fifth starts a new one (counting only the pixels so far put all five in one)
    assert FaceDetector.MAX_BATCH_PIXELS == 4 * 2048 * 2048
    arrays = [np.broadcast_to(np.uint8(0), (2048, 2048, 3))] * 5  # no memory: only .shape is read
    assert stub_detector()._rounds(list(range(5)), arrays) == [[0, 1, 2, 3], [4]]


@deploy
def test_faces_keeps_centres_inside_the_image_at_min_score_and_maps_back():
    # guards: x compared with the width (shape[1]) and y with the height, score >= min_score, sorted by score,
    # boxes and landmarks times 1 / factor
    detector = stub_detector()
    detector.min_score = 0.8
    array = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high
    boxes = np.array([[20, 0, 40, 20],  # centre (30, 10): inside
                      [0, 20, 20, 30],  # centre (10, 25): below the image
                      [0, 0, 10, 10],  # centre (5, 5): inside, best score
                      [0, 0, 4, 4]], np.float32)  # inside but scored under min_score
    scores = np.array([0.8, 0.95, 0.9, 0.7], np.float32)
    landmarks = np.arange(4 * 10, dtype=np.float32).reshape(4, 5, 2)
    faces = detector._faces(array, boxes, scores, landmarks, factor=0.5)
    assert [face.score for face in faces] == pytest.approx([0.9, 0.8])
    np.testing.assert_array_equal(faces[0].box, [0, 0, 20, 20])
    np.testing.assert_array_equal(faces[1].box, [40, 0, 80, 40])
    np.testing.assert_array_equal(faces[1].landmarks, landmarks[0] * 2)


@deploy
def test_crops_clip_width_and_height_to_their_own_canvas_side_and_drop_empty_ones():
    # guards crop_bounds(widths=canvas width, heights=canvas height) and the emptiness check on both axes:
    # on a 64 high x 128 wide canvas a box at x 100..120 is inside, one at y 70..80 is below it
    boxes = np.array([[100, 10, 120, 30], [10, 70, 20, 80], [0, 0, 24, 24]], np.float32)
    tables = [uniform_table(30, 70, value=200)]  # the image: 30 x 70; canvas_shape -> (64, 128)
    kept, image, crops = stub_detector()._crops(tables, np.array([[64, 128]]), boxes, np.zeros(3, np.intp), 24)
    assert kept.tolist() == [[100, 10, 120, 30], [0, 0, 24, 24]] and image.tolist() == [0, 0]
    assert crops.shape == (2, 3, 24, 24)
    assert crops[0].max() == 0  # x 99..119 lies right of the 70 px image: black canvas
    np.testing.assert_array_equal(crops[1], 200)  # x, y 0..23 (clipped at 0) inside the image


@deploy
def test_pnet_level_size_is_facenets_int_of_side_times_scale_plus_1():
    # guards int(side * scale + 1): a 64 x 128 canvas at scale 0.3 is a 20 x 39 level (19 x 38 without the + 1),
    # its pixels the image's (black beyond it), scaled by net_input
    pnet = FakeNet(np.zeros((1, 4, 5, 14), np.float32), np.zeros((1, 2, 5, 14), np.float32))
    detector = stub_detector(pnet=pnet)
    detector._pnet_level([uniform_table(64, 128, value=200)], 64, 128, 0.3)
    level = pnet.inputs[0]
    assert level.shape == (1, 3, 20, 39)
    np.testing.assert_allclose(level[0, :, :19, :38], (200 - 127.5) / 128, rtol=1e-6)


@deploy
def test_propose_merges_levels_by_iou_0_7_then_squares():
    # guards the cross-level NMS threshold 0.7: two windows of IoU 0.6 from two levels both stay (0.5 drops one);
    # P-net regression is non-inclusive (x2 - x1), then each box is squared
    detector = stub_detector()
    detector.min_face_size = 20
    levels = {}

    def pnet_level(tables, height, width, scale):
        k = len(levels)
        levels[scale] = k
        if k == 0:  # box A 0..10 x 0..10, offsets shift x1 by 0.1 * 10
            return (np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32),
                    np.array([[0.1, 0, 0, 0]], np.float32), np.array([0]))
        if k == 1:  # box B 0..10 x 0..16: IoU with A 100 / 160 = 0.625
            return (np.array([[0, 0, 10, 16]], np.float32), np.array([0.8], np.float32),
                    np.zeros((1, 4), np.float32), np.array([0]))
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.float32), np.zeros(0, int))

    detector._pnet_level = pnet_level
    boxes, image = detector._propose([uniform_table(64, 64)], np.array([[64, 64]]))
    assert len(levels) >= 2 and image.tolist() == [0, 0]
    # A regressed: 1..10 x 0..10 (9 x 10) -> square side 10 about (5.5, 5); B: 0..10 x 0..16 -> side 16 about (5, 8)
    np.testing.assert_allclose(boxes, [[0.5, 0, 10.5, 10], [-3, 0, 13, 16]])


@deploy
def test_refine_regresses_pixel_inclusive_then_squares():
    # guards inclusive=True in R-net's regression: box 0..20, offset 0.1 moves x1 by 0.1 * 21 = 2.1 (not 2.0);
    # squared about its centre: side 20, x 1.05..21.05
    rnet = FakeNet(np.array([[0.1, 0, 0, 0]], np.float32), np.array([[0.1, 0.9]], np.float32))
    boxes, scores, image = stub_detector(rnet=rnet)._refine([uniform_table(64, 64)], np.array([[64, 64]]),
                                                           np.array([[0, 0, 20, 20]], np.float32), np.array([0]))
    np.testing.assert_allclose(boxes, [[1.05, 0, 21.05, 20]], rtol=1e-6)
    assert scores.tolist() == pytest.approx([0.9]) and image.tolist() == [0]
    assert rnet.inputs[0].shape == (1, 3, 24, 24)


@deploy
def test_output_landmarks_use_the_box_before_regression_and_min_nms_drops_the_inner_box():
    # guards: O-net's landmarks are fractions of the box it saw (9..29: 21 px, so 0.5 -> 9 + 10.5 - 1 = 18.5),
    # not of the regressed one; and the last NMS is "min" (B inside A: overlap 64 / 64 = 1 > 0.7; IoU only 0.18)
    offsets = np.array([[0.1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    points = np.full((2, 10), 0.5, np.float32)
    probability = np.array([[0.1, 0.9], [0.2, 0.8]], np.float32)
    detector = stub_detector(onet=FakeNet(offsets, points, probability))
    candidates = np.array([[9, 9, 29, 29], [12, 12, 20, 20]], np.float32)
    boxes, scores, landmarks, image = detector._output([uniform_table(64, 64)], np.array([[64, 64]]), candidates,
                                                       np.array([0, 0]))
    np.testing.assert_allclose(boxes, [[11.1, 9, 29, 29]], rtol=1e-6)  # x1 + 0.1 * 21
    np.testing.assert_allclose(landmarks, np.full((1, 5, 2), 18.5), rtol=1e-6)
    assert scores.tolist() == pytest.approx([0.9]) and image.tolist() == [0]


# ------------------------------------------------------------------------------ prepare.py


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 31}, "--size must lie in 32..1024, got 31"),
    ({"size": 1025}, "--size must lie in 32..1024, got 1025"),
    ({"batch_size": 0}, "--batch must be at least 1, got 0"),
])
def test_prepare_refuses_sizes_and_batches_out_of_range(tmp_path, kwargs, message):
    # guards both ends of 32..1024 and batch >= 1: said before RAW_DIR is even read
    from poi_cli.data.prepare import PrepareError, prepare

    with pytest.raises(PrepareError, match=message):
        prepare("folder", tmp_path / "nowhere", tmp_path / "out", show_progress=False, **kwargs)


def test_prepare_refuses_out_as_raw_a_file_or_inside_a_prepared_folder(tmp_path):
    # guards: --out equal to RAW_DIR (not only below it), --out a file, --out inside another store
    from poi_cli.data.prepare import PrepareError, prepare

    raw = tmp_path / "raw"
    png(raw / "happy" / "a.png")
    with pytest.raises(PrepareError, match="lies inside RAW_DIR"):
        prepare("folder", raw, raw, detect=False, show_progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PrepareError, match="exists and is not a folder"):
        prepare("folder", raw, tmp_path / "afile", detect=False, show_progress=False)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "prepared.json").write_text("{}")
    with pytest.raises(PrepareError, match="lies inside the prepared dataset"):
        prepare("folder", raw, tmp_path / "store" / "inner", detect=False, show_progress=False)
    assert not (tmp_path / "store" / "inner").exists()


def test_prepare_names_an_unknown_split_and_the_available_ones(tmp_path):
    # guards the check of --splits: an unknown name was a silently empty store
    from poi_cli.data.prepare import PrepareError, prepare

    raw = tmp_path / "raw"
    png(raw / "happy" / "a.png")
    with pytest.raises(PrepareError, match=r"split\(s\) nosuch not found in RAW_DIR \(available: train\)"):
        prepare("folder", raw, tmp_path / "out", splits=["nosuch"], detect=False, show_progress=False)


def test_test_fraction_excludes_folds_and_a_shipped_test_split(tmp_path):
    # guards both refusals of --test-fraction (it is for sets without a test split, and not with --folds)
    from poi_cli.data.prepare import PrepareError, prepare

    raw = tmp_path / "raw"
    png(raw / "train" / "happy" / "a.png")
    png(raw / "test" / "happy" / "b.png")
    with pytest.raises(PrepareError, match="exclude each other"):
        prepare("folder", raw, tmp_path / "o1", folds=2, test_fraction=0.2, detect=False, show_progress=False)
    with pytest.raises(PrepareError, match="already has a test split"):
        prepare("folder", raw, tmp_path / "o2", test_fraction=0.2, detect=False, show_progress=False)


def ck_parsed(subjects: int) -> ParsedDataset:
    items = [Item(id=f"S{s:03d}_{k}.png", source=f"S{s:03d}_{k}.png", split="train", label=1, extra={"subject": f"S{s:03d}"})
             for s in range(subjects) for k in range(2)]
    return ParsedDataset("ckplus", "ck+48", items, 8, True, False, [], {}, ["subject"])


@pytest.mark.parametrize("subjects, expected, note", [
    (10, {"kind": "subject_folds", "folds": 10, "seed": 0}, None),  # exactly the default: no note
    (2, {"kind": "subject_folds", "folds": 2, "seed": 0}, "only 2 subject(s): 2 folds instead of the default 10"),
    (1, {}, "only 1 subject(s): no folds instead of the default 10"),
])
def test_default_folds_fall_back_to_the_subject_count(subjects, expected, note):
    # guards subjects < k (10 subjects keep the default 10 silently) and subjects >= 2 (two subjects: two folds)
    from poi_cli.data.prepare import _apply_protocol

    parsed = ck_parsed(subjects)
    assert _apply_protocol(parsed, parsed.items, None, 0, 0.0) == expected
    assert [n for n in parsed.notes if n.startswith("only")] == ([note] if note else [])


def test_settings_digest_changes_when_only_a_split_changes():
    # guards the split in items_sha1: an image moved from train to test must not look like the finished run
    from poi_cli.data.prepare import _settings

    parsed = ck_parsed(1)
    before = _settings(parsed, parsed.items, 64, False)["items_sha1"]
    parsed.items[0].split = "test"
    assert _settings(parsed, parsed.items, 64, False)["items_sha1"] != before


def test_out_dir_state_refuses_a_folder_with_a_users_files(tmp_path):
    # guards the emptiness check: a folder of the user's files is no place for a store
    from poi_cli.data.prepare import PrepareError, _out_dir_state

    out = tmp_path / "out"
    out.mkdir()
    assert _out_dir_state(out, {"size": 64}) == "fresh"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="is not empty and holds no preparation"):
        _out_dir_state(out, {"size": 64})


def test_difference_names_changed_settings_but_not_the_digest():
    # guards k != "items_sha1" (a hash in the message says nothing) and the fallback sentence
    from poi_cli.data.prepare import _difference

    old = {"size": 32, "detect": True, "items_sha1": "aa"}
    assert _difference(old, {"size": 64, "detect": True, "items_sha1": "bb"}) == "size 32 -> 64"
    assert _difference(old, {"size": 32, "detect": True, "items_sha1": "bb"}) == "the input images or labels changed"
    assert _difference(None, {"size": 32}) == "unreadable settings"
    # a setting written only when not at its default (detector) is named when either side lacks it:
    # it said "the input images or labels changed" when the new run left the option out
    assert _difference({"size": 32, "detector": "mtcnn-torch", "items_sha1": "a"}, {"size": 32, "items_sha1": "a"}) \
        == "detector 'mtcnn-torch' -> the default"
    assert _difference({"size": 32}, {"size": 32, "detector": "mtcnn-torch"}) == "detector the default -> 'mtcnn-torch'"


def test_mend_journal_cuts_only_the_torn_line_and_read_journal_skips_bad_lines(tmp_path):
    # guards rfind + 1 (the last complete line keeps its newline) and `continue` past an unreadable line
    from poi_cli.data.prepare import _mend_journal, _read_journal

    journal = tmp_path / "progress.jsonl"
    journal.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2, "st')
    _mend_journal(journal)
    assert journal.read_bytes() == b'{"i": 0}\n{"i": 1}\n'
    journal.write_text('{"i": 0}\n5\n{"x": 1}\n{"i": 3}\n')
    assert sorted(_read_journal(journal)) == [0, 3]


def test_shipped_centre_of_a_box_and_of_landmarks():
    # guards the box centre ((x0 + x1) / 2, (y0 + y1) / 2) and the landmarks' mean point
    from poi_cli.data.prepare import _shipped_centre

    assert _shipped_centre(Item("a", "a", "train", 0, box=(10, 20, 30, 60))).tolist() == [20, 40]
    landmarks = np.array([[0, 0], [10, 0], [5, 5], [0, 10], [10, 10]], np.float32)
    assert _shipped_centre(Item("a", "a", "train", 0, landmarks=landmarks)).tolist() == [5, 5]
    assert _shipped_centre(Item("a", "a", "train", 0)) is None


def test_one_line_keeps_the_first_line_and_the_type():
    # guards text[0] (the first line says what failed) and the bare type name of an empty message
    from poi_cli.data.prepare import _one_line

    assert _one_line(ValueError("cannot decode\n  at offset 12")) == "ValueError: cannot decode"
    assert _one_line(RuntimeError("")) == "RuntimeError"


def test_a_store_of_grey_and_colour_images_is_not_grayscale_and_counts_one_face_per_crop(tmp_path):
    # guards all() over the stored faces: one colour image makes the store colour ("any" made it grey);
    # and n_faces of an image stored without detection: 1 when stored, 0 when not
    import pandas as pd

    from poi_cli.data.prepare import prepare

    raw = tmp_path / "raw"
    png(raw / "happy" / "grey.png", mode="L")
    png(raw / "sad" / "colour.png", mode="RGB")
    (raw / "sad" / "broken.png").write_text("not an image")
    result = prepare("folder", raw, tmp_path / "out", size=32, detect=False, show_progress=False, workers=1)
    assert result.counts == {"train": {"bad_image": 1, "ok": 2}} and result.meta["grayscale"] is False
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id")
    assert manifest["n_faces"].to_dict() == {"happy/grey.png": 1, "sad/broken.png": 0, "sad/colour.png": 1}


def test_no_detect_resizes_a_photo_without_landmarks_whole(tmp_path):
    # guards `item.detect and self.detect_unaligned`: under --no-detect an AffectNet photo without its
    # landmarks is resized whole, never handed to the detector
    from poi_cli.data.prepare import _Worker

    png(tmp_path / "photo.png", size=(60, 40))
    items = [Item("photo", "photo.png", "train", 1, detect=True)]
    worker = _Worker(tmp_path, items, 32, detect=False, want_gray=False, device="cpu", detector=object(),
                     detect_unaligned=False)
    loaded = worker.load(0)
    assert loaded.image is None and loaded.face.shape == (32, 32, 3) and loaded.status == "ok"
    on = _Worker(tmp_path, items, 32, detect=False, want_gray=False, device="cpu", detector=object()).load(0)
    assert on.face is None and on.image is not None  # by default: detected


def test_an_interrupted_run_cancels_the_loads_it_queued(tmp_path):
    # guards future.cancel() in _run's finally: Ctrl-C during a chunk's detection used to wait for the
    # next chunk's images to load (here four slow loads) before stopping
    import time

    from poi_cli.data.prepare import _Loaded, _run

    loads = []

    class Worker:
        def load(self, index):
            loads.append(index)
            if index >= 4:
                time.sleep(0.1)
            return _Loaded(image=object())

        def detect_batch(self, loaded):
            raise KeyboardInterrupt

    faces = np.zeros((8, 32, 32, 3), np.uint8)
    with pytest.raises(KeyboardInterrupt):
        _run(Worker(), list(range(8)), {i: i for i in range(8)}, faces, {}, tmp_path / "j", 4, 1, False)
    assert sorted(loads)[:4] == [0, 1, 2, 3] and len(loads) < 8


def test_a_non_default_detector_is_part_of_the_settings(tmp_path):
    # guards settings["detector"]: a store detected by mtcnn-torch must not pass for the default's on a re-run
    # (the one image is blank, so no detector is ever built)
    from poi_cli.data.prepare import PrepareError, prepare

    raw = tmp_path / "raw"
    (raw / "happy").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(raw / "happy" / "black.png")
    result = prepare("folder", raw, tmp_path / "out", size=32, detect=True, detector="mtcnn-torch", show_progress=False)
    assert result.meta["settings"]["detector"] == "mtcnn-torch"
    with pytest.raises(PrepareError, match="other settings"):
        prepare("folder", raw, tmp_path / "out", size=32, detect=True, show_progress=False)


def count_notes(rows: list[tuple[str, str]], expected: dict[str, int]) -> list[str]:
    import pandas as pd

    from poi_cli.data.prepare import _count_notes

    manifest = pd.DataFrame({"split": [s for s, _ in rows], "status": [t for _, t in rows], "reason": [""] * len(rows)})
    return _count_notes(manifest, ParsedDataset("x", "x", [], 7, None, False, expected=expected))


def test_count_notes_count_missing_images_skip_empty_splits_and_add_joined_splits():
    # guards: a missing image counts as labelled (status != excluded, not == ok); a split with no labelled
    # image gives no note (--splits left it out); "train+test" adds both splits (after --test-fraction)
    assert count_notes([("train", "ok"), ("train", "missing"), ("train", "excluded")], {"train": 2, "val": 5}) == []
    assert count_notes([("train", "ok"), ("test", "ok")], {"train+test": 3}) == [
        "split train+test: 2 labelled images, the official release has 3"]


# -------------------------------------------------------------------- datasets/common.py


@deploy
def test_list_images_sorted_by_path_any_suffix_case_no_hidden_files_or_folders(tmp_path):
    # guards: .lower() on the suffix, hidden files skipped, a folder named like an image skipped, the sort
    for name in ("d.png", "B.JPG", "a.png", "c.jpeg", "e.bmp", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["B.JPG", "a.png", "c.jpeg", "d.png", "e.bmp"]


@deploy
def test_missing_reason_names_a_file_whose_suffix_differs_only_in_case(tmp_path):
    # guards both directions of the case check: listed x.JPG with x.jpg on disk, and the reverse
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.JPG").write_bytes(b"")
    assert missing_reason(tmp_path / "a.JPG", "list.txt") == "listed in list.txt but not on disk (a.jpg is: the case differs)"
    assert missing_reason(tmp_path / "b.jpg", "list.txt") == "listed in list.txt but not on disk (b.JPG is: the case differs)"
    assert missing_reason(tmp_path / "c.jpg", "list.txt") == "listed in list.txt but not on disk"


@deploy
def test_expected_counts_skip_splits_without_a_labelled_count():
    # guards `if info.get("labelled")`: FERPlus's test split has "labelled": null, a split without the key none
    facts = {"splits": {"train": {"labelled": 5}, "test": {"labelled": None}, "val": {"folder": "Val"}}}
    assert expected_counts(facts) == {"train": 5}


@deploy
def test_labelled_classes_leave_out_the_excluded_codes():
    # guards `if name is not None`: FERPlus's unknown and NF map to None, which is no class
    classes = labelled_classes("ferplus", None)
    assert None not in classes and "contempt" in classes and len(classes) == 8
    assert labelled_classes("ckplus", "ck+48") == {"anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise"}
    assert labelled_classes("no-such-dataset", None) is None


# ------------------------------------------------------------------- datasets/folders.py


@deploy
def test_a_folder_tree_ignores_macos_archive_debris(tmp_path):
    # guards the "__" prefix: an unzipped tree's __MACOSX/ is no class folder (it was an "unknown class" error);
    # and 7 classes without a contempt folder (8 only with one)
    png(tmp_path / "happy" / "a.png")
    png(tmp_path / "__MACOSX" / "happy" / "._a.png")
    parsed = parse_folder(tmp_path)
    assert [item.id for item in parsed.items] == ["happy/a.png"] and parsed.num_classes == 7


@deploy
def test_a_top_folder_that_is_no_split_makes_the_tree_a_class_tree(tmp_path):
    # guards all(): train/ beside happy/ is read as class folders, so train/ is said to be an unknown class
    png(tmp_path / "train" / "happy" / "a.png")
    png(tmp_path / "happy" / "b.png")
    with pytest.raises(LayoutError, match="train/: unknown class folder"):
        parse_folder(tmp_path)


@deploy
def test_below_wrappers_does_not_enter_a_lone_folder_of_images(tmp_path):
    # guards visible_folders(inside[0]): a lone folder holding images only is a class folder (named unknown by
    # the caller), not a wrapper to descend into
    png(tmp_path / "Train" / "Joyful" / "a.png")
    assert below_wrappers(tmp_path / "Train", {"Happy": 3}) == tmp_path / "Train"
    png(tmp_path / "Val" / "Wrapper" / "Happy" / "b.png")
    assert below_wrappers(tmp_path / "Val", {"Happy": 3}) == tmp_path / "Val" / "Wrapper"


@deploy
def test_class_folder_items_skip_a_class_the_label_rule_excludes(tmp_path):
    # guards `if label is None: continue`: a class mapped to None gives no item (not an item of label None)
    png(tmp_path / "happy" / "a.png")
    png(tmp_path / "unknown" / "b.png")
    items = class_folder_items(tmp_path, tmp_path, "train", {"happy": 3, "unknown": None}, "a test tree")
    assert [(item.id, item.label) for item in items] == [("happy/a.png", 3)]


# ------------------------------------------------------------------------- duplicates.py


def test_duplicate_notes_name_only_the_splits_holding_the_twins():
    # guards the names: val's twin is in train, so "of train", not every other split ("of test, train")
    import pandas as pd

    from poi_cli.data.duplicates import DIGEST_COLUMN, duplicate_notes

    manifest = pd.DataFrame({"split": ["train", "val", "test"], "status": ["ok", "ok", "ok"], DIGEST_COLUMN: ["aa", "aa", "cc"]})
    assert duplicate_notes(manifest)[1] == f"split val: 1 of its 1 faces are pixel-identical to a face of train ({DIGEST_COLUMN})"
