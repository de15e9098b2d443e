"""TBE at the granularity of bags: the row buffer, the pooling core's per-bag work, the launches in flight."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtiasim.bench.tbe import bench_tbe, prepare_tbe
from mtiasim.dtypes import DType
from mtiasim.engine.resolve import resolve
from mtiasim.engine.resources import resource_map
from mtiasim.engine.work import WorkModel
from mtiasim.hw import load_chip
from mtiasim.isa import Level, MemoryPlan, RowFormat, SePool
from mtiasim.kernels.tbe import CB_ROWS, tbe_job

CHIP = load_chip("mtia-v1")


def _pool_works(prep):
    resolved = resolve(prep.program, prep.chip)
    wm = WorkModel(prep.program, resolved, prep.chip, resource_map(prep.chip), prep.inputs)
    return [(n.cmd, wm.work(n)) for n in resolved.nodes if isinstance(n.cmd, SePool)]


@pytest.mark.parametrize("dim", [16, 64, 256])
def test_per_bag_work_has_a_part_per_pooled_element(dim):
    core = CHIP.core
    for cmd, w in _pool_works(prepare_tbe(256, 3, 100, dim, jobs=1, in_flight=1)):
        bags = len(cmd.lengths)
        commands = bags + sum(math.ceil(n / CHIP.se.accumulate_max_rows) for n in cmd.lengths)
        per_bag = core.cycles_per_bag + dim * core.cycles_per_pooled_element
        assert w.issue_s == pytest.approx((commands * core.cycles_per_command + bags * per_bag) / CHIP.hz)


@pytest.mark.parametrize(
    ("batch", "pooling", "rows_per_pe"),
    [(64, 1, 1), (256, 1, 4), (64 * 40, 1, 32), (256, 20, 32), (64, 5, 5), (256, 50, 32)],
)
def test_row_buffer_holds_one_accumulate_group(batch, pooling, rows_per_pe):
    prep = prepare_tbe(batch, pooling, 100, 64, jobs=1, in_flight=1)
    row_bytes = 64 + 4
    for prog in prep.program.jobs[0].pes.values():
        cb = next(c for c in prog.cbs if c.cb == CB_ROWS)
        assert cb.size_bytes == -(-rows_per_pe * row_bytes // 64) * 64


@given(
    st.integers(1, 96),
    st.integers(1, 24),
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 8),
)
@settings(max_examples=12, deadline=None)
def test_launches_in_flight_report_per_batch(batch, pooling, tables, in_flight, jobs):
    res = bench_tbe(batch, pooling, 1000, 32, tables=tables, jobs=jobs, in_flight=in_flight)
    per_job = min(in_flight, jobs)
    assert res["batches_per_job"] == per_job
    assert res["jobs"] == (max(jobs // per_job, 2) if jobs > 1 else 1)
    assert res["lookups"] == batch * pooling * tables
    assert res["counters"]["gathered_rows"] == pytest.approx(res["lookups"])
    assert res["gbps"] == pytest.approx(res["lookups"] * (32 + 4) / res["seconds"] / 1e9)


def test_launches_in_flight_hide_the_per_launch_cost():
    """One bag per PE: a batch per job pays the launch and the bag's whole chain; in flight, the PEs' next bags
    follow at the pooling core's pace."""
    alone = bench_tbe(64, 1, 100, 64, in_flight=1)["seconds"]
    queued = bench_tbe(64, 1, 100, 64, in_flight=4)["seconds"]
    assert queued < 0.8 * alone


def test_short_bags_hide_the_lpddr5_latency():
    """Pooling 1 over a table that misses the SRAM cache goes about as fast as from SRAM (the published
    pooling-1 rates do not depend on the table size); pooling 20 (bags that fill the row buffer) does not."""
    for pooling, most in ((1, 1.15), (20, None)):
        hot = bench_tbe(256, pooling, 100, 256)["seconds"]
        cold = bench_tbe(256, pooling, 1_000_000, 256)["seconds"]
        if most is None:
            assert cold > 1.5 * hot
        else:
            assert cold < most * hot


def test_functional_pooling_with_launches_in_flight():
    res = bench_tbe(8, 3, 50, 16, mode="functional", jobs=4, in_flight=2, weighted=True)
    assert res["check"]["passed"] is True
    assert res["batches_per_job"] == 2


def test_in_flight_on_the_command_line(capsys):
    from mtiasim.cli import main

    argv = ["bench", "tbe", "--batch", "16", "--pooling", "2", "--rows", "100", "--dim", "16", "--json"]
    assert main([*argv, "--in-flight", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["batches_per_job"], res["jobs"]) == (2, 4)
    assert main([*argv, "--in-flight", "0"]) == 2
    assert capsys.readouterr().err.strip() == "mtiasim: error: --in-flight: must be positive, got 0"


def test_row_buffer_shrinks_to_what_the_local_store_holds():
    """fp32 rows of dim 1024 (4 KiB): 32 of them and the pooled-row buffer would overflow the 128 KiB."""
    p = MemoryPlan(CHIP.sram.bytes, CHIP.dram.bytes)
    dim, batch = 1024, 64 * 40
    tab = p.add("tables", (100, dim), DType.FP32, Level.SRAM)
    ind = p.add("indices", (batch,), DType.INT32, Level.SRAM)
    out = p.add("out", (batch, dim), DType.FP32, Level.SRAM)
    offsets = np.arange(batch + 1)
    job = tbe_job(CHIP, "tbe", tab, ind, out, offsets=offsets, table_rows=[100], batch=batch, dim=dim,
                  row_format=RowFormat.FP32)  # fmt: skip
    out_bytes = 2 * dim * 4
    for prog in job.pes.values():
        cb = next(c for c in prog.cbs if c.cb == CB_ROWS)
        assert cb.size_bytes == (CHIP.local_memory.bytes - out_bytes) // (dim * 4) * dim * 4
        assert sum(c.size_bytes for c in prog.cbs) <= CHIP.local_memory.bytes
