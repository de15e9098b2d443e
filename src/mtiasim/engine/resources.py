"""The chip's shared resources, as the timing engine sees them: each has a capacity in bytes per second.

- 16 SRAM slices and 16 LPDDR5 channels, a quarter of each on every side of the grid (N, S, E, W);
- the NoC lanes that enter (and leave) the grid from each side: one per PE column for N/S, one per PE row for
  E/W. Data from a slice on the north side reaches PE (r, c) through lane N[c]; a multicast to a row or a
  column crosses each lane once;
- each PE's Fabric Interface, in and out;
- each LPDDR5 channel's controller queue: it holds `queue_entries` transactions (reads and writes, cache-line
  fills and DMA requests, each of at most `transaction_bytes`) for one LPDDR5 latency each, so by Little's
  law a channel moves at most `queue_entries x transaction_bytes / latency_ns` bytes of transactions per second
  (usage counts whole transactions);
- the host side of the card: its PCIe link to the host, one resource per direction (full duplex, `host_link_in`
  and `host_link_out`, the chip's `host.bandwidth_gbps`: PCIe Gen4 x8 on MTIA v1, published), and the host
  CPU's share for this chip (`host_cpu`, at its copy rate `host.cpu_copy_gbps`, assumed): input and output DMA
  and the host's pre- and post-processing are flows on them (`isa.HostTransfer`), timed with everything else.

The reduction network is point to point (north->south, west->east) and is timed per link, not shared here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtiasim.hw import Chip
from mtiasim.hw.peaks import dram_channel_bytes_per_s
from mtiasim.isa import HostSide, PeId

SIDES = ("N", "S", "E", "W")

CLASS_SRAM = "sram"
CLASS_DRAM = "dram"
CLASS_NOC = "noc"
CLASS_PCIE = "pcie"  # the host link
CLASS_HOST = "host"  # the host CPU


@dataclass(frozen=True)
class ResourceMap:
    chip: Chip
    capacity: np.ndarray  # bytes/s per resource
    klass: tuple[str, ...]  # attribution class per resource
    names: tuple[str, ...]
    slice0: int
    channel0: int
    lane_in0: int
    lane_out0: int
    fi_in0: int
    fi_out0: int
    host0: int  # host_link_in, host_link_out, host_cpu (HostSide order)
    queue0: int

    @property
    def n(self) -> int:
        return int(self.capacity.size)

    def slice_side(self, s: int) -> int:
        return s * 4 // self.chip.sram.slices

    def channel_side(self, c: int) -> int:
        return c * 4 // self.chip.dram.channels

    def lane(self, side: int, pe: PeId, inbound: bool = True) -> int:
        rows, cols = self.chip.grid.rows, self.chip.grid.cols
        width = max(rows, cols)
        index = pe[1] if side in (0, 1) else pe[0]
        base = self.lane_in0 if inbound else self.lane_out0
        return base + side * width + index

    def fi_in(self, pe: PeId) -> int:
        return self.fi_in0 + pe[0] * self.chip.grid.cols + pe[1]

    def fi_out(self, pe: PeId) -> int:
        return self.fi_out0 + pe[0] * self.chip.grid.cols + pe[1]

    def host_side(self, side: HostSide) -> int:
        return self.host0 + tuple(HostSide).index(side)


def resource_map(chip: Chip) -> ResourceMap:
    hz = chip.hz
    caps: list[float] = []
    klass: list[str] = []
    names: list[str] = []

    def add(n: int, cap: float, k: str, name: str) -> int:
        start = len(caps)
        caps.extend([cap] * n)
        klass.extend([k] * n)
        names.extend(f"{name}[{i}]" for i in range(n))
        return start

    slice0 = add(chip.sram.slices, chip.sram.slice_bytes_per_cycle * hz, CLASS_SRAM, "sram_slice")
    channel0 = add(chip.dram.channels, dram_channel_bytes_per_s(chip), CLASS_DRAM, "dram_channel")
    width = max(chip.grid.rows, chip.grid.cols)
    lane_cap = chip.noc.lane_bytes_per_cycle * hz
    lane_in0 = add(4 * width, lane_cap, CLASS_NOC, "lane_in")
    lane_out0 = add(4 * width, lane_cap, CLASS_NOC, "lane_out")
    n_pe = chip.n_pes
    fi_cap = chip.noc.fi_bytes_per_cycle * hz
    fi_in0 = add(n_pe, fi_cap, CLASS_NOC, "fi_in")
    fi_out0 = add(n_pe, fi_cap, CLASS_NOC, "fi_out")
    link = chip.host.bandwidth_gbps * 1e9
    host0 = add(1, link, CLASS_PCIE, HostSide.LINK_IN.value)
    add(1, link, CLASS_PCIE, HostSide.LINK_OUT.value)
    add(1, chip.host.cpu_copy_gbps * 1e9, CLASS_HOST, HostSide.CPU.value)
    d = chip.dram
    queue_cap = d.queue_entries * d.transaction_bytes / (max(d.latency_ns, 1.0) * 1e-9)
    queue0 = add(d.channels, queue_cap, CLASS_DRAM, "dram_queue")
    return ResourceMap(
        chip,
        np.asarray(caps, dtype=np.float64),
        tuple(klass),
        tuple(names),
        slice0,
        channel0,
        lane_in0,
        lane_out0,
        fi_in0,
        fi_out0,
        host0,
        queue0,
    )
