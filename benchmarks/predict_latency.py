"""Latency of `poi predict` on one photo, split into stages, and throughput of the deployed TRN.

    python benchmarks/predict_latency.py                      # astronaut photo, CPU
    python benchmarks/predict_latency.py --threads 1 --repeats 3 --seconds 2
    python benchmarks/predict_latency.py --image face.jpg --model runs/train/exp
    python benchmarks/predict_latency.py --device cuda --skip-photo   # TRN throughput on a GPU

1. One photo through poi_cli.deploy.predict.Predictor (load, MTCNN detection, alignment, model
   with the PIN for confidence and AUs), median over --repeats after a warm-up.
2. The deployed TRN alone (what the paper's 0.94 ms per image measures) on random
   224 px batches: images/s and ms per image, float32 and (CUDA) bf16 autocast.

Speed does not depend on the weights, so without --model a randomly initialised
ResNet-18 checkpoint is written to a temporary folder. Prints one line per figure.

Threads: --threads through poi's own setting (poi_cli.core.threads.configure_threads:
torch's intra- and inter-op pools, ONNX Runtime's sessions, OpenMP threads that wait
passively); default poi's, $POI_THREADS else min(cores, 4). The load average is printed
in the header, with each figure (taken just after it) and at the end. Ratios: on CUDA, of figures of this run
(bf16 / float32 and batch 1 / the large batch, images/s). On the CPU it measures one path
only, the torch path in float32, so there is nothing in the run to divide by: ONNX Runtime
against torch is benchmarks/backend_parity.py's and folder_predict.py's comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poi_cli.core.threads import THREADS_HELP, configure_threads  # noqa: E402  (before torch: OMP_WAIT_POLICY)

import torch  # noqa: E402

from loadavg import load, load_average  # noqa: E402  (benchmarks/loadavg.py)
from poi_cli.core.manifests import class_names  # noqa: E402
from poi_cli.core.schema import STATUS_OK  # noqa: E402
from poi_cli.data.preprocess import Preprocessing  # noqa: E402
from poi_cli.model.checkpoint import build_checkpoint, save_checkpoint  # noqa: E402
from poi_cli.model.network import ModelConfig, POIModel  # noqa: E402


def random_checkpoint(folder: Path, size: int, arch: str) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, input_size=size)
    path = folder / "random.pt"
    save_checkpoint(path, build_checkpoint(model=POIModel(config), model_config=config, classes=class_names(config.num_classes),
                                           preprocessing=Preprocessing(face_size=size, input_size=size)))
    return path


def photo_latency(model_path: Path, image_path: str | None, repeats: int, device: str, folder: Path) -> dict:
    from PIL import Image

    from poi_cli.backends import open_runner
    from poi_cli.deploy.predict import Predictor

    if image_path is None:  # a PNG file, so that loading is timed as for a user's photo
        from skimage import data

        source, name = folder / "astronaut.png", "skimage astronaut (512x512 PNG)"
        Image.fromarray(data.astronaut()).save(source)
    else:
        source, name = image_path, image_path
    predictor = Predictor(open_runner(model_path, backend="torch", device=device))
    predictor.predict_records([source], show_au=True)  # warm-up: builds MTCNN, first-call allocations
    stages = {k: [] for k in ("load", "detection", "alignment", "model", "total")}
    faces = 0
    for _ in range(repeats):
        before = dict(predictor.timings)
        started = time.perf_counter()
        records = predictor.predict_records([source], show_au=True)
        if device == "cuda":
            torch.cuda.synchronize()
        stages["total"].append(time.perf_counter() - started)
        for key in ("load", "detection", "alignment", "model"):
            stages[key].append(predictor.timings[key] - before[key])
        faces = sum(r["status"] == STATUS_OK for r in records)  # predict_records: the JSON form
    return {"image": name, "faces": faces, **{f"{k}_ms": 1000 * statistics.median(v) for k, v in stages.items()},
            "load_average": load_average()[0]}


def trn_throughput(size: int, arch: str, batch: int, device: str, bf16: bool, seconds: float) -> dict:
    torch_device = torch.device(device)
    model = POIModel(ModelConfig(arch=arch, input_size=size)).deploy().to(torch_device).eval()
    x = torch.randn(batch, 3, size, size, device=torch_device)
    if torch_device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    context = torch.autocast(torch_device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def sync() -> None:
        if torch_device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), context:
        for _ in range(3):
            model(x)
        sync()
        iterations, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or iterations < 3:
            model(x)
            iterations += 1
        sync()
        elapsed = time.perf_counter() - started
    images = iterations * batch
    return {"device": device, "precision": "bf16" if bf16 else "fp32", "batch": batch, "size": size,
            "images_per_s": images / elapsed, "ms_per_image": 1000 * elapsed / images, "load_average": load_average()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="a photo (default: skimage's astronaut)")
    parser.add_argument("--model", help="checkpoint or run folder (default: random ResNet-18)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="input size of the random model and of the TRN benchmark")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="TRN batch (default 32 on CPU, 256 on CUDA)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed duration of each throughput run")
    parser.add_argument("--skip-photo", action="store_true", help="only the TRN throughput")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()

    threads = configure_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    header = {"torch": torch.__version__, "cpu": cpu, "cpu_threads": torch.get_num_threads(), "os_cpus": os.cpu_count(),
              "threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "load_average_before": load_average()}
    if args.device == "cuda":
        header["gpu"] = torch.cuda.get_device_name()
    results: dict = {"setup": header}
    with tempfile.TemporaryDirectory() as folder:
        model_path = Path(args.model) if args.model else random_checkpoint(Path(folder), args.size, args.arch)
        if not args.skip_photo:
            results["photo"] = photo_latency(model_path, args.image, args.repeats, args.device, Path(folder))
    batch = args.batch or (256 if args.device == "cuda" else 32)
    results["trn"] = [trn_throughput(args.size, args.arch, batch, args.device, False, args.seconds)]
    if args.device == "cuda":
        results["trn"].append(trn_throughput(args.size, args.arch, batch, args.device, True, args.seconds))
        results["trn"].append(trn_throughput(args.size, args.arch, 1, args.device, False, args.seconds))
        fp32, bf16, single = results["trn"]
        results["ratios"] = {"bf16_over_fp32": bf16["images_per_s"] / fp32["images_per_s"],
                             f"batch1_over_batch{batch}": single["images_per_s"] / fp32["images_per_s"]}
    header["load_average_after"] = load_average()

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"torch {header['torch']}, {header['cpu_threads']} threads of {header['os_cpus']} CPUs"
          + (f", GPU {header['gpu']}" if "gpu" in header else "")
          + f" (poi's --threads {threads}, OMP_WAIT_POLICY={header['omp_wait_policy']}); "
            f"load average {header['load_average_before'][0]:.2f} at the start")
    if "photo" in results:
        p = results["photo"]
        print(f"poi predict, one photo ({p['image']}, {p['faces']} face, median of {args.repeats}, {args.device}):")
        print(f"  load {p['load_ms']:.1f} ms, detection {p['detection_ms']:.1f} ms, alignment {p['alignment_ms']:.1f} ms, "
              f"model (TRN + PIN) {p['model_ms']:.1f} ms; total {p['total_ms']:.1f} ms (load average {p['load_average']:.2f})")
    for t in results["trn"]:
        print(f"deployed TRN {args.arch} {t['size']} px, batch {t['batch']}, {t['device']} {t['precision']}: "
              f"{t['images_per_s']:.1f} images/s = {t['ms_per_image']:.3f} ms per image (load average {t['load_average']:.2f})")
    if "ratios" in results:
        r = results["ratios"]
        print(f"ratios of this run's images/s: bf16 / float32 {r['bf16_over_fp32']:.2f}x, "
              f"batch 1 / batch {batch} {r[f'batch1_over_batch{batch}']:.2f}x")
    else:
        print("one path measured (the torch path, float32, on the CPU): no ratio; ONNX Runtime against torch: "
              "benchmarks/backend_parity.py, benchmarks/folder_predict.py")
    print(f"{load()} at the end")


if __name__ == "__main__":
    main()
