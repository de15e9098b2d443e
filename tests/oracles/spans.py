"""The length of a union of time spans, by merging them one at a time in order of start: the reference the
trace's and the report's busy times are checked against."""

from __future__ import annotations


def union_length(spans) -> float:
    """The length of the union of the (start, end) `spans` (empty ones, end <= start, are dropped)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted((s, e) for s, e in spans if e > s):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0.0)
