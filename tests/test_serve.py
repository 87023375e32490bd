"""`poi serve`: a real HTTP server on a free loopback port, started and stopped here.

The server's record for an upload is the CLI's record for the same file; a corrupt
upload is a 400 and the server keeps serving; limits answer with a status and a
one-line JSON reason (413 too large, 408 a body that does not arrive, 503 the pixel
budget, 422 a bad query value); a large image is shrunk on decoding with its boxes in
its own pixels; stalled clients hold no slot; concurrent requests share model calls.
The server runs the deploy runtime (the bundled .onnx model): no torch here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from PIL import Image
from skimage import data as skimage_data
from typer.testing import CliRunner

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from conftest import numbers_of  # noqa: E402
from poi_cli.cli import app as cli_app  # noqa: E402
from poi_cli.deploy import serve as serve_module  # noqa: E402
from poi_cli.deploy.predict import Predictor  # noqa: E402
from poi_cli.deploy.records import FaceRecord  # noqa: E402
from poi_cli.deploy.serve import (MicroBatcher, ServeError, ServeLimits, create_app, exposure_warning,  # noqa: E402
                                  model_card, serve, uvicorn_config)

# The detector every server and CLI run here uses: "mtcnn" (ONNX Runtime, the default);
# "mtcnn-torch" while data/mtcnn.py is missing. Switch it here only.
DETECTOR = "mtcnn" if (Path(serve_module.__file__).parents[1] / "data" / "mtcnn.py").is_file() else "mtcnn-torch"
ROOT = Path(__file__).resolve().parents[1]
LIMITS = ServeLimits(max_request_bytes=1_500_000, max_pixels=400_000, max_request_pixels=1_000_000, decode_side=300,
                     max_in_flight=6, body_timeout_s=3.0, header_timeout_s=1.5, batch_wait_s=0.3)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR says width x height, with no pixel data (nothing to allocate)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    astronaut = Image.fromarray(skimage_data.astronaut())
    astronaut.resize((256, 256)).save(root / "astronaut.png")
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))
    Image.fromarray(gradient).convert("RGB").save(root / "gradient.png")
    Image.fromarray(np.full((700, 700, 3), 90, np.uint8)).save(root / "big.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    # 600 x 500 stored, EXIF orientation 6 (upright 500 x 600): larger than LIMITS.decode_side
    exif = Image.Exif()
    exif[0x0112] = 6
    astronaut.resize((500, 500)).transpose(Image.Transpose.ROTATE_90).resize((600, 500)).save(
        root / "large.jpg", quality=95, exif=exif.tobytes())
    # over large_image_pixels (4 x 300^2 = 0.36 megapixels), under the image limit (0.4)
    Image.fromarray(np.full((620, 620, 3), 128, np.uint8)).save(root / "large.png")
    for n in range(4):  # 600 x 600 = 0.36 megapixels each: under the image limit, 1.44 in all
        Image.fromarray(np.full((600, 600, 3), 40 * n, np.uint8)).save(root / f"flat{n}.png")
    (root / "huge.png").write_bytes(png_header_only(30000, 30000))
    return {"root": root}


@contextlib.contextmanager
def running_server(limits: ServeLimits):
    """A uvicorn server in a thread on a free 127.0.0.1 port; its base URL and app."""
    app = create_app(Predictor(None, detector=DETECTOR, images_per_batch=limits.batch_images, threads=1), limits)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, limits, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server(files):
    with running_server(LIMITS) as running:
        yield running


def post(url: str, *paths: Path, params: dict | None = None) -> requests.Response:
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return requests.post(f"{url}/predict", files=files, params=params, timeout=60)


def cli_records(folder: Path, monkeypatch, *args: str) -> list:
    monkeypatch.chdir(folder)
    monkeypatch.delenv("POI_MODEL", raising=False)
    result = CliRunner().invoke(cli_app, ["predict", *args, "--json", "--detector", DETECTOR, "--threads", "1"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_same_records(served: list, printed: list) -> None:
    assert len(served) == len(printed)
    for a, b in zip(served, printed):
        assert a.keys() == b.keys()
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or \
            np.allclose(numbers_of(a), numbers_of(b), atol=1e-5)


def test_server_answers_with_the_clis_records(server, files, monkeypatch):
    url, _ = server
    response = post(url, files["root"] / "astronaut.png", files["root"] / "gradient.png", params={"show_au": "true"})
    assert response.status_code == 200, response.text
    served = response.json()
    printed = cli_records(files["root"], monkeypatch, "astronaut.png", "gradient.png", "--show-au")
    assert [r["status"] for r in served] == ["ok", "no_face"]
    assert_same_records(served, printed)


def test_a_record_names_its_upload_as_the_client_named_it(server, files):
    """`image` is the upload's file name: it was rewritten ('photo (1).jpg' -> 'photo _1_.jpg'),
    so a client could not match records to its files; folders and control characters go."""
    url, _ = server
    data = (files["root"] / "gradient.png").read_bytes()
    names = ["photo (1).png", "IMG+0001.png", "me@home é.png", "C:\\Users\\me\\a.png", "x\x1b[31m.png", ""]
    response = requests.post(f"{url}/predict", files=[("files", (n, data, "image/png")) for n in names], timeout=60)
    assert response.status_code == 200, response.text
    assert [r["image"] for r in response.json()] == ["photo (1).png", "IMG+0001.png", "me@home é.png", "a.png",
                                                      "x_[31m.png", "upload5"]


def test_corrupt_upload_is_400_and_the_server_keeps_serving(server, files):
    url, _ = server
    bad = post(url, files["root"] / "corrupt.jpg")
    assert bad.status_code == 400 and "corrupt.jpg" in bad.json()["detail"]
    mixed = post(url, files["root"] / "corrupt.jpg", files["root"] / "astronaut.png")
    assert mixed.status_code == 200 and [r["status"] for r in mixed.json()] == ["error", "ok"]
    assert requests.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    assert post(url, files["root"] / "astronaut.png").status_code == 200


def test_limits_answer_with_a_status_and_a_json_reason(server, files):
    url, _ = server
    empty = requests.post(f"{url}/predict", timeout=10)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    no_files = requests.post(f"{url}/predict", files=[("other", ("a.png", b"x"))], timeout=10)
    assert no_files.status_code == 400 and "files" in no_files.json()["detail"]
    too_many_pixels = post(url, files["root"] / "big.png")  # 700 x 700 > 400,000 pixels
    assert too_many_pixels.status_code == 413 and "megapixels" in too_many_pixels.json()["detail"]
    oversize = requests.post(f"{url}/predict", files=[("files", ("x.png", b"\0" * 2_000_000))], timeout=30)
    assert oversize.status_code == 413 and "limit" in oversize.json()["detail"]


def test_huge_png_header_is_413_with_the_servers_own_limit(server, files):
    """PIL refuses 900 megapixels inside Image.open; the answer still names the server's limit."""
    url, _ = server
    response = post(url, files["root"] / "huge.png")
    detail = response.json()["detail"]
    assert response.status_code == 413, detail
    assert detail == "huge.png: 900.0 megapixels; the limit is 0.4 megapixels per image"


