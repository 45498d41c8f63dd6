"""Model specs: parameter counts against published numbers, every loader, every refusal.

Counts are checked against the figures model cards and papers publish: exactly where the exact
count is published, else to the precision the figure is given in. GGUF files are written here
with gguf.GGUFWriter, so the spec's count can be checked against the tensors' own element count.
"""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf_model import build_vocab, write_tiny_llama  # tests/ is on sys.path under pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstack.core.errors import EXIT_FAILED, EXIT_USAGE, ConfigError, InputError
from memstack.core.model.load_spec import (
    _preset_index,
    from_hf_config,
    from_model_record,
    list_models,
    load_model,
)
from memstack.core.model.spec import ModelSpec
from memstack.formats.stream import RecordWriter

try:
    import gguf
except ImportError:  # only the GGUF tests skip; every other test still runs
    gguf = None
needs_gguf = pytest.mark.skipif(gguf is None, reason="needs the gguf package")

B = 1e9


def _write_json(path: Path, obj: Any) -> str:
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return str(path)


def _input_error(exc: pytest.ExceptionInfo[InputError], *needles: str) -> str:
    """The one-line message of an InputError (exit 1) that contains every needle."""
    msg = str(exc.value)
    assert exc.value.exit_code == EXIT_FAILED and "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ---- published parameter counts ----------------------------------------------------------------
EXACT = {  # counts the model cards / transformers' num_parameters() publish to the unit
    "llama-2-7b": 6_738_415_616, "llama-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248,
    "llama-3.1-8b": 8_030_261_248, "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512, "qwen2.5-0.5b": 494_032_768, "gpt2": 124_439_808,
    "gpt2-xl": 1_557_611_200, "llama-3.2-1b": 1_235_814_400,
}


@pytest.mark.parametrize("name,count", sorted(EXACT.items()))
def test_exact_published_counts(name: str, count: int) -> None:
    spec = load_model(name)
    assert spec.total_params() == count
    assert spec.active_params() == count  # dense: every parameter is touched


# (preset, published total in B, digits it is rounded to, published active in B or None, digits)
ROUNDED = [
    ("mixtral-8x7b", 46.70, 2, 12.88, 2),
    ("mixtral-8x22b", 141, 0, 39, 0),
    ("qwen1.5-moe-a2.7b", 14.3, 1, 2.7, 1),
    ("opt-6.7b", 6.66, 2, None, 0),
    ("opt-1.3b", 1.3, 1, None, 0),
    ("opt-13b", 12.9, 1, None, 0),
    ("phi-3-mini", 3.8, 1, None, 0),
    ("qwen2.5-1.5b", 1.54, 2, None, 0),
    ("qwen2.5-14b", 14.8, 1, None, 0),  # the hub's count (the card truncates to 14.7B)
    ("qwen2.5-32b", 32.8, 1, None, 0),
    ("qwen2.5-72b", 72.7, 1, None, 0),
    ("llama-2-13b", 13.0, 1, None, 0),
    ("llama-2-70b", 69.0, 1, None, 0),
    ("llama-3-70b", 70.6, 1, None, 0),
    ("llama-3.2-3b", 3.21, 2, None, 0),
    ("deepseek-v2-lite", 15.7, 1, None, 0),
    ("deepseek-v3", 671, 0, None, 0),
]


@pytest.mark.parametrize("name,total,digits,active,adigits", ROUNDED)
def test_rounded_published_counts(name: str, total: float, digits: int, active: float | None,
                                  adigits: int) -> None:
    spec = load_model(name)
    assert round(spec.total_params() / B, digits) == total
    if active is not None:
        assert round(spec.active_params() / B, adigits) == active


def test_mixtral_within_half_a_percent() -> None:
    spec = load_model("mixtral-8x7b")
    assert abs(spec.total_params() - 46.70 * B) / (46.70 * B) < 0.005
    assert abs(spec.active_params() - 12.88 * B) / (12.88 * B) < 0.005
    idle = (8 - 2) * 3 * 4096 * 14336 * 32
    assert spec.total_params() - spec.active_params() == idle


def test_deepseek_active_counts_leave_out_the_input_embedding() -> None:
    """DeepSeek's activated counts leave out the embedding lookup but keep the output head.

    DeepSeek-V3's weight notes give 36.6B activated "including 0.9B for the output Head"; the
    same convention puts V2-Lite at 2.45B, which its card gives as 2.4B.
    """
    v3 = load_model("deepseek-v3")
    assert round((v3.active_params() - v3.embedding_params()) / B, 1) == 36.6
    assert round(v3.lm_head_params() / B, 1) == 0.9
    lite = load_model("deepseek-v2-lite")
    assert abs((lite.active_params() - lite.embedding_params()) / B - 2.4) / 2.4 < 0.025
    assert lite.moe_layers == 26 and v3.moe_layers == 58
    assert v3.dtype == "fp8" and v3.mla and v3.kv_elements_per_token() == 512 + 64


