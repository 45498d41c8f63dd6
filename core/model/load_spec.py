"""Model specs from a Hugging Face config.json, a GGUF file, a memstack `model` record or a preset.

`simulate` and `offload-plan` need a model's shape, not its weights, so every source is reduced
to the same `ModelSpec`. Each value is read with the key it came from, so a bad or missing one is
reported by the name the user sees in their file ("field num_key_value_heads"), not ours.
Presets live in ``core/data/models.toml`` as the shape-bearing part of the published configs and
go through the same parser as a downloaded config.json.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from memstack.core.errors import ConfigError, InputError
from memstack.core.model.spec import ModelSpec
from memstack.formats.stream import MSGPACK_MAP_FIRST, RecordReader

MAX_CONFIG_BYTES = 64 << 20  # a config.json is kilobytes; refuse to slurp a mistaken huge file
_REQUIRED = object()
_PATH_SUFFIXES = (".json", ".gguf", ".msgpack", ".mpk", ".jsonl")

# (lowest, highest) accepted value per spec field: far beyond any real model, so only typos and
# corrupt files trip them, before they turn into a petabyte memory plan.
LIMITS: dict[str, tuple[int, int]] = {
    "layers": (1, 10_000), "hidden": (1, 10_000_000), "heads": (1, 1_000_000),
    "kv_heads": (1, 1_000_000), "head_dim": (1, 1_000_000), "ffn": (0, 100_000_000),
    "vocab": (1, 100_000_000), "max_positions": (1, 1 << 40), "learned_positions": (0, 1 << 40),
    "experts": (0, 1_000_000), "top_k": (0, 1_000_000), "expert_ffn": (0, 100_000_000),
    "shared_experts": (0, 1_000_000), "shared_ffn": (0, 100_000_000),
    "dense_layers": (0, 10_000), "moe_every": (1, 10_000), "q_lora_rank": (0, 10_000_000),
    "kv_lora_rank": (0, 10_000_000), "rope_dim": (0, 1_000_000), "v_head_dim": (0, 1_000_000),
}

HF_DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "half": "f16",
             "float": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16", "fp32": "f32",
             "f32": "f32", "float8_e4m3fn": "fp8"}

HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3", "GemmaForCausalLM": "gemma", "Phi3ForCausalLM": "phi3",
    "MixtralForCausalLM": "mixtral", "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe", "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3", "GPT2LMHeadModel": "gpt2", "OPTForCausalLM": "opt",
}


class _Fields:
    """Reads ModelSpec fields out of one source's key/value map, remembering each field's key.

    The remembered keys let checks that span fields (kv heads dividing heads) still name the
    key the user wrote.
    """

    def __init__(self, data: Mapping[str, Any], source: str, kind: str = "field"):
        self.data = data
        self.source = source
        self.kind = kind
        self.keys: dict[str, str] = {}

    def fail(self, field: str, message: str) -> NoReturn:
        raise InputError(self.source, f"{self.kind} {self.keys.get(field, field)}", message)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def int(self, field: str, key: str, default: Any = _REQUIRED) -> Any:
        """The integer at `key` (null counts as absent), range-checked as spec field `field`."""
        self.keys.setdefault(field, key)
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise InputError(self.source, f"{self.kind} {key}", "missing (needed for the "
                                 f"model's {field.replace('_', ' ')})")
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(self.source, f"{self.kind} {key}",
                             f"expected an integer, got {_show(value)}")
        return self.in_range(field, key, value)

    def in_range(self, field: str, key: str, value: int) -> int:
        """`value` if it lies within LIMITS for `field`, else an error naming `key`."""
        lo, hi = LIMITS.get(field, (0, 1 << 62))
        if not lo <= value <= hi:
            raise InputError(self.source, f"{self.kind} {key}",
                             f"{value:,} is out of range ({lo} to {hi:,})")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InputError(self.source, f"{self.kind} {key}",
                             f"expected true or false, got {_show(value)}")
        return value


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | list | dict) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- checks every source shares -----------------------------------------------------------------
def _checked(spec: ModelSpec, f: _Fields) -> ModelSpec:
    """Refuse shapes no model has, naming the source's key for the offending field."""
    if not spec.mla and (spec.kv_heads > spec.heads or spec.heads % spec.kv_heads):
        f.fail("kv_heads", f"{spec.kv_heads} key/value heads do not divide {spec.heads} "
               "attention heads")
    if spec.ffn < 1 and spec.moe_layers < spec.layers:
        f.fail("ffn", "dense FFN layers need an intermediate size of at least 1")
    if spec.moe:
        if not 1 <= spec.top_k <= spec.experts:
            f.fail("top_k", f"{spec.top_k} experts per token is not between 1 and the "
                   f"{spec.experts} experts")
        if spec.expert_ffn < 1:
            f.fail("expert_ffn", "experts need an intermediate size of at least 1")
        if spec.shared_experts and spec.shared_ffn < 1:
            f.fail("shared_ffn", "shared experts need an intermediate size of at least 1")
    if spec.dense_layers > spec.layers:
        f.fail("dense_layers", f"{spec.dense_layers} dense layers but the model has only "
               f"{spec.layers}")
    return spec


