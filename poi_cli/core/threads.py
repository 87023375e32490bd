"""CPU threads of every compute command: `--threads N`, else $POI_THREADS, else a default.

Set once, here, for torch (intra-op and inter-op pools) and for ONNX Runtime sessions.

Why: torch's default is one OpenMP thread per core, and OpenMP threads spin-wait for
each other between operators. On a machine whose cores are shared with other jobs, a
descheduled thread stalls the rest while they burn their time slices spinning
(benchmarks/threads.py on 2 shared cores: 3.5 s per photo with torch's default, 0.16 s
with 2 threads that sleep instead of spinning; see the README). So poi makes OpenMP's
threads wait passively (OMP_WAIT_POLICY=PASSIVE), which only takes effect if set before
torch loads its OpenMP runtime: importing poi_cli sets it (unless the environment already
does) and the CLI imports torch inside its commands. The default count is
min(usable cores, DEFAULT_MAX): inference batches are small, so more threads buy little;
--threads / POI_THREADS raise it (training on a large idle CPU, say).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from poi_cli.core.errors import PoiError

THREADS_ENV = "POI_THREADS"
DEFAULT_MAX = 4  # the default: min(usable cores, DEFAULT_MAX); see the module docstring
# Threads of `poi predict`'s overlapped image pipeline (deploy/overlap.py) that load,
# detect and align images ahead of the model; 0 is the sequential path.
DEFAULT_WORKERS = 2
THREADS_HELP = (f"CPU threads for torch / ONNX Runtime (default: ${THREADS_ENV}, else min(cores, {DEFAULT_MAX}); "
                "more helps only on an idle machine with large batches).")


class ThreadsError(PoiError):
    """A bad --threads / POI_THREADS value; one-line message."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: Optional[int] = None) -> int:
    """--threads, else $POI_THREADS, else min(usable cores, DEFAULT_MAX)."""
    origin = "--threads"
    if threads is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        if not value:
            return min(usable_cores(), DEFAULT_MAX)
        origin = THREADS_ENV
        try:
            threads = int(value)
        except ValueError:
            raise ThreadsError(f"{THREADS_ENV}={value!r} is not a whole number of threads") from None
    if threads < 1:
        raise ThreadsError(f"{origin} must be at least 1, got {threads}")
    return int(threads)


_configured: Optional[int] = None


def prefer_passive_wait() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the environment says otherwise (effective only
    before torch is imported: OpenMP reads it when it loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads(threads: Optional[int] = None, import_torch: bool = True) -> int:
    """Resolve and apply the thread count for this process; returns it.

    Call it once at the start of a compute command (before the first tensor operation).
    torch's inter-op pool can be sized only before its first use, so a later call with
    another count changes the intra-op pool alone. import_torch=False (the deploy
    commands, which may never need torch): only the environment is set, which torch reads
    if it is imported later (a .pt model); ONNX Runtime sessions take the count from
    onnx_session_options.
    """
    global _configured
    count = resolve_threads(threads)
    if "torch" not in sys.modules:
        prefer_passive_wait()
        os.environ["OMP_NUM_THREADS"] = str(count)
        os.environ.setdefault("MKL_NUM_THREADS", str(count))
        if not import_torch:
            _configured = count
            return count
    import torch

    torch.set_num_threads(count)
    if _configured is None:
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # the inter-op pool already started (torch was used before)
            pass
    _configured = count
    return count


def onnx_session_options(threads: Optional[int] = None):
    """onnxruntime.SessionOptions with the same thread count (intra-op; one inter-op)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # an explicit count wins; else what configure_threads applied; else --threads' default
    options.intra_op_num_threads = resolve_threads(threads) if threads is not None else _configured or resolve_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # the same reason as above
    return options
