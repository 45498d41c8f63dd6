"""`memstack offload-plan`: place weights, KV and experts across memory tiers; size expert
caches from routing traces; plan flash-resident FFN rows."""

from __future__ import annotations

import click

from memstack.cli.common import (
    emit_records,
    format_option,
    gib,
    load_target_noting,
    quiet_option,
    refuse_binary_tty,
    resolve_format,
    workload_options,
)


def _plan_table(rec: dict, baseline: dict | None) -> None:
    w = rec["workload"]
    click.echo(f"plan ({rec['method']}) for {rec['model']['name']} on {rec['target']['name']}: "
               f"batch {w['batch']}, ctx {w['ctx']}, weights {w['weights']}, kv {w['kv']}")
    click.echo("bytes per tier: " + ", ".join(f"{k} {gib(v)}" for k, v in rec["bytes"].items()))
    counts: dict[tuple[str, str, str], int] = {}
    for u in rec["units"]:
        for part in u["parts"]:
            key = (u["kind"], part["tier"], part["mode"])
            counts[key] = counts.get(key, 0) + 1
    for (kind, tier, mode), n in sorted(counts.items()):
        click.echo(f"  {n:5} {kind:8} units on {tier:8} {mode}")
    click.echo(f"time per token {rec['tpot_s'] * 1e3:.2f} ms ({rec['decode_tok_s']:.2f} tok/s)")
    if baseline is not None:
        click.echo(f"accelerate-style baseline: {baseline['tpot_s'] * 1e3:.2f} ms "
                   f"({baseline['tpot_s'] / rec['tpot_s']:.2f}× slower)")


@click.command(name="offload-plan")
@workload_options
@click.option("--budget", metavar="TIER=SIZE,…",
              help="Capacity per tier, e.g. hbm=20GiB,dram=48GiB (default: the tiers' sizes).")
@click.option("--method", type=click.Choice(("greedy", "lp", "exact", "accelerate")),
              default="greedy", show_default=True,
              help="greedy (fast), lp (FlexGen-style LP, scipy), exact (small cases), or "
                   "accelerate (infer_auto_device_map's rule, the baseline).")
@click.option("--no-overlap", is_flag=True, help="Transfers do not overlap compute.")
@click.option("--flash", is_flag=True,
              help="Plan flash-resident FFN rows (LLM in a flash): sparsity, window, bundling.")
@click.option("--active", type=click.FloatRange(0, 1), default=None,
              help="--flash: fraction of FFN neurons that fire per token (default 0.05 for "
                   "ReLU models such as OPT, 0.3 for gated ones).")
@click.option("--routing-trace", type=click.Path(dir_okay=False), metavar="FILE.npy",
              help="Size an MoE expert cache from a routing trace (tokens × layers × top-k).")
@click.option("--experts", type=click.IntRange(min=1), default=None,
              help="Experts per layer in the routing trace.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Experts chosen per token in the routing trace.")
