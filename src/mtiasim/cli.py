"""The `mtiasim` command line.

Exit status (README "Exit status"): 0 success; 1 a numeric check failed (the output is printed in full first);
2 bad input or a model/config the simulator cannot take (one line ``mtiasim: error: ...``); 3 an internal error
(one line ``mtiasim: internal error: ...``); 141 the reader of stdout went away (a closed pipe), quietly; 130
interrupted. ``--debug`` adds the traceback and keeps the status.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from mtiasim.errors import MtiasimError, UsageError
from mtiasim.run.config import DEFAULT_SCENARIO, DEFAULT_SERVER

DEBUG = {"on": False}

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # as a shell reports SIGINT and SIGPIPE (128 + signal)


class CheckFailed(Exception):
    """A numeric check did not pass: raised after the output is printed in full; exit status 1."""

    def __init__(self, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet  # JSON output: the status says it, nothing on stderr


def _check_verdict(res: dict[str, Any]) -> str | None:
    """None when `res` has no check or it passed; else what failed, in a few words."""
    chk = res.get("check")
    if not isinstance(chk, dict) or chk.get("passed", True):
        return None
    what = f"max abs err {chk.get('max_abs_err', float('nan')):.3g}"
    if chk.get("max_err_over_bound") is not None:
        what += f", {chk['max_err_over_bound']:.3g}x its error bound (docs/numerics.md)"
    if chk.get("reference"):
        what += f" vs {chk['reference']}"
    return what


class OutputError(Exception):
    """stdout could not be written (a closed pipe, a full disk); carries the OSError."""

    def __init__(self, err: OSError) -> None:
        super().__init__(str(err))
        self.err = err


class _Group(click.Group):
    """The top-level group: an OSError from writing the output leaves click as an OutputError, before click's own
    EPIPE handling (which would exit 1 from inside `cli.main`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as err:
            if _from_output(err):
                raise OutputError(err) from err
            raise


def _raise_if_failed(res: dict[str, Any], as_json: bool) -> None:
    verdict = _check_verdict(res)
    if verdict is not None:
        raise CheckFailed(verdict, quiet=as_json)


def _emit_json(obj: Any) -> None:
    """Strict JSON on stdout: a non-finite figure is null (`mtiasim.jsonout`)."""
    from mtiasim import jsonout

    click.echo(jsonout.dumps(obj, sort_keys=False))


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    if s < 1:
        return f"{s * 1e3:.3f} ms"
    return f"{s:.3f} s"


def _where(res: dict[str, Any]) -> str:
    """The placement as run: `dram` resolves to the benchmark's published set-up, cached or not."""
    if res["placement"] == "dram":
        return "dram via the SRAM cache" if res.get("sram_cache") else "dram, SRAM cache bypassed"
    return str(res["placement"])


def _print_bench(res: dict[str, Any]) -> None:
    kind = res["kind"]
    if kind == "gemm":
        head = f"gemm {res['m']}x{res['k']}x{res['n']} {res['dtype']} ({_where(res)}) on {res['chip']}"
        rate = f"{res['tops']:.2f} TOPS" if res.get("tops") else "-"
    elif kind == "tbe":
        head = (
            f"tbe batch {res['batch']} pooling {res['pooling']} rows {res['rows']} dim {res['dim']} "
            f"tables {res['tables']} ({res['placement']}) on {res['chip']}"
        )
        rate = f"{res['gbps']:.1f} GB/s of embedding rows"
    else:
        head = f"{res['op']} {res['m']}x{res['k']}x{res['n']} {res['dtype']} ({_where(res)}) on {res['chip']}"
        rate = f"{res['gbps']:.1f} GB/s"
    click.echo(head)
    if (line := _overrides_line(res)) is not None:
        click.echo(f"  overrides {line}")
    click.echo(f"  time      {_fmt_seconds(res.get('seconds'))}   ({res['fidelity']}, {res['mode']})")
    if res.get("seconds"):
        click.echo(f"  rate      {rate}")
        click.echo(f"  bound     {res['bound']}")
        att = res.get("attribution_detail_us") or res.get("attribution_us", {})
        total = sum(att.values()) or 1.0
        parts = ", ".join(
            f"{k} {v / total * 100:.0f}%" for k, v in sorted(att.items(), key=lambda kv: -kv[1]) if v > 0
        )
        click.echo(f"  time in   {parts}")
        click.echo(f"  PEs       {res.get('pes')}")
    if "avg_power_w" in res:
        per_w = res.get("tops_per_w") or res.get("gbps_per_w") or {}
        unit = "TOPS/W" if "tops_per_w" in res else "GB/s/W"
        click.echo(
            f"  power     chip {res['avg_power_w']:.2f} W avg ({res['peak_power_w']:.2f} peak), "
            f"card {res['card_power_w']:.2f} W, platform {res['platform_power_w']:.2f} W"
        )
        if per_w:
            click.echo(
                f"  per watt  {per_w['chip']:.3g} {unit} chip, {per_w['card']:.3g} card, "
                f"{per_w['platform']:.3g} platform ({per_w['paper']:.3g} at the paper's 65 W)"
            )
    for warning in res.get("power_warnings", []):
        click.echo(f"  warning   {warning}")
    if "mapping" in res:
        click.echo(f"  mapping   {res['mapping']}")
    if len(res.get("launches", [])) > 1:
        for row in res["launches"]:
            took = f", {row['seconds'] * 1e3:.3f} ms each" if "seconds" in row else ""
            click.echo(
                f"  launches  {row['launches']} of {res['in_flight']} with A in {row['a']}, C in {row['c']}{took}"
            )
    if "cache_hit_rate" in res:
        click.echo(f"  SRAM cache hit rate {res['cache_hit_rate'] * 100:.1f}%")
    if "trace" in res:
        click.echo(f"  trace     {res['trace']['path']}")
    if "check" in res:
        chk = res["check"]
        click.echo(
            f"  check     {'passed' if chk['passed'] else 'FAILED'} (max abs err {chk['max_abs_err']:.3g} vs {chk['reference']})"
        )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="mtiasim")
def cli(debug: bool) -> None:
    """mtiasim: a bit-accurate, timed model of Meta's MTIA inference accelerator."""
    DEBUG["on"] = debug


def config_options(*names: str):
    """Click options generated from the named `RunConfig` fields (flag, default, help, choices: one place,
    `mtiasim.run.config`), in the order given."""
    from mtiasim.run.config import options

    def decorate(f):
        for name, default, opt in reversed(options(*names)):
            kw: dict[str, Any] = {"help": opt.help}
            if opt.is_flag:
                kw["is_flag"] = True
            elif opt.multiple:
                kw["multiple"] = True
            else:
                kw["default"] = default
                kw["show_default"] = opt.show_default
                kw["type"] = click.Choice(list(opt.choices)) if opt.choices else opt.type
            if opt.metavar:
                kw["metavar"] = opt.metavar
            f = click.option(opt.flag, opt.param or name, **kw)(f)
        return f

    return decorate


