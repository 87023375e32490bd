"""The progress bar of every long loop over images or frames (prepare, predict, video): what is
being done, the bar, done / total, the speed in the task's unit, the time left.

A task may carry a `unit` field ("frames"; default "images"); nothing else is read from its
fields, so a task added without any still renders (a terminal draws the bar, a pipe does not).
"""

from __future__ import annotations

from typing import Any, Optional

from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text


class SpeedColumn(ProgressColumn):
    """Items per second, as rich measures it from the task's advances, in the task's unit."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "images")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s")


def progress_bar(console: Optional[Console] = None, enabled: bool = True, transient: bool = True) -> Progress:
    """A rich Progress with SpeedColumn; disabled (draws nothing) unless `enabled` and the
    console is a terminal (piped, rich would still print the bar's last state as a line)."""
    shown = enabled and (console or get_console()).is_terminal
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), SpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=transient, disable=not shown)
