"""The chip description: presets, provenance rules, validation errors, derived peaks."""

import math

import pytest

from mtiasim.errors import ConfigError
from mtiasim.hw import load_chip, load_chip_file, peak, preset_names


@pytest.fixture(scope="module")
def v1():
    return load_chip("mtia-v1")


def test_presets_ship():
    assert {"mtia-v1", "mtia-2i"} <= set(preset_names())


@pytest.mark.parametrize(
    "name, physical, quoted",
    [
        ("dpe_int8_tops", 104.8576, 102.4),
        ("dpe_fp16_tflops", 52.4288, 51.2),
        ("dpe_bf16_tflops", 52.4288, 51.2),
        ("se_int8_tops", 3.2768, 3.2),
        ("se_fp16_tflops", 1.6384, 1.6),
        ("vector_int8_tops", 3.2768, 3.2),
        ("vector_fp16_tflops", 1.6384, 1.6),
        ("vector_fp32_tflops", 0.8192, 0.8),
        ("local_memory_gbps_per_pe", 409.6, 400.0),
        ("sram_gbps", 819.2, 800.0),
        ("dram_gbps", 176.0, 176.0),
        ("host_link_gbps", 16.0, 16.0),
    ],
)
def test_published_v1_peaks_come_out_of_unit_values(v1, name, physical, quoted):
    p = peak(v1, name)
    assert math.isclose(p.physical, physical, rel_tol=1e-9)
    assert math.isclose(p.quoted, quoted, rel_tol=1e-9)


def test_peaks_are_computed_not_stored(v1):
    # doubling the DPE width or the clock moves the peak: it is derived, not a typed-in total
    wide = v1.with_values({"dpe.int8_macs_per_cycle": 2048})
    assert math.isclose(peak(wide, "dpe_int8_tops").quoted, 204.8)
    fast = v1.with_values({"clock.frequency_ghz": 1.1})
    assert math.isclose(peak(fast, "sram_gbps").physical, 16 * 64 * 1.1)
    assert math.isclose(peak(fast, "dram_gbps").physical, 176.0)  # LPDDR5 does not follow the core clock


def test_2i_published_peaks():
    c = load_chip("mtia-2i")
    assert math.isclose(peak(c, "dpe_int8_tops").quoted, 353.89, rel_tol=1e-4)
    assert math.isclose(peak(c, "dram_gbps").physical, 204.8)
    assert c.sram.bytes == 256 * 2**20
    assert c.local_memory.bytes == 384 * 1024


def test_every_value_has_provenance(v1):
    from mtiasim.hw.chip import SECTIONS

    for chip in (v1, load_chip("mtia-2i")):
        for section in SECTIONS:
            for key in type(getattr(chip, section)).model_fields:
                p = chip.provenance[f"{section}.{key}"]
                assert p.kind in ("published", "derived", "assumed", "calibrated")
                if p.kind == "published":
                    assert p.source
                if p.kind in ("derived", "assumed"):
                    assert p.note


def test_2i_inherits_unpublished_values_as_assumed():
    c = load_chip("mtia-2i")
    p = c.provenance["sram.latency_cycles"]
    assert p.kind == "assumed" and "carried over from mtia-v1" in p.note
    assert c.provenance["clock.frequency_ghz"].kind == "published"


def _write(tmp_path, body: str):
    path = tmp_path / "chip.toml"
    path.write_text('name = "test"\ndescription = "t"\ninherit = "mtia-v1"\n' + body)
    return path


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, '[sram]\nbites = { value = 1, provenance = "assumed", note = "x" }\n')
    with pytest.raises(ConfigError) as e:
        load_chip_file(path)
    assert str(e.value) == f"{path}: sram.bites: unknown key"


def test_unknown_section_is_named(tmp_path):
    path = _write(tmp_path, '[hbm]\nbytes = { value = 1, provenance = "assumed", note = "x" }\n')
    with pytest.raises(ConfigError, match=r"hbm: unknown section"):
        load_chip_file(path)


def test_impossible_value_is_named(tmp_path):
    path = _write(tmp_path, '[clock]\nfrequency_ghz = { value = -1.0, provenance = "assumed", note = "x" }\n')
    with pytest.raises(ConfigError) as e:
        load_chip_file(path)
    assert str(e.value).startswith(f"{path}: clock.frequency_ghz: Input should be greater than 0")


def test_published_needs_a_source(tmp_path):
    path = _write(tmp_path, '[grid]\nrows = { value = 4, provenance = "published" }\n')
    with pytest.raises(ConfigError, match=r"grid.rows: a published value must name its source"):
        load_chip_file(path)


def test_bad_provenance_kind(tmp_path):
    path = _write(tmp_path, '[grid]\nrows = { value = 4, provenance = "guess", note = "x" }\n')
    with pytest.raises(ConfigError, match=r"grid.rows: provenance must be one of"):
        load_chip_file(path)


def test_user_variant_file(tmp_path):
    path = _write(
        tmp_path, '[sram]\nbytes = { value = 268435456, provenance = "assumed", note = "what if" }\n'
    )
    c = load_chip_file(path)
    assert c.sram.bytes == 2 * load_chip("mtia-v1").sram.bytes
    assert c.provenance["sram.bytes"].note == "what if"


def test_unknown_chip_name():
    with pytest.raises(ConfigError, match=r"unknown chip 'mtia-v9' \(known: mtia-2i, mtia-v1"):
        load_chip("mtia-v9")


def test_with_values_rejects_unknown_and_impossible(v1):
    with pytest.raises(
        ConfigError, match=r"^mtia-v1 \(overrides\): sram.size=1: unknown key \(keys of \[sram\]"
    ):
        v1.with_values({"sram.size": 1})
    with pytest.raises(ConfigError, match=r"grid.rows=0: Input should be greater than 0"):
        v1.with_values({"grid.rows": 0})


def test_inheriting_preset_keeps_its_own_name():
    c = load_chip("mtia-2i")
    assert c.name == "mtia-2i" and "2i" in c.description


def test_a_preset_is_parsed_again_when_its_file_changes(tmp_path, monkeypatch):
    """Presets are parsed once per content: the same file gives the same chip, an edited one the edit."""
    import mtiasim.hw.chip as chip_mod

    originals = {n: chip_mod._preset_path(n) for n in chip_mod.preset_names()}
    copies = {n: tmp_path / f"{n}.toml" for n in originals}
    for n, p in originals.items():
        copies[n].write_bytes(p.read_bytes())
    monkeypatch.setattr(chip_mod, "_preset_path", lambda n: copies[n])
    first = chip_mod.load_chip("mtia-v1")
    assert chip_mod.load_chip("mtia-v1") is first
    text = copies["mtia-v1"].read_text()
    old = "frequency_ghz = { value = 0.8,"
    assert old in text
    copies["mtia-v1"].write_text(text.replace(old, "frequency_ghz = { value = 0.9,", 1))
    edited = chip_mod.load_chip("mtia-v1")
    assert edited.clock.frequency_ghz == 0.9 and first.clock.frequency_ghz == 0.8