_set_option = config_options("sets")


def _chip(chip_name: str, sets: tuple[str, ...]):
    """The chip to run on: the preset or chip file `chip_name`, with the `--set` overrides applied."""
    from mtiasim.hw.chip import chip_with_sets

    return chip_with_sets(chip_name, sets)


def _overrides_line(res: dict[str, Any]) -> str | None:
    if not res.get("overrides"):
        return None
    sets = ", ".join(f"{k}={v}" for k, v in res["overrides"].items())
    return f"{sets} (chip hash {res['chip_hash'][:12]})"


# ------------------------------------------------------------------------------------------------- chip


@cli.group()
def chip() -> None:
    """Chip configurations."""


@chip.command("list")
def chip_list() -> None:
    """List the shipped chip presets."""
    from mtiasim.hw import load_chip, preset_names

    for name in preset_names():
        click.echo(f"{name:10s} {load_chip(name).description}")


@chip.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_set_option
def chip_show(name: str, as_json: bool, sets: tuple[str, ...]) -> None:
    """Print a chip's configuration with the provenance of every value, its derived peaks and its die area."""
    from mtiasim.hw import peaks
    from mtiasim.hw.area import area
    from mtiasim.hw.chip import SECTIONS

    c = _chip(name, sets)
    die = area(c)
    if as_json:
        params = {}
        for section in SECTIONS:
            for key, value in getattr(c, section).model_dump().items():
                p = c.provenance.get(f"{section}.{key}")
                params[f"{section}.{key}"] = {
                    "value": value,
                    "provenance": p.kind if p else None,
                    "source": p.source if p else None,
                    "note": p.note if p else None,
                }
        _emit_json(
            {
                "name": c.name,
                "description": c.description,
                "chip_hash": c.values_hash(),
                "overrides": c.overrides(),
                "parameters": params,
                "peaks": [
                    {
                        "name": pk.name,
                        "physical": pk.physical,
                        "quoted": pk.quoted,
                        "unit": pk.unit,
                        "formula": pk.formula,
                    }
                    for pk in peaks(c)
                ],
                "area": die.to_json(),
            }
        )
        return
    click.echo(f"{c.name}: {c.description}")
    click.echo(f"chip hash {c.values_hash()}")
    for section in SECTIONS:
        click.echo(f"[{section}]")
        for key, value in getattr(c, section).model_dump().items():
            p = c.provenance.get(f"{section}.{key}")
            where = p.describe() if p else "?"
            click.echo(f"  {key:24s} {value!s:>14}   {where}")
    click.echo("derived peaks (from the unit-level values above)")
    for pk in peaks(c):
        quoted = f" (quoted {pk.quoted:.4g}, 1 T = 1024 G)" if pk.convention_1024 else ""
        click.echo(f"  {pk.name:26s} {pk.physical:10.4g} {pk.unit:7s}{quoted}   = {pk.formula}")
    _print_area(die, c.provenance.get("area.published_die_mm2"))


def _print_area(die, published) -> None:
    click.echo(f"die area (the model of [area], at {die.process_nm} nm)")
    for item in die.items:
        click.echo(f"  {item.name:26s} {item.mm2:10.2f} mm^2   = {item.formula}")
    source = ""
    if published is not None:
        source = f" [{published.source}]" if published.kind == "published" else f" [{published.describe()}]"
    click.echo(
        f"  {'total':26s} {die.total_mm2:10.2f} mm^2   vs the published die {die.published_die_mm2:g} mm^2{source}: "
        f"{round(die.error_pct, 1) + 0.0:+.1f} %"
    )


# ----------------------------------------------------------------------------------------------- server


@cli.group()
def server() -> None:
    """Server configurations (cards, PCIe switch tree, host)."""


@server.command("list")
def server_list() -> None:
    """List the shipped server presets."""
    from mtiasim.hw import load_server, server_preset_names

    for name in server_preset_names():
        click.echo(f"{name:16s} {load_server(name).description}")


@server.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def server_show(name: str, as_json: bool) -> None:
    """Print a server's configuration with the provenance of every value, and what follows from it."""
    from mtiasim.hw import load_server
    from mtiasim.hw.server import SERVER_SECTIONS

    s = load_server(name)
    chip = s.chip()
    derived = {
        "cards_per_switch": s.cards_per_switch,
        "card_link_gbps": chip.host.bandwidth_gbps,
        "card_memory_bytes": s.card_memory_bytes,
        "card_sram_bytes": s.card_sram_bytes,
        "non_card_power_w": s.non_card_power_w,
    }
    if as_json:
        params = {}
        for section in SERVER_SECTIONS:
            for key, value in getattr(s, section).model_dump().items():
                p = s.provenance.get(f"{section}.{key}")
                params[f"{section}.{key}"] = {
                    "value": value,
                    "provenance": p.kind if p else None,
                    "source": p.source if p else None,
                    "note": p.note if p else None,
                }
        _emit_json({"name": s.name, "description": s.description, "parameters": params, "derived": derived})
        return
    click.echo(f"{s.name}: {s.description}")
    for section in SERVER_SECTIONS:
        click.echo(f"[{section}]")
        for key, value in getattr(s, section).model_dump().items():
            p = s.provenance.get(f"{section}.{key}")
            click.echo(f"  {key:24s} {value!s:>14}   {p.describe() if p else '?'}")
    click.echo("derived")
    for key, value in derived.items():
        click.echo(f"  {key:24s} {value!s:>14}")


# ------------------------------------------------------------------------------------------------ serve


