"""`poi predict` and poi_cli.deploy.predict.Predictor on generated images and skimage's astronaut.

The checkpoints are small randomly initialised models (64 px) written in tmp_path, so
the predictions mean nothing; what is tested is the pipeline's contract: one record per
face, probabilities that sum to 1, w in [0.25, 1], the 13 AUs, the statuses, the
output formats and the exit codes.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model, write_checkpoint
import torch
from PIL import Image
from skimage import data as skimage_data
from typer.testing import CliRunner

from poi_cli.backends import open_runner
from poi_cli.deploy import predict as predict_module
from poi_cli.data.preprocess import Preprocessing
from poi_cli.model.checkpoint import save_checkpoint
from poi_cli.cli import app
from poi_cli.data.faces import FaceDetector
from poi_cli.core.manifests import EYE_AUS, MOUTH_AUS, REGIONS, class_names
from poi_cli.model.network import REGION_NAMES, ModelConfig, POIModel
from poi_cli.deploy.pipeline import expand_inputs
from poi_cli.deploy.predict import Predictor, PredictError, resolve_model
from poi_cli.deploy.records import flat_columns

runner = CliRunner()


def make_checkpoint(path: Path, num_classes: int = 7, use_pin: bool = True, seed: int = 0) -> Path:
    """A randomly initialised 64 px POI (or baseline) checkpoint in the training format (conftest's)."""
    return write_checkpoint(path, tiny_model(num_classes, use_pin, seed))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    photos = root / "photos"
    (photos / "nested").mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.png")
    # The folder holds a half-size copy: detection time grows with the pixels.
    Image.fromarray(skimage_data.astronaut()).resize((256, 256)).save(photos / "astronaut.png")
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))
    Image.fromarray(gradient).convert("RGB").save(photos / "nested" / "gradient.png")
    (photos / "nested" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return {
        "root": root, "photos": photos, "astronaut": root / "astronaut.png", "small": photos / "astronaut.png",
        "gradient": photos / "nested" / "gradient.png", "corrupt": photos / "nested" / "corrupt.jpg",
        "ck7": make_checkpoint(root / "poi7.pt"), "ck8": make_checkpoint(root / "poi8.pt", num_classes=8),
        "baseline": make_checkpoint(root / "baseline.pt", use_pin=False),
    }


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def check_face_record(record: dict, classes: tuple[str, ...], show_au: bool) -> None:
    assert record["status"] == "ok" and record["reason"] is None and record["face"] == 0
    assert list(record["probabilities"]) == list(classes)
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert record["expression"] == max(record["probabilities"], key=record["probabilities"].get)
    # confidence: the largest calibrated probability; consistency: the UEM's w in [0, 1]
    assert record["confidence"] == pytest.approx(max(record["probabilities"].values()), abs=1e-6)
    assert 0.0 <= record["consistency"] <= 1.0
    assert 0 <= record["regions_agree"] <= 4 and record["pin_expression"] in classes
    x1, y1, x2, y2 = record["box"]
    assert len(record["landmarks"]) == 5
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in record["landmarks"])
    assert 0.9 < record["detection_score"] <= 1.0
    if show_au:
        assert list(record["aus"]) == [*EYE_AUS, *MOUTH_AUS] and len(record["aus"]) == 13
        for au in EYE_AUS:
            assert set(record["aus"][au]) == {"left_eye", "right_eye"}
        for au in MOUTH_AUS:
            assert set(record["aus"][au]) == {"left_mouth", "right_mouth"}
        assert all(0.0 <= p <= 1.0 for regions in record["aus"].values() for p in regions.values())
        assert list(record["regions"]) == list(REGION_NAMES)
        for distribution in record["regions"].values():
            assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-4)
        # regions_agree: the regions whose own expression is the predicted one
        own = [max(distribution, key=distribution.get) for distribution in record["regions"].values()]
        assert record["regions_agree"] == own.count(record["expression"])


