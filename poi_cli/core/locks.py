"""Writer claims: one poi process at a time writes a given output file or folder.

`claim(path)` holds an exclusive flock on `.<name>.lock` next to `path`, which names the
owner's pid and host, and removes it on exit. A second writer gets a LockError naming the
owner. The kernel lets go of a flock when its process ends, however it ends (SIGKILL, a
stopped container): a lock file left behind is simply taken by the next claim, atomically
(two processes taking over one left-behind lock cannot both win, and a pid or host name
that happens to be alive, such as PID 1 in another container, does not keep it). Atomic
writes alone (core.atomic) keep files whole, but two concurrent writers would still both
report success while one's rows vanish; the claim makes the second one stop with a clear
message instead.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from poi_cli.core.errors import PoiError

try:
    import fcntl
except ImportError:  # Windows: O_EXCL lock files, a left-behind one removed by hand (the message says which)
    fcntl = None  # type: ignore[assignment]


class LockError(PoiError):
    """Another process is writing the same output; one-line message."""


INSIDE_LOCK = ".poi-writer.lock"


def lock_path(path: str | Path, inside: bool = False) -> Path:
    """The lock file of an output: a hidden `.<name>.lock` beside it. A folder is locked where it
    really is (two names of one folder: one lock); a file beside the name it is written under,
    since atomic_write replaces that name (a symlink there, dangling or not, is replaced, never
    followed: no folder is made at its target). inside: a folder's lock is INSIDE_LOCK in it
    (for a folder such as `--save-vis .`, whose parent need not be writable)."""
    path = Path(path)
    if inside:
        return path.resolve() / INSIDE_LOCK
    path = path.resolve() if path.is_dir() else path.parent.resolve() / path.name
    return path.parent / f".{path.name}.lock"


def _owner(lock: Path) -> str:
    try:
        owner = json.loads(lock.read_text())
        return f"pid {owner['pid']} on {owner['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def claim(path: str | Path, what: str = "output", inside: bool = False) -> Iterator[Path]:
    """Hold the write claim on `path` (a file or a folder; inside: see lock_path) for the
    `with` block.

    Raises LockError when a live process holds it. The lock is removed at exit, also on
    an exception or Ctrl-C.
    """
    lock = lock_path(path, inside)
    made = [part for part in (lock.parent, *lock.parent.parents) if not part.exists()]  # deepest first
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = _hold(lock, path, what)
    except OSError as error:
        remove_empty_folders(made)
        if error.errno != errno.ENAMETOOLONG:
            raise
        # the output's own name fits, `.NAME.lock` does not: the error named a file the user never gave
        raise LockError(f"{what} {path}: the name is too long for poi's lock file beside it ({lock.name}: "
                        f"{len(os.fsencode(lock.name))} bytes); give a shorter name") from None
    try:
        try:  # who holds it, for the message a second writer gets; the flock is the claim itself
            os.write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        except OSError:  # a full disk: the claim holds without its note, and the output's own write names the file
            pass
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # still held: no other process holds this file
        os.close(handle)  # lets go of the flock
        # the folders made for the lock alone: a command refused after its claim leaves none
        # behind (`--csv new/sub/rows.csv` and a missing model); its outputs keep them
        remove_empty_folders(made)


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """rmdir each of `folders` (deepest first) while it is empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _hold(lock: Path, path: str | Path, what: str) -> int:
    """An open handle of `lock` under this process's exclusive flock (emptied), or LockError."""
    def busy() -> LockError:
        return LockError(f"{what} {path} is being written by {_owner(lock)}; wait for it to finish "
                         f"(or delete {lock} if no poi process is running)")

    if fcntl is None:
        try:
            return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise busy() from None
    for _ in range(10):
        handle = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise busy() from None
        try:  # the holder before may have removed the file between our open and our flock
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(handle), current):
            os.ftruncate(handle, 0)
            return handle
        os.close(handle)
    raise LockError(f"could not claim {path}: {lock} keeps being replaced")
