"""Garbage collection in a command-line run that imports torch.

The collector walks the objects of a generation each time it collects it. Once torch, torchrec and sympy are
imported that is millions of objects, and with Python's default thresholds a `mtiasim run dlrm-v2-mlperf`
process ran seven full collections, ~1 s of its ~8 s (measured with `gc.callbacks`), almost all of them while
importing, and ~1,100 young ones (~0.3 s), most of them also while importing. Modules, the model and its
compiled program live until the process ends, so walking them finds nothing.

A command therefore runs no collection while it imports (`deferred_collections`) and settles when its first step
of work begins: what is alive then is moved out of the collector's reach for good (`gc.freeze`) and collection
resumes with the default thresholds. Measured on that run: 1 full and ~340 young collections, ~0.17 s of GC in
all (the young collections skipped while importing were ~720 of them, ~0.17 s). The cost: the cycles that
imports leave as garbage (~200,000 objects, ~9 MB of peak RSS) are frozen with the rest and never freed. Only the
command line does this; a Python process using mtiasim keeps its own collector settings.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def deferred_collections() -> Iterator[Callable[[], None]]:
    """Within the block the collector is off until the yielded `settle()` is called: it freezes everything alive
    then (it lives as long as the process) and turns the collector back on, as it was before the block. Later calls
    do nothing; leaving the block unsettled (an error) restores the collector."""
    was_enabled = gc.isenabled()
    gc.disable()
    settled = False

    def settle() -> None:
        nonlocal settled
        if not settled:
            settled = True
            gc.freeze()
            if was_enabled:
                gc.enable()

    try:
        yield settle
    finally:
        if not settled and was_enabled:
            gc.enable()
