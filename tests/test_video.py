"""`poi predict` on videos, --no-detect, and AU panels for every face.

Clips are generated here (160x120, 20 frames at 10 fps, astronaut heads pasted on a
noisy grey background) and written with PyAV; the checkpoint is a random 64 px model
(test_predict.make_checkpoint), so what is tested is the contract: frames, timestamps,
tracks, statuses, sampling, truncation, not the expressions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data as skimage_data
from typer.testing import CliRunner

from poi_cli.backends import open_runner
from poi_cli.cli import app
from poi_cli.data.faces import FaceDetector
from poi_cli.data.video import VideoReader, VideoSampling, write_video
from poi_cli.deploy import drawing
from poi_cli.deploy.pipeline import ImagePrediction, whole_image_face
from poi_cli.deploy.predict import Predictor
from poi_cli.deploy.tracking import IoUTracker, TrackSmoother
from poi_cli.deploy.video import VideoOptions, video_summary
from test_predict import make_checkpoint

runner = CliRunner()
FPS, FRAMES = 10, 20
FIRST_FACE, SECOND_FACE = 3, 10  # frames where the moving face and the second face appear


def head(size: int = 50) -> Image.Image:
    """The astronaut's head (hair to chin), resized: MTCNN finds it from about 40 px."""
    return Image.fromarray(skimage_data.astronaut()).crop((150, 40, 320, 230)).resize((size, round(size * 190 / 170)))


