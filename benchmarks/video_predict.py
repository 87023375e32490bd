"""Frames/s and peak memory of `poi predict` on generated 720p videos.

    python benchmarks/video_predict.py                       # 60 s at 5 fps and every frame, 10 min at 1 fps
    python benchmarks/video_predict.py --cases 60:5 600:5    # seconds:fps pairs (fps 0 = every frame)
    python benchmarks/video_predict.py --cases 2:1 --threads 1   # the smallest run

The test video is made here: skimage's astronaut (public domain, NASA) moved and scaled
across a 1280x720 grey frame, 25 fps, encoded with PyAV (H.264). Each case runs
`python -m poi_cli predict VIDEO --fps F --threads N --csv ...` in its own process: the
deploy path, the bundled .onnx model and the default detector (MTCNN), both on ONNX
Runtime on the CPU, with poi's thread setting (--threads N: default $POI_THREADS, else
min(cores, 4), passed to the child explicitly). It reports wall time, analysed frames per
second, the ratio to real time and the process's peak RSS (os.wait4), with the load
average and the machine. Prints one line per case.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poi_cli.core.threads import THREADS_HELP, ThreadsError, resolve_threads  # noqa: E402
from poi_cli.data.video import write_video  # noqa: E402

WIDTH, HEIGHT, FPS = 1280, 720, 25


def frames(seconds: float):
    """The astronaut drifting and zooming across the frame: one uint8 frame at a time."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    background = Image.new("RGB", (WIDTH, HEIGHT), (110, 110, 110))
    for index in range(round(seconds * FPS)):
        t = index / FPS
        side = int(320 + 160 * np.sin(2 * np.pi * t / 7.0))  # 160..480 px: the face about 60..180 px
        x = int((WIDTH - side) * (0.5 + 0.45 * np.sin(2 * np.pi * t / 11.0)))
        y = int((HEIGHT - side) * (0.5 + 0.4 * np.cos(2 * np.pi * t / 13.0)))
        canvas = background.copy()
        canvas.paste(photo.resize((side, side), Image.BILINEAR), (x, y))
        yield np.asarray(canvas)


def run_case(video: Path, fps: float, out: Path, threads: int) -> dict:
    command = [sys.executable, "-m", "poi_cli", "predict", str(video), "--csv", str(out), "--threads", str(threads)]
    command += ["--every", "1"] if fps == 0 else ["--fps", str(fps)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    if status != 0:
        raise SystemExit(f"poi predict failed:\n{stderr}\n{stdout}")
    import pandas as pd

    rows = pd.read_csv(out)
    return {"wall": wall, "frames": rows["frame"].nunique(), "faces": int((rows["status"] == "ok").sum()),
            "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["60:5", "60:0", "600:1"],
                        help="seconds:fps of each run (fps 0: every frame)")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    args = parser.parse_args()
    try:
        threads = resolve_threads(args.threads)
    except ThreadsError as error:
        parser.error(str(error))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; poi predict --threads "
          f"{threads} (poi's setting; the bundled .onnx model and the MTCNN detector on ONNX Runtime); "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        videos: dict[float, Path] = {}
        for case in args.cases:
            seconds, fps = (float(v) for v in case.split(":"))
            if seconds not in videos:
                clock = time.perf_counter()
                videos[seconds] = write_video(Path(folder) / f"astronaut_{int(seconds)}s.mp4", frames(seconds), FPS)
                print(f"made a {seconds:.0f} s {WIDTH}x{HEIGHT} {FPS} fps video ({videos[seconds].stat().st_size / 1e6:.1f} MB) "
                      f"in {time.perf_counter() - clock:.0f} s")
            load = os.getloadavg()[0]
            result = run_case(videos[seconds], fps, Path(folder) / "rows.csv", threads)
            rate = "every frame" if fps == 0 else f"{fps:g} fps"
            print(f"{seconds:.0f} s video at {rate}: {result['frames']} frames, {result['faces']} faces in "
                  f"{result['wall']:.1f} s = {result['frames'] / result['wall']:.1f} frames/s, "
                  f"{seconds / result['wall']:.2f}x real time; peak RSS {result['peak_rss_mb']:.0f} MB "
                  f"(load average before {load:.2f})", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
