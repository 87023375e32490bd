"""Parity of the deploy runtime (the bundled .onnx on ONNX Runtime) with the torch path
(the bundled .pt on torch) on real faces, and the bundled model's FERPlus valid accuracy
through both.

    python benchmarks/backend_parity.py                     # ../shared photos, SFEW val, FERPlus valid
    python benchmarks/backend_parity.py --shared /path/to/shared --ferplus-store prepared/ferplus96

1. ../shared/photos: every face the default detector finds, aligned once; both runners on
   the same aligned faces: the largest difference of any probability, consistency, AU,
   region and p~* value, and whether the expression is the same.
2. SFEW 2.0 val crops with --no-detect (each image taken whole as one face): the same.
3. FERPlus valid: the prepared store at the model's face size (made here with `poi prepare`
   if --ferplus-store is not given): accuracy of each runner against the store's labels,
   and the largest probability difference over all faces; each runner's faces/s on them
   (one after the other, on the same --threads) and their ratio, onnx / torch.
Needs torch (the train extra): it runs both backends in one process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poi_cli.backends import open_runner  # noqa: E402
from poi_cli.core.manifests import CLASSES  # noqa: E402
from poi_cli.core.outputs import ModelOutputs  # noqa: E402
from poi_cli.data.faces import ImageLoadError, load_image, make_detector  # noqa: E402

FIELDS = ("probabilities", "consistency", "eye_aus", "mouth_aus", "region_probabilities", "pin_probabilities")


def compare(a: ModelOutputs, b: ModelOutputs) -> tuple[float, int]:
    """The largest absolute difference over every output, and how many argmaxes differ."""
    largest = max(float(np.abs(getattr(a, f) - getattr(b, f)).max()) for f in FIELDS if getattr(a, f) is not None)
    return largest, int((a.probabilities.argmax(-1) != b.probabilities.argmax(-1)).sum())


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--ferplus-store", type=Path, help="a `poi prepare ferplus` store at the model's face size")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from poi_cli.core.threads import configure_threads

    configure_threads(args.threads)
    onnx_runner = open_runner(None, backend="onnx", threads=args.threads)
    torch_runner = open_runner(None, backend="torch", device="cpu")
    print(f"ONNX Runtime: {onnx_runner.path.name}; torch: {torch_runner.path.name}; threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.2f}")
    pre = onnx_runner.preprocessing

    photos = images_in(args.shared / "photos")
    detector = make_detector("mtcnn", min_score=0.95, threads=args.threads)
    crops = []
    for path in photos:
        try:
            image = load_image(path)
        except ImageLoadError:
            continue
        crops += [pre.face(image, face.landmarks) for face in detector.detect([image])[0]]
    largest, differ = compare(onnx_runner.run(np.stack(crops)), torch_runner.run(np.stack(crops)))
    print(f"1. {len(photos)} photos, {len(crops)} detected faces: largest difference {largest:.2e}, "
          f"expression differs on {differ}")

    sfew = images_in(args.shared / "datasets/sfew/Val")
    crops = [pre.whole_face(load_image(path)) for path in sfew]
    largest, differ = compare(onnx_runner.run(np.stack(crops)), torch_runner.run(np.stack(crops)))
    print(f"2. SFEW val, {len(crops)} crops with --no-detect: largest difference {largest:.2e}, "
          f"expression differs on {differ}")

    with tempfile.TemporaryDirectory() as work:
        store = args.ferplus_store
        if store is None:
            store = Path(work) / "ferplus"
            subprocess.run([sys.executable, "-m", "poi_cli", "prepare", "ferplus", str(args.shared / "datasets/ferplus"),
                            "--out", str(store), "--size", str(pre.face_size), "--splits", "val"],
                           check=True, capture_output=True, cwd=ROOT)
        from poi_cli.data.store import PreparedDataset

        dataset = PreparedDataset(store)
        split = next(s for s in ("valid", "val") if s in dataset.splits())
        data = dataset.split(split)
        faces = np.asarray(dataset.faces[data.store_rows])
        labels = np.asarray(data.labels)  # canonical class indices (core.manifests.CLASSES)
        to_store = np.array([CLASSES.index(c) for c in onnx_runner.classes])  # the model's classes, by name
        results, speeds = {}, {}
        for name, runner in (("onnx", onnx_runner), ("torch", torch_runner)):
            start = time.perf_counter()
            results[name] = runner.run(faces)
            seconds = time.perf_counter() - start
            speeds[name] = len(faces) / seconds
            accuracy = float((to_store[results[name].probabilities.argmax(-1)] == labels).mean())
            print(f"3. FERPlus {split}, {len(faces)} faces, {name:5s}: accuracy {100 * accuracy:.2f} % "
                  f"({len(faces) / seconds:.0f} faces/s)")
        largest, differ = compare(results["onnx"], results["torch"])
        print(f"   largest difference {largest:.2e}, expression differs on {differ}; load average {os.getloadavg()[0]:.2f}")
        print(f"   onnx / torch speed: {speeds['onnx'] / speeds['torch']:.2f}x (faces/s, same faces and threads, this run)")


if __name__ == "__main__":
    main()