def clip_frames(faces: bool = True) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    face = head()
    frames = []
    for i in range(FRAMES):
        # Per-frame noise keeps the encoded frames large, so a cut file loses whole frames.
        background = np.clip(90 + rng.normal(0, 12, (120, 160, 3)), 0, 255).astype(np.uint8)
        canvas = Image.fromarray(background)
        if faces and i >= FIRST_FACE:
            canvas.paste(face, (5 + 2 * (i - FIRST_FACE), 30))  # moves right, 2 px a frame
        if faces and i >= SECOND_FACE:
            canvas.paste(face, (100, 50))
        frames.append(np.asarray(canvas))
    return frames


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video")
    clip = write_video(root / "clip.mkv", clip_frames(), FPS)
    data = clip.read_bytes()
    (root / "cut.mkv").write_bytes(data[: len(data) // 2])
    (root / "text.mp4").write_text("this is not a video\n")
    return {"root": root, "clip": clip, "cut": root / "cut.mkv", "text": root / "text.mp4",
            "empty": write_video(root / "empty.mp4", clip_frames(faces=False)[:6], FPS),
            "ck": make_checkpoint(root / "poi7.pt")}


@pytest.fixture(scope="module")
def predictor(files) -> Predictor:
    return Predictor(open_runner(files["ck"]), detector=FaceDetector(min_score=0.95))


def test_two_tracks_frame_indices_timestamps_and_no_face_rows(files, predictor):
    frame = predictor.predict_video(files["clip"], smooth=0.5)
    assert sorted(frame["frame"].unique()) == list(range(FRAMES))
    assert np.allclose(frame["timestamp"], frame["frame"] / FPS)
    before = frame[frame["frame"] < FIRST_FACE]
    assert list(before["status"]) == ["no_face"] * FIRST_FACE and before["track"].isna().all()
    one = frame[(frame["frame"] >= FIRST_FACE) & (frame["frame"] < SECOND_FACE)]
    assert (one["status"] == "ok").all() and len(one) == SECOND_FACE - FIRST_FACE and set(one["track"]) == {0}
    two = frame[frame["frame"] >= SECOND_FACE]
    assert (two["status"] == "ok").all() and len(two) == 2 * (FRAMES - SECOND_FACE)
    assert (two.groupby("frame")["track"].apply(set) == {0, 1}).all()
    # track 0 is the moving face (left, drifting right), track 1 the one that appeared
    moving = frame[frame["track"] == 0].sort_values("frame")
    assert moving["box_x1"].is_monotonic_increasing and moving["box_x1"].iloc[-1] > moving["box_x1"].iloc[0] + 20
    assert (frame.loc[frame["track"] == 1, "box_x1"] > 90).all()
    # smoothing keeps the raw probabilities and adds the smoothed ones, which sum to 1
    classes = predictor.classes
    ok = frame[frame["status"] == "ok"]
    assert np.allclose(ok[classes].sum(axis=1), 1, atol=1e-4)
    assert np.allclose(ok[[f"smoothed_{c}" for c in classes]].sum(axis=1), 1, atol=1e-4)


@pytest.mark.parametrize("sampling, expected", [
    (VideoSampling(every=3), list(range(0, FRAMES, 3))),
    (VideoSampling(fps=5), list(range(0, FRAMES, 2))),
    (VideoSampling(fps=4), [0, 2, 5, 7, 10, 12, 15, 17]),  # the first frame at or after each 0.25 s tick
    (VideoSampling(start=0.5, end=1.2), list(range(5, 12))),
    (VideoSampling(end=0.05), [0]),  # a frame before --end counts, however close to it
    (VideoSampling(end=0.15), [0, 1]),
    (VideoSampling(every=2, start=0.5), list(range(5, FRAMES, 2))),
    (VideoSampling(max_fps=5), list(range(0, FRAMES, 2))),  # the default cap, below the video's 10 fps
])
def test_every_and_fps_select_the_right_frames(files, sampling, expected):
    reader = VideoReader(files["clip"], sampling)
    frames = list(reader)
    assert [f.index for f in frames] == expected
    assert [f.timestamp for f in frames] == pytest.approx([i / FPS for i in expected])
    assert reader.stopped is None


def write_variable_rate_video(path: Path, times_ms: list[int]) -> Path:
    """An H.264 mp4 whose frames are shown at `times_ms` (write_video's are evenly spaced)."""
    import av
    from fractions import Fraction

    frames = clip_frames()
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
    for n, ms in enumerate(times_ms):
        frame = av.VideoFrame.from_ndarray(frames[n % len(frames)], format="rgb24")
        frame.pts, frame.time_base = ms, Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.mark.parametrize("sampling", [VideoSampling(fps=10), VideoSampling()])
def test_a_variable_rate_videos_fast_part_is_sampled_at_the_rate_asked_for(tmp_path, sampling):
    # six frames a second apart, then 25 per second for 0.8 s: 4.4 frames per second on average;
    # the fast part was sampled every 1/4.4 s (4 frames), not every 0.1 s, whether 10 fps was
    # asked or the default
    slow, fast = [1000 * k for k in range(6)], [5040 + 40 * k for k in range(20)]
    video = write_variable_rate_video(tmp_path / "vfr.mp4", slow + fast)
    reader = VideoReader(video, sampling)
    assert reader.info.fps < 5
    times = [f.timestamp for f in reader]
    assert times[:6] == pytest.approx([0, 1, 2, 3, 4, 5])  # every slow frame
    # about one per 0.1 s tick over 5.0-5.8 s: 8, a frame counting for a tick from half a frame before it
    assert len(times[6:]) == 8 and all(0.07 < b - a < 0.13 for a, b in zip(times[5:], times[6:])), times
    assert reader.stopped is None


def test_a_jittery_video_at_the_sampling_rate_keeps_every_frame(tmp_path):
    # a 10 fps camera whose frames come up to 35 ms early or late: at the default 10 per second
    # every frame counts for its tick (with a quarter tick of slack, frames 30-35 ms early were lost)
    jitter = [0, 35, -35, 20, -30, 35, -35, 0, 25, -25, 30, -30, 10, -10, 35, -35, 0, 20, -20, 0]
    video = write_variable_rate_video(tmp_path / "jitter.mp4", [100 * k + j for k, j in enumerate(jitter)])
    reader = VideoReader(video)
    assert [f.index for f in reader] == list(range(len(jitter)))


def test_a_video_cut_before_end_says_it_ends_early(files):
    # with --end the check of the file's length was skipped: a cut file read as complete
    reader = VideoReader(files["cut"], VideoSampling(end=1.8))
    assert 0 < len(list(reader)) < 18 and "ends early" in reader.stopped
    whole = VideoReader(files["clip"], VideoSampling(end=5.0))  # an --end past a whole file's end
    assert len(list(whole)) == FRAMES and whole.stopped is None


@pytest.mark.parametrize("option", ["--start", "--end", "--fps"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_sampling_option_that_is_no_number_is_one_line(option, value, files):
    """--start nan read "cannot convert float NaN to integer"; --fps inf passed as positive."""
    result = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), option, value])
    unit = "frames per second" if option == "--fps" else "seconds"
    assert result.exit_code == 1 and result.stderr.strip() == f"error: {option} must be a number of {unit}, got {value}"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_an_end_at_or_before_the_first_frame_is_one_line(value, files):
    """--end 0 once read "no frame in the --start/--end window (the video is 0.10 s)" of a 2 s
    clip, and --end -1 was accepted."""
    result = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--end", value])
    assert result.exit_code == 1 and result.stderr.strip() == f"error: --end must be a positive number of seconds, got {float(value)}"


def test_a_window_past_the_video_end_is_an_error_record_not_nothing(files):
    result = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--start", "10", "--json"])
    assert result.exit_code == 1, result.stderr  # the only input gave no frame: nothing could be read
    (record,) = json.loads(result.stdout)
    assert record["status"] == "error" and "no frame in the --start/--end window (the video is 2.00 s)" in record["reason"]
    assert "no face in any analysed frame" not in result.stderr  # it is an error, not a faceless video
    (summary,) = video_summary([r for p in Predictor(open_runner(files["ck"])).iter_predictions(
        [str(files["clip"])], video=VideoOptions(VideoSampling(start=10))) for r in p.records])
    assert (summary["frames"], summary["no_face"]) == (0, False) and "--start/--end window" in summary["stopped"]


def test_cli_every_and_json_rows(files):
    result = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--every", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert sorted({r["frame"] for r in records}) == [0, 5, 10, 15]
    assert [r["track"] for r in records if r["frame"] == 15] and all(r["detector"] == "mtcnn" for r in records)
    assert "clip.mkv: 4 frames analysed" in result.stderr


def test_a_phone_video_is_read_upright_by_its_display_rotation(predictor, tmp_path):
    """A portrait phone video stores landscape frames and a display rotation of -90: read as
    stored, the face lay on its side and the detector found none."""
    upright = np.asarray(Image.new("RGB", (120, 160), (90, 90, 90)))
    canvas = Image.fromarray(upright)
    canvas.paste(head(80), (20, 40))
    stored = np.asarray(canvas.transpose(Image.Transpose.ROTATE_90))  # lying on its side, 160 x 120
    clip = write_video(tmp_path / "portrait.mp4", [stored] * 4, 5, rotation=-90)
    frames = list(VideoReader(clip))
    assert frames and frames[0].image.size == (120, 160)  # as a player shows it
    assert np.abs(np.asarray(frames[0].image, float) - np.asarray(canvas, float)).mean() < 12
    records = [r for p in predictor.iter_predictions([str(clip)]) for r in p.records]
    assert any(r.status == "ok" for r in records), [r.status for r in records]


def test_the_dataframe_has_the_columns_of_the_csv_for_the_same_inputs(files, predictor, tmp_path):
    """A video that cannot be opened beside a photo: the CSV has the video columns (fixed by the
    inputs), and Predictor.predict had none (it decided by the records); to_row gives exactly
    the columns of its own record (it always added the video and smoothed keys)."""
    import csv

    from poi_cli.deploy.records import flat_columns

    photo = tmp_path / "head.png"
    head(80).save(photo)
    inputs = [str(files["text"]), str(photo)]
    out = tmp_path / "rows.csv"
    result = runner.invoke(app, ["predict", *inputs, "--model", str(files["ck"]), "--csv", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    header = next(csv.reader(open(out)))
    frame = predictor.predict(inputs)
    assert list(frame.columns) == header and {"frame", "timestamp", "track"} <= set(header)
    assert frame["status"].tolist() == ["error", "ok"]
    record = predictor.iter_predictions([str(photo)], show_au=True).__next__().records[0]
    assert list(record.to_row(predictor.classes)) == flat_columns(predictor.classes, show_au=True)


def test_a_video_and_a_photo_in_a_terminal_draw_their_progress_bars(files):
    # stderr a terminal (TTY_COMPATIBLE=1): the video's bar counts frames per second, the photos' images
    photo = files["root"] / "head.png"
    head(80).save(photo)
    result = runner.invoke(app, ["predict", str(files["clip"]), str(photo), "--model", str(files["ck"]), "--every", "5",
                                 "--json"], env={"TTY_COMPATIBLE": "1"})
    assert result.exit_code == 0, result.stderr
    assert "frames/s" in result.stderr and "images/s" in result.stderr
    assert {r["image"] for r in json.loads(result.stdout)} == {str(files["clip"]), str(photo)}


def test_truncated_video_keeps_the_frames_before_the_cut(files, tmp_path):
    full = [f.index for f in VideoReader(files["cut"])]
    assert 0 < len(full) < FRAMES and full == list(range(len(full)))
    out = tmp_path / "cut.csv"
    result = runner.invoke(app, ["predict", str(files["cut"]), "--model", str(files["ck"]), "--csv", str(out)])
    assert result.exit_code == 0, result.stderr  # frames were read: a partial result, not a failed input
    frame = pd.read_csv(out)
    errors = frame[frame["status"] == "error"]
    assert len(errors) == 1 and "stopped after frame" in errors["reason"].iloc[0]
    assert sorted(frame.loc[frame["status"] != "error", "frame"].unique()) == full
    assert "warning:" in result.stdout and "truncated" in result.stdout
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary[0]["frames"] == len(full) and summary[0]["stopped"]


def test_not_a_video_is_a_one_line_error_and_a_video_without_faces_says_so(files):
    result = runner.invoke(app, ["predict", str(files["text"]), "--model", str(files["ck"])])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
    assert len(errors) == 1 and "not a video" in errors[0] and "Traceback" not in result.stderr

    result = runner.invoke(app, ["predict", str(files["empty"]), "--model", str(files["ck"]), "--json"])
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["frame"] for r in records] == list(range(6)) and {r["status"] for r in records} == {"no_face"}
    assert "no face in any analysed frame" in result.stderr


def test_the_batch_summary_counts_a_video_that_cannot_be_opened_as_a_video(files):
    photo = files["root"] / "head_summary.png"
    head(80).save(photo)
    result = runner.invoke(app, ["predict", str(files["empty"]), str(files["text"]), str(photo),
                                 "--model", str(files["ck"]), "--json"])
    assert result.exit_code == 0, result.stderr
    assert "2 videos (6 frames) and 1 image:" in result.stderr and "1 error" in result.stderr


def test_a_killed_runs_temp_video_is_removed_by_the_next_run(files, tmp_path):
    # the annotated video is written into a temp file beside it and renamed at the end; a killed
    # run's (its process gone) stayed for good and grew with each video
    import subprocess
    import sys

    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    vis = tmp_path / "vis"
    vis.mkdir()
    stale = vis / f".clip_poi.mp4.{gone}.k1ll3d.tmp"
    stale.write_bytes(b"x" * 1000)
    result = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--every", "10",
                                 "--save-vis", str(vis)])
    assert result.exit_code == 0, result.stderr
    assert not stale.exists() and not list(vis.glob(".*.tmp")) and (vis / "clip_poi.mp4").is_file()


