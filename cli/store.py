"""`memstack store`: statistics, export/import, verification and compaction for cron jobs."""

from __future__ import annotations

import json
import sys

import click

from memstack.cli.common import (
    atomic_output,
    lock_timeout_option,
    open_store,
    quiet_option,
    store_option,
)


@click.group(name="store")
def store_group() -> None:
    """Inspect, back up, restore and check a store.

    \b
    Examples:
        memstack store stats
        memstack store export -o backup.msgpack && memstack store verify
        memstack store import backup.msgpack --store restored
        memstack store compact /backups/mem-$(date +%F)
    """


@store_group.command(name="stats")
@store_option
def stats_cmd(store) -> None:
    """Print counts, sizes and the store's identity as JSON."""
    from memstack.core.admin import stats

    click.echo(json.dumps(stats(open_store(store)), indent=2))


@store_group.command(name="export")
@store_option
@click.option("-o", "--output", default="-", show_default=True, metavar="FILE",
              help="Write the stream here ('-' is stdout); files are replaced atomically.")
@click.option("--format", "format_", type=click.Choice(["msgpack", "jsonl"]), default="msgpack",
              show_default=True, help="Stream format.")
@click.option("--no-vectors", is_flag=True, help="Leave vectors out (import re-embeds).")
def export_cmd(store, output, format_, no_vectors) -> None:
    """Write every memory as a record stream (a backup that `store import` reads)."""
    from memstack.core.admin import export
    from memstack.formats.stream import RecordWriter

    if output == "-" and format_ == "msgpack" and sys.stdout.isatty():
        raise click.UsageError("msgpack is not written to a terminal; use -o FILE or "
                               "--format jsonl")
    st = open_store(store)
    meta = {"embedder": st.meta.get("embedder"), "tokenizer": st.meta.get("tokenizer")}
    import msgpack

    try:
        with atomic_output(output) as fp, RecordWriter(fp, format_, meta=meta) as writer:
            for rec in export(st, with_vectors=not no_vectors):
                writer.write(rec)
    except (UnicodeDecodeError, msgpack.UnpackException) as exc:  # a damaged record
        from memstack.core.errors import StoreError

        raise StoreError(f"{st.path}: a stored record is unreadable ({exc}); run "
                         "`memstack store verify`") from None


@store_group.command(name="import")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False,
                                                                   allow_dash=True))
@store_option
@click.option("--batch-size", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Records per committed transaction.")
@lock_timeout_option
@quiet_option
def import_cmd(inputs, store, batch_size, lock_timeout, quiet) -> None:
    """Load record streams (from `store export` or `ingest -o`) into a store, idempotently."""
    from memstack.cli.common import load_embedder
    from memstack.core.ingest import IngestOptions, IngestStats, ingest_items
    from memstack.core.parse import open_records
    from memstack.core.text import load_tokenizer

    st = open_store(store, write=True, create=True, lock_timeout=lock_timeout)
    stats = IngestStats()
    for name in inputs:
        fp = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115
        label = "<stdin>" if name == "-" else name
        try:
            meta, items = open_records(fp, label)
            spec = ((st.meta.get("embedder") or meta.get("embedder") or {}).get("spec")
                    or "hash")
            tok_name = ((st.meta.get("tokenizer") or meta.get("tokenizer") or {})
                        .get("requested") or "cl100k_base")
            emb, tok = load_embedder(spec), load_tokenizer(tok_name)
            st.check_identity(emb.identity(), tok.identity())
            ingest_items(items, label, embedder=emb, tokenizer=tok, store=st, out=None,
                         opts=IngestOptions(batch_size=batch_size), stats=stats)
        finally:
            if name != "-":
                fp.close()
    if not quiet:
        click.echo(f"import: {stats.summary()} into {st.path}", err=True)


@store_group.command(name="verify")
@store_option
def verify_cmd(store) -> None:
    """Check every record and index structure; exit 1 and list problems if any."""
    from memstack.core.admin import verify

    st = open_store(store)
    problems = verify(st)
    for p in problems:
        click.echo(f"memstack: verify: {p}", err=True)
    if problems:
        raise click.ClickException(f"{st.path}: {len(problems)} problem(s) found")
    click.echo(f"verify: ok ({st.stats.get('n', 0)} memories)", err=True)


@store_group.command(name="compact")
@click.argument("dest", type=click.Path())
@store_option
def compact_cmd(dest, store) -> None:
    """Write a consistent, compacted copy of the store to DEST while others keep using it."""
    from memstack.core.admin import compact

    st = open_store(store)
    size = compact(st, dest)
    click.echo(f"compact: {size} bytes written to {dest}", err=True)
