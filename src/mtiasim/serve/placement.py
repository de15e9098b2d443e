"""Where the model lives on the server's cards.

Data-parallel serving: every card holds the whole model (tables and dense layers) and runs whole batches, so a
batch needs no traffic between cards. That needs the model in one card's memory (`fits_one_card`); a model that
does not fit is sharded over the cards instead (`serve/sharding.py`, `serve/sharded.py`).

The JSON has the shape of a sharding plan's (`ShardingPlan.to_json`): per table its kind and cards, and the
device bytes per card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mtiasim.compiler import Precision
from mtiasim.errors import CapacityError
from mtiasim.hw import Server


@dataclass(frozen=True)
class Table:
    name: str
    rows: int
    dim: int
    pooling: float  # mean lookups per sample

    def device_bytes(self, precision: Precision) -> int:
        """As the compiler stores it: FBGEMM int8 rows (D bytes, fp16 scale and bias) or fp16 rows."""
        return self.rows * (self.dim + 4 if precision.int8 else 2 * self.dim)


@dataclass(frozen=True)
class Replicated:
    """Every table and the dense layers on every card."""

    cards: int
    tables: tuple[Table, ...]
    table_bytes: int
    dense_bytes: int

    def bytes_on(self, card: int) -> int:
        return self.table_bytes + self.dense_bytes

    def to_json(self) -> dict[str, Any]:
        every = list(range(self.cards))
        return {
            "cards": self.cards,
            "dense": "replicated",
            "tables": {t.name: {"kind": "replicated", "cards": every} for t in self.tables},
            "bytes_per_card": [self.bytes_on(c) for c in every],
        }


def table_names(model: torch.nn.Module, count: int) -> list[str]:
    """The model's embedding tables by module name (torchrec's `t_cat_0`...), in module order; `table_<i>` when
    the model's embedding modules are not its `count` tables one for one."""
    names = [
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.EmbeddingBag | torch.nn.Embedding)
    ]
    return names if len(names) == count else [f"table_{i}" for i in range(count)]


def model_bytes(tables: Sequence[Table], dense_params: int, precision: Precision) -> tuple[int, int]:
    """(table bytes, dense bytes) of the model on one card."""
    return sum(t.device_bytes(precision) for t in tables), dense_params * (1 if precision.int8 else 2)


def fits_one_card(tables: Sequence[Table], dense_params: int, server: Server, precision: Precision) -> bool:
    return sum(model_bytes(tables, dense_params, precision)) <= server.card_memory_bytes


def replicate(
    workload: str,
    tables: Sequence[Table],
    dense_params: int,
    server: Server,
    precision: Precision,
) -> Replicated:
    table_bytes, dense_bytes = model_bytes(tables, dense_params, precision)
    if not fits_one_card(tables, dense_params, server, precision):
        raise CapacityError(
            f"{workload} ({precision.name}): tables {table_bytes / 2**30:.2f} GiB + dense {dense_bytes / 2**30:.2f} "
            f"GiB do not fit one card of {server.name} ({server.card_memory_bytes / 2**30:.2f} GiB): "
            "shard the tables over the cards instead"
        )
    return Replicated(server.cards, tuple(tables), table_bytes, dense_bytes)