def test_qwen_moe_shapes() -> None:
    spec = load_model("qwen1.5-moe-a2.7b")
    assert (spec.experts, spec.top_k, spec.expert_ffn) == (60, 4, 1408)
    assert (spec.shared_experts, spec.shared_ffn, spec.moe_layers) == (1, 5632, 24)
    assert spec.qkv_bias and not spec.bias


# ---- presets and names -------------------------------------------------------------------------
REQUIRED_PRESETS = {
    "llama-7b", "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b",
    "llama-3.1-8b", "llama-3.2-1b", "llama-3.2-3b", "mistral-7b", "qwen2.5-0.5b", "qwen2.5-1.5b",
    "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b", "mixtral-8x7b", "mixtral-8x22b",
    "qwen1.5-moe-a2.7b", "deepseek-v2-lite", "deepseek-v3", "gpt2", "gpt2-xl", "opt-1.3b",
    "opt-6.7b", "opt-13b", "phi-3-mini",
}


def test_every_preset_loads_and_names_its_source() -> None:
    names = list_models()
    assert REQUIRED_PRESETS <= set(names) and len(names) == len(set(names))
    _preset_index()  # raises if two presets claim one spelling
    for name in names:
        spec = load_model(name)
        assert spec.name == name and "huggingface.co/" in spec.source
        assert spec.total_params() > 0 and spec.active_params() <= spec.total_params()


def test_llama_7b_is_llama_one() -> None:
    assert load_model("llama-7b").max_positions == 2048
    assert load_model("llama-2-7b").max_positions == 4096


@pytest.mark.parametrize("ref,name", [
    ("qwen2.5-7b", "qwen2.5-7b"), ("Qwen/Qwen2.5-7B", "qwen2.5-7b"),
    ("QWEN2.5-7B", "qwen2.5-7b"), ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
    ("llama3-8b", "llama-3-8b"), ("meta-llama/Meta-Llama-3-8B", "llama-3-8b"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama-2-7b"), ("Llama_2_7B", "llama-2-7b"),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"), ("gpt-2", "gpt2"),
    ("facebook/opt-6.7b", "opt-6.7b"), ("deepseek-ai/DeepSeek-V2-Lite-Chat", "deepseek-v2-lite"),
    ("microsoft/Phi-3-mini-4k-instruct", "phi-3-mini"),
])
def test_aliases(ref: str, name: str) -> None:
    assert load_model(ref).name == name


def test_unknown_preset_suggests_close_matches() -> None:
    with pytest.raises(ConfigError) as exc:
        load_model("qwen2.5-7")
    msg = str(exc.value)
    assert exc.value.exit_code == EXIT_USAGE
    assert msg.startswith("unknown model 'qwen2.5-7'") and "did you mean" in msg
    assert "qwen2.5-7b" in msg and "config.json" in msg and ".gguf" in msg
    with pytest.raises(ConfigError) as exc:
        load_model("zzzz")
    assert "llama-2-7b" in str(exc.value)  # nothing close: the known names instead


def test_missing_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        load_model(str(tmp_path / "nope" / "config.json"))
    _input_error(exc, "no such file")
    with pytest.raises(InputError) as exc:
        load_model(str(tmp_path))  # a folder without config.json
    _input_error(exc, "no config.json")
    with pytest.raises(InputError) as exc:
        load_model("./llama-2-7b")  # written as a path: not taken for the preset
    _input_error(exc, "no such file")


