"""The one base class of poi's expected errors.

Every error a user can cause (a bad file, a missing split, an impossible option)
subclasses PoiError and carries a one-line message; the CLI prints it and exits 1.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PoiError(ValueError):
    """An error with a one-line message meant for the user."""
