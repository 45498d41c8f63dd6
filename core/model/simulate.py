"""A roofline simulator of LLM inference that charges the overheads real runtimes pay.

Each op's time is the largest of its compute time (FLOPs at the achievable fraction of the
matmul dtype's peak), its memory time (bytes at the main tier's achievable bandwidth) and its
dequantization time (block formats on targets where unpacking weights, not reading them,
bounds a GEMV: ggml on CPUs); a step adds kernel launches per layer and a fixed per-token cost.
A bandwidth-only roofline is badly wrong for batch-1 decode on fast GPUs (launches dominate
small models) and for block-quantized CPU decode (dequantization dominates): both are modelled.

Every formula is elementwise numpy arithmetic, so the same code prices one configuration (0-d
arrays) or a sweep grid of a million (1-d arrays) in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError
from memstack.core.model import precision
from memstack.core.model.spec import ModelSpec
from memstack.core.model.target import Target

UBATCH = 512  # tokens per prefill micro-batch (llama.cpp's n_ubatch; weights are re-read per one)
ATTN_TILE = 256  # query rows per flash-attention tile: prefill re-reads the KV once per tile
_LIMIT = 1 << 40  # absurd sizes are usage errors, not overflow


@dataclass
class Workload:
    """One configuration, or a grid when fields are arrays of equal length."""

    batch: Any = 1
    prompt: Any = 512
    gen: Any = 128
    weights: Any = "f16"  # a format name, or an array of names
    kv: Any = "f16"
    act: Any = "auto"  # fp8 with fp8 weights, else f16 (see precision.matmul_dtype)
    prefix: Any = 0  # tokens whose KV is already cached before the prompt (a reused prefix)


@dataclass
class Op:
    name: str
    phase: str
    count: int  # layers it repeats over (the numbers below are already summed over them)
    flops: Any
    bytes: Any  # weights + KV + activations moved through the main tier
    weight_bytes: Any
    kv_bytes: Any
    t_compute: Any
    t_memory: Any
    t_dequant: Any

    @property
    def time(self) -> Any:
        return np.maximum(np.maximum(self.t_compute, self.t_memory), self.t_dequant)

    def record(self, i: int | None = None) -> dict[str, Any]:
        def pick(x: Any) -> float:
            a = np.asarray(x, dtype=np.float64)
            return float(a if a.ndim == 0 else a[i])

        t = {k: pick(getattr(self, k)) for k in ("t_compute", "t_memory", "t_dequant")}
        bound = max(t, key=lambda k: t[k])[2:]
        return {"op": self.name, "phase": self.phase, "count": self.count,
                "flops": pick(self.flops), "bytes": pick(self.bytes),
                "weight_bytes": pick(self.weight_bytes), "kv_bytes": pick(self.kv_bytes),
                **t, "time_s": pick(self.time), "bound": bound}


@dataclass
class Result:
    """Per-phase ops and totals; fields are arrays shaped like the workload's."""

    model: ModelSpec
    target: Target
    work: Workload
    prefill_ops: list[Op]
    decode_ops: list[Op]
    prefill_overhead: Any
    decode_overhead: Any
    totals: dict[str, Any] = field(default_factory=dict)


def _as_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a > _LIMIT):
        raise ConfigError(f"--{name} must be a non-negative size below 2^40, got {x!r}")
    return a


@dataclass(frozen=True)
class Cat:
    """A categorical grid axis: names and one code per configuration (sweeps avoid strings)."""

    names: tuple[str, ...]
    codes: np.ndarray

    def __getitem__(self, i: int) -> str:
        return self.names[int(self.codes[i])]


def _per_name(names: Any, fn) -> np.ndarray:
    """fn(name) -> tuple of floats, evaluated once per distinct name, as arrays like `names`."""
    if isinstance(names, Cat):
        table = np.array([fn(n) for n in names.names], dtype=np.float64).reshape(
            len(names.names), -1)
        return table[names.codes].T
    arr = np.asarray(names, dtype=object)
    if arr.ndim == 0:
        return np.asarray(fn(str(arr)), dtype=np.float64)
    uniq, inverse = np.unique(arr.reshape(-1).astype(str), return_inverse=True)
    table = np.array([fn(str(n)) for n in uniq], dtype=np.float64).reshape(len(uniq), -1)
    return table[inverse].reshape(*arr.shape, -1).transpose(-1, *range(arr.ndim))


