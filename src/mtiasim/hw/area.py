"""Die area from the chip's unit-level values and the coefficients of its `[area]` section.

Each component's area is its size in the chip's own terms (MACs per cycle, datapath bytes, MiB, channels,
lanes) times a coefficient at 7 nm (MTIA v1's node), times the preset's node scale for that kind of circuit
(`node_logic_scale`, `node_sram_scale`, `node_io_scale`: 1 at 7 nm). So an override moves the area that
depends on it: `--set sram.bytes=256MiB` doubles the SRAM's, `--set dpe.int8_macs_per_cycle=2048` the DPEs'.

The logic components (the PE units, the RISC-V cores, the rest of the PE, the NoC) are cell-level estimates;
they are multiplied by `logic_overhead`, the one fitted value (scripts/calibrate_area.py, on the v1 die
alone): placement utilisation, clock tree, test logic, routing channels and the logic the model does not list.
The memories, PHYs and the rest are block-level figures taken from whole dies and are not scaled by it.
mtia-2i's die is predicted, not fitted: it is the model's out-of-sample check.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtiasim.hw.chip import Chip

UM2_PER_MM2 = 1e6
MIB = 1 << 20


@dataclass(frozen=True)
class AreaItem:
    """One component of the die: its area in mm^2, the kind of circuit it is, and how it was computed."""

    name: str
    mm2: float
    kind: str  # logic, sram, io
    formula: str


@dataclass(frozen=True)
class AreaReport:
    chip: str
    process_nm: int
    items: tuple[AreaItem, ...]
    published_die_mm2: float

    @property
    def total_mm2(self) -> float:
        return sum(item.mm2 for item in self.items)

    @property
    def error_pct(self) -> float:
        """The model's total against the published die, in percent (+: the model is larger)."""
        return 100.0 * (self.total_mm2 / self.published_die_mm2 - 1.0)

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for item in self.items:
            out[item.kind] = out.get(item.kind, 0.0) + item.mm2
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "total_mm2": round(self.total_mm2, 4),
            "published_die_mm2": self.published_die_mm2,
            "error_pct": round(self.error_pct, 3),
            "process_nm": self.process_nm,
            "by_kind_mm2": {k: round(v, 4) for k, v in self.by_kind().items()},
            "components": [
                {"name": i.name, "mm2": round(i.mm2, 4), "kind": i.kind, "formula": i.formula}
                for i in self.items
            ],
        }


def _datapath_bytes(int8_ops: float, fp16_ops: float, fp32_ops: float) -> float:
    """Width of a SIMD datapath in bytes per cycle: the widest of its INT8, FP16 and FP32 rates."""
    return max(int8_ops, 2 * fp16_ops, 4 * fp32_ops)