def test_iter_video_on_a_file_that_is_no_video_yields_a_frame_prediction(files, predictor):
    # the documented loop (`for p in predictor.iter_video(path): p.frame`) broke on an AttributeError,
    # and predict_video's DataFrame lacked its video columns
    predictions = list(predictor.iter_video(files["text"]))
    assert len(predictions) == 1 and predictions[0].frame is None and predictions[0].records[0].status == "error"
    frame = predictor.predict_video(files["root"] / "missing.mp4")
    assert list(frame["status"]) == ["error"] and {"frame", "timestamp", "track"} <= set(frame.columns)


def test_live_frames_that_are_no_images_are_error_rows_and_the_stream_goes_on(predictor):
    from poi_cli.data.video import VideoError

    face = np.asarray(clip_frames()[FRAMES - 1])
    frames = [face, np.zeros((0, 0, 3), np.uint8), face / 255.0, "frame.jpg", Image.fromarray(face)]
    rows = [(p.frame, p.records[0].status) for p in predictor.iter_video(frames, fps=5)]
    assert rows == [(0, "ok"), (1, "error"), (2, "error"), (3, "error"), (4, "ok")]
    for options in ({"fps": 0}, {"fps": -5}, {"fps": float("nan")}, {"every": 0}):
        with pytest.raises(VideoError):
            list(predictor.iter_video(frames, **options))


