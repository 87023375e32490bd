"""Face-detection throughput: batched MTCNN (FaceDetector.detect on a list) vs one call per image.

Images come from a folder (default ../shared/photos when it exists, searched recursively)
or, with --astronaut N or when no folder is found, N copies of skimage's astronaut.
Timings follow a warm-up call; each mode runs --repeats times and the best run counts.
Batched mode groups images by canvas size (see poi_cli.data.faces.FaceDetector), so a
folder of differently sized photos gains less than one of equally sized images.
The load average is printed in the header (before the timed runs) and at the end.

    python benchmarks/detect_throughput.py
    python benchmarks/detect_throughput.py --astronaut 16
    python benchmarks/detect_throughput.py --device cuda --astronaut 64
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from loadavg import load  # benchmarks/loadavg.py
from poi_cli.data.faces import FaceDetector, ImageLoadError, canvas_shape, load_image, shrink

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "photos"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def folder_images(folder: Path) -> list[tuple[str, Image.Image]]:
    images = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS):
        try:
            images.append((str(path.relative_to(folder)), load_image(path)))
        except ImageLoadError as error:
            print(f"skipped {path}: {error}")
    return images


def astronaut_images(count: int) -> list[tuple[str, Image.Image]]:
    from skimage import data

    image = Image.fromarray(data.astronaut())
    return [(f"astronaut_{i}", image.copy()) for i in range(count)]


def best_times(runs: list, repeats: int) -> list[float]:
    """Best wall time of each run; runs are interleaved so that a burst of load elsewhere
    on the machine hits all of them alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for k, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=None, help=f"photos to detect in (default {DEFAULT_FOLDER})")
    parser.add_argument("--astronaut", type=int, default=0, help="use N copies of skimage's astronaut instead")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.folder or (DEFAULT_FOLDER if DEFAULT_FOLDER.is_dir() else None)
    if args.astronaut or folder is None:
        images = astronaut_images(args.astronaut or 8)
        source = f"{len(images)} copies of skimage astronaut (512x512)"
    else:
        images = folder_images(folder)
        source = f"{len(images)} images from {folder}"
    pictures = [image for _, image in images]
    detector = FaceDetector(device=args.device, max_side=args.max_side)
    detector.detect(pictures[:1])  # warm-up (allocations, cuDNN autotuning)
    load_before = load()

    def one_by_one() -> None:
        for picture in pictures:
            detector.detect([picture])

    single, batched = best_times([one_by_one, lambda: detector.detect(pictures)], args.repeats)
    found = detector.detect(pictures)
    canvases = {canvas_shape(*shrink(p, detector.max_side)[0].size[::-1]) for p in pictures}
    print(f"{source}; device {args.device}; torch threads {torch.get_num_threads()}; max_side {args.max_side}; "
          f"{len(canvases)} canvas size(s); best of {args.repeats}; {load_before} before the timed runs")
    print(f"faces found per image: {', '.join(f'{name}={len(f)}' for (name, _), f in zip(images, found))}")
    print(f"one call per image: {len(pictures) / single:7.2f} images/s ({single:.2f} s)")
    print(f"batched           : {len(pictures) / batched:7.2f} images/s ({batched:.2f} s)")
    print(f"batched / one-by-one throughput: {single / batched:.2f}x")
    print(f"{load()} at the end")


if __name__ == "__main__":
    main()
