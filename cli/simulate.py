"""`memstack simulate`: latency, throughput and memory of a model on a hardware target."""

from __future__ import annotations

import sys

import click

from memstack.cli.common import (
    emit_records,
    format_option,
    gib,
    load_target_noting,
    refuse_binary_tty,
    resolve_format,
    workload_options,
)


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _sim_table(rec: dict, phases: list[str]) -> None:
    click.echo(f"model {rec['model']} on {rec['target']}: batch {rec['batch']}, ctx "
               f"{rec['ctx']}, gen {rec['gen']}, weights {rec['weights']}, kv {rec['kv']}, "
               f"act {rec['act']}")
    click.echo(f"{'phase':8} {'op':16} {'×':>4} {'GFLOP':>10} {'MB':>10} {'compute':>10} "
               f"{'memory':>10} {'dequant':>10} {'time':>10} bound")
    for op in rec.get("ops", []):
        if op["phase"] not in phases:
            continue
        click.echo(f"{op['phase']:8} {op['op']:16} {op['count']:>4} {op['flops'] / 1e9:>10.3f} "
                   f"{op['bytes'] / 1e6:>10.2f} {op['t_compute'] * 1e3:>10.4f} "
                   f"{op['t_memory'] * 1e3:>10.4f} {op['t_dequant'] * 1e3:>10.4f} "
                   f"{op['time_s'] * 1e3:>10.4f} {op['bound']}")
    ov = rec.get("overhead", {})
    click.echo("(times in ms; overheads per step: prefill "
               f"{ov.get('prefill_s', 0) * 1e3:.3f} ms, decode {ov.get('decode_s', 0) * 1e3:.3f} "
               "ms of kernel launches and per-token work)")
    click.echo(f"TTFT {_ms(rec['ttft_s'])} ({rec['prefill_tok_s']:,.0f} prompt tok/s) · "
               f"TPOT {_ms(rec['tpot_s'])} ({rec['decode_tok_s']:,.1f} tok/s over the batch, "
               f"decode {rec['decode_bound']}-bound) · end to end {_ms(rec['e2e_s'])}")
    fits = "fits" if rec["fits"] else "DOES NOT FIT"
    click.echo(f"memory: weights {gib(rec['mem_weights'])} + KV {gib(rec['mem_kv'])} + "
               f"buffers {gib(rec['mem_act'])} = {gib(rec['mem_total'])} of "
               f"{gib(rec['capacity'])}: {fits}")


def _sweep_table(records) -> None:
    cols = ("model", "target", "batch", "ctx", "gen", "weights", "kv", "ttft_s", "tpot_s",
            "decode_tok_s", "mem_total", "fits")
    click.echo(" ".join(f"{c:>12}" for c in cols))
    for rec in records:
        cells = []
        for c in cols:
            v = rec[c]
            if c == "mem_total":
                cells.append(f"{v / 2**30:>9.2f}GiB")
            elif isinstance(v, float):
                cells.append(f"{v:>12.4g}")
            else:
                cells.append(f"{str(v)[:12]:>12}")
        click.echo(" ".join(cells))


def _strategy_table(records: list[dict]) -> None:
    click.echo(f"{'strategy':14} {'prompt':>9} {'cached':>9} {'TTFT':>11} {'decode':>11} "
               f"{'total':>11} {'KV':>11} {'fits':>5} {'speedup':>8}")
    for r in records:
        sp = r.get("speedup_vs_full")
        click.echo(f"{r['strategy']:14} {r['prompt_tokens']:>9,} {r['cached_tokens']:>9,} "
                   f"{_ms(r['ttft_s']):>11} {_ms(r['decode_s']):>11} {_ms(r['total_s']):>11} "
                   f"{gib(r['kv_bytes']):>11} {str(r['fits']):>5} "
                   f"{(f'{sp:.1f}×' if sp else '-'):>8}")


@click.command(name="simulate")
@workload_options
@click.option("--phase", default="prefill,decode", show_default=True,
              help="Phases whose ops the table shows.")
@click.option("--sweep", metavar="GRID",
              help="Grid 'batch=1,8;ctx=2k,8k;weights=bf16,q4_0' (axes: model target batch ctx "
                   "gen prefix weights kv act): one sim record per point.")
@click.option("--plan", "plan", type=click.File("rb"), metavar="FILE",
              help="Price a placement from `memstack offload-plan` (a plan record; - for stdin).")
@click.option("--store", "store", metavar="PATH",
              help="Price memory strategies with this store's memory count and token sizes.")
@click.option("--strategies", default=None, metavar="LIST",
              help="full-context,recall:k=10,kv-cache (needs --store or --memories).")
@click.option("--memories", type=click.IntRange(min=1), default=None,
              help="Memory count for --strategies without a store.")
@click.option("--memory-tokens", type=click.FloatRange(min=1), default=40.0, show_default=True,
              help="Mean tokens per memory for --memories.")
@click.option("--query-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Tokens of the query each strategy answers.")
@click.option("--recall-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Retrieval latency added to recall strategies (see BENCHMARKS.md).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also draw a roofline (single run) or the sweep as a PNG (needs matplotlib: "
                   "pip install 'memstack[plot]').")
