"""`poi serve`: predictions over HTTP (FastAPI + uvicorn), the model loaded once.

    POST /predict   multipart field `files` (repeatable) -> the JSON list of records
                    `poi predict --json` prints for the same images (query: show_au, no_detect)
    GET  /health    {"status": "ok", ...}
    GET  /model     classes, input size, preprocessing and a summary of the model file
    GET  /docs      the API's page, offline (/openapi.json the schema)

This is part of the deploy runtime: it imports no torch (a torch runner, built by
poi_cli/backends.py, is only read through getattr).

A request goes through these steps; each refusal is a JSON {"detail": "one line"}:
1. its body is read, within ServeLimits.body_timeout_s (408 after), at most
   max_request_bytes (413), while all bodies held by the server stay under
   max_buffered_bytes and those of one client address under max_client_buffered_bytes
   (503: a client that stalls many bodies fills its own share, not everyone's). Only then
   does the request count as in flight (max_in_flight, 429): a client that stalls holds no slot.
2. each upload's header is read (nothing decoded yet): an image over max_pixels, or a
   request whose images add up to more than max_request_pixels, is a 413. The request
   then reserves the pixels its images hold once decoded (and shrunk) until it is
   answered from the server-wide max_pixels_in_flight (503 with Retry-After when they
   do not fit; a request is always admitted when nothing else is in flight).
3. its images are decoded one at a time (in one of DECODE_THREADS threads; a request with
   an image over large_image_pixels in a single lower-priority thread of its own, so at
   most one such image is at full size at once, server-wide). An image whose longer side
   is at most decode_side is read by faces.load_image from a private temporary file,
   exactly as `poi predict` reads a file with these bytes, so its record is the CLI's. A
   larger one is shrunk right after decoding (a JPEG decoded at a reduced DCT scale, any
   other image reduced by an integer box filter, resized only when that cannot land
   there) to a longer side between 3/4 of decode_side and decode_side (1920-2560 px;
   the detector searches at 1024): its boxes and landmarks are scaled back to the
   original (upright) image's pixels.
4. one worker thread owns the Predictor and takes every request waiting in its queue
   (up to batch_images images) into one detection + model pass (micro-batching); each
   request is answered as soon as its own images are done.
A failure inside the model is a 500 with a JSON reason, and the server keeps serving.
No decoded image outlives its request; after large images, and whenever the server goes
idle, freed memory is handed back to the system (glibc's malloc_trim), so the resident
size falls back after a burst. uvicorn is configured from the same limits: keep-alive
timeout, a cap on open connections, and a connection that sends no request headers
within header_timeout_s is closed.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and
# Request is imported inside create_app (fastapi loads only for `poi serve`).

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import errno
import ipaddress
import json
import math
import os
import queue
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

from PIL import Image, ImageOps, UnidentifiedImageError

from poi_cli.core.errors import PoiError, one_line
from poi_cli.core.schema import STATUS_ERROR
from poi_cli.data import faces
from poi_cli.data.faces import EXIF_ORIENTATION, ImageLoadError, load_image, to_rgb
from poi_cli.deploy.predict import Predictor
from poi_cli.deploy.records import FaceRecord

MiB = 1024 * 1024


class ServeError(PoiError):
    """The server cannot start (bad limits, bad port, missing packages); one-line message."""


CLIENT_BUFFERED_BYTES = 64 * MiB  # the request bodies one client address may have held by default: a quarter


@dataclass(frozen=True)
class ServeLimits:
    """What one request may carry, and what the server holds at once (docs/serve.md)."""

    max_request_bytes: int = 20 * MiB  # the whole multipart body (413)
    max_files: int = 16  # images per request (400)
    max_pixels: int = 40_000_000  # per image, width x height, read from its header (413); at most faces.MAX_PIXELS
    max_request_pixels: int = 160_000_000  # all images of one request together (413)
    max_pixels_in_flight: int = 200_000_000  # decoded (shrunk) pixels held by all requests together (503)
    max_buffered_bytes: int = 256 * MiB  # request bodies being received, parsed or decoded, all together (503)
    # ... of the requests from one client address (503); None: CLIENT_BUFFERED_BYTES, or max_request_bytes if larger
    max_client_buffered_bytes: Optional[int] = None
    max_in_flight: int = 64  # requests whose body has arrived: decoded, waiting or predicted (429)
    body_timeout_s: float = 30.0  # a body must arrive within this many seconds of its headers (408)
    header_timeout_s: float = 10.0  # a new connection must send a request's headers within this (closed)
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
    max_connections: int = 256  # open connections (uvicorn's limit_concurrency: its own 503 above)
    decode_side: int = 2560  # larger images are shrunk on decoding, to a longer side of 3/4 of this to this
    batch_images: int = 32  # images per micro-batch (one detection + model pass)
    batch_wait_s: float = 0.005  # how long the worker waits for more requests to join a batch

    def __post_init__(self) -> None:
        if self.max_client_buffered_bytes is None:  # frozen: set once, here
            object.__setattr__(self, "max_client_buffered_bytes", max(CLIENT_BUFFERED_BYTES, self.max_request_bytes))
        for name, value in asdict(self).items():
            if not 0 < value < math.inf:  # nan fails too
                raise ServeError(f"serve limit {name} must be positive and finite, got {value}")
        if self.max_pixels > faces.MAX_PIXELS:
            raise ServeError(f"--max-megapixels is at most {faces.MAX_PIXELS / 1e6:.0f} (the image loader's own limit), "
                             f"got {self.max_pixels / 1e6:g}")
        if self.max_request_bytes > self.max_buffered_bytes:  # such a body would be answered 503 for ever
            raise ServeError(f"--max-upload-mb is at most {self.max_buffered_bytes / MiB:g} (the request bodies the server "
                             f"holds at once), got {self.max_request_bytes / MiB:g}")
        if not self.max_request_bytes <= self.max_client_buffered_bytes <= self.max_buffered_bytes:
            raise ServeError(f"--max-client-mb must lie between --max-upload-mb ({self.max_request_bytes / MiB:g}) and "
                             f"{self.max_buffered_bytes / MiB:g} (the request bodies the server holds at once), "
                             f"got {self.max_client_buffered_bytes / MiB:g}")
        if self.body_timeout_s < 1:  # shorter: no request could arrive in time
            raise ServeError(f"--body-timeout must be at least 1 s, got {self.body_timeout_s:g}")
        if self.header_timeout_s < 1:  # the library's own limit (no CLI option)
            raise ServeError(f"serve limit header_timeout_s must be at least 1 s, got {self.header_timeout_s:g}")
        if self.decode_side < 2 * faces.MIN_SIDE:
            raise ServeError(f"serve limit decode_side must be at least {2 * faces.MIN_SIDE}, got {self.decode_side}")


class RequestError(Exception):
    """A request answered with a 4xx/5xx status and a JSON reason (and extra headers)."""

    def __init__(self, status: int, detail: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def json_record(record: FaceRecord) -> dict:
    """A prediction record as the JSON object the API answers: the one place records are converted."""
    return record.to_dict()


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
    so a test can see that concurrent requests shared a model call. No image outlives
    its batch here: a job's images are dropped once its records are set.
    """

    def __init__(self, predictor: Predictor, limits: ServeLimits) -> None:
        self.predictor, self.limits = predictor, limits
        self.jobs: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self.calls = 0
        self.pixels_since_trim = 0
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
            if first is None or self._serve(first):
                return

    def _serve(self, first: _Job) -> bool:
        """One batch (its own frame: nothing of it stays referenced while the queue is waited on)."""
        batch, stop = self._take_batch(first)
        for show_au in (False, True):
            for detect in (True, False):
                group = [job for job in batch if job.show_au == show_au and job.detect == detect]
                if group:
                    self._run(group, show_au, detect)
        del batch, group, first
        if self.jobs.empty() and self.pixels_since_trim >= TRIM_WHEN_IDLE_PIXELS:
            self.pixels_since_trim = 0
            release_memory()  # idle, and this batch's images are freed: hand their pages back
        return stop

    def _run(self, group: list[_Job], show_au: bool, detect: bool) -> None:
        """One detection + model pass over the group's images; each request is answered as
        soon as its own images are done (predictions come in input order)."""
        images = [image for job in group for image in job.images]
        counts = [len(job.images) for job in group]
        self.pixels_since_trim += sum(image.width * image.height for image in images)
        for job in group:
            job.images = []  # from here on only `images` holds them, until this pass ends
        # This thread alone uses the predictor, so switching its detect flag per group is safe.
        self.predictor.detect = detect
        pending, current = list(zip(group, counts)), []
        try:
            predictions = self.predictor.iter_predictions(images, show_au, keep_images=False)
            del images  # the iterator holds them, and lets each go when it is done
            for prediction in predictions:
                current.append([json_record(r) for r in prediction.records])
                del prediction
                if len(current) == pending[0][1]:
                    job, _ = pending.pop(0)
                    job.future.set_result(current)
                    current = []
            self.calls += 1
        except Exception as error:  # a model failure fails these requests, not the server
            failure = RuntimeError(f"{type(error).__name__}: {one_line(error)}")  # no traceback holding the images
            for job, _ in pending:
                job.future.set_exception(failure)
        finally:
            self.predictor.detect = self.default_detect


