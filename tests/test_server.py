"""Cards and servers: the presets' published facts, provenance, validation, the sharding contract's attributes,
and `mtiasim server list|show`."""

import json
from pathlib import Path

import pytest

from mtiasim.cli import main
from mtiasim.errors import ConfigError
from mtiasim.hw import load_server, server_preset_names
from mtiasim.hw.chip import PROVENANCE_KINDS
from mtiasim.hw.server import SERVER_SECTIONS

GIB = 2**30


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_presets():
    assert server_preset_names() == ["grand-teton-2i", "yosemite-v3"]


def test_yosemite_v3_published_facts():
    s = load_server("yosemite-v3")
    assert (s.cards, s.card_memory_bytes, s.card.power_w, s.power.server_power_w) == (
        12,
        32 * GIB,
        35.0,
        780.0,
    )
    assert s.topology.peer_gbps == 12.8 and s.host.memory_gbps == 76.0 and s.host.memory_bytes == 96 * GIB
    assert s.card_sram_bytes == 128 * 2**20
    assert s.non_card_power_w == 780.0 - 12 * 35.0
    # PCIe 3.0 x24 host link: 24 lanes x 8 GT/s x 128/130 / 8
    assert s.topology.host_link_gbps == pytest.approx(24 * 8 * 128 / 130 / 8, abs=0.01)
    chip = s.chip()
    assert chip.dram.bytes == 32 * GIB  # the deployed card, not the chip's 64 GB
    assert chip.provenance["dram.bytes"].kind == "derived"
    assert chip.overrides() == {}  # derived from the server, not a user's what-if


def test_grand_teton_2i_tree():
    s = load_server("grand-teton-2i")
    assert (s.cards, s.topology.sockets, s.topology.switches) == (24, 2, 2)
    assert [s.socket_of(c) for c in (0, 11, 12, 23)] == [0, 0, 1, 1]
    assert s.chip().name == "mtia-2i"


@pytest.mark.parametrize("name", ["yosemite-v3", "grand-teton-2i"])
def test_every_value_has_provenance(name):
    s = load_server(name)
    for section in SERVER_SECTIONS:
        for key in getattr(s, section).model_dump():
            p = s.provenance[f"{section}.{key}"]
            assert p.kind in PROVENANCE_KINDS
            assert p.source if p.kind == "published" else p.note


def _write(tmp_path, text):
    base = (
        '[card]\nchip = {value = "mtia-v1", provenance = "user"}\n'
        'dram_bytes = {value = 1000000, provenance = "user"}\npower_w = {value = 10.0, provenance = "user"}\n'
        '[topology]\ncards = {value = 4, provenance = "user"}\nsockets = {value = 1, provenance = "user"}\n'
        'switches = {value = 2, provenance = "user"}\nhost_link_gbps = {value = 10.0, provenance = "user"}\n'
        'switch_uplink_gbps = {value = 10.0, provenance = "user"}\npeer_gbps = {value = 1.0, provenance = "user"}\n'
        '[host]\ncores = {value = 2, provenance = "user"}\nmemory_bytes = {value = 1000, provenance = "user"}\n'
        'memory_gbps = {value = 10.0, provenance = "user"}\npreprocess_us_per_query = {value = 1.0, provenance = "user"}\n'
        'postprocess_us_per_query = {value = 1.0, provenance = "user"}\nnetwork_gbps = {value = 1.0, provenance = "user"}\n'
        '[power]\nserver_power_w = {value = 100.0, provenance = "user"}\n'
    )
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\ndescription = "d"\n' + base + text)
    return str(path)


def test_a_server_file_loads(tmp_path):
    s = load_server(_write(tmp_path, ""))
    assert (s.cards, s.cards_per_switch, [s.switch_of(c) for c in range(4)]) == (4, 2, [0, 0, 1, 1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[fans]\n", "s.toml: fans: unknown section (known: card, topology, host, power)"),
        ('[card.pcie]\nlanes = {value = 8, provenance = "user"}\n', "s.toml: card.pcie: unknown key"),
    ],
)
def test_bad_server_file(tmp_path, extra, message):
    path = _write(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load_server(path)
    assert str(err.value) == f"{path.rsplit('/', 1)[0]}/{message}"


def test_uneven_tree_and_over_budget_are_refused(tmp_path):
    path = Path(_write(tmp_path, ""))
    name = str(path)
    text = path.read_text()
    path.write_text(text.replace("switches = {value = 2", "switches = {value = 3"))
    with pytest.raises(ConfigError, match=r"cards \(4\) must be a multiple of switches \(3\)"):
        load_server(name)
    path.write_text(text.replace("power_w = {value = 10.0", "power_w = {value = 30.0"))
    with pytest.raises(ConfigError, match=r"4 cards x 30 W exceed server_power_w \(100 W\)"):
        load_server(name)


def test_cli_server_list_and_show(capsys):
    code, out, _ = run(capsys, "server", "list")
    assert code == 0 and out.splitlines()[1].startswith("yosemite-v3 ")
    code, out, _ = run(capsys, "server", "show", "yosemite-v3", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["parameters"]["power.server_power_w"] == {
        "value": 780.0,
        "provenance": "published",
        "source": "ISCA23 Table II (system power 780 W)",
        "note": None,
    }
    assert doc["derived"]["non_card_power_w"] == 360.0
    code, out, _ = run(capsys, "server", "show", "yosemite-v3")
    assert code == 0 and "cards                                12   published: ISCA23 Table II" in out


def test_cli_unknown_server(capsys):
    code, out, err = run(capsys, "server", "show", "zion")
    assert (code, out) == (2, "")
    assert (
        err
        == "mtiasim: error: unknown server 'zion' (known: grand-teton-2i, yosemite-v3; or give a .toml file)\n"
    )
