"""`mtiasim bench suite FILE.csv`: one benchmark per CSV row, one JSON object per row (JSON lines).

The `kind` column picks the benchmark (gemm, tbe, op); the other columns are its flags. An empty cell means the
flag's default. Columns: kind, m, k, n, dtype, placement, batch, pooling, rows, dim, op, tables, out_dtype,
variant, distribution, alpha, pool_mode, chip, fidelity, mode, seed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtiasim.bench.gemm import bench_gemm
from mtiasim.bench.ops import bench_op
from mtiasim.bench.tbe import bench_tbe
from mtiasim.errors import MtiasimError, UsageError
from mtiasim.hw.chip import chip_with_sets

INT_COLUMNS = ("m", "k", "n", "batch", "pooling", "rows", "dim", "tables", "seed")
FLOAT_COLUMNS = ("alpha",)
STR_COLUMNS = (
    "dtype",
    "placement",
    "op",
    "out_dtype",
    "variant",
    "distribution",
    "pool_mode",
    "chip",
    "fidelity",
    "mode",
)
COLUMNS = ("kind", *INT_COLUMNS, *FLOAT_COLUMNS, *STR_COLUMNS)
KIND_COLUMNS = {
    "gemm": {"m", "k", "n", "dtype", "placement", "out_dtype", "variant", "chip", "fidelity", "mode", "seed"},
    "tbe": {
        "batch",
        "pooling",
        "rows",
        "dim",
        "tables",
        "placement",
        "distribution",
        "alpha",
        "pool_mode",
        "chip",
        "fidelity",
        "mode",
        "seed",
    },
    "op": {"op", "m", "k", "n", "dtype", "placement", "chip", "fidelity", "mode", "seed"},
}
REQUIRED = {"gemm": ("m", "k", "n"), "tbe": ("batch", "pooling", "rows", "dim"), "op": ("op",)}


def _value(col: str, text: str, where: str) -> Any:
    if col in INT_COLUMNS:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{where}: column {col!r}: {text!r} is not an integer") from None
    if col in FLOAT_COLUMNS:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"{where}: column {col!r}: {text!r} is not a number") from None
    return text


def run_row(
    row: dict[str, str],
    where: str,
    defaults: dict[str, Any] | None = None,
    overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One row's benchmark; `overrides` (`--set KEY=VALUE`, as `parse_sets` gives them) apply to its chip."""
    kind = (row.get("kind") or "").strip()
    if kind not in KIND_COLUMNS:
        raise UsageError(f"{where}: kind {kind!r} is not one of {', '.join(KIND_COLUMNS)}")
    args: dict[str, Any] = dict(defaults or {})
    for col, text in row.items():
        if col == "kind" or text is None or not text.strip():
            continue
        if col not in KIND_COLUMNS[kind]:
            raise UsageError(f"{where}: column {col!r} does not apply to kind {kind!r}")
        args[col] = _value(col, text.strip(), where)
    for col in REQUIRED[kind]:
        if col not in args:
            raise UsageError(f"{where}: kind {kind!r} needs a value in column {col!r}")
    try:
        if overrides:
            args["chip"] = chip_with_sets(args.get("chip", "mtia-v1"), overrides)
        if kind == "gemm":
            return bench_gemm(**args)
        if kind == "tbe":
            return bench_tbe(**args)
        return bench_op(**args)
    except MtiasimError as err:
        raise type(err)(f"{where}: {err}") from None


def run_suite(path: str | Path, defaults: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Yield one result per row, in row order. Errors name the file and line."""
    for line, row in read_rows(path):
        yield run_row(row, f"{path}:{line}", defaults)


def read_rows(path: str | Path) -> list[tuple[int, dict[str, str | None]]]:
    """(line number, {column: cell}) of every row of the CSV, checked: UTF-8 (a byte-order mark is allowed),
    known columns with `kind` among them, no row longer than the header. Blank lines are skipped and counted;
    a row's line is the physical line it starts on. A missing trailing cell reads as None (empty)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise UsageError(f"{p}: cannot read it ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UsageError(
            f"{p}:{line}: not UTF-8 text (byte {err.start} is {data[err.start]:#04x}): save the CSV as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, str | None]]] = []
    header: list[str] | None = None
    prev = 0
    try:
        for cells in reader:
            line, prev = prev + 1, reader.line_num
            if header is None:
                header = cells
                if "kind" not in header:
                    raise UsageError(f"{p}:{line}: the CSV needs a 'kind' column (gemm, tbe, op)")
                for col in header:
                    if col not in COLUMNS:
                        raise UsageError(f"{p}:{line}: unknown column {col!r} (known: {', '.join(COLUMNS)})")
                continue
            if not cells:  # a blank line
                continue
            if len(cells) > len(header):
                raise UsageError(f"{p}:{line}: more cells than columns")
            rows.append((line, {col: (cells[i] if i < len(cells) else None) for i, col in enumerate(header)}))
    except csv.Error as err:
        raise UsageError(f"{p}:{reader.line_num}: not a valid CSV row ({err})") from None
    if header is None:
        raise UsageError(f"{p}:1: the CSV needs a 'kind' column (gemm, tbe, op)")
    return rows
