"""Example inputs for the corpus: dense features, bags of ids (torchrec KeyedJaggedTensors or per-table
indices/offsets), id sequences with their length masks. Every draw comes from torch's global RNG, which
`CorpusModel.build` has forked and seeded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

BATCH = 5  # odd on purpose: no kernel may assume a power of two


def dense(batch: int, features: int) -> torch.Tensor:
    """Dense features [batch, features], uniform in [0, 1) as DLRM's random data."""
    return torch.rand(batch, features)


@dataclass(frozen=True)
class Tables:
    """Embedding tables by feature: `rows[i]` rows for feature `keys[i]`, bags of 1..`max_bag` ids."""

    keys: tuple[str, ...]
    rows: tuple[int, ...]
    max_bag: int = 3

    def lengths(self, batch: int) -> torch.Tensor:
        """Bag sizes [features * batch], feature-major (torchrec's layout)."""
        return torch.randint(1, self.max_bag + 1, (len(self.keys) * batch,))

    def ids(self, lengths: torch.Tensor, batch: int) -> torch.Tensor:
        per_key = lengths.reshape(len(self.keys), batch).sum(dim=1)
        return torch.cat([torch.randint(0, r, (int(n),)) for r, n in zip(self.rows, per_key, strict=True)])


def keyed_jagged(tables: Tables, batch: int, weighted: bool = False):
    """A torchrec KeyedJaggedTensor of `batch` samples with bags of 1..max_bag ids per feature (per-sample
    weights in (0, 1) when `weighted`)."""
    from torchrec import KeyedJaggedTensor

    lengths = tables.lengths(batch)
    values = tables.ids(lengths, batch)
    weights = torch.rand(values.shape[0]) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(tables.keys), values=values, lengths=lengths, weights=weights
    )


def bags(rows: int, batch: int, max_bag: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.EmbeddingBag inputs for one table: (ids, offsets[batch]) with bags of 1..max_bag ids."""
    lengths = torch.randint(1, max_bag + 1, (batch,))
    ids = torch.randint(0, rows, (int(lengths.sum()),))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    return ids, offsets


def field_ids(rows: tuple[int, ...], batch: int) -> torch.Tensor:
    """One id per categorical field [batch, fields]: field f's id in [0, rows[f])."""
    return torch.stack([torch.randint(0, r, (batch,)) for r in rows], dim=1)


def sequence(rows: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded id sequence [batch, length] (id 0 is padding) and its valid-position mask [batch, length]
    (float 1/0), each sample at least one long; the jagged sequence padded to dense."""
    lengths = torch.randint(1, length + 1, (batch,))
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    ids = torch.randint(1, rows, (batch, length)) * mask.long()
    return ids, mask