# ------------------------------------------------------------------------- uploads


@dataclass
class Upload:
    """One uploaded file on its way to the model."""

    name: str  # the upload's file name, without any folder part
    file: BinaryIO  # its bytes (the form's spooled temporary file)
    size: Optional[tuple[int, int]] = None  # width, height from its header (None: not an image, or unread)
    pixels: int = 0  # width x height (also known when PIL refused the header as a decompression bomb)
    error: Optional[str] = None  # why it cannot be predicted (its record's reason)
    image: Optional[Image.Image] = None  # decoded (RGB), shrunk when larger than decode_side
    scale: tuple[float, float] = (1.0, 1.0)  # original pixels per decoded pixel, x and y

    def kept_pixels(self, decode_side: int) -> int:
        """The pixels this image holds once decoded (after shrinking)."""
        if self.size is None:
            return self.pixels
        return math.prod(shrunk_size(self.size, decode_side))


def _safe_name(name: Optional[str], number: int) -> str:
    """The upload's file name as the client gave it, without any folder part (never a path on
    this machine; it names records only) and without control characters (a name is printed in
    messages: no terminal escapes, no line breaks), at most 200 characters; `upload<N>` (N: its
    place in the request, from 0) for an upload without one."""
    base = Path((name or "").replace("\\", "/")).name
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", "_", base)[:200] or f"upload{number}"