def test_astronaut_gives_one_face_with_probabilities_confidence_and_13_aus(files, detector):
    predictor = Predictor(open_runner(files["ck7"]), detector=detector)
    records = predictor.predict_records(files["astronaut"], show_au=True)
    assert len(records) == 1
    check_face_record(records[0], class_names(7), show_au=True)
    assert records[0]["image"] == str(files["astronaut"])
    # Same face, same numbers from an in-memory array (an 8-class model: contempt included).
    eight = Predictor(open_runner(files["ck8"]), detector=detector).predict_records([skimage_data.astronaut()])
    assert len(eight) == 1 and eight[0]["image"] == "<image 0>"
    check_face_record(eight[0], class_names(8), show_au=False)
    assert "aus" not in eight[0]
    assert predictor.timings["detection"] > 0 and predictor.timings["model"] > 0


def test_no_face_and_corrupt_file_in_a_folder_are_reported_and_the_rest_predicted(files, detector):
    before = snapshot(files["photos"])
    predictor = Predictor(open_runner(files["ck7"]), detector=detector)
    frame = predictor.predict(files["photos"], show_au=True)
    by_image = {Path(image).name: group for image, group in frame.groupby("image")}
    assert set(by_image) == {"astronaut.png", "gradient.png", "corrupt.jpg"}
    assert list(by_image["astronaut.png"]["status"]) == ["ok"]
    no_face = by_image["gradient.png"].iloc[0]
    error = by_image["corrupt.jpg"].iloc[0]
    assert no_face["status"] == "no_face" and error["status"] == "error" and "image" in error["reason"]
    for row in (no_face, error):  # nothing made up: every value missing
        assert pd.isna(row["face"]) and pd.isna(row["expression"]) and pd.isna(row["confidence"])
        assert row[["box_x1", *class_names(7), "AU06_left_eye", "region_left_eye_happiness"]].isna().all()
    assert snapshot(files["photos"]) == before  # the inputs are only read


def test_old_checkpoint_without_preprocessing_loads_and_predicts(files, detector, tmp_path):
    """A checkpoint written before the `preprocessing` key: derived from resolved and model_config."""
    torch.manual_seed(0)
    config = ModelConfig(input_size=64, num_classes=7)
    old = tmp_path / "old.pt"
    save_checkpoint(old, {"epoch": 1, "model": POIModel(config).state_dict(), "model_config": config.to_dict(),
                          "classes": list(class_names(7)), "config": {},
                          "resolved": {"store_size": 80, "grayscale": True}})
    assert "preprocessing" not in torch.load(old, weights_only=True)
    predictor = Predictor(open_runner(old), detector=detector)
    assert predictor.preprocessing == Preprocessing(face_size=80, input_size=64, grayscale=True)
    assert (predictor.face_size, predictor.input_size, predictor.grayscale) == (80, 64, True)
    (record,) = predictor.predict_records(files["small"], show_au=True)
    check_face_record(record, class_names(7), show_au=True)
    crop = predictor.preprocessing.face(Image.open(files["small"]).convert("RGB"), np.array(record["landmarks"]))
    assert crop.shape == (80, 80, 3) and (crop[..., 0] == crop[..., 2]).all()  # grey, at the store's size


def test_regions_table_drives_the_au_columns():
    columns = flat_columns(class_names(7), show_au=True)
    assert {"AU06_left_eye", "AU06_right_eye", "AU12_left_mouth", "AU12_right_mouth"} <= set(columns)
    au_columns = [c for c in columns if c.startswith("AU")]
    assert len(au_columns) == 2 * (len(EYE_AUS) + len(MOUTH_AUS))
    mouth_regions = [r.name for r in REGIONS if r.au_group == "mouth"]
    assert mouth_regions == ["left_mouth", "right_mouth"]
    assert not [c for c in au_columns if c.split("_", 1)[0] in EYE_AUS and c.split("_", 1)[1] in mouth_regions]
    assert not [c for c in au_columns if c.split("_", 1)[0] in MOUTH_AUS and c.split("_", 1)[1] not in mouth_regions]
    assert [f"region_{name}_happiness" for name in REGION_NAMES] == [c for c in columns if c.endswith("_happiness") and c.startswith("region_")]


