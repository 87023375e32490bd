"""Small hand-computed checks of deploy/serve.py (limits, the micro-batcher, uploads, the
request path driven in-process through the ASGI app), deploy/predict.py (model choice,
PredictRun, predict_files), deploy/visualize.py, deploy/drawing.py and deploy/overlap.py:
each pins one behaviour a mutation audit found unguarded.

No server is started and no model is loaded: the app is called as an ASGI callable with a
fake predictor, the batcher and the overlapped pipeline are fed fakes. Every module here
imports neither torch nor pandas, so the tests are marked `deploy` (.venv-deploy runs them).
"""

from __future__ import annotations

import asyncio
import io
import json
import queue
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from poi_cli.data import faces
from poi_cli.deploy import overlap, serve
from poi_cli.deploy import predict as predict_module
from poi_cli.deploy.drawing import BOX_COLOUR, _label, draw_faces, place_panels, render
from poi_cli.deploy.pipeline import ImagePrediction
from poi_cli.deploy.predict import (KEEP_IMAGES, PredictError, PredictRun, is_bundled, open_onnx_model, predict_files,
                                    resolve_model)
from poi_cli.deploy.records import FaceRecord, VideoPosition
from poi_cli.deploy.serve import MicroBatcher, ServeError, ServeLimits, Upload, _Job, create_app
from poi_cli.deploy.video import FramePrediction
from poi_cli.deploy.visualize import VisWriter

pytestmark = pytest.mark.deploy
MiB = serve.MiB


