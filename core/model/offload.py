"""Turn a model, a target and a workload into a placement problem, plan it, and price plans.

The per-unit costs come from `simulate`'s decode ops on the main tier, so a plan and a simulation
agree on what a resident layer costs. Off the main tier a unit is either computed by the host
from DRAM (memory-bound GEMV at the host tier's achievable bandwidth; FlexGen also runs
attention over an offloaded KV cache on the CPU this way) or streamed over the link to the main
tier each step. Flash can only stream (nothing computes there); its bandwidth follows the
tier's chunk-size curve at the unit's size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError
from memstack.core.model import placement as pl
from memstack.core.model.simulate import UBATCH, Workload, simulate
from memstack.core.model.spec import ModelSpec
from memstack.core.model.target import Target, Tier

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
METHODS = ("greedy", "lp", "exact", "accelerate")


def parse_size(text: str, where: str) -> float:
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"{where}: {text!r} is not a size like 20GiB, 512MB or 1.5TB")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if value > 1e18:
        raise ConfigError(f"{where}: {text!r} is absurdly large")
    return value


def parse_budget(text: str | None, target: Target) -> dict[str, float]:
    """'hbm=20GiB,dram=48GiB' over the target's tiers; unnamed tiers keep their capacity."""
    budget = {t.name: float(t.capacity) for t in target.tiers}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        name, eq, size = item.partition("=")
        name = name.strip().lower()
        if not eq:
            raise ConfigError(f"--budget: {item!r} is not TIER=SIZE")
        if name not in budget:
            raise ConfigError(f"--budget: target {target.name} has no tier {name!r}; its tiers "
                              f"are {', '.join(budget)}")
        budget[name] = parse_size(size, f"--budget {name}")
    return budget


def flash_bandwidth(tier: Tier, chunk: float) -> float:
    """Achievable read bandwidth for chunks of `chunk` bytes: log-log on the tier's curve."""
    if not tier.chunk_curve:
        return tier.effective_bandwidth()
    xs = np.log([p[0] for p in tier.chunk_curve])
    ys = np.log([p[1] for p in tier.chunk_curve])
    return float(np.exp(np.interp(np.log(max(chunk, 1.0)), xs, ys)))


@dataclass
class Problemset:
    """The placement problem plus what is needed to report a plan in the model's terms."""

    problem: pl.Problem
    spec: ModelSpec
    target: Target
    work: Workload
    overhead_s: float  # per decode step, outside any layer (launches, sampling)
    reserved: float  # main-tier bytes for working buffers, taken off its budget


def _per_layer(ops: list, name: str) -> float:
    op = next((o for o in ops if o.name == name), None)
    return 0.0 if op is None else float(np.asarray(op.time)) / op.count