def test_baseline_checkpoint_has_confidence_but_no_consistency_and_says_why(files, detector):
    predictor = Predictor(open_runner(files["baseline"]), detector=detector)
    assert any("no PIN" in note for note in predictor.notes)
    record = predictor.predict_records(files["small"], show_au=True)[0]
    assert record["status"] == "ok" and record["consistency"] is None
    assert record["regions_agree"] is None and record["pin_expression"] is None
    assert record["confidence"] == pytest.approx(max(record["probabilities"].values()), abs=1e-6)
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert all(p is None for regions in record["aus"].values() for p in regions.values())


def test_cli_json_and_csv_round_trip_through_pandas(files, tmp_path):
    result = runner.invoke(app, ["predict", str(files["photos"]), "--model", str(files["ck7"]), "--json", "--show-au"])
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    frame = pd.read_json(io.StringIO(result.stdout))
    assert {"image", "face", "box", "landmarks", "detection_score", "expression", "probabilities",
            "confidence", "consistency", "regions_agree", "pin_expression", "status", "aus"} <= set(frame.columns)
    assert sorted(frame["status"]) == ["error", "no_face", "ok"]
    assert "3 images: 1 face predicted, 1 image without a face, 1 error" in result.stderr

    csv_path = tmp_path / "out" / "faces.csv"
    result = runner.invoke(app, ["predict", str(files["photos"]), "--model", str(files["ck7"]), "--csv", str(csv_path), "--show-au"])
    assert result.exit_code == 0, result.stderr
    table = pd.read_csv(csv_path)
    assert {"AU06_left_eye", "AU06_right_eye", "AU12_left_mouth", "AU26_right_mouth", "happiness", "confidence"} <= set(table.columns)
    assert "AU06_left_mouth" not in table.columns  # AUs only for the regions that carry them
    # The CSV row of the face holds the numbers of the JSON record.
    face = records[[r["status"] for r in records].index("ok")]
    row = table[table["status"] == "ok"].iloc[0]
    assert row["confidence"] == pytest.approx(face["confidence"])
    assert row["consistency"] == pytest.approx(face["consistency"])
    assert (row["regions_agree"], row["pin_expression"]) == (face["regions_agree"], face["pin_expression"])
    assert row["AU12_right_mouth"] == pytest.approx(face["aus"]["AU12"]["right_mouth"])
    assert row[list(class_names(7))].tolist() == pytest.approx(list(face["probabilities"].values()))
    assert table[table["status"] != "ok"]["confidence"].isna().all()


def test_cli_single_bad_input_fails_with_one_line_and_save_vis_writes_pngs(files, tmp_path):
    result = runner.invoke(app, ["predict", str(files["corrupt"]), "--model", str(files["ck7"])])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
    assert len(errors) == 1 and "corrupt.jpg" in errors[0] and "Traceback" not in result.stderr

    vis = tmp_path / "vis"
    result = runner.invoke(app, ["predict", str(files["small"]), "--model", str(files["ck7"]), "--save-vis", str(vis), "--show-au"])
    assert result.exit_code == 0, result.stderr
    (png,) = vis.glob("*.png")
    picture = Image.open(png)
    assert picture.width > 256 + 400 and picture.height >= 256  # the photo plus the AU panel


def test_save_vis_numbers_around_a_users_file_and_replaces_its_own(files, tmp_path):
    """A photo of the user's at DIR/astronaut_poi.png stays (the picture goes to
    astronaut_poi2.png, with a note); a re-run replaces its own picture instead of adding
    astronaut_poi3.png (a user's file there was once written over)."""
    vis = tmp_path / "vis"
    vis.mkdir()
    shutil.copyfile(files["small"], vis / "astronaut_poi.png")  # a PNG, but not poi's
    kept = (vis / "astronaut_poi.png").read_bytes()
    argv = ["predict", str(files["small"]), "--model", str(files["ck7"]), "--save-vis", str(vis)]
    for _ in range(2):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.stderr
        assert "kept 1 file in" in result.stderr and "not write (e.g. astronaut_poi.png)" in " ".join(result.stderr.split())
    assert (vis / "astronaut_poi.png").read_bytes() == kept
    assert sorted(p.name for p in vis.iterdir()) == ["astronaut_poi.png", "astronaut_poi2.png"]
    assert Image.open(vis / "astronaut_poi2.png").info.get("Software") == "poi"


