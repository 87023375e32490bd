"""Small hand-computed checks of the deploy runtime, the video sampler, export metadata,
checkpoints and calibration: each pins one behaviour a mutation audit found unguarded.

The tests marked `deploy` import neither torch nor pandas (this file is collected in
.venv-deploy too), so every torch or pandas import is inside a test or fixture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from poi_cli.core.schema import STATUS_NO_FACE, STATUS_OK
from poi_cli.data.video import VideoInfo, VideoReader, VideoSampling, write_video
from poi_cli.deploy.records import FaceRecord, Smoothed, VideoPosition
from poi_cli.deploy.runner import OnnxRunner, softmax, written_by_torch_save
from poi_cli.deploy.video import video_summary

deploy = pytest.mark.deploy


# --------------------------------------------------------------------------- deploy/runner.py


@deploy
def test_softmax_of_a_huge_logit_is_one_hot_not_nan():
    # guards: the max subtraction (exp(1000) overflowed to inf, inf / inf = NaN)
    assert np.array_equal(softmax(np.array([[1000.0, 0.0]])), np.array([[1.0, 0.0]], np.float32))


@deploy
def test_a_pre_1_6_torch_pickle_is_recognised_as_torch_save(tmp_path):
    # guards: the pickle protocol byte 0x80 check (only zip archives were recognised)
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    other = tmp_path / "photo.gif"
    other.write_bytes(b"GIF89a")
    assert written_by_torch_save(pickle) and not written_by_torch_save(other)


def test_an_onnx_file_without_the_calibrated_key_counts_as_calibrated():
    # guards: the default of a missing `calibrated` metadata key (exports older than the key were calibrated)
    onnx = pytest.importorskip("onnx")
    from poi_cli.deploy.predict import bundled_model

    proto = onnx.load(str(bundled_model()))
    kept = [p for p in proto.metadata_props if p.key != "calibrated"]
    assert len(kept) == len(proto.metadata_props) - 1
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    assert OnnxRunner(proto.SerializeToString(), threads=1, name="old.onnx").calibrated is True


# --------------------------------------------------------------------------- model/export.py, model/checkpoint.py


@pytest.fixture(scope="module")
def small_face_export(tmp_path_factory) -> OnnxRunner:
    """An uncalibrated 64 px model for 48 px faces, exported as `poi predict --backend onnx` does."""
    from conftest import tiny_model
    from poi_cli.core.manifests import class_names
    from poi_cli.data.preprocess import Preprocessing
    from poi_cli.model.checkpoint import build_checkpoint, save_checkpoint
    from poi_cli.model.export import onnx_model_bytes

    model = tiny_model()
    path = tmp_path_factory.mktemp("export") / "small_faces.pt"
    save_checkpoint(path, build_checkpoint(model=model, model_config=model.config, classes=class_names(7),
                                           preprocessing=Preprocessing(face_size=48, input_size=64)))
    return OnnxRunner(onnx_model_bytes(path), threads=1, name="small_faces.onnx")


def test_an_uncalibrated_export_says_it_is_uncalibrated(small_face_export):
    # guards: `calibrated` metadata written as `calibration is not None`, not always True
    assert small_face_export.calibrated is False and small_face_export.calibration_temperature == 1.0


def test_export_metadata_input_size_is_the_models_not_the_face_size(small_face_export):
    # guards: metadata input_size from the model's input (64), not the store's face size (48)
    assert json.loads(small_face_export.meta["input_size"]) == 64
    assert small_face_export.preprocessing.face_size == 48 and small_face_export.preprocessing.input_size == 64


def test_a_checkpoint_keeps_its_own_epochs_val_acc_beside_the_best():
    # guards: val_acc stored as best_val_acc (last.pt must hold the last epoch's accuracy)
    from poi_cli.data.preprocess import Preprocessing
    from poi_cli.model.checkpoint import build_checkpoint

    import torch

    checkpoint = build_checkpoint(model={"w": torch.zeros(1)}, model_config={}, classes=["a", "b"],
                                  preprocessing=Preprocessing(face_size=64, input_size=64), epoch=3,
                                  best_val_acc=0.8, best_epoch=2, val_acc=0.5)
    assert checkpoint["val_acc"] == 0.5 and checkpoint["best_val_acc"] == 0.8


# --------------------------------------------------------------------------- data/video.py: the sampler


@deploy
def test_sampling_rate_is_capped_by_the_video_and_divided_by_every():
    # guards: min(fps, video_fps) (20 asked of a 10 fps video is 10) and the `/ every` (every 3rd of 30 fps is 10)
    assert VideoSampling(fps=20).rate(10) == 10
    assert VideoSampling(every=3).rate(30) == 10


class _Frame:  # what VideoReader reads of a decoded PyAV frame
    rotation = 0

    def __init__(self, time: float) -> None:
        self.time = time

    def to_image(self) -> Image.Image:
        return Image.new("RGB", (2, 2))


def frames_read(times: list[float], fps: float, sampling: VideoSampling) -> list[tuple[int, float]]:
    """(index, timestamp) of the frames VideoReader keeps of decoded frames shown at `times`."""
    reader = VideoReader.__new__(VideoReader)  # no file: the container hands out these frames
    reader.path, reader.sampling, reader._stream = Path("fake.mp4"), sampling, None
    reader.info = VideoInfo(fps=fps, frames=len(times), duration=None, width=2, height=2)
    reader.stopped, reader.decoded, reader.last_timestamp = None, 0, None
    reader._container = SimpleNamespace(decode=lambda stream: iter([_Frame(t) for t in times]), close=lambda: None)
    return [(f.index, f.timestamp) for f in reader]


@deploy
def test_a_repeated_presentation_time_is_counted_on_by_one_frame():
    # guards: the out-of-order repair (`<=`, not `<`, and + 1/fps, not + 0): 0.1 twice at 10 fps is 0.1, 0.2
    assert frames_read([0.0, 0.1, 0.1], 10, VideoSampling(every=1)) == [(0, 0.0), (1, 0.1), (2, 0.2)]


def test_timestamps_count_from_a_streams_first_frame(tmp_path):
    # guards: timestamps are time - origin (a stream starting at 5.0 s gave 5.0, 5.1, 5.2)
    from test_video import write_variable_rate_video

    reader = VideoReader(write_variable_rate_video(tmp_path / "late.mp4", [5000, 5100, 5200]), VideoSampling(every=1))
    assert [f.timestamp for f in reader] == pytest.approx([0.0, 0.1, 0.2])


def test_a_gap_in_a_video_is_not_followed_by_a_burst(tmp_path):
    # guards: the tick skip (next_tick += step alone owed the ticks of a gap: 1.05 and 1.1 were kept too).
    # fps=5, step 0.2, slack = min(half the median interval, 0.1): 0 kept, next tick 0.2; 1.0 kept
    # (slack 0.1), next tick 0.2 + 0.2 * (floor((1.0 + 0.1 - 0.2) / 0.2) + 1) = 1.2; 1.05 < 1.2 - 0.1 and
    # 1.1 < 1.2 - 0.025 (median 0.05) skipped; 1.2 >= 1.2 - 0.0375 (median 0.075) kept
    from test_video import write_variable_rate_video

    video = write_variable_rate_video(tmp_path / "gap.mp4", [0, 1000, 1050, 1100, 1200])
    kept = [(f.index, f.timestamp) for f in VideoReader(video, VideoSampling(fps=5))]
    assert kept == [(0, 0.0), (1, 1.0), (4, 1.2)]


# --------------------------------------------------------------------------- deploy/video.py


@pytest.fixture(scope="module")
def whole_image_predictor(tmp_path_factory):
    """A random tiny model that takes each whole frame as a face (no detector)."""
    from poi_cli.backends import open_runner
    from poi_cli.deploy.predict import Predictor
    from test_predict import make_checkpoint

    checkpoint = make_checkpoint(tmp_path_factory.mktemp("video_units") / "poi7.pt")
    return Predictor(open_runner(checkpoint, threads=1), detect=False, workers=0, threads=1)


def noise_frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def test_live_frames_are_timed_at_index_over_fps_and_every_keeps_the_first(whole_image_predictor):
    # guards: live timestamps index / fps (not index * fps), `index % every` (frames 0, 2, 4, not 1, 3)
    # and the prediction's fps being the rate (not None)
    predictions = list(whole_image_predictor.iter_video(noise_frames(3), fps=5))
    assert [(p.frame, p.timestamp, p.fps) for p in predictions] == [(0, 0.0, 5), (1, 0.2, 5), (2, 0.4, 5)]
    every = list(whole_image_predictor.iter_video(noise_frames(5), fps=5, every=2))
    assert [(p.frame, p.timestamp) for p in every] == [(0, 0.0), (2, 0.4), (4, 0.8)]


def test_a_video_files_predictions_carry_the_sampling_rate(whole_image_predictor, tmp_path):
    # guards: FramePrediction.fps = the sampling rate (every 2nd frame of 10 fps: 5), not None
    clip = write_video(tmp_path / "clip.mp4", noise_frames(4), 10)
    predictions = list(whole_image_predictor.iter_video(clip, every=2))
    assert [(p.frame, p.fps) for p in predictions] == [(0, 5.0), (2, 5.0)]


def test_tracks_and_smoothing_run_on_seconds_not_frame_numbers(whole_image_predictor):
    # guards: f.timestamp (not f.index) given to the tracker and the smoother. At 10 fps with
    # smooth 0.5 s the second frame weighs 1 - e^(-0.1 / 0.5) = 1 - e^(-0.2) (frame numbers: 1 - e^(-2));
    # the face back after two error frames (0.3 s, under max_gap 1 s) keeps track 0 (frame numbers: 3 > 1)
    a, b = noise_frames(2)
    predictions = list(whole_image_predictor.iter_video([a, b, "bad", "bad", a], fps=10, smooth=0.5))
    records = [p.records[0] for p in predictions]
    assert [r.video.track for r in records] == [0, 0, None, None, 0]
    classes = whole_image_predictor.classes
    p0, p1 = (np.array([r.probabilities[c] for c in classes]) for r in records[:2])
    assert np.abs(p1 - p0).max() > 1e-3  # the two frames differ enough for the weight to show
    expected = p0 + (1 - math.exp(-0.2)) * (p1 - p0)
    assert np.allclose([records[1].smoothed.probabilities[c] for c in classes], expected, atol=2e-6)


@deploy
def test_a_video_summary_starts_at_its_first_frame():
    # guards: start = min of the timestamps (max gave start 1.9 on a 20-frame 10 fps clip)
    records = [FaceRecord.empty("clip.mp4", STATUS_NO_FACE, "no face").on_frame(VideoPosition(i, i / 10))
               for i in range(20)]
    summary, = video_summary(records)
    assert (summary["start"], summary["end"], summary["frames"]) == (0.0, 1.9, 20)


@deploy
def test_a_video_summary_counts_the_smoothed_expression_when_there_is_one():
    # guards: `smoothed or record.expression` (the raw happiness outvoted the smoothed sadness)
    smoothed = Smoothed("sadness", {"happiness": 0.4, "sadness": 0.6})
    records = [FaceRecord(image="clip.mp4", status=STATUS_OK, face=0, expression="happiness")
               .on_frame(VideoPosition(i, i / 10, 0), smoothed) for i in range(2)]
    summary, = video_summary(records)
    assert summary["expressions_from"] == "smoothed"
    assert [(t["dominant"], t["share"]) for t in summary["tracks"]] == [("sadness", {"sadness": 1.0})]


# --------------------------------------------------------------------------- study/calibrate.py


def test_a_model_without_oim_is_offered_only_trn_recipes(tmp_path):
    # guards: `use_pin and use_oim` (a --no-oim model has no p~*: trn+pin recipes cannot run)
    from conftest import make_prepared, tiny_model, write_checkpoint
    from poi_cli.study.calibrate import calibrate

    checkpoint = write_checkpoint(tmp_path / "no_oim.pt", tiny_model(use_oim=False))
    result = calibrate(checkpoint, make_prepared(tmp_path / "data", splits={"valid": 1}), out=tmp_path / "c.pt",
                       device="cpu", flip="off")
    assert [c.recipe.fusion for c in result.candidates] == ["trn"]


def test_one_validation_image_is_too_few_to_fit_a_temperature(tmp_path, tiny_checkpoint):
    # guards: the `< 2` floor (one image was fitted)
    import pandas as pd

    from conftest import make_prepared
    from poi_cli.study.calibrate import CalibrateError, calibrate

    data = make_prepared(tmp_path / "data", splits={"valid": 1})
    manifest = pd.read_csv(data / "manifest.csv")
    manifest["split"] = ["valid"] + ["train"] * (len(manifest) - 1)  # one valid image left
    manifest.to_csv(data / "manifest.csv", index=False)
    with pytest.raises(CalibrateError, match="has 1 image"):
        calibrate(tiny_checkpoint, data, out=tmp_path / "c.pt", device="cpu", fusion="trn", flip="off")


def test_calibrating_on_the_split_a_train_split_run_trained_on_is_refused(tmp_path):
    # guards: `train_split or "train"` (a run trained with --train-split valid was calibrated on valid)
    from conftest import make_prepared, write_checkpoint
    from poi_cli.study.calibrate import CalibrateError, calibrate

    data = make_prepared(tmp_path / "data", splits={"train": 1, "valid": 1})
    checkpoint = write_checkpoint(tmp_path / "m.pt", config={"data": str(data), "train_split": "valid"})
    with pytest.raises(CalibrateError, match="--split valid: the images this model trained on"):
        calibrate(checkpoint, data, split="valid", out=tmp_path / "c.pt", device="cpu", fusion="trn", flip="off")
