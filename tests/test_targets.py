"""Hardware targets: presets, record files, TOML, plugins, this-machine, and bad input.

Plugin discovery is replaced with `registry.set_registry` so the tests never depend on which
entry points the installed distribution declares; the preset data and the published
measurements are checked against each other so a renamed preset cannot silently orphan rows.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstack.core.errors import ConfigError, InputError, MemstackError
from memstack.core.model import targets
from memstack.core.model.target import FormatCost, Link, Target, Tier
from memstack.core.model.targets import load_target, save_target
from memstack.formats.stream import RecordWriter
from memstack.plugins import builtin_targets, registry

PUBLISHED = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "published.toml"
GROUP = targets.GROUP


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Real discovery, no allow-list, and saved targets in a throwaway directory."""
    monkeypatch.delenv(registry.ENV_ALLOW, raising=False)
    monkeypatch.setenv(targets.ENV_DIR, str(tmp_path / "saved"))
    registry.set_registry(None)
    yield
    registry.set_registry(None)


def small_target(name: str = "lab-gpu") -> Target:
    """A complete, valid target with every kind of field set."""
    return Target(
        name=name, kind="gpu", description="test device",
        compute={"fp32": 1e13, "fp16": 4e13, "int8": 8e13},
        tiers=(Tier("hbm", 16e9, 5e11, efficiency=0.9),
               Tier("flash", 1e12, 3e9, efficiency=1.0, latency=1e-4,
                    chunk_curve=((4096.0, 4e8), (1048576.0, 3e9)))),
        links=(Link("hbm", "flash", 3e9, 1e-4, "nvme"),),
        compute_efficiency=0.6, launch_overhead=4e-6, kernels_per_layer=20,
        token_overhead=1e-4, formats={"*": FormatCost(), "q4_0": FormatCost(0.0, 0.8)},
        sources=("unit test",))


def write_stream(path: Path, records: list[dict], fmt: str = "msgpack") -> Path:
    with open(path, "wb") as fp, RecordWriter(fp, fmt) as writer:
        for rec in records:
            writer.write(rec)
    return path


def record(**changes: object) -> dict:
    rec = small_target().to_record()
    rec.update(changes)
    return rec


# ---- presets --------------------------------------------------------------------------------

EXPECTED = ["h100-sxm", "h200", "a100-80gb", "l4", "l40s", "rtx4090", "rtx3090", "m1-max",
            "m2-ultra", "m3-max", "jetson-orin", "rpi5"]


def test_every_preset_loads_and_validates() -> None:
    assert sorted(targets.preset_names()) == sorted(EXPECTED)
    for name in EXPECTED:
        t = load_target(name)
        assert t.name == name and t.sources and t.description
        assert t.main.name in ("hbm", "unified", "dram")
        assert t.tiers[-1].name == "flash" and t.tiers[-1].chunk_curve
        assert 0 < t.main.efficiency <= 1 and 0 < t.compute_efficiency <= 1
        assert t.format_cost("q4_0").gemm_efficiency > 0
        assert targets.validate(t, name) is t
        for ln in t.links:
            assert t.tier(ln.src) and t.tier(ln.dst)
        if t.kind == "gpu":
            assert t.tier("dram") and t.link("hbm", "dram")


@pytest.mark.parametrize(("alias", "name"), [
    ("H100", "h100-sxm"), ("4090", "rtx4090"), ("m1max", "m1-max"), ("Orin", "jetson-orin"),
    ("pi5", "rpi5"), ("A100", "a100-80gb"), (" l4 ", "l4")])
def test_names_are_case_insensitive_with_aliases(alias: str, name: str) -> None:
    assert load_target(alias) == load_target(name)


def test_presets_carry_datasheet_magnitudes() -> None:
    h100 = load_target("h100-sxm")
    assert h100.main.bandwidth == pytest.approx(3.35e12)
    assert h100.peak("fp8") == pytest.approx(2 * h100.peak("bf16"))
    assert load_target("m2-ultra").main.bandwidth == pytest.approx(800e9)
    assert load_target("rpi5").threads == 4 and load_target("rpi5").kind == "cpu"
    assert load_target("m1-max").peak("int8") == load_target("m1-max").peak("fp16")


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ConfigError) as err:
        load_target("h100-sxn")
    msg = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in msg
    assert "did you mean h100-sxm" in msg and "available:" in msg and "rpi5" in msg
    with pytest.raises(ConfigError, match="did you mean rtx4090"):
        load_target("rtx4080")
    with pytest.raises(ConfigError, match="empty target name"):
        load_target("  ")


def test_list_targets_has_presets_and_this_machine() -> None:
    names = targets.list_targets()
    assert set(EXPECTED) <= set(names) and names[-1] == targets.THIS_MACHINE


def test_builtin_module_exposes_every_preset_as_an_attribute() -> None:
    for name in EXPECTED:
        assert getattr(builtin_targets, builtin_targets.attr_name(name)) == load_target(name)
    assert "h100_sxm" in dir(builtin_targets)
    with pytest.raises(AttributeError):
        builtin_targets.not_a_gpu  # noqa: B018


