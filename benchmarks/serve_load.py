"""Load and abuse test of `poi serve` on loopback: good clients with hostile ones mixed in.

    python benchmarks/serve_load.py                                   # the default server (bundled .onnx model)
    python benchmarks/serve_load.py --duration 20 --threads 1 \\
        --server "--backend onnx" --server "--backend torch --detector mtcnn-torch"

Each --server is the argument list of one `poi serve` (default: none). For each, in turn,
the server is started in a subprocess (`python -m poi_cli serve --host 127.0.0.1 --port P
--threads T ...`, P a free port: nothing leaves the machine) and, for --duration seconds:

* --clients good clients send real photos one per request, back to back (scikit-image's
  astronaut and the photos in ../shared/photos/public-domain when present): 200 each;
* two bad clients cycle through a corrupt file (400), an empty body (400) and a request
  whose Content-Length is over the upload limit (413, answered before the body is sent);
* --bombs clients cycle through pixel bombs: 16 PNGs of 6300 x 6300 (just under the 40
  megapixel limit per image) in one ~80 KB request (413: over the per-request pixel
  budget), 4 of them (200 with no_face records, or 503 when the server-wide pixel budget
  is full) and a PNG whose header says 30000 x 30000 (413);
* --chunked clients send chunked bodies (no Content-Length to refuse up front) that run
  past the upload limit, each from its own address (X-Forwarded-For, which the server
  trusts from loopback): 413 once the limit is crossed, or 503 when a body budget is full;
* --stalled clients send headers and half a body, then nothing (408 after the server's
  body timeout, 30 s), and --stalled-headers clients send half a request line (the server
  closes the connection after its header timeout, 10 s).

Every answer is checked against the statuses allowed for its kind (and every refusal
must carry a JSON {"detail"}); nothing may be lost. Printed per server: the server
process's RSS before the load, its peak (VmRSS sampled every 50 ms) and after; p50 / p95
latency and requests/s of the good requests; every (kind, status) count. With two
servers, the ratio of their good requests/s (--rounds N: the servers take turns N times
and the median rate counts, which evens out other jobs' load on a shared machine). The
load average is printed at the start, with each round, and per server just before and
just after its load window (the after figure counts this benchmark's own server and
clients too). Exit status 1 when any answer was wrong.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from loadavg import load  # benchmarks/loadavg.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Allowed statuses per kind ("closed": the server closed the connection without an answer).
EXPECTED: dict[str, set] = {
    "good": {200}, "corrupt": {400}, "empty": {400}, "oversize": {413},
    "bomb16": {413}, "bomb4": {200, 503}, "huge": {413},
    "stalled": {408}, "stalled_headers": {"closed"}, "chunked": {413, 503},
}
UPLOAD_LIMIT = 20 * 1024 * 1024  # poi serve's default --max-upload-mb
BOMB_SIDE = 6300  # 39.7 megapixels: under the default --max-megapixels 40


def photos(folder: Path) -> list[tuple[str, bytes]]:
    """scikit-image's astronaut, and the shared public-domain photos when present."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    found = [("astronaut.png", buffer.getvalue())]
    if folder.is_dir():
        found += [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file()]
    return found


def bomb_png(side: int) -> bytes:
    """A flat side x side PNG: a few KB of file, side^2 pixels once decoded."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 200, np.uint8)).convert("RGB").save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def huge_header_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR says width x height, with no real pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> Optional[float]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """The server's VmRSS every 50 ms: its peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            value = rss_mib(self.pid)
            if value is None:
                return
            self.peak = max(self.peak, value)


@dataclass
class Trial:
    server: str
    results: list[tuple[str, object, float, str]] = field(default_factory=list)  # kind, status, seconds, note
    good_done: list[float] = field(default_factory=list)  # when each good 200 came back (perf_counter)
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    good_start: float = 0.0
    good_seconds: float = 0.0  # the load window: requests/s counts the good answers that came back in it
    load_before: str = ""  # the load average just before the load window, and just after it
    load_after: str = ""
    log: str = ""


