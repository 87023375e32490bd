"""Wall time of `poi prepare ferplus` on the real FERPlus (resize path, no detection).

Needs the official layout (FER2013Train/, FER2013Valid/ with label.csv); writes to a
temporary folder (never the repo) and removes it afterwards unless --keep. The load
average is printed at the start, with each size's line (taken before it) and at the end.

    python benchmarks/prepare_ferplus.py ../shared/datasets/ferplus --size 224 112
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from loadavg import load  # benchmarks/loadavg.py
from poi_cli.core.schema import STATUS_OK
from poi_cli.data.prepare import prepare
from poi_cli.data.store import FACES_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw_dir", help="FERPlus in its official layout")
    parser.add_argument("--size", type=int, nargs="+", default=[224, 112], help="face sizes to measure")
    parser.add_argument("--workers", type=int, default=2, help="loader threads")
    parser.add_argument("--tmp", default=None, help="where to write (default: the system temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the prepared folders")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.workers} loader threads; {load()} at the start", flush=True)
    for size in args.size:
        out = Path(tempfile.mkdtemp(prefix=f"poi_ferplus{size}_", dir=args.tmp)) / "prepared"
        before = load()
        start = time.perf_counter()
        result = prepare("ferplus", args.raw_dir, out, size=size, workers=args.workers, show_progress=False)
        wall = time.perf_counter() - start
        ok = sum(counts.get(STATUS_OK, 0) for counts in result.counts.values())
        store_gb = (out / FACES_FILE).stat().st_size / 1e9
        start = time.perf_counter()
        again = prepare("ferplus", args.raw_dir, out, size=size, show_progress=False)
        rerun = time.perf_counter() - start
        assert again.already_done
        print(f"size {size}: {result.processed} images loaded, {ok} faces stored, wall {wall:.1f} s "
              f"({result.processed / wall:.0f} images/s incl. parsing), faces.npy {store_gb:.2f} GB, "
              f"re-run (no-op) {rerun:.1f} s ({before} before)", flush=True)
        if args.keep:
            print(f"  kept {out}")
        else:
            shutil.rmtree(out.parent)
    print(f"{load()} at the end")


if __name__ == "__main__":
    main()
