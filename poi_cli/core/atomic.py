"""Atomic file writes: a temp file beside the target, then os.replace.

A killed process leaves either the old file or the new one, never a torn one. Every
file poi writes for the user (run folders, manifests, label files, reports, pictures)
goes through here. No torch import, so light modules can use it.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from poi_cli.core.errors import exception_chain


def is_stream(path: str | Path) -> bool:
    """Whether `path` (symlinks followed) is a FIFO or a character device: /dev/null,
    /dev/stdout onto a pipe or a terminal; or a name in /dev or /dev/fd, /proc/self/fd
    (/dev/stdout redirected to a file: `> rows.csv`). Written into, never replaced: a rename
    would put a regular file in the device's or the pipe's place (as root, /dev/null itself)."""
    if os.path.dirname(os.path.abspath(path)) in ("/dev", "/dev/fd", "/proc/self/fd"):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a file through `write(handle)` into a temp file beside it, then os.replace.

    The temp file (.NAME.PID.random.tmp) is removed on any exit Python sees; one that a
    killed process left (SIGKILL, power loss: its PID no longer runs) is removed by the
    next write of the same file. A stream (is_stream) is written into directly."""
    path = Path(path)
    if is_stream(path):
        try:
            with open(path, "wb") as f:
                write(f)
        except Exception as error:  # /dev/full: the same one line as a full disk
            failed = error if isinstance(error, OSError) else _os_error_in_chain(error)
            if failed is not None and failed.filename is None:
                raise OSError(failed.errno, failed.strerror, str(path)) from None
            raise
        return
    refuse_write_protected(path)
    handle, temp = temp_beside(path)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes 0600; these are the user's ordinary files
        os.replace(temp, path)
    except BaseException as error:
        Path(temp).unlink(missing_ok=True)
        if not isinstance(error, KeyboardInterrupt) and _raised_by_interrupt(error):
            # Ctrl-C inside a writer that cleans up on the way out (torch.save's zip writer then
            # fails with "unexpected pos"): the interruption it was, not a failed write
            raise KeyboardInterrupt from None
        failed = error if isinstance(error, OSError) else _os_error_in_chain(error)
        if failed is not None and (failed.filename in (None, temp)):
            # named by the file asked for (never the temp file, and not nameless: "[Errno 28] No
            # space left on device" said no file); torch.save's zip writer turns a full disk into
            # "RuntimeError: unexpected pos", which the OSError behind it explains
            raise OSError(failed.errno, failed.strerror, str(path)) from None
        if failed is not None:
            raise failed from None
        raise


def temp_beside(path: Path) -> tuple[int, str]:
    """A new temp file (.NAME.PID.random.tmp: its handle and path) beside `path`, after removing
    those that killed processes left there (remove_stale_temps): atomic_write's, and those of a
    writer that replaces `path` itself at the end (an annotated video)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # output_file checks a new folder; the writer makes it
        remove_stale_temps(path)
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as error:  # named by the file asked for, never by the temp file
        raise OSError(error.errno, error.strerror, str(path)) from None


def refuse_write_protected(path: Path) -> None:
    """PermissionError naming `path` when it is a file nobody may write (chmod a-w): the user
    protected it, and a rename would replace it anyway (even for root), with a new mode."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) and not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(errno.EACCES, "write-protected, so poi does not replace it (chmod u+w it, or choose "
                                            "another name)", str(path))


def _os_error_in_chain(error: BaseException) -> Optional[OSError]:
    """The OSError (a full disk, a write error) that `error` was raised while handling, if any."""
    return next((e for e in exception_chain(error, causes=True) if isinstance(e, OSError) and e.errno is not None),
                None)


def _raised_by_interrupt(error: BaseException) -> bool:
    """Whether `error` was raised while a KeyboardInterrupt was being handled (its context chain)."""
    return any(isinstance(e, KeyboardInterrupt) for e in exception_chain(error))


def remove_stale_temps(path: Path) -> None:
    """Remove the temp files of atomic_write for `path` whose writing process is gone."""
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = temp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _process_runs(int(pid)):
            temp.unlink(missing_ok=True)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_new_or_same(files: dict[Path, str], option: str) -> None:
    """Write text files that belong together (a label file and its .json summary), each
    atomically, unless one of them exists already with other contents: then PoiError naming
    it, and nothing is written. A label file may be what a run trained on (its config.json
    names it), so poi never writes over one; the same contents again (a re-run of the same
    command) is no change."""
    from poi_cli.core.errors import PoiError

    from poi_cli.core.locks import claim

    with claim(next(iter(files)), option):  # two commands at once: the second stops (check, then write)
        for path, text in files.items():
            if path.is_file() and path.read_bytes() != text.encode("utf-8"):
                raise PoiError(f"{option}: {path} exists already with other contents (a run may have trained on it); "
                               "poi does not write over it: give a new name, or remove the file first")
        for path, text in files.items():
            if not (path.is_file() and path.read_bytes() == text.encode("utf-8")):  # the same again: left as it is
                atomic_write_text(path, text)