@pytest.mark.parametrize("inside", ["vis", "."])
def test_a_save_vis_folder_inside_the_input_folder_is_not_read_as_input(files, tmp_path, inside):
    """`poi predict album --save-vis album/vis`, twice: the second run predicted its own
    astronaut_poi.png and wrote astronaut_poi_poi.png; so did `--save-vis album` itself."""
    album = tmp_path / "album"
    album.mkdir()
    shutil.copyfile(files["small"], album / "astronaut.png")
    vis = album / inside
    argv = ["predict", str(album), "--model", str(files["ck7"]), "--save-vis", str(vis), "--json"]
    first = runner.invoke(app, argv)
    assert first.exit_code == 0, first.stderr
    again = runner.invoke(app, argv)
    assert again.exit_code == 0, again.stderr
    assert [r["image"] for r in json.loads(again.stdout)] == [str(album / "astronaut.png")]
    assert "1 file that poi wrote in --save-vis" in " ".join(again.stderr.split())
    assert sorted(p.name for p in vis.glob("*_poi*.png")) == ["astronaut_poi.png"]
    # a pattern poi expands leaves them out too
    pattern = runner.invoke(app, ["predict", f"{album}/**/*.png", "--model", str(files["ck7"]), "--save-vis", str(vis),
                                  "--json"])
    assert [r["image"] for r in json.loads(pattern.stdout)] == [str(album / "astronaut.png")], pattern.stderr
    # named itself, a picture poi wrote is read as any other file
    named = runner.invoke(app, ["predict", str(vis / "astronaut_poi.png"), "--model", str(files["ck7"]),
                                "--save-vis", str(vis), "--json"])
    assert [r["image"] for r in json.loads(named.stdout)] == [str(vis / "astronaut_poi.png")]


def test_a_photo_whose_picture_name_is_too_long_loses_its_picture_alone(files, tmp_path):
    # a 250-character name: its astronaut_poi.png name is over the 255 bytes a file name may have;
    # the error stopped the pictures of every photo after it
    album = tmp_path / "album"
    album.mkdir()
    shutil.copyfile(files["small"], album / ("a" * 250 + ".png"))
    shutil.copyfile(files["small"], album / "b.png")
    vis = tmp_path / "vis"
    result = runner.invoke(app, ["predict", str(album), "--model", str(files["ck7"]), "--save-vis", str(vis), "--json"])
    assert result.exit_code == 0, result.stderr
    assert [r["status"] for r in json.loads(result.stdout)] == ["ok", "ok"]
    assert sorted(p.name for p in vis.iterdir()) == ["b_poi.png"]
    assert "--save-vis: no picture of" in result.stderr and "--save-vis stopped" not in result.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no folder can be made")
def test_a_save_vis_folder_that_cannot_be_made_predicts_without_pictures(files):
    # the --save-vis claim made its folder first: its error stopped the run instead of the note
    result = runner.invoke(app, ["predict", str(files["small"]), "--model", str(files["ck7"]),
                                 "--save-vis", "/proc/poi-pictures", "--json"])
    assert result.exit_code == 0, result.stderr
    assert "--save-vis /proc/poi-pictures: no pictures, the folder cannot be made" in " ".join(result.stderr.split())
    assert [r["status"] for r in json.loads(result.stdout)] == ["ok"]


def test_cli_batch_where_everything_failed_exits_non_zero(files, tmp_path):
    result = runner.invoke(app, ["predict", str(files["corrupt"]), str(tmp_path / "missing.jpg"), "--model", str(files["ck7"]), "--json"])
    assert result.exit_code == 1
    assert [r["reason"] for r in json.loads(result.stdout)][1] == "file not found"


