"""The workload registry: a decorator that names a builder, `names()`, `build()` and the `Workload` it returns.

A builder is a function `(BuildRequest) -> Workload`; adding a workload is adding such a function (in a module
of this package, which `names()` and `build()` import on first use) decorated with `@register(name, ...)`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mtiasim.errors import UsageError
from mtiasim.indices import DISTRIBUTIONS, IndexDistribution
from mtiasim.workloads.tables import parameters_to_meta_

TABLE_DTYPES = ("fp32", "int8")


@dataclass(frozen=True, eq=False)
class Workload:
    """A model ready to run or export, `model(*example_inputs)`, and what it is.

    Per-table tuples (`table_rows`, `embedding_dims`, `pooling`) follow the model's table order. `table_rows`
    are the rows after capping (`max_rows`), `full_table_rows` the published ones. `pooling` is the mean number
    of lookups per sample in each table over `example_inputs` (1 for one-hot tables, the fixed multi-hot size for
    DLRM-v2). `flops_per_sample` is 2 x the multiply-accumulates of the matmuls and bmm of one sample.

    Virtual tables (`materialized=False`) are zero-stride tensors: exporting is cheap, but running the model
    eagerly makes torch copy each table to full size, so eager runs want `materialize=True` and `max_rows`.

    `inputs(seed)` draws other requests for the same model: the example inputs a build with that seed would
    have (same batch, rows, distribution and multi-hot rule), without building the model again.
    """

    name: str
    model: torch.nn.Module
    example_inputs: tuple
    batch: int
    description: str
    table_rows: tuple[int, ...]
    embedding_dims: tuple[int, ...]
    pooling: tuple[float, ...]
    flops_per_sample: int
    full_table_rows: tuple[int, ...] = ()
    dense_params: int = 0
    seed: int = 0
    materialized: bool = False
    table_dtype: str = "fp32"
    index_distribution: str = "uniform"
    multi_hot: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    draw_inputs: Callable[[int], tuple] | None = field(default=None, repr=False)

    def inputs(self, seed: int) -> tuple:
        """The example inputs of this workload built with `seed` (the model as it is)."""
        if self.draw_inputs is None:
            raise UsageError(f"workload {self.name}: its builder draws no inputs for other seeds")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
            raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
        return self.draw_inputs(int(seed))

    @property
    def tables(self) -> int:
        return len(self.table_rows)

    @property
    def lookups_per_sample(self) -> float:
        return float(sum(self.pooling))

    @property
    def table_bytes_fp32(self) -> int:
        return sum(r * d * 4 for r, d in zip(self.table_rows, self.embedding_dims, strict=True))

    @property
    def table_bytes_int8(self) -> int:
        """Bytes of the tables in FBGEMM's int8 TBE row format (D bytes plus an fp16 scale and bias per row)."""
        return sum(r * (d + 4) for r, d in zip(self.table_rows, self.embedding_dims, strict=True))

    def info(self) -> dict[str, object]:
        """A JSON-ready summary (no tensors)."""
        return {
            "name": self.name,
            "description": self.description,
            "batch": self.batch,
            "seed": self.seed,
            "tables": self.tables,
            "table_rows": list(self.table_rows),
            "full_table_rows": list(self.full_table_rows or self.table_rows),
            "embedding_dims": list(self.embedding_dims),
            "pooling": [round(p, 6) for p in self.pooling],
            "lookups_per_sample": round(self.lookups_per_sample, 6),
            "flops_per_sample": self.flops_per_sample,
            "mflop_per_sample": round(self.flops_per_sample / 1e6, 4),
            "dense_params": self.dense_params,
            "table_bytes_fp32": self.table_bytes_fp32,
            "table_bytes_int8": self.table_bytes_int8,
            "materialized": self.materialized,
            "table_dtype": self.table_dtype,
            "index_distribution": self.index_distribution,
            "multi_hot": self.multi_hot,
            **self.extra,
        }


@dataclass(frozen=True)
class BuildRequest:
    """What a builder is asked for, validated. `max_rows` caps every table; `multi_hot` is resolved to the
    workload's default when the caller gave none (None for workloads without multi-hot bags)."""

    name: str
    batch: int
    seed: int
    max_rows: int | None
    materialize: bool
    indices: IndexDistribution
    multi_hot: str | None
    # False: the dense layers stay on the meta device, shapes without weights (a model that cannot run, for
    # reading a workload's shape cheaply: `run.limits.estimate_host_bytes`; with virtual tables every
    # parameter is on meta: a timing run compiles it, see `build`)
    dense_weights: bool = True

    def cap(self, rows: tuple[int, ...]) -> tuple[int, ...]:
        if self.max_rows is None:
            return tuple(rows)
        return tuple(min(r, self.max_rows) for r in rows)

    @property
    def distribution_label(self) -> str:
        if self.indices.kind == "zipf":
            return f"zipf(alpha={self.indices.alpha:g})"
        return self.indices.kind


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    builder: Callable[[BuildRequest], Workload]
    description: str
    multi_hot: tuple[str, ...] = ()  # the multi-hot rules it takes, the first being its default


