"""The run path: `compile()`, the compiled model, its report, and the torch.compile backend."""

from mtiasim.runtime.api import compile
from mtiasim.runtime.model import CompiledModel
from mtiasim.report.run import RunReport

__all__ = ["CompiledModel", "RunReport", "compile"]
