"""Embedding-table weights (virtual or materialized) and seeded dense-layer initialisation."""

from __future__ import annotations

import math

import torch
from torch import nn

from mtiasim.errors import UsageError

MATERIALIZE_LIMIT_BYTES = 4 * 2**30


def check_materialize(name: str, rows: tuple[int, ...], dims: tuple[int, ...]) -> None:
    """Refuse to materialize more than 4 GiB of fp32 tables."""
    need = sum(r * d * 4 for r, d in zip(rows, dims, strict=True))
    if need > MATERIALIZE_LIMIT_BYTES:
        raise UsageError(
            f"{name}: materializing its tables needs {need:,} bytes ({need / 2**30:.2f} GiB), over the "
            f"{MATERIALIZE_LIMIT_BYTES / 2**30:.0f} GiB limit; cap the rows with max_rows (--max-rows) or keep "
            "the tables virtual"
        )


def table_weight(
    rows: int, dim: int, *, materialize: bool, generator: torch.Generator | None
) -> nn.Parameter:
    """A [rows, dim] float32 table weight.

    Virtual (the default): a zero tensor of one row expanded with stride 0, holding 4*dim bytes; torch.export
    takes it as a [rows, dim] parameter. (An eager run makes torch copy it to a full table.) Materialized:
    uniform(-sqrt(1/rows), sqrt(1/rows)) from `generator`, as torchrec and DLRM initialise their tables.
    """
    if not materialize:
        return nn.Parameter(torch.zeros(1, dim).expand(rows, dim), requires_grad=False)
    assert generator is not None
    bound = math.sqrt(1.0 / rows)
    w = torch.empty(rows, dim).uniform_(-bound, bound, generator=generator)
    return nn.Parameter(w, requires_grad=False)


def parameters_to_meta_(module: nn.Module) -> nn.Module:
    """Move every parameter of `module` that is not on the meta device there (same shape and dtype, no data,
    frozen): virtual tables beside meta dense layers become a model of shapes only. Buffers stay as they are."""
    for mod in module.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if not p.is_meta:
                meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
                setattr(mod, name, nn.Parameter(meta, requires_grad=False))
    return module


def is_virtual(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.shape[0] > 1 and weight.stride(0) == 0


def _linear_(mod: nn.Linear, g: torch.Generator) -> None:
    # torch's default nn.Linear init (kaiming_uniform with a=sqrt(5), bias uniform(+-1/sqrt(fan_in))), seeded
    w = torch.empty(mod.out_features, mod.in_features)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
    mod.weight = nn.Parameter(w, requires_grad=False)
    if mod.bias is not None:
        bound = 1.0 / math.sqrt(mod.in_features) if mod.in_features > 0 else 0.0
        mod.bias = nn.Parameter(
            torch.empty(mod.out_features).uniform_(-bound, bound, generator=g), requires_grad=False
        )


def _low_rank_crossnet_(mod: nn.Module, g: torch.Generator) -> None:
    # torchrec LowRankCrossNet's init: xavier_normal W and V kernels, zero bias
    for lst in (mod.W_kernels, mod.V_kernels):
        for i in range(len(lst)):
            lst[i] = nn.Parameter(
                nn.init.xavier_normal_(torch.empty(lst[i].shape), generator=g), requires_grad=False
            )
    for i in range(len(mod.bias)):
        mod.bias[i] = nn.Parameter(torch.zeros(mod.bias[i].shape), requires_grad=False)


def init_dense_(module: nn.Module, generator: torch.Generator, *, materialize: bool = True) -> nn.Module:
    """Materialize, on the CPU, every dense layer of `module` that was built on the meta device, each with its
    usual torch/torchrec initialisation drawn from `generator` (in module order), and freeze every parameter.
    `materialize=False` leaves the dense layers on the meta device: shapes only (`BuildRequest.dense_weights`)."""
    if not materialize:
        return module.requires_grad_(False)
    for _, mod in module.named_modules():
        if isinstance(mod, nn.Linear) and mod.weight.is_meta:
            _linear_(mod, generator)
        elif type(mod).__name__ == "LowRankCrossNet" and any(p.is_meta for p in mod.parameters()):
            _low_rank_crossnet_(mod, generator)
    left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"workload model has tensors left on the meta device: {', '.join(left)}")
    module.requires_grad_(False)
    return module


def linear_flops(module: nn.Module) -> int:
    """2 x MACs per sample of the nn.Linear layers in `module`."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def table_collection(
    keys: list[str], rows: tuple[int, ...], dim: int, *, seed: int, materialize: bool
) -> nn.Module:
    """A torchrec EmbeddingBagCollection of one table `t_{key}` per feature key (rows[i] x dim), built on the meta
    device and given `table_weight`s: virtual, or materialized from the seed's "table" streams."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    from mtiasim.workloads.inputs import torch_generator

    configs = [
        EmbeddingBagConfig(name=f"t_{k}", embedding_dim=dim, num_embeddings=n, feature_names=[k])
        for k, n in zip(keys, rows, strict=True)
    ]
    ebc = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    for t, (k, n) in enumerate(zip(keys, rows, strict=True)):
        gen = torch_generator(seed, "table", t) if materialize else None
        ebc.embedding_bags[f"t_{k}"].weight = table_weight(n, dim, materialize=materialize, generator=gen)
    return ebc