@cli.command("serve")
@click.argument("workload")
@config_options("server", "scenario", "p99_ms", "queries")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the query sizes and arrivals.")
@click.option("--window-ms", type=float, default=2.0, show_default=True, help="Dynamic batching window.")
@click.option(
    "--max-batch", type=int, default=2048, show_default=True, help="Largest batch (a power of two)."
)
@config_options("precision")
@click.option("--report", "report_dir", default=None, help="Write an HTML report (index.html) to DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_set_option
def serve_cmd(workload, server_name, scenario, p99_ms, queries, seed, window_ms, max_batch, precision, report_dir,
              as_json, sets) -> None:  # fmt: skip
    """Serve a zoo workload on a server: MLPerf offline throughput, or the highest QPS whose p99 meets a bound.

    Batch latencies come from the engine (the workload compiled per bucket batch size); queries, batching, host
    CPU, PCIe switch tree and cards are a discrete-event simulation."""
    from mtiasim.gcpolicy import deferred_collections
    from mtiasim.progress import Progress

    # torch and the model are imported and built next, and live until the process ends (`gcpolicy`)
    with deferred_collections() as settle, Progress(enabled=not as_json, total=None) as bar:
        from mtiasim.serve.run import serve_workload

        res = serve_workload(
            workload,
            server=server_name or DEFAULT_SERVER,
            scenario=scenario or DEFAULT_SCENARIO,
            p99_ms=p99_ms,
            queries=queries,
            seed=seed,
            window_ms=window_ms,
            max_batch=max_batch,
            precision=precision,
            report_dir=report_dir,
            progress=_settling(settle, bar.step),
            sets=sets,
        )
    if as_json:
        _emit_json(res)
        return
    _print_serve(res)


def _print_serve(res: dict) -> None:
    """`mtiasim serve`'s text: the headline figures, where the model lives, the cards' and host's load."""
    bound = f" (bound {res['latency_bound_ms']:g} ms)" if res["latency_bound_ms"] is not None else ""
    click.echo(
        f"{res['workload']} on {res['server']} ({res['cards']} x {res['chip']}), {res['scenario']} scenario"
    )
    click.echo(f"  queries/s   {res['queries_per_s']:,.1f}   samples/s {res['samples_per_s']:,.0f}")
    click.echo(f"  latency     p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms{bound}")
    click.echo(
        f"  power       platform {res['platform_power_w']:.1f} W (cards {res['cards_power_w']:.1f} W): "
        f"{res['samples_per_s_per_w']:,.1f} samples/s/W"
    )
    click.echo(f"  compute     {res['flops_per_s'] / 1e12:.2f} TFLOP/s")
    if line := _overrides_line(res):
        click.echo(f"  cards' chip {line}")
    sharding = res["sharding"]
    if sharding.get("kinds"):  # a sharding plan (a replicated model has no kinds)
        kinds = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in sharding["kinds"].items() if n)
        per_card = sharding["bytes_per_card"]
        click.echo(
            f"  sharded     {len(sharding['tables'])} tables ({kinds}), {min(per_card) / 1e9:.2f}..{max(per_card) / 1e9:.2f} "
            "GB per card; dense data parallel after the all-to-all"
        )
    busy = [c["utilization"] for c in res["per_card"]]
    click.echo(
        f"  cards busy  {min(busy) * 100:.1f}..{max(busy) * 100:.1f} %; host CPU {res['host']['utilization'] * 100:.1f} %"
    )
    if "report" in res:
        click.echo(f"  report      {res['report']}")


# ------------------------------------------------------------------------------------------------ bench


@cli.group()
def bench() -> None:
    """Microbenchmarks of single operators."""


def _common(f):
    f = _set_option(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)
    f = click.option(
        "--trace", "trace_path", default=None, help="Write a Perfetto trace (Chrome JSON) of the run to FILE."
    )(f)
    f = click.option("--mode", default="timing", show_default=True, help="timing, functional or both.")(f)
    f = click.option("--fidelity", default="event", show_default=True, help="roofline, analytic or event.")(f)
    f = click.option(
        "--chip", "chip_name", default="mtia-v1", show_default=True, help="Preset name or .toml file."
    )(f)
    return f


@bench.command("gemm")
@click.option("--m", type=int, required=True)
@click.option("--k", type=int, required=True)
@click.option("--n", type=int, required=True)
@click.option("--dtype", default="int8", show_default=True, help="int8, fp16 or bf16.")
@click.option(
    "--placement",
    default="sram",
    show_default=True,
    help="sram, dram (LPDDR5 via the SRAM cache, as ISCA'23 ran FC), dram-cached or dram-direct.",
)
@click.option(
    "--out-dtype", default=None, help="Output dtype (default: int8 requantized, or the input's float)."
)
@click.option(
    "--variant", default="auto", show_default=True, help="auto, ws (weight-stationary) or os (streaming)."
)
@click.option(
    "--in-flight",
    type=int,
    default=None,
    help="Launches in flight (GemmBench's numAsyncLaunches), each with its own A and C (default: the assumed "
    "paper set-up).",
)
@_common
def bench_gemm_cmd(m, k, n, dtype, placement, out_dtype, variant, in_flight, chip_name, fidelity, mode,
                   trace_path, as_json, sets) -> None:  # fmt: skip
    """C[M,N] = A[M,K] @ W[N,K].T on the chip."""
    from mtiasim.bench.core import LAUNCHES_IN_FLIGHT
    from mtiasim.bench.gemm import prepare_gemm

    chip = _chip(chip_name, sets)
    prep = prepare_gemm(m, k, n, dtype, placement, chip, fidelity, mode, out_dtype, variant,
                        in_flight=in_flight if in_flight is not None else LAUNCHES_IN_FLIGHT)  # fmt: skip
    _finish_bench(prep, f"gemm {m}x{k}x{n} {dtype}", trace_path, as_json)


def _finish_bench(prep, name: str, trace_path: str | None, as_json: bool) -> None:
    """Run a prepared benchmark, write its trace if asked, print it."""
    from mtiasim.progress import Progress

    if trace_path and prep.mode == "functional":
        raise UsageError("--trace needs a timed run: use --mode timing or both")
    with Progress(enabled=not as_json) as bar:
        bar.step(f"simulating {name}")
        res, result = prep.run_with_result()
        if trace_path:
            from mtiasim.report.trace import chrome_trace, write_trace

            bar.step("writing the trace")
            trace = chrome_trace(prep.chip, result.timing, name=name)
            res["trace"] = {"path": trace_path, "bytes": write_trace(trace_path, trace)}
    _emit_json(res) if as_json else _print_bench(res)
    _raise_if_failed(res, as_json)