def _format_table(target: Target, names: Any) -> tuple[np.ndarray, ...]:
    """Bits, GEMV rate and GEMM efficiency per weight format, as arrays aligned with `names`."""
    def props(n: str) -> tuple[float, float, float]:
        cost = target.format_cost(precision.canonical(n))
        return precision.weight_bits(n), cost.gemv_rate, cost.gemm_efficiency

    cols = _per_name(names, props)
    return tuple(cols[j] for j in range(3))


def _lookup(names: Any, fn) -> np.ndarray:
    return _per_name(names, lambda n: (fn(n),))[0]


def _peaks(target: Target, weights: Any, act: Any) -> np.ndarray:
    """Peak matmul FLOP/s for each (weights, act) pair."""
    if isinstance(weights, Cat) or isinstance(act, Cat):
        wc = weights if isinstance(weights, Cat) else Cat((str(weights),), np.zeros(1, int))
        ac = act if isinstance(act, Cat) else Cat((str(act),), np.zeros(1, int))
        pairs = Cat(tuple(f"{w}|{a}" for w in wc.names for a in ac.names),
                    wc.codes * len(ac.names) + ac.codes)
        return _lookup(pairs, lambda p: target.peak(precision.matmul_dtype(*p.split("|"))))
    w, a = np.broadcast_arrays(np.asarray(weights, dtype=object), np.asarray(act, dtype=object))
    pairs = (f"{w}|{a}" if w.ndim == 0
             else np.char.add(np.char.add(w.astype(str), "|"), a.astype(str)))
    return _lookup(pairs, lambda p: target.peak(precision.matmul_dtype(*p.split("|"))))


class _Costs:
    """The per-op arithmetic shared by both phases (arrays broadcast over the grid)."""

    def __init__(self, spec: ModelSpec, target: Target, work: Workload):
        self.spec = spec
        self.target = target
        self.B = _as_array(work.batch, "batch")
        self.P = _as_array(work.prompt, "ctx")
        self.G = _as_array(work.gen, "gen")
        self.X = _as_array(work.prefix, "prefix")
        if np.any(self.B < 1):
            raise ConfigError("--batch must be at least 1")
        self.wbits, self.gemv_rate, self.gemm_eff = _format_table(target, work.weights)
        self.kvb = _lookup(work.kv, precision.kv_bytes)
        self.actb = _lookup(work.act, lambda a: precision.act_bytes(a, "f16"))
        self.peak = _peaks(target, work.weights, work.act) * target.compute_efficiency
        self.bw = target.main.effective_bandwidth()

    def matmul(self, name: str, phase: str, count: int, params: float, tokens: Any,
               reads: Any = 1.0, touched: Any = None, used_per_token: Any = None) -> Op:
        """A weight matmul over `tokens` tokens, reading `touched` weights `reads` times."""
        touched = params if touched is None else touched
        used = params if used_per_token is None else used_per_token
        flops = 2.0 * used * tokens * count
        wbytes = touched * self.wbits / 8.0 * reads * count
        act = tokens * 2 * self.spec.hidden * self.actb * count
        t_comp = flops / (self.peak * self.gemm_eff)
        rate = self.gemv_rate  # a GEMV-kernel rate: prefill's GEMMs amortise unpacking
        t_deq = 0.0 if phase == "prefill" else np.where(
            rate > 0, used * tokens * count / np.where(rate > 0, rate, 1.0), 0.0)
        return Op(name, phase, count, flops, wbytes + act, wbytes, 0.0, t_comp,
                  (wbytes + act) / self.bw, t_deq)

    def attention(self, phase: str, tokens: Any, ctx_sum: Any, kv_read: Any,
                  kv_write: Any) -> Op:
        """Scores and weighted sum: `ctx_sum` query×key pairs, KV elements read and written."""
        s = self.spec
        n = s.layers
        flops = s.attn_flops_per_ctx() * ctx_sum * n
        kv = (kv_read + kv_write) * s.kv_elements_per_token() * self.kvb * n
        act = tokens * 2 * s.heads * s.head_dim * self.actb * n
        peak = self.peak  # attention runs in the activation dtype
        return Op("attention", phase, n, flops, kv + act, 0.0, kv, flops / peak,
                  (kv + act) / self.bw, 0.0)

    def norms(self, phase: str, tokens: Any) -> Op:
        s = self.spec
        n = s.layers
        b = (s.norm_params() * 4.0 + tokens * s.hidden * 6 * self.actb) * n
        return Op("norms+residual", phase, n, 10.0 * tokens * s.hidden * n, b, 0.0, 0.0,
                  0.0, b / self.bw, 0.0)


