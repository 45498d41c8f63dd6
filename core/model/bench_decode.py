"""Time real decoding of a GGUF model with ctransformers (llama.cpp's CPU kernels), to check and
calibrate what `simulate` predicts for this machine.

Tokens are evaluated one at a time through the C API, feeding back the sampled token whatever it
is, so exactly `gen_tokens` decode steps run (an early EOS cannot shorten a run). Each step is
sample + eval, as `generate` does. A warm-up pass first faults the memory-mapped weights in, so
the timed runs read DRAM, not the disk.
"""

from __future__ import annotations

import ctypes
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from memstack.core.errors import ConfigError, InputError, MemstackError
from memstack.core.model.hwbench import default_threads

INSTALL_HINT = "decode benchmark needs ctransformers: pip install 'memstack[llm]'"
MAX_BATCH = 512  # ctransformers 0.2.27 builds llama contexts with n_batch = 512
# a decode run whose threads got less than this share of their cores was slowed by other work:
# ggml's threads spin at a barrier after every graph node, so two threads on one core run
# 2-100x slower, which says nothing about the model on this machine
MIN_CPU_SHARE = 0.85
HEADER_BYTES = 64 << 20  # the metadata and tensor table of any real model fit in this
FIRST_TOKEN = 259  # after <unk> <s> </s> and the 256 byte tokens of a sentencepiece vocab
# llama.cpp's general.file_type names (llama_ftype)
FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1",
              10: "q2_k", 11: "q3_k_s", 12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s",
              15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k"}
# ggml tensor type names, by the ids in embed_gguf._GGML_TYPES
GGML_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0",
              10: "q2_k", 11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k"}
_META_KEYS = ("general.file_type", "llama.block_count", "llama.embedding_length",
              "llama.attention.head_count", "llama.attention.head_count_kv")


def read_model_table(path: str) -> dict[str, Any]:
    """The metadata and tensor table decode costs follow from: shape, file type, and bytes per
    tensor. Checks the file first, so garbage is an InputError, not a C-library abort."""
    from memstack.core.embed_gguf import read_gguf_info

    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise InputError(path, "model", f"the model file {what}")
    try:
        read_gguf_info(path)
        with open(path, "rb") as f:
            return _scan(f.read(HEADER_BYTES), path)
    except ConfigError as exc:
        msg = str(exc).removeprefix("gguf embedder: ").removeprefix(f"{path}: ")
        raise InputError(path, "GGUF header", msg) from None


