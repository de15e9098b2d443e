"""The typed chip description: plain, validated values plus a provenance record for every one of them.

A preset is a TOML file whose leaves are tables ``{value, provenance, source, note}``. Loading checks every key
(unknown keys and impossible values are errors naming the key) and every provenance (a `published` value names
its source, a `derived` or `assumed` one says how or why in its note, a `calibrated` one names the script).
Code reads the plain values (``chip.dpe.int8_macs_per_cycle``); reports read ``chip.provenance``.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mtiasim.errors import ConfigError
from mtiasim.hw.units import coerce_text, units_hint

ProvenanceKind = Literal["published", "derived", "assumed", "calibrated", "user"]
PROVENANCE_KINDS: tuple[str, ...] = ("published", "derived", "assumed", "calibrated", "user")


@dataclass(frozen=True)
class Provenance:
    """Where one configuration value comes from. A `calibrated` value also carries the physical range the fit
    may move it in (`range`, inclusive) and where that range comes from (`range_source`)."""

    kind: str
    source: str | None = None
    note: str | None = None
    range: tuple[float, float] | None = None
    range_source: str | None = None

    def describe(self) -> str:
        parts = [self.kind]
        if self.source:
            parts.append(self.source)
        if self.note:
            parts.append(self.note)
        text = ": ".join(parts[:2]) + (f" ({parts[2]})" if len(parts) > 2 else "")
        if self.range is not None:
            text += f" [range {self.range[0]:g}..{self.range[1]:g}: {self.range_source}]"
        return text


class _Section(BaseModel):
    # numbers are finite (TOML has inf and nan) and never booleans (pydantic would take `true` for 1)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation is not bool:
            raise PydanticCustomError("number_type", "expected a number, not a boolean")
        return value


Section = _Section  # the base of a typed section, for the other descriptions of `hw` (cards, servers)


class Identity(_Section):
    process_nm: PositiveInt
    year: PositiveInt
    quotes_1024_based: bool


class Clock(_Section):
    frequency_ghz: PositiveFloat
    max_frequency_ghz: PositiveFloat

    @model_validator(mode="after")
    def _max_not_below_nominal(self) -> Clock:
        if self.max_frequency_ghz < self.frequency_ghz:
            raise ValueError(
                f"frequency_ghz ({self.frequency_ghz:g}) is above max_frequency_ghz ({self.max_frequency_ghz:g}): "
                "raise clock.max_frequency_ghz too"
            )
        return self


class Grid(_Section):
    rows: int = Field(gt=0, le=64)
    cols: int = Field(gt=0, le=64)


class Core(_Section):
    cores_per_pe: int = Field(ge=1, le=8)
    vector_register_bytes: PositiveInt
    cycles_per_command: PositiveFloat
    cycles_per_gather_row: PositiveFloat
    cycles_per_bag: PositiveFloat
    cycles_per_pooled_element: PositiveFloat
    command_queue_depth: PositiveInt


class Dpe(_Section):
    int8_macs_per_cycle: PositiveInt
    fp16_macs_per_cycle: PositiveInt
    bf16_macs_per_cycle: PositiveInt
    block_m: PositiveInt
    block_n: PositiveInt
    block_k: PositiveInt
    pipeline_latency_cycles: float = Field(ge=0)


class Re(_Section):
    accumulator_banks: PositiveInt
    bank_rows: PositiveInt
    bank_cols: PositiveInt
    bytes_per_cycle: PositiveFloat


class Se(_Section):
    int8_ops_per_cycle: PositiveFloat
    fp16_ops_per_cycle: PositiveFloat
    fp32_ops_per_cycle: PositiveFloat
    accumulate_max_rows: PositiveInt
    lut_segments: PositiveInt
    command_overhead_cycles: float = Field(ge=0)


class Vector(_Section):
    int8_ops_per_cycle: PositiveFloat
    fp16_ops_per_cycle: PositiveFloat
    fp32_ops_per_cycle: PositiveFloat


class Mlu(_Section):
    bytes_per_cycle: PositiveFloat


class LocalMemory(_Section):
    bytes: PositiveInt
    bytes_per_cycle: PositiveFloat
    max_circular_buffers: PositiveInt


class Sram(_Section):
    bytes: PositiveInt
    slices: PositiveInt
    slice_bytes_per_cycle: PositiveFloat
    latency_cycles: float = Field(ge=0)
    interleave_bytes: PositiveInt
    access_bytes: PositiveInt
    # the most the SRAM gives to addressable (scratchpad) tensors (capped at `bytes`); what they do not use
    # caches LPDDR5
    scratchpad_bytes: int = Field(ge=0)
    cache_line_bytes: PositiveInt
    cache_ways: PositiveInt
    cache_slices_per_controller: PositiveInt

    @property
    def scratchpad_capacity_bytes(self) -> int:
        """The bytes addressable tensors may take: `scratchpad_bytes`, at most the whole SRAM."""
        return min(self.scratchpad_bytes, self.bytes)

    @model_validator(mode="after")
    def _cache_fits(self) -> Sram:
        if self.slices % self.cache_slices_per_controller:
            raise ValueError("slices must be a multiple of cache_slices_per_controller")
        if self.bytes // self.slices < self.cache_line_bytes * self.cache_ways:
            raise ValueError("a slice holds fewer bytes than one set of cache_ways lines of cache_line_bytes")
        return self


class Dram(_Section):
    bytes: PositiveInt
    channels: PositiveInt
    channel_width_bits: PositiveInt
    transfer_rate_mts: PositiveFloat
    latency_ns: float = Field(ge=0)
    page_bytes: PositiveInt
    banks_per_channel: PositiveInt
    bank_groups: PositiveInt
    burst_bytes: PositiveInt
    interleave_bytes: PositiveInt
    bank_hash: Literal["none", "xor"]
    # device timing (JESD209-5 class), in ns
    t_rrd_ns: float = Field(ge=0)
    t_faw_ns: float = Field(ge=0)
    t_ras_ns: float = Field(ge=0)
    t_rp_ns: float = Field(ge=0)
    t_rfc_ns: float = Field(ge=0)
    t_refi_ns: PositiveFloat
    read_to_write_ns: float = Field(ge=0)
    write_to_read_ns: float = Field(ge=0)
    write_batch: PositiveInt  # writes the controller drains per read/write turnaround
    # transactions a channel's controller holds at once, each for one latency (a whole number in hardware,
    # fitted as a mean occupancy), and the most bytes one transaction moves
    queue_entries: PositiveFloat
    transaction_bytes: PositiveInt

    @model_validator(mode="after")
    def _timing_consistent(self) -> Dram:
        if self.t_rfc_ns >= self.t_refi_ns:
            raise ValueError("t_rfc_ns must be below t_refi_ns (refresh would take all the time)")
        if self.banks_per_channel % self.bank_groups:
            raise ValueError("banks_per_channel must be a multiple of bank_groups")
        if self.page_bytes % self.burst_bytes:
            raise ValueError("page_bytes must be a multiple of burst_bytes")
        return self


class Noc(_Section):
    lane_bytes_per_cycle: PositiveFloat
    fi_bytes_per_cycle: PositiveFloat
    hop_latency_cycles: float = Field(ge=0)
    multicast: Literal["row_col", "none"]


class Reduction(_Section):
    link_bytes_per_cycle: PositiveFloat
    hop_latency_cycles: float = Field(ge=0)


class Dma(_Section):
    outstanding_requests: PositiveInt  # NoC read requests a PE's DMA engine keeps in flight
    request_bytes: PositiveInt  # the most one request carries; a longer run is split
    setup_cycles: float = Field(ge=0)
    concurrent_commands: PositiveInt  # DMA commands the engine works on at once (a gathered row is one)

    @property
    def outstanding_rows(self) -> int:
        """Gathered rows in flight per PE: v1 has no indexed DMA, so every row is a command of its own."""
        return self.concurrent_commands


class Dispatch(_Section):
    job_launch_ns: float = Field(ge=0)
    per_pe_ns: float = Field(ge=0)
    job_end_ns: float = Field(ge=0)


class Host(_Section):
    pcie_generation: PositiveInt
    pcie_lanes: PositiveInt
    bandwidth_gbps: PositiveFloat
    latency_ns: float = Field(ge=0)
    launch_ns: float = Field(ge=0)
    cpu_op_ns: float = Field(ge=0)
    cpu_copy_gbps: PositiveFloat


class Power(_Section):
    tdp_w: PositiveFloat
    card_power_w: PositiveFloat
    server_power_w: PositiveFloat
    cards_per_server: PositiveInt


class Energy(_Section):
    """Energy per action (pJ unless the name says otherwise) and the static and card-level power."""

    int8_mac_pj: PositiveFloat
    float_mac_ratio: PositiveFloat
    se_op_pj: NonNegativeFloat
    mlu_byte_pj: NonNegativeFloat
    local_memory_byte_pj: NonNegativeFloat
    sram_byte_pj: NonNegativeFloat
    noc_byte_hop_pj: NonNegativeFloat
    reduction_byte_pj: NonNegativeFloat
    command_pj: NonNegativeFloat
    dram_phy_byte_pj: NonNegativeFloat
    dram_device_byte_pj: NonNegativeFloat
    dram_activation_nj: NonNegativeFloat
    pcie_byte_pj: NonNegativeFloat
    static_w: NonNegativeFloat
    dram_background_w: NonNegativeFloat
    vrm_efficiency: float = Field(gt=0, le=1)


class Area(_Section):
    """The die-area model's coefficients (mtiasim.hw.area): per-component areas at 7 nm, the node's scale
    factors, the one calibrated logic overhead, and the published die they are checked against."""

    published_die_mm2: PositiveFloat
    node_logic_scale: PositiveFloat
    node_sram_scale: PositiveFloat
    node_io_scale: PositiveFloat
    logic_overhead: float = Field(ge=1)
    dpe_um2_per_mac: NonNegativeFloat
    re_um2_per_accumulator_byte: NonNegativeFloat
    se_um2_per_datapath_byte: NonNegativeFloat
    vector_um2_per_datapath_byte: NonNegativeFloat
    mlu_um2_per_byte_per_cycle: NonNegativeFloat
    core_mm2: NonNegativeFloat
    pe_other_mm2: NonNegativeFloat
    local_memory_mm2_per_mib: NonNegativeFloat
    sram_mm2_per_mib: NonNegativeFloat
    noc_um2_per_pe_byte: NonNegativeFloat
    dram_phy_mm2_per_x16_channel: NonNegativeFloat
    pcie_mm2_per_lane: NonNegativeFloat
    misc_mm2: NonNegativeFloat


SECTIONS: dict[str, type[_Section]] = {
    "identity": Identity,
    "clock": Clock,
    "grid": Grid,
    "core": Core,
    "dpe": Dpe,
    "re": Re,
    "se": Se,
    "vector": Vector,
    "mlu": Mlu,
    "local_memory": LocalMemory,
    "sram": Sram,
    "dram": Dram,
    "noc": Noc,
    "reduction": Reduction,
    "dma": Dma,
    "dispatch": Dispatch,
    "host": Host,
    "power": Power,
    "energy": Energy,
    "area": Area,
}


class Chip(BaseModel):
    """A validated chip configuration. Values are plain; `provenance` maps 'section.key' to its origin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    identity: Identity
    clock: Clock
    grid: Grid
    core: Core
    dpe: Dpe
    re: Re
    se: Se
    vector: Vector
    mlu: Mlu
    local_memory: LocalMemory
    sram: Sram
    dram: Dram
    noc: Noc
    reduction: Reduction
    dma: Dma
    dispatch: Dispatch
    host: Host
    power: Power
    energy: Energy
    area: Area
    provenance: dict[str, Provenance] = Field(default_factory=dict, repr=False)

    @property
    def n_pes(self) -> int:
        return self.grid.rows * self.grid.cols

    @property
    def hz(self) -> float:
        """Core clock in cycles per second."""
        return self.clock.frequency_ghz * 1e9

    def value(self, key: str) -> Any:
        """The plain value of 'section.key'."""
        section, _, name = key.partition(".")
        if section not in SECTIONS or name not in SECTIONS[section].model_fields:
            raise ConfigError(f"{self.name}: unknown configuration key {key!r}")
        return getattr(getattr(self, section), name)

    def with_values(
        self, overrides: dict[str, Any], provenance_kind: str = "user", *, where: str | None = None
    ) -> Chip:
        """A copy with some 'section.key' values replaced (what-if studies), validated as a preset is.

        A value may be text, with a unit where the key takes one ("256MiB", "1100MHz", "8533MT/s": see
        `mtiasim.hw.units`). An unknown key, or a value of the wrong type or out of its range, is a one-line
        ConfigError `{where}KEY=VALUE: what is wrong (valid: ...)`; `where` defaults to "NAME (overrides): ".
        The values set are marked with provenance `provenance_kind` ("user": they are the chip's `overrides()`).
        """
        label = f"{self.name} (overrides): " if where is None else where
        data = self.model_dump(exclude={"provenance"})
        prov = dict(self.provenance)
        given: dict[str, str] = {}
        for key, value in overrides.items():
            text = value.strip() if isinstance(value, str) else _toml_repr(value)
            section, name = _split_key(key, text, label)
            given[key] = text
            if isinstance(value, str):
                try:
                    value = coerce_text(key, value, SECTIONS[section].model_fields[name].annotation)
                except ValueError as err:
                    raise ConfigError(f"{label}{key}={text}: {err} ({_valid(section, name)})") from None
            data[section][name] = value
            old = prov.get(key)
            keep = provenance_kind == "calibrated" and old is not None and old.range is not None
            prov[key] = Provenance(
                provenance_kind,
                source=old.source if keep else None,
                note="set by the user" if provenance_kind == "user" else (old.note if keep else None),
                range=old.range if keep else None,
                range_source=old.range_source if keep else None,
            )
        try:
            return Chip.model_validate({**data, "provenance": prov})
        except ValidationError as err:
            raise ConfigError(_override_error(err, given, label)) from None

    def overrides(self) -> dict[str, Any]:
        """The values set by the user (provenance `user`: `--set`, `with_values`), by key, in section order."""
        return {
            key: self.value(key)
            for key in config_keys()
            if (p := self.provenance.get(key)) is not None and p.kind == "user"
        }

    def values_json(self) -> str:
        """The chip's resolved values as canonical JSON: ``{section: {key: value}}`` over every section, keys
        sorted, no spaces, floats as Python writes them. Name, description and provenance are not in it."""
        values = {section: getattr(self, section).model_dump() for section in SECTIONS}
        return json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False)

    def values_hash(self) -> str:
        """SHA-256 (hex) of `values_json()`: the same for two chips with the same values, whatever their names
        or how the values were set (preset, chip file, overrides); different when any value differs."""
        return hashlib.sha256(self.values_json().encode()).hexdigest()


