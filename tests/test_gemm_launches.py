"""The GEMM benchmark's launches in flight (GemmBench's numAsyncLaunches): where each launch's A and C go when
the scratchpad cannot hold them all, and the time per launch as the mean over the launches' placements."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtiasim.bench.gemm import prepare_gemm
from mtiasim.errors import CapacityError
from mtiasim.hw import load_chip
from mtiasim.runtime import compile as mtia_compile

V1 = load_chip("mtia-v1")
SRAM, SPILLED = "sram", "dram (cache)"


def _chip(scratchpad_bytes: int):
    return V1.with_values({"sram.scratchpad_bytes": scratchpad_bytes})


def _placements(res) -> dict[tuple[str, str], int]:
    return {(row["a"], row["c"]): row["launches"] for row in res["launches"]}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.sampled_from([64, 128, 256]),
    k=st.sampled_from([128, 256, 512]),
    fit=st.integers(0, 7),
    in_flight=st.integers(1, 5),
)
def test_launches_spill_in_order_by_closed_form(m, k, fit, in_flight):
    # A [m, k] and C [m, k] (int8 out, N = K) are X bytes each, W [k, k] and the int32 bias sit with the first
    # launch; `fit` more tensors of X bytes fit after them, taken in order A@1, C@1, A@2, ...
    x, w, bias = m * k, k * k, 4 * k
    chip = _chip(2 * x + w + bias + fit * x)
    res = prepare_gemm(m, k, k, "int8", "sram", chip, in_flight=in_flight).run()
    further = 2 * (in_flight - 1)
    f = min(fit, further)
    want = {
        (SRAM, SRAM): 1 + f // 2,
        (SRAM, SPILLED): f % 2,
        (SPILLED, SPILLED): in_flight - 1 - f // 2 - f % 2,
    }
    assert _placements(res) == {key: n for key, n in want.items() if n}
    assert sum(_placements(res).values()) == in_flight == res["in_flight"]


def test_time_per_launch_is_the_mean_over_the_placements():
    # two further launches fit; each launch beyond them is spilled whole and takes the same time, so the total
    # time of L launches grows by that time per launch added: L s(L) - (L-1) s(L-1) is constant beyond 3
    m = k = 256
    x, w, bias = m * k, k * k, 4 * k
    chip = _chip(2 * x + w + bias + 4 * x)
    s = {n: prepare_gemm(m, k, k, "int8", "sram", chip, in_flight=n).run()["seconds"] for n in (1, 3, 4, 5)}
    assert s[3] == s[1]  # all placed alike: one job, the same time
    spilled = 4 * s[4] - 3 * s[3]
    assert spilled > 0 and spilled != pytest.approx(s[1])
    assert 5 * s[5] - 4 * s[4] == pytest.approx(spilled, rel=1e-9)


def test_the_first_launch_must_fit_where_asked():
    with pytest.raises(CapacityError, match="tensor 'C'"):
        prepare_gemm(256, 256, 256, "int8", "sram", _chip(3 * 256 * 256 - 1))


def test_lpddr5_launches_are_placed_alike():
    res = prepare_gemm(256, 256, 256, "int8", "dram", _chip(0), in_flight=4).run()
    assert _placements(res) == {(SPILLED, SPILLED): 4}
    assert res["jobs"] == 1


def test_compiled_models_honour_the_scratchpad_size():
    # one call's activations (0.2 MiB) and the 1 MiB per-call index reserve fit 1.3 MiB; the 0.25 MiB weight not
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512)).eval()
    x = torch.randn(64, 512)
    where = {}
    for size in (V1.sram.bytes, 1.3 * 2**20):
        plan = mtia_compile(model, (x,), chip=_chip(int(size))).memory_plan
        where[size] = {r.split()[0]: r.split()[2] for r in plan.splitlines()[1:-1]}
    assert where[V1.sram.bytes]["p_0_weight@int8"] == "sram"
    assert where[1.3 * 2**20]["p_0_weight@int8"] == "dram"
    assert where[1.3 * 2**20]["input"] == "sram"


def test_cli_lists_the_launches_placed_apart(capsys):
    from mtiasim.cli import main

    # 256^3 int8: A, W, C 64 KiB each and a 1 KiB bias; one further tensor of 64 KiB fits
    size = 4 * 65536 + 1024
    code = main(["bench", "gemm", "--m", "256", "--k", "256", "--n", "256", "--in-flight", "3",
                 "--set", f"sram.scratchpad_bytes={size}"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    launches = [
        line.rsplit(",", 1)[0].strip() for line in out.splitlines() if line.strip().startswith("launches")
    ]
    assert launches == [
        "launches  1 of 3 with A in sram, C in sram",
        "launches  1 of 3 with A in sram, C in dram (cache)",
        "launches  1 of 3 with A in dram (cache), C in dram (cache)",
    ]