@format_option(("auto", "msgpack", "jsonl", "table"))
def simulate_cmd(model, target, batch, ctx, gen, weights, kv, act, phase, sweep, plan, store,
                 strategies, memories, memory_tokens, query_tokens, recall_ms, plot,
                 format_) -> None:
    """Predict prefill and decode time, tokens/s and memory of MODEL on TARGET.

    Each op's time is the largest of compute, memory and dequantization time, plus the kernel
    launches and per-token costs runtimes pay; see README.md (Simulate).

    \b
    Examples:
        memstack simulate --model qwen2.5-7b --target l4 --ctx 2048 --weights bf16
        memstack simulate --model llama-3-8b --target h100-sxm --weights q4_0 --kv fp8
        memstack simulate --model mixtral-8x7b --target rtx4090 \\
            --sweep 'batch=1,8,64;ctx=2k,8k,32k;weights=bf16,q8_0,q4_0' --format jsonl
        memstack simulate --store mem.lmdb --model llama-3-8b --target l4 \\
            --strategies full-context,recall:k=10,kv-cache
    """
    from memstack.core.model.load_spec import load_model
    from memstack.core.model.simulate import Workload, sim_record, simulate

    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    phases = [p.strip() for p in phase.split(",") if p.strip()]
    bad = [p for p in phases if p not in ("prefill", "decode")]
    if bad or not phases:
        raise click.BadParameter(f"{phase!r}: phases are prefill and decode", param_hint="--phase")
    if plan is not None:
        from memstack.cli.offload import simulate_plan

        simulate_plan(plan, fmt)
        return
    if sweep:
        _run_sweep(sweep, model, target, batch, ctx, gen, weights, kv, act, fmt, plot)
        return
    if not model:
        raise click.UsageError("give --model (a preset, config.json or .gguf), or --plan")
    spec = load_model(model)
    tgt = load_target_noting(target)
    w = weights or spec.dtype
    if strategies or store or memories:
        _run_strategies(spec, tgt, store, strategies, memories, memory_tokens, query_tokens,
                        gen, w, kv, act, recall_ms, fmt)
        return
    res = simulate(spec, tgt, Workload(batch, ctx, gen, w, kv, act))
    rec = sim_record(res, ops=True)
    if plot:
        from memstack.core.model.plot import roofline_plot

        roofline_plot(res, plot)
    if fmt == "table":
        _sim_table(rec, phases)
    else:
        rec["ops"] = [op for op in rec["ops"] if op["phase"] in phases]
        emit_records([rec], fmt)


def _run_sweep(grid, model, target, batch, ctx, gen, weights, kv, act, fmt, plot) -> None:
    import itertools

    from memstack.core.model.load_spec import load_model
    from memstack.core.model.sweep import parse_grid, run_sweep_chunks

    axes = parse_grid(grid)
    if "model" not in axes and not model:
        raise click.UsageError("give --model or a model= axis in --sweep")
    base = {"model": model, "target": target, "batch": batch, "ctx": ctx, "gen": gen,
            "weights": weights, "kv": kv, "act": act}
    specs: dict = {}

    def model_of(ref: str):
        if ref not in specs:
            specs[ref] = load_model(ref)
        return specs[ref]

    if base["weights"] is None and "weights" not in axes:
        base["weights"] = model_of(axes.get("model", [model])[0]).dtype
    chunks = run_sweep_chunks(axes, base, model_of, load_target_noting)
    first = next(chunks, [])  # bad names and formats fail here, before any output
    chunks = itertools.chain([first], chunks)
    if plot:
        from memstack.core.model.plot import sweep_plot

        chunks = [[r for c in chunks for r in c]]
        sweep_plot(chunks[0], axes, plot)
    if fmt == "table":
        _sweep_table(r for c in chunks for r in c)
        return
    from memstack.formats.stream import RecordWriter

    with RecordWriter(sys.stdout.buffer, fmt) as writer:
        for block in chunks:
            writer.write_many(block)


def _run_strategies(spec, tgt, store, strategies, memories, memory_tokens, query_tokens, gen,
                    weights, kv, act, recall_ms, fmt) -> None:
    from memstack.core.model.strategies import (
        MemoryStats,
        parse_strategies,
        price,
        store_stats,
    )

    chosen = parse_strategies(strategies or "full-context,recall:k=10,kv-cache")
    if store and memories:
        raise click.UsageError("give --store or --memories, not both")
    if store:
        stats = store_stats(store)
    elif memories:
        stats = MemoryStats(memories, memory_tokens)
    else:
        raise click.UsageError("--strategies needs --store PATH or --memories N")
    recs = price(spec, tgt, stats, chosen, query_tokens=query_tokens, answer_tokens=gen,
                 weights=weights, kv=kv, act=act, recall_s=recall_ms / 1e3)
    if fmt == "table":
        click.echo(f"{spec.name} on {tgt.name}: {stats.memories:,} memories × "
                   f"{stats.memory_tokens:.1f} tokens ({stats.source}), query {query_tokens} "
                   f"tokens, answer {gen} tokens")
        _strategy_table(recs)
    else:
        emit_records(recs, fmt)