def _png(size, mode="RGB", value=(9, 9, 9)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded(data: bytes, decode_side: int = 300) -> Upload:
    upload = Upload("x.png", io.BytesIO(data))
    serve.probe_upload(upload)
    serve.decode_upload(upload, decode_side)
    return upload


# ------------------------------------------------------------------------ ServeLimits


def test_limits_at_their_bounds_are_accepted():
    # guards: max_pixels == faces.MAX_PIXELS, a body as large as the server buffer, a body
    # timeout of exactly 1 s and decode_side == 2 x MIN_SIDE are valid (strict comparisons)
    assert ServeLimits(max_pixels=faces.MAX_PIXELS).max_pixels == 100_000_000
    limits = ServeLimits(max_request_bytes=256 * MiB)  # the client share defaults to the body: 256 MiB
    assert limits.max_client_buffered_bytes == 256 * MiB
    assert ServeLimits(body_timeout_s=1).body_timeout_s == 1
    assert ServeLimits(decode_side=32).decode_side == 32


def test_limits_out_of_range_are_refused():
    # guards: zero is not a positive limit; the client share is at most the server's buffer;
    # decode_side under 2 x MIN_SIDE (32) is refused
    with pytest.raises(ServeError, match="^serve limit max_files must be positive and finite, got 0$"):
        ServeLimits(max_files=0)
    with pytest.raises(ServeError, match="--max-client-mb must lie between"):
        ServeLimits(max_client_buffered_bytes=300 * MiB)
    with pytest.raises(ServeError, match="^serve limit decode_side must be at least 32, got 31$"):
        ServeLimits(decode_side=31)


def test_keep_alive_under_half_a_second_is_one_second_not_zero():
    # guards: max(1, round(keep_alive_s)): round(0.3) is 0, which uvicorn takes as no keep-alive wait at all
    pytest.importorskip("uvicorn")
    assert serve.uvicorn_config(object(), ServeLimits(keep_alive_s=0.3)).timeout_keep_alive == 1


def test_a_boolean_port_is_not_port_1():
    # guards: isinstance(port, bool) (True is an int: it tried to bind port 1)
    with pytest.raises(ServeError, match=r"^--port True is not a TCP port \(1-65535\)$"):
        serve.listen_socket("127.0.0.1", True)


# ----------------------------------------------------------------------- MicroBatcher


class _FakeModel:
    """The predictor a MicroBatcher drives: one record per image naming its width and the detect flag seen."""

    def __init__(self, fail: bool = False) -> None:
        self.detect, self.fail, self.calls = True, fail, []

    def iter_predictions(self, images, show_au, keep_images=True):
        self.calls.append((self.detect, show_au, [image.width for image in images]))
        if self.fail:
            raise ValueError("boom")
        for image in images:
            yield SimpleNamespace(records=[FaceRecord(f"w{image.width}", "ok", detector=str(self.detect))])


def _idle_batcher(model, **limits) -> MicroBatcher:
    """A MicroBatcher without its thread: a test calls _take_batch / _serve itself."""
    batcher = MicroBatcher.__new__(MicroBatcher)
    batcher.predictor, batcher.limits, batcher.jobs = model, ServeLimits(**limits), queue.Queue()
    batcher.calls, batcher.pixels_since_trim, batcher.default_detect = 0, 0, model.detect
    return batcher


def _job(*widths, show_au=False, detect=True) -> _Job:
    return _Job([Image.new("RGB", (w, 8)) for w in widths], show_au, Future(), detect)


def test_a_batch_stops_taking_jobs_at_batch_images_and_on_the_stop_sentinel():
    # guards: `count < batch_images` (a full first job takes no other); None returns stop=True
    batcher = _idle_batcher(_FakeModel(), batch_images=2, batch_wait_s=0.05)
    first, second = _job(10, 11), _job(12)
    batcher.jobs.put(second)
    assert batcher._take_batch(first) == ([first], False)
    batcher.jobs, third = queue.Queue(), _job(13)
    batcher.jobs.put(None)
    assert batcher._take_batch(third) == ([third], True)


def test_a_batch_runs_each_detect_flag_apart_and_answers_each_request_its_own_images():
    # guards: the (show_au, detect) grouping, the per-request split of the records (current
    # reset after each request), and the detect flag put back after the batch
    model = _FakeModel()
    batcher = _idle_batcher(model, batch_images=32, batch_wait_s=0.001)
    a, b, c = _job(10, 11), _job(12), _job(13, detect=False)
    batcher.jobs.put(b)
    batcher.jobs.put(c)
    assert batcher._serve(a) is False
    assert model.calls == [(True, False, [10, 11, 12]), (False, False, [13])]
    assert [[r["image"] for r in per_image] for per_image in a.future.result(0)] == [["w10"], ["w11"]]
    assert [[r["image"] for r in per_image] for per_image in b.future.result(0)] == [["w12"]]
    assert c.future.result(0)[0][0]["detector"] == "False" and model.detect is True


def test_a_model_failure_fails_the_requests_of_its_batch_not_the_batcher():
    # guards: the except branch: every pending request gets a RuntimeError naming the error (it killed the thread)
    model = _FakeModel(fail=True)
    batcher = _idle_batcher(model)
    job = _job(10)
    batcher._run([job], False, True)
    with pytest.raises(RuntimeError, match="^ValueError: boom$"):
        job.future.result(0)


# ---------------------------------------------------------------------------- uploads


def test_an_upload_name_loses_c1_controls_and_is_cut_at_200_characters():
    # guards: the \x7f-\x9f range (DEL and C1 controls such as \x85, a line break to some
    # terminals) and the 200-character cap
    assert serve._safe_name("a\x85b\x7f.png", 0) == "a_b_.png"
    assert serve._safe_name("x" * 300 + ".png", 3) == "x" * 200


def test_shrunk_size_rounds_and_keeps_min_side():
    # 3000 x 2001 to 2560: scale 2560/3000, 2001 * 0.8533 = 1707.52 -> 1708 (rounded, not cut)
    assert serve.shrunk_size((3000, 2001), 2560) == (2560, 1708)
    # 6000 x 20: 2560/6000 would leave 8.5 px; the shorter side is kept at MIN_SIDE: scale 16/20
    assert serve.shrunk_size((6000, 20), 2560) == (4800, 16)


def test_probe_reads_width_times_height_and_calls_an_empty_file_empty():
    # guards: pixels = width x height (a width-squared slipped by square test images)
    upload = Upload("a.png", io.BytesIO(_png((30, 20))))
    serve.probe_upload(upload)
    assert (upload.size, upload.pixels, upload.error) == ((30, 20), 600, None)
    empty = Upload("e.png", io.BytesIO(b""))
    serve.probe_upload(empty)
    assert empty.error == "empty file (0 bytes)"


@pytest.mark.parametrize("size, kept, scale", [
    # longer side 400 > 300 although the shorter (100) is not: shrunk by 3/4
    ((400, 100), (300, 75), (400 / 300, 100 / 75)),
    # 650: a 1/3 reduce gives 217 < 3/4 x 300, so 1/2 (325), then resized to 300
    ((650, 650), (300, 300), (650 / 300, 650 / 300)),
    # 650 x 400 -> 325 x 200 -> 300 x round(184.6) = 185: x and y scales differ
    ((650, 400), (300, 185), (650 / 300, 400 / 185)),
    # 20 px high: no reduce below MIN_SIDE (20 // 16 = 1), resized to keep 16 px
    ((3000, 20), (2400, 16), (1.25, 1.25)),
    # 1000 x 999 reduced by 4 is 250 x 250: not turned (comparing the sides' order said it was and
    # swapped the scales, a box reaching 1000 px down a 999-px image)
    ((1000, 999), (250, 250), (4.0, 999 / 250)),
])
def test_a_large_upload_is_decoded_to_the_kept_size_with_its_scale(size, kept, scale):
    # guards: max (not min) side against decode_side, the reduce factor's step back, the
    # MIN_SIDE cap on the factor, the final resize, and the x/y order of the scale
    upload = _decoded(_png(size))
    assert upload.error is None and upload.image.size == kept
    assert upload.scale == pytest.approx(scale, abs=1e-12)


def test_a_large_upload_turned_by_its_exif_orientation_has_its_scales_swapped():
    # stored 1000 x 999 with orientation 6 (upright 999 x 1000), kept 250 x 250: x is the stored height
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 999), (9, 9, 9)).save(buffer, format="PNG", exif=exif)
    upload = _decoded(buffer.getvalue())
    assert upload.image.size == (250, 250) and upload.scale == pytest.approx((999 / 250, 4.0), abs=1e-12)


