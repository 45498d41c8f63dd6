"""Bits per element of the precisions `simulate` accepts for weights, KV cache and activations.

Weights take any `memstack quantize` scheme (its bits per weight counts every stored bit:
scales, type ids, outlier columns), plus the GPU formats runtimes ship (``fp8``, ``int8``,
``int4``/AWQ-style) and ``bits:X`` for anything else.
"""

from __future__ import annotations

import functools
import math

from memstack.core.errors import ConfigError

# Formats whose size is fixed by their block layout (bits per weight incl. scales).
_FIXED = {
    "f32": 32.0, "fp32": 32.0, "f16": 16.0, "fp16": 16.0, "bf16": 16.0,
    "fp8": 8.0, "int8": 8.0, "w8a8": 8.0,
    # AWQ/GPTQ int4 with an fp16 scale and zero per group of 128 input channels
    "int4": 4.25, "awq": 4.25, "gptq": 4.25,
    "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0,
    "q2_k": 2.625, "q3_k": 3.4375, "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625, "q8_k": 9.125,
    "mxfp4": 4.25, "mx:fp4": 4.25, "nf4": 4.5,
    # llama.cpp's mixed K-quant files, by the bits per weight its quantize tool reports for 7B
    "q2_k_s": 2.96, "q3_k_s": 3.50, "q3_k_m": 3.91, "q3_k_l": 4.27, "q4_k_s": 4.58,
    "q4_k_m": 4.85, "q5_k_s": 5.54, "q5_k_m": 5.69,
}
_ALIASES = {"fp32": "f32", "fp16": "f16", "mx:fp4": "mxfp4", "w8a8": "int8",
            "awq": "int4", "gptq": "int4"}
# KV cache element types (llama.cpp cache types and the fp8 caches of vLLM/TensorRT-LLM)
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0,
            "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}
ACT_DTYPES = {"auto": "auto", "f32": "fp32", "fp32": "fp32", "f16": "fp16", "fp16": "fp16",
              "bf16": "bf16", "fp8": "fp8", "int8": "int8"}


def canonical(fmt: str) -> str:
    """The name a target's `formats` table is keyed by."""
    f = fmt.strip().lower()
    return _ALIASES.get(f, f)


@functools.lru_cache(maxsize=256)
def weight_bits(fmt: str) -> float:
    """Bits per weight of a weight format, counting scales and every other stored bit."""
    f = fmt.strip().lower()
    if f.startswith("bits:"):
        try:
            bits = float(f[5:])
        except ValueError:
            bits = math.nan
        if not 0.5 <= bits <= 64:
            raise ConfigError(f"bad weight format {fmt!r}: bits:X needs 0.5 <= X <= 64")
        return bits
    if f in _FIXED:
        return _FIXED[f]
    return _scheme_bits(f, fmt)


def _scheme_bits(f: str, given: str) -> float:
    """Measure a quantize scheme on a 64×4096 normal matrix: its bits per weight, all in."""
    import numpy as np

    from memstack.core.quant.schemes import parse_scheme

    try:
        scheme = parse_scheme(f)
    except Exception as exc:  # parse_scheme's own message names the scheme
        raise ConfigError(f"unknown weight format {given!r}: {exc}; use a quantize scheme "
                          f"(q4_0, q8_0, nf4, mx:fp6, bfp:4 …), fp8, int8, int4 or bits:X"
                          ) from exc
    w = np.random.default_rng(0).normal(0, 0.02, (64, 4096)).astype(np.float32)
    return float(scheme.quantize(w, threads=1).bpw)


def kv_bytes(fmt: str) -> float:
    f = canonical(fmt)
    if f not in KV_BYTES:
        raise ConfigError(f"unknown KV cache type {fmt!r}; choose from "
                          + ", ".join(sorted(KV_BYTES)))
    return KV_BYTES[f]


def act_bytes(act: str, weights: str) -> float:
    """Bytes per activation element; `auto` follows matmul_dtype's choice."""
    return {"fp32": 4.0, "fp8": 1.0, "int8": 1.0}.get(matmul_dtype(weights, act)
                                                      if act_dtype(act) == "auto"
                                                      else act_dtype(act), 2.0)


def act_dtype(fmt: str) -> str:
    f = fmt.strip().lower()
    if f not in ACT_DTYPES:
        raise ConfigError(f"unknown activation type {fmt!r}; choose from "
                          + ", ".join(sorted(ACT_DTYPES)))
    return ACT_DTYPES[f]


def matmul_dtype(weights: str, act: str) -> str:
    """The dtype a runtime's matmul runs in: fp8×fp8 and int8×int8 use those units."""
    a = act_dtype(act)
    w = canonical(weights)
    if a == "auto":  # what runtimes do: fp8 weights run w8a8 (TensorRT-LLM, vLLM), else fp16
        a = "fp8" if w == "fp8" else "fp16"
    if a == "fp8" and w == "fp8":
        return "fp8"
    if a == "int8" and w in ("int8", "q8_0"):
        return "int8"
    return "fp16" if a in ("fp8", "int8") else a
