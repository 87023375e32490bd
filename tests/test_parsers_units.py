"""Small hand-computed checks of the official-layout parsers `poi prepare` reads (data/datasets/ferplus.py,
ckplus.py, rafdb.py, affectnet.py) and of the batch loader (data/loader.py).

Each test guards one behaviour a mutation audit found the rest of the suite let through. The parsers only list
files and read label files, so their fixtures are empty image files and label files written in tmp_path; the
tests marked `deploy` import neither torch nor pandas (the loader's tests import torch inside them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from poi_cli.core.manifests import CLASSES
from poi_cli.data.datasets import LayoutError, dataset_manifest, parse_dataset
from poi_cli.data.datasets import affectnet, ckplus, ferplus, rafdb

deploy = pytest.mark.deploy


def touch(path: Path, text: str = "") -> Path:
    """An (empty) file at `path`: the parsers list images, they never open them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ ferplus.py

FERPLUS = dataset_manifest("ferplus")


def majority(**counts: int) -> tuple[str | None, str]:
    """majority_label of the votes given by name (neutral=4, NF=2, ...), the others 0."""
    names = FERPLUS["vote_columns"]
    votes = np.array([counts.get(name, 0) for name in names])
    return ferplus.majority_label(votes, names, FERPLUS["class_map"])


@deploy
def test_ferplus_single_votes_are_dropped_before_the_majority_is_counted():
    # guards: `votes > 1`: happiness 2 and three single votes; with the 1s dropped happiness has 2 of 2,
    # with them kept 2 of 5 (no majority)
    assert majority(happiness=2, surprise=1, sadness=1, anger=1) == ("happiness", "")


@deploy
def test_ferplus_exactly_half_of_the_kept_votes_is_no_majority():
    # guards: `kept.max() * 2 <= total`: 4 neutral and 4 happiness, the winner needs more than half (5 of 8)
    assert majority(neutral=4, happiness=4) == (None, "no majority after dropping single votes")
    assert majority(neutral=5, happiness=4) == ("neutral", "")


@deploy
def test_ferplus_an_nf_or_unknown_winner_is_excluded_and_named():
    # guards: `class_map[winner] is None`: the reason names the winner (it was empty for NF)
    assert majority(NF=8, neutral=2) == (None, "majority vote is NF")
    assert majority(unknown=6, fear=3) == (None, "majority vote is unknown")


def ferplus_raw(root: Path, rows: list[str], folder: str = "FER2013Train") -> Path:
    touch(root / folder / "label.csv", "".join(row + "\n" for row in rows))
    return root


@deploy
def test_ferplus_a_row_with_more_fields_than_name_box_and_ten_votes_is_refused(tmp_path):
    # guards: `len(row) != 12`: a row with an 11th vote was read with the extra vote cut off
    raw = ferplus_raw(tmp_path, ['a.png,"(0, 0, 48, 48)",0,8,0,0,0,0,0,0,0,0,2'])
    with pytest.raises(LayoutError, match="line 1 has 13 fields, expected 12"):
        parse_dataset("ferplus", raw)


@deploy
def test_ferplus_votes_up_to_max_votes_are_counts_and_above_are_refused(tmp_path):
    # guards: `v <= MAX_VOTES`: 1000 is the largest count accepted, 1001 is not one
    raw = ferplus_raw(tmp_path / "ok", ['a.png,"(0, 0, 48, 48)",0,1000,0,0,0,0,0,0,0,0'])
    [item] = parse_dataset("ferplus", raw).items
    assert (item.label, item.extra["vote_happiness"]) == (CLASSES.index("happiness"), 1000)
    raw = ferplus_raw(tmp_path / "bad", ['a.png,"(0, 0, 48, 48)",0,1001,0,0,0,0,0,0,0,0'])
    with pytest.raises(LayoutError, match="line 1 has a vote that is not a count of annotators"):
        parse_dataset("ferplus", raw)


@deploy
def test_ferplus_a_row_naming_the_parent_folder_is_refused(tmp_path):
    # guards: the ".." in the names refused: Path("..").name is ".." so the name check alone lets it through
    raw = ferplus_raw(tmp_path, ['..,"(0, 0, 48, 48)",0,8,0,0,0,0,0,0,0,0'])
    with pytest.raises(LayoutError, match=r"line 1 names '\.\.', not a file of FER2013Train/"):
        parse_dataset("ferplus", raw)


# ------------------------------------------------------------------------------------- ckplus.py

CK_POINTS = np.stack([np.arange(68), 2 * np.arange(68)], axis=1).astype(np.float32)  # point k is (k, 2k)


