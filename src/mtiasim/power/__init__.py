"""Energy and power: the engine's action counts times per-action energies, plus static, card and platform power.

    report = power_report(chip, timing.counters, seconds, nodes=timing.nodes, pcie_bytes=...)
    report.avg_power_w, report.peak_power_w, report.per_watt(rate) ...

Levels (all averages over the run's `seconds`):
- chip: dynamic energy of the units, memories, NoC, cores, LPDDR5 controller/PHY and PCIe SerDes, plus the static
  power (`energy.static_w`). This is what the 25 W TDP bounds.
- card: the chip through the voltage regulators (`energy.vrm_efficiency`), the LPDDR5 devices (per byte, per row
  activation, background) and the rest of the board. The board's power is derived so that a card with its chip
  at TDP and its LPDDR5 at peak bandwidth draws the published card power.
- platform: the card plus its share of the server's other power (hosts, fans, NICs): (server power - cards x
  card power) / cards, so that a fully loaded card accounts for server power / cards (65 W for mtia-v1, the
  normalisation of the ISCA'23 perf/W charts). `paper_w` is that fixed divisor.
"""

from mtiasim.power.model import (
    COMPONENTS,
    PowerReport,
    node_energy_j,
    power_report,
    power_timeline,
)

__all__ = ["COMPONENTS", "PowerReport", "node_energy_j", "power_report", "power_timeline"]