def area(chip: Chip) -> AreaReport:
    """The die area of `chip`, per component (see the module doc)."""
    a, n = chip.area, chip.n_pes
    logic = a.node_logic_scale * a.logic_overhead
    sram = a.node_sram_scale
    io = a.node_io_scale
    pes = f"{n} PEs"
    lx = f"x node {a.node_logic_scale:g} x overhead {a.logic_overhead:.4g}"
    se_bytes = _datapath_bytes(
        chip.se.int8_ops_per_cycle, chip.se.fp16_ops_per_cycle, chip.se.fp32_ops_per_cycle
    )
    vec_bytes = _datapath_bytes(
        chip.vector.int8_ops_per_cycle, chip.vector.fp16_ops_per_cycle, chip.vector.fp32_ops_per_cycle
    )
    acc_bytes = (
        chip.re.accumulator_banks * chip.re.bank_rows * chip.re.bank_cols * 4
    )  # INT32/FP32 accumulators
    noc_bytes = chip.noc.lane_bytes_per_cycle + chip.reduction.link_bytes_per_cycle
    ls_mib = chip.local_memory.bytes / MIB
    sram_mib = chip.sram.bytes / MIB
    x16 = chip.dram.channel_width_bits / 16

    def um2(value: float) -> float:
        return value / UM2_PER_MM2

    items = (
        AreaItem(
            "pe.dpe",
            n * um2(chip.dpe.int8_macs_per_cycle * a.dpe_um2_per_mac) * logic,
            "logic",
            f"{pes} x {chip.dpe.int8_macs_per_cycle} MAC x {a.dpe_um2_per_mac:g} um^2 {lx}",
        ),
        AreaItem(
            "pe.re",
            n * um2(acc_bytes * a.re_um2_per_accumulator_byte) * logic,
            "logic",
            f"{pes} x {acc_bytes} accumulator B x {a.re_um2_per_accumulator_byte:g} um^2 {lx}",
        ),
        AreaItem(
            "pe.se",
            n * um2(se_bytes * a.se_um2_per_datapath_byte) * logic,
            "logic",
            f"{pes} x {se_bytes:g} datapath B x {a.se_um2_per_datapath_byte:g} um^2 {lx}",
        ),
        AreaItem(
            "pe.vector",
            n * um2(vec_bytes * a.vector_um2_per_datapath_byte) * logic,
            "logic",
            f"{pes} x {vec_bytes:g} datapath B x {a.vector_um2_per_datapath_byte:g} um^2 {lx}",
        ),
        AreaItem(
            "pe.mlu",
            n * um2(chip.mlu.bytes_per_cycle * a.mlu_um2_per_byte_per_cycle) * logic,
            "logic",
            f"{pes} x {chip.mlu.bytes_per_cycle:g} B/cycle x {a.mlu_um2_per_byte_per_cycle:g} um^2 {lx}",
        ),
        AreaItem(
            "pe.cores",
            n * chip.core.cores_per_pe * a.core_mm2 * logic,
            "logic",
            f"{pes} x {chip.core.cores_per_pe} RISC-V cores x {a.core_mm2:g} mm^2 {lx}",
        ),
        AreaItem(
            "pe.other",
            n * a.pe_other_mm2 * logic,
            "logic",
            f"{pes} x {a.pe_other_mm2:g} mm^2 (CP, FI, registers, peripherals) {lx}",
        ),
        AreaItem(
            "pe.local_memory",
            n * ls_mib * a.local_memory_mm2_per_mib * sram,
            "sram",
            f"{pes} x {ls_mib:g} MiB x {a.local_memory_mm2_per_mib:g} mm^2/MiB x node {sram:g}",
        ),
        AreaItem(
            "sram",
            sram_mib * a.sram_mm2_per_mib * sram,
            "sram",
            f"{sram_mib:g} MiB x {a.sram_mm2_per_mib:g} mm^2/MiB x node {sram:g}",
        ),
        AreaItem(
            "noc",
            n * um2(noc_bytes * a.noc_um2_per_pe_byte) * logic,
            "logic",
            f"{pes} x {noc_bytes:g} B/cycle (NoC lane + reduction link) x {a.noc_um2_per_pe_byte:g} um^2 {lx}",
        ),
        AreaItem(
            "dram_phy",
            chip.dram.channels * x16 * a.dram_phy_mm2_per_x16_channel * io,
            "io",
            f"{chip.dram.channels} LPDDR5 channels x {x16:g} x16 x {a.dram_phy_mm2_per_x16_channel:g} mm^2 x node {io:g}",
        ),
        AreaItem(
            "pcie",
            chip.host.pcie_lanes * a.pcie_mm2_per_lane * io,
            "io",
            f"{chip.host.pcie_lanes} PCIe Gen{chip.host.pcie_generation} lanes x {a.pcie_mm2_per_lane:g} mm^2 x node {io:g}",
        ),
        AreaItem(
            "misc",
            a.misc_mm2 * io,
            "io",
            f"{a.misc_mm2:g} mm^2 (control subsystem, clocks, debug, IO ring) x node {io:g}",
        ),
    )
    return AreaReport(chip.name, chip.identity.process_nm, items, a.published_die_mm2)