def test_save_vis_writes_an_annotated_video_and_a_timeline(files, tmp_path):
    vis = tmp_path / "vis"
    result = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--fps", "5",
                                 "--save-vis", str(vis)])
    assert result.exit_code == 0, result.stderr
    annotated = list(VideoReader(vis / "clip_poi.mp4"))
    assert len(annotated) == FRAMES // 2
    # the annotated frame differs from the input where the boxes are drawn
    original = {f.index: f for f in VideoReader(files["clip"])}
    last = annotated[-1].image
    assert last.size == (384, 288)  # the 160x120 clip brought up to drawing.MIN_SIDE, so that labels fit
    assert np.abs(np.asarray(last, float) - np.asarray(original[18].image.resize(last.size), float)).max() > 100
    assert Image.open(vis / "clip_timeline.png").height > 200
    assert json.loads((vis / "clip_summary.json").read_text())["tracks"][1]["track"] == 1


def test_predict_files_for_a_csv_keeps_no_record_but_the_same_counts_and_summaries(files, predictor, tmp_path):
    """--csv held every record of a video in memory until the end (about 7 KB a face with
    --show-au: 36,000 frames an hour at 10 fps); its rows are in the file as they come."""
    from poi_cli.deploy.pipeline import expand_inputs
    from poi_cli.deploy.predict import KEEP_ALL, KEEP_IMAGES, KEEP_NONE, predict_files

    photo = tmp_path / "head.png"
    head(80).save(photo)
    inputs = expand_inputs([str(files["clip"]), str(photo)])
    runs = {keep: predict_files(predictor, inputs, True, tmp_path / f"{keep}.csv", progress=False, keep=keep)
            for keep in (KEEP_ALL, KEEP_IMAGES, KEEP_NONE)}
    everything = runs[KEEP_ALL]
    assert len(everything.records) == len(pd.read_csv(tmp_path / "all.csv")) > FRAMES // 2
    assert [r.image for r in runs[KEEP_IMAGES].records] == [str(photo)] and runs[KEEP_NONE].records == []
    for run in runs.values():
        assert run.counts == everything.counts and run.summaries == video_summary(everything.records)
        assert run.first == everything.records[0] and run.inputs == 2
    assert (tmp_path / "none.csv").read_text() == (tmp_path / "all.csv").read_text()


