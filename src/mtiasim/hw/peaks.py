"""Chip-level peak rates derived from unit-level parameters (never typed-in totals).

MTIA's own tables quote on-chip rates in a 1024-based convention (1 T = 1024 G): 64 PEs x 1024 INT8 MAC x 2 x
0.8 GHz = 104.86 TOPS is quoted as 102.4. `Peak` keeps both: `physical` (what the hardware moves per second,
used for timing) and `quoted` (physical / 1.024 where Meta used that convention, else the same number).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtiasim.dtypes import DType
from mtiasim.hw.chip import Chip

_KILO_1024 = 1.024


@dataclass(frozen=True)
class Peak:
    """One peak rate with its unit, in physical units and in the convention the vendor quotes."""

    name: str
    physical: float
    unit: str
    convention_1024: bool
    formula: str

    @property
    def quoted(self) -> float:
        return self.physical / _KILO_1024 if self.convention_1024 else self.physical


def dpe_macs_per_cycle(chip: Chip, dtype: DType) -> int:
    if dtype in (DType.INT8, DType.UINT8):
        return chip.dpe.int8_macs_per_cycle
    if dtype == DType.FP16:
        return chip.dpe.fp16_macs_per_cycle
    if dtype == DType.BF16:
        return chip.dpe.bf16_macs_per_cycle
    raise ValueError(f"the DPE has no {dtype.value} datapath")


def se_ops_per_cycle(chip: Chip, dtype: DType) -> float:
    if dtype in (DType.INT8, DType.UINT8):
        return chip.se.int8_ops_per_cycle
    if dtype in (DType.FP16, DType.BF16):
        return chip.se.fp16_ops_per_cycle
    return chip.se.fp32_ops_per_cycle


def sram_bytes_per_s(chip: Chip) -> float:
    return chip.sram.slices * chip.sram.slice_bytes_per_cycle * chip.hz


def dram_channel_bytes_per_s(chip: Chip) -> float:
    return chip.dram.channel_width_bits / 8 * chip.dram.transfer_rate_mts * 1e6


def dram_bytes_per_s(chip: Chip) -> float:
    return chip.dram.channels * dram_channel_bytes_per_s(chip)


def dpe_ops_per_s(chip: Chip, dtype: DType) -> float:
    """Dense matmul ops per second (1 MAC = 2 ops) over the whole grid."""
    return chip.n_pes * dpe_macs_per_cycle(chip, dtype) * 2 * chip.hz


def peaks(chip: Chip) -> list[Peak]:
    """Every headline rate of the chip, each computed from unit-level parameters."""
    n, hz = chip.n_pes, chip.hz
    on_chip_1024 = chip.identity.quotes_1024_based
    f = chip.clock.frequency_ghz
    g = f"{chip.grid.rows}x{chip.grid.cols} PEs"
    return [
        Peak(
            "dpe_int8_tops",
            dpe_ops_per_s(chip, DType.INT8) / 1e12,
            "TOPS",
            on_chip_1024,
            f"{g} x {chip.dpe.int8_macs_per_cycle} MAC/cycle x 2 x {f} GHz",
        ),
        Peak(
            "dpe_fp16_tflops",
            dpe_ops_per_s(chip, DType.FP16) / 1e12,
            "TFLOPS",
            on_chip_1024,
            f"{g} x {chip.dpe.fp16_macs_per_cycle} MAC/cycle x 2 x {f} GHz",
        ),
        Peak(
            "dpe_bf16_tflops",
            dpe_ops_per_s(chip, DType.BF16) / 1e12,
            "TFLOPS",
            on_chip_1024,
            f"{g} x {chip.dpe.bf16_macs_per_cycle} MAC/cycle x 2 x {f} GHz",
        ),
        Peak(
            "se_int8_tops",
            n * chip.se.int8_ops_per_cycle * hz / 1e12,
            "TOPS",
            on_chip_1024,
            f"{g} x {chip.se.int8_ops_per_cycle:g} ops/cycle x {f} GHz",
        ),
        Peak(
            "se_fp16_tflops",
            n * chip.se.fp16_ops_per_cycle * hz / 1e12,
            "TFLOPS",
            on_chip_1024,
            f"{g} x {chip.se.fp16_ops_per_cycle:g} ops/cycle x {f} GHz",
        ),
        Peak(
            "vector_int8_tops",
            n * chip.vector.int8_ops_per_cycle * hz / 1e12,
            "TOPS",
            on_chip_1024,
            f"{g} x {chip.vector.int8_ops_per_cycle:g} ops/cycle x {f} GHz",
        ),
        Peak(
            "vector_fp16_tflops",
            n * chip.vector.fp16_ops_per_cycle * hz / 1e12,
            "TFLOPS",
            on_chip_1024,
            f"{g} x {chip.vector.fp16_ops_per_cycle:g} ops/cycle x {f} GHz",
        ),
        Peak(
            "vector_fp32_tflops",
            n * chip.vector.fp32_ops_per_cycle * hz / 1e12,
            "TFLOPS",
            on_chip_1024,
            f"{g} x {chip.vector.fp32_ops_per_cycle:g} ops/cycle x {f} GHz",
        ),
        Peak(
            "local_memory_gbps_per_pe",
            chip.local_memory.bytes_per_cycle * hz / 1e9,
            "GB/s",
            on_chip_1024,
            f"{chip.local_memory.bytes_per_cycle:g} B/cycle x {f} GHz",
        ),
        Peak(
            "sram_gbps",
            sram_bytes_per_s(chip) / 1e9,
            "GB/s",
            on_chip_1024,
            f"{chip.sram.slices} slices x {chip.sram.slice_bytes_per_cycle:g} B/cycle x {f} GHz",
        ),
        Peak(
            "dram_gbps",
            dram_bytes_per_s(chip) / 1e9,
            "GB/s",
            False,
            f"{chip.dram.channels} channels x {chip.dram.channel_width_bits} bit x {chip.dram.transfer_rate_mts:g} MT/s",
        ),
        Peak(
            "host_link_gbps",
            chip.host.bandwidth_gbps,
            "GB/s",
            False,
            f"PCIe Gen{chip.host.pcie_generation} x{chip.host.pcie_lanes}",
        ),
    ]


def peak(chip: Chip, name: str) -> Peak:
    for p in peaks(chip):
        if p.name == name:
            return p
    raise KeyError(name)
