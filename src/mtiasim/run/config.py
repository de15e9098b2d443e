"""One typed run configuration: what `mtiasim run` runs, defined once.

`RunConfig` feeds the command line (`mtiasim run`'s options, and those `serve`, `sweep` and `explore` share, are
generated from its fields: flag, default, help and choices come from here, `cli.config_options`), the Python API
(`run_workload(RunConfig(...))`) and design studies (every trial of a `sweep`/`explore` study runs the study's
RunConfig with the trial's chip values; `--over serve` trials serve it on `server`).

A field's `Option` says how it is spelled on the command line; fields without one (`workload`, the positional
argument) are not options. Values are checked where they are used (`run_workload`, `serve_workload`), with the
flag's name in the one-line error, so that a configuration built in Python fails as the command line does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mtiasim.hw import Chip
from mtiasim.hw.chip import chip_with_sets, parse_sets

DEFAULT_BATCH, DEFAULT_SEED, DEFAULT_DISTRIBUTION = 256, 0, "uniform"
DEFAULT_SERVER, DEFAULT_SCENARIO = "yosemite-v3", "server"
DEFAULT_P99_MS = 60.0  # MLPerf Inference dlrm-v2 server latency bound (mlperf.conf)
DEFAULT_QUERIES = 20_000
FALLBACKS = ("host",)

SET_HELP = (
    "Override a chip value, e.g. sram.bytes=256MiB, clock.frequency_ghz=1.1, dram.transfer_rate_mts=8533 "
    "(repeatable; keys as `mtiasim chip show` lists them; units KiB..GiB/KB..GB, GHz/MHz, MT/s, ns/us)."
)


@dataclass(frozen=True)
class Option:
    """How a RunConfig field is spelled on the command line."""

    flag: str  # e.g. "--max-rows"
    help: str
    param: str | None = None  # the command function's parameter, when not the field's name
    type: type = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    show_default: bool = False  # show the field's default in --help
    multiple: bool = False  # repeatable (`--set`)
    is_flag: bool = False


def _opt(default: Any, *args: Any, **kwargs: Any) -> Any:
    return field(default=default, metadata={"option": Option(*args, **kwargs)})


@dataclass(frozen=True)
class RunConfig:
    """What one run is: the workload, the chip (or, for `--over serve` studies, the server), the numerics, the
    zoo workload's shape, the warm-up, and what is written. Defaults are `mtiasim run`'s."""

    workload: str
    inputs: str | None = _opt(
        None,
        "--inputs",
        'FILE.pt2 only: torch.save of the args tuple or of {"args": ..., "kwargs": ...} (default: the archive\'s).',
        param="inputs_path",
        metavar="FILE",
    )
    batch: int | None = _opt(
        None, "--batch", f"Samples per batch (zoo workloads; default {DEFAULT_BATCH}).", type=int
    )
    chip: str | Chip = _opt(
        "mtia-v1", "--chip", "Preset name or a TOML file.", param="chip_name", show_default=True
    )
    sets: tuple[tuple[str, str], ...] = _opt(
        (), "--set", SET_HELP, metavar="KEY=VALUE", multiple=True
    )  # `--set` overrides (key, value text), applied to the chip in order
    precision: str = _opt("int8", "--precision", "int8, fp16 or bf16.", show_default=True)
    mode: str = _opt("timing", "--mode", "timing, functional or both.", show_default=True)
    fidelity: str = _opt("event", "--fidelity", "roofline, analytic or event.", show_default=True)
    check: bool = _opt(
        False, "--check", "Also compute the numbers and compare with PyTorch on the CPU.", is_flag=True
    )
    quantization: str = _opt(
        "static",
        "--quantization",
        "int8 scheme: static or dynamic activations, per-channel or per-tensor weights (e.g. dynamic,per-tensor).",
        show_default=True,
    )
    max_rows: int | None = _opt(
        None, "--max-rows", "Cap every table (default: full size in timing mode).", type=int
    )
    seed: int | None = _opt(
        None, "--seed", f"Seed of a zoo workload's weights and inputs (default {DEFAULT_SEED}).", type=int
    )
    warmup: int = _opt(1, "--warmup", "Batches run first to warm the cache.", type=int, show_default=True)
    distribution: str | None = _opt(
        None,
        "--distribution",
        f"A zoo workload's index distribution: {DEFAULT_DISTRIBUTION} (default), zipf.",
    )
    trace: str | None = _opt(
        None, "--trace", "Write a Perfetto trace (Chrome JSON) to FILE.", param="trace_path"
    )
    trace_aggregate: str = _opt(
        "auto",
        "--trace-aggregate",
        "none (every command), bins (per PE and unit, time-binned), auto (bins above ~100 MB).",
        show_default=True,
    )
    report_dir: str | None = _opt(None, "--report", "Write an HTML report (index.html + PNGs) to DIR.")
    fallback: str | None = _opt(
        None,
        "--fallback",
        "Run operators the chip has no kernel for on the host CPU (timed with the PCIe round trip).",
        choices=FALLBACKS,
    )
    # serving (`mtiasim serve`, `--over serve` studies): the server whose cards run the model, and the scenario
    server: str | None = _opt(
        None, "--server", f"Server preset or TOML file (default {DEFAULT_SERVER}).", param="server_name"
    )
    scenario: str | None = _opt(
        None, "--scenario", f"offline or server (MLPerf Inference; default {DEFAULT_SCENARIO})."
    )
    p99_ms: float | None = _opt(
        None,
        "--p99-ms",
        f"server scenario: the p99 latency bound in ms (default {DEFAULT_P99_MS:g}).",
        type=float,
    )
    queries: int | None = _opt(
        None, "--queries", f"Queries simulated per run (default {DEFAULT_QUERIES}).", type=int
    )

    @classmethod
    def from_options(
        cls, workload: str, options: dict[str, Any], names: tuple[str, ...] | None = None
    ) -> RunConfig:
        """The configuration of a command's options (keyed by their parameter names, as click passes them):
        those of the fields `names` (default: every field that is an option); the others keep their defaults.
        `--set` texts are parsed (ConfigError on a bad one)."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            opt = f.metadata.get("option")
            if opt is None or (names is not None and f.name not in names):
                continue
            key = opt.param or f.name
            if key in options:
                kwargs[f.name] = options[key]
        if "sets" in kwargs:
            kwargs["sets"] = tuple(parse_sets(kwargs["sets"]).items())
        return cls(workload, **kwargs)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def chip_model(self) -> Chip:
        """The chip to run on: the preset, file or Chip `chip`, with the `sets` overrides applied."""
        return chip_with_sets(self.chip, dict(self.sets))

    def to_json(self) -> dict[str, Any]:
        """The configuration's identity (a study's name hashes it): workload, chip, sets, batch, precision,
        fidelity and seed always; every other field only when it is not its default (so that the identity of a
        study made before that field existed is unchanged); the serving fields as `serve`."""
        out: dict[str, Any] = {
            "workload": self.workload,
            "chip": self.chip if isinstance(self.chip, str) else self.chip.name,
            "sets": [list(kv) for kv in self.sets],
            "batch": self.batch,
            "precision": self.precision,
            "fidelity": self.fidelity,
            "seed": self.seed,
        }
        serving = ("server", "scenario", "p99_ms", "queries")
        for f in dataclasses.fields(self):
            if f.name not in out and f.name not in serving and getattr(self, f.name) != f.default:
                out[f.name] = getattr(self, f.name)
        if self.server is not None:
            out["serve"] = {k: getattr(self, k) for k in serving}
        return out


def options(*names: str) -> list[tuple[str, Any, Option]]:
    """(field name, default, Option) of the named RunConfig fields, in the order given."""
    by_name = {f.name: f for f in dataclasses.fields(RunConfig)}
    return [(n, by_name[n].default, by_name[n].metadata["option"]) for n in names]
