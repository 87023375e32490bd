"""poi: noise-robust facial expression recognition with Prior-based Objective Inference."""

from poi_cli.core.threads import prefer_passive_wait

__version__ = "0.1.0"

# Before anything imports torch: OpenMP threads that sleep rather than spin, so that poi
# does not collapse on a CPU shared with other jobs (poi_cli/core/threads.py).
prefer_passive_wait()