def test_request_pixel_budget_refuses_without_decoding(server, files, monkeypatch):
    """Four images under the per-image limit but over the per-request one: 413 from their
    headers, before any is decoded (defect: 16 large PNGs in one small request took GBs)."""
    url, _ = server
    decoded = []
    original = serve_module.decode_upload

    def counting(upload, *rest):
        decoded.append(getattr(upload, "name", "?"))
        return original(upload, *rest)

    monkeypatch.setattr(serve_module, "decode_upload", counting)
    response = post(url, *(files["root"] / f"flat{n}.png" for n in range(4)))
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == "4 images of 1.4 megapixels in all; the limit is 1.0 megapixels per request"
    assert decoded == []
    two = post(url, files["root"] / "flat0.png", files["root"] / "flat1.png")  # 0.72 megapixels: decoded, predicted
    assert two.status_code == 200 and [r["status"] for r in two.json()] == ["no_face", "no_face"]
    assert decoded == ["flat0.png", "flat1.png"]


def test_pixels_in_flight_budget_answers_503_with_retry_after(server, files):
    url, app = server
    state = app.state.serve_state
    state["pixels_in_flight"] += LIMITS.max_pixels_in_flight  # as if other requests held the whole budget
    try:
        busy = post(url, files["root"] / "astronaut.png")
    finally:
        state["pixels_in_flight"] -= LIMITS.max_pixels_in_flight
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["detail"].startswith("server busy: 200 megapixels of images are being decoded or predicted")
    assert post(url, files["root"] / "astronaut.png").status_code == 200
    health = requests.get(f"{url}/health", timeout=10).json()
    assert health["pixels_in_flight"] == 0 and health["buffered_bytes"] == 0 and health["in_flight"] == 0


