"""`memstack simulate` as users run it: presets, config.json, GGUF, sweeps, strategies, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf_model import write_tiny_llama
from helpers import cli_env, decode_jsonl, decode_msgpack, error_line, ok, run, write_chat


def sims(proc) -> list[dict]:
    _, recs = decode_jsonl(ok(proc).stdout)
    return recs


def test_preset_table_shows_ops_and_totals():
    out = ok(run("simulate", "--model", "qwen2.5-7b", "--target", "l4", "--ctx", "2048",
                 "--weights", "bf16", "--format", "table")).stdout.decode()
    for needle in ("attn_proj", "ffn", "attention", "lm_head", "TTFT", "TPOT", "fits",
                   "prefill", "decode"):
        assert needle in out
    assert "qwen2.5-7b on l4" in out


def test_record_fields_and_phase_filter():
    (rec,) = sims(run("simulate", "--model", "llama-3-8b", "--target", "h100-sxm", "--weights",
                      "q4_0", "--kv", "fp8", "--phase", "decode", "--format", "jsonl"))
    assert rec["kind"] == "sim" and rec["weights"] == "q4_0" and rec["kv"] == "fp8"
    assert {op["phase"] for op in rec["ops"]} == {"decode"}
    assert rec["tpot_s"] > 0 and rec["decode_tok_s"] == pytest.approx(1 / rec["tpot_s"])
    assert rec["fits"] is True and rec["mem_total"] < rec["capacity"]


def test_msgpack_by_default_in_a_pipe():
    proc = ok(run("simulate", "--model", "gpt2", "--target", "rpi5"))
    _, recs = decode_msgpack(proc.stdout)
    assert recs[0]["model"] == "gpt2" and recs[0]["weights"] == "f32"


def test_hf_config_and_gguf_files(tmp_path: Path):
    cfg = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
           "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
           "vocab_size": 32000, "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    (rec,) = sims(run("simulate", "--model", path, "--target", "rtx4090", "--format", "jsonl"))
    assert rec["weights"] == "bf16" and rec["mem_weights"] == pytest.approx(1.1e9 * 2, rel=0.05)
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    (rec,) = sims(run("simulate", "--model", gguf, "--target", "m1-max", "--format", "jsonl"))
    assert rec["model"] and rec["tpot_s"] > 0


def test_sweep_streams_the_whole_grid():
    recs = sims(run("simulate", "--model", "mixtral-8x7b", "--target", "rtx4090", "--sweep",
                    "batch=1,8,64;ctx=2k,8k,32k;weights=bf16,q8_0,q4_0", "--format", "jsonl"))
    assert len(recs) == 27
    assert {r["batch"] for r in recs} == {1, 8, 64}
    assert {r["ctx"] for r in recs} == {2048, 8192, 32768}
    by = {(r["batch"], r["ctx"], r["weights"]): r for r in recs}
    assert by[(1, 2048, "q4_0")]["tpot_s"] < by[(1, 2048, "bf16")]["tpot_s"]
    assert not by[(1, 2048, "bf16")]["fits"]  # 87 GiB of weights on a 24 GiB card


def test_sweep_over_models_and_targets():
    recs = sims(run("simulate", "--sweep", "model=llama-3-8b,qwen2.5-7b;target=l4,h100-sxm;"
                    "batch=1,16", "--format", "jsonl"))
    assert len(recs) == 8
    assert {(r["model"], r["target"]) for r in recs} == {
        (m, t) for m in ("llama-3-8b", "qwen2.5-7b") for t in ("l4", "h100-sxm")}


def test_strategies_from_a_real_store(tmp_path: Path):
    store = tmp_path / "store"
    ok(run("ingest", write_chat(tmp_path / "chat.jsonl", 300), "--store", store))
    recs = sims(run("simulate", "--store", store, "--model", "llama-3-8b", "--target", "l4",
                    "--strategies", "full-context,recall:k=10,kv-cache", "--format", "jsonl"))
    by = {r["strategy"]: r for r in recs}
    assert set(by) == {"full-context", "recall:k=10", "kv-cache"}
    assert by["full-context"]["memories"] == 300
    assert by["recall:k=10"]["prompt_tokens"] < by["full-context"]["prompt_tokens"] / 10
    assert by["recall:k=10"]["speedup_vs_full"] > 1
    out = ok(run("simulate", "--memories", "5000", "--model", "llama-3-8b", "--target", "l4",
                 "--format", "table")).stdout.decode()
    assert "full-context" in out and "kv-cache" in out


def test_plots_are_pngs(tmp_path: Path):
    pytest.importorskip("matplotlib")
    roof = tmp_path / "roof.png"
    ok(run("simulate", "--model", "llama-3-8b", "--target", "h100-sxm", "--plot", roof,
           "--format", "jsonl"))
    assert roof.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep = tmp_path / "sweep.png"
    ok(run("simulate", "--model", "llama-3-8b", "--target", "l4", "--sweep",
           "batch=1,8,64;weights=f16,q4_0", "--plot", sweep, "--format", "jsonl"))
    assert sweep.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, code, needles", [
    (["--model", "qwen2.5-7", "--target", "l4"], 2, ["did you mean", "qwen2.5-7b"]),
    (["--model", "llama-3-8b", "--target", "h100-pcie-9"], 2, ["unknown target"]),
    (["--model", "llama-3-8b", "--target", "l4", "--weights", "q9_9"], 2, ["q9_9"]),
    (["--model", "llama-3-8b", "--target", "l4", "--kv", "q7"], 2, ["KV cache"]),
    (["--model", "llama-3-8b", "--target", "l4", "--sweep", "batch=1;speed=2"], 2, ["speed"]),
    (["--model", "llama-3-8b", "--target", "l4", "--strategies", "recall:k=0",
      "--memories", "10"], 2, ["recall"]),
    (["--model", "llama-3-8b", "--target", "l4", "--phase", "train"], 2, ["phase"]),
])
def test_bad_input_is_one_line_with_the_documented_code(args, code, needles):
    proc = run("simulate", *args, "--format", "jsonl")
    if code == 2 and proc.stderr.decode().startswith("Usage"):
        assert proc.returncode == 2 and any(n in proc.stderr.decode() for n in needles)
        return
    error_line(proc, code, *needles)


def test_unsupported_config_names_the_field(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    error_line(run("simulate", "--model", path, "--target", "l4"), 1, "config.json")
    path.write_text('{"model_type": "llama",')
    error_line(run("simulate", "--model", path, "--target", "l4"), 1, "config.json")


def test_gguf_without_architecture(tmp_path: Path):
    import gguf

    path = tmp_path / "noarch.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.kv_data[0].pop("general.architecture", None)
    w.add_tensor("x", __import__("numpy").zeros((4, 4), "float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    error_line(run("simulate", "--model", path, "--target", "l4", env=cli_env()), 1,
               "architecture")
