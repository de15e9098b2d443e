"""Building blocks shared by the corpus models, written here from their usual descriptions."""

from __future__ import annotations

import torch
from torch import nn


class FieldEmbedding(nn.Module):
    """One embedding per categorical field, all fields in one table: field f's id i is row offset[f] + i
    (the usual CTR-model layout). forward(ids [B, F]) -> [B, F, dim]."""

    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(sum(rows), dim)
        nn.init.normal_(self.table.weight, std=0.1)
        starts = torch.tensor((0, *rows[:-1])).cumsum(0)
        self.register_buffer("offsets", starts[None, :], persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids + self.offsets)


class FieldLinear(nn.Module):
    """The first-order term of FM-style models: a learned scalar per id, summed over fields, plus a bias.
    forward(ids [B, F]) -> [B, 1]."""

    def __init__(self, rows: tuple[int, ...]) -> None:
        super().__init__()
        self.weights = FieldEmbedding(rows, 1)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weights(ids).sum(dim=1) + self.bias


def mlp(
    sizes: list[int], act: type[nn.Module] = nn.ReLU, norm: type[nn.Module] | None = None
) -> nn.Sequential:
    """Linear layers of `sizes` [in, h1, ..., out], each hidden one followed by `norm` (if any) and `act`."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            if norm is not None:
                layers.append(norm(sizes[i + 1]))
            layers.append(act())
    return nn.Sequential(*layers)


def pairs(fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) of every field pair i < j, in row-major order."""
    return torch.triu_indices(fields, fields, offset=1)