def ck_sequence(raw: Path, sequence: str, frames: list[str], code: str | None = "5", landmarks: tuple[str, ...] = ()):
    """cohn-kanade-images/<sequence>/<frames>, Emotion/<sequence>/x_emotion.txt holding `code`, and a
    Landmarks/<sequence>/<stem>_landmarks.txt (68 'x y' lines, CK_POINTS) for each frame in `landmarks`."""
    for name in frames:
        touch(raw / "cohn-kanade-images" / sequence / name)
    if code is not None:
        touch(raw / "Emotion" / sequence / "x_emotion.txt", f"   {code}\n")
    for name in landmarks:
        text = "".join(f"{x} {y}\n" for x, y in CK_POINTS)
        touch(raw / "Landmarks" / sequence / f"{Path(name).stem}_landmarks.txt", text)


@deploy
def test_ckplus_landmarks_average_each_group_of_the_68_points(tmp_path):
    # guards: five_from_68 on the file named <frame stem>_landmarks.txt: the eye centres are the means of points
    # 36-41 and 42-47 ((38.5, 77) and (44.5, 89)), not their first points; nose 30, mouth corners 48 and 54
    ck_sequence(tmp_path, "S005/001", ["S005_001_01.png"], landmarks=("S005_001_01.png",))
    [item] = parse_dataset("ckplus", tmp_path).items
    assert item.landmarks.tolist() == [[38.5, 77.0], [44.5, 89.0], [30.0, 60.0], [48.0, 96.0], [54.0, 108.0]]


@deploy
def test_ckplus_detects_faces_when_any_frame_lacks_landmarks(tmp_path):
    # guards: `with_landmarks < len(items)`: one frame of two without landmarks still needs the detector
    frames = ["S005_001_01.png", "S005_001_02.png"]
    ck_sequence(tmp_path / "some", "S005/001", frames, landmarks=frames[:1])
    ck_sequence(tmp_path / "all", "S005/001", frames, landmarks=tuple(frames))
    assert parse_dataset("ckplus", tmp_path / "some").detect is True
    assert parse_dataset("ckplus", tmp_path / "all").detect is False


@deploy
def test_ckplus_a_landmark_file_without_68_points_is_no_landmarks(tmp_path):
    # guards: the (68, 2) shape check: five points are no 68-point file (five_from_68 raised IndexError on them)
    path = touch(tmp_path / "x_landmarks.txt", "1 2\n3 4\n5 6\n7 8\n9 10\n")
    assert ckplus.read_68(path) is None
    assert ckplus.read_68(touch(tmp_path / "y.txt", "".join(f"{k} {k}\n" for k in range(68)))).shape == (68, 2)


@deploy
def test_ckplus_a_one_frame_sequence_gives_its_frame_once_as_the_peak(tmp_path):
    # guards: `if f not in peak`: the only frame is both first and last; it is the peak (happiness), not also neutral
    ck_sequence(tmp_path, "S005/001", ["S005_001_01.png"], code="5")
    items = parse_dataset("ckplus", tmp_path).items
    assert [(item.id, item.label) for item in items] == [
        ("cohn-kanade-images/S005/001/S005_001_01.png", CLASSES.index("happiness"))]


@deploy
def test_ckplus_an_unknown_emotion_code_names_its_file(tmp_path):
    # guards: `code not in lookup`: code 9 was a KeyError traceback, not a one-line LayoutError
    ck_sequence(tmp_path, "S005/001", ["S005_001_01.png"], code="9.0000000e+00")
    with pytest.raises(LayoutError, match="Emotion/S005/001/x_emotion.txt: unknown emotion code 9"):
        parse_dataset("ckplus", tmp_path)


@deploy
def test_ckplus_the_subject_is_the_frame_names_prefix_else_its_folder(tmp_path):
    # guards: `match.group(1) if match`: the file name's S<n>_ is the subject, the folder only where none matches
    ck_sequence(tmp_path, "S010/001", ["S011_001_01.png"])
    ck_sequence(tmp_path, "S020/001", ["frame01.png"])
    assert [item.extra["subject"] for item in parse_dataset("ckplus", tmp_path).items] == ["S011", "S020"]


@deploy
def test_ckplus_sequences_are_read_in_sorted_order(tmp_path):
    # guards: sorted(glob(...)): the manifest's rows follow the sequence names, not the directory's order
    for subject in ("S003", "S001", "S004", "S002"):
        ck_sequence(tmp_path, f"{subject}/001", [f"{subject}_001_01.png"])
    subjects = [item.extra["subject"] for item in parse_dataset("ckplus", tmp_path).items]
    assert subjects == ["S001", "S002", "S003", "S004"]