def build_problem(spec: ModelSpec, target: Target, work: Workload,
                  budget: dict[str, float], overlap: bool = True) -> Problemset:
    """Units per layer (attention weights, FFN or experts, KV) plus embeddings and head."""
    res = simulate(spec, target, work)
    ops = res.decode_ops
    t = res.totals
    main = target.main
    wbytes = float(np.asarray(t["mem_weights"])) / max(spec.total_params(), 1)  # per param
    B = float(work.batch)
    kv_total = float(np.asarray(t["mem_kv"]))
    reserved = float(np.asarray(t["mem_act"]))

    def costs(nbytes: float, prob: float, resident_s: float) -> tuple[dict, dict]:
        exec_s = {main.name: resident_s}
        fetch_s: dict[str, float] = {}
        for tier in target.tiers[1:]:
            link = target.link(tier.name, main.name)
            if tier.name in pl.DISK_NAMES:
                bw = flash_bandwidth(tier, nbytes)
                if link is not None:
                    bw = min(bw, link.bandwidth)
                exec_s[tier.name] = math.inf
            else:
                bw = link.bandwidth if link is not None else tier.effective_bandwidth()
                exec_s[tier.name] = nbytes * prob / tier.effective_bandwidth()
            fetch_s[tier.name] = nbytes * prob / bw
        return exec_s, fetch_s

    units: list[pl.Unit] = []

    def add(name: str, layer: int, kind: str, nbytes: float, resident_s: float,
            prob: float = 1.0) -> None:
        exec_s, fetch_s = costs(nbytes, prob, resident_s)
        units.append(pl.Unit(name, layer, kind, nbytes, exec_s, fetch_s, prob))

    n = spec.layers
    attn_s = _per_layer(ops, "attn_proj") + _per_layer(ops, "norms+residual")
    add("token_embd", 0, "weights", spec.embedding_params() * wbytes, 0.0)
    for i in range(n):
        add(f"blk.{i}.attn", i + 1, "weights",
            (spec.attn_params() + spec.norm_params()) * wbytes, attn_s)
        if spec.is_moe_layer(i):
            frac = 1.0 - (1.0 - spec.top_k / spec.experts) ** B
            exp_s = _per_layer(ops, "experts") / spec.experts
            for e in range(spec.experts):
                add(f"blk.{i}.expert.{e}", i + 1, "expert", spec.expert_params() * wbytes,
                    exp_s, prob=frac)
            shared = spec.router_params() + spec.shared_params()
            add(f"blk.{i}.router+shared", i + 1, "weights", shared * wbytes,
                _per_layer(ops, "router") + _per_layer(ops, "shared_experts"))
        else:
            add(f"blk.{i}.ffn", i + 1, "weights", spec.dense_ffn_params() * wbytes,
                _per_layer(ops, "ffn"))
        add(f"blk.{i}.kv", i + 1, "kv", kv_total / n, _per_layer(ops, "attention"))
    head_params = 0 if spec.tied_embeddings else spec.lm_head_params()
    add("output", n + 1, "weights", head_params * wbytes, _per_layer(ops, "lm_head"))
    budget = dict(budget)
    budget[main.name] = budget[main.name] - reserved
    if budget[main.name] <= 0:
        raise ConfigError(f"--budget: {main.name} has no room once {reserved / 2**30:.2f} GiB of "
                          f"working buffers are reserved; give it more")
    problem = pl.Problem(tuple(units), tuple(t.name for t in target.tiers), budget, main.name,
                         overlap=overlap)
    return Problemset(problem, spec, target, work, float(np.asarray(res.decode_overhead)),
                      reserved)


def plan(ps: Problemset, method: str = "greedy") -> pl.Placement:
    if method == "greedy":
        return pl.plan_greedy(ps.problem)
    if method == "lp":
        return pl.plan_lp(ps.problem).placement
    if method == "exact":
        return pl.plan_exact(ps.problem)
    if method == "accelerate":
        return pl.plan_accelerate(ps.problem)
    raise ConfigError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")


def step_time(ps: Problemset, placement: pl.Placement) -> float:
    return pl.cost(ps.problem, placement).step_s + ps.overhead_s


def plan_record(ps: Problemset, placement: pl.Placement, method: str) -> dict[str, Any]:
    """The `plan` record: placements plus the model, target and workload that produced them."""
    rec = pl.plan_record(ps.problem, placement, method)
    br = pl.cost(ps.problem, placement)
    step = br.step_s + ps.overhead_s
    w = ps.work
    rec.update({
        "v": 1, "kind": "plan", "method": method,
        "model": ps.spec.to_record(), "target": ps.target.to_record(),
        "workload": {"batch": int(w.batch), "ctx": int(w.prompt), "gen": int(w.gen),
                     "weights": str(w.weights), "kv": str(w.kv), "act": str(w.act)},
        "tpot_s": step, "decode_tok_s": float(w.batch) / step,
        "overhead_s": ps.overhead_s, "reserved_bytes": ps.reserved,
        "feasible": br.feasible,
    })
    return rec


def minimum_bytes(ps: Problemset) -> float:
    return sum(u.bytes for u in ps.problem.units) + ps.reserved


def prefill_time(ps: Problemset, placement: pl.Placement) -> float:
    """TTFT under a plan: the main-tier prefill, or streaming the offloaded bytes once per
    micro-batch if that is slower (prefill overlaps transfers with its long GEMMs)."""
    res = simulate(ps.spec, ps.target, ps.work)
    ttft = float(np.asarray(res.totals["ttft_s"]))
    n_ub = max(math.ceil(float(ps.work.batch) * float(ps.work.prompt) / UBATCH), 1)
    streamed = 0.0
    for unit, parts in zip(ps.problem.units, placement.parts, strict=True):
        for part in parts:
            if part.tier != ps.problem.main:
                streamed += unit.fetch_s.get(part.tier, 0.0) / max(unit.prob, 1e-9) * \
                    part.fraction
    return max(ttft, n_ub * streamed)