@pytest.mark.parametrize("fails_in", ["a frame", "the last frames"])
def test_a_full_disk_under_the_annotated_video_stops_the_pictures_not_the_predictions(files, tmp_path, monkeypatch,
                                                                                       fails_in):
    """The video's write or close failing (a full disk) ended the run with exit 1: the CSV and
    summaries were never written and the temp video stayed in the --save-vis folder."""
    import errno

    from poi_cli.deploy import video_vis

    full = OSError(errno.ENOSPC, "No space left on device")
    if fails_in == "a frame":
        real_open = video_vis.VideoVisWriter._open

        def opened(self, *args):  # the muxer names the file it writes: the temp video
            real_open(self, *args)
            full.filename = self._temp

        monkeypatch.setattr(video_vis.VideoVisWriter, "_open", opened)
        original, calls = video_vis.VideoVisWriter._write, []

        def write(self, prediction):
            calls.append(1)
            if len(calls) == 3:  # after the container is open: its temp file exists
                raise full
            original(self, prediction)

        monkeypatch.setattr(video_vis.VideoVisWriter, "_write", write)
    else:
        import os
        from types import SimpleNamespace

        def replace(*args):
            raise full

        # the video's own rename only (os.replace itself also writes the CSV's summary)
        monkeypatch.setattr(video_vis, "os", SimpleNamespace(close=os.close, chmod=os.chmod, replace=replace))
    vis, out = tmp_path / "vis", tmp_path / "rows.csv"
    result = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--fps", "5",
                                 "--save-vis", str(vis), "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert "--save-vis stopped" in result.stderr and "No space left on device" in result.stderr
    if fails_in == "a frame":  # it named the temp file (.clip_poi.mp4.PID.random.tmp)
        assert "clip_poi.mp4: No space left" in result.stderr and ".tmp" not in result.stderr
    assert len(pd.read_csv(out).drop_duplicates("frame")) == FRAMES // 2 and (tmp_path / "rows.csv.summary.json").is_file()
    # no temp file nor half a video left; the folder made for the pictures went with them (empty)
    assert not vis.exists()


