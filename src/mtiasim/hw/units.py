"""Values written as text with a unit (`256MiB`, `1100MHz`, `8533MT/s`): what `--set KEY=VALUE` and
`Chip.with_values({"sram.bytes": "256MiB"})` accept.

The unit a key takes follows from its name: `bytes` and `*_bytes` take byte units (SI `KB`/`MB`/`GB`/`TB` are
powers of 1000, `KiB`/`MiB`/`GiB`/`TiB` powers of 1024, `B` is one byte), `*_ghz` GHz or MHz, `*_mts` MT/s or
GT/s, `*_ns` ns, us or ms, `*_gbps` GB/s, `*_w` W. A plain number is in the key's own unit. Byte units are
case-sensitive (`Mb` would be megabits); the others are not.
"""

from __future__ import annotations

import re
from typing import Any

# (does the key take these units, {unit: factor to the key's own unit}, case-sensitive)
_UNITS: tuple[tuple[str, dict[str, float], bool], ...] = (
    (
        "bytes",
        {
            "B": 1,
            "KB": 1e3,
            "kB": 1e3,
            "MB": 1e6,
            "GB": 1e9,
            "TB": 1e12,
            "KiB": 1 << 10,
            "MiB": 1 << 20,
            "GiB": 1 << 30,
            "TiB": 1 << 40,
        },
        True,
    ),
    ("ghz", {"GHz": 1.0, "MHz": 1e-3}, False),
    ("mts", {"MT/s": 1.0, "GT/s": 1e3}, False),
    ("ns", {"ns": 1.0, "us": 1e3, "ms": 1e6}, False),
    ("gbps", {"GB/s": 1.0}, False),
    ("w", {"W": 1.0}, False),
)

_NUMBER = re.compile(
    r"^\s*([-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))\s*(\S*)\s*$", re.I
)


def units_for(key: str) -> dict[str, float]:
    """The units key `key` ('bytes', 'frequency_ghz', ...) accepts besides a plain number ({} if none)."""
    name = key.rpartition(".")[2]
    for suffix, units, _ in _UNITS:
        if name == suffix or name.endswith("_" + suffix):
            return units
    return {}


def _unit_factor(key: str, unit: str) -> float | None:
    name = key.rpartition(".")[2]
    for suffix, units, strict in _UNITS:
        if name == suffix or name.endswith("_" + suffix):
            if unit in units:
                return units[unit]
            if not strict:
                for u, factor in units.items():
                    if u.lower() == unit.lower():
                        return factor
            return None
    return None


def parse_number(key: str, text: str, integer: bool) -> int | float:
    """`text` ('256MiB', '1.1', '1100 MHz') as a number in the key's own unit; an integer where `integer` and
    the value is whole (a fractional value is returned as a float, for the validator to refuse).

    Raises ValueError with a short reason ('not a number', "unknown unit 'XB'")."""
    m = _NUMBER.match(text)
    if m is None:
        raise ValueError("not a number")
    number, unit = m.group(1), m.group(2)
    factor = 1.0
    if unit:
        f = _unit_factor(key, unit)
        if f is None:
            raise ValueError(f"unknown unit {unit!r}")
        factor = f
    if integer and factor == 1 and re.fullmatch(r"[-+]?\d[\d_]*", number):
        return int(number)  # exact, however large
    value = float(number) * factor
    if integer and value == value and abs(value) != float("inf") and value == round(value):
        return int(round(value))
    return value


def units_hint(key: str) -> str:
    """'; units: KiB, MiB, ...' for a key that takes units, else ''."""
    units = units_for(key)
    return "; units: " + ", ".join(u for u in units if u != "kB") if units else ""


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError("not true or false")


def coerce_text(key: str, text: str, annotation: Any) -> Any:
    """A value given as text, converted for a field of type `annotation` (int, float, bool; a Literal's text is
    kept). Raises ValueError naming what is wrong."""
    if annotation is bool:
        return parse_bool(text)
    if annotation is int:
        return parse_number(key, text, integer=True)
    if annotation is float:
        return parse_number(key, text, integer=False)
    return text.strip()
