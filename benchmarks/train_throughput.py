"""Training throughput through the real engine: POI vs the baseline, and the input pipeline alone.

Builds a synthetic prepared store (random uint8 faces at --size) in a temp folder, then
for each model runs the engine's own Trainer.train_epoch: one warm-up epoch, then --rounds timed
ones (median images/s; each --steps steps of --batch, the loader, the device-side augmentation,
forward, losses, backward and SGD all included). The input pipeline alone is the same
loader + augmentation + normalisation without the model; it should be several times
faster than a training step so that it never limits training. Peak memory of a step:
torch.cuda.max_memory_allocated on CUDA, the process's peak RSS on CPU.

    python benchmarks/train_throughput.py --device cpu --size 224 --batch 16 --steps 3
    python benchmarks/train_throughput.py --device cuda --size 224 --batch 256 --steps 20 --amp bf16 --channels-last on
    python benchmarks/train_throughput.py --device cuda --batch 256 --steps 20 --compile

The load average (the machine may be shared) is printed in the header (taken at the start)
and at the end, and written to the record: load_average_before and load_average_after (1, 5
and 15 minutes), and each model's load_average (1 minute, just after its timed epochs).

--json FILE writes the same figures as one JSON object (scripts/gpu_pack.sh reads it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from loadavg import load_average  # benchmarks/loadavg.py
from poi_cli.train.config import WILD_AUGMENTATIONS, TrainConfig
from poi_cli.train.engine import Trainer
from poi_cli.core.manifests import class_names
from poi_cli.core.schema import STATUS_OK
from poi_cli.data.preprocess import Preprocessing
from poi_cli.data.store import StoreWriter, store_meta


def synthetic_store(root: Path, size: int, n: int, num_classes: int = 7) -> Path:
    """A prepared folder of n random faces (train split) + a tiny valid split."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, n + num_classes)
    writer = StoreWriter(root)
    faces = writer.open_faces(len(labels), size)
    for start in range(0, len(labels), 256):
        faces[start:start + 256] = rng.integers(0, 256, (min(256, len(labels) - start), size, size, 3), dtype=np.uint8)
    faces.flush()
    names = class_names(num_classes)
    rows = [{"id": str(i), "source": f"{i}.png", "split": "train" if i < n else "valid", "label": int(label),
             "label_name": names[label], "status": STATUS_OK, "store_index": i} for i, label in enumerate(labels)]
    writer.write_manifest(rows)
    writer.write_meta(store_meta(dataset="synthetic", classes=names, preprocessing=Preprocessing(size, size),
                                 splits=["train", "valid"]))
    return root


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_pipeline_rate(trainer: Trainer, rounds: int) -> float:
    """Median images/s of loader + augmentation + normalisation alone, over `rounds` passes after one warm-up."""
    loader, augment = trainer.make_loader(), trainer.make_augment()
    device = trainer.ctx.device
    rates = []
    for epoch in range(rounds + 1):
        loader.set_epoch(epoch)
        generator = trainer.epoch_generator(epoch)
        synchronize(device)
        start, images = time.perf_counter(), 0
        for batch, labels, _, _ in loader:
            trainer.batch_input(batch, augment, generator)
            images += labels.shape[0]
        synchronize(device)
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def training_rate(trainer: Trainer, rounds: int) -> tuple[float, float]:
    """(median images/s of `rounds` timed epochs after a warm-up epoch, peak memory in GiB)."""
    loader, augment = trainer.make_loader(), trainer.make_augment()
    device = trainer.ctx.device
    trainer.train_epoch(0, loader, augment)  # warm-up: cuDNN autotuning, torch.compile, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for epoch in range(1, rounds + 1):
        row, seconds = trainer.train_epoch(epoch, loader, augment)
        rates.append(row["_images"] / seconds)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process so far
    return statistics.median(rates), peak


def write_record(path: str | None, record: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--store-size", type=int, default=None, help="side of the stored faces (default --size)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="steps per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs (after a warm-up one); the median is reported")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--models", default="poi,baseline")
    parser.add_argument("--wild", action="store_true",
                        help="with the bundled model's augmentations for faces in the wild (grey mix, blur, JPEG, "
                             "scale and rotation; scripts/train_bundled_model.sh), as the GPU pack's bundle stage trains")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    load_before = load_average()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        data = synthetic_store(root / "data", args.store_size or args.size, args.batch * args.steps)  # runs beside it
        results, record = {}, {"settings": vars(args), "models": {}, "load_average_before": load_before}
        wild = WILD_AUGMENTATIONS if args.wild else {}
        for name in ["input", *args.models.split(",")]:
            config = TrainConfig(
                data=str(data), arch=args.arch, input_size=args.size, batch=args.batch, epochs=2, device=args.device,
                amp=args.amp, channels_last=args.channels_last, compile=args.compile and name != "input",
                use_pin=name != "baseline", project=str(root / "runs"), name=name, val_split="none", **wild,
            )
            trainer = Trainer(config, console=Console(quiet=True))
            if name == "input":
                results[name] = input_pipeline_rate(trainer, args.rounds)
                print(
                    f"{args.arch} {args.size}px (store {args.store_size or args.size}px), batch {args.batch}, "
                    f"median of {args.rounds} epochs of {args.steps} steps, device {trainer.ctx.device}, bf16 {trainer.amp}, "
                    f"channels_last {trainer.channels_last}, compile {args.compile}, torch threads {torch.get_num_threads()}, "
                    f"load average {load_before[0]:.2f} at the start"
                )
                print(f"input pipeline alone : {results[name]:9.1f} images/s (loader + device augmentation)")
                record.update(device=str(trainer.ctx.device), bf16=trainer.amp, channels_last=trainer.channels_last,
                              torch=str(torch.__version__), threads=torch.get_num_threads(),
                              gpu=torch.cuda.get_device_name(trainer.ctx.device) if trainer.ctx.device.type == "cuda" else None,
                              input_images_per_s=round(results[name], 1))
                write_record(args.json, record)
            else:
                rate, peak = training_rate(trainer, args.rounds)
                results[name] = rate
                label = "POI (TRN + PIN)" if name == "poi" else "baseline (TRN + CE)"
                memory = "peak GPU memory" if trainer.ctx.device.type == "cuda" else "peak process RSS so far"
                print(f"{label:21}: {rate:9.1f} images/s, {memory} {peak:.2f} GiB")
                record["models"][name] = {"images_per_s": round(rate, 1), "peak_gib": round(peak, 3),
                                          "peak_kind": "max_memory_allocated" if trainer.ctx.device.type == "cuda" else "process_max_rss",
                                          "load_average": load_average()[0]}
                write_record(args.json, record)  # after each model: a run stopped later keeps what it measured
            del trainer
        for name in args.models.split(","):
            print(f"input / {name} training : {results['input'] / results[name]:6.1f}x")
        if "poi" in results and "baseline" in results:  # the PIN's training-only cost
            print(f"POI / baseline speed : {results['poi'] / results['baseline']:6.2f}")
        if "poi" in results and "baseline" in results:
            record["poi_over_baseline"] = round(results["poi"] / results["baseline"], 3)
        record["load_average_after"] = load_after = load_average()
        print(f"load average (1/5/15 min): at the start {'/'.join(f'{v:.2f}' for v in load_before)}, "
              f"at the end {'/'.join(f'{v:.2f}' for v in load_after)}")
        write_record(args.json, record)


if __name__ == "__main__":
    main()