# ---- record files ---------------------------------------------------------------------------

def test_record_round_trip_through_a_msgpack_stream(tmp_path: Path) -> None:
    t = load_target("m3-max")
    path = write_stream(tmp_path / "m3.msgpack", [t.to_record()])
    assert load_target(str(path)) == t


def test_jsonl_stream_and_json_record(tmp_path: Path) -> None:
    t = small_target()
    assert load_target(str(write_stream(tmp_path / "t.jsonl", [t.to_record()], "jsonl"))) == t
    plain = tmp_path / "t.json"
    plain.write_text(json.dumps(t.to_record()))
    assert load_target(str(plain)) == t


def test_stream_needs_exactly_one_target(tmp_path: Path) -> None:
    path = write_stream(tmp_path / "two.msgpack", [record(name="a"), record(name="b")])
    with pytest.raises(InputError, match="expected one target record, found a, b"):
        load_target(str(path))
    other = write_stream(tmp_path / "none.msgpack", [{"kind": "memory", "text": "x"}])
    with pytest.raises(InputError, match="found none"):
        load_target(str(other))


def test_toml_file_with_one_table(tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_text("""
[lab-box]
kind = "cpu"
description = "a test box"
compute = { fp32 = 1e12, fp16 = 1e12 }
threads = 8
[[lab-box.tiers]]
name = "dram"
capacity = 64e9
bandwidth = 80e9
efficiency = 0.7
[lab-box.formats.q4_0]
gemv_rate = 2e10
""")
    t = load_target(str(path))
    assert t.name == "lab-box" and t.threads == 8 and t.main.effective_bandwidth() == 56e9
    assert t.format_cost("q4_0").gemv_rate == 2e10
    flat = tmp_path / "flat.toml"
    flat.write_text('kind = "cpu"\ncompute = {fp32 = 1e12}\n'
                    '[[tiers]]\nname = "dram"\ncapacity = 1e9\nbandwidth = 1e10\n')
    assert load_target(str(flat)).name == "flat"
    two = tmp_path / "two.toml"
    two.write_text("[a]\nkind = 'cpu'\n[b]\nkind = 'cpu'\n")
    with pytest.raises(InputError, match="expected one target table, found 2"):
        load_target(str(two))


# ---- bad input ------------------------------------------------------------------------------

def test_malformed_json_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x", "tiers": [\n  {"name": }\n]}')
    with pytest.raises(InputError) as err:
        load_target(str(path))
    assert err.value.where == "line 2, column 12" and "malformed JSON" in str(err.value)
    assert err.value.exit_code == 1


def test_truncated_msgpack_names_the_byte(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with RecordWriter(buf, "msgpack") as writer:
        writer.write(small_target().to_record())
    path = tmp_path / "cut.msgpack"
    path.write_bytes(buf.getvalue()[:-30])
    with pytest.raises(InputError, match=r"byte \d+.*truncated"):
        load_target(str(path))


def test_malformed_toml_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[x\nkind = 'cpu'\n")
    with pytest.raises(InputError, match="malformed TOML"):
        load_target(str(path))


@pytest.mark.parametrize(("change", "where"), [
    ({"tiers": [{"name": "hbm", "capacity": 16e9, "bandwidth": -5e11}]}, "tiers[0].bandwidth"),
    ({"tiers": [{"name": "hbm", "capacity": 1e19, "bandwidth": 5e11}]}, "tiers[0].capacity"),
    ({"tiers": [{"name": "hbm", "capacity": 0, "bandwidth": 5e11}]}, "tiers[0].capacity"),
    ({"tiers": [{"name": "hbm", "capacity": 1e9, "bandwidth": math.inf}]}, "tiers[0].bandwidth"),
    ({"tiers": [{"name": "hbm", "capacity": 1e9}]}, "tiers[0].bandwidth"),
    ({"tiers": [{"name": "hbm", "capacity": 1e9, "bandwidth": 1e9, "speed": 2}]},
     "tiers[0].speed"),
    ({"tiers": [{"name": "hbm", "capacity": 1e9, "bandwidth": 1e9, "efficiency": 1.5}]},
     "tiers[0].efficiency"),
    ({"tiers": []}, "tiers"),
    ({"compute": {"fp16": "fast"}}, "compute.fp16"),
    ({"compute_efficiency": 0}, "compute_efficiency"),
    ({"launch_overhead": -1e-6}, "launch_overhead"),
    ({"kernels_per_layer": 2.5}, "kernels_per_layer"),
    ({"device": "toaster"}, "kind"),
    ({"links": [{"src": "hbm", "dst": "disk", "bandwidth": 1e9}]}, "links[0].dst"),
    ({"formats": {"q4_0": {"gemm_efficiency": -0.5}}}, "formats.q4_0.gemm_efficiency"),
    ({"formats": {"q4_0": {"rate": 1}}}, "formats.q4_0.rate"),
])
def test_bad_numbers_and_fields_are_named(tmp_path: Path, change: dict, where: str) -> None:
    rec = record(**change)
    if "links" not in change:
        rec["links"] = []
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rec, allow_nan=True))
    with pytest.raises(InputError) as err:
        load_target(str(path))
    assert err.value.where == where, str(err.value)
    assert err.value.source == str(path)


def test_missing_tiers_and_missing_file(tmp_path: Path) -> None:
    rec = record()
    del rec["tiers"]
    path = tmp_path / "notiers.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(InputError) as err:
        load_target(str(path))
    assert err.value.where == "tiers" and "missing" in str(err.value)
    with pytest.raises(InputError, match="no such file"):
        load_target(str(tmp_path / "absent.msgpack"))
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_target(str(empty))


# ---- saved targets and this machine ---------------------------------------------------------

def test_this_machine_loads_the_saved_record(tmp_path: Path) -> None:
    measured = small_target("whatever")
    path = save_target(measured, targets.THIS_MACHINE)
    assert path == tmp_path / "saved" / "this-machine.msgpack"
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_target("this-machine")
    assert loaded == dataclasses.replace(measured, name="this-machine")
    assert load_target("This-Machine") == loaded


def test_this_machine_measures_when_nothing_is_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    from memstack.core.model import hwbench

    calls: list[bool] = []

    def fake_measure(quick: bool = False, **_: object) -> Target:
        calls.append(quick)
        return small_target("this-machine")

    monkeypatch.setattr(hwbench, "measure", fake_measure)
    assert load_target("this-machine").name == "this-machine" and calls == [True]


def test_saved_targets_load_by_name_and_bad_names_are_refused() -> None:
    save_target(small_target(), "lab-box")
    assert load_target("lab-box").name == "lab-box"
    assert "lab-box" in targets.list_targets()
    with pytest.raises(ConfigError, match="bad target name"):
        save_target(small_target(), "../escape")
    bad = dataclasses.replace(small_target(), compute_efficiency=2.0)
    with pytest.raises(InputError, match="compute_efficiency"):
        save_target(bad, "bad-box")


# ---- plugins --------------------------------------------------------------------------------

def test_third_party_target_plugins() -> None:
    good = small_target("ignored")
    registry.set_registry({GROUP: {
        "acme:labgpu": good,
        "acme:fromrec": record(name="fromrec"),
        "acme:factory": lambda: small_target("factory"),
        "acme:junk": lambda: 42,
        "acme:badrec": lambda: record(tiers=[{"name": "hbm", "capacity": 1e9,
                                             "bandwidth": -1.0}]),
        "acme:boom": lambda: 1 / 0,
    }})
    assert load_target("labgpu") == good
    assert load_target("fromrec").name == "fromrec"
    assert load_target("acme:factory").name == "factory"
    with pytest.raises(InputError, match="expected a Target"):
        load_target("junk")
    with pytest.raises(InputError) as err:
        load_target("badrec")
    assert err.value.where == "tiers[0].bandwidth"
    with pytest.raises(MemstackError, match="target plugin boom failed: ZeroDivisionError"):
        load_target("boom")
    assert {"labgpu", "factory", "h100-sxm"} <= set(targets.list_targets())


def test_builtins_resolve_through_the_entry_point_group() -> None:
    registry.set_registry({GROUP: {
        f"memstack:{name}": f"memstack.plugins.builtin_targets:{builtin_targets.attr_name(name)}"
        for name in EXPECTED}})
    assert registry.names(GROUP) == sorted(EXPECTED)
    assert load_target("h100") == targets.preset("h100-sxm")
    infos = [i for i in registry.list_plugins(load=True) if i.group == GROUP]
    assert all(i.status == "ok" and i.builtin for i in infos) and len(infos) == len(EXPECTED)


def test_a_broken_selected_plugin_fails_with_exit_1() -> None:
    registry.set_registry({GROUP: {"acme:gone": "memstack_no_such_module_for_tests:x"}})
    with pytest.raises(MemstackError, match="failed to load") as err:
        load_target("gone")
    assert err.value.exit_code == 1


# ---- published measurements -----------------------------------------------------------------

def test_published_measurements_reference_presets() -> None:
    from memstack.core.model.load_spec import list_models
    from memstack.core.model.precision import weight_bits

    rows = targets._toml_loads(PUBLISHED.read_text("utf-8"), str(PUBLISHED))["measurement"]
    assert len(rows) >= 40
    assert [r["id"] for r in rows] == list(range(1, len(rows) + 1))
    models = set(list_models())
    for r in rows:
        assert r["target"] in EXPECTED and r["model"] in models, r["id"]
        assert r["holdout"] == (r["id"] % 3 == 0)
        assert r["phase"] in ("prefill", "decode", "e2e") and r["tokens_per_s"] > 0
        assert r["source"] and r["row"] and r["runtime"] and r["batch"] >= 1
        assert weight_bits(r["weights"]) > 0
        assert r["prompt_tokens"] > 0 if r["phase"] == "prefill" else r["gen_tokens"] > 0
    assert sum(r["holdout"] for r in rows) == len(rows) // 3
