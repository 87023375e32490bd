"""`poi serve`: a real HTTP server on a free loopback port, started and stopped here.

The server's record for an upload is the CLI's record for the same file; a corrupt
upload is a 400 and the server keeps serving; limits answer 413 with a JSON reason;
concurrent requests share model calls.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from skimage import data as skimage_data
from typer.testing import CliRunner

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from conftest import numbers_of
from poi_cli.cli import app as cli_app  # noqa: E402
from poi_cli.core.manifests import class_names  # noqa: E402
from poi_cli.data.preprocess import Preprocessing  # noqa: E402
from poi_cli.inference.predict import Predictor  # noqa: E402
from poi_cli.inference.serve import ServeLimits, create_app  # noqa: E402
from poi_cli.model.checkpoint import build_checkpoint, save_checkpoint  # noqa: E402
from poi_cli.model.network import ModelConfig, POIModel  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    Image.fromarray(skimage_data.astronaut()).resize((256, 256)).save(root / "astronaut.png")
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))
    Image.fromarray(gradient).convert("RGB").save(root / "gradient.png")
    Image.fromarray(np.full((700, 700, 3), 90, np.uint8)).save(root / "big.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    torch.manual_seed(0)
    config = ModelConfig(input_size=64, num_classes=7)
    save_checkpoint(root / "poi.pt", build_checkpoint(model=POIModel(config), model_config=config, classes=class_names(7),
                                                      preprocessing=Preprocessing(face_size=64, input_size=64), epoch=1))
    return {"root": root, "model": root / "poi.pt"}


@pytest.fixture(scope="module")
def server(files):
    """A uvicorn server in a thread on a free 127.0.0.1 port; its base URL and app."""
    limits = ServeLimits(max_request_bytes=1_500_000, max_pixels=400_000, batch_wait_s=0.3)
    app = create_app(Predictor(files["model"]), limits)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def post(url: str, *paths: Path, params: dict | None = None) -> requests.Response:
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return requests.post(f"{url}/predict", files=files, params=params, timeout=60)


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
    monkeypatch.chdir(files["root"])
    result = CliRunner().invoke(cli_app, ["predict", "astronaut.png", "gradient.png", "--model", str(files["model"]),
                                          "--json", "--show-au"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [r["status"] for r in served] == ["ok", "no_face"]
    assert_same_records(served, printed)


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


def test_model_health_and_openapi(server):
    url, _ = server
    model = requests.get(f"{url}/model", timeout=10).json()
    assert model["classes"] == list(class_names(7)) and model["input_size"] == 64 and model["card"]["has_pin"]
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert "/predict" in schema["paths"] and requests.get(f"{url}/docs", timeout=10).status_code == 200


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
    monkeypatch.chdir(files["root"])
    result = CliRunner().invoke(cli_app, ["predict", "gradient.png", "astronaut.png", "--model", str(files["model"]),
                                          "--json", "--show-au", "--no-detect"])
    assert result.exit_code == 0, result.output
    assert_same_records(served, json.loads(result.stdout))
    # the flag is per request: the shared predictor detects again afterwards
    assert app.state.batcher.predictor.detect and [r["status"] for r in post(url, gradient).json()] == ["no_face"]