@quiet_option
@format_option(("auto", "msgpack", "jsonl", "table"))
def offload_cmd(model, target, budget, batch, ctx, gen, weights, kv, act, method, no_overlap,
                flash, active, routing_trace, experts, top_k, quiet, format_) -> None:
    """Choose where weights, KV cache and MoE experts live to minimise time per token.

    The plan record pipes into `memstack simulate --plan -`. On stderr, the plan is compared
    with accelerate's infer_auto_device_map rule (greedy in module order, GPU then CPU then
    disk, reserving the largest layer).

    \b
    Examples:
        memstack offload-plan --model mixtral-8x7b --target rtx4090 \\
            --budget hbm=20GiB,dram=48GiB | memstack simulate --plan -
        memstack offload-plan --model opt-6.7b --target m1-max --flash
        memstack offload-plan --routing-trace trace.npy --experts 8 --top-k 2
    """
    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    if routing_trace:
        from memstack.cli.offload_extra import expert_cache_cmd

        expert_cache_cmd(routing_trace, experts, top_k, fmt, model)
        return
    if not model:
        raise click.UsageError("give --model (or --routing-trace)")
    from memstack.core.model.load_spec import load_model

    spec = load_model(model)
    tgt = load_target_noting(target)
    if flash:
        from memstack.cli.offload_extra import flash_cmd

        flash_cmd(spec, tgt, weights or spec.dtype, active, budget, fmt)
        return
    from memstack.core.model import offload
    from memstack.core.model.simulate import Workload

    work = Workload(batch, ctx, gen, weights or spec.dtype, kv, act)
    ps = offload.build_problem(spec, tgt, work, offload.parse_budget(budget, tgt),
                               overlap=not no_overlap)
    placement = offload.plan(ps, method)
    rec = offload.plan_record(ps, placement, method)
    baseline = None
    if method != "accelerate":
        try:
            base = offload.plan(ps, "accelerate")
            baseline = offload.plan_record(ps, base, "accelerate")
        except Exception:  # the baseline may be infeasible where the plan is not
            baseline = None
    if fmt == "table":
        _plan_table(rec, baseline)
        return
    emit_records([rec], fmt)
    if not quiet:
        msg = (f"offload-plan: {method}: {rec['tpot_s'] * 1e3:.2f} ms/token; "
               + ", ".join(f"{k} {gib(v)}" for k, v in rec["bytes"].items()))
        if baseline is not None:
            msg += (f"; accelerate-style baseline {baseline['tpot_s'] * 1e3:.2f} ms "
                    f"({baseline['tpot_s'] / rec['tpot_s']:.2f}×)")
        click.echo(msg, err=True)


def simulate_plan(fp, fmt: str) -> None:
    """`simulate --plan FILE`: price the plan record(s) in FILE."""
    from memstack.core.errors import ConfigError, InputError
    from memstack.core.model import offload
    from memstack.core.model.placement import placement_from_record
    from memstack.core.model.simulate import Workload
    from memstack.core.model.spec import ModelSpec
    from memstack.core.model.target import Target
    from memstack.formats.stream import RecordReader

    name = getattr(fp, "name", "<plan>")
    name = "<stdin>" if name in ("<stdin>", "-") else name
    out = []
    for rec in RecordReader(fp, name):
        if rec.get("kind") != "plan":
            continue
        try:
            spec = ModelSpec.from_record(rec["model"])
            tgt = Target.from_record(rec["target"])
            w = rec["workload"]
            work = Workload(w["batch"], w["ctx"], w["gen"], w["weights"], w["kv"], w["act"])
            budget = {k: float("inf") if v is None else float(v)
                      for k, v in rec["budget"].items()}
            budget[rec["main"]] += float(rec.get("reserved_bytes", 0.0))
            ps = offload.build_problem(spec, tgt, work, budget, overlap=rec.get("overlap", True))
            placement = placement_from_record(rec)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:

            raise InputError(name, f"plan record {len(out) + 1}",
                             f"not a plan from memstack offload-plan ({exc})") from None
        step = offload.step_time(ps, placement)
        out.append({"v": 1, "kind": "sim", "model": spec.name, "target": tgt.name,
                    "plan": rec.get("method"), **{k: w[k] for k in ("batch", "ctx", "gen",
                                                                  "weights", "kv", "act")},
                    "ttft_s": offload.prefill_time(ps, placement), "tpot_s": step,
                    "decode_tok_s": w["batch"] / step, "bytes": rec.get("bytes"),
                    "fits": bool(rec.get("feasible", True))})
    if not out:
        raise InputError(name, "stream", "no plan record (pipe in `memstack offload-plan`)")
    if fmt == "table":
        for r in out:
            click.echo(f"{r['model']} on {r['target']} with the {r['plan']} plan: TTFT "
                       f"{r['ttft_s'] * 1e3:.1f} ms, {r['tpot_s'] * 1e3:.2f} ms/token "
                       f"({r['decode_tok_s']:.2f} tok/s); "
                       + ", ".join(f"{k} {gib(v)}" for k, v in (r["bytes"] or {}).items()))
    else:
        emit_records(out, fmt)