@deploy
def test_ckplus_emotion_labels_without_the_image_folder_are_the_official_layout(tmp_path):
    # guards: the `or`: Emotion/ alone is the official layout with its frames gone (said so), not CK+48 class folders
    ck_sequence(tmp_path, "S005/001", [], code="5")
    with pytest.raises(LayoutError, match="the 1 labelled sequences have no frames under cohn-kanade-images/"):
        parse_dataset("ckplus", tmp_path)


# -------------------------------------------------------------------------------------- rafdb.py


def rafdb_raw(root: Path, labels: str, layout: str = "aligned") -> Path:
    touch(root / "EmoLabel" / "list_patition_label.txt", labels)
    (root / "Image" / layout).mkdir(parents=True, exist_ok=True)
    return root


@deploy
def test_rafdb_read_landmarks_needs_five_points(tmp_path):
    # guards: the (5, 2) shape check: three points or five single values are no landmarks; the first two values
    # of each of the first five lines are x y
    assert rafdb.read_landmarks(touch(tmp_path / "three.txt", "1 2\n3 4\n5 6")) is None
    assert rafdb.read_landmarks(touch(tmp_path / "singles.txt", "1\n2\n3\n4\n5\n")) is None
    five = rafdb.read_landmarks(touch(tmp_path / "five.txt", "1 2 9\n3 4\n5 6\n7 8\n9 10\n0\n"))
    assert five.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]


@deploy
@pytest.mark.parametrize("line", ["train_00001.jpg 1 2", "train_00001.jpg 8", "train_00001.jpg 0"])
def test_rafdb_a_label_line_other_than_image_and_label_1_to_7_names_its_line(tmp_path, line):
    # guards: both halves of `len(fields) != 2 or fields[1] not in lookup` (an 8 was a KeyError traceback)
    raw = rafdb_raw(tmp_path, f"test_0001.jpg 4\n{line}\n")
    with pytest.raises(LayoutError, match="line 2 is not '<image> <label 1..7>'"):
        parse_dataset("raf-db", raw)


@deploy
def test_rafdb_an_image_listed_twice_names_its_second_line(tmp_path):
    # guards: two rows of one id with two labels became two manifest rows and the face stored twice
    raw = rafdb_raw(tmp_path, "train_1.jpg 1\ntrain_2.jpg 3\ntrain_1.jpg 5\n")
    with pytest.raises(LayoutError, match="list_patition_label.txt: line 3 lists train_1.jpg again"):
        parse_dataset("raf-db", raw)


@deploy
def test_rafdb_original_photos_without_landmarks_are_detected_and_counted_when_on_disk(tmp_path):
    # guards: item.detect and `item.status != MISSING` in the note: train_2 is not on disk, so it is missing, not
    # one more photo without landmarks; train_1 has its landmark file, train_3 has none
    raw = rafdb_raw(tmp_path, "train_1.jpg 1\ntrain_2.jpg 2\ntrain_3.jpg 3\n", layout="original")
    touch(raw / "Image" / "original" / "train_1.jpg")
    touch(raw / "Image" / "original" / "train_3.jpg")
    touch(raw / "Annotation" / "manual" / "train_1_manu_attri.txt", "1 2\n3 4\n5 6\n7 8\n9 10\n")
    parsed = parse_dataset("raf-db", raw)
    assert [(item.status, item.detect) for item in parsed.items] == [("pending", False), ("missing", False),
                                                                    ("pending", True)]
    assert parsed.notes == ["1 original images in train have no landmark file in Annotation/manual/ "
                            "(is Annotation/manual.zip unzipped?)"]


# ---------------------------------------------------------------------------------- affectnet.py

AFFECTNET = dataset_manifest("affectnet")
GROUPS = AFFECTNET["landmarks_68_to_5"]
# the 68 points (k, 2k) give the five (38.5, 77), (44.5, 89), (30, 60), (48, 96), (54, 108)
FIVE = [[38.5, 77.0], [44.5, 89.0], [30.0, 60.0], [48.0, 96.0], [54.0, 108.0]]
AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
                    "arousal\n")


