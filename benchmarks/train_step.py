"""Training-step throughput of the full POI model vs the baseline (TRN + cross-entropy).

The PIN is a training-only cost: this measures how much it adds per step at the same
batch and input size. Random data; forward + backward + SGD step; timings after warm-up.

    python benchmarks/train_step.py --size 224 --batch 16 --steps 5
    python benchmarks/train_step.py --device cuda --size 224 --batch 256 --amp bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from poi_cli.losses import LossConfig, total_loss
from poi_cli.model import ModelConfig, POIModel


def make_step(use_pin: bool, args: argparse.Namespace):
    """A closure running one training step of the POI model or the baseline."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = POIModel(ModelConfig(arch=args.arch, num_classes=7, input_size=args.size, use_pin=use_pin)).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, 7, (args.batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss, _ = total_loss(model(images), labels, LossConfig())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    return step


def time_steps(step, args: argparse.Namespace) -> float:
    """images/s over args.steps steps."""
    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    return args.batch * args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["off", "bf16"], default="bf16")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    print(
        f"{args.arch} {args.size}px batch {args.batch}, {args.rounds} x {args.steps} timed steps after {args.warmup} warm-up, "
        f"device {args.device}, amp {args.amp}, channels_last {args.channels_last}, torch threads {torch.get_num_threads()}"
    )
    steps = {"baseline": make_step(False, args), "poi": make_step(True, args)}
    # Alternate the two so that any other load on the machine hits both alike.
    rates = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(time_steps(step, args))
    baseline, poi = statistics.median(rates["baseline"]), statistics.median(rates["poi"])
    print(f"baseline (TRN + CE): {baseline:8.1f} images/s")
    print(f"POI (TRN + PIN)    : {poi:8.1f} images/s")
    print(f"POI / baseline     : {poi / baseline:8.3f}  (the PIN's training-only cost)")


if __name__ == "__main__":
    main()
