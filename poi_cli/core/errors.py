"""The one base class of poi's expected errors.

Every error a user can cause (a bad file, a missing split, an impossible option)
subclasses PoiError and carries a one-line message; the CLI prints it and exits 1.
Anything else is a bug and keeps its traceback. Beside it: what the deploy install leaves
out, as the messages and `poi --help` name it.
"""

from __future__ import annotations

import importlib.util
from typing import Iterator

# What a user runs to get what the deploy runtime (`pip install poi-fer`) leaves out: one
# line each, named by every error that a missing extra causes.
TRAIN_EXTRA_HINT = "pip install 'poi-fer[train]'"
FACENET_HINT = "pip install --no-deps facenet-pytorch==2.6.0 (with the train extra; scripts/setup.sh installs both)"
# pandas alone (the DataFrames of Predictor.predict and predict_video), or the extra that has it
PANDAS_HINT = f"pip install pandas, or {TRAIN_EXTRA_HINT}"
# what `poi --help` adds to each command of the train extra where torch is not installed
NEEDS_TRAIN_EXTRA = "(needs poi-fer[train])"


def torch_installed() -> bool:
    """Whether torch, the heart of the train extra, can be imported: found, not imported (the
    deploy runtime never loads it). A finder that refuses the name counts as not installed."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


class PoiError(ValueError):
    """An error with a one-line message meant for the user."""


def one_line(error: BaseException) -> str:
    """The first line of an exception's text, or its type name when it has none.

    Some library errors carry no text at all (torch.load's EOFError on an empty file), so
    indexing the text's first line would itself fail.
    """
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror}"  # not "[Errno 21] Is a directory: 'x'"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def exception_chain(error: BaseException, causes: bool = False) -> Iterator[BaseException]:
    """`error`, then each exception it was raised while handling (__context__; causes: else its
    __cause__), each once: a second Ctrl-C during the first one's cleanup has the first as its
    context, a wrapped full disk its OSError."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__context__ or (current.__cause__ if causes else None)
