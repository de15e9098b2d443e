"""Host fallback (`fallback="host"`, `run --fallback host`): an operator the chip has no kernel for runs on the
host CPU, timed as its PCIe round trip and the host's work, listed as `host_call`; without it the error stays
one line naming the op, the module and the source line."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

import mtiasim
from mtiasim.cli import main
from mtiasim.errors import UnsupportedOperatorError
from mtiasim.hw import load_chip


class TopK(nn.Module):
    """topk (no kernel) between two FCs, its indices used too: a tuple result on the host."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 16), nn.Linear(3, 4)

    def forward(self, x):
        values, indices = torch.topk(self.a(x), 3)
        return torch.sigmoid(self.b(values)) + indices[:, :1].to(torch.float32)


def test_without_fallback_the_error_names_op_module_and_line():
    with pytest.raises(UnsupportedOperatorError) as err:
        mtiasim.compile(TopK().eval(), (torch.randn(5, 8),))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(
        "model TopK: operator aten::topk has no MTIA kernel (module <top>"
    )
    assert "test_fallback.py:" in msg


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fallback_runs_the_op_on_the_host_and_times_its_round_trip(precision):
    model, x = TopK().eval(), torch.randn(5, 8)
    cm = mtiasim.compile(model, (x,), mode="both", precision=precision, fallback="host")
    got = cm(x)
    with torch.no_grad():
        want = model(x)
    # the host picks the top 3 of the device's fc output: the same indices, values within the fc's rounding
    assert torch.equal(got.floor(), want.floor())
    assert float((got - want).abs().max()) < 2e-2
    calls = [op for op in cm.report.ops if op.kind == "host_call"]
    assert [op.name for op in calls] == ["topk_0", "topk_1"]  # values and indices: one round trip each
    host = load_chip("mtia-v1").host
    for op in calls:
        outputs = 5 * 3 * (8 if op.name == "topk_1" else 2)  # int64 indices, fp16 values
        nbytes = 5 * 16 * 2 + outputs
        closed = (
            2 * host.latency_ns * 1e-9
            + nbytes / (host.bandwidth_gbps * 1e9)
            + host.cpu_op_ns * 1e-9
            + nbytes / (host.cpu_copy_gbps * 1e9)
        )
        assert op.detail_us["host"] == pytest.approx(closed * 1e6, rel=1e-9)  # plus the job's launch
        assert op.time_us >= closed * 1e6
    assert cm.report.latency_s * 1e6 >= sum(op.time_us for op in calls)
    # what follows a host call is not bounded by the specification: the check says so instead of failing
    assert cm.check()["passed"]


def test_run_fallback_host_on_a_users_model(tmp_path, capsys):
    (tmp_path / "m.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn


            class Sorted(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(6, 10)

                def forward(self, x):
                    return torch.sort(self.fc(x), dim=-1).values


            def make():
                torch.manual_seed(0)
                return Sorted(), (torch.randn(7, 6),)
            """
        )
    )
    spec = f"{tmp_path / 'm.py'}:make"
    assert main(["run", spec, "--json"]) == 2
    _, err = capsys.readouterr()
    assert err.strip().startswith(
        "mtiasim: error: model Sorted: operator aten::sort has no MTIA kernel (module"
    )
    assert main(["run", spec, "--fallback", "host", "--check", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["check"]["passed"] is True and res["latency_us"] > 0
    assert "host_call" in {op["kind"] for op in res["ops"]}
