"""A public corpus of recommendation models for mtiasim: each compiles and is checked against eager PyTorch.

`CORPUS` lists every model (`CorpusModel`: name, group, provenance, factory) in registration order (`select` gives them public first):

- group "public": the models the project's issue names (torchrec's models and modules, torch.nn blocks, an
  HSTU block, classic feature interactions, a two-tower retrieval model);
- group "heldout": recommendation models written here from their papers' descriptions, which the kernels were
  not written against.

`scripts/corpus_status.py` reports which compile and match; `tests/test_corpus.py` pins that status.
"""

from tests.corpus import blocks, heldout, torchrec_models  # noqa: F401  (registers the models)
from tests.corpus.registry import CORPUS, GROUPS, CorpusModel

__all__ = ["CORPUS", "GROUPS", "CorpusModel", "by_name", "select"]


def by_name(name: str) -> CorpusModel:
    for m in CORPUS:
        if m.name == name:
            return m
    raise KeyError(f"no corpus model {name!r} (known: {', '.join(m.name for m in CORPUS)})")


def select(group: str | None = None, only: list[str] | None = None) -> list[CorpusModel]:
    """The corpus models of `group` (all groups when None), restricted to the names in `only` when given;
    public models first, each group in registration order."""
    chosen = sorted(
        (m for m in CORPUS if group is None or m.group == group), key=lambda m: GROUPS.index(m.group)
    )
    if only:
        for name in only:
            by_name(name)  # an unknown name is an error, not an empty selection
        chosen = [m for m in chosen if m.name in only]
    return chosen