# ---- Hugging Face configs ----------------------------------------------------------------------
LLAMA2_7B = {
    "_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.31.0",
    "use_cache": True, "vocab_size": 32000,
}
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000,
}
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936,
}
QWEN3_06B = {  # Qwen/Qwen3-0.6B: head_dim 128 although 1024 / 16 = 64
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128,
    "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960,
    "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "vocab_size": 151936,
}
GEMMA_2B = {  # google/gemma-2b: multi-query, head_dim 256, ties by default
    "architectures": ["GemmaForCausalLM"], "head_dim": 256, "hidden_act": "gelu",
    "hidden_size": 2048, "intermediate_size": 16384, "max_position_embeddings": 8192,
    "model_type": "gemma", "num_attention_heads": 8, "num_hidden_layers": 18,
    "num_key_value_heads": 1, "torch_dtype": "bfloat16", "vocab_size": 256000,
}
PHI3_MINI = {
    "architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "intermediate_size": 8192,
    "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096,
    "rope_scaling": None, "sliding_window": 2047, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "attention_bias": False, "vocab_size": 32064,
}
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "router_aux_loss_coef": 0.02, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000,
}
QWEN_MOE = {
    "architectures": ["Qwen2MoeForCausalLM"], "decoder_sparse_step": 1, "hidden_size": 2048,
    "intermediate_size": 5632, "max_position_embeddings": 8192, "model_type": "qwen2_moe",
    "moe_intermediate_size": 1408, "num_attention_heads": 16, "num_experts": 60,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 16,
    "shared_expert_intermediate_size": 5632, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 151936,
}
DEEPSEEK_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "aux_loss_alpha": 0.001,
    "first_k_dense_replace": 1, "hidden_size": 2048, "intermediate_size": 10944,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "num_attention_heads": 16, "num_experts_per_tok": 6,
    "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": None,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 102400,
}
GPT2 = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "n_ctx": 1024,
    "n_embd": 768, "n_head": 12, "n_inner": None, "n_layer": 12, "n_positions": 1024,
    "model_type": "gpt2", "layer_norm_epsilon": 1e-05, "vocab_size": 50257,
}
OPT_67B = {
    "architectures": ["OPTForCausalLM"], "do_layer_norm_before": True, "enable_bias": True,
    "ffn_dim": 16384, "hidden_size": 4096, "max_position_embeddings": 2048, "model_type": "opt",
    "num_attention_heads": 32, "num_hidden_layers": 32, "torch_dtype": "float16",
    "vocab_size": 50272, "word_embed_proj_dim": 4096,
}


def _shape(spec: ModelSpec) -> dict[str, Any]:
    rec = spec.to_record()
    for key in ("name", "source"):
        rec.pop(key)
    return rec


@pytest.mark.parametrize("cfg,preset", [
    (LLAMA2_7B, "llama-2-7b"), (MISTRAL_7B, "mistral-7b"), (QWEN25_05B, "qwen2.5-0.5b"),
    (PHI3_MINI, "phi-3-mini"), (MIXTRAL_8X7B, "mixtral-8x7b"), (GPT2, "gpt2"),
    (OPT_67B, "opt-6.7b"), (DEEPSEEK_V2_LITE, "deepseek-v2-lite"),
])
def test_full_configs_match_the_presets(tmp_path: Path, cfg: dict, preset: str) -> None:
    """A real config.json, extra keys and nulls included, reads the same as the preset."""
    folder = tmp_path / preset
    folder.mkdir()
    path = _write_json(folder / "config.json", cfg)
    spec = load_model(path)
    assert spec.name == preset and spec.source == path
    got = _shape(spec)
    assert got == _shape(load_model(preset))
    assert _shape(load_model(str(folder))) == got  # a snapshot folder works too


def test_family_details(tmp_path: Path) -> None:
    qwen3 = from_hf_config(QWEN3_06B, "qwen3-0.6b", "t")
    assert (qwen3.arch, qwen3.head_dim, qwen3.kv_heads, qwen3.qkv_bias) == ("qwen3", 128, 8, False)
    assert round(qwen3.total_params() / B, 1) == 0.6  # q/k norms (7k) are below the spec's grain
    gemma = from_hf_config(GEMMA_2B, "gemma-2b", "t")
    assert gemma.tied_embeddings and gemma.kv_heads == 1 and gemma.head_dim == 256
    assert round(gemma.total_params() / B, 2) == 2.51
    moe = from_hf_config(QWEN_MOE, "qwen-moe", "t")
    assert moe.arch == "qwen2_moe" and round(moe.total_params() / B, 1) == 14.3
    gpt2 = from_hf_config(GPT2, "gpt2", "t")
    assert (gpt2.learned_positions, gpt2.norm, gpt2.bias, gpt2.gated_ffn) == (1024, "layer", True,
                                                                            False)
    assert gpt2.tied_embeddings and gpt2.dtype == "f32" and gpt2.ffn == 3072
    opt = from_hf_config(OPT_67B, "opt", "t")
    assert opt.learned_positions == 2050 and opt.tied_embeddings and opt.dtype == "f16"
    lite = from_hf_config(DEEPSEEK_V2_LITE, "lite", "t")
    assert (lite.q_lora_rank, lite.kv_lora_rank, lite.head_dim, lite.rope_dim) == (0, 512, 128, 64)
    assert (lite.shared_experts, lite.shared_ffn, lite.dense_layers) == (2, 1408, 1)


def test_model_type_from_architectures_only() -> None:
    cfg = {k: v for k, v in MISTRAL_7B.items() if k != "model_type"}
    assert from_hf_config(cfg, "m", "t").arch == "mistral"


def test_dtype_and_quantization() -> None:
    assert from_hf_config({**MISTRAL_7B, "torch_dtype": "float32"}, "m", "t").dtype == "f32"
    del_dtype = {k: v for k, v in MISTRAL_7B.items() if k != "torch_dtype"}
    assert from_hf_config({**del_dtype, "dtype": "float16"}, "m", "t").dtype == "f16"
    awq = {**MISTRAL_7B, "quantization_config": {"quant_method": "awq", "bits": 4}}
    assert from_hf_config(awq, "m", "t").dtype == "int4"