@bench.command("tbe")
@click.option("--batch", type=int, required=True)
@click.option("--pooling", type=int, required=True, help="Lookups per bag.")
@click.option("--rows", type=int, required=True, help="Rows per table.")
@click.option("--dim", type=int, required=True)
@click.option(
    "--tables", type=int, default=None, help="Number of tables (default: the assumed paper set-up)."
)
@click.option(
    "--placement", default="cache", show_default=True, help="cache (LPDDR5 via the SRAM cache), sram or dram."
)
@click.option("--distribution", default="uniform", show_default=True, help="uniform or zipf.")
@click.option("--alpha", type=float, default=1.05, show_default=True, help="Zipf exponent.")
@click.option("--weighted", is_flag=True, help="Per-sample weights.")
@click.option("--pool-mode", default="sum", show_default=True, help="sum, mean or max.")
@click.option(
    "--warm", default="distribution", show_default=True, help="distribution, same or cold SRAM cache."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--in-flight",
    type=int,
    default=None,
    help="Launches in flight (TBEBench's numAsyncLaunches), run as one job (default: the assumed paper set-up).",
)
@_common
def bench_tbe_cmd(
    batch,
    pooling,
    rows,
    dim,
    tables,
    placement,
    distribution,
    alpha,
    weighted,
    pool_mode,
    warm,
    seed,
    in_flight,
    chip_name,
    fidelity,
    mode,
    trace_path,
    as_json,
    sets,
) -> None:
    """Table-batched EmbeddingBag on int8 FBGEMM rows."""
    from mtiasim.bench.tbe import DEFAULT_TABLES, LAUNCHES_IN_FLIGHT, prepare_tbe

    prep = prepare_tbe(
        batch,
        pooling,
        rows,
        dim,
        tables if tables is not None else DEFAULT_TABLES,
        placement,
        distribution,
        alpha,
        weighted,
        pool_mode,
        warm,
        _chip(chip_name, sets),
        fidelity,
        mode,
        seed,
        in_flight=in_flight if in_flight is not None else LAUNCHES_IN_FLIGHT,
    )
    _finish_bench(prep, f"tbe B{batch} L{pooling} rows {rows} D{dim}", trace_path, as_json)


@bench.command("op")
@click.argument("op")
@click.option("--m", type=int, default=256, show_default=True)
@click.option("--k", type=int, default=128, show_default=True)
@click.option("--n", type=int, default=32, show_default=True)
@click.option(
    "--placement",
    default="sram",
    show_default=True,
    help="sram, dram (LPDDR5, SRAM cache bypassed, as ISCA'23 Fig 13), dram-cached or dram-direct.",
)
@click.option("--dtype", default=None, help="Float dtype (default fp32 for quantize/dequantize, else fp16).")
@_common
def bench_op_cmd(op, m, k, n, placement, dtype, chip_name, fidelity, mode, trace_path, as_json, sets) -> None:
    """batchmatmul, transpose, concat, quantize, dequantize, tanh, sigmoid, relu on a [m, k, n] tensor."""
    from mtiasim.bench.ops import prepare_op

    prep = prepare_op(op, m, k, n, placement, dtype, _chip(chip_name, sets), fidelity, mode)
    _finish_bench(prep, f"{op} {m}x{k}x{n}", trace_path, as_json)


@bench.command("suite")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one object per row (the default output).")
@_set_option
def bench_suite_cmd(path: str, as_json: bool, sets: tuple[str, ...]) -> None:
    """Run every row of a CSV (column `kind`: gemm, tbe, op; other columns: the flags); --set applies to every
    row's chip."""
    from mtiasim.bench.suite import read_rows, run_row
    from mtiasim.hw.chip import parse_sets

    overrides = parse_sets(sets)
    failed, rows = [], read_rows(path)
    for line, row in rows:
        res = run_row(row, f"{path}:{line}", overrides=overrides)
        _emit_json(res)
        if _check_verdict(res) is not None:
            failed.append(f"{path}:{line}")
    if failed:
        raise CheckFailed(f"{', '.join(failed)} ({len(failed)} of {len(rows)} rows)", quiet=as_json)


# -------------------------------------------------------------------------------------------------- run


