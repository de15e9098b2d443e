"""MLPerf DLRM-v2 (DCNv2): torchrec's `DLRM_DCN` with the MLPerf Inference configuration and multi-hot bags.

torchrec is imported when the workload is built, not when the package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mtiasim.workloads.inputs import (
    MULTI_HOT_RULES,
    Bags,
    dense_features,
    mlperf_multi_hot_bags,
    torch_generator,
)
from mtiasim.workloads.registry import BuildRequest, Workload, register
from mtiasim.workloads.tables import check_materialize, init_dense_, linear_flops, table_collection

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

# workloads.md §1.1 (mlcommons/inference recommendation/dlrm_v2, facebookresearch/dlrm torchrec_dlrm/README.MD)
MLPERF_V2_ROWS = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)  # fmt: skip
MLPERF_V2_MULTI_HOT = (
    3,
    2,
    1,
    2,
    6,
    1,
    1,
    1,
    1,
    7,
    3,
    8,
    1,
    6,
    9,
    5,
    1,
    1,
    1,
    12,
    100,
    27,
    10,
    3,
    1,
    1,
)  # sum 214
EMBEDDING_DIM = 128
DENSE_IN_FEATURES = 13
DENSE_ARCH_LAYER_SIZES = (512, 256, 128)
OVER_ARCH_LAYER_SIZES = (1024, 1024, 512, 256, 1)
DCN_NUM_LAYERS = 3
DCN_LOW_RANK_DIM = 512

DESCRIPTION = (
    "MLPerf DLRM-v2 (torchrec DLRM_DCN): D=128, dense 13-512-256-128, LowRankCrossNet x3 rank 512 on 3456-d, "
    "over 3456-1024-1024-512-256-1, 26 tables with fixed multi-hot bags (214 lookups/sample)"
)


def feature_names(tables: int = len(MLPERF_V2_ROWS)) -> list[str]:
    return [f"cat_{i}" for i in range(tables)]


class DLRMv2(nn.Module):
    """torchrec `DLRM_DCN` followed by the sigmoid of its logit (the click probability [B, 1]).

    forward(dense_features [B, 13] float32, sparse_features: KeyedJaggedTensor with keys cat_0..cat_25).
    """

    def __init__(self, dlrm: nn.Module) -> None:
        super().__init__()
        self.dlrm = dlrm

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        return torch.sigmoid(self.dlrm(dense_features=dense_features, sparse_features=sparse_features))


@register("dlrm-v2-mlperf", description=DESCRIPTION, multi_hot=MULTI_HOT_RULES)
def dlrm_v2_mlperf(req: BuildRequest) -> Workload:
    from torchrec import KeyedJaggedTensor
    from torchrec.models.dlrm import DLRM_DCN

    rows = req.cap(MLPERF_V2_ROWS)
    dims = (EMBEDDING_DIM,) * len(rows)
    if req.materialize:
        check_materialize(req.name, rows, dims)
    keys = feature_names(len(rows))
    ebc = table_collection(keys, rows, EMBEDDING_DIM, seed=req.seed, materialize=req.materialize)
    with torch.device("meta"):
        dlrm = DLRM_DCN(
            embedding_bag_collection=ebc,
            dense_in_features=DENSE_IN_FEATURES,
            dense_arch_layer_sizes=list(DENSE_ARCH_LAYER_SIZES),
            over_arch_layer_sizes=list(OVER_ARCH_LAYER_SIZES),
            dcn_num_layers=DCN_NUM_LAYERS,
            dcn_low_rank_dim=DCN_LOW_RANK_DIM,
        )
    init_dense_(dlrm, torch_generator(req.seed, "dense-weights"), materialize=req.dense_weights)
    model = DLRMv2(dlrm).eval()

    assert req.multi_hot is not None
    multi_hot = req.multi_hot

    def draw(seed: int) -> tuple[Bags, tuple]:
        bags = mlperf_multi_hot_bags(rows, MLPERF_V2_MULTI_HOT, req.batch, req.indices, multi_hot, seed)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=torch.from_numpy(bags.values), lengths=torch.from_numpy(bags.lengths)
        )
        return bags, (dense_features(req.batch, DENSE_IN_FEATURES, seed), kjt)

    bags, inputs = draw(req.seed)

    cross_in = (len(rows) + 1) * EMBEDDING_DIM
    flops = (
        linear_flops(model) + DCN_NUM_LAYERS * 2 * 2 * cross_in * DCN_LOW_RANK_DIM
    )  # MLPs + DCN (V then W)
    dense_params = sum(p.numel() for name, p in model.named_parameters() if "embedding_bags" not in name)
    return Workload(
        name=req.name,
        model=model,
        example_inputs=inputs,
        batch=req.batch,
        description=DESCRIPTION,
        table_rows=rows,
        embedding_dims=dims,
        pooling=bags.mean_pooling(),
        flops_per_sample=flops,
        full_table_rows=MLPERF_V2_ROWS,
        dense_params=dense_params,
        seed=req.seed,
        materialized=req.materialize,
        index_distribution=req.distribution_label,
        multi_hot=req.multi_hot,
        extra={"bags": "mlperf multi-hot (fixed sizes)", "multi_hot_sizes": list(MLPERF_V2_MULTI_HOT)},
        draw_inputs=lambda seed: draw(seed)[1],
    )
