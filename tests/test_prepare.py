"""`poi prepare`: each official layout built in tmp_path, bad inputs, resume, no-op re-runs.

Images are tiny generated PNG/JPEGs; detection is replaced by a fake detector (the real
MTCNN is exercised in test_faces.py), so these tests run in seconds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from poi_cli.data import prepare as prepare_module
from poi_cli.cli import app
from poi_cli.data.datasets import DATASET_NAMES, LayoutError, dataset_manifest
from poi_cli.data.faces import BLANK_REASON, Face
from poi_cli.core.manifests import CLASSES
from poi_cli.core.layout import PREPARE_JOURNAL_FILE
from poi_cli.data.prepare import PrepareError, prepare
from poi_cli.data.store import PreparedDataset

SIZE = 32


def not_blank(image: Image.Image) -> Image.Image:
    """`image` with an 8x8 corner block 16 levels off in its last band: not blank (prepare stores no
    blank image), even through JPEG, and an RGB image's red band, which ScriptedDetector reads, unchanged."""
    bands = list(image.split())
    bands[-1].paste(bands[-1].crop((0, 0, 8, 8)).point(lambda v: v ^ 16), (0, 0))
    return Image.merge(image.mode, bands)


def save(path: Path, value: int = 128, size: tuple[int, int] = (48, 48), mode: str = "L") -> Path:
    """A flat image of `value` (RGB: value, value // 2, 255 - value), but for not_blank's corner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    not_blank(Image.new(mode, size, value if mode == "L" else (value, value // 2, 255 - value))).save(path)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file: RAW_DIR must not change."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# FERPlus label.csv rows: name, box, votes (neutral, happiness, surprise, sadness, anger,
# disgust, fear, contempt, unknown, NF).
FERPLUS_ROWS = {
    "fer0000000.png": [0, 8, 1, 1, 0, 0, 0, 0, 0, 0],  # happiness
    "fer0000001.png": [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],  # 4 of 9 after dropping the 1: no majority
    "fer0000002.png": [2, 0, 0, 0, 0, 0, 0, 0, 8, 0],  # unknown wins: excluded
    "fer0000003.png": [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # NF wins: excluded
    "fer0000004.png": [3, 0, 0, 0, 0, 0, 0, 6, 1, 0],  # contempt 6 of 9
    "fer0000005.png": [6, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # neutral; file missing on disk
}


def make_ferplus(root: Path) -> Path:
    for folder in ("FER2013Train", "FER2013Valid"):
        lines = []
        for k, (name, votes) in enumerate(FERPLUS_ROWS.items()):
            if name != "fer0000005.png":
                save(root / folder / name, value=40 * k)
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        (root / folder / "label.csv").write_text("\n".join(lines) + "\n")
    return root


def test_ferplus_majority_votes_and_store(tmp_path: Path) -> None:
    raw = make_ferplus(tmp_path / "ferplus")
    before = snapshot(raw)
    result = prepare("ferplus", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert snapshot(raw) == before
    assert result.counts["train"] == {"ok": 2, "excluded": 3, "missing": 1}
    assert result.counts["val"] == {"ok": 2, "excluded": 3, "missing": 1}
    assert any("FER2013Test" in note and "absent" in note for note in result.notes)

    data = PreparedDataset(tmp_path / "out")
    assert data.num_classes == 8 and data.grayscale and data.size == SIZE
    manifest = data.manifest.set_index("id")
    assert manifest.loc["FER2013Train/fer0000000.png", "label_name"] == "happiness"
    assert manifest.loc["FER2013Train/fer0000004.png", "label"] == CLASSES.index("contempt")
    assert manifest.loc["FER2013Train/fer0000002.png", "reason"] == "majority vote is unknown"
    assert manifest.loc["FER2013Train/fer0000001.png", "status"] == "excluded"
    assert manifest.loc["FER2013Train/fer0000000.png", "vote_happiness"] == 8
    assert manifest.loc["FER2013Train/fer0000003.png", "vote_NF"] == 10
    assert manifest.loc["FER2013Train/fer0000005.png", "store_index"] == -1

    train = data.split("train")
    faces = data.faces[train.store_rows]
    assert faces.shape == (2, SIZE, SIZE, 3)
    # Grey sources stay grey (three equal channels); each face keeps its own pixel value.
    assert np.array_equal(faces[..., 0], faces[..., 2])
    assert sorted(int(f.mean()) for f in faces) == [0, 160]


def test_rerun_is_noop_and_other_settings_refused(tmp_path: Path) -> None:
    raw = make_ferplus(tmp_path / "ferplus")
    out = tmp_path / "out"
    prepare("ferplus", raw, out, size=SIZE, show_progress=False)
    stamp = (out / "faces.npy").stat().st_mtime_ns
    again = prepare("ferplus", raw, out, size=SIZE, show_progress=False)
    assert again.already_done and again.processed == 0
    assert (out / "faces.npy").stat().st_mtime_ns == stamp
    with pytest.raises(PrepareError, match="size 32 -> 64"):
        prepare("ferplus", raw, out, size=64, show_progress=False)


class InterruptingDetector:
    """Fake detector: one face per image; raises KeyboardInterrupt on call `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls, self.stop_at = 0, stop_at

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return [[fake_face(image, 0)] for image in images]


def fake_face(image: Image.Image, shift: float, scale: float = 1.0, score: float = 0.99) -> Face:
    w, h = image.size
    box = np.array([shift, shift, shift + scale * w / 2, shift + scale * h / 2], np.float32)
    eyes = [[0.35 * w, 0.4 * h], [0.65 * w, 0.4 * h], [0.5 * w, 0.55 * h], [0.38 * w, 0.75 * h], [0.62 * w, 0.75 * h]]
    return Face(box=box, landmarks=np.array(eyes, np.float32), score=score)


def make_folder_tree(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for name in ("happy", "sad", "angry"):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_module, "CHECKPOINT_SECONDS", 0.0)
    raw = make_folder_tree(tmp_path / "raw")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        prepare("folder", raw, out, size=SIZE, batch_size=4, show_progress=False, detector=InterruptingDetector(stop_at=3))
    assert not (out / "prepared.json").exists()
    done = (out / PREPARE_JOURNAL_FILE).read_text().splitlines()
    assert len(done) == 8  # two batches of 4 finished before the interrupt
    # a journal an older poi wrote has no face digests: they come from the stored faces
    older = [json.dumps({k: v for k, v in json.loads(line).items() if k != "digest"}) for line in done]
    assert all("digest" in json.loads(line) for line in done if json.loads(line)["status"] == "ok")
    (out / PREPARE_JOURNAL_FILE).write_text("".join(line + "\n" for line in older))
    with open(out / PREPARE_JOURNAL_FILE, "a") as handle:
        handle.write('{"i": 14, "sta')  # a line torn by a crash is ignored
    result = prepare("folder", raw, out, size=SIZE, batch_size=4, show_progress=False, detector=InterruptingDetector())
    assert (result.resumed, result.processed) == (8, 7)
    assert not (out / PREPARE_JOURNAL_FILE).exists()
    prepare("folder", raw, fresh, size=SIZE, batch_size=4, show_progress=False, detector=InterruptingDetector())
    assert (out / "faces.npy").read_bytes() == (fresh / "faces.npy").read_bytes()
    assert (out / "manifest.csv").read_bytes() == (fresh / "manifest.csv").read_bytes()


def test_a_torn_journal_line_loses_no_image_appended_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # killed mid-line, then resumed and stopped again: the next run's first line was glued to the
    # torn one and lost with it (that image redone by the run after)
    monkeypatch.setattr(prepare_module, "CHECKPOINT_SECONDS", 0.0)
    raw = make_folder_tree(tmp_path / "raw")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare("folder", raw, out, size=SIZE, batch_size=4, show_progress=False, detector=InterruptingDetector(stop_at=3))
    with open(out / PREPARE_JOURNAL_FILE, "a") as handle:
        handle.write('{"i": 14, "sta')
    with pytest.raises(KeyboardInterrupt):
        prepare("folder", raw, out, size=SIZE, batch_size=4, show_progress=False, detector=InterruptingDetector(stop_at=2))
    assert len(prepare_module._read_journal(out / PREPARE_JOURNAL_FILE)) == 12  # 8, then one batch of 4
    result = prepare("folder", raw, out, size=SIZE, batch_size=4, show_progress=False, detector=InterruptingDetector())
    assert (result.resumed, result.processed) == (12, 3)


def test_a_finished_folder_loses_the_progress_files_a_kill_left(tmp_path: Path) -> None:
    # killed after prepared.json, before the journal and progress.json were removed: a re-run is done, and tidies
    raw = make_folder_tree(tmp_path / "raw")
    out = tmp_path / "out"
    prepare("folder", raw, out, size=SIZE, show_progress=False, detector=InterruptingDetector())
    (out / PREPARE_JOURNAL_FILE).write_text('{"i": 0}\n')
    (out / "progress.json").write_text("{}")
    again = prepare("folder", raw, out, size=SIZE, show_progress=False, detector=InterruptingDetector())
    assert again.already_done and not (out / PREPARE_JOURNAL_FILE).exists() and not (out / "progress.json").exists()


class ScriptedDetector:
    """Fake detector keyed on the image's mean red value: 0 -> no face, 255 -> two faces."""

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        results = []
        for image in images:
            red = int(np.asarray(image)[..., 0].mean())
            if red == 0:
                results.append([])
            elif red == 255:
                results.append([fake_face(image, 0, 0.5, 0.99), fake_face(image, 2, 1.0, 0.9)])
            else:
                results.append([fake_face(image, 0)])
        return results


def test_bad_images_get_a_status_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("poi_cli.data.faces.MAX_PIXELS", 200 * 200)
    raw = tmp_path / "raw"
    happy, sad = raw / "happy", raw / "sad"
    save(happy / "good.png", mode="RGB", value=100)
    (happy / "empty.jpg").parent.mkdir(parents=True, exist_ok=True)
    (happy / "empty.jpg").write_bytes(b"")
    good_jpeg = (save(happy / "whole.jpg", mode="RGB", value=90)).read_bytes()
    (happy / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (happy / "text.png").write_text("not an image")
    save(happy / "tiny.png", size=(8, 8), mode="RGB")
    save(happy / "huge.png", size=(300, 300), mode="RGB")
    sad.mkdir()
    not_blank(Image.new("CMYK", (48, 48), (0, 255, 0, 0))).save(sad / "cmyk.jpg")
    sixteen = np.full((48, 48), 40000, np.uint16)
    sixteen[:8, :8] = 30000
    Image.fromarray(sixteen).save(sad / "sixteen.png")
    not_blank(Image.new("RGBA", (48, 48), (10, 200, 10, 128))).save(sad / "rgba.png")
    # EXIF orientation 6: stored landscape (60x30), shown portrait: top half dark after rotation.
    stored = np.zeros((30, 60, 3), np.uint8)
    stored[:, 30:] = 200  # right half bright -> after a 90 degree clockwise turn, bottom half bright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(sad / "rotated.jpg", exif=exif.tobytes())
    save(sad / "noface.png", mode="RGB", value=0)
    save(sad / "twofaces.png", mode="RGB", value=255)
    Image.new("RGB", (48, 48), (0, 0, 0)).save(sad / "black.png")  # blank: never shown to the detector
    (sad / "notes.txt").write_text("ignored: not an image suffix")
    before = snapshot(raw)

    result = prepare("folder", raw, tmp_path / "out", size=SIZE, detect=True, show_progress=False,
                     detector=ScriptedDetector())
    assert snapshot(raw) == before
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id")
    status = manifest["status"].to_dict()
    for name in ("empty.jpg", "truncated.jpg", "text.png", "tiny.png", "huge.png"):
        assert status[f"happy/{name}"] == "bad_image", name
        assert isinstance(manifest.loc[f"happy/{name}", "reason"], str)
    assert "too small" in manifest.loc["happy/tiny.png", "reason"]
    assert "too large" in manifest.loc["happy/huge.png", "reason"]
    for name in ("cmyk.jpg", "sixteen.png", "rgba.png", "rotated.jpg", "twofaces.png"):
        assert status[f"sad/{name}"] == "ok", name
    assert status["sad/noface.png"] == status["sad/black.png"] == "no_face"
    assert manifest.loc["sad/noface.png", "reason"] == "no face detected"
    assert manifest.loc["sad/black.png", "reason"] == BLANK_REASON
    assert status["happy/good.png"] == status["happy/whole.jpg"] == "ok"
    assert "sad/notes.txt" not in status
    two = manifest.loc["sad/twofaces.png"]
    assert two["n_faces"] == 2 and "largest" in two["reason"]
    assert two["box_x2"] == pytest.approx(2 + 48 / 2) and two["det_score"] == pytest.approx(0.9)
    assert result.counts["train"] == {"bad_image": 5, "no_face": 2, "ok": 7}
    assert any("several faces" in note for note in result.notes)

    # The rotated image was turned upright before the crop: its top is dark, its bottom bright.
    data = PreparedDataset(tmp_path / "out")
    face = data.faces[int(manifest.loc["sad/rotated.jpg", "store_index"])].astype(int)
    assert face[: SIZE // 4].mean() + 100 < face[-SIZE // 4:].mean()


@pytest.mark.parametrize("row, error", [
    ('fer0000000.png,"(0, 0, 48, 48)",0,8,1,1,0,0,0,0,0,1e400', "line 1 has a vote that is not a count"),
    ('fer0000000.png,"(0, 0, 48, 48)",-5,8,1,1,0,0,0,0,0,0', "line 1 has a vote that is not a count"),
    ('fer0000000.png,"(0, 0, 48, 48)",0,2.5,1,1,0,0,0,0,0,0', "line 1 has a vote that is not a count"),
    # a train list naming a validation image would put it into training
    ('../FER2013Valid/fer0000000.png,"(0, 0, 48, 48)",0,8,1,1,0,0,0,0,0,0', "not a file of FER2013Train/"),
    ('fer0000000.png,"(0, 0, 48, 48)",0,8,1,1,0,0,0,0,0,0\nfer0000000.png,"(0, 0, 48, 48)",0,0,8,1,0,0,0,0,0,0',
     "line 2 lists fer0000000.png again"),
])
def test_a_ferplus_label_row_that_cannot_be_right_names_its_line(tmp_path: Path, row: str, error: str) -> None:
    raw = make_ferplus(tmp_path / "ferplus")
    (raw / "FER2013Train" / "label.csv").write_text(row + "\n")
    with pytest.raises(LayoutError, match=re.escape(error)):
        prepare("ferplus", raw, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "prepared.json").exists()


def test_wrong_layouts_name_what_is_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="FER2013Train/"):
        prepare("ferplus", empty, tmp_path / "o1", show_progress=False)
    with pytest.raises(LayoutError, match="EmoLabel/list_patition_label.txt"):
        prepare("raf-db", empty, tmp_path / "o2", show_progress=False)
    with pytest.raises(LayoutError, match="cohn-kanade-images/ with Emotion/"):
        prepare("ckplus", empty, tmp_path / "o3", show_progress=False)
    with pytest.raises(LayoutError, match="image folder"):
        prepare("affectnet", empty, tmp_path / "o4", show_progress=False)
    with pytest.raises(LayoutError, match="unknown dataset"):
        prepare("mnist", empty, tmp_path / "o5", show_progress=False)
    save(empty / "Train" / "Joyful" / "a.png")
    with pytest.raises(LayoutError, match="Train/Joyful/: unknown class folder"):
        prepare("sfew", empty, tmp_path / "o6", show_progress=False)
    raw = make_ferplus(tmp_path / "fp")
    with pytest.raises(PrepareError, match="inside RAW_DIR"):
        prepare("ferplus", raw, raw / "out", show_progress=False)
    store = tmp_path / "store"  # a prepared dataset (its prepared.json) never holds another one
    store.mkdir()
    (store / "prepared.json").write_text("{}")
    with pytest.raises(PrepareError, match="inside the prepared dataset"):
        prepare("ferplus", raw, store / "nested" / "out", show_progress=False)
    assert sorted(p.name for p in store.iterdir()) == ["prepared.json"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("x")
    with pytest.raises(PrepareError, match="not empty"):
        prepare("ferplus", raw, busy, show_progress=False)
    with pytest.raises(PrepareError, match="split\\(s\\) test not found"):
        prepare("ferplus", raw, tmp_path / "o7", splits=["test"], show_progress=False)


def test_prepare_of_some_splits_notes_only_those_splits(tmp_path: Path) -> None:
    """`--splits val` of a FERPlus tree without FER2013Test/: the note that test is absent is no
    news to it (it was printed and kept in prepared.json); the notes of val stay."""
    raw = make_ferplus(tmp_path / "ferplus")
    result = prepare("ferplus", raw, tmp_path / "out", size=SIZE, splits=["val"], show_progress=False)
    assert set(result.counts) == {"val"}
    assert not any(note.startswith(("split test:", "split train:")) for note in result.notes), result.notes
    assert any(note.startswith("split val: ") for note in result.notes), result.notes
    assert PreparedDataset(tmp_path / "out").meta["notes"] == result.notes
    # `valid` (and `validation`) name FERPlus's val split, as a folder dataset's split folders may
    again = prepare("ferplus", raw, tmp_path / "out_valid", size=SIZE, splits=["valid"], show_progress=False)
    assert set(again.counts) == {"val"}


def test_rafdb_aligned_and_original_layouts(tmp_path: Path) -> None:
    labels = "train_00001.jpg 1\ntrain_00002.jpg 7\ntest_0001.jpg 4\n"
    aligned = tmp_path / "aligned"
    (aligned / "EmoLabel").mkdir(parents=True)
    (aligned / "EmoLabel" / "list_patition_label.txt").write_text(labels)
    for name in ("train_00001", "train_00002", "test_0001"):
        save(aligned / "Image" / "aligned" / f"{name}_aligned.jpg", mode="RGB", size=(100, 100))
    result = prepare("raf-db", aligned, tmp_path / "out_a", size=SIZE, show_progress=False)
    assert result.counts == {"test": {"ok": 1}, "train": {"ok": 2}}
    manifest = pd.read_csv(tmp_path / "out_a" / "manifest.csv").set_index("id")
    assert manifest.loc["train_00001.jpg", "label_name"] == "surprise"
    assert manifest.loc["train_00002.jpg", "label_name"] == "neutral"
    assert manifest.loc["test_0001.jpg", "source"] == "Image/aligned/test_0001_aligned.jpg"

    original = tmp_path / "original"
    (original / "EmoLabel").mkdir(parents=True)
    (original / "EmoLabel" / "list_patition_label.txt").write_text(labels)
    for name in ("train_00001", "train_00002", "test_0001"):
        save(original / "Image" / "original" / f"{name}.jpg", mode="RGB", size=(120, 90))
    landmarks = "40.0 40.0\n80.0 40.0\n60.0 55.0\n45.0 70.0\n75.0 70.0\n0\n0\n1\n"
    for name in ("train_00001", "train_00002"):
        (original / "Annotation" / "manual").mkdir(parents=True, exist_ok=True)
        (original / "Annotation" / "manual" / f"{name}_manu_attri.txt").write_text(landmarks)
    # test_0001 has no landmark file (Annotation/manual.zip not unzipped for it): a whole photo, so its
    # face is detected; --no-detect resizes it whole (its note said "detected" as well)
    result = prepare("raf-db", original, tmp_path / "out_o", size=SIZE, show_progress=False,
                     detector=InterruptingDetector())
    assert result.meta["layout"] == "original" and not result.meta["detect"]
    manifest = pd.read_csv(tmp_path / "out_o" / "manifest.csv").set_index("id")
    assert manifest.loc["train_00001.jpg", ["lm_x0", "lm_y4"]].tolist() == [40.0, 70.0]
    assert np.isnan(manifest.loc["train_00001.jpg", "det_score"])
    assert manifest.loc["test_0001.jpg", "det_score"] == pytest.approx(0.99) and manifest.loc["test_0001.jpg", "status"] == "ok"
    assert any(note.startswith("1 original images in test have no landmark file") for note in result.notes)
    assert "1 photos without landmarks: their faces are detected (the largest in each photo) and aligned" in result.notes
    result = prepare("raf-db", original, tmp_path / "out_n", size=SIZE, detect=False, show_progress=False)
    assert "1 photos without landmarks: each is resized whole, not aligned (--no-detect)" in result.notes
    assert not any("detected" in note for note in result.notes)
    manifest = pd.read_csv(tmp_path / "out_n" / "manifest.csv").set_index("id")
    assert np.isnan(manifest.loc["test_0001.jpg", "det_score"]) and np.isnan(manifest.loc["test_0001.jpg", "lm_x0"])
    assert result.meta["settings"]["unaligned_photos"] == "resized whole (--no-detect)"
    # the parser counts every split, prepare keeps those --splits names: the note says whose the photo is
    # (it read "1 original images have no landmark file" for a store without it)
    result = prepare("raf-db", original, tmp_path / "out_t", size=SIZE, splits=["train"], show_progress=False)
    assert result.counts == {"train": {"ok": 2}}
    assert any(note.startswith("1 original images in test have no landmark file") for note in result.notes)
    assert not any("photos without landmarks" in note for note in result.notes)


def test_a_parser_note_counts_each_split() -> None:
    from poi_cli.data.datasets.common import counted

    assert counted(["val", "train", "train"], "rows") == "3 rows (train 2, val 1)"
    assert counted(["test"], "original images") == "1 original images in test"


def test_rafdb_as_users_unzip_it(tmp_path: Path) -> None:
    """The list file with a BOM and the README's own spelling; RAW_DIR one folder too high, and the
    inner zips not yet unzipped, named in the error."""
    raw = tmp_path / "RAF-DB" / "basic"
    (raw / "EmoLabel").mkdir(parents=True)
    (raw / "EmoLabel" / "list_partition_label.txt").write_text("\ufefftrain_00001.jpg 1\ntest_0001.jpg 4\n", encoding="utf-8")
    (raw / "Image").mkdir()
    (raw / "Image" / "aligned.zip").write_bytes(b"PK")
    with pytest.raises(LayoutError, match="Image/aligned.zip must be unzipped"):
        prepare("raf-db", raw, tmp_path / "o1", size=SIZE, show_progress=False)
    with pytest.raises(LayoutError, match="give .*basic"):
        prepare("raf-db", raw.parent, tmp_path / "o2", size=SIZE, show_progress=False)
    for name in ("train_00001", "test_0001"):
        save(raw / "Image" / "aligned" / f"{name}_aligned.jpg", mode="RGB", size=(100, 100))
    (raw / "Image" / "aligned" / "test_0001_aligned.jpg").rename(raw / "Image" / "aligned" / "test_0001_aligned.JPG")
    result = prepare("raf-db", raw, tmp_path / "o3", size=SIZE, show_progress=False)
    assert result.counts == {"test": {"missing": 1}, "train": {"ok": 1}}
    assert "test_0001_aligned.JPG is: the case differs" in pd.read_csv(tmp_path / "o3" / "manifest.csv").set_index(
        "id").loc["test_0001.jpg", "reason"]
    manifest = pd.read_csv(tmp_path / "o3" / "manifest.csv").set_index("id")
    assert manifest.loc["train_00001.jpg", "label_name"] == "surprise"


def test_label_files_with_a_byte_order_mark_read_as_without(tmp_path: Path) -> None:
    # Excel and Notepad write one: FERPlus's first row was "missing", AffectNet "lacked" its first column
    raw = make_ferplus(tmp_path / "ferplus")
    for folder in ("FER2013Train", "FER2013Valid"):
        label = raw / folder / "label.csv"
        label.write_text("\ufeff" + label.read_text(), encoding="utf-8")
    result = prepare("ferplus", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert result.counts["train"] == {"ok": 2, "excluded": 3, "missing": 1}
    assert "FER2013Train/fer0000000.png" in set(pd.read_csv(tmp_path / "out" / "manifest.csv")["id"])


def test_affectnet_csv_with_landmarks_and_excluded_codes(tmp_path: Path) -> None:
    raw = tmp_path / "affectnet"
    points = np.zeros((68, 2))
    points[36:42], points[42:48], points[30], points[48], points[54] = [30, 40], [70, 40], [50, 55], [35, 70], [65, 70]
    text = ";".join(f"{v:.1f}" for v in points.reshape(-1))
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    rows = [("1/a.jpg", 1), ("1/b.jpg", 7), ("2/c.jpg", 9), ("2/d.jpg", 10)]
    (raw / "Manually_Annotated_file_lists").mkdir(parents=True)
    (raw / "Manually_Annotated_file_lists" / "training.csv").write_text(
        header + "".join(f'{name},0,0,100,100,"{text}",{code},0,0\n' for name, code in rows))
    for name, _ in rows:
        save(raw / "Manually_Annotated_Images" / name, mode="RGB", size=(100, 100))
    result = prepare("affectnet", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert result.counts == {"train": {"excluded": 2, "ok": 2}}
    assert any("validation.csv is absent" in note for note in result.notes)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id")
    assert manifest.loc["1/b.jpg", "label_name"] == "contempt"
    assert manifest.loc["1/a.jpg", ["lm_x0", "lm_y0", "lm_x2", "lm_x4"]].tolist() == [30.0, 40.0, 50.0, 65.0]
    assert PreparedDataset(tmp_path / "out").num_classes == 8


class TwoFaceDetector:
    """Fake detector: a large face on the left half and a small one on the right of each image."""

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        found = []
        for image in images:
            w, h = image.size
            left, right = fake_face(image, 0), fake_face(image, 0)
            left.box = np.array([0, 0, 0.5 * w, h], np.float32)
            right.box = np.array([0.6 * w, 0.2 * h, 0.9 * w, 0.6 * h], np.float32)
            right.landmarks = right.landmarks * 0.3 + np.array([0.6 * w, 0.2 * h], np.float32)
            found.append([left, right])
        return found


def test_detect_keeps_the_face_the_dataset_marks(tmp_path: Path) -> None:
    """Under --detect, an AffectNet photo of two faces kept the largest, which need not be the one
    its csv box (or landmarks) labels; now the face at the box is kept, and a box where no face
    was detected is said."""
    raw = tmp_path / "affectnet"
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    (raw / "Manually_Annotated_file_lists").mkdir(parents=True)
    (raw / "Manually_Annotated_file_lists" / "training.csv").write_text(
        header + "1/right.jpg,100,20,40,40,,1,0,0\n1/astray.jpg,140,140,10,10,,1,0,0\n1/plain.jpg,,,,,,1,0,0\n"
        + "1/landmarked.jpg,,,,," + ";".join(f"{100 + k % 30}.0;{40 + k % 40}.0" for k in range(68)) + ",1,0,0\n")
    for name in ("right", "astray", "plain", "landmarked"):
        (raw / "Manually_Annotated_Images" / "1").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)  # not blank
        Image.fromarray(pixels).save(raw / "Manually_Annotated_Images" / "1" / f"{name}.jpg")
    result = prepare("affectnet", raw, tmp_path / "out", size=SIZE, detect=True, show_progress=False,
                     detector=TwoFaceDetector())
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id")
    assert manifest.loc["1/right.jpg", "box_x1"] == pytest.approx(96)  # the small right face, at the csv's box
    assert manifest.loc["1/right.jpg", "reason"] == "2 faces, kept the one the dataset marks"
    assert manifest.loc["1/astray.jpg", "box_x1"] == pytest.approx(0)
    assert manifest.loc["1/astray.jpg", "reason"] == "2 faces, none where the dataset marks its face: kept the largest"
    assert manifest.loc["1/plain.jpg", "reason"] == "2 faces, kept the largest"  # nothing marked: the largest, as before
    assert manifest.loc["1/landmarked.jpg", "box_x1"] == pytest.approx(96)  # at its 68 landmarks
    assert "2 images had several faces: the one the dataset's landmarks or face box mark was kept" in result.notes
    assert any(note.startswith("1 images: no face was detected where the dataset's") for note in result.notes)


def test_affectnet_rows_without_landmarks_use_the_face_box_else_detection(tmp_path: Path) -> None:
    # they were stored as the whole photo resized, with no reason and no note
    raw = tmp_path / "affectnet"
    header = "\ufeffsubDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    (raw / "Manually_Annotated_file_lists").mkdir(parents=True)
    (raw / "Manually_Annotated_file_lists" / "training.csv").write_text(
        header + "1/boxed.jpg,40,20,80,80,,1,0,0\n1/bare.jpg,,,,,1;2;3,3,0,0\n", encoding="utf-8")
    photo = np.zeros((120, 160, 3), np.uint8)
    photo[20:100, 40:120] = 200  # the face box is the bright square
    for name in ("1/boxed.jpg", "1/bare.jpg"):
        (raw / "Manually_Annotated_Images" / "1").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(raw / "Manually_Annotated_Images" / name)
    result = prepare("affectnet", raw, tmp_path / "out", size=SIZE, show_progress=False, detector=InterruptingDetector())
    assert result.counts == {"train": {"ok": 2}}
    assert any("1 rows in train have no usable facial_landmarks: their face box" in note for note in result.notes)
    assert any("neither usable facial_landmarks nor a face box" in note for note in result.notes)
    assert "1 photos without landmarks: their faces are detected (the largest in each photo) and aligned" in result.notes
    data = PreparedDataset(tmp_path / "out")
    manifest = data.manifest.set_index("id")
    boxed = data.faces[manifest.loc["1/boxed.jpg", "store_index"]]
    assert boxed.min() > 150  # the box's inside only, not the dark photo around it
    assert manifest.loc["1/bare.jpg", "det_score"] == pytest.approx(0.99)


def test_affectnet_validation_csv_without_a_header_row(tmp_path: Path) -> None:
    # some copies ship validation.csv headerless: it stopped the whole run ("lacks the column(s)")
    raw = tmp_path / "affectnet"
    (raw / "Manually_Annotated_Images" / "1").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        save(raw / "Manually_Annotated_Images" / "1" / name, mode="RGB", size=(100, 100))
    (raw / "training.csv").write_text("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
                                      "expression,valence,arousal\n1/a.jpg,10,10,80,80,,1,0,0\n")
    (raw / "validation.csv").write_text("1/b.jpg,10,10,80,80,,6,0,0\n")
    result = prepare("affectnet", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert result.counts == {"train": {"ok": 1}, "val": {"ok": 1}}
    assert pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id").loc["1/b.jpg", "label_name"] == "anger"


class Unpickled:
    """Unpickling it creates `marker` (open(marker, "w")): an object .npy read with pickles allowed would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# AffectNet's newer release: the 68 landmarks of a 64x64 crop (eyes 20/44, nose 32, mouth 24/40) and the five they give
AFFECTNET_68 = np.zeros((68, 2))
AFFECTNET_68[36:42], AFFECTNET_68[42:48], AFFECTNET_68[30], AFFECTNET_68[48], AFFECTNET_68[54] = (
    [20, 25], [44, 25], [32, 35], [24, 46], [40, 46])


def make_affectnet_sets(root: Path) -> Path:
    """train_set/ and val_set/ with images/<n>.jpg and annotations/<n>_exp.npy, <n>_lnd.npy: string and number
    dtypes, an excluded code, an object (pickled) .npy, an image without its _exp.npy and an _exp.npy without its image."""
    strings = np.array([f"{v:.3f}" for v in AFFECTNET_68.reshape(-1)])  # dtype '<U6', as many copies store them
    train = {  # stem: (expression, landmarks); None: no file
        "0": (np.array("1"), strings),  # happiness, string dtypes (0-d)
        "1": (np.array([7]), AFFECTNET_68.reshape(-1).astype(np.float32)),  # contempt, numbers (1 element)
        "2": (np.array("9"), strings),  # Uncertain: excluded
        "3": ("object", strings),  # a pickled object array: this image's error, never unpickled
        "4": (None, strings),  # no _exp.npy: missing
        "5": (np.array(0.0), None),  # neutral without landmarks: resized whole
        "10": (np.array("6"), "object"),  # anger, its _lnd.npy an object array: resized whole
    }
    val = {"0": (np.array("2"), strings), "1": (np.array(3, dtype=np.int64), AFFECTNET_68.reshape(-1))}
    for set_name, rows in (("train_set", train), ("val_set", val)):
        (root / set_name / "annotations").mkdir(parents=True)
        for stem, pair in rows.items():
            value = 20 * int(stem) + (10 if set_name == "val_set" else 0)  # no face repeated across the splits
            save(root / set_name / "images" / f"{stem}.jpg", value=value, size=(64, 64), mode="RGB")
            for kind, value in zip(("exp", "lnd"), pair):
                if isinstance(value, str):
                    marker = root.parent / f"unpickled_{set_name}_{stem}_{kind}"
                    np.save(root / set_name / "annotations" / f"{stem}_{kind}.npy",
                            np.array([Unpickled(marker)], dtype=object), allow_pickle=True)
                elif value is not None:
                    np.save(root / set_name / "annotations" / f"{stem}_{kind}.npy", value)
    np.save(root / "train_set" / "annotations" / "6_exp.npy", np.array("3"))  # no 6.jpg: missing
    return root


def test_affectnet_newer_release_with_npy_annotations(tmp_path: Path) -> None:
    # it was refused ("does not look like AffectNet: the image folder not found"): convert it to class folders
    raw = make_affectnet_sets(tmp_path / "affectnet")
    before = snapshot(raw)
    result = prepare("affectnet", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert snapshot(raw) == before
    assert not list(tmp_path.glob("unpickled_*"))  # the object arrays were refused, not unpickled
    assert result.counts == {"train": {"error": 1, "excluded": 1, "missing": 2, "ok": 4}, "val": {"ok": 2}}
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id")
    labels = manifest["label_name"].fillna("").to_dict()
    assert {k: labels[k] for k in manifest.index if manifest.loc[k, "status"] == "ok"} == {
        "train_set/images/0.jpg": "happiness", "train_set/images/1.jpg": "contempt", "train_set/images/5.jpg": "neutral",
        "train_set/images/10.jpg": "anger", "val_set/images/0.jpg": "sadness", "val_set/images/1.jpg": "surprise"}
    assert manifest.loc["train_set/images/2.jpg", "status"] == "excluded"
    assert "expression code 9" in manifest.loc["train_set/images/2.jpg", "reason"]
    assert "train_set/annotations/3_exp.npy is unusable" in manifest.loc["train_set/images/3.jpg", "reason"]
    assert "allow_pickle=False" in manifest.loc["train_set/images/3.jpg", "reason"]
    assert "train_set/annotations/4_exp.npy is not on disk" in manifest.loc["train_set/images/4.jpg", "reason"]
    assert manifest.loc["train_set/images/6.jpg", "status"] == "missing"
    assert "no image 6.* is on disk" in manifest.loc["train_set/images/6.jpg", "reason"]
    five = [20.0, 25.0, 44.0, 25.0, 32.0, 35.0, 24.0, 46.0, 40.0, 46.0]
    columns = [f"lm_{axis}{k}" for k in range(5) for axis in "xy"]
    for aligned in ("train_set/images/0.jpg", "train_set/images/1.jpg", "val_set/images/1.jpg"):  # strings and numbers
        assert manifest.loc[aligned, columns].tolist() == pytest.approx(five), aligned
    for whole in ("train_set/images/5.jpg", "train_set/images/10.jpg"):
        assert manifest.loc[whole, columns].isna().all() and np.isnan(manifest.loc[whole, "det_score"])
    assert any(note.startswith("1 images in train have no _lnd.npy file: already face crops") for note in result.notes)
    assert any(note.startswith("1 images in train have an unusable _lnd.npy file (e.g. train_set/annotations/10_lnd.npy")
               for note in result.notes)
    assert PreparedDataset(tmp_path / "out").num_classes == 8
    again = prepare("affectnet", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert again.processed == 0 and again.counts == result.counts


@pytest.mark.parametrize("bad", ["truncated", "garbage", "two codes", "a code of 11", "a float code", "an npz archive"])
def test_affectnet_npy_an_unusable_expression_file_is_that_images_error(tmp_path: Path, bad: str) -> None:
    raw = tmp_path / "affectnet"
    (raw / "val_set" / "annotations").mkdir(parents=True)
    for stem in ("0", "1"):
        save(raw / "val_set" / "images" / f"{stem}.jpg", size=(64, 64), mode="RGB")
    np.save(raw / "val_set" / "annotations" / "0_exp.npy", np.array("1"))
    path = raw / "val_set" / "annotations" / "1_exp.npy"
    if bad == "truncated":
        np.save(path, np.array("4"))
        path.write_bytes(path.read_bytes()[:60])
    elif bad == "garbage":
        path.write_bytes(b"not numpy at all")
    elif bad == "an npz archive":
        with open(path, "wb") as handle:
            np.savez(handle, code=np.array(1))
    else:
        np.save(path, {"two codes": np.array(["1", "2"]), "a code of 11": np.array(11),
                       "a float code": np.array(1.5)}[bad])
    result = prepare("affectnet", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert result.counts == {"val": {"error": 1, "ok": 1}}
    assert any("split train: train_set/annotations/ is absent, skipped" == note for note in result.notes)
    reason = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id").loc["val_set/images/1.jpg", "reason"]
    assert reason.startswith("val_set/annotations/1_exp.npy is unusable: ") and "\n" not in reason


def test_affectnet_both_releases_read_the_csv_and_neither_names_both(tmp_path: Path) -> None:
    raw = make_affectnet_sets(tmp_path / "affectnet")
    (raw / "training.csv").write_text("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
                                      "expression,valence,arousal\n1/a.jpg,10,10,80,80,,1,0,0\n")
    save(raw / "Manually_Annotated_Images" / "1" / "a.jpg", mode="RGB", size=(100, 100))
    result = prepare("affectnet", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert result.counts == {"train": {"ok": 1}}
    assert any(note.startswith("both releases' layouts are here: training.csv/validation.csv were read, "
                               "train_set/ and val_set/ not") for note in result.notes)
    empty = tmp_path / "empty"
    (empty / "train_set" / "images").mkdir(parents=True)  # no annotations/: not the newer release either
    with pytest.raises(LayoutError, match=r"neither the original release \(training.csv or validation.csv.*nor the "
                                          r"newer one \(train_set/ or val_set/, each with images/ and annotations/\)"):
        prepare("affectnet", empty, tmp_path / "o", show_progress=False)


def test_cli_prepares_the_newer_affectnet_release(tmp_path: Path) -> None:
    raw = make_affectnet_sets(tmp_path / "affectnet")
    result = CliRunner().invoke(app, ["prepare", "affectnet", str(raw), "--out", str(tmp_path / "out"), "--size",
                                      str(SIZE), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "resized whole" in result.output
    data = PreparedDataset(tmp_path / "out")
    assert data.meta["layout"] == "train_set/val_set"
    assert data.meta["counts"] == {"train": {"error": 1, "excluded": 1, "missing": 2, "ok": 4}, "val": {"ok": 2}}
    ok = data.manifest[data.manifest["status"] == "ok"]
    assert ok.groupby("split").size().to_dict() == {"train": 4, "val": 2}
    assert data.faces.shape[0] == 6 and not list(tmp_path.glob("unpickled_*"))


def test_ckplus_official_sequences_and_ck48(tmp_path: Path) -> None:
    raw = tmp_path / "ck"
    for sequence, code in (("S005/001", "3.0000000e+00"), ("S005/002", "2.0000000e+00"), ("S010/001", None)):
        for frame in range(1, 7):
            subject, number = sequence.split("/")
            save(raw / "cohn-kanade-images" / sequence / f"{subject}_{number}_{frame:08d}.png", value=frame * 30)
        if code:
            (raw / "Emotion" / sequence).mkdir(parents=True)
            (raw / "Emotion" / sequence / f"{subject}_{number}_00000006_emotion.txt").write_text(f"   {code}\n")
    result = prepare("ckplus", raw, tmp_path / "out", size=SIZE, show_progress=False, detector=InterruptingDetector())
    assert result.meta["detect"]  # no Landmarks/: faces are detected
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    # S005/001 (disgust): frame 1 neutral, frames 4-6 disgust; contempt (code 2) and unlabelled S010 left out.
    assert dict(zip(manifest["id"].str[-12:], manifest["label_name"])) == {
        "00000001.png": "neutral", "00000004.png": "disgust", "00000005.png": "disgust", "00000006.png": "disgust"}
    assert set(manifest["subject"]) == {"S005"}
    assert PreparedDataset(tmp_path / "out").num_classes == 7

    # a labelled sequence whose frames are gone is left out and counted (it stopped the whole run);
    # the release one folder down is named
    (raw / "Emotion" / "S020" / "001").mkdir(parents=True)
    (raw / "Emotion" / "S020" / "001" / "S020_001_00000009_emotion.txt").write_text("   3.0000000e+00\n")
    result = prepare("ckplus", raw, tmp_path / "out_gone", size=SIZE, show_progress=False, detector=InterruptingDetector())
    assert len(result.meta["counts"]["train"]) >= 1 and any("1 labelled sequences have no frames" in n for n in result.notes)
    (tmp_path / "up" / "CK+" / "Emotion").mkdir(parents=True)
    with pytest.raises(LayoutError, match="holds CK\\+ one folder down: give .*CK\\+"):
        prepare("ckplus", tmp_path / "up", tmp_path / "out_up", size=SIZE, show_progress=False)

    ck48 = tmp_path / "ck48" / "CK+48"
    save(ck48 / "happy" / "S011_002_00000014.png")
    save(ck48 / "contempt" / "S012_001_00000010.png")
    result = prepare("ckplus", ck48.parent, tmp_path / "out48", size=SIZE, show_progress=False)
    manifest = pd.read_csv(tmp_path / "out48" / "manifest.csv").set_index("id")
    assert manifest.loc["contempt/S012_001_00000010.png", "label"] == CLASSES.index("contempt")
    assert manifest.loc["happy/S011_002_00000014.png", "subject"] == "S011"
    assert not result.meta["detect"] and result.meta["num_classes"] == 8


def test_sfew_and_folder_splits(tmp_path: Path) -> None:
    raw = tmp_path / "sfew"
    save(raw / "Train" / "Happy" / "a.png", mode="RGB", size=(143, 181))
    save(raw / "Val" / "Sad" / "b.png", mode="RGB", size=(143, 181))
    # The release's own failed alignments are black files (12 of SFEW 2.0's 431 val images):
    # no face, so not stored, and said so; a dark face with anything in it is kept.
    Image.new("RGB", (143, 181)).save(raw / "Val" / "Sad" / "black.png")
    dark = np.zeros((181, 143, 3), np.uint8)
    dark[90, 70] = 1
    Image.fromarray(dark).save(raw / "Val" / "Sad" / "dark.png")
    result = prepare("sfew", raw, tmp_path / "out", size=SIZE, show_progress=False)
    assert result.counts == {"train": {"ok": 1}, "val": {"ok": 2, "no_face": 1}}
    assert not result.meta["grayscale"]
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id")
    assert manifest.loc["Val/Sad/black.png", "reason"] == BLANK_REASON
    assert manifest.loc["Val/Sad/black.png", "store_index"] == -1
    assert f"1 images are not stored ({BLANK_REASON}): status no_face" in result.meta["notes"]

    # as the release's zips unpack (a wrapper folder or two), class folders in any case
    unzipped = tmp_path / "sfew_zips"
    save(unzipped / "Train" / "Train_Aligned_Faces" / "happy" / "a.png", mode="RGB", size=(143, 181))
    save(unzipped / "Val" / "Val_Aligned_Faces_new" / "Val_Aligned_Faces" / "SAD" / "b.png", mode="RGB", size=(143, 181))
    result = prepare("sfew", unzipped, tmp_path / "out_zips", size=SIZE, show_progress=False)
    assert result.counts == {"train": {"ok": 1}, "val": {"ok": 1}}
    manifest = pd.read_csv(tmp_path / "out_zips" / "manifest.csv").set_index("id")
    assert manifest.loc["Val/Val_Aligned_Faces_new/Val_Aligned_Faces/SAD/b.png", "label_name"] == "sadness"

    tree = tmp_path / "mine"
    save(tree / "train" / "Happy" / "a.png")
    save(tree / "valid" / "contempt" / "b.png")
    result = prepare("folder", tree, tmp_path / "out2", size=SIZE, detect=False, show_progress=False)
    assert result.counts == {"train": {"ok": 1}, "val": {"ok": 1}}
    assert result.meta["num_classes"] == 8 and result.meta["grayscale"]


def test_dataset_manifests_map_onto_canonical_classes() -> None:
    for name in DATASET_NAMES:
        facts = dataset_manifest(name)
        maps = [facts["class_map"]] if "class_map" in facts else [l["class_map"] for l in facts["layouts"].values()]
        for class_map in maps:
            assert set(v for v in class_map.values() if v is not None) <= set(CLASSES), name
        for key in ("source", "terms", "layout", "label_rule"):
            assert facts[key], (name, key)


def test_cli_prepare_summary_and_one_line_errors(tmp_path: Path) -> None:
    raw = make_ferplus(tmp_path / "ferplus")
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "ferplus", str(raw), "--out", str(tmp_path / "out"), "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "excluded" in result.output and "FER2013Test/ is absent" in result.output
    again = runner.invoke(app, ["prepare", "ferplus", str(raw), "--out", str(tmp_path / "out"), "--size", "32"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    bad = runner.invoke(app, ["prepare", "ferplus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert bad.exit_code == 1 and "is not a directory" in bad.output and "Traceback" not in bad.output
    assert not os.path.exists(tmp_path / "o")


def test_prepare_piped_prints_no_progress_bar(tmp_path):
    """Piped, rich would print the bar's last state as a line ("preparing ━━━ 10/10"); a
    terminal draws it (transient=False leaves it there)."""
    from poi_cli.cli import app

    raw = make_folder_tree(tmp_path / "raw", per_class=2)
    result = CliRunner().invoke(app, ["prepare", "folder", str(raw), "--out", str(tmp_path / "out"), "--size", "48",
                                      "--no-detect", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert not [line for line in result.output.splitlines() if line.startswith("preparing")], result.output


def test_a_folder_trees_class_sub_folders_hold_images_of_that_class(tmp_path):
    """happy/session1/x.png is a happy face, as torchvision's ImageFolder reads it; it used to
    get no manifest row at all. Hidden folders stay out."""
    import pandas as pd

    raw = make_folder_tree(tmp_path / "raw", per_class=1)
    rng = np.random.default_rng(1)
    for folder in ("happy/session1/deeper", "sad/.cache"):
        (raw / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(raw / folder / "x.png")
    result = prepare("folder", raw, tmp_path / "out", size=SIZE, show_progress=False, detect=False)
    manifest = pd.read_csv(result.out_dir / "manifest.csv").set_index("id")
    assert set(manifest.index) == {"happy/0.png", "sad/0.png", "angry/0.png", "happy/session1/deeper/x.png"}
    assert manifest.loc["happy/session1/deeper/x.png", "label_name"] == "happiness"


def test_a_class_folder_that_cannot_be_listed_stops_prepare_in_one_line(tmp_path, monkeypatch):
    """chmod 000 on a class folder (or a folder inside one): its images were left out with no
    row, no note and exit 0."""
    from conftest import refuse_to_list

    raw = make_folder_tree(tmp_path / "raw", per_class=1)
    refuse_to_list(monkeypatch, "sad")
    result = CliRunner().invoke(app, ["prepare", "folder", str(raw), "--out", str(tmp_path / "out"), "--size", str(SIZE),
                                      "--no-detect", "--threads", "1"])
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and lines == [f"error: {raw / 'sad'}: Permission denied"], result.output


def test_a_prepare_that_stores_no_face_fails_in_one_line(tmp_path: Path) -> None:
    # RAF-DB unzipped one folder too deep (Image/aligned/aligned/): every listed image missing, exit 0 before
    raw = tmp_path / "basic"
    (raw / "EmoLabel").mkdir(parents=True)
    (raw / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\n")
    save(raw / "Image" / "aligned" / "aligned" / "train_00001_aligned.jpg", mode="RGB", size=(100, 100))
    result = CliRunner().invoke(app, ["prepare", "raf-db", str(raw), "--out", str(tmp_path / "out"), "--size", str(SIZE),
                                      "--threads", "1"])
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(lines) == 1 and "no face was stored" in lines[0] and "1 missing" in lines[0]


def test_a_device_typo_is_said_before_the_work_even_without_a_detector(tmp_path):
    """prepare --no-detect --device tpu exited 0: --device was read only by the torch detector."""
    raw = make_folder_tree(tmp_path / "raw", per_class=1)
    result = CliRunner().invoke(app, ["prepare", "folder", str(raw), "--out", str(tmp_path / "out"), "--size", str(SIZE),
                                      "--no-detect", "--device", "tpu", "--threads", "1"])
    assert result.exit_code == 1 and "--device must be one of auto, cpu, cuda, mps, got 'tpu'" in result.stderr
    assert not (tmp_path / "out").exists()
