"""The production-like meta-* workloads: published size and complexity met, the stated generator, a model that
runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtiasim import workloads
from mtiasim.workloads.meta import EMBEDDING_DIM, META_MODELS

# reference/mtia.md §5.4 (ISCA23 Table IV): size GB, complexity MFLOPS per sample
PUBLISHED = {
    "meta-lc1": (53.2, 32),
    "meta-lc2": (4.5, 14),
    "meta-mc1": (120, 140),
    "meta-mc2": (200, 220),
    "meta-hc": (725, 450),
}


def test_every_published_model_is_registered():
    assert {m.name for m in META_MODELS} == set(PUBLISHED)
    assert set(PUBLISHED) <= set(workloads.names())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_size_and_complexity_match_the_publication(name):
    size_gb, mflops = PUBLISHED[name]
    w = workloads.build(name, batch=4)
    assert w.table_bytes_int8 == pytest.approx(size_gb * 1e9, rel=0.01)
    assert w.flops_per_sample / 1e6 == pytest.approx(mflops, rel=0.05)
    # the stated generator: D=128 everywhere, fixed bags with a mean near dlrm_datasets' 15.8
    assert set(w.embedding_dims) == {EMBEDDING_DIM}
    assert list(w.pooling) == [float(p) for p in w.extra["multi_hot_sizes"]]
    assert 12 <= np.mean(w.pooling) <= 20
    assert w.info()["published_size_gb"] == size_gb
    # the model's tables are fixed (seeded by the model, not the input seed)
    assert workloads.build(name, batch=2, seed=7).table_rows == w.table_rows


def test_a_capped_meta_model_runs_eagerly():
    w = workloads.build("meta-lc2", batch=3, max_rows=50, materialize=True)
    assert max(w.table_rows) == 50 and w.full_table_rows != w.table_rows
    out = w.model(*w.example_inputs)
    assert out.shape == (3, 1) and bool(torch.all((out > 0) & (out < 1)))
    kjt = w.example_inputs[1]
    assert int(kjt.lengths().sum()) == 3 * sum(w.extra["multi_hot_sizes"])


def test_a_model_over_the_chips_lpddr5_is_one_line_before_compiling():
    from mtiasim.errors import CapacityError
    from mtiasim.run.workload import run_workload

    need = workloads.build("meta-hc", batch=2).table_bytes_int8
    with pytest.raises(CapacityError) as e:
        run_workload("meta-hc", batch=2)
    assert str(e.value) == (
        f"meta-hc: its tables need {need:,} B ({need / 1e9:.1f} GB) even as int8 rows, over the chip's LPDDR5 "
        "(68,719,476,736 B, 68.7 GB): cap them with --max-rows or shard them across cards (mtiasim shard meta-hc)"
    )