def test_large_image_is_shrunk_and_its_boxes_stay_in_its_own_pixels(server, files, monkeypatch):
    """600 x 500 stored, rotated upright by EXIF, over decode_side (300): decoded at 300 px,
    and its box and landmarks are in the upright 500 x 600 image's pixels, as the CLI's."""
    url, _ = server
    upload = serve_module.Upload("large.jpg", io.BytesIO((files["root"] / "large.jpg").read_bytes()))
    serve_module.probe_upload(upload)
    serve_module.decode_upload(upload, LIMITS.decode_side)
    assert upload.size == (600, 500) and upload.image.size == (250, 300) and upload.scale == (2.0, 2.0)
    response = post(url, files["root"] / "large.jpg", params={"no_detect": "true"})
    assert response.status_code == 200, response.text
    assert response.json()[0]["box"] == [0.0, 0.0, 500.0, 600.0]  # the whole upright image
    served = post(url, files["root"] / "large.jpg").json()
    printed = cli_records(files["root"], monkeypatch, "large.jpg")
    assert [r["status"] for r in served] == [r["status"] for r in printed] == ["ok"]
    assert served[0]["expression"] == printed[0]["expression"]
    # found on a 2x smaller image: the landmarks agree within a few pixels of the original,
    # MTCNN's box within a tenth of its size
    assert np.allclose(served[0]["landmarks"], printed[0]["landmarks"], atol=3)
    assert np.allclose(served[0]["box"], printed[0]["box"], atol=12)


def test_a_large_image_is_decoded_in_the_low_priority_lane(server, files, monkeypatch):
    """Images over large_image_pixels are decoded one at a time, in a thread of lower
    priority, so a burst of huge uploads neither multiplies memory nor starves small requests."""
    url, _ = server
    lanes = []
    original = serve_module.decode_upload

    def recording(upload, *rest):
        thread = threading.current_thread()
        lanes.append((upload.name, thread.name.rsplit("_", 1)[0], os.getpriority(os.PRIO_PROCESS, thread.native_id)))
        return original(upload, *rest)

    monkeypatch.setattr(serve_module, "decode_upload", recording)
    assert serve_module.large_image_pixels(LIMITS) == 360_000
    assert post(url, files["root"] / "large.png").status_code == 200
    assert post(url, files["root"] / "astronaut.png").status_code == 200
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert lanes == [("large.png", "poi-serve-large", min(19, base + serve_module.LARGE_LANE_NICE)),
                     ("astronaut.png", "poi-serve-decode", base)]


def test_the_large_lane_is_below_a_server_started_under_nice():
    """The lane set its nice to LARGE_LANE_NICE itself: under `nice -n 10 poi serve` it was no
    lower than the threads serving small requests."""
    seen = []

    def lane() -> None:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + 3)  # as if started niced
        before = os.getpriority(os.PRIO_PROCESS, me)
        serve_module._lower_priority()
        seen.append((before, os.getpriority(os.PRIO_PROCESS, me)))

    thread = threading.Thread(target=lane)
    thread.start()
    thread.join()
    before, after = seen[0]
    assert after == min(19, before + serve_module.LARGE_LANE_NICE) and after > before


def test_stalled_clients_get_408_and_hold_no_slot(server, files):
    """More stalled clients than in-flight slots (headers and half a body, then nothing):
    a good request is served meanwhile, each stalled one gets a 408 after body_timeout_s,
    and a connection that never finishes its headers is closed after header_timeout_s."""
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    head = ("POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 1000\r\n\r\n").encode()
    stalled = []
    for _ in range(LIMITS.max_in_flight + 2):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head + b"--b\r\n" + b"x" * 400)
        stalled.append(sock)
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    silent.sendall(b"POST /predict HTTP/1.1\r\nHo")
    start = time.monotonic()
    good = post(url, files["root"] / "astronaut.png")
    assert good.status_code == 200, good.text
    assert time.monotonic() - start < LIMITS.body_timeout_s  # answered while they stall
    for sock in stalled:
        answer = b""
        while b"}" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 3 s" in answer
    assert time.monotonic() - start < LIMITS.body_timeout_s + 5
    assert silent.recv(4096) == b""  # closed without a request
    silent.close()
    assert requests.get(f"{url}/health", timeout=10).json()["in_flight"] == 0