@cli.command("run")
@click.argument("workload")
@config_options(
    "inputs", "batch", "chip", "precision", "mode", "fidelity", "check", "quantization", "max_rows", "seed",
    "warmup", "distribution", "trace", "trace_aggregate", "report_dir", "fallback",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_set_option
def run_cmd(workload: str, as_json: bool, **options: Any) -> None:
    """Compile a model and run one batch on the simulated chip.

    WORKLOAD is a zoo workload (e.g. dlrm-kaggle; an unknown name lists them all), a
    torch.export archive (FILE.pt2, from torch.export.save) or FILE.py:FUNCTION, a function that returns
    (model, args) or (model, args, kwargs)."""
    from mtiasim.gcpolicy import deferred_collections
    from mtiasim.progress import Progress

    # torch and the model are imported and built next, and live until the process ends (`gcpolicy`)
    with deferred_collections() as settle:
        from mtiasim.run.config import RunConfig
        from mtiasim.run.workload import run_workload

        config = RunConfig.from_options(workload, options)
        config = config.replace(chip=config.chip_model(), sets=())  # a bad chip or --set fails first
        steps = 3 + max(config.warmup, 0) + bool(config.check) + bool(config.trace) + bool(config.report_dir)
        with Progress(enabled=not as_json, total=steps) as bar:
            res = run_workload(config, progress=_settling(settle, bar.step))
    _emit_json(res) if as_json else _print_run(res)
    verdict = _check_verdict(res)
    if verdict is not None:
        raise CheckFailed(f"{verdict} (PyTorch on the CPU)", quiet=as_json)


def _settling(settle: Callable[[], None], step: Callable[[str], None]) -> Callable[[str], None]:
    """`step`, settling the garbage collector first (`gcpolicy`: the imports and the model are built by then)."""

    def settled_step(what: str) -> None:
        settle()
        step(what)

    return settled_step


def _print_run(res: dict[str, Any]) -> None:
    click.echo(
        f"{res['workload']} batch {res['batch']} on {res['chip']} ({res['precision']}, {res['mode']}, "
        f"{res['fidelity']}; tables {res['table_rows']})"
    )
    if (line := _overrides_line(res)) is not None:
        click.echo(f"  overrides   {line}")
    if res["latency_us"] is None:
        click.echo("  latency     not timed (functional mode)")
    else:
        click.echo(
            f"  latency     {res['latency_us']:.2f} us   (host {res['host_us']:.1f}, PCIe in {res['h2d_us']:.1f}, "
            f"device {res['device_us']:.1f}, PCIe out {res['d2h_us']:.1f})"
        )
    if res["samples_per_s"] is not None:
        click.echo(f"  throughput  {res['samples_per_s']:,.0f} samples/s")
    if "avg_power_w" in res:
        pw = res["samples_per_s_per_w"]
        click.echo(
            f"  power       chip {res['avg_power_w']:.2f} W avg, {res['peak_power_w']:.2f} W peak; "
            f"card {res['card_power_w']:.2f} W; platform {res['platform_power_w']:.2f} W"
        )
        click.echo(
            f"  energy      {1e6 * res['energy_j']:.1f} uJ per batch (chip); samples/s/W: chip {pw['chip']:,.0f}, "
            f"card {pw['card']:,.0f}, platform {pw['platform']:,.0f}"
        )
        chip_j = {k: v for k, v in res["energy_breakdown_j"].items() if not k.startswith("card_")}
        total_j = sum(chip_j.values()) or 1.0
        top = sorted(chip_j.items(), key=lambda kv: -kv[1])[:6]
        click.echo("  chip energy " + ", ".join(f"{k} {100 * v / total_j:.0f}%" for k, v in top))
        for warning in res.get("power_warnings", []):
            click.echo(f"  warning     {warning}")
    peak = "" if res["mac_utilization"] is None else f", {100 * res['mac_utilization']:.1f} % of the DPE peak"
    click.echo(f"  MACs        {res['macs']:.4g} per batch{peak}")
    if res["bound"] is not None:
        att = res.get("attribution_detail_us") or res["attribution_us"]
        total = sum(att.values()) or 1.0
        shares = ", ".join(
            f"{k} {100 * v / total:.0f}%"
            for k, v in sorted(att.items(), key=lambda kv: -kv[1])
            if v / total >= 0.005
        )
        click.echo(f"  bound       {res['bound']}   (time in {shares})")
    click.echo("  memory plan")
    for line in res["memory_plan"]:
        click.echo("    " + line)
    if res["ops"]:
        click.echo(
            f"  {'op':28s} {'kind':14s} {'lane':6s} {'PEs':>4s} {'start us':>10s} {'time us':>10s}  bound"
        )
    for op in res["ops"]:
        click.echo(
            f"  {op['name'][:28]:28s} {op['kind'][:14]:14s} {op['lane']:6s} {op['pes']:4d} {op['start_us']:10.2f} "
            f"{op['time_us']:10.2f}  {op['bound']}"
        )
    for key, what in (("trace", "trace"), ("report", "report")):
        if key in res:
            where = res[key]["path"] if isinstance(res[key], dict) else res[key]
            click.echo(f"  {what:<11s} {where}")
    for o in (res.get("numerics") or {}).get("outputs", []):
        click.echo(
            f"  numerics    {o['output']}: max abs err vs fp32 {o['max_abs_err']:.3g}, expected (1 sigma) "
            f"{o['max_sigma']:.3g}, bound {o['max_bound']:.3g}{_unbounded_text(o)}"
        )
    for line in res.get("numerics_warnings") or []:
        click.echo(f"  warning     {line}")
    if "check" in res:
        c = res["check"]
        errors = f"  check       max abs err {c['max_abs_err']:.3g}, max rel err {c['max_rel_err']:.3g}"
        finite = _finite_elements(c)
        if c["passed"] and finite > 0 and c.get("unbounded", 0) >= finite:
            click.echo(
                f"{errors}; no element is bounded ({finite:,} of {finite:,} unbounded: the worst-case bound "
                f"exceeds the range, docs/numerics.md), so the bound checks nothing; the error is "
                f"{c['max_err_over_sigma']:.2g}x the expected (1 sigma)"
            )
        else:
            verdict = "passed" if c["passed"] else "FAILED"
            click.echo(
                f"{errors}, every element within its bound (docs/numerics.md){_unbounded_text(c)}: {verdict}"
            )


def _finite_elements(o: dict[str, Any]) -> int:
    """Elements of a check (or of one output) whose fp32 reference is finite: those a bound can bound."""
    return o.get("elements", 0) - o.get("nonfinite_reference", 0)


def _unbounded_text(o: dict[str, Any]) -> str:
    """The " (N of M elements unbounded)" of a check or output whose bound is infinite for some elements."""
    n = o.get("unbounded", 0)
    return f" ({n:,} of {_finite_elements(o):,} elements unbounded)" if n else ""


# ------------------------------------------------------------------------------------- sweep and explore

DEFAULT_OBJECTIVES = ("samples_per_s_per_w:max", "area_mm2:min")
# the RunConfig fields a study's options set (its --report and --csv are the study's own outputs)
STUDY_RUN_FIELDS = ("chip", "sets", "batch", "precision", "fidelity")
STUDY_SERVE_FIELDS = ("server", "scenario", "p99_ms", "queries")


def _study_options(f):
    """The options `sweep` and `explore` share: what each trial runs, what it is judged by, where it is stored
    and run, and what is written."""
    for decorator in reversed(
        (
            config_options(*STUDY_RUN_FIELDS),
            click.option(
                "--over",
                default="run",
                show_default=True,
                help="What a trial is: run (one timed batch, `mtiasim run`) or serve (`mtiasim serve` on a "
                "server whose cards carry the trial's values).",
            ),
            config_options(*STUDY_SERVE_FIELDS),
            click.option(
                "--objective",
                "objectives",
                multiple=True,
                metavar="NAME:max|min",
                help="Repeatable; default samples_per_s_per_w:max and area_mm2:min. Metrics: ",
                cls=_HelpThenNames,
                names=_metric_names,
            ),
            click.option(
                "--storage",
                default=None,
                help="Optuna RDB storage URL (default sqlite:///study.db); rerunning the command resumes.",
            ),
            click.option(
                "--study", "study_name", default=None, help="Study name (default: from the command)."
            ),
            click.option(
                "--workers",
                type=int,
                default=1,
                show_default=True,
                help="Local worker processes (a sweep runs max(8, K) trials at a time, also on Ray).",
            ),
            click.option(
                "--ray",
                "ray_address",
                default=None,
                metavar="ADDRESS",
                help="Run trials as Ray tasks on this cluster (auto, HOST:PORT, ray://..., local); mtiasim[ray].",
            ),
            click.option(
                "--json", "as_json", is_flag=True, help="One JSON object per trial, then the summary."
            ),
            click.option(
                "--report", "report_dir", default=None, help="Write an HTML page (index.html) to DIR."
            ),
            click.option("--csv", "csv_path", default=None, help="Write the trial table as CSV to FILE."),
        )
    ):
        f = decorator(f)
    return f


class _HelpThenNames(click.Option):
    """An option whose help ends with a list of names that `names()` gives when the help is shown, not when the
    command line is built (the names of study metrics import the study modules, which other commands need not)."""

    def __init__(self, *args: Any, names: Callable[[], list[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._names = names

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        head = self.help or ""
        self.help = head + ", ".join(self._names())
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = head


def _metric_names() -> list[str]:
    from mtiasim.explore.metrics import EVALUATORS

    return list(dict.fromkeys(m for e in EVALUATORS.values() for m in e.metrics))


def _study_config(workload: str, opts: dict[str, Any]):
    """The RunConfig every trial runs; the serving options apply to --over serve only (default server and
    scenario filled in), and --chip does not (the server's cards set the chip)."""
    from mtiasim.run.config import RunConfig

    config = RunConfig.from_options(workload, opts, STUDY_RUN_FIELDS + STUDY_SERVE_FIELDS)
    given = {k: opts[k] for k in ("server_name", "scenario", "p99_ms", "queries") if opts[k] is not None}
    if opts["over"] != "serve":
        if given:
            flag = "--" + next(iter(given)).replace("_name", "").replace("_", "-")
            raise UsageError(f"{flag} applies to --over serve")
        return config
    if opts["chip_name"] != "mtia-v1":
        raise UsageError("--chip does not apply to --over serve: the server's cards set the chip (--server)")
    return config.replace(
        server=config.server or DEFAULT_SERVER, scenario=config.scenario or DEFAULT_SCENARIO
    )


def _run_study(kind: str, workload: str, params, trials: int | None, opts: dict[str, Any], **spec_kw) -> None:
    from mtiasim.explore.metrics import evaluator
    from mtiasim.explore.output import summary, write_csv, write_page
    from mtiasim.explore.space import check_params, grid_size, parse_objective, value_text
    from mtiasim.explore.study import StudySpec, record, run_study
    from mtiasim.report.html import num_text

    source = evaluator(opts["over"])
    run = _study_config(workload, opts)
    if run.server is None:
        base = _chip(opts["chip_name"], opts["sets"])
    else:
        from mtiasim.hw import load_server
        from mtiasim.hw.chip import chip_with_sets

        base = chip_with_sets(load_server(run.server).chip(), opts["sets"])
    option = "--grid" if kind == "sweep" else "--param"
    check_params(params, base, option)
    objectives = [parse_objective(o, source.metrics) for o in (opts["objectives"] or DEFAULT_OBJECTIVES)]
    if len({o.metric for o in objectives}) != len(objectives):
        raise UsageError("--objective: a metric is given twice")
    spec = StudySpec(kind, opts["over"], run, tuple(params), tuple(objectives), **spec_kw)
    as_json = opts["as_json"]
    names = [p.key for p in params]

    def show(t) -> None:  # each trial as it is told, flushed: a reader (or a log) sees it at once
        r = record(t)
        if as_json:
            _emit_json(r.to_json(objectives))
            sys.stdout.flush()
            return
        vals = " ".join(f"{k}={value_text(k, r.params[k])}" for k in names if k in r.params)
        got = (
            " ".join(f"{o.metric}={num_text(v)}" for o, v in zip(objectives, r.values, strict=True))
            if r.values is not None
            else f"failed: {r.error}"
        )
        click.echo(f"trial {r.number:4d}  {vals}  {got}")
        sys.stdout.flush()

    study = run_study(
        spec,
        trials if trials is not None else grid_size(params),
        storage=opts["storage"],
        name=opts["study_name"],
        workers=opts["workers"],
        ray_address=opts["ray_address"],
        on_trial=show,
    )
    if opts["csv_path"]:
        write_csv(study, opts["csv_path"])
    if opts["report_dir"]:
        page = write_page(study, opts["report_dir"])
    doc = summary(study)
    if as_json:
        _emit_json(doc)
        return
    click.echo(
        f"study {doc['study']} in {doc['storage']}: {doc['complete']} complete, {doc['failed']} failed; "
        f"Pareto front ({', '.join(o.text for o in objectives)}): {len(doc['pareto_front'])} trials"
    )
    for row in doc["pareto_front"]:
        vals = " ".join(f"{k}={value_text(k, v)}" for k, v in row["params"].items())
        got = " ".join(f"{k}={num_text(v)}" for k, v in row["objectives"].items())
        click.echo(f"  trial {row['trial']:4d}  {vals}  {got}")
    if opts["csv_path"]:
        click.echo(f"  csv         {opts['csv_path']}")
    if opts["report_dir"]:
        click.echo(f"  report      {page}")


@cli.command("sweep")
@click.argument("workload")
@click.option(
    "--grid",
    "grids",
    multiple=True,
    required=True,
    metavar="KEY=V1,V2,...",
    help="Chip values to sweep (repeatable; the full grid of all of them is run, in order).",
)
@_study_options
def sweep_cmd(workload: str, grids: tuple[str, ...], **opts: Any) -> None:
    """Run WORKLOAD on every point of a grid of chip values; store, print and export the results."""
    from mtiasim.explore.space import parse_grid

    base = _chip(opts["chip_name"], opts["sets"])
    params = [parse_grid(g, base) for g in grids]
    _run_study("sweep", workload, params, None, opts, population=max(8, opts["workers"]))


@cli.command("explore")
@click.argument("workload")
@click.option(
    "--param",
    "ranges",
    multiple=True,
    required=True,
    metavar="KEY=LOW..HIGH",
    help="A chip value to search, e.g. sram.bytes=32MiB..256MiB (repeatable).",
)
@click.option("--trials", type=int, required=True, help="Finished trials the study ends with, in total.")
@click.option("--sampler", default="nsga2", show_default=True, help="nsga2 (NSGA-II) or random.")
@click.option("--population", type=int, default=8, show_default=True, help="NSGA-II population (a batch).")
@click.option("--seed", type=int, default=0, show_default=True, help="The sampler's seed.")
@_study_options
def explore_cmd(workload: str, ranges: tuple[str, ...], trials: int, sampler: str, population: int, seed: int,
                **opts: Any) -> None:  # fmt: skip
    """Search chip values for the best trade-offs of the objectives (multi-objective, Optuna NSGA-II)."""
    from mtiasim.explore.space import parse_range

    base = _chip(opts["chip_name"], opts["sets"])
    params = [parse_range(r, base) for r in ranges]
    _run_study("explore", workload, params, trials, opts, sampler=sampler, seed=seed, population=population)


# -------------------------------------------------------------------------------------------------- ops


@cli.command("ops")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ops_cmd(as_json: bool) -> None:
    """The operator set: every operator the chip runs, its unit, the aten ops that become it, its numerics;
    then every Core ATen operator: on the chip (which unit), decomposed, on the host, or not supported."""
    from mtiasim.frontend.aten import supported_ops
    from mtiasim.frontend.coverage import core_aten_coverage
    from mtiasim.opset import SPECS

    converted = supported_ops()
    rows = []
    for kind, spec in SPECS.items():
        e = spec.elementwise
        rows.append(
            {
                "op": kind.value,
                "unit": spec.unit.value,
                "aten": sorted(f"aten::{a}" for a in e.aten) if e is not None else [],
                "doc": spec.doc,
                **(
                    {
                        "se_ops_per_element": e.se_ops,
                        "abs_error": e.abs_error,
                        "rel_error": e.rel_error,
                        "epilogue": e.epilogue,
                    }
                    if e is not None
                    else {}
                ),
            }
        )
    core = core_aten_coverage()
    counts = {s: sum(1 for c in core if c.status == s) for s in ("chip", "decomposed", "host", "none")}
    if as_json:
        _emit_json(
            {
                "ops": rows,
                "aten_converted": converted,
                "core_aten": [{"op": c.op, "status": c.status, "unit": c.unit} for c in core],
                "core_aten_counts": counts,
            }
        )
        return
    click.echo(f"{'op':14s} {'unit':5s} what")
    for r in rows:
        click.echo(f"{r['op']:14s} {r['unit']:5s} {r['doc']}")
    click.echo(f"{len(rows)} operators; {len(converted)} aten/quantized/fbgemm ops convert to them")
    click.echo("")
    click.echo(f"Core ATen ({len(core)} ops): " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    for c in core:
        click.echo(f"  {c.op:44s} {c.status:10s} {c.unit}")


# --------------------------------------------------------------------------------------------- validate


@cli.command("validate")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--family", "families", multiple=True, help="fc_sram, fc_dram, tbe, ops (default: all).")
@click.option("--fidelity", default="event", show_default=True)
@click.option("--chip", "chip_name", default="mtia-v1", show_default=True)
@click.option(
    "--cv",
    is_flag=True,
    help="Also cross-validate: leave one group out (by family, data type, placement, dimension, table size), "
    "re-fit the calibrated constants on the rest, predict the group (minutes).",
)
@click.option(
    "--sensitivity",
    is_flag=True,
    help="Also show how each prediction moves with each calibrated constant +-10 %.",
)
@click.option(
    "--cv-grouping",
    "cv_groupings",
    multiple=True,
    help="With --cv: only these groupings (family, dtype, placement, dimension, table_size; default: all).",
)
@click.option("--cv-steps", default=4, show_default=True, help="With --cv: most re-fit steps per fold.")
@click.option("--processes", default=2, show_default=True, help="Processes for --cv and --sensitivity.")
def validate_cmd(
    as_json: bool,
    families,
    fidelity: str,
    chip_name: str,
    cv: bool,
    sensitivity: bool,
    cv_groupings,
    cv_steps: int,
    processes: int,
) -> None:
    """Compare predictions with published MTIA v1 silicon measurements (ISCA'23).

    With --family, --cv and --sensitivity use only those families' cases (fitting and holding out within them).
    """
    from mtiasim.hw import load_chip
    from mtiasim.progress import Progress
    from mtiasim.validate import (
        CV_GATE_MAPE_PCT,
        FAMILIES,
        GATE_EXCEPTIONS_PCT,
        GATE_MAPE_PCT,
        cases,
        explain_line,
        validate,
    )

    for f in families:
        if f not in FAMILIES:
            raise UsageError(f"--family: unknown family {f!r} (known: {', '.join(FAMILIES)})")
    if (cv or sensitivity) and fidelity != "event":
        raise UsageError(
            "--cv and --sensitivity re-time the event fidelity the constants are fitted for; drop --fidelity"
        )
    if isinstance(processes, bool) or processes < 1 or processes > 64:
        raise UsageError(f"--processes: expected 1..64, got {processes}")
    from mtiasim.validate.fit import GROUPINGS

    for g in cv_groupings:
        if g not in GROUPINGS:
            raise UsageError(f"--cv-grouping: unknown grouping {g!r} (known: {', '.join(GROUPINGS)})")
    if cv_steps < 0 or cv_steps > 50:
        raise UsageError(f"--cv-steps: expected 0..50, got {cv_steps}")
    chosen = [c for c in cases() if not families or c.family in families]
    chip = load_chip(chip_name)
    total = len(chosen)
    with Progress(enabled=not as_json, total=total) as bar:
        report = validate(
            chip, fidelity, families or None, progress=lambda i, n, case: bar.update(case.label, i)
        )
    doc = report.to_json()
    cv_doc = sens_doc = None
    if cv:
        from mtiasim.validate.fit import cv_report

        with Progress(enabled=not as_json) as bar:
            cv_doc = cv_report(
                chip,
                processes,
                groupings=cv_groupings or GROUPINGS,
                max_iter=cv_steps,
                todo=chosen if families else None,
                progress=bar.step,
            )
        for fam, st in doc["families"].items():
            st["cv_mape_pct"] = cv_doc["families"][fam]["cv_mape_pct"]
            st["cv_pearson_r"] = cv_doc["families"][fam]["cv_pearson_r"]
        doc["gate_cv_mape_pct"] = CV_GATE_MAPE_PCT
        doc["cv"] = {k: v for k, v in cv_doc.items() if k != "families"}
    if sensitivity:
        from mtiasim.validate.fit import sensitivity_report

        with Progress(enabled=not as_json):
            sens_doc = sensitivity_report(chip, processes, todo=chosen if families else None)
        doc["sensitivity"] = sens_doc
    if as_json:
        _emit_json(doc)
        return
    click.echo(f"{'family':8s} {'case':34s} {'published':>10s} {'predicted':>10s} {'error':>8s}  bound")
    for c in report.cases:
        click.echo(
            f"{c['family']:8s} {c['case']:34s} {c['published']:10.2f} {c['predicted']:10.2f} "
            f"{c['error_pct']:+7.1f}%  {explain_line(c['explain'])}"
        )
    click.echo("")
    click.echo(
        f"{'family':8s} {'cases':>5s} {'MAPE':>8s} {'Pearson r':>10s}   (gate: MAPE <= {GATE_MAPE_PCT:.0f}%"
        + "".join(f", {f} {g:.0f}%" for f, g in GATE_EXCEPTIONS_PCT.items())
        + ")"
    )
    for fam, st in report.families.items():
        click.echo(f"{fam:8s} {st.cases:5d} {st.mape_pct:7.2f}% {st.pearson_r:10.4f}")
    per_w = {f: st for f, st in report.families.items() if st.per_w_mape_pct is not None}
    if per_w:
        click.echo("")
        click.echo(
            f"{'per watt':8s} {'cases':>5s} {'MAPE':>8s}   (modelled platform power; with the paper's fixed 65 W)"
        )
        for fam, st in per_w.items():
            click.echo(f"{fam:8s} {st.cases:5d} {st.per_w_mape_pct:7.2f}%   ({st.per_w_paper_mape_pct:.2f}%)")
    if cv_doc is not None:
        _echo_cv(cv_doc, families, CV_GATE_MAPE_PCT)
    if sens_doc is not None:
        _echo_sensitivity(sens_doc, families)


def _echo_cv(cv_doc: dict[str, Any], families, gate: float) -> None:
    fams = [f for f in cv_doc["families"] if not families or f in families]
    click.echo("")
    click.echo(
        f"cross-validation: leave one group out, re-fit on the rest ({len(cv_doc['folds'])} folds, "
        f"{cv_doc['evaluations']} evaluations, {cv_doc['seconds']:.0f} s)"
    )
    click.echo(
        f"{'family':8s} {'MAPE':>8s} {'r':>7s} {'CV MAPE':>8s} {'CV r':>7s}   (gate: CV MAPE <= {gate:.0f}%)"
    )
    for f in fams:
        st = cv_doc["families"][f]
        cm = "-" if st["cv_mape_pct"] is None else f"{st['cv_mape_pct']:.2f}%"
        cr = "-" if st["cv_pearson_r"] is None else f"{st['cv_pearson_r']:.4f}"
        click.echo(f"{f:8s} {st['mape_pct']:7.2f}% {st['pearson_r']:7.4f} {cm:>8s} {cr:>7s}")
    click.echo("held-out MAPE by grouping:")
    for g, per in cv_doc["groupings"].items():
        parts = [f"{f} {per[f]['cv_mape_pct']:.1f}%" for f in fams if f in per]
        click.echo(f"  {g:11s} " + ", ".join(parts))


def _echo_sensitivity(doc: dict[str, Any], families) -> None:
    click.echo("")
    click.echo(
        f"sensitivity: mean |change| of the predictions, each calibrated constant x{1 - doc['factor']:g} / "
        f"x{1 + doc['factor']:g}"
    )
    for k, st in doc["constants"].items():
        lo, hi = st["range"]
        click.echo(f"  {k} = {st['value']:.4g}  (range {lo:g}..{hi:g})")
        for f, fs in st["families"].items():
            if families and f not in families:
                continue
            m0, m1 = fs["most_moved_pct"]
            click.echo(
                f"    {f:8s} {fs['mean_abs_minus_pct']:6.2f}% / {fs['mean_abs_plus_pct']:6.2f}%   most: "
                f"{fs['most_moved']} ({m0:+.1f}% / {m1:+.1f}%)"
            )


def entry() -> None:
    """The `mtiasim` program (the console script and ``python -m mtiasim.cli``): `main`, then `end_process`."""
    end_process(main())


def end_process(code: int) -> None:
    """End the process with exit status `code` once the atexit handlers have run and stdout and stderr are
    flushed, without the interpreter's teardown of every module and object: with torch and a compiled model
    loaded that teardown took 0.3-0.5 s of a ~6 s `run`, and does nothing a finished command needs.
    Where another thread still runs, the normal exit waits for it instead."""
    import atexit
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit status (see the module doc). Never raises, never prints a traceback
    unless --debug."""
    DEBUG["on"] = False
    code = _run(argv)
    if code != EXIT_BROKEN_PIPE:
        try:
            sys.stdout.flush()
        except OSError as err:  # what was still buffered could not be written either
            code = _output_failed(err)
    return code


def _run(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="mtiasim", standalone_mode=False)
        return EXIT_OK
    except CheckFailed as err:
        if not err.quiet:
            _say(f"mtiasim: check failed: {err}")
        return EXIT_CHECK_FAILED
    except MtiasimError as err:
        _traceback_if_debug()
        _say(f"mtiasim: error: {err}")
        return EXIT_BAD_INPUT
    except click.exceptions.Abort:
        _say("mtiasim: aborted")
        return EXIT_INTERRUPTED
    except click.ClickException as err:
        _traceback_if_debug()
        ctx = getattr(err, "ctx", None)
        where = f" ({ctx.command_path})" if ctx is not None else ""
        _say(f"mtiasim: error{where}: {err.format_message()}")
        return EXIT_BAD_INPUT
    except click.exceptions.Exit as ex:
        return ex.exit_code
    except OutputError as err:
        return _output_failed(err.err)
    except Exception as err:  # an internal bug: still one line, the traceback on request
        return _internal(err)


def _say(line: str) -> None:
    """One line on stderr (newlines inside a message are folded: a message is one line)."""
    with contextlib.suppress(OSError):  # stderr itself is gone: nothing more to say
        click.echo(" ".join(line.splitlines()), err=True)


def _traceback_if_debug() -> None:
    if DEBUG["on"]:
        traceback.print_exc(file=sys.stderr)


def _internal(err: BaseException) -> int:
    _traceback_if_debug()
    _say(
        f"mtiasim: internal error: {type(err).__name__}: {err} "
        "(please report this bug; rerun with --debug for the traceback)"
    )
    return EXIT_INTERNAL


def _from_output(err: OSError) -> bool:
    """Whether `err` was raised writing the command's output (click.echo to stdout)."""
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is click.utils.echo.__code__:
            return True
        tb = tb.tb_next
    return False


def _output_failed(err: OSError) -> int:
    """stdout cannot be written: a closed pipe (`| head`) ends quietly with 141, as a tool killed by SIGPIPE;
    anything else (a full disk) is one line and status 2. Either way stdout is pointed at /dev/null so that
    Python's own flush at exit has nothing left to fail on."""
    _silence_stdout()
    if isinstance(err, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    _traceback_if_debug()
    _say(f"mtiasim: error: cannot write the output: {err.strerror or err}")
    return EXIT_BAD_INPUT


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture): nothing to do
        pass


# -------------------------------------------------------------------------------------------------- shard


@cli.command("shard")
@click.argument("workload")
@click.option(
    "--server", "server_name", default=DEFAULT_SERVER, show_default=True, help="Server preset or TOML file."
)
@click.option("--batch", type=int, default=64, show_default=True, help="Samples per batch.")
@click.option("--precision", default="int8", show_default=True, help="Table precision: int8 or fp32.")
@click.option(
    "--estimator", default="bytes", show_default=True, help="TBE time: bytes (DRAM roofline) or tbe."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def shard_cmd(workload, server_name, batch, precision, estimator, as_json) -> None:
    """Shard a zoo workload's embedding tables across a server's cards with torchrec's planner."""
    from mtiasim import workloads
    from mtiasim.hw import load_server
    from mtiasim.serve.sharding import ESTIMATORS, dense_bytes, plan_sharding, tables_of

    if estimator not in ESTIMATORS:
        raise UsageError(f"--estimator: unknown estimator {estimator!r} (known: {', '.join(ESTIMATORS)})")
    server = load_server(server_name)
    chip = server.chip()
    w = workloads.build(workload, batch=batch)
    plan = plan_sharding(
        tables_of(w),
        server,
        batch,
        precision,
        ESTIMATORS[estimator](chip),
        dense_bytes_per_card=dense_bytes(w, precision),
        chip=chip,
        link_bytes_per_s=server.topology.peer_gbps * 1e9,
        model=workload,
    )
    if as_json:
        _emit_json({"workload": workload, "server": server.name, "estimator": estimator, **plan.to_json()})
    else:
        click.echo(
            f"{workload}: {len(w.table_rows)} tables on {server.name}, {server.cards} cards x "
            f"{server.card_memory_bytes:,} B"
        )
        click.echo(plan.summary())


if __name__ == "__main__":  # pragma: no cover
    entry()
