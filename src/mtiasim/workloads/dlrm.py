"""DLRM with dot interaction (the facebookresearch/dlrm `DLRM_Net` structure), in plain PyTorch, and three
published configurations: Criteo Kaggle, Criteo Terabyte (rows capped at 10M) and the random benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtiasim.workloads.inputs import Bags, dense_features, one_hot_bags, random_bench_bags, torch_generator
from mtiasim.workloads.registry import BuildRequest, Workload, register
from mtiasim.workloads.tables import check_materialize, init_dense_, linear_flops, table_weight

# Row counts per table (workloads.md §1.1; mlcommons/inference retired DLRM main.py)
KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
TERABYTE_10M_ROWS = (
    9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829, 10,
    2208, 11156, 122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101, 36,
)  # fmt: skip
RANDOM_BENCH_ROWS = (1_000_000,) * 8


class DLRMNet(nn.Module):
    """DLRM with dot interaction.

    The bottom MLP maps the dense features to a D-vector; each table pools its bag (`nn.EmbeddingBag`, sum) to
    a D-vector; the interaction takes the dot products of all pairs of these vectors (`bmm` of the stacked
    vectors with their transpose, strictly lower triangle) and concatenates them after the dense vector; the
    top MLP (sigmoid at the end) gives the click probability [B, 1].

    forward(dense_x [B, F] float32, indices: one int64 tensor per table, offsets: one int64 tensor of B bag
    starts per table).
    """

    def __init__(self, bot_l: nn.Sequential, emb_l: list[nn.EmbeddingBag], top_l: nn.Sequential) -> None:
        super().__init__()
        self.bot_l = bot_l
        self.emb_l = nn.ModuleList(emb_l)
        self.top_l = top_l
        n = len(emb_l) + 1
        li, lj = torch.tril_indices(n, n, offset=-1, device="cpu")
        self.register_buffer("li", li)
        self.register_buffer("lj", lj)

    def forward(
        self, dense_x: torch.Tensor, indices: list[torch.Tensor], offsets: list[torch.Tensor]
    ) -> torch.Tensor:
        x = self.bot_l(dense_x)
        ly = [emb(idx, off) for emb, idx, off in zip(self.emb_l, indices, offsets, strict=True)]
        return dot_top(x, torch.cat(ly, dim=1), self.li, self.lj, self.top_l)

    def dense_part(self) -> nn.Module:
        """The model without its tables: forward(dense_x [B, F], pooled [B, T*D]) (every table's pooled vector,
        table order), the program that runs where the pooled embeddings of a sharded model meet."""
        return DotDense(self.bot_l, self.top_l, self.li, self.lj)


def dot_top(
    x: torch.Tensor, pooled: torch.Tensor, li: torch.Tensor, lj: torch.Tensor, top_l: nn.Module
) -> torch.Tensor:
    """The dot interaction of the bottom output `x` [B, D] with the pooled vectors [B, T*D], then the top MLP."""
    batch, d = x.shape
    T = torch.cat([x, pooled], dim=1).view(batch, -1, d)
    Z = torch.bmm(T, T.transpose(1, 2))
    Zflat = Z[:, li, lj]
    R = torch.cat([x, Zflat], dim=1)
    return top_l(R)


class DotDense(nn.Module):
    """DLRMNet's bottom MLP, interaction and top MLP on pooled embeddings given as an input."""

    def __init__(
        self, bot_l: nn.Sequential, top_l: nn.Sequential, li: torch.Tensor, lj: torch.Tensor
    ) -> None:
        super().__init__()
        self.bot_l = bot_l
        self.top_l = top_l
        self.register_buffer("li", li)
        self.register_buffer("lj", lj)

    def forward(self, dense_x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return dot_top(self.bot_l(dense_x), pooled, self.li, self.lj, self.top_l)


def mlp(widths: tuple[int, ...], *, sigmoid_last: bool) -> nn.Sequential:
    """Linear layers widths[0]->widths[1]->..., each followed by ReLU (the last by Sigmoid if asked)."""
    layers: list[nn.Module] = []
    for i, (n, m) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(n, m))
        last = i == len(widths) - 2
        layers.append(nn.Sigmoid() if (last and sigmoid_last) else nn.ReLU())
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class DotDLRMConfig:
    """A DLRM_Net configuration as given on dlrm_s_pytorch.py's command line: `bottom` is --arch-mlp-bot (its
    first entry the dense features, its last D), `top` is --arch-mlp-top (the interaction width is prepended)."""

    description: str
    rows: tuple[int, ...]
    dim: int
    bottom: tuple[int, ...]
    top: tuple[int, ...]
    bags: str = "one-hot"  # or "random": DLRM random bags, size uniform in [1, max_pooling], deduplicated
    max_pooling: int = 1

    @property
    def interaction_width(self) -> int:
        n = len(self.rows) + 1
        return self.dim + n * (n - 1) // 2


