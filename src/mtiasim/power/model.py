"""The energy model: per-action energies (`chip.energy`) times the engine's counters; see the package doc."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtiasim.engine.timing import NodeTable, counter_columns
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dram_bytes_per_s

PJ = 1e-12

# chip components (dynamic), in report order
COMPONENTS = ("dpe", "re", "se", "mlu", "local_memory", "sram", "noc", "cores", "lpddr5_phy", "pcie")
TIMELINE_BINS = 200


# what each engine counter costs: (component, the `chip.energy` field giving pJ per count); `dpe_macs_<float
# dtype>` counters cost `int8_mac_pj x float_mac_ratio`, any other counter (rows gathered, cache hits) nothing here
COUNTER_ENERGY = {
    "dpe_macs_int8": ("dpe", "int8_mac_pj"),
    "epilogue_ops": ("re", "se_op_pj"),
    "reduction_bytes": ("re", "reduction_byte_pj"),
    "se_ops": ("se", "se_op_pj"),
    "mlu_bytes": ("mlu", "mlu_byte_pj"),
    "ls_read_bytes": ("local_memory", "local_memory_byte_pj"),
    "ls_write_bytes": ("local_memory", "local_memory_byte_pj"),
    "sram_read_bytes": ("sram", "sram_byte_pj"),
    "sram_write_bytes": ("sram", "sram_byte_pj"),
    "noc_byte_hops": ("noc", "noc_byte_hop_pj"),
    "commands": ("cores", "command_pj"),
    "dram_read_bytes": ("lpddr5_phy", "dram_phy_byte_pj"),
    "dram_write_bytes": ("lpddr5_phy", "dram_phy_byte_pj"),
    "pcie_bytes": ("pcie", "pcie_byte_pj"),
}


def joules_per_count(chip: Chip, counter: str) -> tuple[str | None, float]:
    """(the component a counter's energy goes to, J per count); (None, 0.0) for counters that cost nothing."""
    e = chip.energy
    if counter in COUNTER_ENERGY:
        component, pj = COUNTER_ENERGY[counter]
        return component, getattr(e, pj) * PJ
    if counter.startswith("dpe_macs_"):
        return "dpe", e.int8_mac_pj * e.float_mac_ratio * PJ
    return None, 0.0


def chip_dynamic_j(chip: Chip, counters: Mapping[str, float]) -> dict[str, float]:
    """Dynamic chip energy (J) per component for a set of action counts."""
    out = dict.fromkeys(COMPONENTS, 0.0)
    for counter, count in counters.items():
        component, joules = joules_per_count(chip, counter)
        if component is not None:
            out[component] += count * joules
    return out


def board_w(chip: Chip) -> float:
    """The card's power beyond the chip and the LPDDR5 devices, derived from the published card power: a card
    with its chip at TDP and its LPDDR5 streaming at peak draws `power.card_power_w` (never below 0)."""
    e = chip.energy
    dram_peak_w = dram_bytes_per_s(chip) * e.dram_device_byte_pj * PJ + e.dram_background_w
    return max(0.0, chip.power.card_power_w - chip.power.tdp_w / e.vrm_efficiency - dram_peak_w)


def host_share_w(chip: Chip) -> float:
    """A card's share of the server's non-card power: (server - cards x card power) / cards."""
    p = chip.power
    return max(0.0, (p.server_power_w - p.cards_per_server * p.card_power_w) / p.cards_per_server)


def paper_w(chip: Chip) -> float:
    """The fixed per-card divisor of the published perf/W charts: server power / cards (65 W on mtia-v1)."""
    return chip.power.server_power_w / chip.power.cards_per_server


def node_energy_j(
    chip: Chip, counters: Sequence[Mapping[str, float]], columns: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Dynamic chip energy (J) of each node, from its counters (`columns`: `counter_columns(counters)`)."""
    columns = counter_columns(counters) if columns is None else columns
    energy = np.zeros(len(counters))
    for counter, column in columns.items():
        energy += column * joules_per_count(chip, counter)[1]
    return energy


def spread(amounts: np.ndarray, start: np.ndarray, end: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sum of `amounts`, each spread evenly over its [start, end] (clipped to the evenly spaced `edges`), per bin;
    a span of zero length, or inside one bin, puts its amount in the bin where it starts."""
    bins = len(edges) - 1
    width = edges[1] - edges[0]
    total = np.zeros(bins)
    keep = amounts > 0
    a = amounts[keep]
    s = np.clip(start[keep], 0.0, edges[-1])
    e = np.clip(end[keep], 0.0, edges[-1])
    i0 = np.minimum((s / width).astype(np.int64), bins - 1)
    i1 = np.minimum((e / width).astype(np.int64), bins - 1)
    one = (e <= s) | (i0 == i1)
    np.add.at(total, i0[one], a[one])
    many = ~one
    a, s, e, i0, i1 = a[many], s[many], e[many], i0[many], i1[many]
    rate = a / (e - s)
    np.add.at(total, i0, rate * (np.minimum(edges[i0 + 1], e) - s))  # the first bin's part
    np.add.at(total, i1, rate * (e - np.maximum(edges[i1], s)))  # the last bin's part
    # the bins strictly between, whole at the span's rate: a difference array of rates
    inner = np.zeros(bins + 1)
    mid = i1 > i0 + 1
    np.add.at(inner, i0[mid] + 1, rate[mid])
    np.add.at(inner, i1[mid], -rate[mid])
    total += np.cumsum(inner)[:-1] * width
    return total


def power_timeline(
    chip: Chip,
    nodes: NodeTable,
    seconds: float,
    bins: int = TIMELINE_BINS,
    columns: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges in s, chip power in W per bin): static power plus each node's dynamic energy spread evenly
    over its [start, end]."""
    edges = np.linspace(0.0, max(seconds, 1e-12), max(1, int(bins)) + 1)
    energy = spread(node_energy_j(chip, nodes.counters, columns), nodes.start_s, nodes.end_s, edges)
    return edges, energy / (edges[1] - edges[0]) + chip.energy.static_w


@dataclass
class PowerReport:
    chip: Chip
    seconds: float
    chip_j: dict[str, float]  # dynamic, per component, plus "static"
    card_j: dict[str, float]  # beyond the chip
    host_share_j: float
    peak_chip_w: float
    timeline_edges_s: np.ndarray | None = None
    timeline_w: np.ndarray | None = None

    @property
    def chip_energy_j(self) -> float:
        return sum(self.chip_j.values())

    @property
    def card_energy_j(self) -> float:
        return self.chip_energy_j + sum(self.card_j.values())

    @property
    def platform_energy_j(self) -> float:
        return self.card_energy_j + self.host_share_j

    def _avg(self, joules: float) -> float:
        return joules / self.seconds if self.seconds > 0 else 0.0

    @property
    def avg_power_w(self) -> float:
        return self._avg(self.chip_energy_j)

    @property
    def card_power_w(self) -> float:
        return self._avg(self.card_energy_j)

    @property
    def platform_power_w(self) -> float:
        return self._avg(self.platform_energy_j)

    @property
    def peak_power_w(self) -> float:
        return max(self.peak_chip_w, self.avg_power_w)

    def per_watt(self, rate: float) -> dict[str, float]:
        """`rate` (TOPS, GB/s, samples/s...) per watt of chip, card, platform, and per the paper's fixed divisor."""

        def div(w: float) -> float:
            return rate / w if w > 0 else math.inf

        return {
            "chip": div(self.avg_power_w),
            "card": div(self.card_power_w),
            "platform": div(self.platform_power_w),
            "paper": div(paper_w(self.chip)),
        }

    @property
    def warnings(self) -> list[str]:
        """What the run does that the chip could not: draw more than its TDP (it would throttle)."""
        tdp = self.chip.power.tdp_w
        if self.peak_power_w > tdp:
            return [
                f"peak chip power {self.peak_power_w:.1f} W is above the {tdp:g} W TDP: the chip would throttle; "
                "the times assume it does not"
            ]
        return []

    def to_json(self) -> dict[str, Any]:
        breakdown = {k: v for k, v in self.chip_j.items()} | {f"card_{k}": v for k, v in self.card_j.items()}
        return {
            "energy_j": self.chip_energy_j,
            "avg_power_w": round(self.avg_power_w, 4),
            "peak_power_w": round(self.peak_power_w, 4),
            "card_power_w": round(self.card_power_w, 4),
            "platform_power_w": round(self.platform_power_w, 4),
            "card_energy_j": self.card_energy_j,
            "platform_energy_j": self.platform_energy_j,
            "energy_breakdown_j": breakdown,
            "power_warnings": self.warnings,
        }


def power_report(
    chip: Chip,
    counters: Mapping[str, float],
    seconds: float,
    *,
    nodes: NodeTable | None = None,
    device_offset_s: float = 0.0,
    columns: dict[str, np.ndarray] | None = None,
) -> PowerReport:
    """Energy and power of a run of `seconds` whose actions are `counters` (the engine's, plus `pcie_bytes`).

    `nodes` (the timing's node table) gives the power timeline and its peak; `device_offset_s` is where the
    device program starts inside the run (after host work and the PCIe transfer in); `columns`:
    `counter_columns(nodes.counters)`, if already built.
    """
    e = chip.energy
    seconds = max(float(seconds), 0.0)
    dyn = chip_dynamic_j(chip, counters)
    chip_j = dict(dyn)
    chip_j["static"] = e.static_w * seconds
    chip_total = sum(chip_j.values())
    dram_bytes = counters.get("dram_read_bytes", 0.0) + counters.get("dram_write_bytes", 0.0)
    card_j = {
        "vrm_loss": chip_total * (1.0 / e.vrm_efficiency - 1.0),
        "lpddr5_devices": dram_bytes * e.dram_device_byte_pj * PJ
        + counters.get("dram_activations", 0.0) * e.dram_activation_nj * 1e-9,
        "lpddr5_background": e.dram_background_w * seconds,
        "board": board_w(chip) * seconds,
    }
    peak = chip_j["static"] / seconds if seconds > 0 else 0.0
    edges = watts = None
    if nodes is not None and len(nodes) and float(nodes.end_s.max()) > 0:
        span = float(nodes.end_s.max())
        edges, watts = power_timeline(chip, nodes, span, columns=columns)
        edges = edges + device_offset_s
        peak = float(watts.max())
    return PowerReport(chip, seconds, chip_j, card_j, host_share_w(chip) * seconds, peak, edges, watts)
