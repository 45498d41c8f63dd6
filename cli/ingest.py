"""`memstack ingest`: conversations and documents in, memory records out (store and/or stream)."""

from __future__ import annotations

import os
import sys

import click

from memstack.cli.common import (
    atomic_output,
    lock_timeout_option,
    open_store,
    quiet_option,
    store_option,
)

INPUT_FORMATS = ("auto", "text", "markdown", "jsonl", "json", "locomo", "records")


@click.command(name="ingest")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False,
                                                                   allow_dash=True))
@click.option("--ns", default="default", show_default=True,
              help="Namespace the memories belong to (user:alice, project:x …).")
@click.option("--source", default=None, help="Source URI to record instead of the file name.")
@click.option("--format", "format_", type=click.Choice(INPUT_FORMATS), default="auto",
              show_default=True, help="Input format; auto sniffs the content and name.")
@store_option
@click.option("--embedder", default=None,
              help="Embedder spec: hash[:dim=N] (default) or gguf:PATH; must match the store.")
@click.option("--encoding", default=None,
              help="tiktoken encoding for token counts (default cl100k_base, offline fallback).")
@click.option("-o", "--output", default=None, metavar="FILE",
              help="Write the records to FILE ('-' for stdout); the store is then written "
                   "only when --store is given on the command line.")
@click.option("--out-format", type=click.Choice(["msgpack", "jsonl"]), default="msgpack",
              show_default=True, help="Format of the -o stream.")
@click.option("--batch-size", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Records per committed transaction.")
@click.option("--chunk-tokens", type=click.IntRange(min=16), default=256, show_default=True,
              help="Maximum tokens per chunk of a long document or turn.")
@click.option("--overlap", type=click.IntRange(min=0), default=32, show_default=True,
              help="Tokens shared by consecutive chunks.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes preparing big JSONL inputs (0 = one per core, 1 = serial).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable lines or messages and count them.")
@click.option("--max-line-bytes", type=click.IntRange(min=1024), default=16 << 20,
              show_default=True, help="Longest JSONL line accepted.")
@lock_timeout_option
@quiet_option
def ingest_cmd(inputs, ns, source, format_, store, embedder, encoding, output, out_format,
               batch_size, chunk_tokens, overlap, workers, skip_bad, max_line_bytes, lock_timeout,
               quiet):
    """Turn conversations and documents into memories.

    INPUTS are files or '-' for stdin. Formats: plain text, markdown, JSONL chat
    (OpenAI role/content, ShareGPT from/value, speaker/text/time), JSON documents
    including LoCoMo conversations, and memstack record streams.

    \b
    Examples:
        memstack ingest chats/*.jsonl --ns user:alice
        memstack ingest ../shared/data/locomo-sample.json
        cat notes.md | memstack ingest - --ns project:x --format markdown
        memstack ingest a.jsonl -o - | memstack recall --from - "query"
    """
    # ingest runs worker processes beside the writer on few cores: BLAS threads spinning
    # for every small matmul only steal their CPU (measured: +25% turns/s with one thread)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from memstack.cli.common import load_embedder
    from memstack.core.ingest import IngestOptions, ingest
    from memstack.core.text import DEFAULT_ENCODING, load_tokenizer
    from memstack.formats.stream import RecordWriter

    if output == "-" and out_format == "msgpack" and sys.stdout.isatty():
        raise click.UsageError("msgpack is not written to a terminal; add --out-format jsonl "
                               "or redirect the output")
    if inputs.count("-") > 1:
        raise click.UsageError("stdin ('-') can be read only once")
    st = None
    ctx = click.get_current_context()
    named = ctx.get_parameter_source("store") == click.core.ParameterSource.COMMANDLINE
    if output is None or named:  # with -o, only an explicit --store is written too
        st = open_store(store, write=True, create=True, lock_timeout=lock_timeout)
    spec = embedder or ((st.meta.get("embedder") or {}).get("spec") if st else None) or "hash"
    emb = load_embedder(spec)
    enc = encoding or ((st.meta.get("tokenizer") or {}).get("requested") if st else None) \
        or DEFAULT_ENCODING
    tok = load_tokenizer(enc)
    opts = IngestOptions(ns=ns, source=source, fmt=format_, batch_size=batch_size,
                         chunk_tokens=chunk_tokens, overlap=overlap, skip_bad=skip_bad,
                         workers=workers,
                         max_line=max_line_bytes)

    def on_bad(bad) -> None:
        if not quiet:
            click.echo(f"memstack: skipped: {bad.error}", err=True)

    show_progress = sys.stderr.isatty() and not quiet
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if show_progress:
            click.echo(f"\ringest: {done} records", err=True, nl=False)

    with _inputs(inputs) as opened:
        if output is not None:
            with atomic_output(output) as fp:
                meta = {"embedder": emb.identity(), "tokenizer": tok.identity()}
                with RecordWriter(fp, out_format, meta=meta) as writer:
                    stats = ingest(opened, embedder=emb, tokenizer=tok, store=st, out=writer,
                                   opts=opts, on_bad=on_bad, progress=progress)
        else:
            stats = ingest(opened, embedder=emb, tokenizer=tok, store=st, opts=opts,
                           on_bad=on_bad, progress=progress)
    if show_progress:
        click.echo("", err=True)
    if not quiet:
        where = f" into {st.path}" if st else ""
        click.echo(f"ingest: {stats.summary()}{where}", err=True)


class _inputs:
    """Open each input once, binary and buffered; '-' is stdin."""

    def __init__(self, names):
        self.names = names
        self.files = []

    def __enter__(self):
        for name in self.names:
            if name == "-":
                self.files.append(("<stdin>", sys.stdin.buffer))
            else:
                self.files.append((name, open(name, "rb")))  # noqa: SIM115
        return self.files

    def __exit__(self, *exc):
        for name, fp in self.files:
            if name != "<stdin>":
                fp.close()
