"""Valid inputs the simulator used to reject with internal messages: a concatenation of lookups whose tables of
one dim are not next to each other, FCs whose weight-stationary slice cannot fit a PE's local store, and
`variant="auto"` GEMMs where only another loop structure fits. Where nothing fits, the error is one line
naming the op and its module."""

import contextlib
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtiasim
from mtiasim.bench.core import level
from mtiasim.bench.gemm import bench_gemm
from mtiasim.dtypes import DType
from mtiasim.errors import CapacityError, MtiasimError
from mtiasim.hw import load_chip
from mtiasim.isa import Level, MemoryPlan
from mtiasim.kernels.common import Region
from mtiasim.kernels.gemm import VARIANTS, _estimate_s, choose_mapping, gemm_job

CHIP = load_chip("mtia-v1")
# fp16 rounding per op; int8 activations at 1/254 of their range per FC (as tests/test_runtime.py)
TOL = {"fp16": 1e-2, "int8": 3e-2}


# ------------------------------------------------------------------ 1. lookups of one dim, apart in a cat


class Bags(nn.Module):
    """EmbeddingBags of the given dims, concatenated in that order, then an FC."""

    def __init__(self, dims, rows=50, mode="sum", seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.bags = nn.ModuleList(nn.EmbeddingBag(rows, d, mode=mode) for d in dims)
        for b in self.bags:
            b.weight.data = torch.rand(b.weight.shape, generator=g) - 0.5
        self.fc = nn.Linear(sum(dims), 4)

    def forward(self, idx, off):
        return self.fc(torch.cat([b(idx, off) for b in self.bags], dim=1))


def _bags_inputs(batch, pooling, rows, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, pooling + 1, (batch,), generator=g)
    idx = torch.randint(0, rows, (int(lengths.sum()),), generator=g)
    off = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    return idx, off


def _check_bags(dims, precision, mode="both", batch=10, pooling=4, pool="sum", seed=0):
    model = Bags(dims, mode=pool, seed=seed).eval()
    args = _bags_inputs(batch, pooling, 50, seed)
    cm = mtiasim.compile(model, args, mode=mode, precision=precision)
    got = cm(*args)
    with torch.no_grad():
        ref = model(*args)
    scale = max(1.0, float(ref.abs().max()))
    err = float((got - ref).abs().max())
    assert err <= TOL[precision] * scale, f"{dims} {precision}: max abs err {err:.3g} (scale {scale:.3g})"
    return cm


@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.parametrize("dims", [(8, 13, 8), (13, 8, 8), (8, 13, 8, 13), (8, 8, 13), (13, 8, 13, 8, 8)])
def test_lookups_of_one_dim_apart_in_a_cat(dims, precision):
    cm = _check_bags(dims, precision)
    kinds = [op.kind for op in cm.report.ops]
    # one batched TBE job per dim, each writing its tables' windows of the cat in place: no copies
    assert kinds.count("tbe") == len(set(dims)) and "copy" not in kinds, kinds


@settings(max_examples=12)
@given(
    dims=st.lists(st.sampled_from([4, 8, 13, 16]), min_size=2, max_size=5),
    batch=st.integers(1, 12),
    pooling=st.integers(0, 5),
    pool=st.sampled_from(["sum", "mean"]),
    precision=st.sampled_from(["int8", "fp16"]),
    seed=st.integers(0, 1000),
)
def test_lookup_cats_of_any_dim_order(dims, batch, pooling, pool, precision, seed):
    _check_bags(tuple(dims), precision, "functional", batch, pooling, pool, seed)


# ------------------------------------------------------------------------- 2. FCs with a very long K

LONG_K = list(itertools.product([4096, 8192, 16384, 32768, 65536], [1, 32, 1000], [1, 4, 300]))


@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.parametrize(("k", "n", "m"), LONG_K)
def test_long_k_linear_compiles_and_computes(k, n, m, precision):
    torch.manual_seed(k + n + m)
    model = nn.Sequential(nn.Linear(k, n)).eval()
    x = torch.randn(m, k)
    small = m * k * n <= 2**24
    cm = mtiasim.compile(model, (x,), mode="both" if small else "timing", precision=precision)
    got = cm(x)
    assert got.shape == (m, n) and cm.report.device_s > 0
    if small:
        with torch.no_grad():
            ref = model(x)
        rng = float(ref.max() - ref.min()) or float(ref.abs().max()) or 1.0
        tol = {"int8": 5e-2, "fp16": 5e-3}[precision]
        err = float((got - ref).abs().max())
        assert err <= tol * rng, f"max abs err {err:.3g}, output range {rng:.3g}"


def test_unmappable_fc_names_the_op_and_module():
    tiny = CHIP.with_values({"local_memory.bytes": 24 * 1024})  # fp16 64x32 tiles twice over do not fit
    model = nn.Sequential(nn.Linear(64, 8)).eval()
    x = torch.randn(2, 64)
    with pytest.raises(CapacityError) as e:
        mtiasim.compile(model, (x,), mode="timing", precision="fp16", chip=tiny)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("op linear (gemm) in module 0 (torch.nn.modules.linear.Linear) at "), msg
    assert "no mapping fits the 24 KiB local store" in msg and msg.endswith("larger local store"), msg


# ------------------------------------------------------------------ 3. variant="auto" never fails alone

# measured (see test_auto_close_to_the_best_variant): where ws fits, auto keeps the v1 library's
# weight-stationary 64x32 FC, up to 2.41x the best explicit variant's time (LPDDR5, where wider tiles and
# `is`/`os` stream better); where it does not, auto is the best of the others (ratio 1.00)
AUTO_MARGIN = 2.5
SHAPES = [
    (256, 16384, 1024),
    (64, 4096, 4096),
    (2048, 4096, 4096),
    (1, 65536, 32),
    (300, 32768, 1000),
    (128, 1024, 128),
    (512, 8192, 256),
    (4, 16384, 32),
]


def _seconds(m, k, n, dt, placement, variant):
    try:
        return bench_gemm(m, k, n, dt, placement, variant=variant, in_flight=1)["seconds"]  # the kernel alone
    except MtiasimError:
        return math.inf


@pytest.mark.parametrize("dt", ["int8", "fp16"])
@pytest.mark.parametrize("placement", ["sram", "dram"])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_auto_close_to_the_best_variant(m, k, n, placement, dt):
    explicit = {v: _seconds(m, k, n, dt, placement, v) for v in VARIANTS}
    best = min(explicit.values())
    assert math.isfinite(best)
    auto = _seconds(m, k, n, dt, placement, "auto")
    assert auto <= best * AUTO_MARGIN, (auto, explicit)
    if not math.isfinite(explicit["ws"]):  # the fallback takes the best of the others
        assert auto <= best * 1.05, (auto, explicit)


def test_bench_256x16384x1024_dram_auto():
    auto = bench_gemm(256, 16384, 1024, "int8", "dram")
    assert auto["seconds"] > 0 and not auto["mapping"].startswith("ws")


@settings(max_examples=150)
@given(
    m=st.integers(1, 4096),
    k=st.integers(1, 131072),
    n=st.integers(1, 4096),
    dt=st.sampled_from([DType.INT8, DType.FP16, DType.BF16]),
    placement=st.sampled_from(["sram", "dram-cached", "dram-direct"]),
    region=st.sampled_from([Region(0, 0, 8, 8), Region(0, 0, 2, 3), Region(3, 4, 1, 4), Region(5, 0, 3, 8)]),
    vectors=st.integers(0, 2),
)
def test_auto_succeeds_whenever_a_variant_does(m, k, n, dt, placement, region, vectors):
    lvl, cached = level(placement, dram_cached=True)
    odt = DType.INT8 if dt == DType.INT8 else dt
    args = (CHIP, m, k, n, dt, odt, (lvl, lvl), region)
    found = {}
    for v in VARIANTS:
        with contextlib.suppress(MtiasimError):
            found[v] = choose_mapping(*args, v, cached, vectors)
    if not found:
        with pytest.raises(CapacityError, match="no mapping fits"):
            choose_mapping(*args, "auto", cached, vectors)
        return
    auto = choose_mapping(*args, "auto", cached, vectors)
    est = {v: _estimate_s(CHIP, mp, m, k, n, dt, odt, (lvl, lvl), cached, vectors) for v, mp in found.items()}
    got = _estimate_s(CHIP, auto, m, k, n, dt, odt, (lvl, lvl), cached, vectors)
    assert math.isfinite(got)
    if "ws" not in found:
        assert got <= min(est.values()) * (1 + 1e-9)
    # every mapping the choice returns builds: it fits the local store with the vectors it was chosen for
    if m * k * n <= 2**28:
        p = MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)
        a, w = p.add("A", (m, k), dt, lvl, cached=cached), p.add("W", (n, k), dt, lvl, cached=cached)
        c = p.add("C", (m, n), odt, lvl, cached=cached)
        acc = DType.INT32 if dt == DType.INT8 else DType.FP32
        bias = p.add("b", (1, n), acc, Level.SRAM) if vectors >= 1 else None
        scales = p.add("s", (1, n), DType.FP32, Level.SRAM) if vectors >= 2 else None
        scale = 0.01 if odt == DType.INT8 and scales is None else None
        for mapping in [auto, *found.values()]:
            job = gemm_job(
                CHIP,
                "fc",
                a,
                w,
                c,
                out_scale=scale,
                bias=bias,
                out_scales=scales,
                region=region,
                mapping=mapping,
            )
            assert job.pes


def test_auto_is_ws_where_it_fits():
    # the v1 library's FC (what the ISCA'23 validation follows) is unchanged where it fits
    mp = choose_mapping(CHIP, 2048, 4096, 4096, DType.INT8, DType.INT8, (Level.SRAM,) * 2, Region.whole(CHIP))
    assert mp.variant == "ws" and mp.tile_k == 32
    np.testing.assert_equal(mp.rows * mp.cols, 64)
