"""Load test of `poi serve` on loopback: concurrent clients, a mix of good and bad requests.

    python benchmarks/serve_load.py                          # 32 clients, 500 requests, bundled model
    python benchmarks/serve_load.py --clients 8 --requests 100 --model runs/train/exp

Starts the server in this process on a free 127.0.0.1 port (nothing leaves the machine),
then --clients threads send --requests requests in all (bounded by --time-limit seconds),
cycling through: a good photo, a corrupt file, an empty body and an oversize upload.
Checks that each is answered with its status (200, 400, 400, 413; a 429 counts as a
right answer for any kind when the in-flight limit is hit), that no answer is a 500 or
lost, and that every 200 holds one record per uploaded image. Prints throughput, p50/p95
latency per kind, the server process's peak RSS and the load average.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import socket
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPECTED = {"good": 200, "corrupt": 400, "empty": 400, "oversize": 413}


def photos(folder: Path) -> list[tuple[str, bytes]]:
    """Public-domain photos: the shared folder's, else scikit-image's astronaut."""
    found = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png")) if folder.is_dir() else []
    if found:
        return [(p.name, p.read_bytes()) for p in found[:4]]
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return [("astronaut.png", buffer.getvalue())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--time-limit", type=float, default=600.0)
    parser.add_argument("--photos", default=str(ROOT.parent / "shared/photos/public-domain"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from poi_cli.core.threads import configure_threads

    configure_threads(args.threads)
    import requests
    import uvicorn

    from poi_cli.inference.predict import Predictor
    from poi_cli.inference.serve import ServeLimits, create_app

    limits = ServeLimits(max_request_bytes=4 * 1024 * 1024)
    app = create_app(Predictor(args.model, images_per_batch=limits.batch_images), limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", limit_concurrency=1000))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/predict"
    good = photos(Path(args.photos))
    oversize = os.urandom(limits.max_request_bytes + 1024)
    kinds = ["good", "corrupt", "empty", "oversize"]
    deadline = time.monotonic() + args.time_limit
    results: list[tuple[str, int, float, str]] = []
    lock = threading.Lock()

    def one(number: int) -> None:
        if time.monotonic() > deadline:
            with lock:
                results.append((kinds[number % 4], -1, 0.0, "skipped: time limit"))
            return
        kind = kinds[number % 4]
        start = time.perf_counter()
        try:
            if kind == "good":
                name, data = good[number % len(good)]
                response = requests.post(url, files=[("files", (name, data))], timeout=300)
            elif kind == "corrupt":
                response = requests.post(url, files=[("files", ("bad.jpg", b"\xff\xd8\xff\xe0 broken" * 10))], timeout=300)
            elif kind == "empty":
                response = requests.post(url, timeout=300)
            else:
                response = requests.post(url, files=[("files", ("big.png", oversize))], timeout=300)
            status, note = response.status_code, ""
            if status == 200 and len(response.json()) < 1:
                note = "200 without a record"
            elif status != 200:
                response.json()["detail"]  # every refusal carries a JSON reason
        except Exception as error:
            status, note = -2, f"{type(error).__name__}: {error}"
        with lock:
            results.append((kind, status, time.perf_counter() - start, note))

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(one, range(args.requests)))
    elapsed = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    server.should_exit = True
    thread.join(timeout=10)

    wrong = [(k, s, n) for k, s, _, n in results if not (s == EXPECTED[k] or s == 429) or n]
    statuses = Counter((k, s) for k, s, _, _ in results)
    print(f"{len(results)} requests from {args.clients} clients in {elapsed:.1f} s: {len(results) / elapsed:.1f} requests/s; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("answers: " + ", ".join(f"{k} -> {s}: {c}" for (k, s), c in sorted(statuses.items())))
    latencies = defaultdict(list)
    for kind, status, seconds, _ in results:
        if status > 0:
            latencies[kind].append(seconds)
    for kind, values in latencies.items():
        values.sort()
        p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
        print(f"  {kind:<9} p50 {statistics.median(values) * 1000:7.0f} ms   p95 {p95 * 1000:7.0f} ms   ({len(values)})")
    print(f"peak RSS of the server process: {rss_after / 1024:.0f} MiB (before the load {rss_before / 1024:.0f} MiB)")
    print(f"batches run: {app.state.batcher.calls} for {statuses.get(('good', 200), 0)} good requests")
    print("all answered right: " + ("yes" if not wrong else f"NO ({len(wrong)}: {wrong[:5]})"))
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
