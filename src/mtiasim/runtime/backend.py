"""`torch.compile(model, backend="mtiasim")`: TorchDynamo hands over FX graphs; each is compiled for the
simulated chip on its first call's inputs and then run there (functional mode, so the program gets numbers).

    torch.compile(model, backend="mtiasim")                        # int8, functional, mtia-v1
    torch.compile(model, backend=mtiasim.backend(mode="both", precision="fp16"))

The last compiled graph's run report is `mtiasim.runtime.backend.last_report()`, the compiled model itself
`last_model()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mtiasim.report.run import RunReport
from mtiasim.runtime.api import compile as mtiasim_compile

_LAST: dict[str, Any] = {}


def backend(**options: Any) -> Callable:
    """A TorchDynamo backend with mtiasim options (chip, mode, precision, fidelity)."""
    opts = {"mode": "functional", **options}

    def compiler(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        # Dynamo passes the module's parameters and buffers as graph inputs: bind them back as weights
        static = [i for i, t in enumerate(example_inputs) if _is_weight(t)]
        bound = _Bound(gm, {i: example_inputs[i] for i in static}, len(example_inputs))
        compiled: dict[str, Any] = {}

        def run(*args: Any) -> Any:
            dynamic = tuple(a for i, a in enumerate(args) if i not in bound.weights)
            if "model" not in compiled:
                compiled["model"] = mtiasim_compile(bound, dynamic, name="dynamo_graph", **opts)
            model = compiled["model"]
            out = model(*dynamic)
            _LAST["report"] = model.report
            _LAST["model"] = model
            return out

        return run

    return compiler


def _is_weight(t: Any) -> bool:
    return isinstance(t, torch.nn.Parameter) or hasattr(t, "_dynamo_static_input_type")


class _Bound(torch.nn.Module):
    """A Dynamo graph with its weight inputs held as buffers, taking only the data inputs."""

    def __init__(self, gm: torch.fx.GraphModule, weights: dict[int, torch.Tensor], n_inputs: int) -> None:
        super().__init__()
        self.gm = gm
        self.weights = weights
        self.n_inputs = n_inputs
        for i, t in weights.items():
            self.register_buffer(f"w{i}", t.detach(), persistent=False)

    def forward(self, *args: Any) -> Any:
        it = iter(args)
        full = [getattr(self, f"w{i}") if i in self.weights else next(it) for i in range(self.n_inputs)]
        return self.gm(*full)


def mtiasim_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
    """The default backend (`backend="mtiasim"`)."""
    return backend()(gm, example_inputs)


def last_report() -> RunReport | None:
    return _LAST.get("report")


def last_model() -> Any:
    """The `CompiledModel` that ran last (its `.check()` compares that call with fp32 under the numerics
    specification's bounds)."""
    return _LAST.get("model")


def register() -> None:
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if "mtiasim" not in _BACKENDS:
        register_backend(name="mtiasim")(mtiasim_backend)
