"""Start-up of `poi predict` on one photo in the deploy runtime: the whole process, and
where its time goes.

    .venv-deploy/bin/python benchmarks/startup.py                  # astronaut photo, bundled model
    .venv-deploy/bin/python benchmarks/startup.py --image face.jpg --repeats 5

1. The whole process, `python -m poi_cli predict PHOTO --json` (median of --repeats runs),
   beside `python -c "import onnxruntime, numpy, PIL.Image"` (the floor) in the same run.
2. A breakdown, measured in a fresh child process stage by stage in the order predict
   meets them: Python and the CLI (typer, rich), the predict module (numpy, PIL,
   onnxruntime, poi's modules), the model (an ONNX Runtime session on the bundled .onnx),
   the detector (three MTCNN sessions), then the first photo (detection + alignment +
   model) and a second one (warm).
Prints one line per figure with the load average (the machine may be shared). For the
torch path it replaced, side by side: benchmarks/deploy_vs_torch.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(image: str) -> None:
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = now - clock
        clock = now

    sys.path.insert(0, str(ROOT))
    import poi_cli.cli  # noqa: F401  typer, rich, poi's light modules
    mark("cli (typer, rich)")
    from poi_cli.core.threads import configure_threads

    configure_threads(None, import_torch=False)
    from poi_cli.deploy.predict import Predictor
    mark("import predict (numpy, PIL, onnxruntime, poi)")
    predictor = Predictor(None)
    mark("model: ONNX Runtime session")
    _ = predictor.detector
    mark("detector: 3 MTCNN sessions")
    predictor.predict_records([image])
    mark("first photo")
    predictor.predict_records([image])
    mark("second photo (warm)")
    assert "torch" not in sys.modules
    print(json.dumps(stages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(ROOT / "examples" / "astronaut.jpg"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.image)
        return
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "POI_THREADS", "OMP_WAIT_POLICY")}
    walls, floors = [], []
    for _ in range(args.repeats):  # interleaved: the machine's load drifts
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import onnxruntime, numpy, PIL.Image"], env=env, check=True)
        floors.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "poi_cli", "predict", args.image, "--json"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    print(f"whole process `poi predict PHOTO --json`: median {statistics.median(walls):.2f} s "
          f"(runs: {', '.join(f'{w:.2f}' for w in walls)}); `import onnxruntime, numpy, PIL.Image` "
          f"{statistics.median(floors):.2f} s: {statistics.median(walls) / statistics.median(floors):.2f}x; "
          f"load average {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", "--image", args.image], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True)
    total = time.perf_counter() - start
    stages = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"breakdown (one child process, {total:.2f} s in all; interpreter start-up is the rest):")
    for name, seconds in stages.items():
        print(f"  {name:<42} {seconds:6.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