def config_keys() -> list[str]:
    """Every 'section.key' of a chip, in section order."""
    return [f"{section}.{name}" for section, model in SECTIONS.items() for name in model.model_fields]


def _split_key(key: Any, text: str, label: str) -> tuple[str, str]:
    """('section', 'name') of a known key; else a one-line ConfigError naming it and what is known."""
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(f"{label}{key}={text}: expected SECTION.KEY (e.g. sram.bytes)")
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(
            f"{label}{key}={text}: unknown section {section!r} (sections: {', '.join(SECTIONS)})"
        )
    if name not in SECTIONS[section].model_fields:
        raise ConfigError(
            f"{label}{key}={text}: unknown key (keys of [{section}]: {', '.join(SECTIONS[section].model_fields)})"
        )
    return section, name


def _valid(section: str, name: str) -> str:
    return f"valid: {valid_range(section, name) or 'text'}{units_hint(name)}"


def _override_error(err: ValidationError, given: dict[str, str], label: str) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    msg = first["msg"].removeprefix("Value error, ")
    if len(loc) >= 2:
        key = f"{loc[0]}.{loc[1]}"
        text = given.get(key, _toml_repr(first["input"]))
        return f"{label}{key}={text}: {msg} ({_valid(loc[0], loc[1])})"
    # a check across the keys of a section (clock: nominal <= max): name the override that made it fail
    section = loc[0] if loc else ""
    key = next((k for k in given if k.startswith(section + ".")), next(iter(given)))
    return f"{label}{key}={given[key]}: {section}: {msg}"