def _head_dim(f: _Fields, hidden: int, heads: int, key: str = "head_dim") -> int:
    """An explicit head_dim, else hidden / heads, which must then divide evenly."""
    explicit = f.int("head_dim", key, None)
    if explicit is not None:
        return explicit
    if hidden % heads:
        f.fail("heads", f"hidden size {hidden} is not a multiple of {heads} attention heads "
               f"and no {key} is given")
    return hidden // heads


# ---- Hugging Face config.json -------------------------------------------------------------------
def _hf_dtype(cfg: Mapping[str, Any], f: _Fields) -> str:
    """The published weight precision: a quantization_config wins over torch_dtype."""
    quant = cfg.get("quantization_config")
    if isinstance(quant, dict):
        method = str(quant.get("quant_method", "")).lower()
        bits = quant.get("bits")
        if method == "fp8":
            return "fp8"
        if isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= 8:
            return f"int{bits}"
    key = "torch_dtype" if "torch_dtype" in cfg else "dtype"
    raw = cfg.get(key)
    if raw is None:
        return "f32"  # transformers loads a config without torch_dtype in float32
    name = raw.lower().removeprefix("torch.") if isinstance(raw, str) else None
    if name not in HF_DTYPES:
        raise InputError(f.source, f"field {key}", f"unknown dtype {_show(raw)} (expected one "
                         "of bfloat16, float16, float32)")
    return HF_DTYPES[name]


def _decoder(f: _Fields, cfg: Mapping[str, Any], tied: bool) -> dict[str, Any]:
    """The keys llama-family configs share: sizes, heads, vocab, context, ties, dtype."""
    hidden = f.int("hidden", "hidden_size")
    heads = f.int("heads", "num_attention_heads")
    return {
        "layers": f.int("layers", "num_hidden_layers"), "hidden": hidden, "heads": heads,
        "kv_heads": f.int("kv_heads", "num_key_value_heads", heads),
        "head_dim": _head_dim(f, hidden, heads), "ffn": f.int("ffn", "intermediate_size"),
        "vocab": f.int("vocab", "vocab_size"),
        "max_positions": f.int("max_positions", "max_position_embeddings"),
        "tied_embeddings": f.bool("tie_word_embeddings", tied), "dtype": _hf_dtype(cfg, f),
    }


