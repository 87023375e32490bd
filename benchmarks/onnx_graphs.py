"""Faces/s of exported .onnx models side by side: the deploy runtime's model step alone
(OnnxRunner.run on aligned faces), interleaved rounds in one process, so that two exports
of one model (an older graph and today's) are compared under the same load.

    python benchmarks/onnx_graphs.py old.onnx poi_cli/weights/poi_ferplus8_resnet10_96.onnx
    python benchmarks/onnx_graphs.py A.onnx B.onnx --faces 64 --rounds 5 --threads 1

The faces are random uint8 images at the first model's face size (what the model costs does
not depend on what the face shows). Prints faces/s per file (median over rounds), each file's
time per face relative to the first, the largest difference of the reported probabilities
from the first file's, the thread count and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def faces_per_second(runner, faces, batch: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(faces), batch):
        runner.run(faces[first:first + batch])
    return len(faces) / (time.perf_counter() - start)


def main() -> None:
    import numpy as np

    from poi_cli.deploy.runner import OnnxRunner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help=".onnx files; the first is the reference")
    parser.add_argument("--faces", type=int, default=128, help="faces per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (set explicitly)")
    args = parser.parse_args()

    load_before = os.getloadavg()
    runners = [OnnxRunner(path, threads=args.threads, batch_size=args.batch) for path in args.models]
    side = runners[0].preprocessing.face_size
    faces = np.random.default_rng(0).integers(0, 256, (args.faces, side, side, 3), dtype=np.uint8)
    reference = runners[0].run(faces[:8]).probabilities
    differences = [float(np.abs(r.run(faces[:8]).probabilities - reference).max()) for r in runners]
    rates: list[list[float]] = [[] for _ in runners]
    for _ in range(args.rounds):
        for runner, kept in zip(runners, rates):
            kept.append(faces_per_second(runner, faces, args.batch))
    print(f"{args.faces} faces of {side} px per round, batches of {args.batch}, {args.rounds} interleaved rounds, "
          f"{args.threads} thread(s); load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    first = statistics.median(rates[0])
    for path, kept, difference in zip(args.models, rates, differences):
        median = statistics.median(kept)
        print(f"  {path}: {median:7.1f} faces/s (rounds {min(kept):.1f}-{max(kept):.1f}), "
              f"time per face {first / median:.2f}x the first's, probabilities differ by at most {difference:.1e}")


if __name__ == "__main__":
    main()
