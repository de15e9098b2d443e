"""`engine.blas`: a functional run holds BLAS to one thread but for its large products, whose sums keep their
bits; the thread counts are restored after the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import ThreadpoolController

from mtiasim.dtypes import DType
from mtiasim.engine import blas
from mtiasim.engine import numerics as nx


def blas_threads() -> list[int]:
    return [lib.num_threads for lib in ThreadpoolController().select(user_api="blas").lib_controllers]


@pytest.fixture
def two_threads():
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    if not libs:
        pytest.skip("numpy without a BLAS library threadpoolctl knows")
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(2)
    yield
    for lib, n in zip(libs, before, strict=True):
        lib.set_num_threads(n)


def test_serial_holds_one_thread_and_widens_large_products(two_threads):
    assert set(blas_threads()) == {2}
    with blas.threads_for(blas.WIDE_PRODUCT_MACS):  # outside a run: nothing changes
        assert set(blas_threads()) == {2}
    with blas.serial():
        assert set(blas_threads()) == {1}
        with blas.threads_for(blas.WIDE_PRODUCT_MACS - 1):
            assert set(blas_threads()) == {1}
        with blas.threads_for(blas.WIDE_PRODUCT_MACS):
            assert set(blas_threads()) == {2}
        assert set(blas_threads()) == {1}
        with blas.serial():  # a run inside a run keeps the outer's counts
            with blas.threads_for(blas.WIDE_PRODUCT_MACS):
                assert set(blas_threads()) == {2}
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}
    assert set(blas_threads()) == {2}


def test_serial_restores_the_threads_after_an_error(two_threads):
    with pytest.raises(ZeroDivisionError), blas.serial(), blas.threads_for(blas.WIDE_PRODUCT_MACS):
        1 / 0  # noqa: B018
    assert set(blas_threads()) == {2}
    with blas.serial():
        assert set(blas_threads()) == {1}


def test_wide_int8_products_keep_their_bits(two_threads):
    """A product above the threshold (two threads) gives the exact int32 sums."""
    rng = np.random.default_rng(5)
    m, k, n = 300, 2500, 40  # 30 M MACs, K past the 1024 of one exact float32 chunk
    assert m * k * n >= blas.WIDE_PRODUCT_MACS
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    b[:, 0] = -128  # the largest sums: -128 x -128 over all of K
    a[0] = -128
    ref = (torch.from_numpy(a).long() @ torch.from_numpy(b).long()).numpy()
    with blas.serial():
        wide = nx.matmul_acc(a, b, DType.INT8)
    assert wide.dtype == np.int32 and np.array_equal(wide, ref)
