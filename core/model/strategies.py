"""Price an agent's memory strategies per query: full context, recall-augmented, cached KV.

Memory papers claim large latency and token savings of retrieval over putting every memory in
the prompt; this makes the claim checkable for a given store, model and target. Each strategy
is a `simulate` workload:

- ``full-context``: every memory plus the query is prefilled, then the answer is decoded;
- ``recall:k=K``: K memories plus the query (plus the retrieval time, if given);
- ``kv-cache``: the memories' KV is computed once and kept; each query prefills only itself
  against that prefix (the KV must stay resident: its bytes count against the tier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError
from memstack.core.model.simulate import Workload, simulate
from memstack.core.model.spec import ModelSpec
from memstack.core.model.target import Target

NAMES = ("full-context", "recall", "kv-cache")


@dataclass(frozen=True)
class MemoryStats:
    memories: int
    memory_tokens: float  # mean tokens per memory
    source: str = "given"

    @property
    def total_tokens(self) -> int:
        return int(round(self.memories * self.memory_tokens))


def store_stats(path: str) -> MemoryStats:
    """Current memories of a store and their mean token count (under the store's tokenizer)."""
    from memstack.core.store import LmdbStore

    store = LmdbStore(path)
    try:
        with store.snapshot() as snap:
            if not snap.n:
                raise ConfigError(f"store {path} has no memories to price strategies for")
            current = np.isinf(snap.column("valid_to"))
            tokens = snap.column("tokens")[current]
    finally:
        store.close()
    return MemoryStats(int(tokens.size), float(tokens.mean()) if tokens.size else 0.0,
                       f"store {path}")


@dataclass(frozen=True)
class Strategy:
    name: str  # full-context | recall | kv-cache
    k: int = 0


def parse_strategies(text: str) -> list[Strategy]:
    """'full-context,recall:k=10,kv-cache' (recall's k defaults to 10)."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, arg = item.partition(":")
        if name not in NAMES:
            raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(NAMES)} "
                              f"(recall takes :k=N)")
        k = 0
        if name == "recall":
            key, _, val = arg.partition("=")
            if arg and (key != "k" or not val.isdigit() or int(val) < 1):
                raise ConfigError(f"bad strategy {item!r}: recall takes :k=N with N >= 1")
            k = int(val) if arg else 10
        elif arg:
            raise ConfigError(f"strategy {name} takes no argument, got {item!r}")
        out.append(Strategy(name, k))
    if not out:
        raise ConfigError("--strategies is empty")
    return out


def price(spec: ModelSpec, target: Target, stats: MemoryStats, strategies: list[Strategy], *,
          query_tokens: int = 32, answer_tokens: int = 128, weights: str = "f16",
          kv: str = "f16", act: str = "auto", recall_s: float = 0.0) -> list[dict[str, Any]]:
    """One `strategy` record per strategy, with ratios to full context when it is priced."""
    recs = []
    for st in strategies:
        if st.name == "full-context":
            prompt, prefix, label = stats.total_tokens + query_tokens, 0, "full-context"
        elif st.name == "recall":
            k = min(st.k, stats.memories)
            prompt = int(round(k * stats.memory_tokens)) + query_tokens
            prefix, label = 0, f"recall:k={st.k}"
        else:
            prompt, prefix, label = query_tokens, stats.total_tokens, "kv-cache"
        res = simulate(spec, target, Workload(1, prompt, answer_tokens, weights, kv, act,
                                              prefix))
        t = res.totals
        extra = recall_s if st.name == "recall" else 0.0
        ttft = float(t["ttft_s"]) + extra
        recs.append({
            "v": 1, "kind": "strategy", "strategy": label, "model": spec.name,
            "target": target.name, "memories": stats.memories,
            "memory_tokens": round(stats.memory_tokens, 2), "stats_from": stats.source,
            "prompt_tokens": prompt, "cached_tokens": prefix, "answer_tokens": answer_tokens,
            "ttft_s": ttft, "decode_s": float(t["tpot_s"]) * answer_tokens,
            "total_s": ttft + float(t["tpot_s"]) * answer_tokens,
            "prefill_flops": float(sum(np.asarray(op.flops) for op in res.prefill_ops)),
            "kv_bytes": float(t["mem_kv"]), "mem_total": float(t["mem_total"]),
            "fits": bool(t["fits"]), "retrieval_s": extra,
        })
    base = next((r for r in recs if r["strategy"] == "full-context"), None)
    for r in recs:
        if base is not None:
            r["speedup_vs_full"] = base["total_s"] / r["total_s"] if r["total_s"] else None
            r["prompt_token_ratio"] = r["prompt_tokens"] / base["prompt_tokens"]
    return recs