@deploy
def test_affectnet_landmark_text_is_136_numbers_split_by_semicolons_or_commas():
    # guards: the "," -> ";" and `values.size != 136` (138 values crashed reshape with a ValueError)
    values = CK_POINTS.reshape(-1)
    assert affectnet.parse_landmarks(";".join(f"{v:g}" for v in values), GROUPS).tolist() == FIVE
    assert affectnet.parse_landmarks(",".join(f"{v:g}" for v in values), GROUPS).tolist() == FIVE
    assert affectnet.parse_landmarks(";".join(f"{v:g}" for v in [*values, 1, 2]), GROUPS) is None


@deploy
def test_affectnet_face_box_is_x1_y1_x2_y2_and_an_empty_box_is_none():
    # guards: `x + width, y + height` and `width <= 0 or height <= 0`
    def box(**row: str) -> tuple | None:
        return affectnet.parse_box({"face_x": "10", "face_y": "20", "face_width": "30", "face_height": "40", **row})

    assert box() == (10.0, 20.0, 40.0, 60.0)
    assert box(face_width="0") is None and box(face_height="0") is None
    assert box(face_x="nan") is None and box(face_y="") is None


@deploy
def test_affectnet_an_unknown_csv_expression_code_names_the_file_and_row(tmp_path):
    # guards: `code not in lookup`: code 11 was a KeyError traceback, not a one-line LayoutError
    touch(tmp_path / "Manually_Annotated_Images" / "1" / "a.jpg")
    touch(tmp_path / "training.csv", AFFECTNET_HEADER + "1/a.jpg,0,0,9,9,,11,0,0\n")
    with pytest.raises(LayoutError, match="training.csv: unknown expression code '11' for 1/a.jpg"):
        parse_dataset("affectnet", tmp_path)


@deploy
@pytest.mark.parametrize("name", ["../outside.jpg", "1/../../outside.jpg", "/etc/hostname"])
def test_affectnet_a_csv_row_naming_a_file_outside_the_image_folder_names_its_line(tmp_path, name):
    # guards: `../x.jpg` read a photo from outside RAW_DIR (into training); an absolute path was
    # ValueError "is not in the subpath of", naming neither the csv nor the row
    touch(tmp_path / "Manually_Annotated_Images" / "1" / "a.jpg")
    touch(tmp_path / "training.csv", AFFECTNET_HEADER + f"1/a.jpg,0,0,9,9,,1,0,0\n{name},0,0,9,9,,1,0,0\n")
    outside = f"training.csv: line 3 names '{name}', not a file of Manually_Annotated_Images/"
    with pytest.raises(LayoutError, match=outside):
        parse_dataset("affectnet", tmp_path)


@deploy
def test_affectnet_an_image_in_both_csv_files_names_its_line(tmp_path):
    # guards: one image in training.csv and validation.csv was trained on and validated on, under one id
    touch(tmp_path / "Manually_Annotated_Images" / "1" / "a.jpg")
    touch(tmp_path / "training.csv", AFFECTNET_HEADER + "1/a.jpg,0,0,9,9,,1,0,0\n")
    touch(tmp_path / "validation.csv", AFFECTNET_HEADER + "1/a.jpg,0,0,9,9,,2,0,0\n")
    with pytest.raises(LayoutError, match="validation.csv: line 2 lists 1/a.jpg again"):
        parse_dataset("affectnet", tmp_path)


@deploy
def test_affectnet_an_exp_npy_of_two_numbers_is_no_expression_code(tmp_path):
    # guards: `array.size != 1`: [1, 2] was read as code 1
    np.save(tmp_path / "0_exp.npy", np.array([1, 2]))
    lookup = {str(code): None for code in range(11)}
    with pytest.raises(ValueError, match="holds 2 values, not one expression code"):
        affectnet.read_expression(tmp_path / "0_exp.npy", lookup)


@deploy
def test_affectnet_lnd_npy_must_hold_136_finite_numbers(tmp_path):
    # guards: the size check (its message, the note's example) and `np.isfinite`: a nan landmark is unusable
    np.save(tmp_path / "ok_lnd.npy", CK_POINTS.reshape(-1))
    assert affectnet.read_landmarks(tmp_path / "ok_lnd.npy", GROUPS).tolist() == FIVE
    np.save(tmp_path / "long_lnd.npy", np.zeros(138))
    with pytest.raises(ValueError, match="holds 138 float64 values, not 136 numbers"):
        affectnet.read_landmarks(tmp_path / "long_lnd.npy", GROUPS)
    values = CK_POINTS.reshape(-1).copy()
    values[3] = np.nan
    np.save(tmp_path / "nan_lnd.npy", values)
    with pytest.raises(ValueError, match="holds values that are not finite"):
        affectnet.read_landmarks(tmp_path / "nan_lnd.npy", GROUPS)


