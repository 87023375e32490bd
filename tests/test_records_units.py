"""Small hand-computed checks of deploy/records.py (the record, its JSON / CSV forms) and of
deploy/pipeline.py's inputs and options: each pins one behaviour a mutation audit found
unguarded.

The tests marked `deploy` import neither torch nor pandas (this file is collected in
.venv-deploy too); the one pandas test imports it inside.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from poi_cli.core.manifests import au_columns
from poi_cli.data.faces import Face
from poi_cli.deploy.pipeline import (PipelineError, _array_problem, check_pipeline_options, decode_encoded,
                                     expand_inputs, in_memory_image, whole_image_face)
from poi_cli.deploy.records import (FaceRecord, PredictionsCsv, Smoothed, VideoPosition, flat_columns,
                                    is_predictions_csv, shown_name, shown_percent, status_counts)

deploy = pytest.mark.deploy
CLASSES = ("happiness", "neutral")
LANDMARKS = [[10.0, 11.0], [20.0, 21.0], [30.0, 31.0], [40.0, 41.0], [50.0, 51.0]]


def _face_record(**changes) -> FaceRecord:
    values = dict(image="a.jpg", status="ok", face=0, box=[1.0, 2.0, 3.0, 4.0], landmarks=LANDMARKS,
                  detection_score=0.99, detector="mtcnn", expression="happiness",
                  probabilities={"happiness": 0.8, "neutral": 0.2}, confidence=0.8)
    values.update(changes)
    return FaceRecord(**values)


def _png_bytes(size=(24, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- records.py


@deploy
def test_shown_percent_at_its_boundaries():
    # guards: exactly 1 and exactly 0 are shown as they are (not >99.9% / <0.1%), the bounds' digits, the default 1 decimal
    assert shown_percent(1.0) == "100.0%" and shown_percent(0.0) == "0.0%"
    assert shown_percent(0.99999) == ">99.9%" and shown_percent(0.00001) == "<0.1%"
    assert shown_percent(0.12345) == "12.3%"


@deploy
def test_shown_name_escapes_undecodable_bytes_and_lone_surrogates():
    # guards: a non-UTF-8 byte shown as \xff (not U+FFFD), a lone surrogate as \ud800 (not left for JSON to choke on)
    assert shown_name("a\udcff.jpg") == "a\\xff.jpg"
    assert shown_name("a\ud800.jpg") == "a\\ud800.jpg"
    assert shown_name("é.jpg") == "é.jpg"


@deploy
def test_flat_columns_order_with_video_and_smoothing():
    # guards: the column order (box corners, landmark x/y pairs, confidence before consistency, smoothed_expression first)
    assert flat_columns(CLASSES, video=True, smoothed=True) == [
        "image", "frame", "timestamp", "track", "face", "status", "reason", "box_x1", "box_y1", "box_x2", "box_y2",
        "landmark_left_eye_x", "landmark_left_eye_y", "landmark_right_eye_x", "landmark_right_eye_y",
        "landmark_nose_x", "landmark_nose_y", "landmark_left_mouth_x", "landmark_left_mouth_y",
        "landmark_right_mouth_x", "landmark_right_mouth_y", "detection_score", "detector", "expression",
        "happiness", "neutral", "confidence", "consistency", "regions_agree", "pin_expression",
        "smoothed_expression", "smoothed_happiness", "smoothed_neutral"]


@deploy
def test_flat_columns_region_columns_are_region_major():
    # guards: region_<region>_<class> grouped by region (not by class), after the AU columns
    columns = flat_columns(CLASSES, show_au=True)
    assert columns[-8 - len(au_columns()):-8] == au_columns()
    assert columns[-8:] == ["region_left_eye_happiness", "region_left_eye_neutral", "region_right_eye_happiness",
                            "region_right_eye_neutral", "region_left_mouth_happiness", "region_left_mouth_neutral",
                            "region_right_mouth_happiness", "region_right_mouth_neutral"]


@deploy
def test_to_row_puts_each_coordinate_in_its_column():
    # guards: box corners and landmark x/y written to the right columns, smoothed_expression the smoothed one
    record = _face_record(smoothed=Smoothed("neutral", {"happiness": 0.3, "neutral": 0.7}))
    row = record.to_row(CLASSES)
    assert list(row) == flat_columns(CLASSES, smoothed=True)
    assert (row["box_x1"], row["box_y1"], row["box_x2"], row["box_y2"]) == (1.0, 2.0, 3.0, 4.0)
    assert (row["landmark_left_eye_x"], row["landmark_left_eye_y"]) == (10.0, 11.0)
    assert (row["landmark_right_mouth_x"], row["landmark_right_mouth_y"]) == (50.0, 51.0)
    assert row["smoothed_expression"] == "neutral" and row["smoothed_neutral"] == 0.7
    assert row["happiness"] == 0.8 and row["confidence"] == 0.8


@deploy
def test_to_dict_names_smoothed_probabilities_and_escapes_the_image():
    # guards: the `smoothed.probabilities` key, the video keys, and shown_name on the JSON image
    record = _face_record(image="a\udcff.jpg", smoothed=Smoothed("neutral", {"happiness": 0.3, "neutral": 0.7}))
    record = record.on_frame(VideoPosition(3, 0.12, 1), record.smoothed)
    out = record.to_dict()
    assert out["image"] == "a\\xff.jpg"
    assert list(out)[:5] == ["image", "frame", "timestamp", "track", "face"]
    assert out["smoothed"] == {"expression": "neutral", "probabilities": {"happiness": 0.3, "neutral": 0.7}}


@deploy
def test_of_face_rounds_the_box_to_two_digits():
    # guards: pixels rounded to 2 digits (probabilities to 6)
    face = Face(box=np.array([1.23456, 2.0, 3.98765, 4.0]), landmarks=None, score=None)
    record = FaceRecord.of_face("a.jpg", 0, face, CLASSES, np.array([0.1234567, 0.8765433]), None)
    assert record.box == [1.23, 2.0, 3.99, 4.0]
    assert record.probabilities == {"happiness": 0.123457, "neutral": 0.876543}


@deploy
def test_is_predictions_csv_recognises_every_kind_and_nothing_else(tmp_path):
    # guards: the smoothed variants, the `image` first check, a case-changed header, a non-UTF-8 file
    path = tmp_path / "p.csv"
    for kinds in ({}, {"smoothed": True}, {"video": True, "smoothed": True, "show_au": True}):
        path.write_text(",".join(flat_columns(CLASSES, **kinds)) + "\n", encoding="utf-8")
        assert is_predictions_csv(path), kinds
    path.write_text(",".join(c.upper() for c in flat_columns(CLASSES)) + "\n", encoding="utf-8")
    assert not is_predictions_csv(path)
    path.write_bytes(b"image,\xff\xfe\n")
    assert not is_predictions_csv(path)


@deploy
def test_status_counts_counts_and_adds_into():
    # guards: the start at 0 for every status, an unknown status counted once, `into` added to (not replaced)
    records = [FaceRecord("a", "ok"), FaceRecord("a", "ok"), FaceRecord("b", "no_face"), FaceRecord("c", "weird")]
    assert status_counts(records) == {"ok": 2, "no_face": 1, "error": 0, "weird": 1}
    into = {"ok": 5, "no_face": 0, "error": 1}
    assert status_counts(records[:1], into) is into and into == {"ok": 6, "no_face": 0, "error": 1}


def test_records_to_frame_keeps_counts_as_nullable_integers():
    # guards: regions_agree and face as Int64 (not float) with NaN-free missing values
    pytest.importorskip("pandas")
    from poi_cli.deploy.records import records_to_frame

    frame = records_to_frame([_face_record(regions_agree=3), FaceRecord("b.jpg", "no_face")], CLASSES)
    assert str(frame["regions_agree"].dtype) == "Int64" and str(frame["face"].dtype) == "Int64"
    assert frame["regions_agree"].tolist()[0] == 3 and frame["face"].isna().tolist() == [False, True]


@deploy
def test_predictions_csv_writes_empty_cells_and_leaves_no_file_when_interrupted(tmp_path):
    # guards: None as an empty cell (not "None"); close(finished=False) with no row creates nothing
    path = tmp_path / "p.csv"
    table = PredictionsCsv(path, CLASSES)
    table.append([FaceRecord("b.jpg", "no_face", reason="no face detected")])
    table.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1] == "b.jpg,,no_face,no face detected" + "," * (len(flat_columns(CLASSES)) - 4)
    interrupted = PredictionsCsv(tmp_path / "never.csv", CLASSES)
    interrupted.close(finished=False)
    assert not (tmp_path / "never.csv").exists()


@deploy
@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_predictions_csv_replaces_a_symlink_rather_than_writing_through(tmp_path):
    # guards: the symlink unlink (a planted link made --csv overwrite its target)
    target = tmp_path / "target.txt"
    target.write_text("keep", encoding="utf-8")
    link = tmp_path / "p.csv"
    link.symlink_to(target)
    table = PredictionsCsv(link, CLASSES)
    table.close()
    assert target.read_text(encoding="utf-8") == "keep" and not link.is_symlink()


# --------------------------------------------------------------------------- pipeline.py


@deploy
def test_array_problem_accepts_grey_rgb_rgba_only():
    # guards: the size check (empty arrays), RGBA accepted, 1-D arrays refused
    assert _array_problem(np.zeros((4, 5), np.uint8)) is None
    assert _array_problem(np.zeros((4, 5, 3), np.uint8)) is None
    assert _array_problem(np.zeros((4, 5, 4), np.uint8)) is None
    assert _array_problem(np.zeros((0, 0), np.uint8)) is not None
    assert _array_problem(np.zeros((5,), np.uint8)) is not None
    assert _array_problem(np.zeros((4, 5, 2), np.uint8)) is not None
    assert "float32 of shape (4, 5)" in _array_problem(np.zeros((4, 5), np.float32))


@deploy
def test_empty_bytes_are_an_error_not_a_decoder_crash():
    # guards: the empty-bytes check of decode_encoded
    assert decode_encoded(b"") == (None, "empty bytes (no image file in them)")
    image, reason = in_memory_image(_png_bytes())
    assert reason is None and image.size == (24, 20)


@deploy
def test_encoded_inputs_are_numbered_from_zero_and_memoryview_counts():
    # guards: `<image N>` numbering from 0 and a memoryview taken as an image file's bytes
    items = expand_inputs([_png_bytes(), memoryview(_png_bytes())])
    assert [item.source for item in items] == ["<image 0>", "<image 1>"]
    assert all(item.encoded is not None and item.error is None for item in items)


@deploy
def test_a_blank_name_is_an_error_not_the_current_folder():
    # guards: the strip() of the empty-name check (a name of spaces is no file either)
    items = expand_inputs(["   "])
    assert len(items) == 1 and items[0].error == "an empty name (give a file, a folder or a pattern)"


@deploy
def test_folders_globs_repeats_and_skips(tmp_path):
    # guards: upper-case suffixes found, the empty-folder error, on_repeat called, skip honoured by globs
    (tmp_path / "A.JPG").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    assert [item.source for item in expand_inputs([str(tmp_path)])] == [str(tmp_path / "A.JPG"), str(tmp_path / "b.png")]
    assert expand_inputs([str(tmp_path / "empty")])[0].error == "folder holds no image or video files"
    repeats = []
    items = expand_inputs([str(tmp_path / "b.png"), str(tmp_path / "b.png")], on_repeat=repeats.append)
    assert len(items) == 1 and repeats == [tmp_path / "b.png"]
    skipped = expand_inputs([str(tmp_path / "*.png")], skip=lambda p: p.name == "b.png")
    assert [item.error for item in skipped] == ["pattern matched no image or video files"]


@deploy
def test_check_pipeline_options_bounds():
    # guards: workers 0 and min_face_score 0 allowed; images_per_batch 0, threads=True, an unknown detector refused
    check_pipeline_options("mtcnn", 1, 1, 0.0, 0, None)
    check_pipeline_options("mtcnn", 1, 1, 1.0, 0, 1)
    for bad in (("mtcnn", 1, 0, 0.9, 0, None), ("mtcnn", 1, 1, 0.9, 0, True), ("nope", 1, 1, 0.9, 0, None),
                ("mtcnn", 1, 1, 0.9, -1, None), ("mtcnn", 1, 1, 1.5, 0, None)):
        with pytest.raises(PipelineError):
            check_pipeline_options(*bad)


@deploy
def test_whole_image_face_box_is_width_then_height():
    # guards: the --no-detect box [0, 0, width, height] (not height, width)
    face = whole_image_face(Image.new("RGB", (30, 20)))
    assert face.box.tolist() == [0.0, 0.0, 30.0, 20.0] and face.landmarks is None
