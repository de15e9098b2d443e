"""The busy-time union behind the PE heatmap (`report.activity.union_lengths`) against a direct span merge
(`tests.oracles.spans`)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.oracles.spans import union_length

from mtiasim.report.activity import union_lengths

# starts and lengths on a coarse grid, so that spans touch, nest and repeat
span = st.tuples(st.integers(0, 7), st.integers(0, 40), st.integers(1, 25))


@settings(max_examples=300, deadline=None)
@given(st.lists(span, max_size=60), st.sampled_from([1.0, 1e-6, 3.7e3]))
def test_union_lengths_equals_a_direct_merge_per_group(spans, scale):
    groups = 8
    g = np.array([p[0] for p in spans], dtype=np.int64)
    start = np.array([p[1] * scale for p in spans], dtype=float)
    end = np.array([(p[1] + p[2]) * scale for p in spans], dtype=float)
    got = union_lengths(g, start, end, groups)
    for k in range(groups):
        want = union_length([(s, e) for s, e, gg in zip(start, end, g, strict=True) if gg == k])
        assert got[k] == want


def test_union_lengths_of_nested_touching_and_disjoint_spans():
    g = np.array([0, 0, 0, 0, 1, 1])
    start = np.array([0.0, 1.0, 4.0, 6.0, 2.0, 2.0])
    end = np.array([5.0, 2.0, 6.0, 7.0, 3.0, 9.0])
    # group 0: [0,5) holds [1,2); [4,6) overlaps; [6,7) touches -> one run [0,7); group 1: [2,9)
    assert union_lengths(g, start, end, 3).tolist() == [7.0, 7.0, 0.0]
