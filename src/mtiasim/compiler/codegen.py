"""Code generation: kernel ops -> jobs of PE command programs, with tensors, dependencies and sub-grids.

`Codegen.build` runs the passes, each a module (imports point down this list):

1. `kernel_table`: what each kernel kind needs, costs and builds (one record per `kinds.KernelKind`);
2. `placement`: copies where a kernel needs a shape a view cannot give, the memory plan, the tensor decls;
3. `lanes`: the sparse (lookups) and dense (independent of them) lanes and the sub-grids they run on;
4. `dispatch`: each op's job on its lane's sub-grid, with its dependencies (the lookups' jobs per call).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtiasim.compiler.dispatch import TbeSpec, build_jobs, check_index_fit, tbe_job_for
from mtiasim.compiler.kinds import KernelKind
from mtiasim.compiler.lanes import assign_lanes, sub_grids
from mtiasim.compiler.lower import Lowered
from mtiasim.compiler.memory import MemoryPlan
from mtiasim.compiler.placement import Declarations, fix_views, plan
from mtiasim.errors import CapacityError
from mtiasim.hw import Chip
from mtiasim.isa import Job, TensorDecl
from mtiasim.kernels.common import Region
from mtiasim.kernels.jagged import JaggedCall


@dataclass
class DeviceCode:
    tensors: dict[str, TensorDecl]
    constants: dict[str, np.ndarray]  # decl -> contents (weights, tables) for functional runs
    jobs: list[Job]  # static jobs in program order (lookup jobs are inserted by name at call time)
    order: list[str]  # kop names in program order
    tbe: dict[str, TbeSpec]
    inputs: dict[str, str]  # device input value -> decl
    outputs: dict[str, str]  # graph output value -> decl
    memory: MemoryPlan
    regions: dict[str, Region]
    index_base: int  # SRAM address where per-call index tensors start
    index_reserve: int
    dram_top: int
    lanes: dict[str, str] = field(default_factory=dict)
    calls: dict[str, JaggedCall] = field(default_factory=dict)  # other per-call jobs, by kop name


class Codegen:
    def __init__(self, low: Lowered, chip: Chip, graph_inputs: list[str], graph_outputs: list[str],
                 index_bytes: int) -> None:  # fmt: skip
        self.low = low
        self.chip = chip
        self.inputs = graph_inputs
        self.outputs = graph_outputs
        self.index_bytes = index_bytes
        self.decls = Declarations(low, chip)

    @property
    def tensors(self) -> dict[str, TensorDecl]:
        return self.decls.tensors

    def build(self, lookups_per_kop: dict[str, int]) -> DeviceCode:
        """The device code; `lookups_per_kop` (rows each lookup op gathers in an example call) sizes the
        sub-grids."""
        low = self.low
        for op in low.kops:
            if op.kind == KernelKind.TBE:
                op.attrs["lookups"] = lookups_per_kop.get(op.name, 0)
        fix_views(low)
        assign_lanes(low)
        mem = plan(low, self.chip, self.outputs, self.index_bytes)
        constants = self.decls.declare(mem)
        regions = sub_grids(self.chip, low)
        jobs, tbe, calls = build_jobs(self.decls, regions)
        decl = self.decls.decl
        inputs = {v: decl(v).name for v in self.inputs if v in low.views}
        outputs = {v: decl(v).name for v in self.outputs}
        return DeviceCode(
            self.tensors,
            constants,
            jobs,
            [op.name for op in low.kops],
            tbe,
            inputs,
            outputs,
            mem,
            regions,
            mem.sram_activation_bytes,
            mem.sram_index_reserve_bytes,
            mem.dram_bytes,
            {op.name: op.lane for op in low.kops},
            calls,
        )


__all__ = ["CapacityError", "Codegen", "DeviceCode", "TbeSpec", "check_index_fit", "tbe_job_for"]
