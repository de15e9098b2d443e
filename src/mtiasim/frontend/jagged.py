"""KeyedJaggedTensor inputs handed to torch.export with their values already split per key.

torchrec's pytree flattening of a KeyedJaggedTensor keeps `values` and `lengths` but drops `length_per_key`.
Inside the exported program torchrec then recomputes it from the lengths (`lengths.view(K, B).sum(1)`, then
`.tolist()`): every key's total becomes an unbacked, data-dependent size with its own `item`, range asserts and
checks, about 27 graph nodes per key. For a model of 26 features that is 700 of its 880 nodes, and 40 % of
the time torch.export takes (to_dict's own warning calls the path "extremely slow").

Here a KeyedJaggedTensor travels through export as an instance of a subclass (`per_key_class`) that knows
its `length_per_key` and flattens to one values tensor per key (views of its values; the same for weights)
and its lengths. Unflattening, inside the traced program, rebuilds it as `values = cat(values per key)` with
`length_per_key` the sizes of those tensors: backed input sizes, exported as dynamic dimensions, so the
program carries no per-key bookkeeping. Its `to_dict` (what torchrec's embedding modules read) is made from the
per-key tensors themselves, not from a split of that concatenation (`_jagged_per_key`). The model sees a KeyedJaggedTensor with the same keys, values, weights,
lengths and stride. Each call hands its KeyedJaggedTensors over the same way (`split_like`) before its inputs
are flattened.

A KeyedJaggedTensor is left whole (the slow path, which is always correct) when its strides vary per key, when
it carries inverse indices, or when a key has fewer than two values in the example: export specializes a size
of 0 or 1, which would fix that key's length for every later call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils import _pytree as pytree

from mtiasim.quiet import DropMessages

_PER_KEY_CLASSES: dict[type, type] = {}  # a KeyedJaggedTensor class -> its per-key subclass


def is_jagged(x: Any) -> bool:
    """A torchrec KeyedJaggedTensor (duck-typed: torchrec is optional)."""
    return all(callable(getattr(x, a, None)) for a in ("values", "lengths", "keys", "weights_or_none"))


def is_per_key(x: Any) -> bool:
    """A KeyedJaggedTensor that flattens per key (made by `per_key`)."""
    return type(x) in _PER_KEY_CLASSES.values()


def per_key_class(kind: type) -> type:
    """The subclass of KeyedJaggedTensor class `kind` that flattens per key (made and registered once)."""
    cls = _PER_KEY_CLASSES.get(kind)
    if cls is None:
        cls = type(kind)(f"PerKey{kind.__name__}", (kind,), {"__module__": __name__})
        pytree.register_pytree_node(
            cls,
            _flatten,
            lambda children, context, cls=cls: _unflatten(cls, children, context),
            flatten_with_keys_fn=_flatten_with_keys,
        )
        _PER_KEY_CLASSES[kind] = cls
    return cls


def _per_key_tensors(kjt: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`kjt`'s values and weights split per key; made once per object, so that every flattening of it gives the
    same tensor objects (export's dynamic shapes are keyed by tensor identity)."""
    cached = getattr(kjt, "_mtiasim_per_key", None)
    if cached is None:
        sizes = list(kjt.length_per_key())
        weights = kjt.weights_or_none()
        cached = (list(kjt.values().split(sizes)), [] if weights is None else list(weights.split(sizes)))
        kjt._mtiasim_per_key = cached
    return cached


def _flatten(kjt: Any) -> tuple[list[Any], Any]:
    values, weights = _per_key_tensors(kjt)
    context = (tuple(kjt.keys()), int(kjt.stride()), bool(weights))
    return [*values, *weights, kjt.lengths()], context


def _unflatten(cls: type, children: list[Any], context: Any) -> Any:
    keys, stride, weighted = context
    n = len(keys)
    values = list(children[:n])
    weights = list(children[n : 2 * n]) if weighted else None
    lengths = children[-1]
    kjt = cls(
        keys=list(keys),
        values=torch.cat(values),
        weights=None if weights is None else torch.cat(weights),
        lengths=lengths,
        stride=stride,
        length_per_key=[v.shape[0] for v in values],
        jt_dict=_jagged_per_key(cls, list(keys), values, weights, lengths, stride),
    )
    kjt._mtiasim_per_key = (values, weights or [])
    return kjt