def shrunk_size(size: tuple[int, int], decode_side: int) -> tuple[int, int]:
    """(width, height) of an image of this size once shrunk to a longer side of decode_side
    (unchanged when it is not larger; never a side below faces.MIN_SIDE by shrinking)."""
    width, height = size
    longer, shorter = max(width, height), min(width, height)
    if longer <= decode_side:
        return width, height
    scale = min(1.0, max(decode_side / longer, faces.MIN_SIDE / max(1, shorter)))
    return max(1, round(width * scale)), max(1, round(height * scale))


KEEP_FRACTION = 0.75  # a shrunk image keeps a longer side of at least 3/4 of decode_side
_PIXELS_IN_MESSAGE = re.compile(r"\((\d+) pixels\)")


def probe_upload(upload: Upload) -> None:
    """Read the upload's header (its size; nothing decoded). Sets size and pixels, or
    error for an empty file; a file PIL cannot open is left to the loader to explain."""
    upload.file.seek(0, 2)
    if upload.file.tell() == 0:
        upload.error = "empty file (0 bytes)"
        return
    upload.file.seek(0)
    try:
        with faces.open_image(upload.file) as header:  # the loader's formats: none decodes here
            upload.size = header.size
        upload.pixels = upload.size[0] * upload.size[1]
    except Image.DecompressionBombError as error:  # PIL refuses > 2 x its own limit inside open
        match = _PIXELS_IN_MESSAGE.search(str(error))
        upload.pixels = int(match.group(1)) if match else faces.MAX_PIXELS + 1
    except Exception:
        pass  # not an image (or a broken header): decode_upload gives the loader's reason
    finally:
        upload.file.seek(0)


def decode_upload(upload: Upload, decode_side: int) -> None:
    """Decode one probed upload: sets image and scale, or error (the loader's reason)."""
    if upload.error is not None:
        return
    try:
        if upload.size is None or max(upload.size) <= decode_side:
            # The same bytes, the same loader as `poi predict`: the same record.
            with tempfile.NamedTemporaryFile(prefix="poi-serve-") as copy:
                upload.file.seek(0)
                shutil.copyfileobj(upload.file, copy)
                copy.flush()
                upload.image = load_image(copy.name)
        else:
            upload.image, upload.scale = _decode_shrunk(upload.file, decode_side)
    except ImageLoadError as error:
        upload.error = str(error)


