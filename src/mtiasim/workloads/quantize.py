"""int8 embedding tables through torchrec's inference quantization (FBGEMM TBE int8 rows)."""

from __future__ import annotations

import dataclasses

import torch

from mtiasim.errors import UsageError
from mtiasim.workloads.registry import Workload


def quantize_tables_int8(workload: Workload) -> Workload:
    """The workload with its torchrec EmbeddingBagCollection swapped for torchrec's int8 one
    (`torchrec.inference.modules.quantize_embeddings(model, dtype=torch.qint8, inplace=False)`), backed by FBGEMM's
    `IntNBitTableBatchedEmbeddingBagsCodegen`; torch.export then shows one
    `fbgemm.int_nbit_split_embedding_codegen_lookup_function` for all tables. The input workload is left as is.

    Only for materialized models with torchrec tables (dlrm-v2-mlperf): quantizing a virtual table would
    materialize it.
    """
    if workload.table_dtype == "int8":
        return workload
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    if not any(isinstance(m, EmbeddingBagCollection) for m in workload.model.modules()):
        raise UsageError(
            f"{workload.name}: int8 tables use torchrec's quantized EmbeddingBagCollection and this model has "
            "plain nn.EmbeddingBag tables (int8 applies to: dlrm-v2-mlperf)"
        )
    if not workload.materialized:
        raise UsageError(
            f"{workload.name}: only materialized tables can be quantized to int8 (quantizing a virtual table "
            "materializes it); build with materialize=True and max_rows (--max-rows)"
        )
    from torchrec.inference.modules import quantize_embeddings

    model = quantize_embeddings(workload.model, dtype=torch.qint8, inplace=False).eval()
    return dataclasses.replace(workload, model=model, table_dtype="int8")
