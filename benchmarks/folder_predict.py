"""Images/s of `poi predict` on a folder: today's sequential path vs the overlapped pipeline,
PyTorch vs ONNX Runtime, side by side in one process.

    python benchmarks/folder_predict.py                    # 200 photos, bundled model, CPU
    python benchmarks/folder_predict.py --count 60 --rounds 2 --threads 1

The folder is made here from public-domain images of scikit-image (skimage.data): the
astronaut (NASA) resized to 320-800 px, mirrored and shifted on a random background
(3 in 5 photos), a two-face photo (the astronaut beside a smaller mirrored copy, 1 in
5), and photos without a face (coffee, chelsea, rocket, coins, moon, clock, Hubble,
immunohistochemistry; 1 in 5), saved as JPEG.

Configurations (Predictor on the same folder, each after a warm-up image):
  sequential/torch   workers=0: chunks of 8 images, one batched MTCNN pass each (before)
  overlapped/torch   workers=2: threads load, detect and align; the model on batches of
                     faces from many images, records in input order
  overlapped/onnx    the same with --backend onnx (the model run by ONNX Runtime)
  sequential/onnx
With --rounds N the configurations are interleaved N times (the load of other jobs
drifts). Per configuration: images/s (median over rounds), process CPU seconds per
image, and the stage split (load, detection, alignment, model; summed over workers).
Then the model alone on the folder's aligned faces, torch vs ONNX Runtime (faces/s).
Prints the machine, thread count and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "sequential/torch": dict(workers=0, backend="torch"),
    "overlapped/torch": dict(workers=2, backend="torch"),
    "overlapped/onnx": dict(workers=2, backend="onnx"),
    "sequential/onnx": dict(workers=0, backend="onnx"),
}


def make_folder(folder: Path, count: int, seed: int = 0) -> None:
    """`count` JPEG photos from skimage.data (see the module docstring)."""
    import numpy as np
    from PIL import Image, ImageOps
    from skimage import data

    rng = np.random.default_rng(seed)
    face = Image.fromarray(data.astronaut())
    group = Image.new("RGB", (900, 512), (120, 120, 120))
    group.paste(face, (0, 0))
    group.paste(ImageOps.mirror(face).resize((380, 380)), (512, 60))
    others = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in
              ("coffee", "chelsea", "rocket", "coins", "moon", "clock", "hubble_deep_field", "immunohistochemistry")]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        kind = index % 5
        image = face if kind < 3 else group if kind == 3 else others[index // 5 % len(others)]
        side = int(rng.integers(320, 800))
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        dx, dy = (int(v) for v in rng.integers(0, 60, 2))
        canvas = Image.new("RGB", (image.width + dx, image.height + dy), tuple(int(v) for v in rng.integers(0, 255, 3)))
        canvas.paste(image, (dx, dy))
        canvas.save(folder / f"photo_{index:03d}.jpg", quality=90)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_config(predictor, folder: Path, count: int) -> dict:
    for key in predictor.timings:
        predictor.timings[key] = 0.0
    cpu, start = cpu_seconds(), time.perf_counter()
    records = [r for p in predictor.iter_predictions([folder]) for r in p.records]
    wall = time.perf_counter() - start
    return {"wall": wall, "images_per_s": count / wall, "cpu_per_image": (cpu_seconds() - cpu) / count,
            "stages": dict(predictor.timings), "records": records}


def model_only(predictor, crops: list, repeats: int) -> float:
    """Faces/s of the pipeline's _run_model alone (its backend) on these aligned faces."""
    predictor._run_model(crops[: predictor.batch_size])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor._run_model(crops)
        times.append(time.perf_counter() - start)
    return len(crops) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="photos in the generated folder")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved passes over every configuration")
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: poi's)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()

    from poi_cli.core.threads import configure_threads

    threads = configure_threads(args.threads)
    from poi_cli.deploy.records import status_counts

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; threads {threads}; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        make_folder(folder, args.count)
        warm = sorted(folder.iterdir())[0]
        predictors = {name: make_predictor(args.model, **CONFIGS[name]) for name in args.configs}
        for predictor in predictors.values():
            predictor.predict_records([warm])
        results: dict[str, list[dict]] = {name: [] for name in args.configs}
        for round_number in range(args.rounds):
            for name in args.configs:
                result = run_config(predictors[name], folder, args.count)
                results[name].append(result)
                print(f"round {round_number + 1} {name:17s} {result['images_per_s']:6.2f} images/s "
                      f"({result['wall']:.1f} s; load average {os.getloadavg()[0]:.2f})", flush=True)
        counts = status_counts(results[args.configs[0]][0]["records"])
        print(f"folder: {args.count} photos -> {counts}")
        base = statistics.median(r["images_per_s"] for r in results[args.configs[0]])
        print(f"{'configuration':17s} {'images/s':>9s} {'x ' + args.configs[0]:>20s} {'CPU s/image':>12s}   stages (s)")
        for name in args.configs:
            speed = statistics.median(r["images_per_s"] for r in results[name])
            cpu = statistics.median(r["cpu_per_image"] for r in results[name])
            stages = results[name][-1]["stages"]
            print(f"{name:17s} {speed:9.2f} {speed / base:20.2f} {cpu:12.3f}   "
                  + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))

        # The model alone on the folder's faces: what --backend onnx changes.
        any_predictor = next(iter(predictors.values()))
        crops = [c for item in sorted(folder.iterdir()) for c in any_predictor.prepare_image(_item(item)).crops]
        by_backend = {}
        for backend in ("torch", "onnx"):
            predictor = (next((p for p in predictors.values() if p.backend == backend), None)
                         or make_predictor(args.model, workers=0, backend=backend))
            by_backend[backend] = model_only(predictor, crops, repeats=3)
        print(f"model alone on the folder's {len(crops)} faces (batch {any_predictor.batch_size}, with PIN and AUs): "
              f"torch {by_backend['torch']:.1f} faces/s, ONNX Runtime {by_backend['onnx']:.1f} faces/s "
              f"(x{by_backend['onnx'] / by_backend['torch']:.2f})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def make_predictor(model: str | None, workers: int, backend: str):
    """A Predictor of the model on this backend (poi_cli/backends.py; the torch detector
    for torch, as `poi predict` ran before the deploy runtime)."""
    from poi_cli.backends import open_runner
    from poi_cli.deploy.predict import Predictor

    detector = "mtcnn-torch" if backend == "torch" else "mtcnn"
    return Predictor(open_runner(model, backend=backend), detector=detector, workers=workers)


def _item(path: Path):
    from poi_cli.deploy.pipeline import InputItem

    return InputItem(str(path), path=path)


if __name__ == "__main__":
    main()
