"""Garbage collection in a command-line run that imports torch.

A full (generation-2) collection walks every object alive. Once torch, torchrec and sympy are imported that is
millions of objects, and with Python's default thresholds a `mtiasim run dlrm-v2-mlperf` process ran seven full
collections, ~1 s of its ~8 s (measured with `gc.callbacks`), almost all of them while importing. Modules, the
model and its compiled program live until the process ends, so walking them again finds nothing.

A command therefore defers full collections while it imports (`deferred_full_collections`; young generations are
still collected, so short-lived cycles are freed) and settles when its first step of work begins: what is
alive then is moved out of the collector's reach for good (`gc.freeze`) and full collections resume with the
default thresholds (7 full collections -> 1 and ~2 s less CPU in that run, the same peak RSS). Only the command line does this; a Python process using mtiasim keeps its own
collector settings.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

# generation-2 threshold while deferred: the number of generation-1 collections between full ones (default 10)
DEFERRED_FULL_THRESHOLD = 1_000_000


@contextlib.contextmanager
def deferred_full_collections() -> Iterator[Callable[[], None]]:
    """Within the block no full collections run (generations 0 and 1 keep their thresholds) until the yielded
    `settle()` is called: it freezes everything alive then (it lives as long as the process) and restores the
    thresholds. Later calls do nothing; leaving the block unsettled (an error) restores the thresholds."""
    saved = gc.get_threshold()
    gc.set_threshold(saved[0], saved[1], DEFERRED_FULL_THRESHOLD)
    settled = False

    def settle() -> None:
        nonlocal settled
        if not settled:
            settled = True
            gc.freeze()
            gc.set_threshold(*saved)

    try:
        yield settle
    finally:
        if not settled:
            gc.set_threshold(*saved)
