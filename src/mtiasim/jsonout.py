"""JSON that every parser reads: RFC 8259 has no NaN or Infinity, which Python's `json` writes by default
(jq reads Infinity as 1.8e308, JavaScript's JSON.parse refuses it). A non-finite figure (the largest bound of a
check where no element is bounded, say) is written as null; numpy scalars as the Python numbers they hold."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def finite(obj: Any) -> Any:
    """`obj` (dicts, lists, tuples, numbers) with every non-finite float made None and numpy scalars made
    Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.generic):  # a numpy scalar (an array is not serialisable: TypeError from dumps)
        return finite(obj.item())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` of `finite(obj)`: strict JSON (a value still not serialisable raises TypeError)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