def test_a_large_upload_with_a_side_under_min_side_is_refused_as_the_loader_does():
    # guards: the MIN_SIDE check of _decode_shrunk (a 700 x 10 strip went to the model)
    assert _decoded(_png((700, 10), value=(1, 2, 3))).error == "image too small: 700x10 (minimum 16 px per side)"


def test_a_large_16_bit_grey_upload_is_scaled_as_the_loader_scales_it():
    # guards: _reduce's 255 / 65535 scaling: 32768 -> 127.5 -> 128 (without it every pixel clipped to 255)
    buffer = io.BytesIO()
    Image.fromarray(np.full((640, 640), 32768, np.uint16)).save(buffer, format="PNG")
    upload = _decoded(buffer.getvalue())
    assert upload.image.size == (300, 300) and np.unique(np.asarray(upload.image)).tolist() == [128]


def test_scale_record_scales_x_by_sx_and_y_by_sy():
    # guards: the box's and the landmarks' y use sy (the tests' scales were equal)
    record = {"box": [1.0, 2.0, 3.0, 4.0], "landmarks": [[1.0, 2.0], [5.0, 6.0]]}
    assert serve.scale_record(record, (2.0, 3.0)) == {"box": [2.0, 6.0, 6.0, 12.0],
                                                      "landmarks": [[2.0, 6.0], [10.0, 18.0]]}


# ------------------------------------------------------------------ model card, docs page


def test_model_card_keeps_a_metadata_string_that_is_not_json():
    # guards: _meta_value returns the raw string when it is no JSON (a dataset name), parses it when it is
    runner = SimpleNamespace(meta={"dataset": "ferplus8", "epoch": "12", "arch": "\"resnet10\""})
    predictor = SimpleNamespace(runner=runner, model_path=Path("m.onnx"), backend="onnx", classes=["a", "b"],
                                preprocessing=SimpleNamespace(input_size=64, face_size=64, grayscale=False),
                                has_pin=False, has_aus=False, calibration_temperature=1.5, notes=[])
    card = serve.model_card(predictor)["card"]
    assert (card["dataset"], card["epoch"], card["arch"]) == ("ferplus8", 12, "resnet10")


def test_api_page_escapes_what_the_schema_says():
    # guards: every schema text is HTML-escaped (a parameter description with markup)
    schema = {"info": {"title": "t"}, "paths": {"/p": {"get": {"parameters": [
        {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "<b>bold</b>"}]}}}}
    page = serve.api_page(schema)
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>" not in page


# ----------------------------------------------------------- the request path, in-process


