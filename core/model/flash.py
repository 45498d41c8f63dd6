"""The "LLM in a flash" cost model (Alizadeh et al., 2023, arXiv:2312.11514) for FFNs on flash.

The FFN weights of a sparse (ReLU-like) model stay on flash; per token only the neurons a
predictor says will fire are read into DRAM. Neuron i of a layer is row i of the up (and gate)
projection plus column i of the down projection: `mats` vectors of `hidden` weights (2, or 3
when gated). Two techniques from the paper:

* Windowing: the neurons active for any of the last k tokens stay in DRAM, so a token reads
  only the neurons not already there. With s_agg(k) the fraction of neurons used by at least one
  of k consecutive tokens, a token reads s_agg(k+1) - s_agg(k) of the FFN and DRAM holds
  s_agg(k+1) of it at the peak (the window plus the token's own new neurons).
* Row-column bundling: neuron i's vectors are stored together, so one read of mats x hidden x
  bytes replaces `mats` reads of hidden x bytes - fewer, bigger reads, which flash serves at a
  higher bandwidth.

s_agg comes from a measured curve (`agg_curve`, e.g. `agg_curve_from_mask` on recorded
activations) or from a model of the sparsity pattern: each neuron is a two-state Markov chain,
active a fraction `1 - sparsity` of tokens, staying active from one token to the next with
probability `persistence`. Then s_agg(k) = 1 - (1 - s)(1 - b)^(k - 1) with s the active
fraction and b = s (1 - p) / (1 - s) the chance an idle neuron wakes up; p = s means tokens are
independent, p -> 1 that a token reuses its predecessor's neurons. The default p = 0.6 matches
the paper's OPT-6.7B figures (predicted active ~10% per token, a window of 5 tokens holding
~24% of the FFN, ~2-3% of it read per token).

Reads: the needed neurons of a layer are taken as spread independently over its `ffn` slots, so
adjacent ones merge into one contiguous read: a fraction q of the slots makes ffn q (1 - q) + q
runs on average - one read per neuron when q is small, one read per matrix when q = 1 (a dense
load). The flash bandwidth for the mean read size comes from the tier's (chunk bytes, bytes/s)
curve, interpolated log-log and flat beyond its ends. Latency per read is taken to be inside
that curve (it is measured with the reader's thread count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError

GIB = float(1 << 30)
DEFAULT_PERSISTENCE = 0.6


# ---- validation ---------------------------------------------------------------------------------
def _positive_int(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ConfigError(f"{name} must be a positive integer (got {v!r})")
    return int(v)


def _fraction(name: str, v: float) -> float:
    if not (0.0 <= float(v) <= 1.0):
        raise ConfigError(f"{name} must lie in [0, 1] (got {v!r})")
    return float(v)


def _curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((float(c), float(b)) for c, b in points)
    if not pts or any(not (c > 0 and b > 0) or math.isinf(c) or math.isinf(b) for c, b in pts):
        raise ConfigError("chunk_curve needs at least one (chunk bytes, bytes/s) point, both > 0")
    return np.log([c for c, _ in pts]), np.log([b for _, b in pts])


def bandwidth_at(chunk_curve: Sequence[tuple[float, float]], chunk_bytes: float) -> float:
    """Flash bytes/s for reads of `chunk_bytes`: log-log interpolation, flat past the ends."""
    lx, ly = _curve(chunk_curve)
    if chunk_bytes <= 0:
        raise ConfigError(f"chunk size must be > 0 (got {chunk_bytes})")
    return float(np.exp(np.interp(math.log(chunk_bytes), lx, ly)))


# ---- neuron reuse across a window --------------------------------------------------------------
def aggregate_usage(active: float, tokens: int, persistence: float = DEFAULT_PERSISTENCE) -> float:
    """s_agg(tokens): the fraction of neurons active in at least one of `tokens` consecutive
    tokens under the Markov model (see the module docstring); 0 for no tokens."""
    s = _fraction("active fraction", active)
    p = _fraction("persistence", persistence)
    if tokens <= 0 or s == 0.0:
        return 0.0
    if s >= 1.0:
        return 1.0
    wake = min(1.0, s * (1.0 - p) / (1.0 - s))  # capped: p below 1 - (1-s)/s is not reachable
    return 1.0 - (1.0 - s) * (1.0 - wake) ** (tokens - 1)


def agg_curve_from_mask(mask: np.ndarray, max_tokens: int) -> list[float]:
    """Measured s_agg(1..max_tokens) from a (tokens, neurons) record of which neurons fired:
    the mean, over every run of k consecutive tokens, of the fraction used by any of them."""
    m = np.asarray(mask)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ConfigError(f"an activation mask is (tokens, neurons), got shape {m.shape}")
    _positive_int("max_tokens", max_tokens)
    if max_tokens > m.shape[0]:
        raise ConfigError(f"max_tokens {max_tokens} exceeds the {m.shape[0]} recorded tokens")
    cum = np.concatenate([np.zeros((1, m.shape[1]), np.int64), np.cumsum(m != 0, axis=0)])
    return [float(((cum[k:] - cum[:-k]) > 0).mean()) for k in range(1, max_tokens + 1)]


def _s_agg(active: float, persistence: float, curve: Sequence[float] | None, k: int) -> float:
    if k <= 0:
        return 0.0
    if curve is None:
        return aggregate_usage(active, k, persistence)
    if k > len(curve):
        raise ConfigError(f"agg_curve covers {len(curve)} tokens; window {k - 1} needs {k}")
    return float(curve[k - 1])


def _check_agg_curve(curve: Sequence[float]) -> list[float]:
    c = [float(v) for v in curve]
    if not c or any(not (0.0 <= v <= 1.0) for v in c) or any(b < a - 1e-12 for a, b in
                                                              zip(c, c[1:], strict=False)):
        raise ConfigError("agg_curve must be non-empty, within [0, 1] and non-decreasing")
    return c


# ---- the cost of one token ---------------------------------------------------------------------
def flash_ffn_cost(*, hidden: int, ffn: int, gated: bool, bytes_per_weight: float,
                   window: int, bundling: bool, chunk_curve: Sequence[tuple[float, float]],
                   sparsity: float | None = None, active: float | None = None,
                   layers: int = 1, dram_budget: float | None = None,
                   persistence: float = DEFAULT_PERSISTENCE,
                   agg_curve: Sequence[float] | None = None) -> dict[str, Any]:
    """Per-token flash traffic, reads, I/O time and the DRAM the window holds, for the FFNs of
    `layers` layers. Give exactly one of `sparsity`, the fraction of FFN neurons idle for a
    token (OPT-6.7B: ~0.97; 0 = dense), or `active` = 1 - sparsity, the fraction that fires
    (the predictor's output). `window` is k, the tokens whose neurons stay in DRAM."""
    if (sparsity is None) == (active is None):
        raise ConfigError("give exactly one of sparsity (idle fraction) and active (1 - it)")
    if sparsity is None:
        sparsity = 1.0 - _fraction("active", active)
    hidden, ffn, layers = (_positive_int(n, v) for n, v in
                           (("hidden", hidden), ("ffn", ffn), ("layers", layers)))
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
        raise ConfigError(f"window must be an integer >= 0 (got {window!r})")
    if not (bytes_per_weight > 0) or math.isinf(bytes_per_weight):
        raise ConfigError(f"bytes_per_weight must be > 0 (got {bytes_per_weight!r})")
    active = 1.0 - _fraction("sparsity", sparsity)
    persistence = _fraction("persistence", persistence)
    if dram_budget is not None and not (dram_budget >= 0):
        raise ConfigError(f"dram_budget must be >= 0 bytes (got {dram_budget!r})")
    curve = None if agg_curve is None else _check_agg_curve(agg_curve)
    _curve(chunk_curve)

    mats = 3 if gated else 2
    vec_bytes = hidden * bytes_per_weight  # one row or column of one matrix
    neuron_bytes = mats * vec_bytes
    held = _s_agg(active, persistence, curve, window + 1)
    new = max(0.0, held - _s_agg(active, persistence, curve, window))
    flash_bytes = layers * ffn * new * neuron_bytes
    runs = ffn * new * (1.0 - new) + new  # contiguous runs of needed neurons per layer
    reads = layers * runs * (1 if bundling else mats)
    chunk = flash_bytes / reads if reads > 0 else (neuron_bytes if bundling else vec_bytes)
    bw = bandwidth_at(chunk_curve, chunk)
    dram = layers * ffn * held * neuron_bytes
    return {
        "hidden": hidden, "ffn": ffn, "gated": gated, "layers": layers,
        "bytes_per_weight": bytes_per_weight, "sparsity": 1.0 - active, "window": int(window),
        "bundling": bundling, "reuse_model": "curve" if curve is not None else "markov",
        "persistence": None if curve is not None else persistence,
        "active_fraction": _s_agg(active, persistence, curve, 1),
        "new_fraction": new, "window_fraction": held,
        "flash_bytes": flash_bytes, "reads": reads, "chunk_bytes": chunk, "bandwidth": bw,
        "io_s": flash_bytes / bw, "dram_bytes": dram, "ffn_bytes": layers * ffn * neuron_bytes,
        "dram_budget": dram_budget, "fits": None if dram_budget is None else dram <= dram_budget,
    }


def flash_window_sweep(windows: Sequence[int] = tuple(range(0, 17)), *, dram_budget: float,
                       **kw: Any) -> dict[str, Any]:
    """`flash_ffn_cost` over window sizes; recommends the window with the least I/O time among
    those whose DRAM fits the budget (the smaller DRAM on ties). ConfigError, naming the DRAM
    the smallest window needs, if none fits."""
    if not windows:
        raise ConfigError("no window sizes to sweep")
    rows = [flash_ffn_cost(window=int(w), dram_budget=dram_budget, **kw) for w in windows]
    fit = [r for r in rows if r["fits"]]
    if not fit:
        need = min(r["dram_bytes"] for r in rows)
        raise ConfigError(f"no window fits a DRAM budget of {dram_budget / GIB:.3f} GiB; the "
                          f"smallest needs {need / GIB:.3f} GiB")
    best = min(fit, key=lambda r: (r["io_s"], r["dram_bytes"]))
    return {"kind": "flash-window-sweep", "dram_budget": dram_budget, "rows": rows,
            "recommended": best["window"], "io_s": best["io_s"],
            "dram_bytes": best["dram_bytes"]}


__all__ = ["DEFAULT_PERSISTENCE", "agg_curve_from_mask", "aggregate_usage", "bandwidth_at",
           "flash_ffn_cost", "flash_window_sweep"]
