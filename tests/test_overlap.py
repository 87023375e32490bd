"""The overlapped image pipeline (deploy/overlap.py) against the sequential one.

The same folder through Predictor(workers=0) (one chunk, one batched MTCNN pass) and
Predictor(workers=2) (threads load, detect and align; the model runs on faces gathered
from several images): the same records, in input order, for real faces (skimage's
astronaut, alone and twice in one photo), a corrupt file, a no-face image and one too small to read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skimage_data

from conftest import numbers_of
from poi_cli.backends import open_runner
from poi_cli.deploy.predict import Predictor, bundled_model

TOLERANCE = 1e-5  # batched float arithmetic may differ in the last digits; records round to 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("overlap")
    face = Image.fromarray(skimage_data.astronaut())
    face.resize((300, 300)).save(root / "a_astronaut.png")
    (root / "b_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    group = Image.new("RGB", (640, 320), (90, 90, 90))
    group.paste(face.resize((300, 300)), (0, 10))
    group.paste(ImageOps.mirror(face).resize((280, 280)), (340, 20))
    group.save(root / "c_group.jpg", quality=92)
    Image.fromarray(skimage_data.coffee()).resize((300, 200)).save(root / "d_coffee.jpg")  # no face
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(root / "e_tiny.png")  # too small to read: an error
    ImageOps.mirror(face).resize((256, 256)).save(root / "f_mirrored.jpg")
    return root




def _skeleton(value):
    """A record with every number replaced by its type: what must match exactly."""
    if isinstance(value, dict):
        return {k: _skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_skeleton(v) for v in value]
    return type(value).__name__ if isinstance(value, float) else value


def test_overlapped_pipeline_gives_the_sequential_records_in_input_order(folder):
    model = bundled_model()
    assert model is not None
    # batch_size 2: the faces of one photo are split over model batches and batches mix photos
    sequential = Predictor(open_runner(model), workers=0, batch_size=2).predict_records([folder], show_au=True)
    overlapped_predictor = Predictor(open_runner(model), workers=2, batch_size=2)
    overlapped = overlapped_predictor.predict_records([folder], show_au=True)
    names = [Path(r["image"]).name for r in overlapped]
    assert names == ["a_astronaut.png", "b_corrupt.jpg", "c_group.jpg", "c_group.jpg", "d_coffee.jpg", "e_tiny.png",
                     "f_mirrored.jpg"]
    assert [r["status"] for r in overlapped] == ["ok", "error", "ok", "ok", "no_face", "error", "ok"]
    assert len(sequential) == len(overlapped)
    for a, b in zip(sequential, overlapped):
        assert _skeleton(a) == _skeleton(b)  # keys, statuses, reasons, expressions, which values are null
        assert np.allclose(numbers_of(a), numbers_of(b), atol=TOLERANCE, rtol=0)
    assert overlapped_predictor.timings["detection"] > 0 and overlapped_predictor.timings["model"] > 0


def test_overlapped_pipeline_streams_and_stops_early(folder):
    predictor = Predictor(open_runner(bundled_model()), workers=2)
    stream = predictor.iter_predictions([folder])
    first = next(stream)
    assert Path(first.source).name == "a_astronaut.png" and first.records[0].status == "ok"
    stream.close()  # the pool is shut down, the images not started are cancelled
    again = [p.source for p in predictor.iter_predictions(sorted(folder.iterdir())[:2])]
    assert [Path(s).name for s in again] == ["a_astronaut.png", "b_corrupt.jpg"]


class GatedDetector:
    """Finds one face in every image (the whole picture), but waits before detecting image `gate_at`
    until the consumer has seen the images before it (or `patience` seconds pass)."""

    name = "gated"

    def __init__(self, gate_at: int, patience: float = 10.0) -> None:
        import threading

        self.seen, self.gate_at, self.patience = threading.Event(), gate_at, patience
        self.waited_out = False

    def detect(self, images):
        from poi_cli.data.faces import Face

        found = []
        for image in images:
            if image.width == 200 + self.gate_at:  # image k is 200 + k px wide
                self.waited_out = not self.seen.wait(self.patience)
            box = np.array([0, 0, image.width, image.height], np.float32)
            landmarks = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.75], [0.62, 0.75]], np.float32) * [
                image.width, image.height]
            found.append([Face(box=box, landmarks=landmarks.astype(np.float32), score=0.99)])
        return found


def test_faces_stream_out_while_the_next_image_is_still_being_detected():
    """A batch with faces waited for batch_size faces however slow the next image's detection
    (only a batch of faceless images went to the model early): rows reached the CSV in bursts
    of 32, a Ctrl-C kept none of them, and 32 decoded photos were held meanwhile."""
    images = [Image.fromarray(np.random.default_rng(k).integers(0, 255, (150, 200 + k, 3), dtype=np.uint8))
              for k in range(4)]
    detector = GatedDetector(gate_at=2, patience=10.0)
    predictor = Predictor(open_runner(bundled_model()), detector=detector, workers=1, batch_size=32)
    stream = predictor.iter_predictions(images)
    first, second = next(stream), next(stream)  # before image 2's detection can finish
    detector.seen.set()
    rest = list(stream)
    assert not detector.waited_out
    assert [len(p.records) for p in (first, second, *rest)] == [1, 1, 1, 1]
    assert all(r.status == "ok" for p in (first, second, *rest) for r in p.records)


def test_pictures_are_let_go_unless_kept_and_a_batch_holds_few_megapixels(folder, monkeypatch):
    """keep_images=False (predict_records, the CLI without --save-vis, serve): no decoded picture
    is held once its faces are cut out, with the same records; kept pictures are capped per batch."""
    import poi_cli.deploy.overlap as overlap

    predictor = Predictor(open_runner(bundled_model()), workers=2)
    kept = list(predictor.iter_predictions([folder]))
    let_go = list(predictor.iter_predictions([folder], keep_images=False))
    assert all(p.image is None for p in let_go)
    assert [p.image is None for p in kept] == [False, True, False, False, True, False]  # b, e cannot be read
    assert [[r.to_dict() for r in p.records] for p in kept] == [[r.to_dict() for r in p.records] for p in let_go]
    sequential = Predictor(open_runner(bundled_model()), workers=0)
    assert all(p.image is None for p in sequential.iter_predictions([folder], keep_images=False))
    # kept pictures: a batch goes to the model once it holds MAX_HELD_PIXELS
    sizes = []
    finish = predictor.finish
    monkeypatch.setattr(predictor, "finish", lambda batch, show_au: sizes.append(len(batch)) or finish(batch, show_au))
    monkeypatch.setattr(overlap, "MAX_HELD_PIXELS", 1)
    monkeypatch.setattr(overlap.ThreadPoolExecutor, "submit", lambda self, fn, *a: _done(fn(*a)))
    list(predictor.iter_predictions([folder]))
    assert sizes == [1, 2, 1, 2]  # each picture is its batch; an unreadable one holds none and waits for the next


def _done(value):
    from concurrent.futures import Future

    future = Future()
    future.set_result(value)
    return future