class _FakePredictor(_FakeModel):
    """What create_app reads of a Predictor; one record per image, its box the decoded image."""

    backend, classes, model_path = "onnx", ("happiness", "neutral"), Path("m.onnx")
    preprocessing = SimpleNamespace(input_size=64, face_size=64, grayscale=False)
    has_pin = has_aus = False
    calibration_temperature, notes = 1.0, ()
    runner = SimpleNamespace(meta={})

    def iter_predictions(self, images, show_au, keep_images=True):
        for image in images:
            yield SimpleNamespace(records=[FaceRecord("?", "ok", face=0, box=[0.0, 0.0, image.width, image.height])])


def _multipart(*files: tuple[str, bytes]) -> bytes:
    parts = b"".join(b'--B\r\nContent-Disposition: form-data; name="files"; filename="' + name.encode() + b'"\r\n\r\n'
                     + data + b"\r\n" for name, data in files)
    return parts + b"--B--\r\n"


def _post(app, body: bytes, client: str = "10.0.0.1") -> tuple[int, object]:
    """POST /predict through the ASGI app itself (no socket, no server): (status, JSON)."""
    headers = [(b"content-type", b"multipart/form-data; boundary=B"), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "", "headers": headers,
             "client": (client, 5000), "server": ("test", 80)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.fixture
def make_app():
    pytest.importorskip("fastapi")
    apps = []

    def make(**limits):
        app = create_app(_FakePredictor(), ServeLimits(batch_wait_s=0.001, **limits))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.batcher.close()


def test_a_body_exactly_at_the_byte_limits_is_served_and_given_back(make_app):
    # guards: Content-Length == max_request_bytes is not a 413, a client's bodies summing to
    # exactly its share are not a 503, and the body is given back once (buffered_bytes 0, not negative)
    body = _multipart(("a.png", _png((20, 20))))
    app = make_app(max_request_bytes=len(body), max_client_buffered_bytes=len(body))
    status, answer = _post(app, body)
    assert status == 200, answer
    assert app.state.serve_state["buffered_bytes"] == 0 and app.state.serve_state["in_flight"] == 0
    status, answer = _post(app, _multipart(("a.png", _png((20, 20)))) + b"x")  # one byte over
    assert status == 413 and answer["detail"] == f"request body of {len(body) + 1} bytes; the limit is {len(body)}"
    assert app.state.serve_state["in_flight"] == 0  # a refused body never counted as in flight


def test_exactly_max_files_and_exactly_the_pixel_limits_are_served(make_app):
    # guards: len(files) > max_files (2 of 2 served), pixels > max_pixels (30 x 20 = 600 of
    # 600), total > max_request_pixels (600 + 400 = 1000 of 1000)
    app = make_app(max_files=2, max_pixels=600, max_request_pixels=1000)
    status, answer = _post(app, _multipart(("a.png", _png((30, 20))), ("b.png", _png((20, 20)))))
    assert status == 200, answer
    assert [(r["image"], r["box"]) for r in answer] == [("a.png", [0.0, 0.0, 30.0, 20.0]),
                                                        ("b.png", [0.0, 0.0, 20.0, 20.0])]
    three = _multipart(*[("c.png", _png((10, 10)))] * 3)
    assert _post(app, three) == (400, {"detail": "more than 2 files in one request"})
    assert _post(app, _multipart(("d.png", _png((31, 20)))))[0] == 413  # 620 pixels


def test_the_in_flight_limit_refuses_at_max_in_flight(make_app):
    # guards: in_flight >= max_in_flight is a 429 (with `>` one request more got in)
    app = make_app(max_in_flight=3)
    app.state.serve_state["in_flight"] = 3  # as if three requests were being predicted
    status, answer = _post(app, _multipart(("a.png", _png((20, 20)))))
    assert (status, answer["detail"]) == (429, "3 requests in flight (limit 3); retry later")
    assert app.state.serve_state["in_flight"] == 3


def test_a_request_over_the_pixel_budget_is_admitted_when_nothing_else_is_in_flight(make_app):
    # guards: `busy and ...`: a lone request larger than max_pixels_in_flight (600 > 500) is
    # served (it would otherwise be a 503 "retry later" for ever)
    app = make_app(max_pixels_in_flight=500)
    status, answer = _post(app, _multipart(("a.png", _png((30, 20)))))
    assert status == 200, answer
    assert app.state.serve_state["pixels_in_flight"] == 0


def test_a_shrunk_uploads_box_is_answered_in_its_own_pixels(make_app):
    # 80 x 40 at decode_side 32: reduced by 2 (40 x 20, the shorter side kept >= 16), resized
    # to 32 x 16: scale 2.5; the box found on the whole kept image is the whole 80 x 40 original
    app = make_app(decode_side=32)
    status, answer = _post(app, _multipart(("big.png", _png((80, 40)))))
    assert status == 200 and answer[0]["box"] == [0.0, 0.0, 80.0, 40.0], answer


def test_a_client_that_is_done_leaves_no_entry_in_the_per_client_table(make_app):
    # guards: the empty per-client entry is deleted (one entry per address ever seen, for ever, on a public server)
    import inspect

    app = make_app()
    for n in range(3):
        assert _post(app, _multipart(("a.png", _png((20, 20)))), client=f"10.0.0.{n}")[0] == 200
    predict_route = next(route for route in app.routes if getattr(route, "path", "") == "/predict")
    release_body = inspect.getclosurevars(predict_route.endpoint).nonlocals["release_body"]
    assert inspect.getclosurevars(release_body).nonlocals["client_bytes"] == {}


# ------------------------------------------------------------------------- predict.py


@pytest.fixture
def weights(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    (folder / "mtcnn").mkdir(parents=True)
    monkeypatch.setattr(predict_module, "BUNDLED_DIR", folder)
    monkeypatch.delenv(predict_module.MODEL_ENV, raising=False)
    return folder


def test_is_bundled_is_the_weights_folder_itself_not_its_mtcnn(weights):
    # guards: parent == BUNDLED_DIR (the detector's weights under mtcnn/ are no model)
    (weights / "m.onnx").write_bytes(b"")
    assert is_bundled(weights / "m.onnx") and not is_bundled(weights / "mtcnn" / "pnet.onnx")


def test_resolve_model_falls_back_to_the_other_suffix(weights):
    # guards: a torch backend asking for .pt gets the bundled .onnx when only it is there
    (weights / "m.onnx").write_bytes(b"")
    assert resolve_model(None, ".pt") == weights / "m.onnx"


def test_an_empty_model_name_is_refused_not_read_as_the_bundled_model(weights):
    # guards: the empty-name check ("" fell through to $POI_MODEL / the bundled model)
    (weights / "m.onnx").write_bytes(b"")
    with pytest.raises(PredictError, match="^model: an empty name"):
        open_onnx_model("")


def test_an_upper_case_onnx_suffix_is_read_as_onnx_not_refused_as_torch(tmp_path):
    # guards: .lower() on the suffix: M.ONNX was refused as "a PyTorch checkpoint or run folder"
    model = tmp_path / "M.ONNX"
    model.write_bytes(b"not a model")
    with pytest.raises(PredictError) as caught:
        open_onnx_model(model)
    assert "PyTorch" not in str(caught.value) and "M.ONNX" in str(caught.value)


def test_predict_run_counts_and_words():
    # guards: images leave the videos out; an empty run is not "none readable"; "1 input", singular
    run = PredictRun(statuses={"a.jpg": {"ok"}, "clip.mp4": {"ok"}}, videos={"clip.mp4"})
    assert (run.inputs, run.images) == (2, 1)
    assert PredictRun().none_readable is False
    assert PredictRun(statuses={"a.jpg": {"ok"}}).kept == "1 input"


def _frame_records(source: str, frame: int, expression: str) -> FaceRecord:
    return FaceRecord(source, "ok", face=0, expression=expression, video=VideoPosition(frame, frame / 10, 1))


def test_predict_files_keeps_the_first_record_and_only_the_images_records(tmp_path):
    # guards: run.first is the first record (not the last); KEEP_IMAGES drops the video's
    # records; an interrupted run marks only the video not read to its end
    photo = FaceRecord("a.jpg", "ok", face=0, expression="happiness")
    predictions = [ImagePrediction("a.jpg", None, [photo]),
                   FramePrediction("done.mp4", None, [_frame_records("done.mp4", 0, "neutral")], frame=0, last=True),
                   FramePrediction("cut.mp4", None, [_frame_records("cut.mp4", 0, "neutral")], frame=0)]

    def iter_predictions(items, show_au, progress=False, video=None, keep_images=True):
        yield from predictions
        raise KeyboardInterrupt

    fake = SimpleNamespace(classes=("happiness", "neutral"), iter_predictions=iter_predictions)
    items = [SimpleNamespace(source=s, is_video=s.endswith(".mp4")) for s in ("a.jpg", "done.mp4", "cut.mp4")]
    run = predict_files(fake, items, progress=False, keep=KEEP_IMAGES)
    assert run.interrupted and run.first is photo and run.records == [photo]
    assert {s["video"]: s["stopped"] for s in run.summaries} == {"done.mp4": None, "cut.mp4": "interrupted (Ctrl-C)"}


def test_a_too_long_name_while_writing_a_video_stops_the_pictures(tmp_path, monkeypatch):
    # guards: ENAMETOOLONG skips one picture only for a photo; for a video's frame it stops
    # the pictures with one note (not a note per frame)
    import errno

    from poi_cli.deploy import visualize

    def too_long(self, prediction):
        raise OSError(errno.ENAMETOOLONG, "File name too long")

    monkeypatch.setattr(visualize.VisWriter, "write", too_long)
    frames = [FramePrediction("clip.mp4", None, [_frame_records("clip.mp4", n, "neutral")], frame=n) for n in range(3)]
    fake = SimpleNamespace(classes=("happiness", "neutral"), iter_predictions=lambda *args, **kwargs: iter(frames))
    notes: list[str] = []
    run = predict_files(fake, [SimpleNamespace(source="clip.mp4", is_video=True)], save_vis=tmp_path / "vis",
                        progress=False, note=notes.append)
    assert notes == ["--save-vis stopped: [Errno 36] File name too long"] and run.pictures_in is None


# ----------------------------------------------------------------------- visualize.py


def test_vis_names_number_a_repeated_stem_and_a_broken_symlink(tmp_path):
    # guards: a name used in this run is not given again (x/a.jpg and y/a.jpg), and a broken
    # symlink there counts as a file poi did not write (exists() is False for it: it was replaced)
    writer = VisWriter(tmp_path / "vis")
    assert writer.name("x/a.jpg", "_poi.png").name == "a_poi.png"
    assert writer.name("y/a.jpg", "_poi.png").name == "a_poi2.png"
    (tmp_path / "vis" / "b_poi.png").symlink_to(tmp_path / "nowhere.png")
    assert writer.name("b.jpg", "_poi.png").name == "b_poi2.png"
    assert writer.kept_note().startswith("--save-vis kept 1 file in ")


def test_vis_never_names_the_input_or_a_symlink_to_poi_output(tmp_path):
    # guards: the source itself is avoided (an input that is a link to an earlier picture
    # there), and a symlink to a poi picture is not replaced as poi's own
    from poi_cli.core.atomic import save_image

    vis = tmp_path / "vis"
    writer = VisWriter(vis)
    save_image(Image.new("RGB", (4, 4)), vis / "a_poi.png")  # poi's own earlier picture
    (tmp_path / "a.png").symlink_to(vis / "a_poi.png")  # the input: a link to it
    assert writer.name(str(tmp_path / "a.png"), "_poi.png").name == "a_poi2.png"
    save_image(Image.new("RGB", (4, 4)), tmp_path / "other.png")
    (vis / "c_poi.png").symlink_to(tmp_path / "other.png")
    assert writer.name("c.jpg", "_poi.png").name == "c_poi2.png"


def test_vis_write_counts_its_pictures(tmp_path):
    # guards: written += 1 (a run whose pictures stopped later said "no picture" of a folder holding some)
    writer = VisWriter(tmp_path / "vis")
    record = FaceRecord("a.jpg", "no_face", reason="no face detected")
    path = writer.write(ImagePrediction("a.jpg", Image.new("RGB", (40, 30)), [record]))
    assert path == tmp_path / "vis" / "a_poi.png" and writer.written == 1


def test_a_new_videos_frames_finish_the_previous_video_first(tmp_path, monkeypatch):
    # guards: a frame of another video closes the video being written (its frames went into the first one's file)
    from poi_cli.deploy import visualize

    class Recorder:
        def __init__(self, source, video_path, timeline_path):
            self.source, self.frames, self.closed, self.notes = source, [], False, []
            opened.append(self)

        def write(self, prediction):
            self.frames.append(prediction.frame)

        def close(self):
            self.closed = True

    opened: list = []
    monkeypatch.setattr(visualize, "VideoVisWriter", Recorder)
    writer = VisWriter(tmp_path / "vis")
    for source, frame in [("a.mp4", 0), ("a.mp4", 1), ("b.mp4", 0)]:
        writer.write(FramePrediction(source, None, [], frame=frame))
    assert [(v.source, v.frames, v.closed) for v in opened] == [("a.mp4", [0, 1], True), ("b.mp4", [0], False)]
    assert writer.written == 1


# ------------------------------------------------------------------------- drawing.py


def _face(**changes) -> FaceRecord:
    values = {"image": "a.jpg", "status": "ok", "face": 0, "box": [10.0, 10.0, 90.0, 90.0], "expression": "happiness",
              "probabilities": {"happiness": 0.97, "neutral": 0.03}, "confidence": 0.97}
    values.update(changes)
    return FaceRecord(**values)


def test_a_thin_strip_is_widened_only_up_to_max_stretched_side():
    # guards: the MAX_STRETCHED_SIDE cap: 10 x 3000 is scaled by 4096/3000 (to 14 x 4096), not
    # by MIN_WIDTH/10 = 25.6 (256 x 76800)
    assert draw_faces(Image.new("RGB", (10, 3000)), []).size == (14, 4096)


def test_landmarks_are_drawn_at_the_scaled_position():
    # guards: landmarks scaled with the picture: a 100-px image is drawn at 384 (x 3.84), so
    # (50, 60) lands at (192, 230.4)
    picture = draw_faces(Image.new("RGB", (100, 100)), [_face(box=[0.0, 0.0, 1.0, 1.0], landmarks=[[50.0, 60.0]])])
    assert picture.getpixel((192, 230)) == BOX_COLOUR and picture.getpixel((50, 60)) == (0, 0, 0)


def test_a_video_faces_label_names_its_track():
    # guards: T<track> for a video's face (the face index otherwise), the regions count
    record = _face(video=VideoPosition(5, 0.5, 3), regions_agree=2)
    assert _label(record) == "T3: happiness 97%  regions 2/4"
    assert _label(_face()) == "0: happiness 97%"


def test_au_panels_only_with_show_au():
    # guards: `show_au and faces`: a record carrying AUs gets no panel without --show-au
    image = Image.new("RGB", (400, 400))
    prediction = ImagePrediction("a.jpg", image, [_face(with_au=True, aus={}, regions={})])
    assert render(prediction, show_au=False).size == (400, 400)
    assert render(prediction, show_au=True).width > 400


def test_panels_fill_columns_as_tall_as_the_picture():
    # 300 px high picture, 50 x 100 panels: 3 per column; 4 panels -> 2 columns, the 4th at
    # the top of the second; a picture lower than one panel is made as tall as a panel
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    panels = [Image.new("RGB", (50, 100), c) for c in colours]
    out = place_panels(Image.new("RGB", (100, 300)), panels)
    assert out.size == (200, 300)
    assert [out.getpixel(xy) for xy in [(125, 50), (125, 150), (125, 250), (175, 50)]] == colours
    assert place_panels(Image.new("RGB", (100, 50)), panels[:2]).size == (200, 100)


def test_an_au_bar_is_as_long_as_its_probability():
    # guards: BAR * value: the first eye region's first AU at 0.5 fills x 46..91 of its 90-px
    # bar (x 46..136, rows 38..46), the rest of the bar stays background
    from poi_cli.core.manifests import ALL_AUS, REGION_NAMES
    from poi_cli.deploy.drawing import BACKGROUND, BAR_COLOUR, draw_au_panel

    aus = {au: {region: 0.5 for region in REGION_NAMES} for au in ALL_AUS}
    panel = draw_au_panel(_face(with_au=True, aus=aus, regions={}))
    assert panel.getpixel((70, 42)) == BAR_COLOUR and panel.getpixel((120, 42)) == BACKGROUND


def test_a_label_wider_than_the_picture_starts_at_its_left_edge():
    # guards: max(2.0, ...): a label 500 px wide on a 100-px picture, asked at x = 50, is drawn
    # at x = 2 (its end cut), not at 100 - 500 - 5 = -405 (its start, the face's name, cut)
    from poi_cli.deploy.drawing import _text_box

    class Draw:  # textbbox: a 500 x 10 text at xy; records where the text goes
        def __init__(self):
            self.texts = []

        def textbbox(self, xy, text, font=None):
            return (xy[0], xy[1], xy[0] + 500, xy[1] + 10)

        def rectangle(self, box, fill=None):
            pass

        def text(self, xy, text, fill=None, font=None):
            self.texts.append(xy)

    draw = Draw()
    _text_box(draw, (50.0, 5.0), "label", None, 100)
    _text_box(draw, (50.0, 5.0), "label", None, 1000)  # fits: stays at 50
    assert draw.texts == [(2.0, 5.0), (50.0, 5.0)]

# ------------------------------------------------------------------------- overlap.py


class _SyncPool:
    """A ThreadPoolExecutor stand-in that runs each job at once: every future is done, so the
    batches depend on the counts alone."""

    def __init__(self, max_workers=None, thread_name_prefix=""):
        pass

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


class _Pipeline:
    def __init__(self, batch_size, images_per_batch, faces_per_image, side=20, detect=True):
        self.batch_size, self.images_per_batch, self.detect = batch_size, images_per_batch, detect
        self.detector, self.faces_per_image, self.side = "the detector", faces_per_image, side
        self.batches, self.detectors = [], []

    def prepare_image(self, item, detector, keep_images):
        self.detectors.append(detector)
        image = Image.new("RGB", (self.side, self.side)) if keep_images else None
        return SimpleNamespace(source=item, crops=[0] * self.faces_per_image, image=image)

    def finish(self, batch, show_au):
        self.batches.append(len(batch))
        return [prepared.source for prepared in batch]


@pytest.mark.parametrize("batch_size, images_per_batch, faces_per_image, batches", [
    (2, 8, 1, [2, 2, 1]),  # a batch runs when its faces reach batch_size (2), not past it
    (2, 3, 0, [3, 2]),  # faceless images: at most max(batch_size, images_per_batch) = 3 per batch
])
def test_overlapped_batches_by_faces_and_images(monkeypatch, batch_size, images_per_batch, faces_per_image, batches):
    monkeypatch.setattr(overlap, "ThreadPoolExecutor", _SyncPool)
    pipeline = _Pipeline(batch_size, images_per_batch, faces_per_image)
    assert list(overlap.iter_overlapped(pipeline, list("abcde"), False, 1)) == list("abcde")
    assert pipeline.batches == batches


def test_overlapped_batches_hold_few_pixels_and_no_detector_without_detect(monkeypatch):
    # guards: the MAX_HELD_PIXELS cap and its reset after each batch: 20 x 20 = 400 px
    # pictures under a 1000 px cap run 3 at a time (not all 7; not one at a time after the
    # first batch), and detect=False hands the workers no detector
    monkeypatch.setattr(overlap, "ThreadPoolExecutor", _SyncPool)
    monkeypatch.setattr(overlap, "MAX_HELD_PIXELS", 1000)
    pipeline = _Pipeline(32, 8, 0, detect=False)
    assert list(overlap.iter_overlapped(pipeline, list("abcdefg"), False, 1, keep_images=True)) == list("abcdefg")
    assert pipeline.batches == [3, 3, 1] and pipeline.detectors == [None] * 7


def test_a_consumer_that_stops_early_cancels_the_images_not_started():
    # guards: shutdown(cancel_futures=True): with one worker taking 100 ms an image, closing the
    # generator after the first image leaves at most the one being prepared to finish (not the
    # whole window of 4 queued behind it)
    import time

    pipeline = _Pipeline(32, 8, 0)
    prepared = []
    prepare = pipeline.prepare_image

    def slow(item, detector, keep_images):
        time.sleep(0.1)
        prepared.append(item)
        return prepare(item, detector, keep_images)

    pipeline.prepare_image = slow
    stream = overlap.iter_overlapped(pipeline, list("abcdefghij"), False, 1, keep_images=False)
    assert next(stream) == "a"
    stream.close()
    assert len(prepared) <= 3, prepared
