"""Sharing a 2-D tile grid out over PEs."""

from __future__ import annotations

import math

from mtiasim.isa import TileLoop
from mtiasim.kernels.common import cdiv, split


def tile_shape(
    rows: int, cols: int, itemsize: int, target_bytes: int = 4096, max_cols: int = 256
) -> tuple[int, int]:
    """A tile of about `target_bytes`: full rows when they are short, else `max_cols`-wide slices."""
    tc = min(cols, max_cols)
    tr = max(1, min(rows, target_bytes // max(1, tc * itemsize)))
    return tr, tc


def grid_loops(rows: int, cols: int, tile: tuple[int, int], parts: int) -> list[TileLoop]:
    """Split the tile grid of a [rows, cols] view into at most `parts` rectangles of tiles (row-major inside),
    as even as the grid allows."""
    tr, tc = tile
    gr, gc = cdiv(rows, tr), cdiv(cols, tc)
    best = (math.inf, 1, 1)
    for pr in range(1, min(parts, gr) + 1):
        pc = min(parts // pr, gc)
        if pc < 1:
            continue
        worst = cdiv(gr, pr) * cdiv(gc, pc)
        if worst < best[0]:
            best = (worst, pr, pc)
    _w, pr, pc = best
    loops = []
    for r0, r1 in split(gr, pr, 1):
        for c0, c1 in split(gc, pc, 1):
            if r1 > r0 and c1 > c0:
                dims = tuple(d for d in ((r1 - r0, tr, 0), (c1 - c0, 0, tc)) if d[0] > 1)
                loops.append(TileLoop((r0 * tr, c0 * tc), dims))
    return loops


def row_bands(
    rows: int, cols: int, itemsize: int, parts: int
) -> tuple[tuple[int, int], int, list[tuple[int, TileLoop]]]:
    """Whole bands of rows (a band: one tile row across all `cols`) shared out over `parts` PEs: (tile,
    tiles per band, [(bands, loop over its tiles, band by band)] per PE that has any)."""
    tile = tile_shape(rows, cols, itemsize)
    tr, tc = tile
    band = cdiv(cols, tc)
    out = []
    for b0, b1 in split(cdiv(rows, tr), parts, 1):
        if b1 > b0:
            dims = tuple(d for d in ((b1 - b0, tr, 0), (band, 0, tc)) if d[0] > 1)
            out.append((b1 - b0, TileLoop((b0 * tr, 0), dims)))
    return tile, band, out
