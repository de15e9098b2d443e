"""`mtiasim.quiet`: the library messages a run drops, and only those."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from mtiasim.quiet import DropMessages

DROPPED = ("is_fx_tracing will return true for both", "Trying to non-strict torch.export KJT to_dict")


def test_drops_by_the_opening_words_only():
    drop = DropMessages("is_fx_tracing will")
    record = lambda msg: logging.LogRecord("x", logging.WARNING, __file__, 1, msg, None, None)  # noqa: E731
    assert not drop.filter(record("is_fx_tracing will return true for both ..."))
    assert drop.filter(record("note: is_fx_tracing will ..."))
    assert drop.filter(record("something else"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchrec_run_prints_neither_message():
    """A fresh process (torch prints its hint once per process) exports torchrec's DLRM-v2: its stderr is clean."""
    proc = subprocess.run(
        [sys.executable, "-m", "mtiasim.cli", "run", "dlrm-v2-mlperf", "--batch", "16", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert not any(m in proc.stderr for m in DROPPED), proc.stderr
