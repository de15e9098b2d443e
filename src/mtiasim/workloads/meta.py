"""Production-like DLRMs generated from the published size and complexity of Meta's five ISCA'23 models.

ISCA23 §6.2 / Table IV publish, for LC1, LC2, MC1, MC2 and HC, only a size (GB) and a complexity (MFLOPS per
sample) (reference/mtia.md §5.4). Everything else is generated, from these stated assumptions:

- Size: the embedding tables as served, in FBGEMM's int8 row format (D bytes plus an fp16 scale and bias per
  row), in decimal GB (1e9 B). The dense layers (at most ~0.9 GB fp32 for HC) are not part of it.
- Tables: LC* 256 tables (assumed: fewer than the medium model), MC* 550 (ISCA23 Table III: a medium-complexity
  model has ~550 EmbeddingBag layers), HC 856 (facebookresearch/dlrm_datasets 2021, the largest published
  count). All D = 128 (assumed; MLPerf DLRM-v2's dimension). Row counts follow a log-normal size distribution
  (sigma = `ROWS_SIGMA`, seeded per model), at least `MIN_ROWS`, scaled so the int8 table bytes sum to the size.
- Pooling: a fixed bag size per table (every sample looks up that many rows), log-normal with median
  `POOLING_MEDIAN` and sigma `POOLING_SIGMA`, at least 1, seeded per model: mean about 15.8, the mean pooling of
  the dlrm_datasets 2021 traces (887M indices / 65,536 samples / 856 tables). Ids are uniform (or Zipf) with the
  multi-hot expansion of MLPerf DLRM-v2 (`mlperf_multi_hot_bags`, uniform extras).
- Dense: `DENSE_FEATURES` = 512 dense features (assumed) into a bottom MLP 512-512-256-128; DLRM's "cat"
  interaction (the bottom output and every pooled embedding concatenated, (T+1) x 128 wide); a top MLP
  (T+1)*128 - W - W/2 - 1 with a sigmoid, W (a multiple of 4) chosen so the MLPs' FLOPs (2 x MACs per sample)
  are nearest the published complexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from mtiasim.workloads.dlrm import mlp
from mtiasim.workloads.inputs import (
    Bags,
    dense_features,
    mlperf_multi_hot_bags,
    numpy_rng,
    torch_generator,
)
from mtiasim.workloads.registry import BuildRequest, Workload, register
from mtiasim.workloads.tables import check_materialize, init_dense_, linear_flops, table_collection

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

EMBEDDING_DIM = 128
INT8_ROW_OVERHEAD_BYTES = 4  # FBGEMM int8 rows: fp16 scale and bias
DENSE_FEATURES = 512
BOTTOM_MLP = (DENSE_FEATURES, 512, 256, EMBEDDING_DIM)
ROWS_SIGMA = 1.5
MIN_ROWS = 100
POOLING_MEDIAN = 10.0
POOLING_SIGMA = 0.95
TOP_WIDTH_STEP = 4
GB = 10**9


@dataclass(frozen=True)
class MetaModel:
    """One published model: its name, size (GB of int8 tables), complexity (MFLOPS per sample), and the
    assumed table count."""

    name: str
    size_gb: float
    mflops_per_sample: float
    tables: int

    @property
    def table_bytes(self) -> int:
        return round(self.size_gb * GB)

    def rows(self) -> tuple[int, ...]:
        """Seeded log-normal row counts whose int8 bytes sum to the published size (each at least MIN_ROWS)."""
        rng = numpy_rng(0, f"{self.name}-rows")
        weights = rng.lognormal(0.0, ROWS_SIGMA, self.tables)
        total_rows = self.table_bytes / (EMBEDDING_DIM + INT8_ROW_OVERHEAD_BYTES)
        rows = np.maximum(MIN_ROWS, np.floor(weights / weights.sum() * total_rows)).astype(np.int64)
        return tuple(int(r) for r in rows)

    def pooling(self) -> tuple[int, ...]:
        rng = numpy_rng(0, f"{self.name}-pooling")
        draws = rng.lognormal(math.log(POOLING_MEDIAN), POOLING_SIGMA, self.tables)
        return tuple(max(1, round(float(p))) for p in draws)

    @property
    def interaction_width(self) -> int:
        return (self.tables + 1) * EMBEDDING_DIM

    def top_mlp(self) -> tuple[int, ...]:
        """Top MLP widths (interaction width first), W solving 2*(in*W + W*W/2 + W/2) + bottom = complexity."""
        target = self.mflops_per_sample * 1e6 / 2 - _macs(BOTTOM_MLP)
        n = self.interaction_width
        # W^2/2 + (n + 1/2) W - target = 0
        w = -(n + 0.5) + math.sqrt((n + 0.5) ** 2 + 2 * target)
        width = max(TOP_WIDTH_STEP, TOP_WIDTH_STEP * round(w / TOP_WIDTH_STEP))
        return (n, width, width // 2, 1)

    def flops_per_sample(self) -> int:
        return 2 * (_macs(BOTTOM_MLP) + _macs(self.top_mlp()))

    def description(self) -> str:
        top = self.top_mlp()
        return (
            f"production-like {self.name[5:].upper()} (ISCA23 Table IV: {self.size_gb:g} GB, "
            f"{self.mflops_per_sample:g} MFLOPS/sample), generated: {self.tables} int8 tables D={EMBEDDING_DIM} "
            f"log-normal rows, fixed pooling mean {np.mean(self.pooling()):.1f}, bottom "
            f"{'-'.join(map(str, BOTTOM_MLP))}, cat interaction, top {'-'.join(map(str, top))}"
        )


def _macs(widths: tuple[int, ...]) -> int:
    return sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


META_MODELS = (
    MetaModel("meta-lc1", 53.2, 32, 256),
    MetaModel("meta-lc2", 4.5, 14, 256),
    MetaModel("meta-mc1", 120, 140, 550),
    MetaModel("meta-mc2", 200, 220, 550),
    MetaModel("meta-hc", 725, 450, 856),
)


class CatDLRM(nn.Module):
    """DLRM with "cat" interaction: bottom MLP on the dense features, one pooled vector per table (torchrec
    EmbeddingBagCollection), all concatenated into the top MLP (sigmoid last), giving [B, 1].

    forward(dense_features [B, F] float32, sparse_features: KeyedJaggedTensor with keys f_0..f_{T-1}).
    """

    def __init__(self, bottom: nn.Sequential, ebc: nn.Module, top: nn.Sequential) -> None:
        super().__init__()
        self.bottom = bottom
        self.ebc = ebc
        self.top = top

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        x = self.bottom(dense_features)
        pooled = self.ebc(sparse_features).values()
        return self.top(torch.cat([x, pooled], dim=1))

    def dense_part(self) -> nn.Module:
        """The model without its tables: forward(dense_features [B, F], pooled [B, T*D]) (every table's pooled
        vector, table order), the program that runs where the pooled embeddings of a sharded model meet."""
        return CatDense(self.bottom, self.top)


class CatDense(nn.Module):
    """CatDLRM's dense layers on pooled embeddings given as an input."""

    def __init__(self, bottom: nn.Sequential, top: nn.Sequential) -> None:
        super().__init__()
        self.bottom = bottom
        self.top = top

    def forward(self, dense_features: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.top(torch.cat([self.bottom(dense_features), pooled], dim=1))


def build_meta(model: MetaModel, req: BuildRequest) -> Workload:
    from torchrec import KeyedJaggedTensor

    full_rows = model.rows()
    rows = req.cap(full_rows)
    dims = (EMBEDDING_DIM,) * len(rows)
    if req.materialize:
        check_materialize(req.name, rows, dims)
    keys = [f"f_{t}" for t in range(len(rows))]
    ebc = table_collection(keys, rows, EMBEDDING_DIM, seed=req.seed, materialize=req.materialize)
    with torch.device("meta"):
        bottom = mlp(BOTTOM_MLP, sigmoid_last=False)
        top = mlp(model.top_mlp(), sigmoid_last=True)
    dense_gen = torch_generator(req.seed, "dense-weights")
    init_dense_(bottom, dense_gen, materialize=req.dense_weights)
    init_dense_(top, dense_gen, materialize=req.dense_weights)
    net = CatDLRM(bottom, ebc, top).eval()

    sizes = model.pooling()

    def draw(seed: int) -> tuple[Bags, tuple]:
        bags = mlperf_multi_hot_bags(rows, sizes, req.batch, req.indices, "uniform", seed)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=torch.from_numpy(bags.values), lengths=torch.from_numpy(bags.lengths)
        )
        return bags, (dense_features(req.batch, DENSE_FEATURES, seed), kjt)

    bags, inputs = draw(req.seed)
    flops = linear_flops(net)
    assert flops == model.flops_per_sample()
    return Workload(
        name=req.name,
        model=net,
        example_inputs=inputs,
        batch=req.batch,
        description=model.description(),
        table_rows=rows,
        embedding_dims=dims,
        pooling=bags.mean_pooling(),
        flops_per_sample=flops,
        full_table_rows=full_rows,
        dense_params=sum(p.numel() for m in (bottom, top) for p in m.parameters()),
        seed=req.seed,
        materialized=req.materialize,
        index_distribution=req.distribution_label,
        extra={
            "bags": "fixed per-table sizes (log-normal, seeded), uniform multi-hot extras",
            "multi_hot_sizes": list(sizes),
            "published_size_gb": model.size_gb,
            "published_mflops_per_sample": model.mflops_per_sample,
            "generator": "mtiasim.workloads.meta (assumptions in its docstring and the README)",
        },
        draw_inputs=lambda seed: draw(seed)[1],
    )


for _model in META_MODELS:
    register(_model.name, description=_model.description())(partial(build_meta, _model))
