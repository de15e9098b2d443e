"""The workload zoo: exact published shapes, seeded inputs, virtual tables, and that every model exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from mtiasim import workloads as W
from mtiasim.errors import UsageError
from mtiasim.workloads.dlrm import KAGGLE_ROWS, TERABYTE_10M_ROWS
from mtiasim.workloads.dlrm_v2 import MLPERF_V2_MULTI_HOT, MLPERF_V2_ROWS

# importing torchrec imports fbgemm_gpu, which warns about its own optional modules
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:fbgemm_gpu")

ALL = ["dlrm-kaggle", "dlrm-random-bench", "dlrm-terabyte-10M", "dlrm-v2-mlperf"]

# (in, out) of every Linear, in order, and (rows, dim) per table: the published configurations
EXPECTED_DOT = {
    "dlrm-kaggle": {
        "bottom": [(13, 512), (512, 256), (256, 64), (64, 16)],
        "top": [(367, 512), (512, 256), (256, 1)],
        "rows": KAGGLE_ROWS,
        "dim": 16,
    },
    "dlrm-terabyte-10M": {
        "bottom": [(13, 512), (512, 256), (256, 64)],
        "top": [(415, 512), (512, 512), (512, 256), (256, 1)],
        "rows": TERABYTE_10M_ROWS,
        "dim": 64,
    },
    "dlrm-random-bench": {
        "bottom": [(512, 512), (512, 64)],
        "top": [(100, 1024), (1024, 1024), (1024, 1024), (1024, 1)],
        "rows": (1_000_000,) * 8,
        "dim": 64,
    },
}
PUBLISHED_MFLOP = {
    "dlrm-kaggle": 0.97,
    "dlrm-terabyte-10M": 1.61,
    "dlrm-random-bench": 5.0,
    "dlrm-v2-mlperf": 32.06,
}


def linears(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def table_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.EmbeddingBag)]


def per_table_ids(w: W.Workload) -> list[np.ndarray]:
    if w.name == "dlrm-v2-mlperf":
        kjt = w.example_inputs[1]
        keys = kjt.keys()
        return [kjt[k].values().numpy() for k in keys]
    return [i.numpy() for i in w.example_inputs[1]]


@pytest.fixture(scope="module")
def virtual() -> dict[str, W.Workload]:
    return {n: W.build(n, batch=4) for n in ALL}


@pytest.fixture(scope="module")
def small() -> dict[str, W.Workload]:
    return {n: W.build(n, batch=8, max_rows=1000, materialize=True) for n in ALL}


def test_names():
    meta = ["meta-hc", "meta-lc1", "meta-lc2", "meta-mc1", "meta-mc2"]  # tests/test_meta_workloads.py
    assert W.names() == sorted(ALL + meta)


@pytest.mark.parametrize("name", list(EXPECTED_DOT))
def test_dot_dlrm_layer_sizes(virtual, name):
    w, exp = virtual[name], EXPECTED_DOT[name]
    assert linears(w.model.bot_l) == exp["bottom"]
    assert linears(w.model.top_l) == exp["top"]
    assert all(isinstance(m, nn.ReLU) for m in w.model.bot_l[1::2])
    assert all(isinstance(m, nn.ReLU) for m in w.model.top_l[1:-1:2]) and isinstance(
        w.model.top_l[-1], nn.Sigmoid
    )
    assert [tuple(t.shape) for t in table_weights(w.model)] == [(r, exp["dim"]) for r in exp["rows"]]
    assert all(m.mode == "sum" for m in w.model.emb_l)
    assert w.table_rows == exp["rows"] and w.embedding_dims == (exp["dim"],) * len(exp["rows"])
    n = len(exp["rows"]) + 1
    li, lj = torch.tril_indices(n, n, offset=-1)
    assert torch.equal(w.model.li, li) and torch.equal(w.model.lj, lj)


def test_dlrm_v2_layer_sizes(virtual):
    w = virtual["dlrm-v2-mlperf"]
    dlrm = w.model.dlrm
    assert linears(dlrm.dense_arch) == [(13, 512), (512, 256), (256, 128)]
    assert linears(dlrm.over_arch) == [(3456, 1024), (1024, 1024), (1024, 512), (512, 256), (256, 1)]
    cross = dlrm.inter_arch.crossnet
    assert [tuple(p.shape) for p in cross.W_kernels] == [(3456, 512)] * 3
    assert [tuple(p.shape) for p in cross.V_kernels] == [(512, 3456)] * 3
    configs = dlrm.sparse_arch.embedding_bag_collection.embedding_bag_configs()
    assert [(c.name, c.num_embeddings, c.embedding_dim, c.feature_names) for c in configs] == [
        (f"t_cat_{i}", r, 128, [f"cat_{i}"]) for i, r in enumerate(MLPERF_V2_ROWS)
    ]
    assert [tuple(t.shape) for t in table_weights(w.model)] == [(r, 128) for r in MLPERF_V2_ROWS]
    assert sum(MLPERF_V2_MULTI_HOT) == 214


@pytest.mark.parametrize("name", ALL)
def test_flops_and_params_match_published(virtual, small, name):
    w = virtual[name]
    assert w.flops_per_sample / 1e6 == pytest.approx(PUBLISHED_MFLOP[name], abs=0.006)
    from torch.utils.flop_counter import FlopCounterMode

    s = small[name]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        s.model(*s.example_inputs)
    assert counter.get_total_flops() == s.flops_per_sample * s.batch
    json.dumps(w.info())


def test_lookups_per_sample(virtual):
    assert virtual["dlrm-kaggle"].pooling == (1.0,) * 26
    assert virtual["dlrm-terabyte-10M"].lookups_per_sample == 26
    v2 = virtual["dlrm-v2-mlperf"]
    assert v2.pooling == tuple(float(s) for s in MLPERF_V2_MULTI_HOT) and v2.lookups_per_sample == 214
    kjt = v2.example_inputs[1]
    assert kjt.keys() == [f"cat_{i}" for i in range(26)]
    assert kjt.lengths().tolist() == [s for s in MLPERF_V2_MULTI_HOT for _ in range(4)]
    assert kjt.values().dtype == torch.int64 and kjt.values().numel() == 214 * 4


def test_random_bench_bags():
    w = W.build("dlrm-random-bench", batch=512)
    for ids, offs in zip(*w.example_inputs[1:], strict=True):
        lengths = np.diff(np.append(offs.numpy(), ids.numel()))
        assert lengths.min() >= 1 and lengths.max() <= 100
        for bag in np.split(ids.numpy(), offs.numpy()[1:]):
            assert np.all(np.diff(bag) > 0)  # deduplicated and sorted, as np.unique
    assert all(45 < p < 56 for p in w.pooling)
    capped = W.build("dlrm-random-bench", batch=64, max_rows=20)
    assert all(p <= 20 for p in capped.pooling)  # a bag can hold at most 20 distinct rows


@pytest.mark.parametrize("name", ALL)
def test_determinism(small, name):
    a, b = small[name], W.build(name, batch=8, max_rows=1000, materialize=True)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.example_inputs[0], b.example_inputs[0])
    assert all(np.array_equal(x, y) for x, y in zip(per_table_ids(a), per_table_ids(b), strict=True))
    c = W.build(name, batch=8, max_rows=1000, materialize=True, seed=1)
    assert not torch.equal(a.example_inputs[0], c.example_inputs[0])
    assert not torch.equal(table_weights(a.model)[0], table_weights(c.model)[0])


def flat_inputs(inputs: tuple) -> list[torch.Tensor]:
    """Every tensor of a workload's inputs, a KeyedJaggedTensor's values and lengths included."""
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, list):
            out += x
        else:
            out += [x.values(), x.lengths()]
    return out


@pytest.mark.parametrize("name", [*ALL, "meta-lc1"])
@pytest.mark.parametrize("distribution", ["uniform", "zipf"])
def test_inputs_of_another_seed_are_that_builds(name, distribution):
    """`Workload.inputs(seed)`: the example inputs of a build with that seed, bit for bit, the model untouched."""
    w = W.build(name, batch=16, max_rows=500, distribution=distribution)
    for seed in (0, 3):
        other = W.build(name, batch=16, max_rows=500, distribution=distribution, seed=seed)
        got, want = flat_inputs(w.inputs(seed)), flat_inputs(other.example_inputs)
        assert len(got) == len(want) and all(torch.equal(g, x) for g, x in zip(got, want, strict=True))
    with pytest.raises(UsageError, match=r"^seed must be a non-negative integer, got -1$"):
        w.inputs(-1)


@pytest.mark.parametrize("name", ALL)
def test_virtual_tables_hold_no_memory(virtual, name):
    w = virtual[name]
    weights = table_weights(w.model)
    assert all(W.is_virtual(t) for t in weights)
    assert all(t.untyped_storage().nbytes() <= 4 * t.shape[1] for t in weights)
    assert all(not p.is_meta for p in w.model.parameters()) and all(not b.is_meta for b in w.model.buffers())


@pytest.mark.parametrize("name", W.names())
def test_shape_only_build_reads_as_the_full_one(name):
    # what `run.limits.estimate_host_bytes` reads of a build without dense weights is what the model has
    full, shape = W.build(name, batch=5, seed=3), W.build(name, batch=5, seed=3, dense_weights=False)
    for field in ("tables", "lookups_per_sample", "embedding_dims", "pooling", "flops_per_sample",
                  "table_bytes_fp32", "dense_params", "table_rows"):  # fmt: skip
        assert getattr(shape, field) == getattr(full, field), field
    assert shape.example_inputs[0].equal(full.example_inputs[0])
    assert linears(shape.model) == linears(full.model)
    dense = [p for n, p in shape.model.named_parameters() if p.dim() == 2 and not W.is_virtual(p)]
    assert dense and all(p.is_meta and not p.requires_grad for p in dense)


def test_a_timing_run_of_the_shape_only_model_is_the_run_of_the_full_one():
    # `mtiasim run` in timing mode compiles the model of shapes only: the report must be the one of the model
    # with its dense weights (timing reads no weight values)
    import mtiasim

    shape = W.build("dlrm-v2-mlperf", batch=48, seed=2, max_rows=3000, dense_weights=False)
    full = W.build("dlrm-v2-mlperf", batch=48, seed=2, max_rows=3000)
    assert W.shape_only(shape.model) and not W.shape_only(full.model)
    reports = []
    for w in (shape, full):
        cm = mtiasim.compile(w.model, w.example_inputs, mode="timing", precision="int8")
        cm(*w.inputs(5))
        reports.append(json.dumps(cm.report.to_json(), sort_keys=True, default=str))
    assert reports[0] == reports[1]


def test_a_model_whose_buffers_carry_data_is_not_shape_only():
    # DLRM's interaction indices are buffers with data: its timing run builds the dense weights
    w = W.build("dlrm-kaggle", batch=4, dense_weights=False)
    assert all(p.is_meta for p in w.model.parameters()) and not W.shape_only(w.model)


@pytest.mark.parametrize("name", ALL)
def test_max_rows_caps_tables_and_indices(small, name):
    w = small[name]
    assert w.table_rows == tuple(min(r, 1000) for r in w.full_table_rows)
    assert [t.shape[0] for t in table_weights(w.model)] == list(w.table_rows)
    for ids, rows in zip(per_table_ids(w), w.table_rows, strict=True):
        assert ids.min() >= 0 and ids.max() < rows


def test_zipf_and_pareto_indices_in_range():
    w = W.build("dlrm-v2-mlperf", batch=64, max_rows=5000, distribution="zipf", alpha=1.2, multi_hot="pareto")
    assert w.multi_hot == "pareto" and w.index_distribution == "zipf(alpha=1.2)"
    for ids, rows in zip(per_table_ids(w), w.table_rows, strict=True):
        assert ids.min() >= 0 and ids.max() < rows
    k = W.build("dlrm-kaggle", batch=256, distribution="zipf")
    for ids, rows in zip(per_table_ids(k), k.table_rows, strict=True):
        assert ids.min() >= 0 and ids.max() < rows


@pytest.mark.parametrize("rule", W.MULTI_HOT_RULES)
def test_multi_hot_bags_are_a_function_of_the_id(rule):
    from mtiasim.indices import IndexDistribution

    bags = W.mlperf_multi_hot_bags((10, 50), (5, 1), 200, IndexDistribution(), rule, seed=3)
    first = bags.table_values(0).reshape(200, 5)
    assert np.array_equal(bags.lengths, np.repeat([5, 1], 200))
    for base in np.unique(first[:, 0]):
        rows = first[first[:, 0] == base]
        assert (rows == rows[0]).all()  # the same one-hot id always expands to the same bag


def test_materialize_refusal():
    with pytest.raises(UsageError) as e:
        W.build("dlrm-terabyte-10M", batch=1, materialize=True)
    msg = str(e.value)
    assert "dlrm-terabyte-10M" in msg and f"{4 * sum(TERABYTE_10M_ROWS) * 64:,} bytes" in msg
    assert "--max-rows" in msg and "\n" not in msg
    with pytest.raises(UsageError, match="dlrm-v2-mlperf.*GiB"):
        W.build("dlrm-v2-mlperf", batch=1, materialize=True)


@pytest.mark.parametrize("name", ALL)
def test_eager_forward_small(small, name):
    w = small[name]
    assert not w.model.training
    with torch.no_grad():
        y = w.model(*w.example_inputs)
    assert y.shape == (8, 1) and y.dtype == torch.float32
    assert bool(((y > 0) & (y < 1)).all())


@pytest.mark.parametrize("name", ALL)
def test_export_virtual(virtual, name):
    w = virtual[name]
    ep = torch.export.export(w.model, w.example_inputs, strict=False)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("aten.embedding_bag.padding_idx") == w.tables
    dcn = 2 * 3 if name == "dlrm-v2-mlperf" else 0  # LowRankCrossNet calls F.linear twice per layer
    assert targets.count("aten.linear.default") == len(linears(w.model)) + dcn


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
def test_int8_tables_export_to_fbgemm_tbe():
    w = W.build("dlrm-v2-mlperf", batch=4, max_rows=1000, materialize=True)
    q = W.quantize_tables_int8(w)
    assert q.table_dtype == "int8" and w.table_dtype == "fp32" and q.model is not w.model
    with torch.no_grad():
        assert torch.allclose(q.model(*q.example_inputs), w.model(*w.example_inputs), atol=1e-3)
    ep = torch.export.export(q.model, q.example_inputs, strict=False)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("fbgemm.int_nbit_split_embedding_codegen_lookup_function.default") == 1
    assert "aten.embedding_bag.padding_idx" not in targets


def test_int8_refusals(virtual, small):
    with pytest.raises(UsageError, match="materialize"):
        W.quantize_tables_int8(virtual["dlrm-v2-mlperf"])
    with pytest.raises(UsageError, match="dlrm-kaggle.*nn.EmbeddingBag"):
        W.quantize_tables_int8(small["dlrm-kaggle"])
    with pytest.raises(UsageError, match="materialize=True"):
        W.build("dlrm-v2-mlperf", batch=2, tables="int8")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "dlrm-nope", "batch": 1}, r"unknown workload 'dlrm-nope' \(known: dlrm-kaggle, "),
        ({"name": "dlrm-kaggle", "batch": 0}, "batch must be a positive integer"),
        ({"name": "dlrm-kaggle", "batch": -3}, "batch must be a positive integer"),
        ({"name": "dlrm-kaggle", "batch": 2.5}, "batch must be a positive integer"),
        ({"name": "dlrm-kaggle", "batch": True}, "batch must be a positive integer"),
        ({"name": "dlrm-kaggle", "batch": 1, "seed": -1}, "seed must be"),
        ({"name": "dlrm-kaggle", "batch": 1, "max_rows": 0}, "max_rows must be"),
        ({"name": "dlrm-kaggle", "batch": 1, "distribution": "normal"}, r"known: uniform, zipf"),
        ({"name": "dlrm-kaggle", "batch": 1, "distribution": "zipf", "alpha": 0}, "alpha"),
        ({"name": "dlrm-kaggle", "batch": 1, "multi_hot": "uniform"}, "applies to: dlrm-v2-mlperf"),
        ({"name": "dlrm-v2-mlperf", "batch": 1, "multi_hot": "zipf"}, r"known: uniform, pareto"),
        ({"name": "dlrm-kaggle", "batch": 1, "tables": "fp16"}, r"known: fp32, int8"),
    ],
)
def test_usage_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(UsageError, match=match) as e:
        W.build(name, **kwargs)
    assert "\n" not in str(e.value)


def test_mlperf_query_sizes():
    q = W.mlperf_query_sizes(20_000, seed=7)
    assert q.dtype == np.int64 and set(np.unique(q)) == {100, 200, 300, 400, 500, 600, 700}
    assert q.mean() == pytest.approx(270, rel=0.02)
    assert np.array_equal(q, W.mlperf_query_sizes(20_000, seed=7))
    assert not np.array_equal(q, W.mlperf_query_sizes(20_000, seed=8))
    assert np.mean(W.MLPERF_QUERY_SIZE_QUANTILES) == 270
    with pytest.raises(UsageError):
        W.mlperf_query_sizes(-1)