def test_a_video_run_keeps_the_users_files_beside_its_outputs_and_replaces_its_own(files, tmp_path):
    """--save-vis's video, timeline and summary, and the summary beside --csv: a file of the
    user's under those names stays (the new one is numbered; the CSV's companion is refused
    before the work), poi's own earlier one is replaced by a re-run (once both were replaced)."""
    vis = tmp_path / "vis"
    vis.mkdir()
    for name in ("clip_summary.json", "clip_timeline.png"):
        (vis / name).write_bytes(b"the user's\n")
    argv = ["predict", str(files["clip"]), "--model", str(files["ck"]), "--fps", "5", "--save-vis", str(vis)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.stderr
    assert "kept 2 files in" in " ".join(result.stderr.split())  # one note, not one per file
    assert all((vis / name).read_bytes() == b"the user's\n" for name in ("clip_summary.json", "clip_timeline.png"))
    assert json.loads((vis / "clip_summary2.json").read_text())["video"] == str(files["clip"])
    assert Image.open(vis / "clip_timeline2.png").height > 200
    before = sorted(p.name for p in vis.iterdir())
    assert runner.invoke(app, argv).exit_code == 0  # a re-run: its own files replaced, none added
    assert sorted(p.name for p in vis.iterdir()) == before == [
        "clip_poi.mp4", "clip_summary.json", "clip_summary2.json", "clip_timeline.png", "clip_timeline2.png"]

    table = tmp_path / "faces.csv"
    (tmp_path / "faces.csv.summary.json").write_text('{"mine": 1}\n')
    refused = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--fps", "5",
                                  "--csv", str(table)])
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 1 and len(lines) == 1 and "faces.csv.summary.json" in lines[0] and not table.exists()
    assert (tmp_path / "faces.csv.summary.json").read_text() == '{"mine": 1}\n'
    (tmp_path / "faces.csv.summary.json").unlink()
    for _ in range(2):  # written, then replaced by the same command
        done = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--fps", "5",
                                   "--csv", str(table)])
        assert done.exit_code == 0, done.stderr
    assert json.loads((tmp_path / "faces.csv.summary.json").read_text())[0]["video"] == str(files["clip"])


def test_each_csv_has_its_own_video_summary_and_a_csv_written_anew_takes_its_summary_along(files, tmp_path):
    # rows.csv and rows.tsv shared rows.summary.json: the second run's replaced the first's
    def predict(*inputs: Path, csv: Path) -> None:
        done = runner.invoke(app, ["predict", *map(str, inputs), "--model", str(files["ck"]), "--fps", "5",
                                   "--csv", str(csv)])
        assert done.exit_code == 0, done.stderr

    predict(files["clip"], csv=tmp_path / "rows.csv")
    predict(files["empty"], csv=tmp_path / "rows.tsv")
    assert json.loads((tmp_path / "rows.csv.summary.json").read_text())[0]["video"] == str(files["clip"])
    assert json.loads((tmp_path / "rows.tsv.summary.json").read_text())[0]["video"] == str(files["empty"])
    # photos only into rows.csv: its rows are new, the summary of the clip's rows would be stale
    photo = tmp_path / "head.png"
    head(80).save(photo)
    predict(photo, csv=tmp_path / "rows.csv")
    assert not (tmp_path / "rows.csv.summary.json").exists() and (tmp_path / "rows.tsv.summary.json").exists()


def test_a_csv_whose_summarys_temp_name_is_too_long_is_refused_before_the_work(files, tmp_path):
    # 230 bytes: rows and summary names fit (243), the summary's temp file (.NAME.PID.random.tmp)
    # did not, and the run failed after predicting every frame
    csv = tmp_path / ("r" * 226 + ".csv")
    result = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--csv", str(csv)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and not csv.exists()
    assert "the name is too long for the temporary file poi writes first" in lines[0] and ".summary.json" in lines[0]


def test_an_interrupted_video_run_writes_the_summaries_of_the_rows_it_kept(files, predictor, tmp_path, monkeypatch):
    """Ctrl-C wrote no summary: a finished video's was lost, and an earlier run's stayed beside
    the new rows (and in --save-vis, beside the new, shorter annotated video)."""
    from poi_cli.deploy.pipeline import expand_inputs
    from poi_cli.deploy.predict import INTERRUPTED, predict_files

    original = predictor.iter_predictions

    def stopped_in_the_second_video(*args, **kwargs):
        for prediction in original(*args, **kwargs):
            if prediction.source == str(files["clip"]) and prediction.frame == 8:
                raise KeyboardInterrupt
            yield prediction

    monkeypatch.setattr(predictor, "iter_predictions", stopped_in_the_second_video)
    out, vis = tmp_path / "rows.csv", tmp_path / "vis"
    run = predict_files(predictor, expand_inputs([str(files["empty"]), str(files["clip"])]), csv_file=out,
                        save_vis=vis, progress=False, video=VideoOptions(VideoSampling(fps=5)))
    assert run.interrupted
    beside = {s["video"]: s for s in json.loads(Path(f"{out}.summary.json").read_text())}
    assert beside[str(files["empty"])]["frames"] == 3 and beside[str(files["empty"])]["stopped"] is None
    assert beside[str(files["clip"])]["frames"] == 4 and beside[str(files["clip"])]["stopped"] == INTERRUPTED
    assert json.loads((vis / "clip_summary.json").read_text())["stopped"] == INTERRUPTED
    assert len(pd.read_csv(out).drop_duplicates(["image", "frame"])) == 3 + 4  # the rows the summaries describe

    # stopped before the second video's first frame: the first was read to its end (it was said
    # to be interrupted, being the last input with rows)
    def stopped_at_the_second_videos_start(*args, **kwargs):
        for prediction in original(*args, **kwargs):
            if prediction.source == str(files["clip"]):
                raise KeyboardInterrupt
            yield prediction

    monkeypatch.setattr(predictor, "iter_predictions", stopped_at_the_second_videos_start)
    run = predict_files(predictor, expand_inputs([str(files["empty"]), str(files["clip"])]), csv_file=out,
                        progress=False, video=VideoOptions(VideoSampling(fps=5)))
    (only,) = json.loads(Path(f"{out}.summary.json").read_text())
    assert run.interrupted and only["video"] == str(files["empty"]) and only["stopped"] is None


