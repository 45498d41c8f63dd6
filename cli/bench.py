"""`memstack bench`: measure the store, retrieval and quantizers on this machine, as records."""

from __future__ import annotations

import itertools
import sys

import click

from memstack.cli.common import format_option, refuse_binary_tty, resolve_format


def _emit(records, fmt: str) -> None:
    from memstack.formats.stream import RecordWriter

    if fmt in ("msgpack", "jsonl"):
        with RecordWriter(sys.stdout.buffer, fmt) as writer:
            for rec in records:
                writer.write(rec)
                writer.flush()
        return
    rows: dict[tuple, dict] = {}
    for rec in records:  # one row per bench and context (e.g. category), metrics as columns
        ctx = tuple((k, v) for k, v in rec.items()
                    if k not in ("v", "kind", "bench", "metric", "value", "n", "queries",
                                 "runs", "questions", "dataset", "batch", "size", "threads",
                                 "repeats", "rows"))
        rows.setdefault((rec["bench"],) + ctx, {})[rec["metric"]] = rec["value"]
    metrics: list[str] = []
    for cols in rows.values():
        metrics.extend(m for m in cols if m not in metrics)
    ctxs = {key: ",".join(str(v) for _, v in key[1:]) or "-" for key in rows}
    cw = max([14, *map(len, ctxs.values())])
    widths = {m: max(14, len(m)) for m in metrics}
    click.echo(f"{'bench':8} {'context':{cw}} "
               + " ".join(f"{m:>{widths[m]}}" for m in metrics))
    for key, cols in rows.items():
        cells = " ".join(f"{_cell(cols[m]):>{widths[m]}}" if m in cols else " " * widths[m]
                         for m in metrics)
        click.echo(f"{key[0]:8} {ctxs[key]:{cw}} {cells}")


def _cell(v: float) -> str:
    """Four decimals, or four significant digits for small values (RMSE of a weight is ~1e-4)."""
    return f"{v:.4g}" if v and abs(v) < 0.01 else f"{v:.4f}"


@click.group(name="bench")
def bench_group() -> None:
    """Measure memstack on real data and this machine.

    \b
    Examples:
        memstack bench store
        memstack bench recall --dataset ../shared/data/locomo-sample.json
        memstack bench quantize --size 2048 --schemes q4_0,q8_0,mx:fp4,split:q4_0
    """


@bench_group.command(name="store")
@click.option("-n", "n", type=click.IntRange(min=100), default=20000, show_default=True,
              help="Records to write.")
@click.option("--batch-size", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Records per transaction.")
@format_option(("auto", "msgpack", "jsonl", "table"))
def bench_store_cmd(n, batch_size, format_) -> None:
    """put/get/scan throughput of the LMDB store in a temporary directory."""
    from memstack.core.bench import bench_store

    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    _emit(bench_store(n=n, batch=batch_size), fmt)


@bench_group.command(name="recall")
@click.option("--dataset", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A LoCoMo-format JSON file (list of conversations with qa).")
@click.option("--embedder", default="hash", show_default=True, help="Embedder spec.")
@click.option("--cold-runs", type=click.IntRange(min=0), default=5, show_default=True,
              help="Fresh `memstack recall` processes timed per conversation.")
@format_option(("auto", "msgpack", "jsonl", "table"))
def bench_recall_cmd(dataset, embedder, cold_runs, format_) -> None:
    """recall@k, hit@k and MRR per category, latency and cold start on LoCoMo files."""
    from memstack.core.bench import bench_recall

    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    _emit(bench_recall(dataset, embedder_spec=embedder, cold_runs=cold_runs), fmt)


@bench_group.command(name="quantize")
@click.option("--size", type=click.IntRange(min=128), default=4096, show_default=True,
              help="Rows and columns of the two test matrices (a multiple of 128).")
@click.option("--schemes", default=None, metavar="LIST",
              help="Comma list of schemes (default: q8_0 q4_0 q4_1 q5_0 q5_1 mx:fp4 nf4 nf4:dq "
                   "mx:fp6 mx:fp8 mx:int8 bfp:4 bfp:4:outlier bfp:8:outlier mixed:4 mixed:3 "
                   "split:q4_0 split:q5_0).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs per scheme and matrix; the median is reported.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="memstack's worker threads; 0 uses every core (GGML types are also timed "
                   "with 1).")
@format_option(("auto", "msgpack", "jsonl", "table"))
def bench_quantize_cmd(size, schemes, repeats, threads, format_) -> None:
    """Bits per weight, error and MB/s of each scheme on an N(0, 0.02²) matrix and its twin with
    16 outlier columns ×25; GGML types beside gguf.quants.quantize (MB/s, ratio, same bytes).

    \b
    Metrics: bpw snr_db rmse cosine mb_per_s; GGML types also
    mb_per_s_1t, and with the gguf package gguf_mb_per_s ratio_vs_gguf
    identical_bytes (1 = the same bytes as gguf). gguf's MXFP4 is timed
    on its first 1024 rows (it is slow); bytes compare whole matrices.
    """
    from memstack.core.bench_quant import DEFAULT_SCHEMES, bench_quantize, gguf_available

    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    specs = [s.strip() for s in schemes.split(",") if s.strip()] if schemes else DEFAULT_SCHEMES
    records = bench_quantize(size=size, schemes=specs, repeats=repeats, threads=threads)
    first = next(records, None)  # bad schemes or size fail here, before any output
    if not gguf_available():
        click.echo("memstack: the gguf package is not installed: no reference columns "
                   "(pip install gguf)", err=True)
    if first is not None:
        _emit(itertools.chain([first], records), fmt)

