"""Shared fixtures: a tiny prepared dataset, a tiny checkpoint and tiny trained runs.

`make_prepared(root, ...)` writes prepared.json, manifest.csv and faces.npy
(poi_cli.data.store.write_store) with class-dependent patterns a ResNet learns in a few steps: class c
is horizontal stripes of frequency c + 1 (invariant to the flips and small shifts of
training augmentation), plus per-image noise, phase and tint.

`write_checkpoint(path, model)` saves a model as training does (build_checkpoint,
save_checkpoint), `tiny_model()` by default, so that a test checkpoint is made one way
(test_schema still writes raw dicts: the checkpoint format itself is what it tests). The
session-scoped `tiny_checkpoint` and `tiny_runs` are built once and shared, so a test only
reads them; one that changes the checkpoint takes `tiny_checkpoint_copy`.
torch and pandas are imported inside the functions, so that the deploy tests collect in
.venv-deploy (no torch, no pandas) and collecting the torch-free tests stays light.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import pytest

from poi_cli.core.manifests import class_names
from poi_cli.core.schema import STATUS_NO_FACE, STATUS_OK
from poi_cli.train.config import TrainConfig

if TYPE_CHECKING:
    import torch

    from poi_cli.model.network import POIModel
    from poi_cli.train.engine import Trainer

DEFAULT_SPLITS = {"train": 6, "valid": 2, "test": 2}  # images per class
TINY_SPLITS = {"train": 2, "valid": 1}  # 14 training and 7 validation images: an epoch takes seconds
TINY_SIZE = 64  # side of the faces and of the model input of the tiny models
# the tiny models' ResNet: half ResNet-18's weights, so that the many tests that train, copy, hash
# and load tiny checkpoints spend half as long on them (ResNet-18's own shapes: test_model)
TINY_ARCH = "resnet10"


def stripe_image(label: int, size: int, rng: np.random.Generator, grayscale: bool = False) -> np.ndarray:
    """(size, size, 3) uint8: stripes of frequency label + 1 down the image, with noise."""
    y = np.arange(size)[:, None] / size
    phase = rng.uniform(0, 2 * np.pi)
    value = 0.5 + 0.35 * np.sin(2 * np.pi * (label + 1) * y + phase) + rng.normal(0, 0.05, (size, size))
    tint = np.ones(3) if grayscale else rng.uniform(0.7, 1.0, 3)
    image = np.clip(value[..., None] * tint, 0, 1)
    return (image * 255).astype(np.uint8)


def make_prepared(
    root: Path,
    size: int = 64,
    num_classes: int = 7,
    splits: dict[str, int] | None = None,
    grayscale: bool = False,
    seed: int = 0,
    failed: int = 0,
) -> Path:
    """Write a prepared folder under `root`; `failed` extra manifest rows per split have no face."""
    splits = splits or DEFAULT_SPLITS
    rng = np.random.default_rng(seed)
    names = class_names(num_classes)
    faces, rows = [], []
    for split, per_class in splits.items():
        for label in range(num_classes):
            for index in range(per_class):
                rows.append({
                    "id": f"{split}/{names[label]}_{index:03d}", "source": f"{split}/{names[label]}_{index:03d}.png",
                    "split": split, "label": label, "label_name": names[label], "status": STATUS_OK,
                    "reason": "", "det_score": 1.0, "n_faces": 1, "store_index": len(faces),
                })
                faces.append(stripe_image(label, size, rng, grayscale))
        for index in range(failed):
            rows.append({
                "id": f"{split}/noface_{index:03d}", "source": f"{split}/noface_{index:03d}.png", "split": split,
                "label": 0, "label_name": names[0], "status": STATUS_NO_FACE, "reason": "no face detected",
                "n_faces": 0, "store_index": -1,
            })
    from poi_cli.data.store import write_store  # pandas: not in the deploy environment

    return write_store(root, np.stack(faces), rows, dataset="synthetic-stripes", classes=names, grayscale=grayscale)


def add_folds(data: Path, folds: int = 3, split: str = "train") -> Path:
    """Give a prepared folder what `poi prepare ckplus` writes for cross-validation: a fold column
    (`split`'s images dealt round robin over 0..folds-1, -1 for the others) and the protocol."""
    import json

    import pandas as pd

    from poi_cli.data.folds import FOLD_COLUMN, NO_FOLD

    manifest = pd.read_csv(data / "manifest.csv")
    inside = manifest["split"] == split
    manifest[FOLD_COLUMN] = NO_FOLD
    manifest.loc[inside, FOLD_COLUMN] = np.arange(inside.sum()) % folds
    manifest.to_csv(data / "manifest.csv", index=False)
    meta = json.loads((data / "prepared.json").read_text())
    meta["protocol"] = {"kind": "subject_folds", "folds": folds, "seed": 0}
    (data / "prepared.json").write_text(json.dumps(meta, indent=1))
    return data


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """A 7-class, 64 px prepared folder: 42 train, 14 valid, 14 test images."""
    return make_prepared(tmp_path / "prepared")


def tiny_model(num_classes: int = 7, use_pin: bool = True, seed: int = 0, **options: Any) -> "POIModel":
    """A randomly initialised 64 px POI model (the baseline with use_pin=False), the same for
    the same seed; options: other ModelConfig fields."""
    import torch

    from poi_cli.model.network import ModelConfig, POIModel

    torch.manual_seed(seed)
    return POIModel(ModelConfig(**{"arch": TINY_ARCH, "num_classes": num_classes, "input_size": TINY_SIZE,
                                   "use_pin": use_pin, **options}))


def write_checkpoint(path: Path, model: Optional["POIModel"] = None, classes: Optional[Sequence[str]] = None,
                     epoch: int = 1, **fields: Any) -> Path:
    """`model` (tiny_model() when None) saved at `path` as training saves it, for faces of its
    input size; classes: the canonical names of its class count when None; fields: the other
    arguments of build_checkpoint (config, calibration, ...)."""
    from poi_cli.data.preprocess import Preprocessing
    from poi_cli.model.checkpoint import build_checkpoint, save_checkpoint

    model = tiny_model() if model is None else model
    config = model.config
    preprocessing = Preprocessing(face_size=config.input_size, input_size=config.input_size)
    save_checkpoint(path, build_checkpoint(model=model, model_config=config, preprocessing=preprocessing, epoch=epoch,
                                           classes=classes or class_names(config.num_classes), **fields))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """write_checkpoint's default (7 classes, 64 px: it fits `prepared`), written once per session.
    Shared: read it only; a test that changes it or writes beside it takes tiny_checkpoint_copy."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "model.pt")


@pytest.fixture
def tiny_checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """This test's own copy of tiny_checkpoint: tmp_path / "model.pt"."""
    return Path(shutil.copyfile(tiny_checkpoint, tmp_path / "model.pt"))


def tiny_config(data: Path, project: Path, **overrides: Any) -> TrainConfig:
    """A run that trains on a tiny store in seconds: ResNet-10 at 64 px, 2 epochs of batch 7, lr 0.01, no bf16,
    seed 0."""
    values = dict(data=str(data), arch=TINY_ARCH, input_size=TINY_SIZE, epochs=2, batch=7, lr=0.01,
                  project=str(project), amp="off", seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def first_batch(trainer: "Trainer") -> tuple["torch.Tensor", "torch.Tensor"]:
    """The model input and labels of epoch 0's first training batch (augmented as training does)."""
    loader, augment = trainer.make_loader(), trainer.make_augment()
    loader.set_epoch(0)
    images, labels, _, _ = next(iter(loader))
    return trainer.batch_input(images, augment, trainer.epoch_generator(0)), labels


# A training run for kill-and-resume tests: `python -c STALLING_RUN DATA PROJECT [DEVICE [ARCH]]`
# trains 2 epochs (name "killed") with a callback that announces itself on stderr and hangs
# before step 2 of epoch 2, so that the test can SIGKILL the run mid-epoch.
STALLING_RUN = """
import sys, time
from poi_cli.train.config import TrainConfig
from poi_cli.train.engine import Callback, train

class Stall(Callback):
    def on_step(self, epoch, step):
        if (epoch, step) == (1, 1):
            print("stalled at epoch 2 step 2", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)

data, project, device, arch = (sys.argv[1:] + ["auto", "resnet10"])[:4]
config = TrainConfig(data=data, input_size=64, epochs=2, batch=7, lr=0.01, project=project, amp="off", seed=0,
                     name="killed", device=device, arch=arch)
train(config, callbacks=[Stall()])
"""


def train_until_killed(data: Path, project: Path, *device_and_arch: str) -> None:
    """Run STALLING_RUN on `data` into `project` and SIGKILL it once it hangs in epoch 2.

    With this process's torch thread count: the float sums, and so the weights, differ
    between counts, and the test compares the resumed run with one trained here."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen([sys.executable, "-c", STALLING_RUN, str(data), str(project), *device_and_arch], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, process.kill)  # never hang the suite
    watchdog.start()
    try:
        assert process.stderr is not None
        for line in process.stderr:  # wait until the run hangs in epoch 2, step 2
            if "stalled at epoch 2 step 2" in line:
                break
        else:
            pytest.fail(f"training exited ({process.wait()}) before reaching epoch 2")
        process.send_signal(signal.SIGKILL)
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()


@dataclass(frozen=True)
class TinyRuns:
    """Two run folders trained for one epoch (tiny_config) on the same tiny store."""

    data: Path  # the prepared store (TINY_SPLITS) both trained on
    poi: Path  # POI
    baseline: Path  # the baseline: the TRN and cross-entropy alone


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    """TinyRuns, trained once per session. Shared: read them or start from them (--teacher,
    --fine-tune, a copy of a config.json), never train into them or change their files."""
    from rich.console import Console

    from poi_cli.train.engine import train

    root = tmp_path_factory.mktemp("tiny_runs")
    data = make_prepared(root / "data", splits=TINY_SPLITS)
    quiet = Console(file=io.StringIO())
    poi = train(tiny_config(data, root / "runs", epochs=1, name="poi"), quiet)
    baseline = train(tiny_config(data, root / "runs", epochs=1, use_pin=False, name="baseline"), quiet)
    return TinyRuns(data, poi, baseline)


def numbers_of(value) -> list[float]:
    """Every number in a (nested) record, in a fixed order: to compare two records numerically."""
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in numbers_of(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in numbers_of(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def hide_module(monkeypatch: pytest.MonkeyPatch, module: str, broken: bool = False) -> None:
    """Make `import module` fail as if it were not installed (ModuleNotFoundError, as Python
    raises), or, broken=True, installed but failing to import (ImportError: e.g. onnxruntime
    1.18.0 under numpy 2), for the one-line error tests."""
    import builtins

    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == module:
            raise (ImportError if broken else ModuleNotFoundError)(f"no {module}", name=module)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)


def refuse_to_list(monkeypatch: pytest.MonkeyPatch, folder_name: str) -> None:
    """os.scandir of any folder named `folder_name` fails as after chmod 000 (root, who may run
    this suite, is not stopped by chmod)."""
    real_scandir = os.scandir

    def no_permission(path: Any = ".") -> Any:
        if Path(path).name == folder_name:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", no_permission)
