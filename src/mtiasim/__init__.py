"""mtiasim: an open, bit-accurate and timed model of Meta's MTIA inference accelerator.

    import mtiasim
    compiled = mtiasim.compile(model, example_inputs, chip="mtia-v1", mode="both", precision="int8")
    outputs = compiled(*example_inputs)
    compiled.report.latency_s

`torch.compile(model, backend="mtiasim")` works once mtiasim is imported (or through the
`torch_dynamo_backends` entry point). torch is imported only when these are used.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from mtiasim.errors import (
    CapacityError,
    ConfigError,
    MtiasimError,
    NumericsWarning,
    ProgramError,
    UnsupportedOperatorError,
    UsageError,
)
from mtiasim.quiet import DropMessages

__version__ = "0.1.0"

__all__ = [
    "CapacityError",
    "ConfigError",
    "MtiasimError",
    "NumericsWarning",
    "ProgramError",
    "UnsupportedOperatorError",
    "UsageError",
    "__version__",
    "backend",
    "compile",
]


def __getattr__(name: str) -> Any:
    if name == "compile":
        from mtiasim.runtime.api import compile

        return compile
    if name == "backend":
        from mtiasim.runtime.backend import backend

        return backend
    raise AttributeError(f"module 'mtiasim' has no attribute {name!r}")


# torch tells library authors, on the first `is_fx_tracing()` call of a process, that it is true under torch.export
# too; torchrec's KeyedJaggedTensor calls it, so every run of a torchrec model printed the hint
logging.getLogger("torch.fx._symbolic_trace").addFilter(
    DropMessages("is_fx_tracing will return true for both")
)

if "torch" in sys.modules:  # the user works with torch already: make backend="mtiasim" known
    from mtiasim.runtime.backend import register

    register()