def _decode_shrunk(file: BinaryIO, decode_side: int) -> tuple[Image.Image, tuple[float, float]]:
    """A large image decoded straight to a longer side between KEEP_FRACTION x decode_side
    and decode_side, and the original (upright) pixels per kept pixel along x and y.

    The steps of faces.load_image (EXIF orientation, to_rgb's conversions, its errors), in
    an order that never holds more than the decoded image at full size (a JPEG not even
    that: it is decoded at a reduced DCT scale), and as cheaply as it can: an integer box
    filter (Image.reduce), and a resize only when that cannot land in the range."""
    try:
        file.seek(0)
        image = faces.open_image(file)
        width, height = image.size
        if min(width, height) < faces.MIN_SIDE:
            raise ImageLoadError(f"image too small: {width}x{height} (minimum {faces.MIN_SIDE} px per side)")
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        if image.format == "JPEG":  # DCT scaling (1/2, 1/4, 1/8), never below KEEP_FRACTION x decode_side
            fraction = KEEP_FRACTION * decode_side / max(width, height)
            image.draft(None, (math.ceil(width * fraction), math.ceil(height * fraction)))
        image.load()  # truncated files fail here, as in the loader
        longer, shorter = max(image.size), min(image.size)
        factor = math.ceil(longer / decode_side)
        if factor >= 2 and longer / factor < KEEP_FRACTION * decode_side:
            factor -= 1  # one step less, then a resize down to decode_side
        factor = min(factor, shorter // faces.MIN_SIDE)
        if factor >= 2:
            image = _reduce(image, factor)
        turned = False  # by exif_transpose: orientations 5-8 swap the sides
        if orientation != 1:
            try:
                image = ImageOps.exif_transpose(image)
                turned = orientation in (5, 6, 7, 8)
            except Exception:
                pass  # a broken EXIF block: keep the pixels as stored (the loader does the same)
        image = to_rgb(image)
        if max(image.size) > decode_side:
            image = image.resize(shrunk_size(image.size, decode_side), Image.BILINEAR)
        # The original's size the way the kept image stands (turned by exif_transpose or not;
        # comparing the sides' order took a 1000 x 999 photo kept as 250 x 250 for turned)
        original = (height, width) if turned else (width, height)
        return image, (original[0] / image.width, original[1] / image.height)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(faces.UNKNOWN_FORMAT) from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, zlib errors...
        raise ImageLoadError(f"cannot decode image ({one_line(error)})") from None


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """Image.reduce (a box filter) in a mode that keeps to_rgb's meaning."""
    if image.mode.startswith("I;16"):  # to_rgb scales 16-bit grey by 255 / 65535: do it here, on fewer pixels
        import numpy as np

        reduced = np.asarray(image.convert("I").reduce(factor), dtype=np.float64)
        return Image.fromarray(np.round(reduced * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8))
    if image.mode in ("P", "1", "PA"):
        image = to_rgb(image) if image.mode != "1" else image.convert("L")
    return image.reduce(factor)


def scale_record(record: dict, scale: tuple[float, float]) -> dict:
    """A record's box and landmarks, found on a shrunk image, in the original image's pixels."""
    sx, sy = scale
    if (sx, sy) == (1.0, 1.0):
        return record
    if record.get("box"):
        x1, y1, x2, y2 = record["box"]
        record["box"] = [round(x1 * sx, 2), round(y1 * sy, 2), round(x2 * sx, 2), round(y2 * sy, 2)]
    if record.get("landmarks"):
        record["landmarks"] = [[round(x * sx, 2), round(y * sy, 2)] for x, y in record["landmarks"]]
    return record


# ------------------------------------------------------------------------- memory


_TRIM_LOCK = threading.Lock()
_libc_trim: Optional[Callable[[int], int]] = None
_libc_checked = False
LARGE_LANE_NICE = 10
DECODE_THREADS = 2  # threads decoding the uploads of ordinary requests


def large_image_pixels(limits: ServeLimits) -> int:
    """An image above this many pixels (4 x decode_side^2: 26.2 megapixels by default) is
    decoded on the large lane (see create_app)."""
    return 4 * limits.decode_side ** 2
TRIM_AFTER_PIXELS = 32_000_000  # pixels decoded since the last trim that call for another one
TRIM_WHEN_IDLE_PIXELS = 2_000_000  # ... or this many, when the last request in flight ends


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; a no-op elsewhere).

    Large decoded images are freed as soon as a request ends, but glibc keeps freed heap
    pages for reuse, so without this the resident size stays at the peak of a burst."""
    global _libc_trim, _libc_checked
    if not _TRIM_LOCK.acquire(blocking=False):
        return  # a trim is running: it hands back this request's memory too
    try:
        if not _libc_checked:
            _libc_checked = True
            if sys.platform.startswith("linux"):
                try:
                    _libc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                except (OSError, AttributeError):  # musl, or no libc found
                    _libc_trim = None
        if _libc_trim is not None:
            _libc_trim(0)
    finally:
        _TRIM_LOCK.release()


def _lower_priority() -> None:
    """This thread yields the CPU to the others (Linux threads have their own nice value):
    decoding a few huge images must not starve the small requests."""
    try:
        me = threading.get_native_id()  # LARGE_LANE_NICE above its own: a server started under `nice` too
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + LARGE_LANE_NICE))
    except (AttributeError, OSError):
        pass


# ---------------------------------------------------------------------------- model card


def _meta_value(meta: dict, key: str) -> Any:
    value = meta.get(key)
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def model_card(predictor: Predictor) -> dict[str, Any]:
    """What GET /model answers: the classes, the input and a summary of the model file.

    Read from what the runner exposes, never by loading the file again: an OnnxRunner's
    `meta` (the .onnx file's metadata, JSON strings), or a torch runner's `info` (a
    CheckpointInfo, read with getattr: this module imports no torch)."""
    runner = predictor.runner
    meta = getattr(runner, "meta", None) or {}
    info = getattr(runner, "info", None)

    def known(key: str, *path: str) -> Any:
        if key in meta:
            return _meta_value(meta, key)
        value = info
        for name in path or (key,):
            value = getattr(value, name, None)
        return value

    calibrated = getattr(runner, "calibrated", True)
    return {
        "model": predictor.model_path.name,
        "checkpoint": predictor.model_path.name,  # the older name of "model", kept for clients that read it
        "backend": predictor.backend,
        "classes": list(predictor.classes),
        "input_size": predictor.preprocessing.input_size,
        "face_size": predictor.preprocessing.face_size,
        "grayscale": predictor.preprocessing.grayscale,
        "card": {
            "arch": known("arch", "model_config", "arch"), "num_classes": len(predictor.classes),
            "has_pin": predictor.has_pin, "has_aus": predictor.has_aus,
            "epoch": known("epoch"), "val_acc": known("val_acc"), "best_val_acc": known("best_val_acc"),
            "calibration_temperature": predictor.calibration_temperature if calibrated else None,
            # how the reported probabilities are made (TRN or TRN + PIN, the mirror): core.outputs.PredictionRecipe
            "recipe": runner.recipe.to_dict() if hasattr(runner, "recipe") else None,
            "dataset": known("dataset", "training_data"),  # the prepared folder's name (CheckpointInfo.training_data)
            "notes": list(predictor.notes),
        },
    }


def api_page(schema: dict) -> str:
    """GET /docs: the OpenAPI schema as one HTML page that fetches nothing (the service works
    offline, and so must its page): each route with its parameters and answers, and the
    curl line of an upload. /openapi.json is the schema itself."""
    from html import escape

    info = schema.get("info", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(str(info.get('title', '')))} API</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "code,pre{background:#f4f4f4;padding:.1em .3em}td,th{border-bottom:1px solid #ddd;padding:.3em;text-align:left}"
             "table{border-collapse:collapse}</style></head><body>",
             f"<h1>{escape(str(info.get('title', '')))} {escape(str(info.get('version', '')))}</h1>",
             f"<p>{escape(str(info.get('description', '')))}</p>",
             "<p>The schema: <a href='/openapi.json'>/openapi.json</a>. An upload: "
             "<code>curl -F files=@face.jpg 'http://HOST:PORT/predict?show_au=true'</code></p>"]
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            parts.append(f"<h2><code>{escape(method.upper())} {escape(path)}</code></h2>")
            text = operation.get("description") or operation.get("summary") or ""
            parts.append(f"<p>{escape(str(text))}</p>")
            parameters = operation.get("parameters", [])
            if parameters:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>default</th><th></th></tr>")
                for parameter in parameters:
                    kind = parameter.get("schema", {})
                    parts.append(f"<tr><td><code>{escape(str(parameter.get('name')))}</code></td>"
                                 f"<td>{escape(str(parameter.get('in', '')))}</td><td>{escape(str(kind.get('type', '')))}</td>"
                                 f"<td>{escape(str(kind.get('default', '')))}</td>"
                                 f"<td>{escape(str(parameter.get('description', '')))}</td></tr>")
                parts.append("</table>")
            answers = operation.get("responses", {})
            if answers:
                parts.append("<table><tr><th>status</th><th></th></tr>")
                parts.extend(f"<tr><td>{escape(str(code))}</td><td>{escape(str(answer.get('description', '')))}</td></tr>"
                             for code, answer in answers.items())
                parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


# ---------------------------------------------------------------------------- app


@dataclass
class _Holds:
    """What one request holds of the server's budgets (all given back when it ends)."""

    body_bytes: int = 0
    client: str = ""  # its client's address, whose share of the body budget it takes
    pixels: int = 0
    counted: bool = False  # in state["in_flight"]
    decoded: int = 0  # full-size pixels it decoded (large: trim memory afterwards)
    forms: list = field(default_factory=list)  # its parsed form (spooled upload files), closed at the end


def create_app(predictor: Predictor, limits: ServeLimits = ServeLimits()) -> Any:
    """The FastAPI application serving `predictor` (its batcher starts now, stops at shutdown)."""
    try:
        from fastapi import FastAPI, Query, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.requests import ClientDisconnect
    except ImportError as error:
        raise ServeError(f"poi serve needs fastapi and uvicorn ({one_line(error)}); "
                         "pip install fastapi uvicorn python-multipart") from None
    from contextlib import asynccontextmanager

    batcher = MicroBatcher(predictor, limits)
    card = model_card(predictor)
    state = {"in_flight": 0, "served": 0, "pixels_in_flight": 0, "buffered_bytes": 0, "decoded_since_trim": 0}
    client_bytes: dict[str, int] = {}  # bodies held per client address (only those holding some)
    # Uploads are decoded in DECODE_THREADS threads; a request holding a large image (over
    # large_image_pixels(limits)) in one thread of its own, at a lower priority, one image at
    # a time server-wide: a burst of them holds one full-size image at once and takes one
    # core at most, while the small requests go on.
    decode_lane = concurrent.futures.ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="poi-serve-decode")
    large_lane = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="poi-serve-large",
                                                       initializer=_lower_priority)

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        batcher.close()
        large_lane.shutdown(wait=False, cancel_futures=True)
        decode_lane.shutdown(wait=False, cancel_futures=True)

    # docs_url=None: FastAPI's Swagger page loads its scripts from a CDN, blank on an offline
    # machine; /docs is a page of our own with nothing to fetch (api_page)
    app = FastAPI(title="poi", version=__import__("poi_cli").__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Facial expression, confidence, consistency and action units of every face in images.")
    app.state.batcher, app.state.limits, app.state.serve_state = batcher, limits, state

    def reject(status: int, detail: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            where = " ".join(str(part) for part in item.get("loc", ()) if part not in ("query", "body"))
            value = item.get("input")
            given = f" (got {repr(value)[:60]})" if value is not None and not isinstance(value, (dict, list)) else ""
            problems.append(f"{where}: {item.get('msg', 'invalid')}{given}" if where else f"{item.get('msg', 'invalid')}")
        return reject(422, "bad parameter: " + "; ".join(problems or ["invalid request"]))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "in_flight": state["in_flight"], "served": state["served"],
                "pixels_in_flight": state["pixels_in_flight"], "buffered_bytes": state["buffered_bytes"]}

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # load balancers' probes

    @app.get("/model")
    async def model() -> dict:
        return card

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(api_page(app.openapi()))

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "one or more images (repeat the field)"}}}}}}}
    reason_schema = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}
    statuses = {400: "no usable image, or no files", 408: "the body did not arrive in time",
                413: "too large (bytes, pixels of an image, or pixels of the request)",
                422: "a bad query value", 429: "too many requests in flight",
                503: "the server's memory budget (decoded pixels or bodies, or this client's bodies) is full; retry after "
                     "Retry-After seconds"}

    @app.post("/predict", openapi_extra=upload_schema,
              responses={status: {"description": text, "content": reason_schema} for status, text in statuses.items()})
    async def predict(request: Request, show_au: bool = Query(False, description="add AUs per region and the regions' distributions"),
                      no_detect: bool = Query(False, description="take each image whole as one already-cropped face "
                                                                 "(no detector), as `poi predict --no-detect`")):
        """The records `poi predict --json` prints for the uploaded images, in upload order."""
        holds = _Holds()
        try:
            return await _predict(request, show_au, not no_detect, holds)
        except RequestError as error:
            return reject(error.status, error.detail, error.headers)
        except ClientDisconnect:
            return reject(400, "the client disconnected before sending the whole body")
        except Exception as error:  # never a bare 500 page: a JSON reason, and the server goes on
            return reject(500, f"prediction failed: {type(error).__name__}: {one_line(error)}")
        finally:
            release_body(holds)
            state["pixels_in_flight"] -= holds.pixels
            if holds.counted:
                state["in_flight"] -= 1
            state["served"] += 1
            for form in holds.forms:
                await form.close()
            holds.forms.clear()
            state["decoded_since_trim"] += holds.decoded
            idle = state["in_flight"] == 0 and state["decoded_since_trim"] >= TRIM_WHEN_IDLE_PIXELS
            if idle or state["decoded_since_trim"] >= TRIM_AFTER_PIXELS:
                state["decoded_since_trim"] = 0
                asyncio.get_running_loop().run_in_executor(None, release_memory)

    def release_body(holds: _Holds) -> None:
        """Give back the body a request holds, to the server's budget and to its client's (once)."""
        state["buffered_bytes"] -= holds.body_bytes
        if holds.body_bytes:
            client_bytes[holds.client] -= holds.body_bytes
            if not client_bytes[holds.client]:
                del client_bytes[holds.client]
        holds.body_bytes = 0

    async def _read_body(request: Request, holds: _Holds) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
            raise RequestError(413, f"request body of {int(declared)} bytes; the limit is {limits.max_request_bytes}")
        chunks = []
        # behind a proxy, the address uvicorn takes from its X-Forwarded-For (see docs/serve.md)
        holds.client = request.client.host if request.client else ""

        async def receive() -> None:
            async for chunk in request.stream():  # counted too: a chunked body has no Content-Length
                holds.body_bytes += len(chunk)
                state["buffered_bytes"] += len(chunk)
                client_bytes[holds.client] = client_bytes.get(holds.client, 0) + len(chunk)
                if holds.body_bytes > limits.max_request_bytes:
                    raise RequestError(413, f"request body over {limits.max_request_bytes} bytes")
                if client_bytes[holds.client] > limits.max_client_buffered_bytes:
                    raise RequestError(503, f"server busy: this client's request bodies over "
                                            f"{limits.max_client_buffered_bytes / MiB:g} MiB are held at once; retry "
                                            "later", {"Retry-After": "1"})
                if state["buffered_bytes"] > limits.max_buffered_bytes:
                    raise RequestError(503, f"server busy: request bodies over {limits.max_buffered_bytes // MiB} MiB "
                                            "are held at once; retry later", {"Retry-After": "1"})
                chunks.append(chunk)

        try:  # wait_for, not asyncio.timeout (Python 3.11+: on 3.10 every upload was a 500)
            await asyncio.wait_for(receive(), limits.body_timeout_s)
            return b"".join(chunks)
        except (TimeoutError, asyncio.TimeoutError):  # one class from 3.11; two before
            raise RequestError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s "
                                    f"({holds.body_bytes} bytes received)", {"Connection": "close"}) from None
        finally:
            # a refused body is let go now: the frames of its exception, a reference cycle that
            # only the garbage collector breaks, kept it (8 clients past the limit: 1424 MiB resident)
            chunks.clear()

    async def _uploads(request: Request, holds: _Holds) -> tuple[Any, list[Upload]]:
        body = await _read_body(request, holds)
        if not body:
            raise RequestError(400, "empty request: send images as multipart form field `files`")
        # Only a request whose body has arrived is in flight: a stalled client holds no slot.
        if state["in_flight"] >= limits.max_in_flight:
            raise RequestError(429, f"{state['in_flight']} requests in flight (limit {limits.max_in_flight}); retry later")
        state["in_flight"] += 1
        holds.counted = True
        request._body = body  # starlette parses the form from the body read above
        del body
        try:
            form = await request.form(max_files=limits.max_files + 1, max_fields=limits.max_files + 16)
        except Exception as error:
            if "too many files" in str(error).lower():  # Starlette's own words name the + 1 above as the limit
                raise RequestError(400, f"more than {limits.max_files} files in one request") from None
            raise RequestError(400, f"not a multipart form with `files`: {one_line(error)}") from None
        finally:
            request._body = b""  # the parts are in the form's spooled files now
        holds.forms.append(form)
        files = [f for f in form.getlist("files") if hasattr(f, "read")]
        if not files:
            raise RequestError(400, "no files: send images as multipart form field `files`")
        if len(files) > limits.max_files:
            raise RequestError(400, f"more than {limits.max_files} files in one request")
        return form, [Upload(_safe_name(f.filename, n), f.file) for n, f in enumerate(files)]

    def _reserve(uploads: list[Upload], holds: _Holds) -> None:
        """The pixel limits, from the headers alone; then this request's share of the budget."""
        for upload in uploads:
            if upload.pixels > limits.max_pixels:
                size = f"{upload.size[0]}x{upload.size[1]} = " if upload.size else ""
                raise RequestError(413, f"{upload.name}: {size}{upload.pixels / 1e6:.1f} megapixels; "
                                        f"the limit is {limits.max_pixels / 1e6:.1f} megapixels per image")
        total = sum(u.pixels for u in uploads)
        if total > limits.max_request_pixels:
            raise RequestError(413, f"{len(uploads)} images of {total / 1e6:.1f} megapixels in all; "
                                    f"the limit is {limits.max_request_pixels / 1e6:.1f} megapixels per request")
        # What it holds until answered: every image once decoded (and shrunk). A large image
        # at full size exists only while the large lane decodes it, one at a time server-wide.
        need = sum(u.kept_pixels(limits.decode_side) for u in uploads)
        busy = state["pixels_in_flight"]
        if busy and busy + need > limits.max_pixels_in_flight:
            raise RequestError(503, f"server busy: {busy / 1e6:.0f} megapixels of images are being decoded or "
                                    f"predicted, this request needs {need / 1e6:.1f} more (limit "
                                    f"{limits.max_pixels_in_flight / 1e6:.0f}); retry later", {"Retry-After": "1"})
        holds.pixels = need
        state["pixels_in_flight"] += need

    def _decode_all(uploads: list[Upload], large: bool) -> None:
        """In a worker thread: one image at a time, each shrunk before the next is decoded."""
        for upload in uploads:
            decode_upload(upload, limits.decode_side)
        if large:
            release_memory()  # the full-size images are gone: hand their pages back now

    async def _predict(request: Request, show_au: bool, detect: bool, holds: _Holds) -> Any:
        form, uploads = await _uploads(request, holds)
        try:
            await asyncio.to_thread(lambda: [probe_upload(u) for u in uploads])
            _reserve(uploads, holds)
            holds.decoded = sum(u.pixels for u in uploads)
            large = max(u.pixels for u in uploads) > large_image_pixels(limits)
            await asyncio.get_running_loop().run_in_executor(large_lane if large else decode_lane, _decode_all,
                                                             uploads, large)
        finally:
            await form.close()  # the spooled files: every upload is decoded (or refused) by now
            release_body(holds)  # the body is now decoded pixels (or nothing)
        good = [u for u in uploads if u.image is not None]
        if not good:
            reasons = "; ".join(f"{u.name}: {u.error}" for u in uploads)
            raise RequestError(400, f"no readable image ({reasons})")
        future = batcher.submit([u.image for u in good], show_au, detect)
        for upload in good:
            upload.image = None  # the batcher's job holds the images now, and drops them after its batch
        per_image = await asyncio.wrap_future(future)
        records, results = [], iter(per_image)
        for upload in uploads:
            if upload.error is not None:
                records.append(json_record(FaceRecord.empty(upload.name, STATUS_ERROR, upload.error, show_au)))
                continue
            for record in next(results):
                record["image"] = upload.name
                records.append(scale_record(record, upload.scale))
        return records

    return app


