"""The deploy runtime (`pip install poi-fer`): prediction with ONNX Runtime and no torch.

Marked `deploy`: `make test` runs this file again in .venv-deploy, the base install, where
torch is not installed; the tests that compare with torch skip there. The subprocess
tests block torch with an import hook, so they mean the same in either environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from poi_cli.core.manifests import class_names
from poi_cli.data.faces import load_image
from poi_cli.deploy.predict import Predictor, bundled_model
from poi_cli.deploy.runner import ModelFileError, OnnxRunner, softmax

pytestmark = pytest.mark.deploy
ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
# Run poi's CLI with torch (and the torch detector's package) made unimportable.
NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "facenet_pytorch"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["poi"] + sys.argv[1:]
from poi_cli.cli import run
try:
    run()
finally:
    assert "torch" not in sys.modules
"""


def poi_without_torch(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "POI_THREADS": "1", "COLUMNS": "120", "PYTHONPATH": str(ROOT),
                               **(env or {})})


def test_predict_runs_without_torch():
    done = poi_without_torch("predict", str(ASTRONAUT), "--show-au", "--json")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert len(records) == 1 and records[0]["status"] == "ok"
    assert records[0]["expression"] == "happiness" and records[0]["detector"] == "mtcnn"
    assert records[0]["aus"]["AU12"]["left_mouth"] > 0.5  # a smile: lip corner puller
    assert "Traceback" not in done.stderr


