"""The run path: `compile()`, the compiled model, its report, and the torch.compile backend."""

from mtiasim.report.run import RunReport
from mtiasim.runtime.api import compile
from mtiasim.runtime.model import CompiledModel

__all__ = ["CompiledModel", "RunReport", "compile"]
