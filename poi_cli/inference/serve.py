"""`poi serve`: predictions over HTTP (FastAPI + uvicorn), the model loaded once.

    POST /predict   multipart field `files` (repeatable) -> the JSON list of records
                    `poi predict --json` prints for the same images (query: show_au, no_detect)
    GET  /health    {"status": "ok", ...}
    GET  /model     classes, input size, preprocessing and a summary of the checkpoint
    GET  /docs      the OpenAPI page (/openapi.json the schema)

Each upload is written to a private temporary file and read by faces.load_image, the
loader `poi predict` uses, so a record is the CLI's record for the same bytes (its
`image` is the upload's file name). Requests from concurrent clients are micro-batched:
one worker thread owns the Predictor and takes every request waiting in its queue
(up to ServeLimits.batch_images images) into one detection + model pass.

Limits (ServeLimits), each answered with a JSON {"detail": reason}:
* 413: a request body over max_request_bytes (Content-Length, or counted while
  reading), or an image over max_pixels;
* 429: more than max_in_flight requests being served at once;
* 400: no files, an empty file, too many files, or no upload that is an image. In a
  request with several files, a bad one gets an `error` record (as in `poi predict`)
  and the others are predicted.
A failure inside the model is a 500 with a JSON reason, and the server keeps serving.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and
# Request is imported inside create_app (fastapi loads only for `poi serve`).

import asyncio
import concurrent.futures
import os
import queue
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from poi_cli.core.errors import PoiError, one_line
from poi_cli.core.schema import STATUS_ERROR
from poi_cli.data.faces import ImageLoadError, load_image
from poi_cli.inference.predict import Predictor, empty_record


class ServeError(PoiError):
    """The server cannot start (bad limits, missing packages); one-line message."""


@dataclass(frozen=True)
class ServeLimits:
    """What one request may carry and how many are served at once."""

    max_request_bytes: int = 20 * 1024 * 1024  # the whole multipart body
    max_files: int = 16  # images per request
    max_pixels: int = 40_000_000  # per image (width x height)
    max_in_flight: int = 64  # requests being read, waiting or predicted
    batch_images: int = 32  # images per micro-batch (one detection + model pass)
    batch_wait_s: float = 0.005  # how long the worker waits for more requests to join a batch

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ServeError(f"serve limit {name} must be positive, got {value}")


class RequestError(Exception):
    """A request answered with a 4xx status and a JSON reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# ----------------------------------------------------------------- the micro-batcher


@dataclass
class _Job:
    images: list[Image.Image]
    show_au: bool
    future: concurrent.futures.Future
    detect: bool = True  # False: `no_detect=true`, each image taken whole as one face


class MicroBatcher:
    """One thread owns the Predictor; every queued request joins the next batch.

    `calls` counts the batches run (one per (show_au, detect) pair present in a batch),
    so a test can see that concurrent requests shared a model call.
    """

    def __init__(self, predictor: Predictor, limits: ServeLimits) -> None:
        self.predictor, self.limits = predictor, limits
        self.jobs: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self.calls = 0
        self.default_detect = predictor.detect
        self.thread = threading.Thread(target=self._loop, name="poi-serve-batcher", daemon=True)
        self.thread.start()

    def submit(self, images: list[Image.Image], show_au: bool, detect: bool = True) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put(_Job(images, show_au, future, detect))
        return future

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _take_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        batch, count, deadline = [first], len(first.images), time.monotonic() + self.limits.batch_wait_s
        while count < self.limits.batch_images:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
            count += len(job.images)
        return batch, False

    def _loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch, stop = self._take_batch(first)
            for show_au in (False, True):
                for detect in (True, False):
                    group = [job for job in batch if job.show_au == show_au and job.detect == detect]
                    if group:
                        self._run(group, show_au, detect)
            if stop:
                return

    def _run(self, group: list[_Job], show_au: bool, detect: bool) -> None:
        images = [image for job in group for image in job.images]
        # This thread alone uses the predictor, so switching its detect flag per group is safe.
        self.predictor.detect = detect
        try:
            predictions = list(self.predictor.iter_predictions(images, show_au))
            self.calls += 1
        except Exception as error:  # a model failure fails these requests, not the server
            for job in group:
                job.future.set_exception(error)
            return
        finally:
            self.predictor.detect = self.default_detect
        start = 0
        for job in group:
            job.future.set_result([p.records for p in predictions[start:start + len(job.images)]])
            start += len(job.images)


# ------------------------------------------------------------------------- uploads


def _safe_name(name: Optional[str], number: int) -> str:
    """The upload's file name without any folder part (never a path on this machine)."""
    base = Path((name or "").replace("\\", "/")).name
    return re.sub(r"[^\w.\- ]", "_", base)[:200] or f"upload{number}"