KAGGLE = DotDLRMConfig(
    description="DLRM (dot) on Criteo Kaggle: D=16, bottom 13-512-256-64-16, top 367-512-256-1, 26 one-hot tables",
    rows=KAGGLE_ROWS,
    dim=16,
    bottom=(13, 512, 256, 64, 16),
    top=(512, 256, 1),
)
TERABYTE_10M = DotDLRMConfig(
    description="DLRM (dot) on Criteo Terabyte, rows capped at 10M: D=64, bottom 13-512-256-64, "
    "top 415-512-512-256-1, 26 one-hot tables",
    rows=TERABYTE_10M_ROWS,
    dim=64,
    bottom=(13, 512, 256, 64),
    top=(512, 512, 256, 1),
)
RANDOM_BENCH = DotDLRMConfig(
    description="DLRM random benchmark (bench/dlrm_s_benchmark.sh): 8 tables x 1M rows, D=64, bottom 512-512-64, "
    "top 100-1024-1024-1024-1, bags uniform in [1, 100] then deduplicated",
    rows=RANDOM_BENCH_ROWS,
    dim=64,
    bottom=(512, 512, 64),
    top=(1024, 1024, 1024, 1),
    bags="random",
    max_pooling=100,
)


def build_dot_dlrm(cfg: DotDLRMConfig, req: BuildRequest) -> Workload:
    rows = req.cap(cfg.rows)
    dims = (cfg.dim,) * len(rows)
    if req.materialize:
        check_materialize(req.name, rows, dims)
    dense_gen = torch_generator(req.seed, "dense-weights")
    with torch.device("meta"):
        bot_l = mlp(cfg.bottom, sigmoid_last=False)
        top_l = mlp((cfg.interaction_width, *cfg.top), sigmoid_last=True)
    init_dense_(bot_l, dense_gen, materialize=req.dense_weights)
    init_dense_(top_l, dense_gen, materialize=req.dense_weights)
    emb_l = []
    for t, n in enumerate(rows):
        eb = nn.EmbeddingBag(n, cfg.dim, mode="sum", device="meta")
        gen = torch_generator(req.seed, "table", t) if req.materialize else None
        eb.weight = table_weight(n, cfg.dim, materialize=req.materialize, generator=gen)
        emb_l.append(eb)
    model = DLRMNet(bot_l, emb_l, top_l).eval()

    def draw(seed: int) -> tuple[Bags, tuple]:
        if cfg.bags == "random":
            bags: Bags = random_bench_bags(rows, req.batch, cfg.max_pooling, req.indices, seed)
        else:
            bags = one_hot_bags(rows, req.batch, req.indices, seed)
        per_table = bags.per_table()
        dense = dense_features(req.batch, cfg.bottom[0], seed)
        return bags, (dense, [i for i, _ in per_table], [o for _, o in per_table])

    bags, inputs = draw(req.seed)
    n = len(rows) + 1
    flops = linear_flops(model) + 2 * n * n * cfg.dim  # MLPs + the interaction bmm
    return Workload(
        name=req.name,
        model=model,
        example_inputs=inputs,
        batch=req.batch,
        description=cfg.description,
        table_rows=rows,
        embedding_dims=dims,
        pooling=bags.mean_pooling(),
        flops_per_sample=flops,
        full_table_rows=cfg.rows,
        dense_params=sum(p.numel() for m in (bot_l, top_l) for p in m.parameters()),
        seed=req.seed,
        materialized=req.materialize,
        index_distribution=req.distribution_label,
        extra={"bags": cfg.bags if cfg.bags == "one-hot" else f"random(1..{cfg.max_pooling}, deduplicated)"},
        draw_inputs=lambda seed: draw(seed)[1],
    )


@register("dlrm-kaggle", description=KAGGLE.description)
def dlrm_kaggle(req: BuildRequest) -> Workload:
    return build_dot_dlrm(KAGGLE, req)


@register("dlrm-terabyte-10M", description=TERABYTE_10M.description)
def dlrm_terabyte_10m(req: BuildRequest) -> Workload:
    return build_dot_dlrm(TERABYTE_10M, req)


@register("dlrm-random-bench", description=RANDOM_BENCH.description)
def dlrm_random_bench(req: BuildRequest) -> Workload:
    return build_dot_dlrm(RANDOM_BENCH, req)
