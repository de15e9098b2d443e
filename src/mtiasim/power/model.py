"""The energy model: per-action energies (`chip.energy`) times the engine's counters; see the package doc."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtiasim.engine.timing import NodeTable
from mtiasim.hw import Chip
from mtiasim.hw.peaks import dram_bytes_per_s

PJ = 1e-12

# chip components (dynamic), in report order
COMPONENTS = ("dpe", "re", "se", "mlu", "local_memory", "sram", "noc", "cores", "lpddr5_phy", "pcie")
# card components beyond the chip
CARD_COMPONENTS = ("vrm_loss", "lpddr5_devices", "lpddr5_background", "board")
TIMELINE_BINS = 200


def _get(c: Mapping[str, float], *keys: str) -> float:
    return float(sum(c.get(k, 0.0) for k in keys))


def chip_dynamic_j(chip: Chip, counters: Mapping[str, float]) -> dict[str, float]:
    """Dynamic chip energy (J) per component for a set of action counts."""
    e = chip.energy
    int8_macs = _get(counters, "dpe_macs_int8")
    float_macs = sum(v for k, v in counters.items() if k.startswith("dpe_macs_") and k != "dpe_macs_int8")
    return {
        "dpe": (int8_macs + float_macs * e.float_mac_ratio) * e.int8_mac_pj * PJ,
        "re": (
            _get(counters, "epilogue_ops") * e.se_op_pj
            + _get(counters, "reduction_bytes") * e.reduction_byte_pj
        )
        * PJ,
        "se": _get(counters, "se_ops") * e.se_op_pj * PJ,
        "mlu": _get(counters, "mlu_bytes") * e.mlu_byte_pj * PJ,
        "local_memory": _get(counters, "ls_read_bytes", "ls_write_bytes") * e.local_memory_byte_pj * PJ,
        "sram": _get(counters, "sram_read_bytes", "sram_write_bytes") * e.sram_byte_pj * PJ,
        "noc": _get(counters, "noc_byte_hops") * e.noc_byte_hop_pj * PJ,
        "cores": _get(counters, "commands") * e.command_pj * PJ,
        "lpddr5_phy": _get(counters, "dram_read_bytes", "dram_write_bytes") * e.dram_phy_byte_pj * PJ,
        "pcie": _get(counters, "pcie_bytes") * e.pcie_byte_pj * PJ,
    }


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


def joules_per_count(chip: Chip) -> dict[str, float]:
    """The chip's dynamic energy is linear in the counters: J per unit of each counter (`chip_dynamic_j`)."""
    e = chip.energy
    return {
        "dpe_macs_int8": e.int8_mac_pj * PJ,
        "epilogue_ops": e.se_op_pj * PJ,
        "reduction_bytes": e.reduction_byte_pj * PJ,
        "se_ops": e.se_op_pj * PJ,
        "mlu_bytes": e.mlu_byte_pj * PJ,
        "ls_read_bytes": e.local_memory_byte_pj * PJ,
        "ls_write_bytes": e.local_memory_byte_pj * PJ,
        "sram_read_bytes": e.sram_byte_pj * PJ,
        "sram_write_bytes": e.sram_byte_pj * PJ,
        "noc_byte_hops": e.noc_byte_hop_pj * PJ,
        "commands": e.command_pj * PJ,
        "dram_read_bytes": e.dram_phy_byte_pj * PJ,
        "dram_write_bytes": e.dram_phy_byte_pj * PJ,
        "pcie_bytes": e.pcie_byte_pj * PJ,
    }


def node_energy_j(chip: Chip, counters: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Dynamic chip energy (J) of each node, from its counters."""
    coef = joules_per_count(chip)
    float_mac = chip.energy.int8_mac_pj * chip.energy.float_mac_ratio * PJ
    out = np.zeros(len(counters))
    for i, c in enumerate(counters):
        total = 0.0
        for k, v in c.items():
            j = coef.get(k)
            if j is None:
                j = float_mac if k.startswith("dpe_macs_") else 0.0
            total += j * v
        out[i] = total
    return out


def spread(amounts: np.ndarray, start: np.ndarray, end: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sum of `amounts`, each spread evenly over its [start, end], per bin of the evenly spaced `edges` (a
    zero-length span puts its amount in the bin where it starts)."""
    bins = len(edges) - 1
    width = edges[1] - edges[0]
    total = np.zeros(bins)
    for a, s, e in zip(amounts.tolist(), start.tolist(), end.tolist(), strict=True):
        if a <= 0:
            continue
        s, e = min(max(s, 0.0), edges[-1]), min(max(e, 0.0), edges[-1])
        i0 = min(int(s / width), bins - 1)
        i1 = min(int(e / width), bins - 1)
        if e <= s or i0 == i1:
            total[i0] += a
            continue
        lo = np.maximum(edges[i0 : i1 + 1], s)
        hi = np.minimum(edges[i0 + 1 : i1 + 2], e)
        total[i0 : i1 + 1] += a * np.clip(hi - lo, 0.0, None) / (e - s)
    return total


def power_timeline(
    chip: Chip, nodes: NodeTable, seconds: float, bins: int = TIMELINE_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges in s, chip power in W per bin): static power plus each node's dynamic energy spread evenly
    over its [start, end]."""
    edges = np.linspace(0.0, max(seconds, 1e-12), max(1, int(bins)) + 1)
    energy = spread(node_energy_j(chip, nodes.counters), nodes.start_s, nodes.end_s, edges)
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
    notes: list[str] = field(default_factory=list)

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
) -> PowerReport:
    """Energy and power of a run of `seconds` whose actions are `counters` (the engine's, plus `pcie_bytes`).

    `nodes` (the timing's node table) gives the power timeline and its peak; `device_offset_s` is where the
    device program starts inside the run (after host work and the PCIe transfer in).
    """
    e = chip.energy
    seconds = max(float(seconds), 0.0)
    dyn = chip_dynamic_j(chip, counters)
    chip_j = dict(dyn)
    chip_j["static"] = e.static_w * seconds
    chip_total = sum(chip_j.values())
    dram_bytes = _get(counters, "dram_read_bytes", "dram_write_bytes")
    card_j = {
        "vrm_loss": chip_total * (1.0 / e.vrm_efficiency - 1.0),
        "lpddr5_devices": dram_bytes * e.dram_device_byte_pj * PJ
        + _get(counters, "dram_activations") * e.dram_activation_nj * 1e-9,
        "lpddr5_background": e.dram_background_w * seconds,
        "board": board_w(chip) * seconds,
    }
    peak = chip_j["static"] / seconds if seconds > 0 else 0.0
    edges = watts = None
    if nodes is not None and len(nodes) and float(nodes.end_s.max()) > 0:
        span = float(nodes.end_s.max())
        edges, watts = power_timeline(chip, nodes, span)
        edges = edges + device_offset_s
        peak = float(watts.max())
    return PowerReport(chip, seconds, chip_j, card_j, host_share_w(chip) * seconds, peak, edges, watts)