def test_qwen_mlp_only_layers_and_sparse_step() -> None:
    spec = from_hf_config({**QWEN_MOE, "mlp_only_layers": [0, 1], "decoder_sparse_step": 2},
                          "q", "t")
    assert spec.dense_layers == 2 and spec.moe_layers == 11  # layers 3, 5, ..., 23


# ---- refusals ----------------------------------------------------------------------------------
def test_unsupported_model_type(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "config.json", {"model_type": "bert", "hidden_size": 768})
    with pytest.raises(InputError) as exc:
        load_model(path)
    _input_error(exc, path, "field model_type", "bert", "supported", "llama", "deepseek_v3")
    no_type = {"architectures": ["BertModel"], "hidden_size": 768}
    with pytest.raises(InputError) as exc:
        from_hf_config(no_type, "b", "cfg")
    _input_error(exc, "field model_type", "BertModel")
    for archs in ([], [["LlamaForCausalLM"]], {"a": 1}):
        with pytest.raises(InputError) as exc:
            from_hf_config({"architectures": archs}, "b", "cfg")
        _input_error(exc, "field model_type", "missing")


@pytest.mark.parametrize("cfg,key", [
    (LLAMA2_7B, "num_hidden_layers"), (LLAMA2_7B, "hidden_size"),
    (LLAMA2_7B, "vocab_size"), (MIXTRAL_8X7B, "num_local_experts"),
    (QWEN_MOE, "moe_intermediate_size"), (DEEPSEEK_V2_LITE, "kv_lora_rank"),
    (DEEPSEEK_V2_LITE, "qk_rope_head_dim"), (GPT2, "n_embd"), (OPT_67B, "ffn_dim"),
])
def test_missing_required_field(tmp_path: Path, cfg: dict, key: str) -> None:
    path = _write_json(tmp_path / "config.json", {k: v for k, v in cfg.items() if k != key})
    with pytest.raises(InputError) as exc:
        load_model(path)
    _input_error(exc, path, f"field {key}", "missing")


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "model_type": "llama",\n  "hidden_size": 4096,,\n}\n')
    with pytest.raises(InputError) as exc:
        load_model(str(path))
    _input_error(exc, "line 3, column", "malformed JSON")
    path.write_bytes(b'{"model_type": "\xff"}')
    with pytest.raises(InputError) as exc:
        load_model(str(path))
    _input_error(exc, "byte 16", "UTF-8")
    for body in ("[1, 2]", '{"hello": 1}'):
        path.write_text(body)
        with pytest.raises(InputError) as exc:
            load_model(str(path))
        _input_error(exc, str(path))


@pytest.mark.parametrize("base,change,key,needle", [
    (LLAMA2_7B, {"num_hidden_layers": 0}, "num_hidden_layers", "out of range"),
    (LLAMA2_7B, {"hidden_size": -4096}, "hidden_size", "out of range"),
    (LLAMA2_7B, {"num_attention_heads": 0}, "num_attention_heads", "out of range"),
    (LLAMA2_7B, {"hidden_size": 20_000_000}, "hidden_size", "out of range"),
    (LLAMA2_7B, {"vocab_size": 10 ** 12}, "vocab_size", "out of range"),
    (LLAMA2_7B, {"hidden_size": "4096"}, "hidden_size", "expected an integer"),
    (LLAMA2_7B, {"num_hidden_layers": True}, "num_hidden_layers", "expected an integer"),
    (LLAMA2_7B, {"num_hidden_layers": 31.5}, "num_hidden_layers", "expected an integer"),
    (LLAMA2_7B, {"hidden_size": 4000, "num_attention_heads": 3}, "num_attention_heads",
     "head_dim"),
    (LLAMA2_7B, {"num_key_value_heads": 5}, "num_key_value_heads", "do not divide"),
    (LLAMA2_7B, {"num_key_value_heads": 64}, "num_key_value_heads", "do not divide"),
    (LLAMA2_7B, {"tie_word_embeddings": "yes"}, "tie_word_embeddings", "true or false"),
    (LLAMA2_7B, {"torch_dtype": "int3"}, "torch_dtype", "unknown dtype"),
    (MIXTRAL_8X7B, {"num_local_experts": 2, "num_experts_per_tok": 4}, "num_experts_per_tok",
     "experts per token"),
    (MIXTRAL_8X7B, {"num_experts_per_tok": 0}, "num_experts_per_tok", "experts per token"),
    (QWEN_MOE, {"mlp_only_layers": [3]}, "mlp_only_layers", "leading run"),
    (DEEPSEEK_V2_LITE, {"moe_layer_freq": 2}, "moe_layer_freq", "only 1"),
    (DEEPSEEK_V2_LITE, {"kv_lora_rank": 0}, "kv_lora_rank", "at least 1"),
    (MIXTRAL_8X7B, {"intermediate_size": 0}, "intermediate_size", "at least 1"),
    (DEEPSEEK_V2_LITE, {"first_k_dense_replace": 40}, "first_k_dense_replace", "only 27"),
    (OPT_67B, {"word_embed_proj_dim": 512}, "word_embed_proj_dim", "project_in"),
])
def test_absurd_values_name_the_field(tmp_path: Path, base: dict, change: dict, key: str,
                                      needle: str) -> None:
    path = _write_json(tmp_path / "config.json", {**base, **change})
    with pytest.raises(InputError) as exc:
        load_model(path)
    _input_error(exc, path, f"field {key}", needle)