def parse_sets(items: Any) -> dict[str, str]:
    """`--set KEY=VALUE` options as {key: value text}: each must have a key and a value, and a key may be set once."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise ConfigError(f"--set {item}: expected KEY=VALUE (e.g. --set sram.bytes=256MiB)")
        if not value:
            raise ConfigError(f"--set {item}: no value after '='")
        if key in out:
            raise ConfigError(f"--set {key}: given twice ({out[key]}, then {value}); set it once")
        out[key] = value
    return out


def chip_with_sets(chip: str | Chip, items: Any) -> Chip:
    """A preset (by name or .toml file) or a chip, with `--set` overrides applied (errors say `--set`): `items`
    are the options' KEY=VALUE texts, or {key: value} as `parse_sets` gives them."""
    base = chip if isinstance(chip, Chip) else load_chip(chip)
    sets = dict(items) if isinstance(items, dict) else parse_sets(items or ())
    return base.with_values(sets, where="--set ") if sets else base


def _toml_repr(value: Any) -> str:
    """A value as TOML spells it (true, inf, nan, "text")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def valid_range(section: str, key: str, sections: dict[str, type[_Section]] | None = None) -> str | None:
    """What 'section.key' accepts, in words ('an integer > 0 and <= 64', 'a finite number >= 0'); `sections`
    are those of the description it belongs to (a chip's by default; a server's, `mtiasim.hw.server`)."""
    model = (SECTIONS if sections is None else sections).get(section)
    field = model.model_fields.get(key) if model is not None else None
    if field is None:
        return None
    ann = field.annotation
    if ann is bool:
        return "true or false"
    if typing.get_origin(ann) is Literal:
        return "one of " + ", ".join(_toml_repr(a) for a in typing.get_args(ann))
    kind = {int: "an integer", float: "a finite number"}.get(ann)  # type: ignore[call-overload]
    if kind is None:
        return None
    bounds = []
    for m in field.metadata:
        for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(m, attr, None)
            if bound is not None:
                bounds.append(f"{op} {bound:g}")
    return kind + (" " + " and ".join(bounds) if bounds else "")


def format_validation_error(
    err: ValidationError, where: str, sections: dict[str, type[_Section]] | None = None
) -> str:
    """A pydantic error of a preset as one line naming the key, what was given and what is valid."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "missing key"
    elif len(first["loc"]) == 2:  # a value of section.key: say what was given and what is valid
        valid = valid_range(str(first["loc"][0]), str(first["loc"][1]), sections)
        msg += f" (got {_toml_repr(first['input'])}" + (f"; valid: {valid})" if valid else ")")
    return f"{where}: {loc}: {msg}"


