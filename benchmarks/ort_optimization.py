"""ONNX Runtime's graph optimisation level for the bundled model: session start against
throughput, side by side in one run (the README's start-up paragraph says why poi keeps
`ORT_ENABLE_ALL`).

    python benchmarks/ort_optimization.py                     # bundled model, 1 thread
    python benchmarks/ort_optimization.py --model m.onnx --threads 2 --repeats 7

Each level opens --repeats sessions (seconds to open one: median), then runs --batches
batches of 32 random faces on the last one (faces/s: median of the batches), after one
warm-up batch. Sessions are opened with poi's own options (core.threads.onnx_session_options:
the thread count, no spinning) and only the level changed. The first session of a process
also pays ONNX Runtime's own start, so the levels are measured in alternating order and
the first session of all is dropped. The ratio column is measured side by side: ALL's
figure / this level's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from loadavg import load

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poi_cli.core.threads import onnx_session_options  # noqa: E402

BATCH = 32
LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC")


def open_session(model: Path, level: str, threads: int):
    import onnxruntime

    options = onnx_session_options(threads)
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
    start = time.perf_counter()
    session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "poi_cli" / "weights" / "poi_ferplus8_resnet10_96.onnx")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="sessions opened per level")
    parser.add_argument("--batches", type=int, default=10, help="timed batches of 32 faces per level")
    args = parser.parse_args()

    open_session(args.model, LEVELS[0], args.threads)  # ONNX Runtime's own start, paid once, not counted
    opened: dict[str, list[float]] = {level: [] for level in LEVELS}
    sessions = {}
    for _ in range(args.repeats):
        for level in LEVELS:  # alternating, so that a change of the machine's load falls on every level
            sessions[level], seconds = open_session(args.model, level, args.threads)
            opened[level].append(seconds)
    rates = {}
    for level in LEVELS:
        session = sessions[level]
        feed = session.get_inputs()[0]
        faces = np.random.default_rng(0).standard_normal((BATCH, *feed.shape[1:])).astype(np.float32)
        session.run(None, {feed.name: faces})  # warm-up
        times = []
        for _ in range(args.batches):
            start = time.perf_counter()
            session.run(None, {feed.name: faces})
            times.append(time.perf_counter() - start)
        rates[level] = BATCH / statistics.median(times)
    print(f"{args.model.name}, {args.threads} thread(s), {load()}")
    print(f"{'level':<22}{'open (s)':>10}{'ALL / this':>12}{'faces/s':>10}{'this / ALL':>12}")
    base_open, base_rate = statistics.median(opened[LEVELS[0]]), rates[LEVELS[0]]
    for level in LEVELS:
        seconds = statistics.median(opened[level])
        print(f"{level:<22}{seconds:>10.3f}{base_open / seconds:>11.2f}x{rates[level]:>10.1f}{rates[level] / base_rate:>11.2f}x")
    print(load())


if __name__ == "__main__":
    main()
