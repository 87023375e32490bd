"""Seconds per photo of `poi predict` at 1, 2 and all cores, quiet and under a competing load.

    python benchmarks/threads.py                       # astronaut photo, bundled model
    python benchmarks/threads.py --image face.jpg --repeats 5
    python benchmarks/threads.py --repeats 1 --no-load --settings default,1   # the smallest run

Each setting runs in a fresh child process (threads can be set only once per process):
* `torch default`: what poi did before --threads: torch's own thread count (one per
  core) and OpenMP's default spin-waiting;
* `N (poi)`: poi_cli.core.threads.configure_threads(N) (OMP_WAIT_POLICY=PASSIVE, N
  intra- and inter-op threads).
The child loads the Predictor, predicts the photo once (warm-up), then --repeats times;
it prints the median seconds per photo. "Under load" starts one busy-looping process
per usable core (made by this script, stopped after each measurement), as a stand-in
for the other jobs of a shared machine; --no-load skips that half (on a machine already
shared, or one you must not load). The load average is printed with each line. The
"vs default" column is the ratio measured side by side in one run: torch default's
seconds per photo / this setting's, under the same load (1.00x for the default itself;
"-" where --settings leaves the default out).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(setting: str, image: str, repeats: int) -> None:
    sys.path.insert(0, str(ROOT))
    if setting != "default":
        from poi_cli.core.threads import configure_threads

        configure_threads(int(setting))
    import torch

    from poi_cli.backends import open_runner
    from poi_cli.deploy.predict import Predictor

    predictor = Predictor(open_runner(None, backend="torch"), detector="mtcnn-torch")  # the torch path: its threads
    predictor.predict_records([image])  # warm-up: detector weights, first-call allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_records([image])
        times.append(time.perf_counter() - start)
    print(json.dumps({"median": statistics.median(times), "max": max(times), "threads": torch.get_num_threads()}))


def spin(stop: "multiprocessing.synchronize.Event") -> None:
    while not stop.is_set():
        for _ in range(100000):
            pass


def measure(setting: str, image: str, repeats: int) -> dict:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "POI_THREADS"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, __file__, "--child", setting, "--image", image, "--repeats", str(repeats)],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(ROOT.parent / "shared/photos/public-domain/astronaut.png"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-load", action="store_true",
                        help="skip the 'under load' half (which starts one busy loop per usable core)")
    parser.add_argument("--settings", default=None,
                        help="comma-separated settings to measure, 'default' and thread counts "
                             "(default: default,1,2 and the number of usable cores if more)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if not Path(args.image).is_file():  # a public-domain photo scikit-image ships
        from skimage import data

        from PIL import Image

        args.image = "/tmp/poi_threads_astronaut.png"
        Image.fromarray(data.astronaut()).save(args.image)
    if args.child:
        child(args.child, args.image, args.repeats)
        return
    cores = len(os.sched_getaffinity(0))
    settings = ["default", "1", "2"] + ([str(cores)] if cores > 2 else [])
    if args.settings:
        settings = [s.strip() for s in args.settings.split(",") if s.strip()]
        wrong = [s for s in settings if s != "default" and not (s.isdigit() and int(s) >= 1)]
        if wrong or not settings:
            parser.error(f"--settings takes 'default' and thread counts >= 1, got {args.settings!r}")
        settings.sort(key=lambda s: s != "default")  # the default first: the others' ratios divide by it
    print(f"{cores} usable cores; {args.repeats} photos per setting after a warm-up; seconds per photo (median, max); "
          "vs default: torch default's seconds / this setting's, under the same load")
    for load in (False,) if args.no_load else (False, True):
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(cores if load else 0)]
        for p in spinners:
            p.start()
        try:
            results = {}
            for setting in settings:
                results[setting] = result = measure(setting, args.image, args.repeats)
                name = "torch default" if setting == "default" else f"{setting} (poi)"
                ratio = (f"{results['default']['median'] / result['median']:6.2f}x" if "default" in results
                         else f"{'-':>7}")
                print(f"{'under load' if load else 'quiet':>10}  threads {name:<14} {result['median']:6.3f} s  "
                      f"(max {result['max']:.3f})  vs default {ratio}  load average {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            stop.set()
            for p in spinners:
                p.join(timeout=5)


if __name__ == "__main__":
    main()