def test_two_runs_into_one_save_vis_folder_are_one_at_a_time(files, tmp_path):
    # both wrote face_poi.png and one silently replaced the other's
    from poi_cli.core.locks import claim

    vis = tmp_path / "vis"
    with claim(vis, "--save-vis", inside=True):  # another run holds it
        busy = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--save-vis", str(vis)])
    lines = busy.stderr.strip().splitlines()
    assert busy.exit_code == 1 and len(lines) == 1 and "is being written by" in lines[0]
    assert not vis.exists()  # the refused run wrote nothing, and the holder took the folder it made for its lock
    done = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--fps", "5",
                               "--save-vis", str(vis)])
    assert done.exit_code == 0 and "clip_poi.mp4" in [p.name for p in vis.iterdir()]
    assert not any(p.name.endswith(".lock") for p in vis.iterdir())
    # claimed once nothing refuses the run: a refused run made the folder for its lock and left it
    refused = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(tmp_path / "no.onnx"),
                                  "--save-vis", str(tmp_path / "new")])
    assert refused.exit_code == 1 and not (tmp_path / "new").exists()
    # a dangling link is not followed (the claim made its target, folders included)
    (tmp_path / "dangling").symlink_to(tmp_path / "target" / "deep")
    linked = runner.invoke(app, ["predict", str(files["clip"]), "--model", str(files["ck"]), "--fps", "5",
                                 "--save-vis", str(tmp_path / "dangling")])
    assert linked.exit_code == 0 and "no pictures, the folder cannot be made" in " ".join(linked.stderr.split())
    assert not (tmp_path / "target").exists()


def test_no_detect_predicts_a_face_crop_that_mtcnn_misses(files, predictor, tmp_path):
    # A tight crop of the face, as face datasets ship them: the face fills the picture.
    crop = Image.fromarray(skimage_data.astronaut()).crop((195, 90, 260, 165)).resize((48, 48))
    path = tmp_path / "crop.png"
    crop.save(path)
    detected = predictor.predict_records(path)
    assert [r["status"] for r in detected] == ["no_face"]  # the premise: MTCNN misses it
    result = runner.invoke(app, ["predict", str(path), "--model", str(files["ck"]), "--no-detect", "--json"])
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["status"] == "ok" and record["detector"] == "none" and record["landmarks"] is None
    assert record["box"] == [0, 0, 48, 48]
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # the face is resized whole, as prepare stores cropped faces, then run through the model
    aligned = Predictor(open_runner(files["ck"]), detect=False)
    face = aligned._align(crop, whole_image_face(crop))
    assert face.shape == (64, 64, 3) and np.array_equal(face, np.asarray(crop.resize((64, 64), Image.BILINEAR)))


def test_no_detect_labels_no_blank_picture(files, tmp_path):
    # A face release's failed alignments are black files; a black frame of a fade: no face to label.
    Image.new("RGB", (48, 48)).save(tmp_path / "black.png")
    Image.new("RGB", (48, 48), (90, 90, 90)).save(tmp_path / "grey.png")
    crop = Image.fromarray(skimage_data.astronaut()).crop((195, 90, 260, 165)).resize((48, 48))
    crop.save(tmp_path / "crop.png")
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(files["ck"]), "--no-detect", "--json"])
    assert result.exit_code == 0, result.stderr
    records = {Path(r["image"]).name: r for r in json.loads(result.stdout)}
    for name in ("black.png", "grey.png"):
        assert records[name]["status"] == "no_face" and records[name]["expression"] is None
        assert records[name]["reason"] == "blank image: every pixel is the same colour"
        assert records[name]["detector"] == "none"  # no detector ran
    assert records["crop.png"]["status"] == "ok"


