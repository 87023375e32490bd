"""Atomic file writes: a temp file beside the target, then os.replace.

A killed process leaves either the old file or the new one, never a torn one. Every
file poi writes for the user (run folders, manifests, label files, reports, pictures)
goes through here. No torch import, so light modules can use it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a file through `write(handle)` into a temp file beside it, then os.replace."""
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes 0600; these are the user's ordinary files
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


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


def save_figure(figure: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=dpi))
    plt.close(figure)
    return Path(path)


def save_image(image: Any, path: str | Path) -> Path:
    """Save a PIL image as PNG atomically."""
    atomic_write(path, lambda f: image.save(f, format="PNG"))
    return Path(path)


def next_run_dir(project: str | Path, name: str, exist_ok: bool = False) -> Path:
    """project/name, or name2, name3, ... when taken (like Ultralytics); created."""
    project = Path(project)
    candidate, number = project / name, 2
    while candidate.exists() and not exist_ok:
        candidate, number = project / f"{name}{number}", number + 1
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def refuse_input_as_output(output: str | Path, inputs: Iterable[str | Path], option: str) -> None:
    """Raise PoiError when `output` is (after resolving symlinks) a file the command reads:
    one of `inputs`, or any file inside an input that is a folder (a prepared folder, a run
    folder: its manifest, faces, label files, checkpoints).

    `inputs` are what a command reads, after glob and folder expansion: nothing the user
    gave is ever overwritten, however it was named. New files inside an input folder are
    allowed (`poi noise` writes PREPARED_DIR/labels/..., `poi calibrate` best.calibrated.pt).
    """
    from poi_cli.core.errors import PoiError

    target = Path(output).resolve()
    for value in inputs:
        source = Path(value)
        if source.resolve() == target:
            raise PoiError(f"{option} {output} is one of the inputs ({value}); choose another file")
        if source.is_dir() and target.is_relative_to(source.resolve()) and target.exists():
            raise PoiError(f"{option} {output} would write over {target.relative_to(source.resolve())} of {value}, "
                           "which this command reads; choose another file")
