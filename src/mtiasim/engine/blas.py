"""BLAS threads of a functional run: one, but for the products large enough to pay for more.

A functional run multiplies one PE's blocks (or bands of them) at a time. Most products are small, and for
those BLAS threads cost more than they give: on a busy host a small product waits ~100x its work for its
threads to wake. But a DLRM's big layers make products of tens of millions of MACs, which two threads finish
in ~0.55x the time of one (numpy/OpenBLAS, float32, on this project's 2-core machine). So `serial()` holds
BLAS to one thread for the run, and `threads_for(macs)` gives a product of at least `WIDE_PRODUCT_MACS` the
threads BLAS had before. Only products whose sums are exact in any order ask for it (int8 in float32 chunks,
`numerics.int8_matmul_exact`), so the bits cannot depend on how BLAS splits the work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

WIDE_PRODUCT_MACS = 1 << 23  # a product of this many multiply-accumulates or more uses every BLAS thread

_held: list[tuple[Any, int]] = []  # while `serial()` holds: each BLAS library and its threads before


@contextmanager
def serial() -> Iterator[None]:
    """BLAS at one thread inside (`threads_for` widens large products); the thread counts restored after."""
    if _held:  # already held (a run inside a run)
        yield
        return
    from threadpoolctl import ThreadpoolController

    libs = [(lib, lib.num_threads) for lib in ThreadpoolController().select(user_api="blas").lib_controllers]
    for lib, _threads in libs:
        lib.set_num_threads(1)
    _held[:] = libs
    try:
        yield
    finally:
        _held.clear()
        for lib, threads in libs:
            lib.set_num_threads(threads)


@contextmanager
def threads_for(macs: int) -> Iterator[None]:
    """Inside `serial()`: a product of `macs` multiply-accumulates gets the libraries' former threads when it is
    at least `WIDE_PRODUCT_MACS`. Outside `serial()`, or for a small product, nothing changes."""
    wide = [(lib, threads) for lib, threads in _held if threads > 1] if macs >= WIDE_PRODUCT_MACS else []
    for lib, threads in wide:
        lib.set_num_threads(threads)
    try:
        yield
    finally:
        for lib, _threads in wide:
            lib.set_num_threads(1)