@pytest.mark.parametrize("workers", [0, 2])  # the sequential path and the overlapped one
def test_a_blank_photo_is_never_shown_to_the_detector(files, tmp_path, workers):
    shown = []

    class RecordingDetector:  # finds no face, and remembers the size of every image it was shown
        name = "recording"

        def detect(self, images):
            shown.extend(image.size for image in images)
            return [[] for _ in images]

    Image.new("RGB", (40, 30)).save(tmp_path / "black.png")
    Image.fromarray(skimage_data.astronaut()).resize((64, 64)).save(tmp_path / "photo.png")
    predictor = Predictor(open_runner(files["ck"]), detector=RecordingDetector(), workers=workers)
    records = {Path(r.image).name: r for p in predictor.iter_predictions(sorted(tmp_path.iterdir())) for r in p.records}
    assert shown == [(64, 64)]  # the photo only
    assert records["black.png"].status == "no_face" and records["black.png"].reason == "blank image: every pixel is the same colour"
    assert records["photo.png"].reason == "no face detected"


def test_five_faces_give_five_au_panels(files, predictor, monkeypatch):
    face = head(60)
    photo = Image.new("RGB", (5 * 80, 100), (200, 200, 200))
    for k in range(5):
        photo.paste(face, (10 + 80 * k, 15))
    records = [r for p in predictor.iter_predictions(photo, show_au=True) for r in p.records]
    assert [r.status for r in records] == ["ok"] * 5
    drawn = []
    draw = drawing.draw_au_panel
    monkeypatch.setattr(drawing, "draw_au_panel", lambda record: drawn.append(record.face) or draw(record))
    picture = drawing.render(ImagePrediction("five.png", photo, records), show_au=True)
    assert sorted(drawn) == [0, 1, 2, 3, 4]
    panel = draw(records[0])
    per_column = max(1, 100 // panel.height)
    assert picture.width == 400 + math.ceil(5 / per_column) * panel.width


def test_tracker_keeps_an_id_through_a_short_loss_and_smoothing_follows_its_time_constant():
    tracker = IoUTracker(max_gap=0.5)
    assert tracker.update([[0, 0, 10, 10], [50, 50, 60, 60]], 0.0) == [0, 1]
    assert tracker.update([[51, 50, 61, 60]], 0.1) == [1]  # face 0 lost
    assert tracker.update([[1, 0, 11, 10], [52, 50, 62, 60]], 0.4) == [0, 1]  # back within 0.5 s: same id
    assert tracker.update([[1, 0, 11, 10]], 1.2) == [2]  # lost for 0.8 s: a new face
    smoother = TrackSmoother(1.0)
    assert np.allclose(smoother.update(0, 0.0, [1.0, 0.0]), [1.0, 0.0])
    assert np.allclose(smoother.update(0, 1.0, [0.0, 1.0]), [math.exp(-1), 1 - math.exp(-1)])
    # the time constant divides the gap: 2 s, after 1 s the new frame weighs 1 - exp(-1/2)
    slow = TrackSmoother(2.0)
    slow.update(0, 0.0, [1.0, 0.0])
    assert np.allclose(slow.update(0, 1.0, [0.0, 1.0]), [math.exp(-0.5), 1 - math.exp(-0.5)])


def test_tracker_edges_and_one_box_per_track_one_track_per_box():
    tracker = IoUTracker(max_gap=0.5)
    assert tracker.update([[0, 0, 10, 10]], 0.0) == [0]
    assert tracker.update([[0, 0, 10, 3]], 0.25) == [0]  # IoU exactly 0.3 (30 / 100): at least min_iou joins
    assert tracker.update([[0, 0, 10, 3]], 0.75) == [0]  # lost for exactly max_gap: still the same face
    # two boxes on one track: the better one takes it, the other is a new face
    tracker = IoUTracker()
    tracker.update([[0, 0, 10, 10]], 0.0)
    assert tracker.update([[0, 0, 10, 10], [1, 0, 11, 10]], 0.1) == [0, 1]
    # one box over two tracks: it joins the one it overlaps most (IoU 0.82 against 0.43), once
    tracker = IoUTracker()
    assert tracker.update([[0, 0, 10, 10], [5, 0, 15, 10]], 0.0) == [0, 1]
    assert tracker.update([[1, 0, 11, 10]], 0.1) == [0]
