"""Where an exported node comes from: module path and type (from nn_module_stack), file and line."""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from mtiasim.ir import Source

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)')
_TORCH_DIR = os.path.dirname(torch.__file__)


def node_source(node: Any) -> Source:
    """The innermost module and the innermost frame outside torch itself (the user's or library's code)."""
    stack = node.meta.get("nn_module_stack") or {}
    path, mtype = "", ""
    if stack:
        path, mtype = list(stack.values())[-1]
        mtype = mtype if isinstance(mtype, str) else getattr(mtype, "__qualname__", str(mtype))
    location, code = "", ""
    trace = node.meta.get("stack_trace") or ""
    frames = _FRAME.findall(trace)
    outside = [f for f in frames if not os.path.abspath(f[0]).startswith(_TORCH_DIR)]
    if outside or frames:
        file, line, code = (outside or frames)[-1]
        location = f"{file}:{line}"
    return Source(path, mtype, location, code.strip())