def _hf_llama(f: _Fields, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """llama, mistral, phi3, qwen3: attention_bias gives q/k/v biases (the o bias is not kept)."""
    out = _decoder(f, cfg, tied=False)
    attn_bias = f.bool("attention_bias", False)
    out.update(qkv_bias=attn_bias, bias=attn_bias and f.bool("mlp_bias", False))
    return out


def _hf_qwen2(f: _Fields, cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**_decoder(f, cfg, tied=False), "qkv_bias": True}


def _hf_gemma(f: _Fields, cfg: Mapping[str, Any]) -> dict[str, Any]:
    return _decoder(f, cfg, tied=True)


def _hf_mixtral(f: _Fields, cfg: Mapping[str, Any]) -> dict[str, Any]:
    out = _decoder(f, cfg, tied=False)
    f.keys["expert_ffn"] = "intermediate_size"
    out.update(experts=f.int("experts", "num_local_experts"),
               top_k=f.int("top_k", "num_experts_per_tok"), expert_ffn=out["ffn"])
    return out


def _dense_prefix(f: _Fields, key: str, layers: int) -> int:
    """Qwen's mlp_only_layers as a count of leading dense layers; other sets cannot be modelled."""
    raw = f.data.get(key) or []
    if not isinstance(raw, list) or not all(isinstance(i, int) for i in raw):
        raise InputError(f.source, f"field {key}", "expected a list of layer indices")
    if sorted(raw) != list(range(len(raw))) or len(raw) > layers:
        raise InputError(f.source, f"field {key}", f"{_show(raw)}: only a leading run of dense "
                         "layers (0, 1, ..., k-1) can be modelled")
    f.keys["dense_layers"] = key
    return len(raw)


def _hf_qwen_moe(f: _Fields, cfg: Mapping[str, Any], shared: bool) -> dict[str, Any]:
    out = _decoder(f, cfg, tied=False)
    shared_ffn = f.int("shared_ffn", "shared_expert_intermediate_size", 0) if shared else 0
    out.update(experts=f.int("experts", "num_experts"),
               top_k=f.int("top_k", "num_experts_per_tok"),
               expert_ffn=f.int("expert_ffn", "moe_intermediate_size"),
               shared_experts=1 if shared_ffn else 0, shared_ffn=shared_ffn,
               moe_every=f.int("moe_every", "decoder_sparse_step", 1),
               dense_layers=_dense_prefix(f, "mlp_only_layers", out["layers"]),
               qkv_bias=shared)  # qwen2_moe has q/k/v biases, qwen3_moe none
    return out


def _hf_deepseek(f: _Fields, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """DeepSeek V2/V3: MLA attention; shared experts are n_shared_experts of the expert size."""
    heads = f.int("heads", "num_attention_heads")
    experts = f.int("experts", "n_routed_experts", 0)
    expert_ffn = f.int("expert_ffn", "moe_intermediate_size", 0 if not experts else _REQUIRED)
    f.keys["shared_ffn"] = "moe_intermediate_size"
    kv_lora_rank = f.int("kv_lora_rank", "kv_lora_rank")
    if kv_lora_rank < 1:
        f.fail("kv_lora_rank", "DeepSeek's latent attention needs a rank of at least 1")
    if f.int("moe_every", "moe_layer_freq", 1) != 1:
        f.fail("moe_every", "only 1 is supported: DeepSeek's step counts layers from 0, "
               "which the spec's moe_every does not model")
    return {
        "layers": f.int("layers", "num_hidden_layers"), "hidden": f.int("hidden", "hidden_size"),
        "heads": heads, "kv_heads": heads, "ffn": f.int("ffn", "intermediate_size"),
        "vocab": f.int("vocab", "vocab_size"),
        "max_positions": f.int("max_positions", "max_position_embeddings"),
        "experts": experts, "top_k": f.int("top_k", "num_experts_per_tok") if experts else 0,
        "expert_ffn": expert_ffn,
        "shared_experts": f.int("shared_experts", "n_shared_experts", 0) if experts else 0,
        "shared_ffn": expert_ffn, "dense_layers": f.int("dense_layers", "first_k_dense_replace", 0),
        "q_lora_rank": f.int("q_lora_rank", "q_lora_rank", 0),
        "kv_lora_rank": kv_lora_rank, "head_dim": f.int("head_dim", "qk_nope_head_dim"),
        "rope_dim": f.int("rope_dim", "qk_rope_head_dim"),
        "v_head_dim": f.int("v_head_dim", "v_head_dim"),
        "tied_embeddings": f.bool("tie_word_embeddings", False), "dtype": _hf_dtype(cfg, f),
    }


def _hf_gpt2(f: _Fields, cfg: Mapping[str, Any]) -> dict[str, Any]:
    hidden = f.int("hidden", "n_embd")
    heads = f.int("heads", "n_head")
    positions = f.int("max_positions", "n_positions" if f.has("n_positions") else "n_ctx")
    return {
        "layers": f.int("layers", "n_layer"), "hidden": hidden, "heads": heads,
        "kv_heads": heads, "head_dim": _head_dim(f, hidden, heads, key="head_dim"),
        "ffn": f.int("ffn", "n_inner", 4 * hidden), "vocab": f.int("vocab", "vocab_size"),
        "max_positions": positions, "learned_positions": positions, "gated_ffn": False,
        "tied_embeddings": f.bool("tie_word_embeddings", True), "bias": True, "norm": "layer",
        "dtype": _hf_dtype(cfg, f),
    }


def _hf_opt(f: _Fields, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """OPT: learned positions with 2 offset rows; a narrower word_embed_proj_dim is refused."""
    hidden = f.int("hidden", "hidden_size")
    heads = f.int("heads", "num_attention_heads")
    proj = f.int("hidden", "word_embed_proj_dim", hidden)
    if proj != hidden:
        raise InputError(f.source, "field word_embed_proj_dim", f"{proj} differs from "
                         f"hidden_size {hidden}: the project_in/project_out matrices of this "
                         "OPT variant (opt-350m) are not modelled")
    positions = f.int("max_positions", "max_position_embeddings")
    return {
        "layers": f.int("layers", "num_hidden_layers"), "hidden": hidden, "heads": heads,
        "kv_heads": heads, "head_dim": _head_dim(f, hidden, heads), "ffn": f.int("ffn", "ffn_dim"),
        "vocab": f.int("vocab", "vocab_size"), "max_positions": positions,
        "learned_positions": positions + 2, "gated_ffn": False,
        "tied_embeddings": f.bool("tie_word_embeddings", True),
        "bias": f.bool("enable_bias", True), "norm": "layer", "dtype": _hf_dtype(cfg, f),
    }


# model_type -> (spec arch, reader)
HF_FAMILIES: dict[str, tuple[str, Callable[[_Fields, Mapping[str, Any]], dict[str, Any]]]] = {
    "llama": ("llama", _hf_llama), "mistral": ("mistral", _hf_llama),
    "phi3": ("phi3", _hf_llama), "qwen3": ("qwen3", _hf_llama),
    "qwen2": ("qwen2", _hf_qwen2), "gemma": ("gemma", _hf_gemma),
    "mixtral": ("mixtral", _hf_mixtral),
    "qwen2_moe": ("qwen2_moe", lambda f, c: _hf_qwen_moe(f, c, shared=True)),
    "qwen3_moe": ("qwen3_moe", lambda f, c: _hf_qwen_moe(f, c, shared=False)),
    "deepseek_v2": ("deepseek", _hf_deepseek), "deepseek_v3": ("deepseek", _hf_deepseek),
    "gpt2": ("gpt2", _hf_gpt2), "opt": ("opt", _hf_opt),
}


def _model_type(cfg: Mapping[str, Any], source: str) -> str:
    """model_type, else the family of the first entry of `architectures`."""
    supported = ", ".join(sorted(HF_FAMILIES))
    mt = cfg.get("model_type")
    if mt is None:
        archs = cfg.get("architectures")
        first = archs[0] if isinstance(archs, list) and archs else None
        if isinstance(first, str) and first in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[first]
        raise InputError(source, "field model_type", f"missing, and architectures "
                         f"{_show(archs)} is not a supported one; supported model types: "
                         f"{supported}")
    if not isinstance(mt, str) or mt not in HF_FAMILIES:
        raise InputError(source, "field model_type", f"unsupported model_type {_show(mt)}; "
                         f"supported: {supported}")
    return mt


def from_hf_config(cfg: dict, name: str, source: str) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json already parsed into a dict."""
    if not isinstance(cfg, dict):
        raise InputError(source, "top level", "a config must be a JSON object")
    arch, read = HF_FAMILIES[_model_type(cfg, source)]
    f = _Fields(cfg, source)
    return _checked(ModelSpec(name=name, arch=arch, source=source, **read(f, cfg)), f)


# ---- memstack `model` records -------------------------------------------------------------------
def from_model_record(rec: Mapping[str, Any], source: str) -> ModelSpec:
    """A ModelSpec from a `model` record, type- and range-checking every field it carries."""
    f = _Fields(rec, source)
    values: dict[str, Any] = {}
    for fd in fields(ModelSpec):
        required = fd.default is MISSING
        if fd.type == "int":
            value = f.int(fd.name, fd.name, _REQUIRED if required else None)
        elif fd.type == "bool":
            value = f.bool(fd.name, fd.default)
        else:
            value = rec.get(fd.name)
            if value is None and required:
                f.fail(fd.name, "missing")
            if value is not None and not isinstance(value, str):
                f.fail(fd.name, f"expected a string, got {_show(value)}")
        if value is not None:
            values[fd.name] = value
    values.setdefault("source", source)
    if values.get("norm", "rms") not in ("rms", "layer"):
        f.fail("norm", f"{_show(values['norm'])} is not rms or layer")
    return _checked(ModelSpec(**values), f)


def _from_stream(path: str, fmt: str | None) -> ModelSpec:
    """The first `model` record of a stream, read to the end so a cut stream is still refused."""
    found: ModelSpec | None = None
    with open(path, "rb") as fp:
        for rec in RecordReader(fp, path, fmt):
            if found is None and rec.get("kind") == "model":
                found = from_model_record(rec, path)
    if found is None:
        raise InputError(path, "records", "no `model` record in this stream")
    return found


# ---- GGUF ---------------------------------------------------------------------------------------
# general.architecture -> spec arch; llama with experts is reported as mixtral
GGUF_ARCHES = {"llama": "llama", "qwen2": "qwen2", "qwen2moe": "qwen2_moe", "qwen3": "qwen3",
               "qwen3moe": "qwen3_moe", "deepseek2": "deepseek", "gpt2": "gpt2", "phi3": "phi3",
               "gemma": "gemma"}


def _gguf_metadata(reader: Any) -> dict[str, Any]:
    """Every key/value of a GGUF header except the tokenizer's big arrays, as Python values."""
    meta: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith(("GGUF.", "tokenizer.ggml.")):
            continue
        meta[name] = field.contents()
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        meta["tokenizer.ggml.tokens"] = len(tokens.data)  # the count, not 150k decoded strings
    return meta


def _gguf_dtype(meta: Mapping[str, Any], tensors: list[Any]) -> str:
    """general.file_type by name (q4_k_m, f16, ...), else the type holding the most bytes."""
    import gguf

    ftype = meta.get("general.file_type")
    if isinstance(ftype, int):
        try:
            return gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix(
                "ALL_").lower()
        except ValueError:
            pass
    by_type: dict[str, int] = {}
    for t in tensors:
        by_type[t.dtype] = by_type.get(t.dtype, 0) + t.nbytes
    return max(by_type, key=by_type.__getitem__).lower() if by_type else "f32"


def from_gguf(path: str) -> ModelSpec:
    """A ModelSpec from a GGUF file's metadata, with ties, biases and positions from its tensors."""
    from memstack.formats.tensorfile import open_tensor_file

    tf = open_tensor_file(path)
    if tf.gguf is None:
        raise InputError(path, "byte 0", f"a {tf.kind} file, not GGUF")
    meta = _gguf_metadata(tf.gguf)
    gguf_arch = meta.get("general.architecture")
    if not isinstance(gguf_arch, str) or not gguf_arch:
        raise InputError(path, "metadata", "no general.architecture key: not a model GGUF, or "
                         "written without the model metadata llama.cpp needs")
    if gguf_arch not in GGUF_ARCHES:
        raise InputError(path, "metadata general.architecture", f"unsupported architecture "
                         f"{gguf_arch!r}; supported: {', '.join(sorted(GGUF_ARCHES))}")
    shapes = {t.name: t.shape for t in tf.tensors}
    f = _Fields(meta, path, kind="metadata")
    a = gguf_arch
    hidden = f.int("hidden", f"{a}.embedding_length")
    heads = f.int("heads", f"{a}.attention.head_count")
    experts = f.int("experts", f"{a}.expert_count", 0)
    ffn = f.int("ffn", f"{a}.feed_forward_length", 0 if experts else _REQUIRED)
    spec: dict[str, Any] = {
        "layers": f.int("layers", f"{a}.block_count"), "hidden": hidden, "heads": heads,
        "kv_heads": f.int("kv_heads", f"{a}.attention.head_count_kv", heads), "ffn": ffn,
        "max_positions": f.int("max_positions", f"{a}.context_length"),
        "vocab": _gguf_vocab(f, a, shapes), "dtype": _gguf_dtype(meta, tf.tensors),
        "tied_embeddings": "output.weight" not in shapes,
        "learned_positions": shapes.get("position_embd.weight", (0,))[0],
        "qkv_bias": "blk.0.attn_q.bias" in shapes or "blk.0.attn_qkv.bias" in shapes,
        "bias": "blk.0.attn_output.bias" in shapes,
        "norm": "layer" if "blk.0.attn_norm.bias" in shapes else "rms",
        "gated_ffn": a != "gpt2",
    }
    if experts:
        spec.update(_gguf_moe(f, a, experts, ffn))
    if a == "deepseek2":
        spec.update(_gguf_mla(f, a))
    else:
        spec["head_dim"] = _head_dim(f, hidden, heads, key=f"{a}.attention.key_length")
    arch = "mixtral" if a == "llama" and experts else GGUF_ARCHES[a]
    name = meta.get("general.name") or Path(path).stem
    return _checked(ModelSpec(name=str(name), arch=arch, source=path, **spec), f)


def _gguf_vocab(f: _Fields, a: str, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Rows of the embedding table (what the weights hold), else the declared vocabulary."""
    if "token_embd.weight" in shapes:
        f.keys["vocab"] = "token_embd.weight"
        return f.in_range("vocab", "token_embd.weight", shapes["token_embd.weight"][0])
    key = f"{a}.vocab_size" if f.has(f"{a}.vocab_size") else "tokenizer.ggml.tokens"
    return f.int("vocab", key)


def _gguf_moe(f: _Fields, a: str, experts: int, ffn: int) -> dict[str, Any]:
    expert_ffn = f.int("expert_ffn", f"{a}.expert_feed_forward_length", ffn or _REQUIRED)
    shared_ffn = f.int("shared_ffn", f"{a}.expert_shared_feed_forward_length", 0)
    shared = f.int("shared_experts", f"{a}.expert_shared_count", 1 if shared_ffn else 0)
    return {"experts": experts, "top_k": f.int("top_k", f"{a}.expert_used_count"),
            "expert_ffn": expert_ffn, "shared_experts": shared,
            "shared_ffn": shared_ffn or (expert_ffn if shared else 0),
            "dense_layers": f.int("dense_layers", f"{a}.leading_dense_block_count", 0)}


def _gguf_mla(f: _Fields, a: str) -> dict[str, Any]:
    """deepseek2: key_length is nope + rope per head (key_length_mla in newer conversions)."""
    rope = f.int("rope_dim", f"{a}.rope.dimension_count")
    mla_key = f"{a}.attention.key_length_mla"
    key = mla_key if f.has(mla_key) else f"{a}.attention.key_length"
    qk = f.int("head_dim", key)
    if qk <= rope:
        f.fail("head_dim", f"key length {qk} is not larger than the rope dimension {rope}")
    kv_lora_rank = f.int("kv_lora_rank", f"{a}.attention.kv_lora_rank")
    if kv_lora_rank < 1:
        f.fail("kv_lora_rank", "latent attention needs a rank of at least 1")
    v_key = f"{a}.attention.value_length_mla"
    return {"q_lora_rank": f.int("q_lora_rank", f"{a}.attention.q_lora_rank", 0),
            "kv_lora_rank": kv_lora_rank,
            "rope_dim": rope, "head_dim": qk - rope,
            "v_head_dim": f.int("v_head_dim", v_key if f.has(v_key)
                                else f"{a}.attention.value_length")}


# ---- presets ------------------------------------------------------------------------------------
_META_KEYS = ("hf", "aliases")
_DROPPED_WORDS = {"hf", "instruct", "chat", "base"}


def _normal(name: str) -> str:
    """A lookup key that ignores case, an org/ prefix, separators and -hf/-instruct/-chat."""
    last = name.strip().lower().rsplit("/", 1)[-1]
    return "".join(w for w in re.split(r"[-_\s]+", last) if w and w not in _DROPPED_WORDS)


def _toml_loads(text: str) -> dict[str, Any]:
    """tomllib is 3.11+; on 3.10 the identical tomli backport stands in."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("model presets need Python 3.11+ or the tomli package (pip "
                              "install tomli); a config.json or .gguf path works without") \
                from None
    return tomllib.loads(text)


@functools.cache
def _presets() -> dict[str, dict[str, Any]]:
    text = resources.files("memstack.core").joinpath("data/models.toml").read_text("utf-8")
    return _toml_loads(text)


@functools.cache
def _preset_index() -> dict[str, str]:
    """Normalized name or alias -> preset name; two presets claiming one key is a data bug."""
    index: dict[str, str] = {}
    for name, table in _presets().items():
        for alias in (name, table.get("hf", ""), *table.get("aliases", ())):
            key = _normal(alias)
            if key and index.setdefault(key, name) != name:
                raise ValueError(f"models.toml: {alias!r} names both {index[key]} and {name}")
    return index


def list_models() -> list[str]:
    """Preset names, in the order models.toml lists them."""
    return list(_presets())


def preset(name: str) -> ModelSpec:
    """A preset by name or alias; unknown names get close matches (exit 2)."""
    found = _preset_index().get(_normal(name))
    if found is None:
        raise ConfigError(_unknown_message(name))
    table = _presets()[found]
    cfg = {k: v for k, v in table.items() if k not in _META_KEYS}
    source = f"preset {found} (huggingface.co/{table['hf']} config.json)"
    return from_hf_config(cfg, found, source)


def _unknown_message(name: str) -> str:
    spellings: dict[str, str] = {}
    for preset_name, table in _presets().items():
        for alias in (preset_name, table.get("hf", ""), *table.get("aliases", ())):
            spellings.setdefault(alias.lower(), preset_name)
    close = difflib.get_close_matches(name.strip().lower(), list(spellings), n=6, cutoff=0.6)
    names = list(dict.fromkeys(spellings[c] for c in close))[:3]
    hint = f"did you mean {', '.join(names)}?" if names else \
        f"known models: {', '.join(list_models())}"
    return f"unknown model {name!r}; {hint} (or give a config.json / .gguf path)"


# ---- entry point --------------------------------------------------------------------------------
def load_model(ref: str) -> ModelSpec:
    """A model spec from a config.json / GGUF / model-record path, or else a preset name."""
    path = os.path.expanduser(ref)
    if os.path.isdir(path):
        config = os.path.join(path, "config.json")
        if not os.path.isfile(config):
            raise InputError(ref, "directory", "no config.json in this directory")
        return _from_file(config)
    if os.path.isfile(path):
        return _from_file(path)
    if ref.lower().endswith(_PATH_SUFFIXES) or ref.startswith((".", "/", "~")):
        raise InputError(ref, "byte 0", "no such file")  # meant as a path: no preset guessing
    return preset(ref)


def _from_file(path: str) -> ModelSpec:
    with open(path, "rb") as fp:
        head = fp.read(4)
    if head == b"GGUF" or path.lower().endswith(".gguf"):
        return from_gguf(path)
    if head[:1] and head[0] in MSGPACK_MAP_FIRST:
        return _from_stream(path, "msgpack")
    return _from_json(path)


def _from_json(path: str) -> ModelSpec:
    """A config.json, a JSON `model` record, or (several JSON lines) a JSONL record stream."""
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise InputError(path, "byte 0", f"{size:,} bytes is too large for a config.json or "
                         "model record")
    with open(path, "rb") as fp:
        data = fp.read()
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "not UTF-8 text: not a config.json, "
                         "GGUF or model record") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and data.lstrip().startswith(b"{"):
            return _from_stream(path, "jsonl")
        raise InputError(path, f"line {exc.lineno}, column {exc.colno}",
                         f"malformed JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise InputError(path, "line 1", "expected a JSON object (a config.json or a model "
                         "record)")
    if obj.get("kind") == "model":
        return from_model_record(obj, path)
    if "model_type" in obj or "architectures" in obj:
        return from_hf_config(obj, _config_name(path), path)
    raise InputError(path, "top level", "neither a Hugging Face config (no model_type or "
                     "architectures) nor a memstack model record (kind \"model\")")


def _config_name(path: str) -> str:
    """The model's name: the folder of a config.json, else the file's stem."""
    p = Path(path).resolve()
    return p.parent.name if p.stem == "config" and p.parent.name else p.stem
