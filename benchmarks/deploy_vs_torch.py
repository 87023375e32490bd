"""The deploy runtime (`pip install poi-fer`: ONNX Runtime, no torch) against the torch
path it replaces, as whole `poi predict` processes measured side by side in one run.

    python benchmarks/deploy_vs_torch.py --old-tree ../old-poi           # a checkout of the commit before
    python benchmarks/deploy_vs_torch.py --old-tree ../old-poi --only startup --repeats 7

"new" runs `poi_cli` of this tree with the deploy environment's Python (--new-python,
default .venv-deploy/bin/python, where torch is not installed); "old" runs `poi_cli` of
--old-tree (a checkout of an earlier commit, e.g. `git worktree add ../old-poi 94262ce`)
with the full environment's Python (--old-python, default .venv/bin/python). "floor" is
`python -c "import onnxruntime, numpy, PIL.Image"` in the deploy environment: the least a
Python program that labels a face with ONNX Runtime can cost.

1. startup: one photo (examples/astronaut.jpg) --json, floor / new / old interleaved
   --repeats times (the machine's load drifts): median wall time, peak RSS (os.wait4).
2. folder: 200 photos made by benchmarks/folder_predict.py's make_folder (public-domain
   skimage images; needs scikit-image in --old-python), `poi predict FOLDER --csv`: photos/s
   of the whole process, new vs old, interleaved --rounds times.
3. video: a 60 s 1280x720 25 fps clip (benchmarks/video_predict.py's frames), sampled at
   5 fps: the ratio to real time and peak RSS, new vs old; and the new path on a 180 s
   clip (memory flat with length).
4. size: the deploy environment on disk (du) and, with --wheel, the wheel's size.
Every figure is printed with the load average before it; every ratio is of figures taken
in this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = "import onnxruntime, numpy, PIL.Image"


def run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process; stops the benchmark if it fails."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


class Side:
    """How to run `poi` of one tree with one Python (in that tree: `python -m` puts the
    working folder first on sys.path)."""

    def __init__(self, name: str, python: str, tree: Path, threads: int) -> None:
        self.name, self.python, self.tree = name, python, tree
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(tree), "HOME": os.environ.get("HOME", "/tmp"),
                    "POI_THREADS": str(threads), "COLUMNS": "120"}

    def poi(self, *args: str) -> list[str]:
        return [self.python, "-m", "poi_cli", *args]


def startup(sides: list[Side], floor_python: str, repeats: int) -> None:
    photo = str(ROOT / "examples" / "astronaut.jpg")
    walls: dict[str, list[float]] = {"floor": []} | {s.name: [] for s in sides}
    peaks: dict[str, float] = {}
    print(f"\n1. one photo, whole process ({repeats} rounds, interleaved; {load()})")
    for _ in range(repeats):
        wall, peak = run([floor_python, "-c", FLOOR], ROOT, sides[0].env)
        walls["floor"].append(wall)
        peaks["floor"] = max(peaks.get("floor", 0), peak)
        for side in sides:
            wall, peak = run(side.poi("predict", photo, "--json"), side.tree, side.env)
            walls[side.name].append(wall)
            peaks[side.name] = max(peaks.get(side.name, 0), peak)
    median = {name: statistics.median(values) for name, values in walls.items()}
    for name, values in walls.items():
        print(f"   {name:<6} median {median[name]:.2f} s  (runs {', '.join(f'{v:.2f}' for v in values)})  "
              f"peak RSS {peaks[name]:.0f} MB")
    print(f"   new / floor: {median['new'] / median['floor']:.2f}x (target at most 3x)")
    if "old" in median:
        print(f"   old / new: {median['old'] / median['new']:.2f}x faster; peak memory {peaks['old'] / peaks['new']:.2f}x less")
    print(f"   ({load()} after)")


def target(sides: list[Side], text: str) -> str:
    """Issue 24's target for the deploy runtime against the torch path, printed only when the
    two sides run in different environments (not when two trees share the deploy one)."""
    return text if len(sides) > 1 and sides[0].python != sides[1].python else ""


def folder(sides: list[Side], count: int, rounds: int, python_with_skimage: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        photos = Path(work) / "photos"
        subprocess.run([python_with_skimage, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
                        f"from folder_predict import make_folder; from pathlib import Path; "
                        f"make_folder(Path({str(photos)!r}), {count})"], check=True)
        print(f"\n2. a folder of {count} photos, whole process `poi predict FOLDER --csv` ({rounds} rounds; {load()})")
        rates: dict[str, list[float]] = {s.name: [] for s in sides}
        for _ in range(rounds):
            for side in sides:
                wall, peak = run(side.poi("predict", str(photos), "--csv", f"{work}/{side.name}.csv"), side.tree, side.env)
                rates[side.name].append(count / wall)
                print(f"   {side.name:<4} {count / wall:6.1f} photos/s ({wall:.1f} s, peak RSS {peak:.0f} MB; {load()})")
        if "old" in rates:
            ratio = statistics.median(rates["new"]) / statistics.median(rates["old"])
            print(f"   new / old: {ratio:.2f}x the photos/s{target(sides, ' (target at least 4x)')}")


def video(sides: list[Side], fps: float, python_with_skimage: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        clips = {}
        for seconds in (60, 180):
            path = Path(work) / f"clip_{seconds}.mp4"
            subprocess.run([python_with_skimage, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from pathlib import Path; "
                            f"from video_predict import frames, FPS; from poi_cli.data.video import write_video; "
                            f"write_video(Path({str(path)!r}), frames({seconds}), FPS)"], check=True)
            clips[seconds] = path
        print(f"\n3. video: 1280x720, 25 fps, sampled at {fps:g} fps ({load()})")
        speed = {}
        for seconds, runs in ((60, sides), (180, [s for s in sides if s.name == "new"])):
            for side in runs:
                wall, peak = run(side.poi("predict", str(clips[seconds]), "--fps", str(fps), "--csv",
                                          f"{work}/{side.name}_{seconds}.csv"), side.tree, side.env)
                speed[side.name, seconds] = seconds / wall
                print(f"   {side.name:<4} {seconds:4d} s clip: {wall:6.1f} s = {seconds / wall:.2f}x real time, "
                      f"peak RSS {peak:.0f} MB ({load()})")
        if ("old", 60) in speed:
            print(f"   new / old on the 60 s clip: {speed['new', 60] / speed['old', 60]:.2f}x"
                  f"{target(sides, ' (target: new at least 3x real time)')}")


def size(new_python: str, wheel: bool) -> None:
    venv = Path(new_python).absolute().parents[1]  # not resolved: bin/python links to the base interpreter
    total = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0]
    print(f"\n4. size: {venv.name} {total} MB on disk (target at most 400 MB)")
    if wheel:
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([new_python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, str(ROOT)], check=True,
                           capture_output=True)
            for path in Path(out).glob("*.whl"):
                print(f"   wheel {path.name}: {path.stat().st_size / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-python", default=str(ROOT / ".venv-deploy/bin/python"))
    parser.add_argument("--old-python", default=str(ROOT / ".venv/bin/python"))
    parser.add_argument("--maker-python", default=str(ROOT / ".venv/bin/python"),
                        help="a Python with scikit-image, which makes the test photos and clip (default: the full environment)")
    parser.add_argument("--old-tree", type=Path, help="a checkout of the commit to compare with (none: new only)")
    parser.add_argument("--only", nargs="+", choices=("startup", "folder", "video", "size"),
                        default=["startup", "folder", "video", "size"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--fps", type=float, default=5)
    parser.add_argument("--threads", type=int, default=1, help="POI_THREADS of every process (set explicitly: "
                        "torch's default collapses on a loaded machine)")
    parser.add_argument("--wheel", action="store_true", help="also build the wheel and print its size")
    args = parser.parse_args()
    sides = [Side("new", args.new_python, ROOT, args.threads)]
    if args.old_tree:
        sides.append(Side("old", args.old_python, args.old_tree.resolve(), args.threads))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; POI_THREADS={args.threads}; "
          f"new: {args.new_python} on {ROOT}; old: {args.old_python + ' on ' + str(args.old_tree) if args.old_tree else '-'}")
    if "startup" in args.only:
        startup(sides, args.new_python, args.repeats)
    if "folder" in args.only:
        folder(sides, args.count, args.rounds, args.maker_python)
    if "video" in args.only:
        video(sides, args.fps, args.maker_python)
    if "size" in args.only:
        size(args.new_python, args.wheel)


if __name__ == "__main__":
    main()
