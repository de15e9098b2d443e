"""The host side of a call, as engine jobs: the host CPU's prologue, the input DMA over the card's host link
and the output DMA back, around the device program.

    host:prologue (host CPU) -> host:h2d (host link, in) -> the device jobs -> host:d2h (host link, out)

Each is one `HostTransfer`, a flow on a host-side resource of the chip's engine (`engine.resources`): so the
transfers and the host's work are timed by the same event simulation as the device (several transfers on one
link share it) and show in its per-resource use. A phase with nothing to do has no job.
"""

from __future__ import annotations

import dataclasses

from mtiasim.hw import Chip
from mtiasim.isa import HostSide, HostTransfer, Job, PeProgram

PROLOGUE, H2D, D2H = "host:prologue", "host:h2d", "host:d2h"
# job kind -> the host-side resource its transfer is on
HOST_KINDS: dict[str, HostSide] = {"host": HostSide.CPU, "h2d": HostSide.LINK_IN, "d2h": HostSide.LINK_OUT}
_HOST_PE = (0, 0)  # the PE whose DMA queue issues the host-side transfers


def cpu_bytes(chip: Chip, seconds: float) -> float:
    """The host CPU's work of `seconds` at its full rate, in bytes of its copy rate (`HostTransfer`)."""
    return seconds * chip.host.cpu_copy_gbps * 1e9


def _job(name: str, kind: str, cmd: HostTransfer, deps: tuple[str, ...]) -> Job:
    return Job(name, kind, {_HOST_PE: PeProgram(_HOST_PE, (), ([cmd], []))}, deps=deps, host=True)


def with_host_side(
    jobs: list[Job], chip: Chip, *, host_s: float, h2d_bytes: int, d2h_bytes: int
) -> list[Job]:
    """The device `jobs` between the host's prologue and input DMA, and the output DMA: the device jobs that
    depend on nothing wait for the inputs, the output DMA waits for every job nothing depends on."""
    latency_s = chip.host.latency_ns * 1e-9
    before: list[Job] = []
    if host_s > 0:
        before.append(
            _job(PROLOGUE, "host", HostTransfer(HostSide.CPU, cpu_bytes(chip, host_s), what="prologue"), ())
        )
    if h2d_bytes > 0:
        deps = tuple(j.name for j in before[-1:])
        before.append(_job(H2D, "h2d", HostTransfer(HostSide.LINK_IN, h2d_bytes, latency_s, "inputs"), deps))
    ready = tuple(j.name for j in before[-1:])
    device = [j if j.deps or not ready else dataclasses.replace(j, deps=ready) for j in jobs]
    used = {d for j in jobs for d in j.deps}
    after: list[Job] = []
    if d2h_bytes > 0:
        sinks = tuple(j.name for j in jobs if j.name not in used) or ready
        after.append(
            _job(D2H, "d2h", HostTransfer(HostSide.LINK_OUT, d2h_bytes, latency_s, "outputs"), sinks)
        )
    return before + device + after