def write_json(path: str | Path, values: Any) -> None:
    atomic_write_text(path, json.dumps(values, indent=2) + "\n")


def write_csv(path: str | Path, columns: list[str], rows: list[dict]) -> None:
    """The whole table at once (a kill never leaves a torn or duplicate row)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic_write_text(path, buffer.getvalue())


# every PNG poi writes says so in its Software text chunk: a later run tells its own picture
# (replaced) from a user's of the same name (kept)
PNG_SOFTWARE = "poi"


def save_figure(figure: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=dpi, metadata={"Software": PNG_SOFTWARE}))
    plt.close(figure)
    return Path(path)


def save_image(image: Any, path: str | Path) -> Path:
    """Save a PIL image as PNG atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))
    return Path(path)


def is_poi_png(path: str | Path) -> bool:
    """`path` is a PNG that poi wrote (save_image, save_figure): its Software chunk, read
    from the header without decoding the picture."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == PNG_SOFTWARE
    except Exception:  # noqa: BLE001 - anything unreadable is not poi's
        return False


def next_run_dir(project: str | Path, name: str, exist_ok: bool = False) -> Path:
    """project/name, or name2, name3, ... when taken (like Ultralytics); created. The name is
    taken by the mkdir itself (atomic), so two processes started together never share one."""
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    candidate, number = project / name, 2
    while True:
        try:
            candidate.mkdir(exist_ok=exist_ok)
            return candidate
        except FileExistsError:  # taken (or a file of that name): the next number
            candidate, number = project / f"{name}{number}", number + 1


def real_path(path: str | Path) -> Path:
    """The path with every symlink followed; a symlink loop or a broken link resolves as
    far as it goes instead of raising (Path.resolve raises RuntimeError on a loop)."""
    return Path(os.path.realpath(path))


def replaced_entry(path: str | Path) -> Path:
    """The directory entry an atomic write of `path` replaces: its folder with symlinks
    followed, its own name kept (os.replace swaps a symlink itself, not what it points to)."""
    path = Path(path)
    return real_path(path.parent) / path.name


def refuse_input_as_output(output: str | Path, inputs: Iterable[str | Path], option: str) -> None:
    """Raise PoiError when `output` is a file the command reads: one of `inputs`, or any file
    inside an input that is a folder (a prepared folder, a run folder: its manifest, faces,
    label files, checkpoints), whether named directly or through symlinks, and whether the
    output is that file or a symlink to it (the write would replace the link).

    `inputs` are what a command reads, after glob and folder expansion: nothing the user
    gave is ever overwritten, however it was named. New files inside an input folder are
    allowed (`poi noise` writes PREPARED_DIR/labels/..., `poi calibrate` best.calibrated.pt).
    """
    from poi_cli.core.errors import PoiError

    target, entry = real_path(output), replaced_entry(output)
    for value in inputs:
        source = Path(value)
        if real_path(source) in (target, entry) or replaced_entry(source) == entry:
            raise PoiError(f"{option} {output} is one of the inputs ({value}); choose another file")
        if source.is_dir():
            folder = real_path(source)
            for written in (target, entry):
                if written.is_relative_to(folder) and (written.exists() or written.is_symlink()):
                    raise PoiError(f"{option} {output} would write over {written.relative_to(folder)} of {value}, "
                                   "which this command reads; choose another file")


def refuse_poi_file(output: str | Path, option: str) -> None:
    """Raise PoiError when `output` would be a file of a prepared folder or a run folder
    under the name poi gives it there (core/layout.py), whether or not that file exists
    yet: written there, it would replace the folder's own (another run's last.pt, another
    dataset's manifest.csv) or be read back as it. A folder is a prepared folder when it
    holds prepared.json, a run folder when it holds config.json, last.pt or best.pt."""
    from poi_cli.core.errors import PoiError
    from poi_cli.core.layout import BEST, CONFIG_FILE, LAST, META_FILE, RUN_FILES, STORE_FILES

    for written in dict.fromkeys((replaced_entry(output), real_path(output))):
        folder = written.parent
        if written.name in STORE_FILES and (folder / META_FILE).is_file():
            raise PoiError(f"{option} {output} is the {written.name} of the prepared folder {folder}; choose another file")
        if written.name in RUN_FILES and any((folder / name).is_file() for name in (CONFIG_FILE, LAST, BEST)):
            raise PoiError(f"{option} {output} is the {written.name} of the run folder {folder}; choose another file")


def output_file(path: str | Path, option: str, rewrites_itself: bool = False,
                replaces: Optional[tuple[str, Callable[[Path], bool]]] = None, atomic: bool = True) -> Path:
    """Check, before any work, that a file can be written at `path` (its folder is made by the
    writer, so that a command refused after this check leaves no new empty folder): PoiError
    (one line) for an empty name, a folder in its place, a file where its folder should be, a
    folder that cannot be written, or a prepared or run folder's own file (refuse_poi_file; unless
    rewrites_itself: the command rewrites the file it read, `poi calibrate --in-place`).
    `replaces` (what the command writes, and a test of an existing file): an existing file
    that fails it is refused, so that an output named by mistake never replaces the user's
    image, label file or checkpoint; one of the command's own kind (a re-run) is replaced.
    atomic: the file is written through a temp file (temp_beside), whose longer name must fit too."""
    from poi_cli.core.errors import PoiError

    if not str(path).strip():
        raise PoiError(f"{option} needs a file name")
    path = Path(path)
    if path.is_dir():
        raise PoiError(f"{option} {path} is a folder; give a file name")
    if is_stream(path):  # /dev/null, /dev/stdout, a named pipe: written into (atomic_write), nothing replaced
        return path
    if path.exists() and not path.is_file():
        raise PoiError(f"{option} {path} is neither a regular file nor a stream (a device or a socket): choose a file")
    try:
        refuse_write_protected(path)
    except PermissionError as error:
        raise PoiError(f"{option} {path} is {error.strerror}") from None
    if not rewrites_itself:
        refuse_poi_file(path, option)
        if replaces is not None and path.is_file() and path.stat().st_size > 0 and not replaces[1](path):
            raise PoiError(f"{option} {path} exists and is not {replaces[0]}: a command replaces only its own "
                           "earlier output; choose another name (or remove the file)")
    output_folder(path.parent, option, of=path, make=False)
    if atomic:  # a name that fits while its temp file's does not failed only once the work was done
        temp, limit = f".{path.name}.{os.getpid()}.{'x' * 8}.tmp", name_limit(_nearest_folder(path.parent))
        if len(os.fsencode(temp)) > limit:
            raise PoiError(f"{option} {path}: the name is too long for the temporary file poi writes first "
                           f"({len(os.fsencode(temp))} bytes, at most {limit}); give a shorter name")
    return path


def name_limit(folder: Path) -> int:
    """The longest file name `folder`'s file system takes, in bytes (255 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf
        return 255


