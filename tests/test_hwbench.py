"""Hardware measurement, synthetic llama GGUFs and the decode benchmark (no timing assertions:
speed is measured by benchmarks, never by tests)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from memstack.core.errors import ConfigError, InputError
from memstack.core.model import hwbench
from memstack.core.model.gguf_synth import shape_for, write_llama_gguf
from memstack.core.model.target import Target

FTYPES = ("f16", "q8_0", "q4_0")


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    return hwbench.measure(quick=True, directory=str(tmp_path_factory.mktemp("hw")))


def test_measure_quick_is_a_valid_target(quick_target: Target) -> None:
    t = quick_target
    assert (t.name, t.kind) == ("this-machine", "cpu")
    assert t.threads >= 1 and t.compute_efficiency == 1.0
    assert all(_positive(v) for v in t.compute.values())
    assert [tier.name for tier in t.tiers] == ["dram", "flash"]
    for tier in t.tiers:
        assert _positive(tier.capacity) and _positive(tier.bandwidth)
        assert tier.efficiency == 1.0
    assert _positive(t.token_overhead) and _positive(t.launch_overhead)
    assert t.kernels_per_layer > 0
    for fmt in ("f16", "q8_0", "q4_0", "q4_k_m", "*"):
        cost = t.format_cost(fmt)
        assert _positive(cost.gemv_rate) and 0 < cost.gemm_efficiency <= 1
    assert any("numpy" in s for s in t.sources)
    assert Target.from_record(json.loads(json.dumps(t.to_record()))) == t


def test_flash_curve_grows_with_chunk_size(quick_target: Target) -> None:
    curve = quick_target.tier("flash").chunk_curve
    chunks = [c for c, _ in curve]
    assert chunks == sorted(chunks) and chunks[0] == 4096 and chunks[-1] == 4 << 20
    assert all(_positive(r) for _, r in curve)
    assert curve[-1][1] >= curve[0][1]  # big reads are never slower than 4 KiB ones


def test_saved_target_validates(quick_target: Target) -> None:
    targets = pytest.importorskip("memstack.core.model.targets")
    assert targets.validate(quick_target, "test").name == "this-machine"


def test_measure_bandwidth_is_positive() -> None:
    assert _positive(hwbench.measure_bandwidth(quick=True))


def test_format_costs_follow_the_single_core_rate() -> None:
    costs = hwbench.format_costs(100e9, 4, 300e9)
    assert costs["q4_0"].gemv_rate == pytest.approx(4 * 100e9 / hwbench.OPS_PER_WEIGHT["q4_0"])
    assert costs["q4_k_m"] == costs["q4_k"]
    token, node = hwbench.overheads(hwbench.REF_GEMM_1T / 2)  # a core half as fast
    assert token == pytest.approx(2 * hwbench.REF_TOKEN_OVERHEAD)
    assert node == pytest.approx(2 * hwbench.REF_NODE_OVERHEAD)


def test_shape_for_lands_near_the_target() -> None:
    for target in (1e6, 50e6, 200e6, 500e6):
        s = shape_for(target)
        assert 0.6 < s.params() / target < 1.6
        assert s.hidden % 64 == 0 and s.ffn % 64 == 0 and s.heads * 64 == s.hidden
    assert shape_for(1e6, multiple=256).hidden % 256 == 0


# ---- synthetic models and real decode ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("gguf")
    d = tmp_path_factory.mktemp("synth")
    return {f: write_llama_gguf(d / f"tiny-{f}.gguf", params_target=1e6, ftype=f)
            for f in FTYPES}


@pytest.mark.parametrize("ftype", FTYPES)
def test_bench_decode_runs_a_synthetic_model(tiny_models: dict[str, Path], ftype: str) -> None:
    pytest.importorskip("ctransformers")
    from memstack.core.model.bench_decode import bench_decode

    r = bench_decode(str(tiny_models[ftype]), prompt_tokens=8, gen_tokens=4, repeats=1,
                     threads=1)
    assert r["file_type"] == ftype and r["threads"] == 1 and r["repeats"] == 1
    assert r["layers"] == 2 and r["vocab"] == 1024
    assert 0.5e6 < r["params"] < 1.5e6
    assert 0 < r["weight_bytes_per_token"] < r["file_bytes"]
    assert set(r["weight_bytes_by_type"]) == {ftype, "f32"}
    assert 0 < r["weights_per_token"] < r["params"]
    assert _positive(r["decode_ms_per_token"]) and _positive(r["prompt_tok_s"])
    assert len(r["decode_runs_ms_per_token"]) == 1 and r["contended_runs"] in (0, 1)


def test_bench_decode_refuses_missing_and_garbage(tmp_path: Path) -> None:
    from memstack.core.model.bench_decode import bench_decode

    with pytest.raises(InputError, match="does not exist"):
        bench_decode(str(tmp_path / "nope.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    with pytest.raises(InputError, match="not a GGUF file"):
        bench_decode(str(junk))
    with pytest.raises(InputError, match="not a file"):
        bench_decode(str(tmp_path))


def test_bench_decode_refuses_truncated_model(tiny_models: dict[str, Path],
                                              tmp_path: Path) -> None:
    from memstack.core.model.bench_decode import bench_decode

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_models["q4_0"].read_bytes()[:-1000])
    with pytest.raises(InputError, match="truncated"):
        bench_decode(str(cut))


def test_write_llama_gguf_refuses_bad_ftype(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ftype"):
        write_llama_gguf(tmp_path / "x.gguf", params_target=1e6, ftype="q3_x")
    assert not list(tmp_path.iterdir())


# ---- CLI commands (wired into `memstack bench` by cli/main.py) --------------------------------

def test_decode_command_prints_a_record(tiny_models: dict[str, Path]) -> None:
    pytest.importorskip("ctransformers")
    from memstack.cli.bench_model import decode_cmd

    res = CliRunner().invoke(decode_cmd, ["--model", str(tiny_models["q8_0"]), "--prompt", "8",
                                          "--gen", "2", "--repeats", "1", "--threads", "1",
                                          "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    (rec,) = [r for r in map(json.loads, res.stdout.splitlines()) if r["kind"] == "decode_bench"]
    assert rec["file_type"] == "q8_0"
    assert _positive(rec["dram_bandwidth"])


def test_decode_command_missing_model_is_an_input_error(tmp_path: Path) -> None:
    from memstack.cli.bench_model import decode_cmd

    res = CliRunner().invoke(decode_cmd, ["--model", str(tmp_path / "m.gguf"), "--format",
                                          "jsonl"])
    assert isinstance(res.exception, InputError)


def test_hw_command_saves_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("memstack.core.model.targets")
    from memstack.cli.bench_model import hw_cmd

    monkeypatch.setenv("MEMSTACK_TARGET_DIR", str(tmp_path))
    res = CliRunner().invoke(hw_cmd, ["--quick", "--save", "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    (rec,) = [r for r in map(json.loads, res.stdout.splitlines()) if r["kind"] == "target"]
    assert rec["name"] == "this-machine" and rec["tiers"][0]["name"] == "dram"
    assert (tmp_path / "this-machine.msgpack").is_file()