def _validate(data: dict[str, Any], prov: dict[str, Provenance], where: str) -> Chip:
    try:
        return Chip.model_validate({**data, "provenance": prov})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


_PARAM_KEYS = {"value", "provenance", "source", "note", "range", "range_source"}


def parse_param(raw: Any, key: str, where: str) -> tuple[Any, Provenance]:
    """One preset leaf `{value, provenance, source|note[, range, range_source]}`: its value and provenance."""
    if not isinstance(raw, dict) or "value" not in raw:
        raise ConfigError(f"{where}: {key}: expected a table {{value, provenance, source|note}}")
    extra = set(raw) - _PARAM_KEYS
    if extra:
        raise ConfigError(
            f"{where}: {key}: unknown field {sorted(extra)[0]!r} (allowed: {sorted(_PARAM_KEYS)})"
        )
    kind = raw.get("provenance")
    if kind not in PROVENANCE_KINDS:
        raise ConfigError(
            f"{where}: {key}: provenance must be one of {', '.join(PROVENANCE_KINDS)}, got {kind!r}"
        )
    source, note = raw.get("source"), raw.get("note")
    if kind == "published" and not source:
        raise ConfigError(f"{where}: {key}: a published value must name its source")
    if kind == "calibrated" and not source:
        raise ConfigError(f"{where}: {key}: a calibrated value must name the script that fits it")
    if kind in ("derived", "assumed") and not note:
        raise ConfigError(f"{where}: {key}: a {kind} value must say how or why in its note")
    rng = _parse_range(raw, key, where, kind)
    return raw["value"], Provenance(kind, source, note, rng, raw.get("range_source"))