# ---- model records -----------------------------------------------------------------------------
def test_json_model_record(tmp_path: Path) -> None:
    spec = load_model("mixtral-8x7b")
    path = _write_json(tmp_path / "mixtral.json", spec.to_record())
    assert load_model(path) == spec


@pytest.mark.parametrize("fmt", ["msgpack", "jsonl"])
def test_record_streams(tmp_path: Path, fmt: str) -> None:
    spec = load_model("deepseek-v2-lite")
    path = tmp_path / f"model.{fmt}"
    with open(path, "wb") as fp, RecordWriter(fp, fmt) as w:
        w.write({"kind": "note", "text": "not a model"})
        w.write(spec.to_record())
    assert load_model(str(path)) == spec
    with open(path, "wb") as fp, RecordWriter(fp, fmt) as w:
        w.write({"kind": "note"})
    with pytest.raises(InputError) as exc:
        load_model(str(path))
    _input_error(exc, "no `model` record")


def test_truncated_record_stream(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with RecordWriter(buf, "msgpack") as w:
        w.write(load_model("gpt2").to_record())
    path = tmp_path / "cut.msgpack"
    path.write_bytes(buf.getvalue()[:-20])
    with pytest.raises(InputError) as exc:
        load_model(str(path))
    _input_error(exc, str(path), "byte")


@pytest.mark.parametrize("change,key,needle", [
    ({"layers": -1}, "layers", "out of range"), ({"hidden": None}, "hidden", "missing"),
    ({"name": 7}, "name", "expected a string"), ({"norm": "batch"}, "norm", "rms or layer"),
    ({"gated_ffn": 1}, "gated_ffn", "true or false"),
    ({"experts": 4, "top_k": 8}, "top_k", "experts per token"),
])
def test_bad_model_records(tmp_path: Path, change: dict, key: str, needle: str) -> None:
    rec = {**load_model("mixtral-8x7b").to_record(), **change}
    rec = {k: v for k, v in rec.items() if v is not None}
    path = _write_json(tmp_path / "bad.json", rec)
    with pytest.raises(InputError) as exc:
        load_model(path)
    _input_error(exc, path, f"field {key}", needle)


# ---- GGUF ---------------------------------------------------------------------------------------
def _gguf_elements(path: Path) -> int:
    return sum(int(t.n_elements) for t in gguf.GGUFReader(str(path)).tensors)


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


def _finish(w: Any) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _writer(path: Path, arch: str, *, layers: int, hidden: int, heads: int, ffn: int,
            ctx: int = 128) -> Any:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(layers)
    w.add_embedding_length(hidden)
    w.add_head_count(heads)
    w.add_feed_forward_length(ffn)
    w.add_context_length(ctx)
    return w


@needs_gguf
def test_gguf_tiny_llama_counts_every_tensor(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_embd=64, n_layer=2, n_head=4, n_ff=128,
                            n_ctx=256)
    spec = load_model(str(path))
    vocab = len(build_vocab()[0])
    assert (spec.arch, spec.name, spec.layers, spec.hidden, spec.heads, spec.kv_heads) == \
        ("llama", "memstack-tiny-llama", 2, 64, 4, 4)
    assert (spec.head_dim, spec.ffn, spec.vocab, spec.max_positions) == (16, 128, vocab, 256)
    assert spec.dtype == "f32" and not spec.tied_embeddings and spec.gated_ffn
    assert spec.total_params() == _gguf_elements(path)


def _llama_layers(w: Any, layers: int, hidden: int, ffn: int, kv: int, hd: int) -> None:
    for i in range(layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", _zeros(hidden))
        w.add_tensor(b + "attn_q.weight", _zeros(hidden, hidden))
        w.add_tensor(b + "attn_k.weight", _zeros(kv * hd, hidden))
        w.add_tensor(b + "attn_v.weight", _zeros(kv * hd, hidden))
        w.add_tensor(b + "attn_output.weight", _zeros(hidden, hidden))
        w.add_tensor(b + "ffn_norm.weight", _zeros(hidden))
        for name, shape in (("gate", (ffn, hidden)), ("up", (ffn, hidden)),
                            ("down", (hidden, ffn))):
            w.add_tensor(b + f"ffn_{name}.weight", _zeros(*shape))


@needs_gguf
def test_gguf_tied_gqa_without_file_type(tmp_path: Path) -> None:
    """No output.weight: tied; head_count_kv honoured; dtype from the dominant tensors."""
    path = tmp_path / "tied.gguf"
    w = _writer(path, "llama", layers=2, hidden=64, heads=8, ffn=96)
    w.add_head_count_kv(2)
    w.add_token_list([f"t{i}" for i in range(100)])
    w.add_tensor("token_embd.weight", _zeros(100, 64))
    _llama_layers(w, 2, 64, 96, kv=2, hd=8)
    w.add_tensor("output_norm.weight", _zeros(64))
    _finish(w)
    spec = load_model(str(path))
    assert spec.tied_embeddings and spec.kv_heads == 2 and spec.vocab == 100
    assert spec.dtype == "f32" and spec.total_params() == _gguf_elements(path)


@needs_gguf
def test_gguf_quantized_dtype(tmp_path: Path) -> None:
    path = tmp_path / "q8.gguf"
    w = _writer(path, "llama", layers=1, hidden=64, heads=4, ffn=64)
    rng = np.random.default_rng(0)
    for name in ("token_embd.weight", "output.weight", "blk.0.attn_q.weight"):
        q = gguf.quants.quantize(rng.standard_normal((64, 64)).astype(np.float32),
                                 gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", _zeros(64))
    _finish(w)
    assert load_model(str(path)).dtype == "q8_0"  # no general.file_type: the dominant type
    path2 = tmp_path / "q4km.gguf"
    w = _writer(path2, "llama", layers=1, hidden=64, heads=4, ffn=64)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tensor("token_embd.weight", _zeros(32, 64))
    _finish(w)
    assert load_model(str(path2)).dtype == "q4_k_m"


@needs_gguf
def test_gguf_gpt2(tmp_path: Path) -> None:
    """Learned positions, biases everywhere, layer norm, 2-matrix FFN, tied head."""
    h, f, n_pos, vocab = 32, 128, 64, 50
    path = tmp_path / "gpt2.gguf"
    w = _writer(path, "gpt2", layers=2, hidden=h, heads=4, ffn=f, ctx=n_pos)
    w.add_tensor("token_embd.weight", _zeros(vocab, h))
    w.add_tensor("position_embd.weight", _zeros(n_pos, h))
    for i in range(2):
        b = f"blk.{i}."
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(b + norm + ".weight", _zeros(h))
            w.add_tensor(b + norm + ".bias", _zeros(h))
        for name, (rows, cols) in (("attn_qkv", (3 * h, h)), ("attn_output", (h, h)),
                                   ("ffn_up", (f, h)), ("ffn_down", (h, f))):
            w.add_tensor(b + name + ".weight", _zeros(rows, cols))
            w.add_tensor(b + name + ".bias", _zeros(rows))
    w.add_tensor("output_norm.weight", _zeros(h))
    w.add_tensor("output_norm.bias", _zeros(h))
    _finish(w)
    spec = load_model(str(path))
    assert (spec.arch, spec.learned_positions, spec.norm, spec.gated_ffn) == ("gpt2", n_pos,
                                                                             "layer", False)
    assert spec.bias and spec.qkv_bias and spec.tied_embeddings and spec.vocab == vocab
    assert spec.total_params() == _gguf_elements(path)


@needs_gguf
def test_gguf_qwen2moe(tmp_path: Path) -> None:
    """Routed experts, one shared expert, q/k/v biases; the shared-expert gate is left out."""
    h, heads, experts, eff, sff, layers, vocab = 32, 4, 6, 16, 48, 2, 40
    path = tmp_path / "moe.gguf"
    w = _writer(path, "qwen2moe", layers=layers, hidden=h, heads=heads, ffn=64)
    w.add_head_count_kv(2)
    w.add_expert_count(experts)
    w.add_expert_used_count(2)
    w.add_expert_feed_forward_length(eff)
    w.add_expert_shared_feed_forward_length(sff)
    w.add_tensor("token_embd.weight", _zeros(vocab, h))
    for i in range(layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", _zeros(h))
        w.add_tensor(b + "ffn_norm.weight", _zeros(h))
        for name, rows in (("attn_q", h), ("attn_k", 16), ("attn_v", 16)):
            w.add_tensor(b + name + ".weight", _zeros(rows, h))
            w.add_tensor(b + name + ".bias", _zeros(rows))
        w.add_tensor(b + "attn_output.weight", _zeros(h, h))
        w.add_tensor(b + "ffn_gate_inp.weight", _zeros(experts, h))
        w.add_tensor(b + "ffn_gate_exps.weight", _zeros(experts, eff, h))
        w.add_tensor(b + "ffn_up_exps.weight", _zeros(experts, eff, h))
        w.add_tensor(b + "ffn_down_exps.weight", _zeros(experts, h, eff))
        for name, shape in (("gate", (sff, h)), ("up", (sff, h)), ("down", (h, sff))):
            w.add_tensor(b + f"ffn_{name}_shexp.weight", _zeros(*shape))
    w.add_tensor("output_norm.weight", _zeros(h))
    w.add_tensor("output.weight", _zeros(vocab, h))
    _finish(w)
    spec = load_model(str(path))
    assert (spec.arch, spec.experts, spec.top_k, spec.expert_ffn) == ("qwen2_moe", 6, 2, eff)
    assert (spec.shared_experts, spec.shared_ffn, spec.qkv_bias, spec.bias) == (1, sff, True,
                                                                               False)
    assert spec.total_params() == _gguf_elements(path)
    assert spec.total_params() - spec.active_params() == layers * (experts - 2) * 3 * h * eff


@needs_gguf
def test_gguf_deepseek2_mla(tmp_path: Path) -> None:
    """MLA with a q LoRA, a leading dense layer and shared experts, tensor for tensor."""
    h, heads, nope, rope, v, qr, kvr = 32, 4, 8, 4, 8, 16, 12
    experts, eff, ffn, layers, vocab = 4, 8, 48, 3, 30
    path = tmp_path / "ds.gguf"
    w = _writer(path, "deepseek2", layers=layers, hidden=h, heads=heads, ffn=ffn)
    w.add_head_count_kv(heads)
    w.add_key_length(nope + rope)
    w.add_value_length(v)
    w.add_rope_dimension_count(rope)
    w.add_q_lora_rank(qr)
    w.add_kv_lora_rank(kvr)
    w.add_expert_count(experts)
    w.add_expert_used_count(2)
    w.add_expert_shared_count(2)
    w.add_expert_feed_forward_length(eff)
    w.add_leading_dense_block_count(1)
    w.add_tensor("token_embd.weight", _zeros(vocab, h))
    for i in range(layers):
        b = f"blk.{i}."
        for name, shape in (("attn_norm", (h,)), ("ffn_norm", (h,)), ("attn_q_a", (qr, h)),
                            ("attn_q_a_norm", (qr,)), ("attn_q_b", (heads * (nope + rope), qr)),
                            ("attn_kv_a_mqa", (kvr + rope, h)), ("attn_kv_a_norm", (kvr,)),
                            ("attn_kv_b", (heads * (nope + v), kvr)),
                            ("attn_output", (h, heads * v))):
            w.add_tensor(b + name + ".weight", _zeros(*shape))
        if i == 0:
            for name, shape in (("gate", (ffn, h)), ("up", (ffn, h)), ("down", (h, ffn))):
                w.add_tensor(b + f"ffn_{name}.weight", _zeros(*shape))
            continue
        w.add_tensor(b + "ffn_gate_inp.weight", _zeros(experts, h))
        for name, shape, shared in (("gate", (eff, h), (2 * eff, h)),
                                    ("up", (eff, h), (2 * eff, h)),
                                    ("down", (h, eff), (h, 2 * eff))):
            w.add_tensor(b + f"ffn_{name}_exps.weight", _zeros(experts, *shape))
            w.add_tensor(b + f"ffn_{name}_shexp.weight", _zeros(*shared))
    w.add_tensor("output_norm.weight", _zeros(h))
    w.add_tensor("output.weight", _zeros(vocab, h))
    _finish(w)
    spec = load_model(str(path))
    assert (spec.arch, spec.head_dim, spec.rope_dim, spec.v_head_dim) == ("deepseek", nope, rope, v)
    assert (spec.q_lora_rank, spec.kv_lora_rank, spec.dense_layers) == (qr, kvr, 1)
    assert (spec.shared_experts, spec.shared_ffn, spec.moe_layers) == (2, eff, 2)
    assert spec.total_params() == _gguf_elements(path)


@needs_gguf
def test_gguf_without_architecture(tmp_path: Path) -> None:
    path = tmp_path / "noarch.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.kv_data[0].pop("general.architecture")
    w.add_block_count(1)
    w.add_tensor("x.weight", _zeros(4, 4))
    _finish(w)
    with pytest.raises(InputError) as exc:
        load_model(str(path))
    _input_error(exc, str(path), "metadata", "no general.architecture")


@needs_gguf
def test_gguf_unsupported_architecture_and_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_tensor("x.weight", _zeros(4, 4))
    _finish(w)
    with pytest.raises(InputError) as exc:
        load_model(str(path))
    _input_error(exc, "metadata general.architecture", "'mamba'", "supported")
    path = tmp_path / "nolayers.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_feed_forward_length(64)
    w.add_context_length(64)
    w.add_tensor("token_embd.weight", _zeros(10, 64))
    _finish(w)
    with pytest.raises(InputError) as exc:
        load_model(str(path))
    _input_error(exc, "metadata llama.block_count", "missing")


@needs_gguf
def test_gguf_truncated_or_garbage(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=1)
    data = path.read_bytes()
    for cut in (3, 10, 200, len(data) // 2, len(data) - 40):
        bad = tmp_path / f"cut-{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError) as exc:
            load_model(str(bad))
        _input_error(exc, str(bad))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(np.random.default_rng(1).integers(0, 256, 500,
                                                                         dtype=np.uint8)))
    with pytest.raises(InputError) as exc:
        load_model(str(junk))
    _input_error(exc, str(junk))


# ---- property: any valid llama-like config ------------------------------------------------------
@st.composite
def llama_like(draw: st.DrawFn) -> dict[str, Any]:
    kv = draw(st.integers(1, 8))
    heads = kv * draw(st.integers(1, 8))
    head_dim = draw(st.sampled_from([8, 16, 64, 128]))
    cfg = {
        "model_type": draw(st.sampled_from(["llama", "mistral", "qwen2"])),
        "num_hidden_layers": draw(st.integers(1, 96)), "hidden_size": heads * head_dim,
        "num_attention_heads": heads, "num_key_value_heads": kv,
        "intermediate_size": draw(st.integers(1, 50_000)),
        "vocab_size": draw(st.integers(1, 300_000)),
        "max_position_embeddings": draw(st.integers(1, 1 << 20)),
        "tie_word_embeddings": draw(st.booleans()),
        "torch_dtype": draw(st.sampled_from(["bfloat16", "float16", "float32"])),
    }
    if draw(st.booleans()):  # an explicit head_dim that need not be hidden / heads
        cfg["head_dim"] = draw(st.integers(1, 256))
    if draw(st.booleans()):
        cfg.update(model_type="mixtral", num_local_experts=draw(st.integers(1, 64)))
        cfg["num_experts_per_tok"] = draw(st.integers(1, cfg["num_local_experts"]))
    return cfg


@settings(max_examples=80, deadline=None)
@given(llama_like())
def test_llama_like_round_trip_and_sum_of_parts(cfg: dict[str, Any]) -> None:
    spec = from_hf_config(cfg, "random", "hypothesis")
    rec = json.loads(json.dumps(spec.to_record()))
    assert ModelSpec.from_record(rec) == spec == from_model_record(rec, "rec")
    h, layers, f, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], \
        cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", h // heads)
    attn = 2 * h * heads * hd + 2 * h * kv * hd
    if cfg["model_type"] == "qwen2":
        attn += (heads + 2 * kv) * hd  # q/k/v biases
    experts, top_k = cfg.get("num_local_experts", 0), cfg.get("num_experts_per_tok", 0)
    ffn = experts * 3 * h * f + h * experts if experts else 3 * h * f
    heads_out = 0 if cfg["tie_word_embeddings"] else vocab * h
    total = vocab * h + heads_out + h + layers * (attn + ffn + 2 * h)
    assert spec.total_params() == total > 0
    assert spec.total_params() - spec.active_params() == layers * (experts - top_k) * 3 * h * f
    assert rec["params"] == total


JSONISH = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                    st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.integers(-3, 30), max_size=4),
                    st.dictionaries(st.text(), st.none()))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([LLAMA2_7B, QWEN_MOE, MIXTRAL_8X7B, DEEPSEEK_V2_LITE, GPT2, OPT_67B,
                        GEMMA_2B]),
       st.dictionaries(st.sampled_from(sorted({k for c in (LLAMA2_7B, QWEN_MOE, DEEPSEEK_V2_LITE,
                                                           GPT2, OPT_67B) for k in c}
                                              | {"head_dim", "mlp_only_layers"})),
                       JSONISH, max_size=4))
def test_mangled_configs_give_a_spec_or_an_input_error(base: dict, change: dict) -> None:
    """Whatever a config's values are, the reader answers with a spec or a one-line InputError."""
    try:
        spec = from_hf_config({**base, **change}, "fuzz", "cfg")
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("cfg: ")
    else:
        assert spec.total_params() > 0 and from_model_record(spec.to_record(), "r") == spec


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in fields(ModelSpec)]), JSONISH,
                       max_size=3))
def test_mangled_records_give_a_spec_or_an_input_error(change: dict) -> None:
    rec = {**load_model("deepseek-v2-lite").to_record(), **change}
    try:
        spec = from_model_record(rec, "rec")
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("rec: field ")
    else:
        assert spec.total_params() > 0