@deploy
def test_affectnet_newer_release_lists_images_in_numeric_order_then_annotations_without_an_image(tmp_path):
    # guards: sorted(key=natural) and natural()'s int parts (10.png came before 2.png), the orphan's suffix taken
    # from the images on disk (.png, not .jpg) and its label kept (happiness, code 1) though it is missing
    annotations = tmp_path / "val_set" / "annotations"
    annotations.mkdir(parents=True)
    for stem in ("0", "1", "2", "10"):
        touch(tmp_path / "val_set" / "images" / f"{stem}.png")
        np.save(annotations / f"{stem}_exp.npy", np.array("0"))
    np.save(annotations / "7_exp.npy", np.array("1"))
    items = parse_dataset("affectnet", tmp_path).items
    assert [item.id for item in items] == [f"val_set/images/{stem}.png" for stem in ("0", "1", "2", "10", "7")]
    assert (items[-1].status, items[-1].label) == ("missing", CLASSES.index("happiness"))


# ------------------------------------------------------------------------------------- loader.py


def batches(faces: np.ndarray, rows: np.ndarray, labels: np.ndarray, batch_size: int, **kwargs) -> list[list[list]]:
    """Each batch as [image values, labels, extra (or None), positions] lists."""
    from poi_cli.data.loader import BatchLoader

    loader = BatchLoader(faces, rows, labels, batch_size, **kwargs)
    return [[None if t is None else (t[:, 0, 0, 0] if t.dim() == 4 else t).tolist() for t in batch] for batch in loader]


def numbered_faces(n: int) -> np.ndarray:
    """(n, 1, 1, 3) uint8 faces whose value is their store row."""
    return np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(3, 3)


def test_loader_labels_and_extra_follow_the_split_position_not_the_store_row():
    # guards: labels[positions] and extra[positions]: the split's rows sit anywhere in the store (here reversed)
    rows, labels, extra = np.array([4, 3, 2, 1, 0]), np.array([10, 11, 12, 13, 14]), np.array([20, 21, 22, 23, 24])
    assert batches(numbered_faces(5), rows, labels, 3, shuffle=False, extra=extra) == [
        [[4, 3, 2], [10, 11, 12], [20, 21, 22], [0, 1, 2]], [[1, 0], [13, 14], [23, 24], [3, 4]]]


def test_loader_evaluation_gives_each_process_every_world_size_th_row_of_each_global_batch():
    # guards: `batch_size * world_size`: 10 rows, batches of 3 on 2 processes: global batches of 6, then 4
    faces, rows, labels = numbered_faces(10), np.arange(10), np.zeros(10)
    shares = [[b[3] for b in batches(faces, rows, labels, 3, shuffle=False, rank=r, world_size=2)] for r in (0, 1)]
    assert shares == [[[0, 2, 4], [6, 8]], [[1, 3, 5], [7, 9]]]


def test_loader_a_batch_larger_than_the_split_gives_every_process_the_same_number_of_rows():
    # guards: min(batch_size, n): 5 rows, batch 8, 2 processes: one global batch of 4, 2 rows each (3 and 2 before,
    # a different batch size on each process)
    faces, rows, labels = numbered_faces(5), np.arange(5), np.zeros(5)
    shares = [batches(faces, rows, labels, 8, shuffle=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert [len(share) for share in shares] == [1, 1] and [len(share[0][3]) for share in shares] == [2, 2]
    assert len(set(shares[0][0][3]) | set(shares[1][0][3])) == 4


def test_loader_a_shuffled_batch_reads_its_store_rows_in_ascending_order():
    # guards: np.sort(mine): the memmap is read in file order, each batch's positions ascending
    faces, rows, labels = numbered_faces(40), np.arange(40), np.zeros(40)
    drawn = batches(faces, rows, labels, 10, shuffle=True, seed=3)
    assert len(drawn) == 4 and all(b[3] == sorted(b[3]) and b[0] == b[3] for b in drawn)
    assert sum((b[3] for b in drawn), []) != list(range(40))  # shuffled across the batches


class BrokenFaces:
    """A store whose reads fail: the error must reach the consumer, not end the epoch early in silence."""

    def __getitem__(self, index):
        raise OSError("disk read failed")


def test_loader_an_error_reading_the_store_is_raised_to_the_consumer():
    # guards: results.put(error): a swallowed error gave an epoch of no batches
    with pytest.raises(OSError, match="disk read failed"):
        batches(BrokenFaces(), np.arange(4), np.zeros(4), 2, shuffle=False)