def test_one_client_stalling_bodies_fills_its_own_share_not_everyones(files):
    """Stalled partial bodies from one address took the whole body budget, and every other
    client got a 503 for as long as they stalled; now one address holds at most
    max_client_buffered_bytes (its address as uvicorn reads it: X-Forwarded-For from a proxy
    on 127.0.0.1, how this test plays two clients)."""
    limits = replace(LIMITS, max_buffered_bytes=4_000_000, max_client_buffered_bytes=2_000_000)
    with running_server(limits) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        stalled = []
        for _ in range(3):  # 3 x 0.9 MB from 10.0.0.1: the third is over its 2 MB
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1400000\r\n\r\n"
                         + b"x" * 900_000)
            stalled.append(sock)
            time.sleep(0.3)
        answer = stalled[-1].recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"this client's request bodies over 1.90735 MiB" in answer, answer
        image = files["root"] / "astronaut.png"
        other = requests.post(f"{url}/predict", files=[("files", (image.name, image.read_bytes()))],
                              headers={"X-Forwarded-For": "10.0.0.2"}, timeout=60)
        assert other.status_code == 200, other.text  # another client is served while they stall
        for sock in stalled:
            sock.close()
        # a request's body is given back to its client's share when it is answered: one after
        # another, bodies adding up to more than the share are all served (it stayed charged: 503s)
        body = image.read_bytes()
        for _ in range(2 * limits.max_client_buffered_bytes // len(body) + 1):
            answer = requests.post(f"{url}/predict", files=[("files", (image.name, body))],
                                   headers={"X-Forwarded-For": "10.0.0.3"}, timeout=60)
            assert answer.status_code == 200, answer.text
    with pytest.raises(ServeError, match="--max-client-mb must lie between --max-upload-mb"):
        ServeLimits(max_request_bytes=30 * serve_module.MiB, max_client_buffered_bytes=20 * serve_module.MiB)
    # by default 64 MiB, or one body where --max-upload-mb is larger (a valid --max-upload-mb 100 stays valid)
    assert ServeLimits().max_client_buffered_bytes == 64 * serve_module.MiB
    assert ServeLimits(max_request_bytes=100 * serve_module.MiB).max_client_buffered_bytes == 100 * serve_module.MiB


def test_a_refused_body_is_let_go_when_it_is_answered(server):
    """The chunks of a body refused mid-way stayed referenced by its exception's frames, a cycle
    only the garbage collector breaks: eight clients sending chunked bodies past the limit left
    the server at 1424 MiB (docs/serve.md). With the collector off, nothing of the body outlives its 413."""
    import gc
    import tracemalloc

    url, _ = server
    piece = b"x" * 16_384
    pieces = 3 * LIMITS.max_request_bytes // len(piece)  # chunked: no Content-Length to refuse it up front
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        answer = requests.post(f"{url}/predict", data=(piece for _ in range(pieces)), timeout=60,
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert answer.status_code == 413, answer.text
        time.sleep(0.2)  # the server's finally blocks after the answer
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held < LIMITS.max_request_bytes // 2, held  # the refused part alone is 1.5 MB


def test_too_many_files_names_the_limit(server, files):
    url, _ = server
    image = files["root"] / "gradient.png"
    answer = requests.post(f"{url}/predict", files=[("files", (image.name, image.read_bytes()))] * 40, timeout=60)
    assert answer.status_code == 400 and answer.json()["detail"] == f"more than {LIMITS.max_files} files in one request"


@pytest.mark.parametrize("after_response", [
    b"GET /health HTTP/1.1\r\nHo",  # the next request's headers, trickled on a kept-alive connection
    b"x",  # more of the body of a request the route answered without reading it (a 404 here)
])
def test_a_kept_alive_connection_gets_a_header_deadline_per_request(server, after_response):
    """After a response, a client that sends a byte now and then but never a whole request's
    headers is closed after header_timeout_s (it held the connection for ever: uvicorn cancels
    its keep-alive timer on any byte, and a few hundred such clients locked the server)."""
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if after_response == b"x":
        sock.sendall(b"POST /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nxx")
    else:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    start = time.monotonic()
    closed = False
    while time.monotonic() - start < LIMITS.header_timeout_s + 6:
        try:
            sock.sendall(after_response[:1])  # a byte at a time, well inside uvicorn's keep-alive timeout
            after_response = after_response[1:] or b"H"
        except OSError:
            closed = True
            break
        sock.settimeout(0.5)
        try:
            if sock.recv(4096) == b"":
                closed = True
                break
        except socket.timeout:
            pass
    sock.close()
    assert closed and time.monotonic() - start < LIMITS.header_timeout_s + 3


def test_bad_query_value_is_a_one_line_reason(server, files):
    url, _ = server
    response = post(url, files["root"] / "astronaut.png", params={"show_au": "maybe"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert detail.startswith("bad parameter: show_au: ") and "'maybe'" in detail


def test_model_health_and_openapi(server):
    url, app = server
    predictor = app.state.batcher.predictor
    model = requests.get(f"{url}/model", timeout=10).json()
    assert model["classes"] == list(predictor.classes) and model["input_size"] == predictor.preprocessing.input_size
    assert model["backend"] == "onnx" and model["model"] == predictor.model_path.name
    card = model["card"]
    assert card["has_pin"] and card["arch"] == json.loads(predictor.runner.meta["arch"])
    assert card["epoch"] == json.loads(predictor.runner.meta["epoch"])
    assert card["calibration_temperature"] == pytest.approx(predictor.calibration_temperature)
    assert card["recipe"] == predictor.runner.recipe.to_dict() and set(card["recipe"]) == {"fusion", "flip"}
    probe = requests.head(f"{url}/health", timeout=10)  # a load balancer's health probe
    assert probe.status_code == 200 and probe.content == b""
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert "/predict" in schema["paths"]
    page = requests.get(f"{url}/docs", timeout=10)
    # FastAPI's Swagger page loaded its scripts from a CDN: blank on an offline machine
    assert page.status_code == 200 and "<script" not in page.text and "http" not in page.text.replace("http://HOST", "")
    assert "<code>POST /predict</code>" in page.text and "show_au" in page.text and "413" in page.text
    responses = schema["paths"]["/predict"]["post"]["responses"]
    assert {"408", "413", "422", "503"} <= set(responses)


def test_model_card_of_a_torch_runner_reads_its_info():
    """A torch runner (model/runner.TorchRunner) exposes a CheckpointInfo as `.info`: read by getattr."""
    info = SimpleNamespace(model_config=SimpleNamespace(arch="resnet18"), epoch=3, best_val_acc=0.5, val_acc=0.4,
                           training_data="ferplus")
    runner = SimpleNamespace(info=info, calibrated=False)
    predictor = SimpleNamespace(runner=runner, model_path=Path("/runs/exp/best.pt"), backend="torch", classes=["a", "b"],
                                preprocessing=SimpleNamespace(input_size=64, face_size=64, grayscale=False),
                                has_pin=True, has_aus=False, calibration_temperature=1.0, notes=["uncalibrated"])
    card = model_card(predictor)
    assert card["model"] == "best.pt" and card["backend"] == "torch"
    assert card["card"] == {"arch": "resnet18", "num_classes": 2, "has_pin": True, "has_aus": False, "epoch": 3,
                            "val_acc": 0.4, "best_val_acc": 0.5, "calibration_temperature": None, "recipe": None,
                            "dataset": "ferplus", "notes": ["uncalibrated"]}


def test_concurrent_requests_share_model_calls(server, files):
    url, app = server
    before = app.state.batcher.calls
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: post(url, files["root"] / "astronaut.png"), range(4)))
    assert all(r.status_code == 200 for r in responses)
    first = responses[0].json()
    assert all(r.json() == first for r in responses)
    assert app.state.batcher.calls - before < 4  # at least two requests shared one pass


def test_no_detect_query_takes_each_image_whole_like_the_cli(server, files, monkeypatch):
    url, app = server
    gradient = files["root"] / "gradient.png"  # no face for MTCNN
    detected = post(url, gradient)
    assert detected.status_code == 200 and [r["status"] for r in detected.json()] == ["no_face"]
    whole = post(url, gradient, files["root"] / "astronaut.png", params={"no_detect": "true", "show_au": "true"})
    assert whole.status_code == 200, whole.text
    served = whole.json()
    assert [(r["status"], r["detector"], r["landmarks"]) for r in served] == [("ok", "none", None)] * 2
    assert served[0]["box"] == [0.0, 0.0, 160.0, 120.0]  # the whole 160 x 120 image
    printed = cli_records(files["root"], monkeypatch, "gradient.png", "astronaut.png", "--show-au", "--no-detect")
    assert_same_records(served, printed)
    # the flag is per request: the shared predictor detects again afterwards
    assert app.state.batcher.predictor.detect and [r["status"] for r in post(url, gradient).json()] == ["no_face"]


def test_batcher_keeps_no_image_after_its_batch():
    """Decoded images are freed as soon as their batch is done (the old loop kept the last
    batch alive until the next request came)."""
    predictor = SimpleNamespace(detect=True, iter_predictions=lambda images, show_au, keep_images=True: [
        SimpleNamespace(records=[FaceRecord.empty(f"{i.size[0]}x{i.size[1]}", "no_face", "none")]) for i in images])
    batcher = MicroBatcher(predictor, ServeLimits(batch_wait_s=0.01))
    try:
        images = [Image.new("RGB", (32 + n, 32)) for n in range(3)]
        refs = [weakref.ref(image) for image in images]
        future = batcher.submit(images, show_au=False)
        del images
        assert [[r["image"] for r in request] for request in future.result(timeout=10)] == [[f"{32 + n}x32"] for n in range(3)]
        time.sleep(0.1)
        assert [ref() for ref in refs] == [None] * 3
    finally:
        batcher.close()


def test_port_and_address_errors_are_one_line(monkeypatch):
    with pytest.raises(ServeError, match=r"^--port 99999 is not a TCP port \(1-65535\)$"):
        serve(None, port=99999)
    with pytest.raises(ServeError, match=r"^--port 0 is not a TCP port"):
        serve(None, port=0)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ServeError) as caught:
            serve(None, host="127.0.0.1", port=port)
        assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
    finally:
        taken.close()


def test_non_loopback_host_warns_that_there_is_no_authentication():
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        message = exposure_warning(host)
        assert message and "no authentication" in message and "\n" not in message
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert exposure_warning(host) is None


def test_uvicorn_settings_and_limit_checks():
    config = uvicorn_config(object(), ServeLimits(keep_alive_s=7, max_connections=99))
    assert config.timeout_keep_alive == 7 and config.limit_concurrency == 99
    with pytest.raises(ServeError, match="at most 100"):
        ServeLimits(max_pixels=200_000_000)
    with pytest.raises(ServeError, match="body_timeout_s must be positive"):
        ServeLimits(body_timeout_s=0)
    with pytest.raises(ServeError, match="keep_alive_s must be positive and finite"):
        ServeLimits(keep_alive_s=float("nan"))
    with pytest.raises(ServeError, match="^--body-timeout must be at least 1 s, got 1e-12$"):  # every upload: a 408
        ServeLimits(body_timeout_s=1e-12)  # it named "the header timeout", no option of the CLI, beside it
    with pytest.raises(ServeError, match="^serve limit header_timeout_s must be at least 1 s, got 0.5$"):
        ServeLimits(header_timeout_s=0.5)


@pytest.mark.parametrize("option, value, message", [
    ("--max-upload-mb", "inf", "--max-upload-mb must be a positive number, got inf"),
    ("--max-request-megapixels", "inf", "--max-request-megapixels must be a positive number, got inf"),
    ("--body-timeout", "nan", "--body-timeout must be a positive number, got nan"),
    ("--max-upload-mb", "1e-9", "--max-upload-mb 1e-09 is less than one byte"),
    ("--max-megapixels", "1e-9", "--max-megapixels 1e-09 is less than one pixel"),
    # a body over the bytes the server buffers at once was answered 503 "retry later", for ever
    ("--max-upload-mb", "100000", "--max-upload-mb is at most 256 (the request bodies the server holds at once), got 100000"),
])
def test_a_serve_limit_out_of_range_is_one_line_in_the_users_words(option, value, message):
    """inf used to raise OverflowError (int(inf)); a limit under one byte or pixel was named by
    ServeLimits' field (max_request_bytes), not by the option the user typed."""
    from typer.testing import CliRunner

    from poi_cli.cli import app

    result = CliRunner().invoke(app, ["serve", option, value, "--threads", "1"])
    assert result.exit_code == 1 and result.stderr.strip() == f"error: {message}", result.output


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_server_stopped_by_a_signal_ends_cleanly(stop):
    """docker stop and systemd send SIGTERM, a terminal Ctrl-C: uvicorn shuts down, then
    `poi serve` exits 0 with one line (SIGTERM turned into an `error: interrupted`, exit 130,
    once the CLI made it stop commands as Ctrl-C does)."""
    import signal
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "poi_cli", "serve", "--port", str(port), "--threads", "1"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "POI_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    assert json.load(answer)["status"] == "ok"
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        server.send_signal(getattr(signal, stop))
        _, stderr = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "server stopped"


def test_serve_module_imports_no_torch():
    code = "import sys, poi_cli.deploy.serve; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