def test_model_resolution_order(files, tmp_path, monkeypatch):
    monkeypatch.delenv(predict_module.MODEL_ENV, raising=False)
    monkeypatch.setattr(predict_module, "BUNDLED_DIR", tmp_path / "weights")
    with pytest.raises(PredictError, match="no model: pass --model"):
        resolve_model(None)
    result = runner.invoke(app, ["predict", str(files["small"])])
    assert result.exit_code == 1 and "no model" in result.stderr and result.stderr.count("\n") == 1
    (tmp_path / "weights").mkdir()
    bundled = make_checkpoint(tmp_path / "weights" / "poi.pt")
    assert resolve_model(None) == resolve_model(None, ".pt") == bundled  # the only model: no .onnx beside it
    bundled_onnx = tmp_path / "weights" / "poi.onnx"
    bundled_onnx.write_bytes(b"")
    assert resolve_model(None) == bundled_onnx and resolve_model(None, ".pt") == bundled  # per backend
    monkeypatch.setenv(predict_module.MODEL_ENV, str(files["ck8"]))
    assert resolve_model(None) == files["ck8"]
    assert resolve_model(files["ck7"]) == files["ck7"]
    monkeypatch.setenv(predict_module.MODEL_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(PredictError, match="POI_MODEL"):
        resolve_model(None)


def test_expand_inputs_folders_globs_and_missing(files):
    items = expand_inputs([files["photos"], str(files["photos"] / "*.png"), "no/such/file.png", str(files["root"] / "*.gif")])
    sources = [Path(i.source).name for i in items]
    assert sources == ["astronaut.png", "corrupt.jpg", "gradient.png", "file.png", "*.gif"]  # astronaut once
    assert [i.error for i in items][-2:] == ["file not found", "pattern matched no image or video files"]


def test_probabilities_are_calibrated_by_the_checkpoints_temperature(files, detector, tmp_path):
    """softmax(z / T_cal): p_cal is proportional to p_raw ** (1 / T_cal); the expression is unchanged."""
    from poi_cli.model.calibration import Calibration
    from poi_cli.model.checkpoint import load_checkpoint, save_checkpoint

    raw_predictor = Predictor(open_runner(files["ck7"]), detector=detector)
    assert any("uncalibrated model (T_cal = 1)" in note for note in raw_predictor.notes)
    raw = raw_predictor.predict_records(files["small"])[0]
    checkpoint = load_checkpoint(files["ck7"])
    checkpoint["calibration"] = Calibration(temperature=2.0, split="valid", n_images=10, nll_before=1.0, nll_after=0.9).to_dict()
    calibrated_path = tmp_path / "calibrated.pt"
    save_checkpoint(calibrated_path, checkpoint)
    predictor = Predictor(open_runner(calibrated_path), detector=detector)
    assert not any("uncalibrated" in note for note in predictor.notes)
    calibrated = predictor.predict_records(files["small"])[0]
    powered = np.array(list(raw["probabilities"].values())) ** 0.5
    assert list(calibrated["probabilities"].values()) == pytest.approx(list(powered / powered.sum()), abs=2e-5)
    assert calibrated["expression"] == raw["expression"] and calibrated["consistency"] == raw["consistency"]
    assert (calibrated["regions_agree"], calibrated["pin_expression"]) == (raw["regions_agree"], raw["pin_expression"])
    assert calibrated["confidence"] < raw["confidence"]  # T_cal > 1 softens an over-confident model
    assert not any("clipped" in note for note in predictor.notes)

    # a T_cal clipped at its range's edge: evaluate said "confidence means little", predict nothing
    checkpoint["calibration"] = Calibration(temperature=20.0, split="valid", n_images=500, nll_before=24.2,
                                            nll_after=5.64).to_dict()
    save_checkpoint(tmp_path / "clipped.pt", checkpoint)
    clipped = Predictor(open_runner(tmp_path / "clipped.pt"), detector=detector)
    assert any("T_cal 20 is clipped at the edge" in note and "confidence means little" in note for note in clipped.notes)