def decode_upload(data: bytes, name: str, limits: ServeLimits) -> Image.Image:
    """Bytes -> the RGB image `poi predict` would read from a file with these bytes.

    RequestError 413 for too many pixels; ImageLoadError for anything unreadable.
    """
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    import io

    try:  # the header alone: refuse a huge image before decoding it
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Exception:
        width = height = 0  # not an image: load_image below gives the reason
    if width * height > limits.max_pixels:
        raise RequestError(413, f"{name}: {width}x{height} = {width * height / 1e6:.1f} megapixels; "
                                f"the limit is {limits.max_pixels / 1e6:.1f}")
    with tempfile.TemporaryDirectory(prefix="poi-serve-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        return load_image(path)


def model_card(predictor: Predictor) -> dict[str, Any]:
    """What GET /model answers: the classes, the input and a summary of the checkpoint."""
    from poi_cli.model.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(predictor.checkpoint_path)
    config = info.model_config
    return {
        "checkpoint": predictor.checkpoint_path.name,
        "classes": list(predictor.classes),
        "input_size": predictor.input_size,
        "face_size": predictor.face_size,
        "grayscale": predictor.grayscale,
        "card": {
            "arch": config.arch, "num_classes": config.num_classes, "has_pin": predictor.has_pin,
            "has_aus": predictor.has_aus, "epoch": info.epoch, "best_val_acc": info.best_val_acc,
            "calibration_temperature": None if info.calibration is None else info.calibration_temperature,
            # the prepared folder's name only: its full path is the training machine's business
            "dataset": info.resolved.get("dataset") or (Path(info.config["data"]).name if info.config.get("data") else None),
            "notes": list(predictor.notes),
        },
    }


# ---------------------------------------------------------------------------- app


def create_app(predictor: Predictor, limits: ServeLimits = ServeLimits()) -> Any:
    """The FastAPI application serving `predictor` (its batcher starts now, stops at shutdown)."""
    try:
        from fastapi import FastAPI, Query, Request
        from fastapi.responses import JSONResponse
    except ImportError as error:
        raise ServeError(f"poi serve needs fastapi and uvicorn ({one_line(error)}); "
                         "pip install fastapi uvicorn python-multipart") from None
    from contextlib import asynccontextmanager

    batcher = MicroBatcher(predictor, limits)
    card = model_card(predictor)
    state = {"in_flight": 0, "served": 0}

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        batcher.close()

    app = FastAPI(title="poi", version=__import__("poi_cli").__version__, lifespan=lifespan,
                  description="Facial expression, confidence, consistency and action units of every face in images.")
    app.state.batcher, app.state.limits = batcher, limits

    def reject(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "in_flight": state["in_flight"], "served": state["served"]}

    @app.get("/model")
    async def model() -> dict:
        return card

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "one or more images (repeat the field)"}}}}}}}

    @app.post("/predict", openapi_extra=upload_schema,
              responses={400: {"description": "no usable image"}, 413: {"description": "too large"},
                         429: {"description": "too many requests in flight"}})
    async def predict(request: Request, show_au: bool = Query(False, description="add AUs per region and the regions' distributions"),
                      no_detect: bool = Query(False, description="take each image whole as one already-cropped face "
                                                                 "(no detector), as `poi predict --no-detect`")):
        """The records `poi predict --json` prints for the uploaded images, in upload order."""
        if state["in_flight"] >= limits.max_in_flight:
            return reject(429, f"{state['in_flight']} requests in flight (limit {limits.max_in_flight}); retry later")
        state["in_flight"] += 1
        try:
            return await _predict(request, show_au, not no_detect)
        except RequestError as error:
            return reject(error.status, error.detail)
        except Exception as error:  # never a bare 500 page: a JSON reason, and the server goes on
            return reject(500, f"prediction failed: {type(error).__name__}: {one_line(error)}")
        finally:
            state["in_flight"] -= 1
            state["served"] += 1

    async def _read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
            raise RequestError(413, f"request body of {int(declared)} bytes; the limit is {limits.max_request_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():  # counted too: a chunked body has no Content-Length
            size += len(chunk)
            if size > limits.max_request_bytes:
                raise RequestError(413, f"request body over {limits.max_request_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _uploads(request: Request) -> list[tuple[str, bytes]]:
        body = await _read_body(request)
        if not body:
            raise RequestError(400, "empty request: send images as multipart form field `files`")
        request._body = body  # starlette parses the form from the body read above
        try:
            form = await request.form(max_files=limits.max_files + 1, max_fields=limits.max_files + 16)
        except Exception as error:
            raise RequestError(400, f"not a multipart form with `files`: {one_line(error)}") from None
        files = [f for f in form.getlist("files") if hasattr(f, "read")]
        if not files:
            raise RequestError(400, "no files: send images as multipart form field `files`")
        if len(files) > limits.max_files:
            raise RequestError(400, f"more than {limits.max_files} files in one request")
        uploads = [(_safe_name(f.filename, n), await f.read()) for n, f in enumerate(files)]
        await form.close()
        return uploads

    async def _predict(request: Request, show_au: bool, detect: bool) -> Any:
        uploads = await _uploads(request)
        decoded: list[tuple[str, Optional[Image.Image], Optional[str]]] = []
        for name, data in uploads:
            try:
                image = await asyncio.to_thread(decode_upload, data, name, limits)
                decoded.append((name, image, None))
            except ImageLoadError as error:
                decoded.append((name, None, str(error)))
        good = [image for _, image, _ in decoded if image is not None]
        if not good:
            reasons = "; ".join(f"{name}: {reason}" for name, _, reason in decoded)
            raise RequestError(400, f"no readable image ({reasons})")
        per_image = await asyncio.wrap_future(batcher.submit(good, show_au, detect))
        records, results = [], iter(per_image)
        for name, image, reason in decoded:
            if image is None:
                records.append(empty_record(name, STATUS_ERROR, reason, show_au))
                continue
            for record in next(results):
                record["image"] = name
                records.append(record)
        return records

    return app


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits = ServeLimits(),
          log_level: str = "info") -> None:
    """Run the server until Ctrl-C (uvicorn, one process: the model is loaded once)."""
    try:
        import uvicorn
    except ImportError as error:
        raise ServeError(f"poi serve needs uvicorn ({one_line(error)}); pip install fastapi uvicorn python-multipart") from None
    app = create_app(predictor, limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