def test_serve_answers_an_upload_without_torch():
    """The deploy tests never posted an image: on Python 3.10 every upload was a 500
    (asyncio.timeout is 3.11+), and a deploy install on 3.10 passed them all."""
    import socket
    import urllib.request

    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", NO_TORCH, "serve", "--port", str(port), "--threads", "1"], cwd=ROOT,
                              env={"PATH": "/usr/bin:/bin", "POI_THREADS": "1", "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):  # the model loads in a second or two
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.1)
        boundary = "poi-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"astronaut.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode() + ASTRONAUT.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            answer = json.loads(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [(r["image"], r["status"], r["expression"]) for r in answer] == [("astronaut.jpg", "ok", "happiness")]


def test_predict_in_a_terminal_draws_its_progress_bar():
    # stderr a terminal (rich reads TTY_COMPATIBLE as one): the bar is drawn, in images per second;
    # a pipe, as in every other test, never draws it
    done = poi_without_torch("predict", str(ASTRONAUT), "--json", env={"TTY_COMPATIBLE": "1"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "images/s" in done.stderr
    assert [r["expression"] for r in json.loads(done.stdout)] == ["happiness"]


def test_commands_of_the_train_extra_say_so_in_one_line():
    for args in (["train", "x"], ["evaluate", "a", "b"], ["predict", str(ASTRONAUT), "--backend", "torch"],
                 ["predict", str(ASTRONAUT), "--model", str(ROOT / "poi_cli/weights/poi_ferplus8_resnet10_96.fp16.pt")]):
        done = poi_without_torch(*args)
        assert done.returncode == 1, args
        assert "Traceback" not in done.stderr and "pip install 'poi-fer[train]'" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = poi_without_torch("predict", str(ASTRONAUT), "--detector", "mtcnn-torch")  # the torch detector
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pip install --no-deps facenet-pytorch==2.6.0" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_folder_without_a_model_says_what_was_looked_for_not_that_it_needs_torch(tmp_path):
    """It said the empty folder "is a PyTorch checkpoint or run folder: running it needs torch"."""
    from poi_cli.deploy.predict import PredictError

    (tmp_path / "notes.txt").write_text("no model here\n")
    for env in ({}, {"POI_MODEL": str(tmp_path)}):
        done = poi_without_torch("predict", str(ASTRONAUT), *([] if env else ["--model", str(tmp_path)]), env=env)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"{tmp_path} holds no model: looked for best.pt and last.pt" in done.stderr, done.stderr
        assert "needs torch" not in done.stderr and "pip install" not in done.stderr
    with pytest.raises(PredictError, match="holds no model: looked for best.pt and last.pt"):
        Predictor(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"PK")  # a run folder after its first epoch: torch reads it
    assert "needs torch" in poi_without_torch("predict", str(ASTRONAUT), "--model", str(tmp_path)).stderr


def test_help_marks_the_commands_of_the_train_extra_and_says_where_the_docs_are():
    """`poi --help` listed every command alike in the deploy install, and sent readers to
    docs/predict.md and docs/serve.md, which are not installed."""
    import re

    import typer

    from poi_cli.cli import app

    done = poi_without_torch("--help", env={"COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    rows = dict(m.groups() for m in (re.match(r"^│ ([a-z][a-z-]*) {2,}(.*?) *│$", line) for line in done.stdout.splitlines()) if m)
    assert set(rows) == set(typer.main.get_command(app).commands)
    for name, help_text in rows.items():
        assert help_text.endswith("(needs poi-fer[train])") == (name not in ("predict", "serve")), (name, help_text)
    assert "see docs/predict.md in the source repository." in rows["predict"]
    assert "see docs/serve.md in the source repository." in rows["serve"]
    done = poi_without_torch("train", "--help", env={"COLUMNS": "400"})
    assert done.returncode == 0 and "Needs the train extra, which is not installed: pip install 'poi-fer[train]'" in done.stdout


def test_bundled_onnx_model_carries_what_prediction_needs():
    runner = OnnxRunner(bundled_model(), threads=1)
    assert runner.classes == tuple(class_names(8))
    assert runner.preprocessing.face_size == runner.preprocessing.input_size == 96
    assert not runner.preprocessing.grayscale  # v2 (issue 25): FERPlus grey and SFEW colour faces, a colour model
    assert runner.calibrated and 1.0 < runner.calibration_temperature < 3.0
    assert runner.has_pin and runner.has_aus
    faces = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    out = runner.run(faces)
    assert out.probabilities.shape == (3, 8) and np.allclose(out.probabilities.sum(-1), 1, atol=1e-5)
    assert out.eye_aus.shape == (3, 2, 6) and out.mouth_aus.shape == (3, 2, 7)
    assert out.region_probabilities.shape == (3, 4, 8) and ((0 <= out.consistency) & (out.consistency <= 1)).all()
    assert out.pin_probabilities.shape == (3, 8) and np.allclose(out.pin_probabilities.sum(-1), 1, atol=1e-5)


def test_a_file_that_is_not_a_poi_model_is_one_line(tmp_path):
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load it"):
        OnnxRunner(garbage)
    with pytest.raises(ModelFileError, match="not found"):
        OnnxRunner(tmp_path / "missing.onnx")


def test_softmax_divides_by_the_temperature():
    # softmax([ln 1, ln 3] / T) at T = 1 is [1/4, 3/4]; at T = 2 it is [1, sqrt 3] / (1 + sqrt 3)
    logits = np.log(np.array([[1.0, 3.0]]))
    assert np.allclose(softmax(logits), [[0.25, 0.75]])
    assert np.allclose(softmax(logits, 2.0), [[1 / (1 + 3 ** 0.5), 3 ** 0.5 / (1 + 3 ** 0.5)]])


def test_predictor_refuses_a_checkpoint_with_the_two_ways_to_run_it():
    from poi_cli.deploy.predict import PredictError

    with pytest.raises(PredictError, match="poi export .* --format onnx --full"):
        Predictor(ROOT / "poi_cli/weights/poi_ferplus8_resnet10_96.fp16.pt")


# ----------------------------------------------------------- parity with the torch path


def test_numpy_preprocessing_matches_torch_including_a_resize():
    torch = pytest.importorskip("torch")
    from poi_cli.data.preprocess import model_input_array, to_model_input

    faces = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    for size in (112, 96, 64, 160):
        expected = to_model_input(torch.from_numpy(faces), size).numpy()
        assert np.abs(model_input_array(faces, size) - expected).max() < 1e-4, size


def test_onnx_and_torch_runners_agree_on_a_real_aligned_face():
    pytest.importorskip("torch")
    from poi_cli.model.runner import TorchRunner

    checkpoint = ROOT / "poi_cli/weights/poi_ferplus8_resnet10_96.fp16.pt"
    onnx_runner, torch_runner = OnnxRunner(bundled_model(), threads=1), TorchRunner(checkpoint)
    image = load_image(ASTRONAUT)
    face = Predictor(onnx_runner, threads=1).detector.detect([image])[0][0]
    crop = onnx_runner.preprocessing.face(image, face.landmarks)
    faces = np.stack([crop, crop[:, ::-1]])
    a, b = onnx_runner.run(faces), torch_runner.run(faces)
    for name in ("probabilities", "consistency", "eye_aus", "mouth_aus", "region_probabilities", "pin_probabilities"):
        assert np.abs(getattr(a, name) - getattr(b, name)).max() < 1e-4, name
    assert onnx_runner.classes == torch_runner.classes and onnx_runner.recipe == torch_runner.recipe
    assert onnx_runner.preprocessing == torch_runner.preprocessing
    assert abs(onnx_runner.calibration_temperature - torch_runner.calibration_temperature) < 1e-9


def test_fp16_weights_export_keeps_the_checkpoint_numbers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from poi_cli.model.export import export_model

    checkpoint = ROOT / "poi_cli/weights/poi_ferplus8_resnet10_96.fp16.pt"
    half = export_model(checkpoint, "onnx", full=True, out=tmp_path / "half.onnx", fp16_weights=True)
    assert half.max_diff < 1e-5  # batch norms kept apart: no product rounded to fp16
    assert half.path.stat().st_size < 0.55 * (16.5e6 * 2)  # about half of the float32 file


# ------------------------------------------------------------------- records and runs


def test_face_record_json_and_row_forms():
    from poi_cli.deploy.records import FaceRecord, Smoothed, VideoPosition, flat_columns

    classes = ("happiness", "neutral")
    empty = FaceRecord.empty("a.jpg", "no_face", "no face detected", show_au=True, detector="mtcnn")
    assert list(empty.to_dict()) == ["image", "face", "status", "reason", "box", "landmarks", "detection_score",
                                     "detector", "expression", "probabilities", "confidence", "consistency",
                                     "regions_agree", "pin_expression", "aus", "regions"]
    assert empty.to_dict()["aus"] is None and not empty.is_face
    on_frame = empty.on_frame(VideoPosition(7, 0.28, None), Smoothed())
    as_dict = on_frame.to_dict()
    assert list(as_dict)[:4] == ["image", "frame", "timestamp", "track"] and list(as_dict)[-1] == "smoothed"
    assert as_dict["smoothed"] == {"expression": None, "probabilities": None}
    row = on_frame.to_row(classes)
    columns = flat_columns(classes, show_au=True, video=True, smoothed=True)
    assert set(columns) <= set(row) and row["frame"] == 7 and row["happiness"] is None
    assert "aus" not in FaceRecord.empty("a.jpg", "error", "broken").to_dict()  # no --show-au: no AU keys


def test_a_probability_is_never_shown_rounded_to_a_certainty_the_model_does_not_claim():
    """0.999989 printed as 100.0% in the table and 100% in --save-vis pictures."""
    from poi_cli.deploy.records import shown_percent

    assert [shown_percent(p) for p in (0.999989, 0.99949, 1.0, 0.961, 0.00001, 0.0)] == [
        ">99.9%", "99.9%", "100.0%", "96.1%", "<0.1%", "0.0%"]
    assert [shown_percent(p, decimals=0) for p in (0.996, 0.994, 1.0, 0.004)] == [">99%", "99%", "100%", "<1%"]


def test_a_face_answered_with_non_finite_probabilities_is_an_error_not_the_first_class():
    """A broken model's NaN answers: argmax would say the first class with a NaN confidence (and
    --json would print bare NaN, which is not JSON); the face is an error record instead."""
    import json

    from poi_cli.data.faces import Face
    from poi_cli.deploy.records import FaceRecord

    face = Face(box=np.array([0.0, 0.0, 10.0, 10.0]), landmarks=None, score=None)
    record = FaceRecord.of_face("a.jpg", 0, face, ("happiness", "neutral"), np.array([np.nan, np.nan]), 0.5)
    assert record.status == "error" and "not finite" in record.reason and record.expression is None
    json.dumps(record.to_dict(), allow_nan=False)  # valid JSON: no bare NaN


def test_a_face_records_aus_and_regions_are_image_left_and_image_right():
    """The model's AU outputs are (B, 2, M) with [image-left, image-right] regions and its region
    distributions (B, 4, C) in crop order left_eye, right_eye, left_mouth, right_mouth
    (data_manifests/regions.json): the record names each value by its own region."""
    from poi_cli.core.manifests import EYE_AUS, MOUTH_AUS
    from poi_cli.data.faces import Face
    from poi_cli.deploy.records import FaceRecord

    classes = ("happiness", "neutral")
    face = Face(box=np.array([0.0, 0.0, 10.0, 10.0]), landmarks=None, score=None)
    eye = np.array([[0.11] * len(EYE_AUS), [0.91] * len(EYE_AUS)])  # image-left 0.11, image-right 0.91
    mouth = np.array([[0.22] * len(MOUTH_AUS), [0.82] * len(MOUTH_AUS)])
    eye[0, EYE_AUS.index("AU06")], mouth[1, MOUTH_AUS.index("AU12")] = 0.6, 0.7
    regions = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    record = FaceRecord.of_face("a.jpg", 0, face, classes, np.array([0.8, 0.2]), 0.9, eye_aus=eye, mouth_aus=mouth,
                                region_probs=regions, show_au=True)
    assert record.aus["AU06"] == {"left_eye": 0.6, "right_eye": 0.91}
    assert record.aus["AU12"] == {"left_mouth": 0.22, "right_mouth": 0.7}
    assert record.aus["AU01"] == {"left_eye": 0.11, "right_eye": 0.91}
    assert {name: values["happiness"] for name, values in record.regions.items()} == {
        "left_eye": 0.9, "right_eye": 0.8, "left_mouth": 0.7, "right_mouth": 0.6}


def test_a_face_record_counts_the_regions_that_agree_and_names_the_pins_expression(tmp_path):
    import csv

    from poi_cli.data.faces import Face
    from poi_cli.deploy.records import FaceRecord, write_predictions_csv

    classes = ("happiness", "neutral", "sadness")
    face = Face(box=np.array([0.0, 0.0, 10.0, 10.0]), landmarks=None, score=None)
    regions = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4]])  # own: h, h, n, h
    record = FaceRecord.of_face("a.jpg", 0, face, classes, np.array([0.8, 0.15, 0.05]), 0.9, region_probs=regions,
                                pin_probs=np.array([0.2, 0.3, 0.5]))
    assert (record.expression, record.regions_agree, record.pin_expression) == ("happiness", 3, "sadness")
    as_dict = record.to_dict()
    assert as_dict["regions_agree"] == 3 and as_dict["pin_expression"] == "sadness" and as_dict["consistency"] == 0.9
    baseline = FaceRecord.of_face("b.jpg", 0, face, classes, np.array([0.1, 0.8, 0.1]), None)
    assert baseline.regions_agree is None and baseline.pin_expression is None
    path = write_predictions_csv([record, baseline], classes, tmp_path / "out.csv")
    rows = list(csv.DictReader(open(path)))
    assert [(r["regions_agree"], r["pin_expression"]) for r in rows] == [("3", "sadness"), ("", "")]
    header = next(csv.reader(open(path)))
    assert header[header.index("consistency") + 1:header.index("consistency") + 3] == ["regions_agree", "pin_expression"]
    pytest.importorskip("pandas")
    from poi_cli.deploy.records import records_to_frame

    frame = records_to_frame([record, baseline], classes)
    assert str(frame["regions_agree"].dtype) == "Int64" and frame["regions_agree"].tolist()[0] == 3
    assert frame["pin_expression"].tolist()[0] == "sadness"


def test_an_onnx_file_exported_before_pin_probabilities_still_predicts(tmp_path):
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from conftest import tiny_model, write_checkpoint
    from poi_cli.core.outputs import PredictionRecipe
    from poi_cli.model.export import export_model

    exported = export_model(write_checkpoint(tmp_path / "best.pt", tiny_model()), "onnx", full=True,
                            out=tmp_path / "new.onnx")
    proto = onnx.load(str(exported.path))  # as poi wrote it before: no pin_probabilities output, no recipe
    kept = [o for o in proto.graph.output if o.name != "pin_probabilities"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    props = [p for p in proto.metadata_props if p.key != "recipe"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    runner = OnnxRunner(tmp_path / "old.onnx", threads=1)
    assert runner.recipe == PredictionRecipe() and runner.has_pin
    faces = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert runner.run(faces).pin_probabilities is None
    old_predictor = Predictor(runner, detect=False, threads=1)
    record = old_predictor.predict_records([ASTRONAUT])[0]
    assert record["pin_expression"] is None and 0 <= record["regions_agree"] <= 4
    assert any("pin_expression is null" in note for note in old_predictor.notes)  # it was null without a word
    new_predictor = Predictor(OnnxRunner(exported.path, threads=1), detect=False, threads=1)
    new = new_predictor.predict_records([ASTRONAUT])[0]
    assert new["pin_expression"] in class_names(7) and new["regions_agree"] == record["regions_agree"]
    assert not any("pin_expression" in note for note in new_predictor.notes)
    from poi_cli.model.runner import TorchRunner

    no_oim = TorchRunner(write_checkpoint(tmp_path / "no_oim.pt", tiny_model(use_oim=False)))
    assert any("--no-oim" in note for note in Predictor(no_oim, detect=False, threads=1).notes)


def test_predict_files_writes_the_csv_of_what_finished_when_interrupted(tmp_path, monkeypatch):
    import csv

    from poi_cli.deploy.pipeline import expand_inputs
    from poi_cli.deploy.predict import predict_files

    predictor = Predictor(threads=1, workers=0, images_per_batch=1)
    original = predictor.iter_predictions

    def stopped_after_one(*args, **kwargs):
        for number, prediction in enumerate(original(*args, **kwargs)):
            if number == 1:
                raise KeyboardInterrupt
            yield prediction

    monkeypatch.setattr(predictor, "iter_predictions", stopped_after_one)
    missing = tmp_path / "missing.jpg"
    run = predict_files(predictor, expand_inputs([ASTRONAUT, missing, ASTRONAUT.parent]), csv_file=tmp_path / "out.csv",
                        progress=False)
    assert run.interrupted and run.inputs == 1 and run.counts["ok"] == 1
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["expression"] == "happiness"


def test_predict_files_appends_each_row_as_it_comes_and_a_run_with_none_keeps_the_earlier_csv(tmp_path, monkeypatch):
    """A SIGKILL gives no chance to write at the end: the rows of what finished are on disk
    before the next input is read (whole lines), and the CSV is not opened before a row."""
    import csv

    from poi_cli.deploy.pipeline import expand_inputs
    from poi_cli.deploy.predict import predict_files

    predictor = Predictor(threads=1, workers=0, images_per_batch=1)
    original = predictor.iter_predictions
    out = tmp_path / "out.csv"
    on_disk = []

    def watched(*args, **kwargs):
        for prediction in original(*args, **kwargs):
            yield prediction
            on_disk.append(out.read_text())  # the caller has handled `prediction`: the kill could land here

    monkeypatch.setattr(predictor, "iter_predictions", watched)
    run = predict_files(predictor, expand_inputs([ASTRONAUT, tmp_path / "missing.jpg"]), csv_file=out, progress=False)
    assert not run.interrupted and len(on_disk) == 2
    first = list(csv.DictReader(on_disk[0].splitlines()))
    assert [r["status"] for r in first] == ["ok"] and on_disk[0].endswith("\n")
    assert [r["status"] for r in csv.DictReader(open(out))] == ["ok", "error"]

    def interrupted_at_once(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(predictor, "iter_predictions", interrupted_at_once)
    run = predict_files(predictor, expand_inputs([ASTRONAUT]), csv_file=out, progress=False)
    assert run.interrupted and [r["status"] for r in csv.DictReader(open(out))] == ["ok", "error"]  # as it was


def test_an_interrupted_run_says_a_video_it_stopped_in_was_kept_only_in_part():
    from poi_cli.deploy.predict import PredictRun

    run = PredictRun(statuses={"a.jpg": {"ok"}, "clip.mp4": {"ok", "no_face"}}, videos={"clip.mp4"})
    assert run.kept == "1 input and the frames of clip.mp4 read before the stop"
    assert PredictRun(statuses={"clip.mp4": {"ok"}, "a.jpg": {"ok"}}, videos={"clip.mp4"}).kept == "2 inputs"
    assert PredictRun(statuses={"clip.mp4": {"ok"}}, videos={"clip.mp4"}).kept == "the frames of clip.mp4 read before the stop"


def test_predict_refuses_a_csv_that_is_a_folder(tmp_path):
    done = poi_without_torch("predict", str(ASTRONAUT), "--csv", str(tmp_path))
    assert done.returncode == 1 and "is a folder" in done.stderr and "Traceback" not in done.stderr


def test_every_shipped_weight_file_has_its_origin_licence_and_checksum_recorded():
    import hashlib

    weights = ROOT / "poi_cli" / "weights"
    entries = json.loads((ROOT / "data_manifests" / "weights.json").read_text())["files"]
    shipped = {p.relative_to(weights).as_posix(): p for p in weights.rglob("*") if p.suffix in (".onnx", ".pt")}
    assert set(shipped) == set(entries)
    for name, path in shipped.items():
        assert entries[name]["licence"] and entries[name]["source"] and entries[name]["made_by"], name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entries[name]["sha256"], name


def test_the_packages_licence_metadata_covers_the_research_only_weights_it_ships():
    """The wheel said `License-Expression: MIT` for everything, while weights.json says the bundled
    expression model's weights are for research only (their training data is)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT AND LicenseRef-poi-weights"
    assert project["license-files"] == ["LICENSE", "LICENSE-WEIGHTS"]
    text = (ROOT / "LICENSE-WEIGHTS").read_text()
    assert text.startswith("LicenseRef-poi-weights") and "research only" in text
    covered, not_covered = text.split("Not covered")
    entries = json.loads((ROOT / "data_manifests" / "weights.json").read_text())["files"]
    for name, entry in entries.items():
        mit = entry["licence"].startswith("MIT")
        assert (f"poi_cli/weights/{name}" in covered) != mit, name  # each research-only file named, no MIT one
        if mit:
            assert Path(name).name in not_covered, name
        else:
            assert "research only" in entry["licence"] or entry["licence"].startswith("as "), name
    terms = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| Terms |"))
    assert "research only" in terms and "LICENSE-WEIGHTS" in terms and "MIT AND LicenseRef-poi-weights" in terms


def test_the_docker_build_leaves_out_everything_git_ignores():
    """`docker build` copied the prepared datasets (research-only, gigabytes: README's commands
    write them under prepared/) and .venv-deploy into the image: .dockerignore named five entries."""
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert ".git" in ignored
    for entry in (ROOT / ".gitignore").read_text().splitlines():
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        name = entry.strip("/")
        assert name in ignored or f"**/{name}" in ignored, entry  # Docker's patterns start at the top; ** at any depth


def test_a_trn_only_export_is_calibrated_by_the_runner_as_torch_does(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from conftest import tiny_model, write_checkpoint
    from poi_cli.model.calibration import Calibration
    from poi_cli.model.export import export_model
    from poi_cli.model.runner import TorchRunner

    checkpoint = write_checkpoint(tmp_path / "best.pt", tiny_model(), calibration=Calibration(2.5, "valid", 10, 1.0, 0.9))
    exported = export_model(checkpoint, "onnx", full=False, out=tmp_path / "trn.onnx")
    runner = OnnxRunner(exported.path, threads=1)
    assert not runner.has_pin and runner.calibration_temperature == 2.5
    faces = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    expected = TorchRunner(checkpoint).run(faces).probabilities  # softmax(z / T_cal)
    assert np.abs(runner.run(faces).probabilities - expected).max() < 1e-5
    records = Predictor(runner, detect=False, threads=1).predict_records([ASTRONAUT])
    assert records[0]["consistency"] is None and records[0]["detector"] == "none"


def test_a_folders_broken_links_loops_and_fifos_get_an_error_record_each(tmp_path):
    import os
    import shutil

    folder = tmp_path / "album"
    folder.mkdir()
    shutil.copyfile(ASTRONAUT, folder / "a.jpg")
    (folder / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    os.mkfifo(folder / "pipe.jpg")
    done = poi_without_torch("predict", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    statuses = {Path(r["image"]).name: (r["status"], r["reason"]) for r in json.loads(done.stdout)}
    assert statuses["a.jpg"][0] == "ok" and set(statuses) == {"a.jpg", "broken.jpg", "loop.png", "pipe.jpg"}
    assert statuses["broken.jpg"] == ("error", "broken symlink (its target is missing)")
    assert statuses["pipe.jpg"] == ("error", "not a regular file")
    assert statuses["loop.png"] == ("error", "symlink loop (the link leads back to itself)")


def test_a_file_given_twice_is_predicted_once_and_said(tmp_path):
    """A link to a photo of the folder, and the photo named again: one row, and a note (the
    other names had no row and no word)."""
    import shutil

    folder = tmp_path / "album"
    folder.mkdir()
    shutil.copyfile(ASTRONAUT, folder / "a.jpg")
    (folder / "b.jpg").symlink_to(folder / "a.jpg")
    done = poi_without_torch("predict", str(folder), str(folder / "a.jpg"), "--json")
    assert done.returncode == 0, done.stderr
    assert [Path(r["image"]).name for r in json.loads(done.stdout)] == ["a.jpg"]
    said = " ".join(done.stderr.split())
    assert f"2 names (given twice, or found in a folder) reach a file already read (e.g. {folder / 'b.jpg'}: a link" in said


def test_save_vis_that_cannot_be_written_stops_the_pictures_not_the_predictions(tmp_path, monkeypatch):
    import csv

    from poi_cli.deploy import visualize
    from poi_cli.deploy.pipeline import expand_inputs
    from poi_cli.deploy.predict import predict_files

    def refuse(self, prediction):
        raise PermissionError(13, "Permission denied", str(tmp_path / "vis" / "a_poi.png"))

    monkeypatch.setattr(visualize.VisWriter, "write", refuse)  # a read-only folder (root ignores chmod)
    notes: list[str] = []
    run = predict_files(Predictor(threads=1, workers=0), expand_inputs([ASTRONAUT, ASTRONAUT.parent]),
                        csv_file=tmp_path / "out.csv", save_vis=tmp_path / "vis", progress=False, note=notes.append)
    assert not run.interrupted and run.counts["ok"] == 1 and run.pictures_in is None  # no picture: no "pictures in"
    assert len(notes) == 1 and "--save-vis stopped" in notes[0] and "Permission denied" in notes[0]
    assert [r["status"] for r in csv.DictReader(open(tmp_path / "out.csv"))] == ["ok"]


def test_save_vis_onto_a_file_is_refused_before_the_work(tmp_path):
    """As an --out that names a file where a folder should be (it predicted everything and said
    "no pictures" at the end)."""
    taken = tmp_path / "vis"
    taken.write_text("the user's file\n")
    for folder in (taken, taken / "sub"):  # the file itself, or a file above the folder
        done = poi_without_torch("predict", str(ASTRONAUT), "--save-vis", str(folder), env={"COLUMNS": "300"})
        assert done.returncode == 1 and done.stderr.strip() == f"error: --save-vis {folder}: {taken} is a file, not a " \
                                                               "folder: give a folder for the pictures", done.stderr
    assert taken.read_text() == "the user's file\n"


def test_an_array_that_is_no_image_gets_an_error_record_and_the_batch_goes_on():
    face = np.asarray(load_image(ASTRONAUT))
    records = Predictor(threads=1, workers=0).predict_records([face.astype(np.float32), face, np.zeros((0, 4, 3), np.uint8)])
    assert [r["status"] for r in records] == ["error", "ok", "error"]
    assert "uint8" in records[0]["reason"] and "float32" in records[0]["reason"] and records[0]["image"] == "<image 0>"
    assert records[1]["expression"] == "happiness"


def test_a_csv_onto_a_named_pipe_is_written_into_not_replaced(tmp_path):
    """`--csv` onto a FIFO (or /dev/stdout, /dev/null): the rows go into it. It used to be
    replaced by a regular file (as root, /dev/null too), leaving its reader waiting."""
    import os
    import stat
    import threading

    import numpy as np

    from poi_cli.data.video import write_video

    (tmp_path / "clips").mkdir()
    clip = write_video(tmp_path / "clips" / "grey.mp4", [np.full((48, 64, 3), 90, np.uint8)] * 3, 5)
    pipe = tmp_path / "rows.csv"
    os.mkfifo(pipe)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()), daemon=True)
    reader.start()
    done = poi_without_torch("predict", str(ASTRONAUT), str(clip), "--csv", str(pipe))
    reader.join(timeout=30)
    assert done.returncode == 0, done.stderr
    # no rows.csv.summary.json beside the pipe (as none goes to /dev/stdout.summary.json)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["clips", "rows.csv"]
    assert received and received[0].startswith("image,") and ",happiness," in received[0]
    # onto stdout, the rows are all stdout holds: the summary line goes to stderr
    done = poi_without_torch("predict", str(ASTRONAUT), "--csv", "/dev/stdout")
    assert done.returncode == 0 and done.stdout.startswith("image,") and len(done.stdout.splitlines()) == 2, done.stdout
    assert "1 image" in done.stderr


def test_a_csv_named_by_a_symlink_replaces_the_link_as_every_output_does(tmp_path):
    from poi_cli.deploy.records import FaceRecord, write_predictions_csv

    target = tmp_path / "elsewhere.csv"
    target.write_text("a table of yours\n")
    link = tmp_path / "rows.csv"
    link.symlink_to(target)
    write_predictions_csv([FaceRecord.empty("a.jpg", "no_face", None, False)], ("happiness",), link)
    assert not link.is_symlink() and link.read_text().startswith("image,") and target.read_text() == "a table of yours\n"


def test_file_names_with_brackets_are_printed_as_they_are(tmp_path):
    """rich read `[edited]` in a file name as markup (the table showed `photo .jpg`, the summary
    `wrote rows .csv`), and `x[/b]` stopped predict with a MarkupError traceback."""
    import shutil

    (tmp_path / "x[").mkdir()
    photos = [tmp_path / "photo [edited].jpg", tmp_path / "x[" / "b].jpg"]
    for photo in photos:
        shutil.copyfile(ASTRONAUT, photo)
    done = poi_without_torch("predict", *map(str, photos), env={"COLUMNS": "200"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "photo [edited].jpg" in done.stdout and "b].jpg" in done.stdout
    out = tmp_path / "rows [v2].csv"
    done = poi_without_torch("predict", str(photos[0]), "--csv", str(out), env={"COLUMNS": "300"})
    assert done.returncode == 0 and f"wrote {out}" in done.stdout.replace("\n", ""), done.stdout


def test_an_output_encoding_that_cannot_show_a_name_is_one_line(tmp_path):
    """PYTHONIOENCODING=ascii (or a C locale) and a photo named é.jpg: a UnicodeEncodeError traceback."""
    import shutil

    photo = tmp_path / "\u00e9.jpg"
    shutil.copyfile(ASTRONAUT, photo)
    done = poi_without_torch("predict", str(photo), env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: stopped: the output's encoding (ascii) cannot show")


def test_a_write_protected_csv_is_refused_before_the_work(tmp_path):
    out = tmp_path / "out.csv"
    assert poi_without_torch("predict", str(ASTRONAUT), "--csv", str(out)).returncode == 0
    before = out.read_bytes()
    out.chmod(0o444)  # it was replaced (a new file, mode 0644)
    done = poi_without_torch("predict", str(ASTRONAUT), "--csv", str(out))
    assert done.returncode == 1 and "is write-protected" in done.stderr and out.read_bytes() == before
    assert out.stat().st_mode & 0o777 == 0o444


def test_a_file_name_that_is_not_utf8_is_written_with_backslash_escapes_and_the_batch_goes_on(tmp_path):
    """The CSV's UTF-8 encoder stopped the whole batch at such a name (an earlier CSV wiped), and
    --json printed a lone surrogate that strict JSON parsers reject."""
    import csv
    import os
    import shutil

    folder = tmp_path / "album"
    folder.mkdir()
    odd = os.fsdecode(bytes(folder) + b"/a\xff.jpg")
    shutil.copyfile(ASTRONAUT, odd)
    out = tmp_path / "out.csv"
    done = poi_without_torch("predict", odd, str(ASTRONAUT), "--csv", str(out), "--workers", "0")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [(Path(r["image"]).name, r["status"]) for r in rows] == [("a\\xff.jpg", "ok"), ("astronaut.jpg", "ok")]
    done = poi_without_torch("predict", odd, "--json")
    assert json.loads(done.stdout)[0]["image"].endswith("/a\\xff.jpg") and "\\udcff" not in done.stdout


def test_inputs_that_cannot_be_checked_or_listed_are_error_records(tmp_path, monkeypatch):
    """A name too long for the file system, an empty name (Path("") is the current folder) and a
    folder that cannot be listed each get an error record; the other inputs are predicted."""
    import shutil

    album = tmp_path / "album"
    (album / "locked").mkdir(parents=True)
    shutil.copyfile(ASTRONAUT, album / "a.jpg")
    shutil.copyfile(ASTRONAUT, album / "locked" / "b.jpg")
    from conftest import refuse_to_list

    refuse_to_list(monkeypatch, "locked")
    monkeypatch.chdir(album)  # an empty name must not mean this folder
    records = Predictor(threads=1, workers=0).predict_records(["x" * 300 + ".jpg", "", str(album)])
    by_image = {r["image"]: (r["status"], r["reason"]) for r in records}
    assert by_image["x" * 300 + ".jpg"][0] == "error" and "File name too long" in by_image["x" * 300 + ".jpg"][1]
    assert by_image["''"] == ("error", "an empty name (give a file, a folder or a pattern)")
    assert by_image[str(album / "locked")][0] == "error" and "Permission denied" in by_image[str(album / "locked")][1]
    assert by_image[str(album / "a.jpg")][0] == "ok" and len(records) == 4


def test_a_generator_of_inputs_loses_none_and_a_bad_image_object_is_an_error_record(tmp_path):
    from PIL import Image

    closed = Image.open(ASTRONAUT)
    closed.close()
    predictor = Predictor(threads=1, workers=0)
    records = predictor.predict_records(x for x in [ASTRONAUT, closed, load_image(ASTRONAUT)])
    assert [r["status"] for r in records] == ["ok", "error", "ok"]  # the first item was lost to an all() check
    assert records[1]["image"] == "<image 1>" and "cannot read the image" in records[1]["reason"]


TERMINATED_AFTER_ONE = """
import os, signal, sys
from poi_cli.deploy import predict
original = predict.Predictor.iter_predictions
def one_then_sigterm(self, *args, **kwargs):
    for prediction in original(self, *args, **kwargs):
        yield prediction
        os.kill(os.getpid(), signal.SIGTERM)  # what timeout, docker stop and systemd send
predict.Predictor.iter_predictions = one_then_sigterm
sys.argv = ["poi"] + sys.argv[1:]
from poi_cli.cli import run
run()
"""


@pytest.mark.parametrize("output", ["--csv", "--json"])
def test_sigterm_keeps_what_finished_as_ctrl_c_does(output, tmp_path):
    """SIGTERM used to kill `poi predict` outright: no CSV, nothing printed, a lock left behind."""
    import shutil

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        shutil.copyfile(ASTRONAUT, tmp_path / name)
    csv_file = tmp_path / "out" / "rows.csv"
    args = [str(tmp_path / "*.jpg"), "--workers", "0", *(["--csv", str(csv_file)] if output == "--csv" else ["--json"])]
    done = subprocess.run([sys.executable, "-c", TERMINATED_AFTER_ONE, "predict", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={"PATH": "/usr/bin:/bin", "POI_THREADS": "1"})
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: interrupted: the records of 1 input are")
    if output == "--csv":
        assert csv_file.read_text().count("\n") == 2 and sorted(p.name for p in csv_file.parent.iterdir()) == ["rows.csv"]
    else:
        assert [r["image"] for r in json.loads(done.stdout)] == [str(tmp_path / "a.jpg")]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_that_cannot_be_written_is_one_line():
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", NO_TORCH, "predict", str(ASTRONAUT), "--json"], stdout=full,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "POI_THREADS": "1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: stopped: [Errno 28] No space left on device"


# ------------------------------------------------------------------ the library's inputs (an audit of the Python API)


@pytest.fixture(scope="module")
def library_predictor() -> Predictor:
    return Predictor(threads=1, workers=0)


class PathObject:  # an os.PathLike that is no pathlib.Path (a project's own path class)
    def __fspath__(self) -> str:
        return str(ASTRONAUT)


def test_an_image_files_bytes_an_open_file_and_a_path_object_are_one_input_each(library_predictor):
    """bytes were iterated byte by byte (74,962 "file not found" records), a file object line by
    line, a PathLike taken by its repr: each is now one image, read as its file would be."""
    import io

    data = ASTRONAUT.read_bytes()
    expected = library_predictor.predict_records(ASTRONAUT)
    assert [r["status"] for r in expected] == ["ok"]
    with open(ASTRONAUT, "rb") as handle:
        for value in (data, bytearray(data), io.BytesIO(data), handle, PathObject()):
            got = library_predictor.predict_records(value)
            assert len(got) == 1 and got[0]["probabilities"] == expected[0]["probabilities"], type(value)
    mixed = library_predictor.predict_records([data, b"", b"not an image", {"a": 1}, str(ASTRONAUT)])
    assert [r["status"] for r in mixed] == ["ok", "error", "error", "error", "ok"]
    assert "empty bytes" in mixed[1]["reason"] and "not an image in a format poi reads" in mixed[2]["reason"]
    assert "not an image input" in mixed[3]["reason"] and "dict" in mixed[3]["reason"]
    with pytest.raises(TypeError, match="got dict"):
        library_predictor.predict_records({"a": 1})


def test_a_pil_image_is_read_upright_as_its_file_is(library_predictor, tmp_path):
    """A photo stored sideways with its EXIF orientation: the path was turned upright, the same
    photo as Image.open(path) was not (no face found)."""
    from PIL import Image

    photo = Image.open(ASTRONAUT)
    exif = photo.getexif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show"
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", exif=exif)
    by_path = library_predictor.predict_records(tmp_path / "sideways.jpg")
    by_image = library_predictor.predict_records(Image.open(tmp_path / "sideways.jpg"))
    assert [r["status"] for r in by_path] == ["ok"] and by_image == [dict(by_path[0], image="<image 0>")]


def test_a_generator_of_inputs_is_read_a_chunk_at_a_time(library_predictor):
    """iter_predictions took the whole input before its first result (an endless camera hung)."""
    from PIL import Image

    face = np.asarray(Image.open(ASTRONAUT))
    taken = []

    def camera():  # a long stream (finite, so that a regression fails instead of filling the memory)
        for _ in range(60):
            taken.append(1)
            yield face

    first = next(library_predictor.iter_predictions(camera()))
    assert first.records[0].status == "ok" and len(taken) <= library_predictor.images_per_batch + 1


@pytest.mark.parametrize("options, message", [
    ({"threads": 0}, "threads must be a whole number"),
    ({"min_face_score": 2.0}, "min_face_score must be in [0, 1]"),
    ({"model": ""}, "an empty name"),
    ({"model": str(ASTRONAUT)}, "is not a model file"),
])
def test_a_predictors_bad_option_names_itself_not_the_model_file(options, message):
    from poi_cli.deploy.predict import PredictError

    with pytest.raises(PredictError) as error:
        Predictor(**options)
    assert message in str(error.value) and "ONNX Runtime" not in str(error.value) and "checkpoint or run folder:" not in str(error.value)


def test_threads_sharing_a_new_predictor_make_one_detector(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from poi_cli.deploy import pipeline

    made = []
    real = pipeline.make_detector

    def counted(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "make_detector", counted)
    predictor = Predictor(threads=1, workers=0)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: predictor.predict_records(ASTRONAUT)[0]["expression"], range(4)))
    assert len(set(results)) == 1 and len(made) == 1


def test_without_pandas_the_dataframe_methods_name_the_extra_before_the_work(library_predictor, monkeypatch):
    """They said only "pip install pandas", after predicting every input."""
    from poi_cli.deploy.predict import PredictError

    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas not installed (the deploy runtime)
    monkeypatch.setattr(library_predictor, "iter_predictions", lambda *a, **k: pytest.fail("predicted before the check"))
    monkeypatch.setattr(library_predictor, "iter_video", lambda *a, **k: pytest.fail("predicted before the check"))
    for call in (lambda: library_predictor.predict(ASTRONAUT), lambda: library_predictor.predict_video("clip.mp4")):
        with pytest.raises(PredictError, match=r"needs pandas, which is not installed \(pip install pandas, or "
                                               r"pip install 'poi-fer\[train\]'\); predict_records gives the records"):
            call()


def test_the_torch_detector_that_cannot_run_fails_where_the_predictor_is_made(library_predictor, monkeypatch):
    """Predictor(detector="mtcnn-torch") was made without torch and failed only at its first prediction."""
    from poi_cli.core.errors import PoiError
    from poi_cli.data.faces import FaceDetectorError

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # not installed (nor, in the deploy runtime, torch)
    with pytest.raises(FaceDetectorError, match=r"^the torch MTCNN \(--detector mtcnn-torch\) needs facenet-pytorch, "
                                                r"which failed to import \(ModuleNotFoundError\): pip install --no-deps") as caught:
        Predictor(library_predictor.runner, detector="mtcnn-torch", workers=0)
    assert isinstance(caught.value, PoiError) and "\n" not in str(caught.value)
    assert Predictor(library_predictor.runner, detector="mtcnn-torch", detect=False, workers=0).detect is False  # no detector used


def test_the_tables_title_names_the_bundled_model_by_its_file_and_the_readmes_demo_is_what_it_prints(tmp_path):
    """The title was the model file's path: from outside the repository, an installed package's
    site-packages path, wrapped mid-word at 80 columns."""
    done = poi_without_torch("predict", str(ASTRONAUT), env={"COLUMNS": "80"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].strip() == "bundled model poi_ferplus8_resnet10_96.onnx (8 classes)"
    readme = (ROOT / "README.md").read_text()
    command = "COLUMNS=100 poi predict examples/astronaut.jpg --show-au"
    shown = readme.split(f"$ {command}\n")[1].split("```")[0]
    done = poi_without_torch(*command.split()[2:], env={"COLUMNS": "100"})
    assert done.returncode == 0 and done.stdout == shown, done.stdout


@pytest.mark.parametrize("size", [(48, 48), (96, 96), (5000, 5000), (150, 400), (200, 2000)])
def test_a_face_label_is_drawn_whole_inside_the_picture(size):
    """--save-vis on an aligned 96-px face (or a 48-px FERPlus one) drew the label about 200 px
    wide from the box's left edge and cut it at the picture's; a face at the right edge of a
    large photo likewise. The picture is now at least MIN_SIDE on its longer side and the label
    moved left to end inside it; a tall narrow one (a portrait crop) at least MIN_WIDTH wide."""
    from PIL import Image, ImageDraw

    from poi_cli.deploy.drawing import MAX_SIDE, MIN_SIDE, MIN_WIDTH, _font, _label, draw_faces
    from poi_cli.deploy.records import FaceRecord

    width, height = size
    record = FaceRecord(image="face.png", face=0, status="ok", box=[width * 0.4, height * 0.4, width, height],
                        expression="happiness", probabilities={"happiness": 0.97, "sadness": 0.03},
                        confidence=0.97, consistency=1.0, regions_agree=4)
    picture = draw_faces(Image.new("RGB", size, (128, 128, 128)), [record])
    if width == height:
        assert max(picture.size) == min(max(width, MIN_SIDE), MAX_SIDE)
    else:
        assert picture.width == MIN_WIDTH and max(picture.size) >= MIN_SIDE
    black = np.flatnonzero((np.asarray(picture) == 0).all(axis=2).any(axis=0))  # columns of the label's box
    text_width = ImageDraw.Draw(picture).textbbox((0, 0), _label(record), font=_font(max(12, picture.width // 60)))[2]
    assert black.max() <= picture.width - 3 and black.max() - black.min() + 1 >= text_width
