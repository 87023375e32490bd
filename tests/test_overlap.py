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