_REGISTRY: dict[str, WorkloadSpec] = {}


def register(
    name: str, *, description: str, multi_hot: tuple[str, ...] = ()
) -> Callable[[Callable[[BuildRequest], Workload]], Callable[[BuildRequest], Workload]]:
    """Decorator naming a workload builder `(BuildRequest) -> Workload`."""

    def wrap(fn: Callable[[BuildRequest], Workload]) -> Callable[[BuildRequest], Workload]:
        if name in _REGISTRY and _REGISTRY[name].builder is not fn:
            raise UsageError(
                f"workload {name!r} is registered twice ({_REGISTRY[name].builder.__module__}, {fn.__module__})"
            )
        _REGISTRY[name] = WorkloadSpec(name, fn, description, tuple(multi_hot))
        return fn

    return wrap


def _load_builtin() -> None:
    # importing every module of the package runs its @register decorators (idempotent: modules import once)
    package = importlib.import_module("mtiasim.workloads")
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"mtiasim.workloads.{mod.name}")


def names() -> list[str]:
    """The registered workload names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def spec(name: str) -> WorkloadSpec:
    _load_builtin()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UsageError(f"unknown workload {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def shape_only(model: torch.nn.Module) -> bool:
    """Whether every parameter and buffer of `model` is on the meta device: a model of shapes only, which a
    timing run compiles as it is (a buffer with data, such as DLRM's interaction indices, is not one)."""
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


def _positive_int(what: str, value: object, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def build(
    name: str,
    *,
    batch: int,
    seed: int = 0,
    max_rows: int | None = None,
    materialize: bool = False,
    distribution: str = "uniform",
    alpha: float = 1.05,
    multi_hot: str | None = None,
    tables: str = "fp32",
    dense_weights: bool = True,
) -> Workload:
    """Build workload `name` for `batch` samples: an eval-mode model and seeded example inputs.

    - `seed` seeds everything (dense weights, materialized tables, inputs): same arguments, same bits.
    - `max_rows` caps every table to min(rows, max_rows); indices are drawn in the capped range.
    - Tables are virtual (a zero-stride weight holding 4*D bytes, for export and timing studies) unless
      `materialize`; materialized tables get seeded uniform(-sqrt(1/rows), sqrt(1/rows)) weights and are refused
      above 4 GiB.
    - `distribution` ("uniform" or "zipf", with exponent `alpha`) picks the indices of each table.
    - `multi_hot` ("uniform" or "pareto") picks the extra ids of MLPerf DLRM-v2's fixed-size multi-hot bags.
    - `tables="int8"` swaps torchrec tables for torchrec's int8 (FBGEMM TBE) ones; see `quantize_tables_int8`.
    - `dense_weights=False` leaves the dense layers on the meta device, without weights: the workload's shape
      (tables, lookups, flops, inputs) for a tenth of the build's time, in a model that cannot run. With virtual
      tables (not `materialize`) the tables go to meta too: every parameter is a shape, and a model whose
      buffers are all on meta as well (`shape_only`) compiles for timing, which reads no weight values.
    """
    s = spec(name)
    batch = _positive_int("batch", batch)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    max_rows = _positive_int("max_rows", max_rows, allow_none=True)
    if distribution not in DISTRIBUTIONS:
        raise UsageError(f"unknown index distribution {distribution!r} (known: {', '.join(DISTRIBUTIONS)})")
    if not isinstance(alpha, int | float) or not alpha > 0:
        raise UsageError(f"alpha must be a positive number, got {alpha!r}")
    if multi_hot is not None:
        if not s.multi_hot:
            takes = [n for n in sorted(_REGISTRY) if _REGISTRY[n].multi_hot]
            raise UsageError(f"{name} has no multi-hot bags (multi_hot applies to: {', '.join(takes)})")
        if multi_hot not in s.multi_hot:
            raise UsageError(
                f"unknown multi-hot rule {multi_hot!r} for {name} (known: {', '.join(s.multi_hot)})"
            )
    if tables not in TABLE_DTYPES:
        raise UsageError(f"unknown table dtype {tables!r} (known: {', '.join(TABLE_DTYPES)})")
    if tables == "int8" and not materialize:
        raise UsageError(
            f"{name}: tables='int8' quantizes materialized tables; pass materialize=True (and max_rows)"
        )
    req = BuildRequest(
        name=name,
        batch=batch,
        seed=int(seed),
        max_rows=max_rows,
        materialize=bool(materialize),
        indices=IndexDistribution(distribution, float(alpha)),
        multi_hot=multi_hot if multi_hot is not None else (s.multi_hot[0] if s.multi_hot else None),
        dense_weights=bool(dense_weights),
    )
    w = s.builder(req)
    if not req.dense_weights and not req.materialize:
        parameters_to_meta_(w.model)
    if tables == "int8":
        from mtiasim.workloads.quantize import quantize_tables_int8

        w = quantize_tables_int8(w)
    return w