def _jagged_per_key(
    cls: type, keys: list[str], values: list[Any], weights: list[Any] | None, lengths: Any, stride: int
) -> dict[str, Any] | None:
    """What `to_dict` returns (torchrec's JaggedTensor per key: its values, weights, lengths and offsets), made
    from the per-key tensors themselves. torchrec's own `to_dict` would split the concatenated values again,
    checking each key's running total against the whole under export (~30 % of DLRM-v2's export once warm), to
    reach the same tensors. None (to_dict then computes it) for a class without torchrec's JaggedTensor."""
    # torchrec's JaggedTensor, from the module of the KeyedJaggedTensor class (or of a base, for a user's subclass)
    found = (getattr(sys.modules.get(base.__module__), "JaggedTensor", None) for base in cls.__mro__)
    jagged_tensor = next((t for t in found if t is not None), None)
    if jagged_tensor is None:
        return None
    per_key_lengths = lengths.view(len(keys), stride)
    zero = per_key_lengths.new_zeros((len(keys), 1))
    offsets = torch.cat([zero, torch.cumsum(per_key_lengths, dim=-1).to(lengths.dtype)], dim=-1)
    # unbound as to_dict unbinds them (one op, where an index per key would be one op per key)
    lengths_of, offsets_of = torch.unbind(per_key_lengths, dim=0), torch.unbind(offsets, dim=0)
    return {
        key: jagged_tensor(
            values=values[i],
            weights=None if weights is None else weights[i],
            lengths=lengths_of[i],
            offsets=offsets_of[i],
        )
        for i, key in enumerate(keys)
    }


def _flatten_with_keys(kjt: Any) -> tuple[list[tuple[Any, Any]], Any]:
    children, context = _flatten(kjt)
    return [(pytree.SequenceKey(i), c) for i, c in enumerate(children)], context


def splittable(kjt: Any) -> bool:
    """Whether `kjt` can travel per key (see the module's docstring for when it cannot)."""
    if not is_jagged(kjt) or kjt.variable_stride_per_key() or kjt.inverse_indices_or_none() is not None:
        return False
    keys = kjt.keys()
    if not keys or kjt.lengths().numel() != len(keys) * kjt.stride():
        return False
    return min(kjt.length_per_key()) >= 2


def per_key(kjt: Any) -> Any:
    """`kjt` as its per-key subclass: the same tensors (no copy), `length_per_key` computed once here."""
    if is_per_key(kjt):
        return kjt
    return per_key_class(type(kjt))(
        keys=list(kjt.keys()),
        values=kjt.values(),
        weights=kjt.weights_or_none(),
        lengths=kjt.lengths(),
        stride=int(kjt.stride()),
        length_per_key=[int(n) for n in kjt.length_per_key()],
    )


def split_for_export(tree: Any) -> Any:
    """`tree` (a call's `(args, kwargs)`) with each splittable KeyedJaggedTensor made per-key."""
    return pytree.tree_map_only(
        is_jagged, lambda k: per_key(k) if splittable(k) else k, tree, is_leaf=is_jagged
    )


def split_like(tree: Any, spec: pytree.TreeSpec | None) -> Any:
    """`tree` with its KeyedJaggedTensors made per-key where the exported signature `spec` has one (a call's
    inputs, shaped as the model was exported)."""
    if spec is None or not _has_per_key(spec):
        return tree
    return _split_where(tree, spec)


def _has_per_key(spec: pytree.TreeSpec) -> bool:
    return spec.type in _PER_KEY_CLASSES.values() or any(_has_per_key(c) for c in spec.children())


def _split_where(tree: Any, spec: pytree.TreeSpec) -> Any:
    if spec.type in _PER_KEY_CLASSES.values():
        return per_key(tree) if is_jagged(tree) else tree
    if spec.is_leaf() or not _has_per_key(spec):
        return tree
    node_type = pytree._get_node_type(tree)
    if node_type is not spec.type or node_type not in pytree.SUPPORTED_NODES:
        return tree  # a structure that does not match: the flattening reports it
    children, context = pytree.SUPPORTED_NODES[node_type].flatten_fn(tree)
    if len(children) != spec.num_children:
        return tree
    new = [_split_where(c, s) for c, s in zip(children, spec.children(), strict=True)]
    return pytree.SUPPORTED_NODES[node_type].unflatten_fn(new, context)


def per_key_tensors(tree: Any) -> list[torch.Tensor]:
    """The per-key values and weights of every per-key KeyedJaggedTensor in `tree` (their lengths change from
    call to call)."""
    out: list[torch.Tensor] = []
    for leaf in pytree.tree_leaves(tree, is_leaf=is_jagged):
        if is_per_key(leaf):
            values, weights = _per_key_tensors(leaf)
            out += values + weights
    return out


@contextlib.contextmanager
def quiet_to_dict(tree: Any) -> Iterator[None]:
    """torchrec warns that `to_dict` under non-strict export is "extremely slow" whenever it runs; with the
    KeyedJaggedTensors of `tree` per key it is not (no per-key bookkeeping), so the warning is dropped."""
    if not per_key_tensors(tree):
        yield
        return
    root, quiet = logging.getLogger(), DropMessages("Trying to non-strict torch.export KJT to_dict")
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