def _nearest_folder(path: Path) -> Path:
    """`path` or the nearest of its parents that is a folder."""
    return next((part for part in (path, *path.parents) if part.is_dir()), Path("."))


def output_folder(path: str | Path, option: str, of: str | Path | None = None, make: bool = True) -> Path:
    """Check, before any work, that `path` is or can become a folder, and create it (make=False:
    only the check; the writer makes it): PoiError (one line) for an empty name, a file in the
    way (`of`: the file the folder is for) or a folder that cannot be written."""
    from poi_cli.core.errors import PoiError

    if not str(path).strip():
        raise PoiError(f"{option} needs a folder name")
    path = Path(path)
    what = f"{option} {of if of is not None else path}"
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise PoiError(f"{what}: {part} is a file, not a folder")
    if not make:
        nearest = _nearest_folder(path)
        if nearest == path and not os.access(path, os.W_OK):
            raise PoiError(f"{what}: the folder {path} is not writable")
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise PoiError(f"{what}: cannot create the folder {path} ({nearest} is not writable)")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PoiError(f"{what}: cannot create the folder {path} ({error.strerror or type(error).__name__})") from None
    if not os.access(path, os.W_OK):
        raise PoiError(f"{what}: the folder {path} is not writable")
    return path


@dataclass(frozen=True)
class FolderOutputs:
    """What a command writes into its --out folder: file names (glob patterns: `curves_*.png`),
    and the file by which it knows a folder as its own earlier output (`marker`, recognised
    by `is_own`) and may replace what it wrote there."""

    command: str  # "poi evaluate"
    patterns: tuple[str, ...]
    marker: str
    is_own: Callable[[Path], bool]


# in a command's --out folder while it works (removed when it finishes): a folder a killed or
# interrupted command left half-written is still its own to write again, and readers can tell
INCOMPLETE_FILE = ".poi_incomplete.json"


