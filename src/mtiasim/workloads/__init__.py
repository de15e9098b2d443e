"""The model zoo: recommendation workloads with exact published configurations, seeded inputs, and tables that
stay virtual (no memory) unless materialized.

    >>> import torch
    >>> from mtiasim import workloads
    >>> workloads.names()
    ['dlrm-kaggle', 'dlrm-random-bench', 'dlrm-terabyte-10M', 'dlrm-v2-mlperf', 'meta-hc', 'meta-lc1', 'meta-lc2', 'meta-mc1', 'meta-mc2']
    >>> w = workloads.build("dlrm-kaggle", batch=2048)
    >>> ep = torch.export.export(w.model, w.example_inputs, strict=False)

Adding a workload is adding a builder `(BuildRequest) -> Workload` decorated with `@register(...)` in a module of
this package.
"""

from mtiasim.workloads.inputs import (
    MLPERF_QUERY_SIZE_QUANTILES,
    MULTI_HOT_RULES,
    Bags,
    mlperf_multi_hot_bags,
    mlperf_query_sizes,
    one_hot_bags,
    random_bench_bags,
)
from mtiasim.workloads.quantize import quantize_tables_int8
from mtiasim.workloads.registry import (
    BuildRequest,
    Workload,
    WorkloadSpec,
    build,
    names,
    register,
    shape_only,
    spec,
)
from mtiasim.workloads.tables import MATERIALIZE_LIMIT_BYTES, is_virtual

__all__ = [
    "MATERIALIZE_LIMIT_BYTES",
    "MLPERF_QUERY_SIZE_QUANTILES",
    "MULTI_HOT_RULES",
    "Bags",
    "BuildRequest",
    "Workload",
    "WorkloadSpec",
    "build",
    "is_virtual",
    "mlperf_multi_hot_bags",
    "mlperf_query_sizes",
    "names",
    "one_hot_bags",
    "quantize_tables_int8",
    "random_bench_bags",
    "register",
    "shape_only",
    "spec",
]
