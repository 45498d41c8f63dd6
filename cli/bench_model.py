"""`memstack bench hw` and `memstack bench decode`: this machine as a target, real decode speed.

Both print records (msgpack/jsonl in a pipe, a table on a terminal); added to the `bench` group.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from memstack.cli.common import format_option, refuse_binary_tty, resolve_format

if TYPE_CHECKING:
    from memstack.core.model.target import Target

THIS_MACHINE = "this-machine"


def _emit(rec: dict[str, Any], fmt: str, table) -> None:
    from memstack.formats.stream import RecordWriter

    if fmt in ("msgpack", "jsonl"):
        with RecordWriter(sys.stdout.buffer, fmt) as writer:
            writer.write(rec)
        return
    table(rec)


# ---- hw --------------------------------------------------------------------------------------

def _hw_table(rec: dict[str, Any]) -> None:
    from memstack.core.model.hwbench import MIXES

    g = 1e9
    device = rec.get("device", rec.get("kind"))
    click.echo(f"target     {rec['name']} ({device}, {rec['threads']} threads)")
    click.echo(f"compute    fp32 {rec['compute']['fp32'] / g:.0f} GFLOP/s (fp16/bf16 widened)")
    for t in rec["tiers"]:
        line = (f"{t['name']:10} {t['bandwidth'] / g:.2f} GB/s, {t['capacity'] / g:.1f} GB")
        if t["chunk_curve"]:
            pts = ", ".join(f"{c / 1024:.0f}K {r / 1e6:.0f}" for c, r in t["chunk_curve"])
            line += f"; random reads MB/s: {pts}"
        click.echo(line)
    rates = ", ".join(f"{k} {v['gemv_rate'] / g:.1f}" for k, v in rec["formats"].items()
                      if k not in MIXES)
    click.echo(f"gemv rate  {rates} G weights/s")
    click.echo(f"overheads  {rec['token_overhead'] * 1e3:.2f} ms/token, "
               f"{rec['launch_overhead'] * 1e6:.2f} µs × {rec['kernels_per_layer']} "
               "nodes/layer")
    for s in rec["sources"]:
        click.echo(f"source     {s}")


@click.command(name="hw", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Smaller arrays and fewer repeats (~2 s, not ~15 s).")
@click.option("--save", is_flag=True,
              help=f"Also store it as the target {THIS_MACHINE!r}, which `--target "
                   f"{THIS_MACHINE}` then reads instead of measuring again.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads to measure with (default: every core this process may use).")
@format_option(("auto", "msgpack", "jsonl", "table"))
def hw_cmd(quick, save, threads, format_) -> None:
    """Measure memory bandwidth, GEMM FLOP/s and disk random reads into a `target` record.

    \b
    Examples:
        memstack bench hw --quick
        memstack bench hw --save
    """
    from memstack.core.model.hwbench import measure

    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    target = measure(quick=quick, threads=threads)
    if save:
        from memstack.core.model.targets import save_target

        path = save_target(target, THIS_MACHINE)
        click.echo(f"memstack: saved target {THIS_MACHINE} to {path}", err=True)
    _emit(target.to_record(), fmt, _hw_table)


# ---- decode ----------------------------------------------------------------------------------

def _prediction(model_path: str, target: Target, rec: dict[str, Any]) -> dict[str, float]:
    """What `simulate` predicts for the measured run (same prompt, gen and weight format)."""
    from memstack.core.model.load_spec import from_gguf
    from memstack.core.model.simulate import Workload, simulate

    work = Workload(batch=1, prompt=rec["prompt_tokens"], gen=rec["gen_tokens"],
                    weights=rec["file_type"] or "f16")
    res = simulate(from_gguf(model_path), target, work)
    tpot = float(res.totals["tpot_s"])
    return {"predicted_ms_per_token": 1e3 * tpot,
            "predicted_prompt_tok_s": float(res.totals["prefill_tok_s"]),
            "predicted_over_measured": 1e3 * tpot / rec["decode_ms_per_token"]}


def _target_now(name: str, bandwidth: float) -> Target:
    """The named target; this machine's with the bandwidth measured just now (it drifts)."""
    import dataclasses

    from memstack.core.model.targets import load_target

    target = load_target(name)
    if name != THIS_MACHINE:
        return target
    main = dataclasses.replace(target.main, bandwidth=bandwidth, efficiency=1.0)
    return dataclasses.replace(target, tiers=(main, *target.tiers[1:]))


def _decode_table(rec: dict[str, Any]) -> None:
    click.echo(f"model          {rec['model']} ({rec['file_type']}, {rec['params'] / 1e6:.1f}M "
               f"params, {rec['file_bytes'] / 1e6:.1f} MB)")
    click.echo(f"reads/token    {rec['weight_bytes_per_token'] / 1e6:.1f} MB weights + "
               f"{rec['kv_bytes_per_token'] / 1e6:.2f} MB KV; DRAM now "
               f"{rec['dram_bandwidth'] / 1e9:.1f} GB/s")
    runs = ", ".join(f"{x:.2f}" for x in rec["decode_runs_ms_per_token"])
    click.echo(f"decode         {rec['decode_ms_per_token']:.2f} ms/token (median; runs {runs}; "
               f"{rec['contended_runs']} contended)")
    click.echo(f"prompt         {rec['prompt_tok_s']:.0f} tokens/s ({rec['prompt_tokens']} "
               f"tokens, {rec['threads']} threads)")
    if "predicted_ms_per_token" in rec:
        click.echo(f"predicted      {rec['predicted_ms_per_token']:.2f} ms/token, "
                   f"{rec['predicted_prompt_tok_s']:.0f} prompt tokens/s on {rec['target']} "
                   f"({rec['predicted_over_measured']:.2f}× measured)")


@click.command(name="decode", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", required=True, metavar="PATH", help="A llama GGUF file.")
@click.option("--prompt", type=click.IntRange(min=1, max=4096), default=64, show_default=True,
              help="Prompt tokens evaluated before decoding.")
@click.option("--gen", type=click.IntRange(min=1, max=4096), default=32, show_default=True,
              help="Tokens decoded per run (always exactly this many: no EOS stop).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs; the median is reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ggml threads (default: every core this process may use).")
@click.option("--target", default=THIS_MACHINE, show_default=True, metavar="NAME",
              help="Print what `memstack simulate` predicts on this target beside the "
                   "measurement (this-machine uses the bandwidth measured just before); "
                   "'none' to skip.")
@format_option(("auto", "msgpack", "jsonl", "table"))
def decode_cmd(model, prompt, gen, repeats, threads, target, format_) -> None:
    """Time prompt processing and token-by-token decode of a GGUF model with ctransformers.

    Runs during which other work took this process's cores are reported as contended and left
    out of the medians (ggml's spinning threads slow down many-fold when they share a core).

    \b
    Examples:
        memstack bench decode --model tiny.gguf --gen 16 --repeats 3
        memstack bench decode --model m.gguf --threads 2 --target this-machine
    """
    from memstack.core.model.bench_decode import bench_decode
    from memstack.core.model.hwbench import measure_bandwidth

    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    bandwidth = measure_bandwidth(quick=True, threads=threads)
    rec = bench_decode(model, prompt_tokens=prompt, gen_tokens=gen, repeats=repeats,
                       threads=threads)
    rec["dram_bandwidth"] = bandwidth
    if target and target != "none":
        rec["target"] = target
        rec.update(_prediction(rec["model"], _target_now(target, bandwidth), rec))
    _emit(rec, fmt, _decode_table)
