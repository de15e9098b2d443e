"""The corpus registry: one `CorpusModel` per model, in the order they were registered.

Each factory builds its model (eval mode, seeded, small) and the example inputs of one call. Factories run in
their own forked RNG state seeded from the model's name, so building one model never changes another's weights
or the caller's random state, and two builds give the same tensors.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

GROUPS = ("public", "heldout")

Factory = Callable[[], tuple[nn.Module, tuple]]


@dataclass(frozen=True)
class CorpusModel:
    """A corpus entry: `name` (unique), `group` (public: the issue's list; heldout: written here from papers'
    descriptions), `provenance` (the package class or paper it follows) and the factory."""

    name: str
    group: str
    provenance: str
    factory: Factory

    def build(self) -> tuple[nn.Module, tuple]:
        """(model in eval mode, example inputs), the same every time."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(self.name.encode()))
            model, inputs = self.factory()
        model.eval().requires_grad_(False)
        return model, inputs if isinstance(inputs, tuple) else (inputs,)


CORPUS: list[CorpusModel] = []


def corpus_model(name: str, group: str, provenance: str) -> Callable[[Factory], Factory]:
    """Register the decorated factory under `name`."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r} (known: {', '.join(GROUPS)})")

    def wrap(factory: Factory) -> Factory:
        if any(m.name == name for m in CORPUS):
            raise ValueError(f"corpus model {name!r} registered twice")
        CORPUS.append(CorpusModel(name, group, provenance, factory))
        return factory

    return wrap