def interrupted_command(folder: Path) -> Optional[str]:
    """The command ("poi audit") whose work in `folder` was killed or interrupted: its INCOMPLETE_FILE."""
    try:
        values = json.loads((Path(folder) / INCOMPLETE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return values.get("command") if isinstance(values, dict) else None


def json_with_keys(path: Path, *keys: str) -> bool:
    """`path` holds a JSON object with all of `keys` (a command's own summary file)."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and all(key in values for key in keys)


def check_output_folder(folder: Path, option: str, outputs: FolderOutputs) -> None:
    """Before any work: a --out folder the user named is no prepared or run folder (the command
    would add its files to a dataset or a run), and a file in it under a name the command writes
    is replaced only when the folder is the command's own earlier output (its marker): never a
    user's metrics, notes, tables or photos. PoiError, one line."""
    from poi_cli.core.errors import PoiError
    from poi_cli.core.layout import BEST, CONFIG_FILE, LAST, META_FILE

    if (folder / META_FILE).is_file():
        raise PoiError(f"{option} {folder} is a prepared folder; choose another folder")
    if any((folder / name).is_file() for name in (CONFIG_FILE, LAST, BEST)):
        raise PoiError(f"{option} {folder} is a run folder; choose another folder")
    # poi's own pictures are its own whatever the marker says (a report stopped before its
    # report.md leaves them): only a user's file under one of the names stops the command
    taken = sorted(path.name for pattern in outputs.patterns for path in folder.glob(pattern)
                   if path.is_file() and path.stat().st_size > 0 and not (path.suffix == ".png" and is_poi_png(path)))
    own = ((folder / outputs.marker).is_file() and outputs.is_own(folder / outputs.marker)
           or interrupted_command(folder) == outputs.command)  # its own run, stopped before its marker
    if taken and not own:
        raise PoiError(f"{option} {folder} holds {taken[0]}, which {outputs.command} did not write there: a command "
                       "replaces only its own earlier output; choose another folder (or remove the file)")


@contextmanager
def command_output_folder(out: Optional[str | Path], option: str,
                          default_project: Optional[str | Path] = None,
                          outputs: Optional[FolderOutputs] = None) -> Iterator[Path]:
    """A command's output folder for the duration of its work: `out` checked and made before
    the work (output_folder), or, without one, the next numbered folder under
    default_project (next_run_dir: exp, exp2, ...), claimed (core.locks: a second command
    into the same folder stops with one line). If the work fails, the folders this made
    are removed again where they are still empty: a failed command leaves no empty folder
    behind (a folder with a finished part in it, e.g. cross-fit models, stays). `outputs`:
    the files the command writes there, checked in a folder the user named (check_output_folder),
    and INCOMPLETE_FILE in the folder while the work runs: left behind by a run that was stopped
    after it wrote something (a killed run's files stay its own; readers see it was stopped)."""
    from poi_cli.core.locks import claim, remove_empty_folders

    if out is None and default_project is None:
        raise ValueError(f"{option} needs a folder name")
    start = Path(out if out is not None else default_project)
    made = [p for p in (start, *start.parents) if not p.exists()]  # deepest first
    if out is not None and outputs is not None and Path(out).is_dir():
        check_output_folder(Path(out), option, outputs)
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            output_folder(folder, option)  # says which file is in the way
        output_folder(folder.parent, option, of=folder)  # the claim's lock file goes there
    else:
        folder = next_run_dir(default_project, "exp")  # made by this process alone (an atomic mkdir)
        if folder not in made:
            made.insert(0, folder)
    incomplete = folder / INCOMPLETE_FILE
    # claimed before the folder is made or anything tidied: the process that loses the claim
    # touches nothing (it removed the holder's marker, or the holder's new folder from under it)
    try:
        with claim(folder, option):
            try:
                if out is not None:
                    output_folder(folder, option)
                if outputs is not None:
                    write_json(incomplete, {"command": outputs.command})
                yield folder
                incomplete.unlink(missing_ok=True)
            except BaseException:
                # tidied while the claim is still held: no other command can be at work in the folder
                if outputs is not None and not _wrote_since(folder, outputs, incomplete):
                    incomplete.unlink(missing_ok=True)  # stopped before it wrote anything: the folder is as it was
                remove_empty_folders([folder] if folder in made else [])
                raise
    except BaseException:
        remove_empty_folders([p for p in made if p != folder])  # the folders above it, made for it (empty once its lock went)
        raise


def _wrote_since(folder: Path, outputs: FolderOutputs, incomplete: Path) -> bool:
    """Whether a file under one of the command's names in `folder` is newer than its INCOMPLETE_FILE."""
    try:
        started = incomplete.stat().st_mtime_ns
    except OSError:
        return False
    return any(path.is_file() and path.stat().st_mtime_ns >= started
               for pattern in outputs.patterns for path in folder.glob(pattern))