def _parse_range(raw: dict[str, Any], key: str, where: str, kind: str) -> tuple[float, float] | None:
    """The physical range of a calibrated value: `range = [lo, hi]` with its `range_source`; the value inside."""
    rng, rsrc = raw.get("range"), raw.get("range_source")
    if rng is None:
        if kind == "calibrated":
            raise ConfigError(
                f"{where}: {key}: a calibrated value must give its physical range (range = [lo, hi]) "
                "and where the range comes from (range_source)"
            )
        if rsrc is not None:
            raise ConfigError(f"{where}: {key}: range_source without a range")
        return None
    ok = (
        isinstance(rng, list)
        and len(rng) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in rng)
        and rng[0] < rng[1]
    )
    if not ok:
        raise ConfigError(f"{where}: {key}: range must be [lo, hi] with finite numbers lo < hi, got {rng!r}")
    if not isinstance(rsrc, str) or not rsrc.strip():
        raise ConfigError(f"{where}: {key}: a range must say where it comes from (range_source)")
    value = raw["value"]
    lo, hi = float(rng[0]), float(rng[1])
    if isinstance(value, int | float) and not isinstance(value, bool) and not lo <= value <= hi:
        raise ConfigError(f"{where}: {key}: value {value:g} lies outside its physical range [{lo:g}, {hi:g}]")
    return lo, hi


