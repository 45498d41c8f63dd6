"""The two other jobs of `offload-plan`: expert-cache sizing from a routing trace, and the
"LLM in a flash" plan for FFN rows kept on flash."""

from __future__ import annotations

import click

from memstack.cli.common import emit_records
from memstack.core.errors import ConfigError


def expert_cache_cmd(path: str, experts: int | None, top_k: int | None, fmt: str,
                     model: str | None) -> None:
    """Hit rate of LRU, LFU and Belady per cache size, segment hit rates, the knee."""
    from memstack.core.model import expert_cache

    if model and (experts is None or top_k is None):
        from memstack.core.model.load_spec import load_model

        spec = load_model(model)
        if not spec.moe:
            raise ConfigError(f"model {spec.name} has no experts; give --experts and --top-k")
        experts = experts or spec.experts
        top_k = top_k or spec.top_k
    if experts is None or top_k is None:
        raise click.UsageError("--routing-trace needs --experts and --top-k (or an MoE --model)")
    trace = expert_cache.load_trace(path, experts, top_k)
    rec = expert_cache.expert_cache_record(trace, experts)
    rec["trace"] = path
    if fmt != "table":
        emit_records([rec], fmt)
        return
    pols = list(rec["policies"])
    click.echo(f"{rec['tokens']:,} tokens × {rec['layers']} layers, {experts} experts, "
               f"top-{top_k} ({path})")
    click.echo(f"{'cached':>6} " + " ".join(f"{p:>8}" for p in pols))
    for i, size in enumerate(rec["sizes"]):
        click.echo(f"{size:>6} " + " ".join(f"{rec['policies'][p]['hit_rate'][i]:>8.3f}"
                                            for p in pols))
    click.echo(f"knee (recommended cache per layer): {rec['recommended_size']:g} experts; "
               "Belady is the offline optimum no online policy beats")


def flash_cmd(spec, target, weights: str, active: float | None, budget: str | None,
              fmt: str) -> None:
    """Window size and bundling for FFN rows on flash, under the DRAM the rest leaves free."""
    import numpy as np

    from memstack.core.model import flash, offload
    from memstack.core.model.placement import DISK_NAMES
    from memstack.core.model.precision import weight_bits
    from memstack.core.model.simulate import Workload, simulate

    tier = next((t for t in target.tiers if t.name in DISK_NAMES), None)
    if tier is None:
        raise ConfigError(f"target {target.name} has no flash tier; its tiers are "
                          + ", ".join(t.name for t in target.tiers))
    host = next((t for t in target.tiers if t.name in ("dram", "unified")), target.main)
    sizes = offload.parse_budget(budget, target)
    bpw = weight_bits(weights) / 8.0
    ffn_params = spec.layers * spec.dense_ffn_params()
    other = (spec.total_params() - ffn_params) * bpw
    dram = sizes[host.name] - other
    if dram <= 0:
        raise ConfigError(f"--budget: {host.name} {sizes[host.name] / 2**30:.2f} GiB does not "
                          f"hold the non-FFN weights ({other / 2**30:.2f} GiB)")
    if active is None:
        active = 0.3 if spec.gated_ffn else 0.05  # gated FFNs are far less sparse than ReLU
    curve = tier.chunk_curve or ((1 << 20, tier.effective_bandwidth()),)
    common = dict(hidden=spec.hidden, ffn=spec.ffn, gated=spec.gated_ffn, bytes_per_weight=bpw,
                  chunk_curve=curve, active=active, layers=spec.layers)
    rows = []
    for bundling in (False, True):
        try:
            sweep = flash.flash_window_sweep(dram_budget=dram, bundling=bundling, **common)
        except ConfigError:
            continue
        best = next(r for r in sweep["rows"] if r["window"] == sweep["recommended"])
        rows.append(best)
    if not rows:
        need = flash.flash_ffn_cost(window=0, bundling=True, **common)["dram_bytes"]
        raise ConfigError(f"--budget: no window fits: the FFN rows of one token need "
                          f"{need / 2**30:.3f} GiB of {host.name} beside "
                          f"{other / 2**30:.2f} GiB of other weights")
    res = simulate(spec, target, Workload(1, 128, 64, weights))
    ffn_op = next(op for op in res.decode_ops if op.name == "ffn")
    rest = float(np.asarray(res.totals["tpot_s"])) - float(np.asarray(ffn_op.time))
    naive = ffn_params * bpw / flash.bandwidth_at(curve, 1 << 30)
    out = []
    for r in rows:
        out.append({"v": 1, "kind": "flash-plan", "model": spec.name, "target": target.name,
                    "weights": weights, "flash_tier": tier.name, "dram_tier": host.name,
                    "dram_for_ffn": dram, **r,
                    "tpot_s": rest + r["io_s"], "naive_tpot_s": rest + naive,
                    "speedup_vs_naive": (rest + naive) / (rest + r["io_s"])})
    if fmt != "table":
        emit_records(out, fmt)
        return
    click.echo(f"{spec.name} FFN rows on {target.name}'s {tier.name}, {active:.0%} of neurons "
               f"active per token, {dram / 2**30:.2f} GiB of {host.name} left for the window")
    for r in out:
        click.echo(f"  bundling {'on ' if r['bundling'] else 'off'}: window {r['window']:2} "
                   f"tokens, {r['flash_bytes'] / 1e6:8.1f} MB/token from flash in "
                   f"{r['reads']:,.0f} reads of {r['chunk_bytes'] / 1024:.1f} KiB at "
                   f"{r['bandwidth'] / 1e9:.2f} GB/s, window {r['dram_bytes'] / 2**30:.2f} GiB: "
                   f"{r['tpot_s'] * 1e3:.1f} ms/token ({r['speedup_vs_naive']:.1f}× faster than "
                   f"reading every FFN row)")
