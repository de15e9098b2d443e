"""Microbenchmarks of single operators on the simulated chip (the `mtiasim bench` commands)."""

from mtiasim.bench.gemm import bench_gemm
from mtiasim.bench.ops import OPS, bench_op
from mtiasim.bench.suite import run_suite
from mtiasim.bench.tbe import bench_tbe

__all__ = ["OPS", "bench_gemm", "bench_op", "bench_tbe", "run_suite"]
