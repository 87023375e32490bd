"""The machine's load average, as the benchmarks print it.

The machine is shared and noisy: a benchmark's figures are read beside the load they were
measured under, and compared as ratios of figures taken side by side in one run. A
benchmark run as `python benchmarks/NAME.py` imports this as `from loadavg import ...`
(the script's folder is first on sys.path).
"""

from __future__ import annotations

import os


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, to 0.01 (for --json records)."""
    return [round(value, 2) for value in os.getloadavg()]


def load() -> str:
    """'load average 1.23' (the 1-minute figure), the words every benchmark prints."""
    return f"load average {os.getloadavg()[0]:.2f}"