def _layer_ops(c: _Costs, phase: str, tokens: Any, reads: Any) -> list[Op]:
    """Per-layer matmuls summed over layers: attention projections, dense FFN, MoE parts."""
    s = c.spec
    ops = [c.matmul("attn_proj", phase, s.layers, s.attn_params(), tokens, reads)]
    dense = s.layers - s.moe_layers
    if dense:
        ops.append(c.matmul("ffn", phase, dense, s.dense_ffn_params(), tokens, reads))
    if s.moe_layers:
        m = s.moe_layers
        ops.append(c.matmul("router", phase, m, s.router_params(), tokens, reads))
        # distinct experts one micro-batch touches, if tokens route independently
        per_read = np.minimum(tokens / np.maximum(reads, 1.0), UBATCH)
        frac = 1.0 - (1.0 - s.top_k / s.experts) ** per_read
        touched = s.experts * frac * s.expert_params()
        ops.append(c.matmul("experts", phase, m, s.expert_params() * s.experts, tokens, reads,
                            touched=touched, used_per_token=s.top_k * s.expert_params()))
        if s.shared_experts:
            ops.append(c.matmul("shared_experts", phase, m, s.shared_params(), tokens, reads))
    return ops


def simulate(spec: ModelSpec, target: Target, work: Workload) -> Result:
    """Prefill of `prompt` tokens per sequence, then `gen` decode steps, for `batch` sequences."""
    c = _Costs(spec, target, work)
    B, P, G, X = c.B, c.P, c.G, c.X
    s = spec
    # ---- prefill: B·P tokens in micro-batches; weights are read once per micro-batch
    T = B * P
    n_ub = np.maximum(np.ceil(T / UBATCH), 1.0)
    ctx_pairs = B * P * (X + (P + 1) / 2.0)  # causal: token i attends to the prefix and i+1 keys
    kv_reads = B * np.ceil(P / ATTN_TILE) * (X + P / 2.0)
    pre = [c.matmul("embed", "prefill", 1, s.hidden, T, 1.0, touched=T * s.hidden,
                    used_per_token=0.0)]
    pre += _layer_ops(c, "prefill", T, n_ub)
    pre.append(c.attention("prefill", T, ctx_pairs, kv_reads, T))
    pre.append(c.norms("prefill", T))
    pre.append(c.matmul("lm_head", "prefill", 1, s.lm_head_params(), B))  # last token only
    # ---- decode: one token per sequence per step, KV length from P+1 to P+G (mean below)
    L = X + P + (G + 1) / 2.0
    dec = [c.matmul("embed", "decode", 1, s.hidden, B, 1.0, touched=B * s.hidden,
                    used_per_token=0.0)]
    dec += _layer_ops(c, "decode", B, 1.0)
    dec.append(c.attention("decode", B, B * L, B * L, B))
    dec.append(c.norms("decode", B))
    dec.append(c.matmul("lm_head", "decode", 1, s.lm_head_params(), B))
    launches = target.launch_overhead * target.kernels_per_layer * s.layers
    res = Result(s, target, work, pre, dec, n_ub * launches + target.token_overhead,
                 launches + target.token_overhead)
    res.totals = _totals(res, c)
    return res


def _sum_time(ops: list[Op]) -> Any:
    return sum(op.time for op in ops)