def _scan(buf: bytes, path: str) -> dict[str, Any]:
    from memstack.core.embed_gguf import _GGML_TYPES, _Header

    h = _Header(memoryview(buf), path)
    h.pos = 4
    len_fmt = "I" if h.take("I") == 1 else "Q"
    n_tensors, n_kv = h.take(len_fmt), h.take(len_fmt)
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = h.string(len_fmt).decode("utf-8", "replace")
        val = h.value(h.take("I"), len_fmt)
        if key in _META_KEYS:
            meta[key] = val
    tensors: dict[str, tuple[int, int, int]] = {}  # name: (ggml type, elements, bytes)
    for _ in range(n_tensors):
        name = h.string(len_fmt).decode("utf-8", "replace")
        dims = [h.take(len_fmt) for _ in range(h.take("I"))]
        ttype, _ = h.take("I"), h.take("Q")
        block_bytes, block = _GGML_TYPES[ttype]
        n = math.prod(dims)
        tensors[name] = (ttype, n, -(-n // block) * block_bytes)
    return {"meta": meta, "tensors": tensors, "vocab": _vocab_rows(tensors, meta)}


def _vocab_rows(tensors: dict[str, tuple[int, int, int]], meta: dict[str, Any]) -> int:
    emb = tensors.get("token_embd.weight")
    hidden = meta.get("llama.embedding_length") or 0
    return emb[1] // hidden if emb and hidden else 0


def _read_fraction(table: dict[str, Any], name: str) -> float:
    """Share of a tensor one decode step reads: all of it, but of the token embedding only the
    token's row (unless the output projection is tied to it)."""
    tied = "output.weight" not in table["tensors"]
    if name == "token_embd.weight" and not tied and table["vocab"]:
        return 1 / table["vocab"]
    return 1.0


def weight_bytes_per_token(table: dict[str, Any]) -> dict[str, int]:
    """Weight bytes one decode step reads, by ggml type."""
    out: dict[str, int] = {}
    for name, (ttype, _, nbytes) in table["tensors"].items():
        kind = GGML_TYPES.get(ttype, str(ttype))
        out[kind] = out.get(kind, 0) + round(nbytes * _read_fraction(table, name))
    return out


def weights_per_token(table: dict[str, Any]) -> int:
    """Weights (elements) one decode step multiplies: what a compute-bound kernel pays for."""
    return round(sum(n * _read_fraction(table, name)
                     for name, (_, n, _) in table["tensors"].items()))


def kv_bytes_per_token(table: dict[str, Any], context: float) -> float:
    """f16 K and V bytes a decode step reads at `context` cached positions."""
    meta = table["meta"]
    hidden = meta.get("llama.embedding_length") or 0
    heads = meta.get("llama.attention.head_count") or 1
    kv_heads = meta.get("llama.attention.head_count_kv") or heads
    layers = meta.get("llama.block_count") or 0
    return 2 * 2 * layers * hidden * kv_heads / heads * context


def _load(path: str, context: int, threads: int) -> Any:
    try:
        from ctransformers import LLM, Config
    except ImportError:
        raise MemstackError(INSTALL_HINT) from None
    from memstack.core.embed_gguf import _cpu_lib

    config = Config(context_length=context, threads=threads,
                    batch_size=min(MAX_BATCH, context))
    try:
        return LLM(path, "llama", config=config, lib=_cpu_lib())
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(path, "model", f"ctransformers cannot load it: {exc}") from None


def _prompt(n: int, vocab: int) -> list[int]:
    """BOS then a fixed spread of ordinary token ids (the values do not change the cost)."""
    span = max(1, vocab - FIRST_TOKEN)
    return [1] + [FIRST_TOKEN + (i * 7919) % span for i in range(n - 1)]


def _eval(llm: Any, tokens: list[int], n_past: int, threads: int) -> None:
    arr = (ctypes.c_int * len(tokens))(*tokens)
    if not llm.ctransformers_llm_batch_eval(arr, len(tokens), n_past,
                                            min(MAX_BATCH, len(tokens)), threads):
        raise MemstackError(f"decode benchmark: {llm.model_path}: evaluation failed")


def _sample(llm: Any, history: list[int]) -> int:
    """ctransformers' default sampler (top-k 40, top-p 0.95, temperature 0.8, repetition
    penalty 1.1 over the last 64 tokens), fixed seed: its cost is part of every real step."""
    last = history[-64:]
    arr = (ctypes.c_int * len(last))(*last)
    return int(llm.ctransformers_llm_sample(arr, len(last), 40, 0.95, 0.8, 1.1, 0))


def _one_run(llm: Any, prompt: list[int], gen: int,
             threads: int) -> tuple[float, list[float], float]:
    """(prompt seconds, seconds of each decode step, CPU share of the decode) from an empty
    cache. The CPU share (process CPU time / wall time / threads) is ~1 when the threads had
    their cores; well below 1 means other work took them and the run is slow for that reason."""
    t0 = time.perf_counter()
    _eval(llm, prompt, 0, threads)
    prompt_s = time.perf_counter() - t0
    history = list(prompt)
    steps: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(gen):
        t0 = time.perf_counter()
        tok = _sample(llm, history)
        _eval(llm, [tok], len(history), threads)
        steps.append(time.perf_counter() - t0)
        history.append(tok)
    share = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0) / threads
    return prompt_s, steps, share


def bench_decode(model_path: str, *, prompt_tokens: int = 64, gen_tokens: int = 32,
                 repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """Prompt tokens/s and decode ms/token (medians over `repeats` runs) of a GGUF llama."""
    if prompt_tokens < 1 or gen_tokens < 1 or repeats < 1:
        raise ConfigError("prompt_tokens, gen_tokens and repeats must be at least 1")
    path = str(Path(model_path).expanduser())
    table = read_model_table(path)
    threads = threads or default_threads()
    context = prompt_tokens + gen_tokens + 8
    t0 = time.perf_counter()
    llm = _load(path, context, threads)
    load_s = time.perf_counter() - t0
    prompt = _prompt(prompt_tokens, table["vocab"] or int(llm.vocab_size))
    _one_run(llm, prompt, min(gen_tokens, 4), threads)  # fault weights in, start threads
    runs = [_one_run(llm, prompt, gen_tokens, threads) for _ in range(repeats)]
    return _result(path, table, runs, prompt_tokens, gen_tokens, threads, load_s)


def _result(path: str, table: dict[str, Any], runs: list[tuple[float, list[float], float]],
            prompt_tokens: int, gen_tokens: int, threads: int, load_s: float) -> dict[str, Any]:
    per_run_ms = [1e3 * sum(steps) / len(steps) for _, steps, _ in runs]
    fair = [i for i, (_, _, share) in enumerate(runs) if share >= MIN_CPU_SHARE]
    use = fair or list(range(len(runs)))  # every run contended: report them all, flagged
    all_steps = [s for i in use for s in runs[i][1]]
    weights = weight_bytes_per_token(table)
    ftype = table["meta"].get("general.file_type")
    return {
        "kind": "decode_bench", "model": path, "file_bytes": os.path.getsize(path),
        "file_type": FILE_TYPES.get(ftype, str(ftype)) if ftype is not None else None,
        "params": sum(n for _, n, _ in table["tensors"].values()),
        "layers": table["meta"].get("llama.block_count"),
        "hidden": table["meta"].get("llama.embedding_length"), "vocab": table["vocab"],
        "weights_per_token": weights_per_token(table),
        "weight_bytes_per_token": sum(weights.values()), "weight_bytes_by_type": weights,
        "kv_bytes_per_token": kv_bytes_per_token(table, prompt_tokens + (gen_tokens + 1) / 2),
        "threads": threads, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
        "repeats": len(runs), "load_s": load_s,
        "prompt_tok_s": statistics.median(prompt_tokens / runs[i][0] for i in use),
        "prompt_runs_tok_s": [prompt_tokens / p for p, _, _ in runs],
        "decode_ms_per_token": statistics.median(per_run_ms[i] for i in use),
        "decode_runs_ms_per_token": per_run_ms, "contended_runs": len(runs) - len(fair),
        "decode_step_ms_p10": 1e3 * _quantile(all_steps, 0.1),
        "decode_step_ms_p50": 1e3 * statistics.median(all_steps),
        "decode_cpu_share": [share for _, _, share in runs],
    }


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]
