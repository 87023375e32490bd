"""The overlapped image pipeline of `poi predict` (folders, many files, `poi serve` batches).

    for prediction in iter_overlapped(predictor, items, show_au=False, workers=2): ...

A small thread pool loads, detects (MTCNN, one image per call) and aligns images ahead
of the model, WINDOW_PER_WORKER images per worker in flight, while this thread runs the
model on batches of faces gathered from many images (up to predictor.batch_size faces)
and yields each image's records in input order as soon as its batch is done.

Threads, not processes: decoding (Pillow) and torch's operators release the GIL, the
model and MTCNN are loaded once, and a worker process would pay torch's import (seconds)
again. The records are the sequential path's (FacePipeline.predict_chunk): the same
functions detect, align and build them; an image's faces do not depend on the others
in its batch (faces.FaceDetector pads each image to a canvas of its own size), so only
float rounding of batched arithmetic can differ (tests/test_overlap.py).

A worker that fails (the detector cannot run) fails the iteration, as on the
sequential path; a consumer that stops early (Ctrl-C, a closed generator) cancels the
images not yet started.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from poi_cli.deploy.pipeline import FacePipeline, ImagePrediction, InputItem, PreparedImage

WINDOW_PER_WORKER = 4  # images queued per worker: enough to keep it busy while the model runs
# The pictures a batch may hold while it waits for faces (keep_images: --save-vis draws on them):
# 48 megapixels is 144 MB decoded, two 24-megapixel photos; 32 such photos were 2.3 GB.
MAX_HELD_PIXELS = 48_000_000


def iter_overlapped(predictor: "FacePipeline", items: Sequence["InputItem"], show_au: bool,
                    workers: int, keep_images: bool = True) -> Iterator["ImagePrediction"]:
    """ImagePredictions of these image items, in their order (see the module docstring);
    keep_images=False: their decoded pictures are let go once the faces are cut out
    (FacePipeline.prepare_image), so the images waiting for the model hold their faces only."""
    detector = predictor.detector if predictor.detect else None  # made here, once, not raced by workers
    window = max(1, workers) * WINDOW_PER_WORKER
    # An image with no face still waits for the next model batch so that order is kept;
    # cap the images per batch too, so a run of faceless images streams out.
    max_images = max(predictor.batch_size, predictor.images_per_batch)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="poi-prepare")
    pending: deque[Future] = deque()
    upcoming = iter(items)
    try:
        def refill() -> None:
            while len(pending) < window:
                item = next(upcoming, None)
                if item is None:
                    return
                pending.append(pool.submit(predictor.prepare_image, item, detector, keep_images))

        refill()
        batch: list[PreparedImage] = []
        faces = pixels = 0
        while pending:
            prepared = pending.popleft().result()  # in input order; a worker's exception surfaces here
            refill()
            batch.append(prepared)
            faces += len(prepared.crops)
            pixels += 0 if prepared.image is None else prepared.image.width * prepared.image.height
            # Run the model on a full batch, or when the next image is not ready yet: the model
            # would wait for it anyway, and its results (rows in the CSV, kept by a Ctrl-C) and
            # its pictures (held while waiting) stream instead of waiting for a batch that is
            # still being detected (when detection is the slow stage, as on large photos).
            next_not_ready = bool(pending) and not pending[0].done()
            if (faces >= predictor.batch_size or len(batch) >= max_images or not pending or next_not_ready
                    or pixels >= MAX_HELD_PIXELS):
                yield from predictor.finish(batch, show_au)
                batch, faces, pixels = [], 0, 0
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