def raw_request(port: int, payload: bytes, timeout: float) -> tuple[object, str]:
    """Send payload on a new connection and stop; then wait for the answer: its status,
    or "closed" when the server closes the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[object, str]:
    """The status of the answer on `sock` and a note when it carries no JSON detail; "closed"
    when the server closes the connection without one."""
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or (b"}" not in answer and b"content-length: 0" not in answer.lower()):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except ConnectionResetError:  # closed after its answer, while a body was still coming
        pass
    if not answer:
        return "closed", ""
    try:
        status = int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return -3, f"unparsable answer {answer[:80]!r}"
    return status, ("" if b'"detail"' in answer else "no JSON detail")


def run_trial(spec: str, args: argparse.Namespace, good: list[tuple[str, bytes]], bomb: bytes, huge: bytes) -> Trial:
    import requests

    trial = Trial(spec or "(defaults)")
    port = free_port()
    extra = shlex.split(spec)
    if "--threads" not in extra:
        extra += ["--threads", str(args.threads)]
    command = [sys.executable, "-m", "poi_cli", "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    log = tempfile.NamedTemporaryFile(prefix="poi-serve-load-", suffix=".log", delete=False)
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    print(f"\n== server: {' '.join(command[2:])}", flush=True)
    try:
        deadline = time.monotonic() + args.start_timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                if requests.get(f"{base}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.25)
        else:
            raise SystemExit(f"the server did not start within {args.start_timeout:.0f} s")
        for name, data in good[:2]:  # warm-up (not counted): the detector and model sessions
            requests.post(f"{base}/predict", files=[("files", (name, data))], timeout=120)
        time.sleep(1.0)
        trial.rss_before = rss_mib(server.pid) or 0.0
        sampler = RssSampler(server.pid)
        sampler.start()
        lock = threading.Lock()

        def record(kind: str, status: object, seconds: float, note: str = "") -> None:
            with lock:
                trial.results.append((kind, status, seconds, note))

        def post(kind: str, files: Optional[list] = None, data: Optional[bytes] = None) -> None:
            start = time.perf_counter()
            try:
                response = requests.post(f"{base}/predict", files=files, data=data, timeout=args.request_timeout)
                note = ""
                if response.status_code == 200:
                    if not isinstance(response.json(), list) or not response.json():
                        note = "200 without records"
                elif not isinstance(response.json().get("detail"), str):
                    note = "refusal without a JSON detail"
                record(kind, response.status_code, time.perf_counter() - start, note)
                if kind == "good" and response.status_code == 200:
                    with lock:
                        trial.good_done.append(time.perf_counter())
            except Exception as error:  # a lost request: the server reset or never answered
                record(kind, -2, time.perf_counter() - start, f"{type(error).__name__}: {str(error)[:120]}")

        def send_raw(kind: str, payload: bytes, timeout: float) -> None:
            """Bytes on a raw socket (a request no HTTP client would send), its answer recorded."""
            start = time.perf_counter()
            try:
                status, note = raw_request(port, payload, timeout=timeout)
            except Exception as error:  # a lost request
                status, note = -2, f"{type(error).__name__}: {str(error)[:120]}"
            record(kind, status, time.perf_counter() - start, note)

        def good_client(number: int) -> None:
            sent = number
            while time.monotonic() < stop_at:
                name, data = good[sent % len(good)]
                post("good", files=[("files", (name, data))])
                sent += 1

        def bad_client(number: int) -> None:
            sent = number
            while time.monotonic() < stop_at:
                kind = ("corrupt", "empty", "oversize")[sent % 3]
                if kind == "corrupt":
                    post(kind, files=[("files", ("bad.jpg", b"\xff\xd8\xff\xe0 broken" * 10))])
                elif kind == "empty":
                    post(kind)
                else:  # Content-Length says too much: answered before the body is sent
                    send_raw(kind, oversize_head, args.request_timeout)
                sent += 1
                time.sleep(0.2)

        def bomb_client(number: int) -> None:
            sent = number
            while time.monotonic() < stop_at:
                kind = ("bomb16", "bomb4", "huge")[sent % 3]
                count = {"bomb16": 16, "bomb4": 4, "huge": 1}[kind]
                payload = huge if kind == "huge" else bomb
                post(kind, files=[("files", (f"bomb{k}.png", payload)) for k in range(count)])
                sent += 1

        oversize_head = ("POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         f"boundary=x\r\nContent-Length: {UPLOAD_LIMIT + 1024}\r\n\r\n--x\r\n").encode()
        body_head = ("POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     "Content-Length: 100000\r\n\r\n").encode()

        def chunked_client(number: int) -> None:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    status, note = chunked_request(port, UPLOAD_LIMIT // 65536 + 64, args.request_timeout,
                                                   f"10.9.0.{number + 1}")
                except Exception as error:  # a lost request
                    status, note = -2, f"{type(error).__name__}: {str(error)[:120]}"
                record("chunked", status, time.perf_counter() - start, note)

        def stalled_client(kind: str) -> None:
            payload = body_head + b"--x\r\n" + b"y" * 50000 if kind == "stalled" else b"POST /predict HT"
            send_raw(kind, payload, args.stall_timeout)

        threads = [threading.Thread(target=stalled_client, args=("stalled",)) for _ in range(args.stalled)]
        threads += [threading.Thread(target=stalled_client, args=("stalled_headers",)) for _ in range(args.stalled_headers)]
        for thread in threads:  # the stalled ones first: they must not keep the good ones out
            thread.start()
        time.sleep(0.5)
        trial.load_before = load()
        good_start = time.perf_counter()
        stop_at = time.monotonic() + args.duration
        senders = [threading.Thread(target=good_client, args=(n,)) for n in range(args.clients)]
        senders += [threading.Thread(target=bad_client, args=(n,)) for n in range(2)]
        senders += [threading.Thread(target=bomb_client, args=(n,)) for n in range(args.bombs)]
        senders += [threading.Thread(target=chunked_client, args=(n,)) for n in range(args.chunked)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(timeout=args.duration + args.request_timeout + 5)
        trial.load_after = load()
        trial.good_start = good_start
        trial.good_seconds = args.duration
        for thread in threads:
            thread.join(timeout=args.stall_timeout + 5)
        if any(t.is_alive() for t in senders + threads):
            record("harness", -1, 0.0, "a client thread did not finish in time")
        time.sleep(2.0)  # freed memory is handed back after the last large request
        sampler.stop.set()
        sampler.join(timeout=2)
        trial.rss_peak = max(sampler.peak, trial.rss_before)
        trial.rss_after = rss_mib(server.pid) or 0.0
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        log.close()
        trial.log = Path(log.name).read_text(errors="replace")
        os.unlink(log.name)
    return trial


def chunked_request(port: int, chunks: int, timeout: float, address: str) -> tuple[object, str]:
    """A chunked body of `chunks` 64 KiB chunks, sent until the server answers (it may stop
    reading mid-way), then its answer as raw_request reads it. `address`: the client's, as a
    proxy on loopback names it (X-Forwarded-For), so that each has its own --max-client-mb share."""
    piece = b"y" * 65536
    head = ("POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"X-Forwarded-For: {address}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for _ in range(chunks):
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed while the body was still coming
            pass
        return read_answer(sock)


def good_rate(trial: Trial) -> float:
    """Good requests answered (200) per second within the load window."""
    end = trial.good_start + trial.good_seconds
    return sum(1 for t in trial.good_done if t <= end) / trial.good_seconds if trial.good_seconds else 0.0


def report(trial: Trial) -> list:
    wrong = [(k, s, n) for k, s, _, n in trial.results if s not in EXPECTED.get(k, set()) or n]
    statuses = Counter((k, s) for k, s, _, _ in trial.results)
    good = sorted(seconds for kind, status, seconds, _ in trial.results if kind == "good" and status == 200)
    rate = good_rate(trial)
    print(f"server RSS: before {trial.rss_before:.0f} MiB, peak {trial.rss_peak:.0f} MiB, after {trial.rss_after:.0f} MiB")
    print(f"{trial.load_before or 'load average -'} just before the load window, {trial.load_after or '-'} just after")
    if good:
        p95 = good[min(len(good) - 1, int(0.95 * len(good)))]
        print(f"good requests: {rate:.2f} requests/s (answered within the {trial.good_seconds:g} s load window; "
              f"{len(good)} in all); latency p50 {statistics.median(good) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    latencies = defaultdict(list)
    for kind, status, seconds, _ in trial.results:
        latencies[(kind, status)].append(seconds)
    print("answers (kind -> status: count, median seconds):")
    for (kind, status), count in sorted(statuses.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        allowed = "/".join(str(s) for s in sorted(EXPECTED.get(kind, set()), key=str))
        mark = "" if status in EXPECTED.get(kind, set()) else f"   <-- expected {allowed}"
        print(f"  {kind:<16} -> {status}: {count:5d}   {statistics.median(latencies[(kind, status)]):6.2f} s{mark}")
    print("all answered right: " + ("yes" if not wrong else f"NO ({len(wrong)}: {wrong[:5]})"))
    if wrong:
        print("server log tail:\n" + trial.log[-1500:])
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", default=None,
                        help="arguments of one `poi serve` (repeat to compare; default: none)")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of load per server")
    parser.add_argument("--clients", type=int, default=32, help="good clients")
    parser.add_argument("--bombs", type=int, default=3, help="pixel-bomb clients")
    parser.add_argument("--chunked", type=int, default=0, help="clients sending chunked bodies over the upload limit")
    parser.add_argument("--stalled", type=int, default=64, help="clients that stall in their body")
    parser.add_argument("--stalled-headers", type=int, default=8, help="clients that stall in their request line")
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads")
    parser.add_argument("--photos", default=str(ROOT.parent / "shared/photos/public-domain"))
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--stall-timeout", type=float, default=60.0, help="how long a stalled client waits for its answer")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=1, help="run the servers in turn this many times (median rate)")
    args = parser.parse_args()
    servers = args.server or [""]

    good = photos(Path(args.photos))
    bomb, huge = bomb_png(BOMB_SIDE), huge_header_png(30000, 30000)
    print(f"{len(good)} photos ({', '.join(name for name, _ in good)}); pixel bomb {BOMB_SIDE}x{BOMB_SIDE} PNG "
          f"of {len(bomb)} bytes; {args.clients} good clients, 2 bad, {args.bombs} bomb, {args.chunked} chunked "
          f"over the upload limit, {args.stalled} stalled in "
          f"the body, {args.stalled_headers} in the headers; {args.duration:g} s per server; load average "
          f"{os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {spec: [] for spec in servers}
    wrong = []
    for round_number in range(args.rounds):  # servers alternate: a load change on the machine hits both
        if args.rounds > 1:
            print(f"\n-- round {round_number + 1} of {args.rounds} ({load()})")
        for spec in servers:
            trial = run_trial(spec, args, good, bomb, huge)
            wrong += report(trial)
            rates[spec].append(good_rate(trial))
    if len(servers) > 1:
        print("\n== good requests/s" + (f" (median of {args.rounds} rounds)" if args.rounds > 1 else ""))
        medians = {spec: statistics.median(values) for spec, values in rates.items()}
        for spec in servers:
            print(f"  {medians[spec]:7.2f}  {spec or '(defaults)'}" + (f"   rounds: {', '.join(f'{v:.2f}' for v in rates[spec])}"
                                                                   if args.rounds > 1 else ""))
        first = servers[0]
        for spec in servers[1:]:
            ratio = medians[first] / medians[spec] if medians[spec] else float("inf")
            print(f"  ratio {first or '(defaults)'} / {spec or '(defaults)'}: {ratio:.2f}x")
    sys.exit(1 if wrong else 0)

if __name__ == "__main__":
    main()
