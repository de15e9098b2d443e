"""torch dtypes <-> mtiasim dtypes."""

from __future__ import annotations

import torch

from mtiasim.dtypes import DType

TORCH_TO_DTYPE: dict[torch.dtype, DType] = {
    torch.float32: DType.FP32,
    torch.float16: DType.FP16,
    torch.bfloat16: DType.BF16,
    torch.int8: DType.INT8,
    torch.uint8: DType.UINT8,
    torch.int32: DType.INT32,
    torch.int64: DType.INT64,
}
DTYPE_TO_TORCH: dict[DType, torch.dtype] = {v: k for k, v in TORCH_TO_DTYPE.items()}


def to_dtype(dtype: torch.dtype) -> DType | None:
    return TORCH_TO_DTYPE.get(dtype)
