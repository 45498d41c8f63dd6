"""`memstack bench`: measure the store and retrieval on real data, as bench records."""

from __future__ import annotations

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
                                 "runs", "questions", "dataset", "batch"))
        rows.setdefault((rec["bench"],) + ctx, {})[rec["metric"]] = rec["value"]
    metrics: list[str] = []
    for cols in rows.values():
        metrics.extend(m for m in cols if m not in metrics)
    head = f"{'bench':8} {'context':14} " + " ".join(f"{m[:14]:>14}" for m in metrics)
    click.echo(head)
    for key, cols in rows.items():
        ctx = ",".join(str(v) for _, v in key[1:]) or "-"
        cells = " ".join(f"{cols[m]:>14.4f}" if m in cols else f"{'':>14}" for m in metrics)
        click.echo(f"{key[0]:8} {ctx[:14]:14} {cells}")


@click.group(name="bench")
def bench_group() -> None:
    """Measure memstack on real data and this machine.

    \b
    Examples:
        memstack bench store
        memstack bench recall --dataset ../shared/data/locomo-sample.json
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
