"""Element types shared by every layer (numpy-side, with ml_dtypes for bfloat16, imported on first use: it
costs a process's start-up a noticeable fraction of a second)."""

from __future__ import annotations

from enum import StrEnum
from functools import cache

import numpy as np

from mtiasim.errors import UsageError


class DType(StrEnum):
    """An element type of a tensor, a circular-buffer tile or an accumulator."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT32 = "int32"
    INT64 = "int64"
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def numpy(self) -> np.dtype:
        return _NUMPY[self] if self is not DType.BF16 else _bfloat16()

    @property
    def is_float(self) -> bool:
        return self in (DType.FP16, DType.BF16, DType.FP32)

    @classmethod
    def parse(cls, text: str, where: str = "dtype") -> DType:
        try:
            return cls(text.lower())
        except ValueError:
            names = ", ".join(d.value for d in cls)
            raise UsageError(f"{where}: unknown dtype {text!r} (known: {names})") from None


_ITEMSIZE = {
    DType.INT8: 1,
    DType.UINT8: 1,
    DType.INT32: 4,
    DType.INT64: 8,
    DType.FP16: 2,
    DType.BF16: 2,
    DType.FP32: 4,
}

_NUMPY = {
    DType.INT8: np.dtype(np.int8),
    DType.UINT8: np.dtype(np.uint8),
    DType.INT32: np.dtype(np.int32),
    DType.INT64: np.dtype(np.int64),
    DType.FP16: np.dtype(np.float16),
    DType.FP32: np.dtype(np.float32),
}


@cache
def _bfloat16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)