def read_toml(path: Path | resources.abc.Traversable, where: str) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{where}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}): save the file as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot read the chip file ({err.strerror or err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML: {err}") from None


def flatten_preset(
    doc: dict[str, Any],
    where: str,
    sections: dict[str, type[_Section]] | None = None,
    meta_keys: tuple[str, ...] = ("name", "description", "inherit"),
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Provenance]]:
    """A preset document as (its `meta_keys` entries, {section: {key: value}}, {'section.key': provenance});
    every section and key checked against `sections` (a chip's by default)."""
    known = SECTIONS if sections is None else sections
    meta: dict[str, Any] = {}
    values: dict[str, dict[str, Any]] = {}
    prov: dict[str, Provenance] = {}
    for top, body in doc.items():
        if top in meta_keys:
            meta[top] = body
            continue
        if top not in known:
            raise ConfigError(f"{where}: {top}: unknown section (known: {', '.join(known)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {top}: expected a section table")
        for key, raw in body.items():
            dotted = f"{top}.{key}"
            if key not in known[top].model_fields:
                raise ConfigError(f"{where}: {dotted}: unknown key")
            value, p = parse_param(raw, dotted, where)
            values.setdefault(top, {})[key] = value
            prov[dotted] = p
    return meta, values, prov


MAX_INHERIT_DEPTH = 16


def load_chip_file(path: str | Path) -> Chip:
    """Load a chip preset from a TOML file (a user's own chip, or a what-if variant of a preset).

    `inherit = "NAME"` starts from a shipped preset, `inherit = "FILE.toml"` from another file (looked up
    beside this file first, then from the current folder); a chain of files may not come back to itself.
    """
    return _load_file(Path(path), ())


def _load_file(p: Path, chain: tuple[str, ...]) -> Chip:
    if not p.is_file():
        raise ConfigError(f"{p}: no such chip file")
    return _load(read_toml(p, str(p)), str(p), (*chain, str(p.resolve())))


def _load_parent(parent: Any, where: str, chain: tuple[str, ...]) -> Chip:
    """The chip that `where` inherits (`inherit = parent`), refusing cycles and very deep chains."""
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(
            f"{where}: inherit: expected a preset name ({', '.join(preset_names())}) or a .toml file name, "
            f"got {_toml_repr(parent)}"
        )
    if not parent.endswith(".toml"):
        names = preset_names()
        if parent not in names:
            raise ConfigError(
                f"{where}: inherit: unknown preset {parent!r} (known: {', '.join(names)}; or a .toml file)"
            )
        if f"preset:{parent}" in chain:
            raise ConfigError(f"{where}: inherit: preset {parent!r} inherits itself")
        return _load_preset(parent, (*chain, f"preset:{parent}"))
    candidate = Path(parent)
    if not candidate.is_absolute():
        beside = Path(where).parent / candidate
        candidate = beside if beside.is_file() else candidate
    if not candidate.is_file():
        raise ConfigError(f"{where}: inherit: no such chip file {parent!r}")
    key = str(candidate.resolve())
    if key in chain:
        cycle = " -> ".join(Path(c).name for c in (*chain[chain.index(key) :], key))
        raise ConfigError(
            f"{where}: inherit: {parent!r} makes a cycle ({cycle}); inherit a preset or a file outside the chain"
        )
    if len(chain) >= MAX_INHERIT_DEPTH:
        raise ConfigError(f"{where}: inherit: more than {MAX_INHERIT_DEPTH} files deep")
    return _load_file(candidate, chain)


def _load(doc: dict[str, Any], where: str, chain: tuple[str, ...] = ()) -> Chip:
    meta, values, prov = flatten_preset(doc, where)
    parent = meta.get("inherit")
    if parent is not None:
        base = _load_parent(parent, where, chain)
        merged = base.model_dump(exclude={"provenance", "name", "description"})
        base_prov = {
            k: Provenance("assumed", None, f"carried over from {base.name} ({v.describe()})")
            for k, v in base.provenance.items()
        }
        for section, entries in values.items():
            merged[section].update(entries)
        values = merged
        prov = {**base_prov, **prov}
    for field in ("name", "description"):
        if field not in meta:
            raise ConfigError(f"{where}: {field}: missing key")
    data: dict[str, Any] = {"name": meta["name"], "description": meta["description"], **values}
    return _validate(data, prov, where)


def preset_names() -> list[str]:
    folder = resources.files("mtiasim.hw").joinpath("presets")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_chip(name: str) -> Chip:
    """Load a shipped preset by name ('mtia-v1', 'mtia-2i') or a TOML file by path."""
    if not isinstance(name, str):
        raise ConfigError(f"chip: expected a preset name or a .toml file name, got {name!r}")
    if name.endswith(".toml"):
        return load_chip_file(name)
    return _load_preset(name, (f"preset:{name}",))


def _load_preset(name: str, chain: tuple[str, ...]) -> Chip:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown chip {name!r} (known: {', '.join(names)}; or give a .toml file)")
    # A preset is parsed and validated once per content of the preset files (a chip is immutable): a suite of
    # benchmarks loads it per case. Reading the files is cheap; an edited file (calibration) is parsed again.
    key = (name, chain, tuple(_preset_path(n).read_bytes() for n in names))
    chip = _PRESETS_PARSED.get(key)
    if chip is None:
        path = _preset_path(name)
        chip = _load(read_toml(path, f"{name}.toml"), f"{name}.toml", chain)
        if len(_PRESETS_PARSED) >= 16:
            _PRESETS_PARSED.clear()
        _PRESETS_PARSED[key] = chip
    return chip


_PRESETS_PARSED: dict[tuple[str, tuple[str, ...], tuple[bytes, ...]], Chip] = {}


def _preset_path(name: str) -> resources.abc.Traversable:
    return resources.files("mtiasim.hw").joinpath("presets", f"{name}.toml")
