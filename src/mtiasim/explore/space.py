"""The design space of a study: chip parameters (`KEY=LOW..HIGH` ranges, `KEY=V1,V2,...` grids) and objectives
(`NAME:max|min`), parsed from the command line and checked against the chip before anything runs.

A parameter's key is a chip key as `mtiasim chip show` lists it and `--set` takes (`sram.bytes`,
`clock.frequency_ghz`); its values take the key's units (`32MiB`, `900MHz`). An integer key searches integers, a
float key floats. Every bound and grid value is applied to the base chip on its own (and all lows together, all
highs together) so that a value the chip refuses fails at once, in one line naming the key and its valid range.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from mtiasim.errors import ConfigError, UsageError
from mtiasim.hw.chip import SECTIONS, Chip, valid_range
from mtiasim.hw.units import coerce_text, units_for, units_hint


@dataclass(frozen=True)
class Param:
    """One searched chip value: a range [low, high] (`choices` None) or a list of grid values."""

    key: str
    integer: bool
    low: float
    high: float
    choices: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"key": self.key, "choices": list(self.choices)}
        return {"key": self.key, "low": self.low, "high": self.high, "integer": self.integer}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" or "minimize"

    @property
    def text(self) -> str:
        return f"{self.metric}:{'max' if self.direction == 'maximize' else 'min'}"


def _annotation(key: str, option: str, given: str) -> Any:
    section, dot, name = key.partition(".")
    if not dot or section not in SECTIONS:
        raise UsageError(
            f"{option} {given}: unknown key {key!r}: expected SECTION.KEY (sections: {', '.join(SECTIONS)})"
        )
    field = SECTIONS[section].model_fields.get(name)
    if field is None:
        raise UsageError(
            f"{option} {given}: unknown key {key!r} (keys of [{section}]: {', '.join(SECTIONS[section].model_fields)})"
        )
    if field.annotation not in (int, float):
        raise UsageError(f"{option} {given}: {key} is not a number; only numeric keys can be searched")
    return field.annotation


def _number(key: str, text: str, annotation: Any, option: str, given: str, chip: Chip) -> float:
    """`text` in the key's unit, checked by applying it to `chip` (the error names the valid range)."""
    try:
        value = coerce_text(key, text, annotation)
    except ValueError as err:
        section, _, name = key.partition(".")
        valid = f"valid: {valid_range(section, name)}{units_hint(name)}"
        raise UsageError(f"{option} {given}: {key}={text.strip()}: {err} ({valid})") from None
    _apply(chip, {key: value}, option, given)
    return value


def _apply(chip: Chip, values: dict[str, Any], option: str, given: str) -> Chip:
    try:
        return chip.with_values(values, where=f"{option} {given}: ")
    except ConfigError as err:
        raise UsageError(str(err)) from None


def _split(item: str, option: str, example: str) -> tuple[str, str]:
    key, eq, rest = str(item).partition("=")
    if not eq or not key.strip() or not rest.strip():
        raise UsageError(f"{option} {item}: expected {example}")
    return key.strip(), rest.strip()


def parse_range(item: str, chip: Chip) -> Param:
    """`--param KEY=LOW..HIGH` as a Param, both ends checked against `chip`."""
    option, example = "--param", "KEY=LOW..HIGH (e.g. sram.bytes=32MiB..256MiB)"
    key, rest = _split(item, option, example)
    low_text, dots, high_text = rest.partition("..")
    if not dots or not low_text.strip() or not high_text.strip():
        raise UsageError(f"{option} {item}: expected {example}")
    ann = _annotation(key, option, item)
    low = _number(key, low_text, ann, option, item, chip)
    high = _number(key, high_text, ann, option, item, chip)
    if not low < high:
        raise UsageError(
            f"{option} {item}: LOW ({low_text.strip()}) must be below HIGH ({high_text.strip()})"
        )
    return Param(key, ann is int, low, high)


def parse_grid(item: str, chip: Chip) -> Param:
    """`--grid KEY=V1,V2,...` as a Param with choices, each value checked against `chip`."""
    option, example = "--grid", "KEY=V1,V2,... (e.g. sram.bytes=64MiB,128MiB)"
    key, rest = _split(item, option, example)
    texts = [t.strip() for t in rest.split(",")]
    if any(not t for t in texts):
        raise UsageError(f"{option} {item}: an empty value; expected {example}")
    ann = _annotation(key, option, item)
    values = [_number(key, t, ann, option, item, chip) for t in texts]
    if len(set(values)) != len(values):
        raise UsageError(f"{option} {item}: a value is given twice")
    return Param(key, ann is int, min(values), max(values), tuple(values))


def check_params(params: list[Param], chip: Chip, option: str) -> None:
    """Each key once; all lows together and all highs together make a valid chip (cross-key checks)."""
    seen: set[str] = set()
    for p in params:
        if p.key in seen:
            raise UsageError(f"{option} {p.key}: given twice; give each key once")
        seen.add(p.key)
    for end in ("low", "high"):
        values = {p.key: getattr(p, end) for p in params}
        text = ", ".join(f"{k}={v:g}" for k, v in values.items())
        _apply(chip, values, option, f"({'all lows' if end == 'low' else 'all highs'}: {text})")


def parse_objective(item: str, metrics: dict[str, str]) -> Objective:
    """`NAME:max|min`, NAME one of `metrics`."""
    name, colon, way = str(item).strip().partition(":")
    if not colon or way not in ("max", "min"):
        raise UsageError(f"--objective {item}: expected NAME:max or NAME:min (e.g. samples_per_s_per_w:max)")
    if name not in metrics:
        raise UsageError(f"--objective {item}: unknown metric {name!r} (metrics: {', '.join(metrics)})")
    return Objective(name, "maximize" if way == "max" else "minimize")


def grid_points(params: list[Param]) -> list[dict[str, float]]:
    """Every combination of the grid values, the first parameter varying slowest (row-major)."""
    choices = [p.choices or () for p in params]
    return [dict(zip([p.key for p in params], combo, strict=True)) for combo in itertools.product(*choices)]


def grid_size(params: list[Param]) -> int:
    return math.prod(len(p.choices or ()) for p in params)


def value_text(key: str, value: float) -> str:
    """A parameter's value for people: bytes in the largest binary unit that divides them (`64MiB`), else the
    integer as it is, or the number as `:g` writes it."""
    if units_for(key).get("MiB") and float(value).is_integer():
        for unit in ("GiB", "MiB", "KiB"):
            size = 1 << {"GiB": 30, "MiB": 20, "KiB": 10}[unit]
            if value and value % size == 0:
                return f"{int(value) // size}{unit}"
        return str(int(value))
    return f"{value:g}"
