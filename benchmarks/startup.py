"""Start-up of `poi predict` on one photo: the whole process, and where its time goes.

    python benchmarks/startup.py                    # astronaut photo, bundled model
    python benchmarks/startup.py --image face.jpg --repeats 5

1. The whole process, `python -m poi_cli predict PHOTO --json` (median of --repeats runs).
2. A breakdown, measured in a fresh child process stage by stage in the order predict
   meets them: Python and the CLI (typer, rich), torch, torchvision, the rest of the
   predict module (pandas, PIL, poi's modules), the model (checkpoint read + build),
   the detector (facenet-pytorch + MTCNN weights), then the first photo (detection +
   alignment + model) and a second one (warm).
Prints one line per figure with the load average (the machine may be shared).
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

    configure_threads(None)
    import torch  # noqa: F401
    mark("import torch")
    import torchvision  # noqa: F401
    mark("import torchvision")
    from poi_cli.inference.predict import Predictor
    mark("import predict (pandas, PIL, poi)")
    predictor = Predictor(None)
    mark("model load")
    _ = predictor.detector
    mark("detector load (facenet-pytorch, MTCNN)")
    predictor.predict_records([image])
    mark("first photo")
    predictor.predict_records([image])
    mark("second photo (warm)")
    print(json.dumps(stages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(ROOT.parent / "shared/photos/public-domain/astronaut.png"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if not Path(args.image).is_file():
        from PIL import Image
        from skimage import data

        args.image = "/tmp/poi_startup_astronaut.png"
        Image.fromarray(data.astronaut()).save(args.image)
    if args.child:
        child(args.image)
        return
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "POI_THREADS", "OMP_WAIT_POLICY")}
    walls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "poi_cli", "predict", args.image, "--json"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    print(f"whole process `poi predict PHOTO --json`: median {statistics.median(walls):.2f} s "
          f"(runs: {', '.join(f'{w:.2f}' for w in walls)})  load average {os.getloadavg()[0]:.2f}")
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