def footprint(spec: ModelSpec, c: _Costs) -> dict[str, Any]:
    """Bytes resident on the main tier: weights, KV for the full context, working buffers."""
    norms = spec.layers * spec.norm_params() + spec.hidden
    weights = (spec.total_params() - norms) * c.wbits / 8.0 + norms * 4.0
    kv = spec.layers * spec.kv_elements_per_token() * c.B * (c.X + c.P + c.G) * c.kvb
    ffn = max(spec.ffn, spec.top_k * spec.expert_ffn + spec.shared_experts * spec.shared_ffn)
    ub = np.minimum(c.B * c.P, UBATCH)
    act = ub * (6 * spec.hidden + 3 * ffn) * 4.0 + c.B * spec.vocab * 4.0
    return {"weights": weights, "kv": kv, "act": act, "total": weights + kv + act}


def _totals(res: Result, c: _Costs) -> dict[str, Any]:
    B, P, G = c.B, c.P, c.G
    prefill = _sum_time(res.prefill_ops) + res.prefill_overhead
    step = _sum_time(res.decode_ops) + res.decode_overhead
    mem = footprint(res.model, c)
    cap = res.target.main.capacity
    # what bounds a decode step: the largest of summed compute, memory, dequant, overheads
    terms = np.stack(np.broadcast_arrays(
        sum(np.where(op.time == op.t_compute, op.time, 0.0) for op in res.decode_ops),
        sum(np.where((op.time == op.t_memory) & (op.time != op.t_compute), op.time, 0.0)
            for op in res.decode_ops),
        sum(np.where((op.time == op.t_dequant) & (op.time != op.t_compute)
                     & (op.time != op.t_memory), op.time, 0.0) for op in res.decode_ops),
        np.broadcast_to(res.decode_overhead, np.shape(step))))
    return {
        "ttft_s": prefill, "prefill_tok_s": B * P / np.maximum(prefill, 1e-30),
        "tpot_s": step, "decode_tok_s": B / np.maximum(step, 1e-30),
        "seq_tok_s": 1.0 / np.maximum(step, 1e-30),
        "e2e_s": prefill + G * step,
        "mem_weights": mem["weights"], "mem_kv": mem["kv"], "mem_act": mem["act"],
        "mem_total": mem["total"], "capacity": np.float64(cap),
        "fits": mem["total"] <= cap,
        "decode_bound": np.argmax(terms, axis=0),
    }


BOUNDS = ("compute", "memory", "dequant", "overhead")


def sim_record(res: Result, i: int | None = None, *, ops: bool = False) -> dict[str, Any]:
    """One `sim` record (configuration `i` of a grid, or the only one)."""
    w = res.work

    def pick(x: Any) -> Any:
        if isinstance(x, Cat):
            return x[i] if i is not None else x.names[0]
        a = np.asarray(x)
        v = a if a.ndim == 0 else a[i]
        return v.item() if hasattr(v, "item") else v

    t = res.totals
    rec: dict[str, Any] = {
        "v": 1, "kind": "sim", "model": res.model.name, "target": res.target.name,
        "batch": int(pick(w.batch)), "ctx": int(pick(w.prompt)), "gen": int(pick(w.gen)),
        "weights": str(pick(w.weights)), "kv": str(pick(w.kv)), "act": str(pick(w.act)),
    }
    for k in ("ttft_s", "prefill_tok_s", "tpot_s", "decode_tok_s", "e2e_s"):
        rec[k] = float(pick(t[k]))
    for k in ("weights", "kv", "act", "total"):
        rec["mem_" + k] = float(pick(t["mem_" + k]))
    rec["capacity"] = float(t["capacity"])
    rec["fits"] = bool(pick(t["fits"]))
    rec["decode_bound"] = BOUNDS[int(pick(t["decode_bound"]))]
    if ops:
        rec["ops"] = [op.record(i) for op in res.prefill_ops + res.decode_ops]
        rec["overhead"] = {"prefill_s": float(pick(res.prefill_overhead)),
                           "decode_s": float(pick(res.decode_overhead))}
    return rec