# ---------------------------------------------------------------------------- serving


def exposure_warning(host: str) -> Optional[str]:
    """A one-line warning when `host` is reachable from other machines (the API has no authentication)."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass  # a host name: other machines may reach it
    return (f"listening on {host}: the API has no authentication, so anyone who can reach this address can "
            "use it (keep the default 127.0.0.1 unless that is intended)")


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, or ServeError with one line (checked before uvicorn starts)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ServeError(f"--port {port} is not a TCP port (1-65535)")
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ServeError(f"cannot listen on {where}: unknown host ({one_line(error)})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        reason = error.strerror or one_line(error)
        if error.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise ServeError(f"cannot listen on {where}: {reason[:1].lower()}{reason[1:]}") from None
    return sock


def _with_header_timeout(protocol_class: type, seconds: float) -> type:
    """uvicorn's HTTP protocol, closing a connection that has not sent a request's headers
    within `seconds` of connecting or of its last response (uvicorn itself waits forever for
    the first request, and on a kept-alive connection any byte cancels its keep-alive timer:
    a client trickling its next request's headers, or the rest of a body a route never read,
    held the connection for ever, and 256 of them locked every other client out)."""

    class HeaderTimeoutProtocol(protocol_class):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._poi_arm_header_timer()

        def _poi_arm_header_timer(self) -> None:
            timer = getattr(self, "_poi_header_timer", None)
            if timer is not None:
                timer.cancel()
            self._poi_header_timer = self.loop.call_later(seconds, self._poi_header_timeout, getattr(self, "cycle", None))

        def _poi_header_timeout(self, armed: Any) -> None:
            # no new request since the timer was armed, and none in progress (a pipelined one
            # started in on_response_complete is armed with itself and not yet complete)
            idle = getattr(self, "cycle", None) is armed and (armed is None or armed.response_complete)
            if idle and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._poi_arm_header_timer()  # the next request's headers get their own deadline

        def connection_lost(self, exc: Optional[Exception]) -> None:
            timer = getattr(self, "_poi_header_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def uvicorn_config(app: Any, limits: ServeLimits, log_level: str = "info") -> Any:
    """uvicorn's Config for `app` under these limits (keep-alive, connections, header timeout)."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return uvicorn.Config(app, log_level=log_level, workers=1, timeout_keep_alive=max(1, round(limits.keep_alive_s)),
                          limit_concurrency=limits.max_connections,
                          http=_with_header_timeout(AutoHTTPProtocol, limits.header_timeout_s))


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits = ServeLimits(),
          log_level: str = "info", warn: Optional[Callable[[str], None]] = None) -> None:
    """Run the server until Ctrl-C (uvicorn, one process: the model is loaded once).

    ServeError (one line) for a bad port or an address that cannot be listened on, before
    anything starts. warn: called with a one-line warning when host is not a loopback
    address (default: printed on stderr)."""
    try:
        import uvicorn
    except ImportError as error:
        raise ServeError(f"poi serve needs uvicorn ({one_line(error)}); pip install fastapi uvicorn python-multipart") from None
    sock = listen_socket(host, port)
    try:
        message = exposure_warning(host)
        if message:
            (warn or (lambda text: print(f"warning: {text}", file=sys.stderr)))(message)
        app = create_app(predictor, limits)
        server = uvicorn.Server(uvicorn_config(app, limits, log_level))
        shown = f"[{host}]" if ":" in host else host
        import logging

        logging.getLogger("uvicorn.error").info("poi serve: http://%s:%d (Ctrl-C to stop)", shown, port)
        server.run(sockets=[sock])
    finally:
        sock.close()
