"""--threads / POI_THREADS: one resolution rule, applied to torch, bad values one line."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from poi_cli.cli import app
from poi_cli.core.threads import DEFAULT_MAX, THREADS_ENV, ThreadsError, configure_threads, resolve_threads, usable_cores


def test_option_beats_environment_beats_default(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert resolve_threads(None) == min(usable_cores(), DEFAULT_MAX)
    monkeypatch.setenv(THREADS_ENV, "3")
    assert resolve_threads(None) == 3
    assert resolve_threads(1) == 1
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ThreadsError, match="POI_THREADS"):
        resolve_threads(None)
    with pytest.raises(ThreadsError, match="at least 1"):
        resolve_threads(0)


def test_configure_threads_sets_torchs_intra_op_pool(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bad_poi_threads_is_a_one_line_error_in_a_compute_command(monkeypatch, tmp_path):
    monkeypatch.setenv(THREADS_ENV, "0")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "x.jpg")])
    assert result.exit_code == 1 and "POI_THREADS must be at least 1" in result.stderr
    assert result.stderr.count("\n") == 1
