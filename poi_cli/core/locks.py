"""Writer claims: one poi process at a time writes a given output file or folder.

`claim(path)` creates `.<name>.lock` next to `path` with O_CREAT | O_EXCL (atomic on
local file systems) holding the owner's pid and host, and removes it on exit. A second
writer gets a LockError naming the owner. A lock left by a process that died (same host,
pid gone) is stale: it is taken over. Atomic writes alone (core.atomic) keep files whole,
but two concurrent writers would still both report success while one's rows vanish; the
claim makes the second one stop with a clear message instead.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from poi_cli.core.errors import PoiError


class LockError(PoiError):
    """Another process is writing the same output; one-line message."""


def lock_path(path: str | Path) -> Path:
    """The lock file of an output: a hidden `.<name>.lock` beside it. A folder is locked where it
    really is (two names of one folder: one lock); a file beside the name it is written under,
    since atomic_write replaces that name (a symlink there, dangling or not, is replaced, never
    followed: no folder is made at its target)."""
    path = Path(path)
    path = path.resolve() if path.is_dir() else path.parent.resolve() / path.name
    return path.parent / f".{path.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _is_stale(lock: Path) -> bool:
    try:
        owner = json.loads(lock.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        # unreadable or half-written: written by a claim that is still starting up
        # or died mid-write; only an old one is treated as stale
        try:
            return time.time() - lock.stat().st_mtime > 60
        except OSError:
            return True  # gone already
    return host == socket.gethostname() and not _pid_alive(pid)


def _owner(lock: Path) -> str:
    try:
        owner = json.loads(lock.read_text())
        return f"pid {owner['pid']} on {owner['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def claim(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold the write claim on `path` (a file or a folder) for the `with` block.

    Raises LockError when a live process holds it. The lock is removed at exit, also on
    an exception or Ctrl-C.
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
    for _ in range(3):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _is_stale(lock):
                lock.unlink(missing_ok=True)  # its owner died: take over
                continue
            raise LockError(f"{what} {path} is being written by {_owner(lock)}; wait for it to finish "
                            f"(or delete {lock} if no poi process is running)") from None
        break
    else:
        raise LockError(f"could not claim {path}: {lock} keeps reappearing")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(body)
        yield lock
    finally:
        lock.unlink(missing_ok=True)
