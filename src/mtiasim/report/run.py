"""What a run reports: latency on the timeline (host, PCIe, device), throughput, MAC utilisation, the memory
plan, and one row per op with its time, sub-grid and bound.

The run's bottleneck attribution follows the critical chain: from the job that ends last, back through the
dependency (or the job before it on the same PEs) that ended last, adding each job's own attribution; the host
prologue and the PCIe transfers are added as `host` and `pcie`. The shares add up to the latency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from mtiasim.dtypes import DType
from mtiasim.engine import ExecutionResult, TimingResult
from mtiasim.engine.numerics import ConversionStats
from mtiasim.engine.timing import coarse
from mtiasim.hw import Chip
from mtiasim.hw.area import area
from mtiasim.hw.peaks import dpe_macs_per_cycle
from mtiasim.isa import Program
from mtiasim.power import PowerReport, power_report
from mtiasim.report.activity import op_activity, pe_utilization


class CompiledModel(Protocol):
    """What a run report reads of the compiled model it reports (`mtiasim.runtime.model.CompiledModel`): the
    chip, the mode and fidelity it ran in, the compiled graph (`compiled`: lowered kernel ops, views, code,
    formats, graph) and the capture (`captured`: the exported program and its user inputs). The report sits
    below the runtime: it names the attributes it reads, not the class."""

    chip: Chip
    mode: str
    fidelity: str
    compiled: Any
    captured: Any


@dataclass
class OpRow:
    name: str
    kind: str
    lane: str
    pes: int
    start_us: float
    end_us: float
    bound: str
    macs: float
    detail_us: dict[str, float]  # where the op's time went, compute split by unit (JobTiming.detail)
    module: str
    ops: float = 0.0  # arithmetic ops: 2 per MAC plus SE/RE element ops
    bytes: dict[str, float] = field(default_factory=dict)  # per memory level (local_memory, sram, dram, noc)
    energy_j: float = 0.0  # dynamic chip energy

    @property
    def time_us(self) -> float:
        return self.end_us - self.start_us

    @property
    def attribution_us(self) -> dict[str, float]:
        return coarse(self.detail_us)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "lane": self.lane,
            "pes": self.pes,
            "start_us": round(self.start_us, 4),
            "end_us": round(self.end_us, 4),
            "time_us": round(self.time_us, 4),
            "bound": self.bound,
            "macs": self.macs,
            "attribution_us": {k: round(v, 4) for k, v in sorted(self.attribution_us.items())},
            "module": self.module,
            "ops": self.ops,
            "bytes": {k: float(v) for k, v in sorted(self.bytes.items())},
            "energy_j": self.energy_j,
            "attribution_detail_us": {k: round(v, 4) for k, v in sorted(self.detail_us.items()) if v > 0},
        }


@dataclass
class RunReport:
    model: str
    chip: str
    mode: str
    fidelity: str
    precision: str
    batch: int
    computed: bool
    host_s: float
    h2d_s: float
    device_s: float
    d2h_s: float
    macs: float
    mac_utilization: float
    ops: list[OpRow]
    detail_s: dict[str, float]  # where the latency went (compute split by unit, host, pcie), adds up to it
    memory_plan: str
    counters: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    power: PowerReport | None = None  # timing modes
    timing: TimingResult | None = field(default=None, repr=False)  # the device program's schedule
    # functional modes: per op, what its conversions met (NaN/Inf, saturation, overflow); ops with events only
    conversions: dict[str, ConversionStats] = field(default_factory=dict)
    numerics_warnings: list[str] = field(default_factory=list)
    # the chip's `--set` / with_values overrides and the hash of its resolved values (Chip.values_hash)
    overrides: dict[str, Any] = field(default_factory=dict)
    chip_hash: str = ""
    area_mm2: float = 0.0  # the chip's modelled die area (mtiasim.hw.area)
    h2d_bytes: int = 0  # what crossed PCIe into the device, and back
    d2h_bytes: int = 0
    # timed calls: per host-side engine resource (host_cpu, host_link_in, host_link_out), its busy time
    host_busy_s: dict[str, float] = field(default_factory=dict)

    @property
    def timed(self) -> bool:
        """Whether the run was timed: a functional run computes numbers and claims no time."""
        return self.mode != "functional"

    @property
    def latency_s(self) -> float | None:
        """Host + PCIe in + device + PCIe out; None for a run that was not timed (functional mode)."""
        return self.host_s + self.h2d_s + self.device_s + self.d2h_s if self.timed else None

    @property
    def samples_per_s(self) -> float | None:
        """The batch over the latency; None when not timed or when nothing took time (a graph with no work)."""
        latency = self.latency_s
        return self.batch / latency if latency and self.batch else None

    def __str__(self) -> str:
        head = (
            f"{self.model} batch {self.batch} on {self.chip} ({self.precision}, {self.mode}, {self.fidelity})"
        )
        if not self.timed:
            return f"{head}: not timed (functional mode)"
        rate = f"{self.samples_per_s:,.0f} samples/s" if self.samples_per_s is not None else "no work"
        return f"{head}: latency {1e6 * (self.latency_s or 0.0):.2f} us, {rate}, bound {self.bound}"

    @property
    def attribution_s(self) -> dict[str, float]:
        return coarse(self.detail_s)

    @property
    def bound(self) -> str:
        return max(self.attribution_s.items(), key=lambda kv: kv[1])[0] if self.attribution_s else "compute"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "chip": self.chip,
            "chip_hash": self.chip_hash,
            "overrides": dict(self.overrides),
            "area_mm2": round(self.area_mm2, 4),
            "mode": self.mode,
            "fidelity": self.fidelity,
            "precision": self.precision,
            "batch": self.batch,
            "computed": self.computed,
            **self._timing_json(),
            "ops": [op.to_json() for op in self.ops],
            "memory_plan": self.memory_plan.splitlines(),
            "counters": self.counters,
            **self._power_json(),
            **self._numerics_json(),
        }

    def _timing_json(self) -> dict[str, Any]:
        """Latency, throughput and where the time went; None (and no attribution) for a functional run, which
        is not timed."""
        timed = self.timed
        phases = {
            "host_us": self.host_s,
            "h2d_us": self.h2d_s,
            "device_us": self.device_s,
            "d2h_us": self.d2h_s,
        }
        rate = self.samples_per_s
        return {
            "latency_us": _us(self.latency_s),
            "samples_per_s": None if rate is None else round(rate, 3),
            **{key: _us(s) if timed else None for key, s in phases.items()},
            "h2d_bytes": self.h2d_bytes,
            "d2h_bytes": self.d2h_bytes,
            "host_busy_us": {k: round(v * 1e6, 4) for k, v in sorted(self.host_busy_s.items()) if timed},
            "macs": self.macs,
            "mac_utilization": round(self.mac_utilization, 5) if timed else None,
            "bound": self.bound if timed else None,
            "attribution_us": {k: round(v * 1e6, 4) for k, v in sorted(self.attribution_s.items()) if timed},
            "attribution_detail_us": {
                k: round(v * 1e6, 4) for k, v in sorted(self.detail_s.items()) if v > 0 and timed
            },
        }

    def _numerics_json(self) -> dict[str, Any]:
        if not self.computed:
            return {}
        return {
            "conversions": {name: vars(st) for name, st in sorted(self.conversions.items())},
            "numerics_warnings": list(self.numerics_warnings),
        }

    def _power_json(self) -> dict[str, Any]:
        if self.power is None:
            return {}
        out = self.power.to_json()
        out["samples_per_s_per_w"] = {
            k: round(v, 3) for k, v in self.power.per_watt(self.samples_per_s or 0.0).items()
        }
        if self.timing is not None and self.timing.nodes is not None:
            util = pe_utilization(self.power.chip, self.timing.nodes, self.timing.seconds)
            out["pe_utilization"] = {u: np.round(a, 4).tolist() for u, a in util.items()}
        return out


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 4)


def _phases(t: TimingResult, host_kinds: Mapping[str, str]) -> tuple[float, float, float, float]:
    """Host, PCIe in, device and PCIe out time of a timed call whose host side are jobs of the kinds
    `host_kinds` (the host CPU's, the input DMA's, the output DMA's, in that order): each phase from the end of
    the one before; they add up to the timeline."""
    ends = {j.kind: j.end_s for j in t.jobs if j.kind in host_kinds}
    cpu, link_in, link_out = host_kinds
    host_end = ends.get(cpu, 0.0)
    in_end = ends.get(link_in, host_end)
    device_end = max([j.end_s for j in t.jobs if j.kind not in host_kinds] + [in_end])
    return host_end, in_end - host_end, device_end - in_end, max(t.seconds - device_end, 0.0)


def host_busy_s(t: TimingResult, host_kinds: Mapping[str, str]) -> dict[str, float]:
    """Per host-side resource (host_cpu, host_link_in, host_link_out), the time its transfers moved data."""
    out = {str(side): 0.0 for side in host_kinds.values()}
    if t.fidelity == "roofline" or t.nodes is None:  # no node times: each job's bytes at the resource's peak
        for j in t.jobs:
            if j.kind in host_kinds:
                out[str(host_kinds[j.kind])] += j.end_s - j.start_s
        return out
    kinds = [j.kind for j in t.jobs]
    for i, (job, cmd) in enumerate(zip(t.nodes.job, t.nodes.command, strict=True)):
        if cmd == "HostTransfer" and kinds[job] in host_kinds:
            out[str(host_kinds[kinds[job]])] += float(t.nodes.busy_s[i])
    return out


def _macs(model: CompiledModel) -> dict[str, float]:
    low = model.compiled.lowered
    out = {}
    for op in low.kops:
        if op.kind in ("gemm", "bmm"):
            a = low.views[op.reads[0]].shape
            y = low.views[op.writes[0]].shape
            out[op.name] = float(math.prod(y) * a[-1])
        elif op.kind == "attention":  # q k^T and p v
            at = op.attrs
            out[op.name] = float(at["items"] * at["s_q"] * at["s_kv"] * (at["d"] + at["dv"]))
    return out


def build_report(
    model: CompiledModel,
    program: Program,
    result: ExecutionResult,
    host_s: float,
    h2d: int,
    d2h: int,
    host_kinds: Mapping[str, str],
) -> RunReport:
    """The report of a call. A timed call's host side are jobs of the kinds `host_kinds` (kind -> host-side
    resource: the host CPU's, then the input and output DMA's, `runtime.hostside`); their times split the
    latency into host, PCIe in, device and PCIe out. `host_s` is the host's modelled work (a functional call,
    which is not timed, reports it as such)."""
    compiled = model.compiled
    low = compiled.lowered
    macs = _macs(model)
    lanes = compiled.code.lanes
    modules = {op.name: op.source.module_path for op in low.kops}
    t = result.timing
    ops: list[OpRow] = []
    detail: dict[str, float] = {}
    device_s = 0.0
    if t is not None:
        device_s = t.seconds
        columns = t.nodes.counter_columns() if t.nodes is not None else None
        activity = {a.name: a for a in op_activity(model.chip, t, columns)}
        for j in t.jobs:
            if j.kind in host_kinds:  # the host side: not an operator of the model
                continue
            act = activity[j.name]
            ops.append(
                OpRow(
                    j.name,
                    j.kind,
                    lanes.get(j.name, "joint"),
                    j.pes,
                    j.start_s * 1e6,
                    j.end_s * 1e6,
                    j.bound,
                    macs.get(j.name, 0.0),
                    {k: v * 1e6 for k, v in j.detail.items()},
                    modules.get(j.name, ""),
                    act.ops,
                    act.bytes,
                    act.energy_j,
                )
            )
        detail = _critical_chain(program, t.jobs)
    h2d_s = d2h_s = 0.0
    host_busy: dict[str, float] = {}
    if t is not None:
        host_s, h2d_s, device_s, d2h_s = _phases(t, host_kinds)
        host_busy = host_busy_s(t, host_kinds)
    total_macs = sum(macs.values())
    power = None
    if t is not None:
        counters = dict(t.counters)
        counters["pcie_bytes"] = float(h2d + d2h)
        # the nodes (the host side's too) are on the call's timeline already
        power = power_report(
            model.chip, counters, t.seconds, nodes=t.nodes, device_offset_s=0.0, columns=columns
        )
    dtype = DType.INT8 if compiled.formats.precision.int8 else compiled.formats.precision.float_dtype
    chip = model.chip
    peak = dpe_macs_per_cycle(chip, dtype) * chip.grid.rows * chip.grid.cols * chip.clock.frequency_ghz * 1e9
    util = total_macs / (peak * device_s) if device_s > 0 else 0.0
    return RunReport(
        compiled.graph.name,
        chip.name,
        model.mode,
        model.fidelity,
        compiled.formats.precision.name,
        _batch(model),
        result.outputs is not None,
        host_s,
        h2d_s,
        device_s,
        d2h_s,
        total_macs,
        util,
        sorted(ops, key=lambda o: (o.start_us, o.name)),
        detail,
        compiled.code.memory.table(),
        dict(t.counters) if t is not None else {},
        power=power,
        timing=t,
        conversions={k: v for k, v in result.resolved.conversions.items() if not v.clean},
        overrides=chip.overrides(),
        chip_hash=chip.values_hash(),
        area_mm2=area(chip).total_mm2,
        h2d_bytes=int(h2d),
        d2h_bytes=int(d2h),
        host_busy_s=host_busy,
    )


def _batch(model: CompiledModel) -> int:
    """The leading dimension of the first device output; for a graph whose outputs the device does not compute
    (host bookkeeping, a side effect), that of the first tensor the call takes; 0 when it takes none."""
    graph = model.compiled.graph
    if graph.outputs:
        shape = graph.values[graph.outputs[0]].shape
        return int(shape[0]) if shape else 1
    user = set(model.captured.user_inputs)
    for node in model.captured.exported.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" and node.name in user else None
        if isinstance(val, torch.Tensor):
            return int(val.shape[0]) if val.dim() and is_concrete_int(val.shape[0]) else 1
    return 0


SATURATION_WARN_FRACTION = 1e-3


def numerics_warnings(model: CompiledModel, conversions: dict[str, ConversionStats]) -> list[str]:
    """One line per op whose conversions lost information the user should know about: NaN/Inf turned into
    finite int8, fp16/bf16 overflow, or more than 0.1 % of its values saturated (static int8 scales calibrated
    on other data)."""
    sources = {op.name: op.source for op in model.compiled.lowered.kops}
    lines = []
    for name, st in sorted(conversions.items()):
        what = []
        if st.nonfinite:
            what.append(f"{st.nonfinite} NaN/Inf input value(s)")
        if st.overflow:
            what.append(f"{st.overflow} value(s) overflowed to inf")
        if st.saturated and st.saturated >= SATURATION_WARN_FRACTION * st.converted:
            what.append(
                f"{st.saturated} of {st.converted} value(s) saturated ({100 * st.saturated / st.converted:.2g} %)"
            )
        if what:
            src = sources.get(name)
            where = src.describe() if src is not None else "?"
            lines.append(f"op {name} ({where}): {', '.join(what)}")
    return lines


def _critical_chain(program: Program, jobs: list) -> dict[str, float]:
    """Attribution of the device time along the chain of jobs that ended last."""
    if not jobs:
        return {}
    by_name = {j.name: j for j in jobs}
    deps = {job.name: job.deps for job in program.jobs}
    pes = {job.name: set(job.pes) for job in program.jobs}
    out: dict[str, float] = {}
    cur = max(jobs, key=lambda j: j.end_s)
    seen = set()
    while cur is not None and cur.name not in seen:
        seen.add(cur.name)
        for k, v in cur.detail.items():
            if k != "queue":  # waiting for the PEs: the job before on those PEs is on the chain instead
                out[k] = out.get(k, 0.0) + v
        cands = [by_name[d] for d in deps.get(cur.name, ()) if d in by_name]
        cands += [
            j for j in jobs if j.end_s <= cur.start_s + 1e-15 and pes.get(j.name, set()) & pes[cur.name]
        ]
        cands = [c for c in cands if c.end_s <= cur.end_s and c.name not in seen]
        cur = max(cands, key=lambda j: j.end_s) if cands else None
    total = sum(out.values())
    end = max(j.end_s for j in jobs)
    if total > 0:
        out = {k: v * end / total for k, v in out.items()}
    return out
