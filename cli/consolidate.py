"""`memstack consolidate` and `memstack history`: the batch job that tidies a store, and the
audit trail it leaves."""

from __future__ import annotations

import sys

import click

from memstack.cli.common import (
    format_option,
    lock_timeout_option,
    open_store,
    parse_when,
    quiet_option,
    refuse_binary_tty,
    resolve_format,
    store_option,
)

STEP_NAMES = ("guard", "dedup", "supersede", "links", "summaries", "clusters", "decay")


def _steps(value: str | None, skip: tuple[str, ...]) -> tuple[str, ...]:
    steps = STEP_NAMES if not value else tuple(s.strip() for s in value.split(",") if s.strip())
    bad = [s for s in (*steps, *skip) if s not in STEP_NAMES]
    if bad:
        raise click.BadParameter(f"unknown step {bad[0]!r} (steps: {', '.join(STEP_NAMES)})",
                                 param_hint="--steps/--skip")
    return tuple(s for s in steps if s not in skip)


@click.command(name="consolidate")
@click.argument("input_", metavar="[INPUT]", required=False, default=None)
@store_option
@click.option("-o", "--output", default=None, metavar="FILE",
              help="With INPUT: write the consolidated records here ('-' is stdout).")
@click.option("--ns", multiple=True, help="Only these namespaces (repeatable).")
@click.option("--since", default=None,
              help="Only memories ingested at or after this time (ISO date, epoch, or an age "
                   "like 1d).")
@click.option("--full", is_flag=True,
              help="Look at every memory again, not only those added since the last run.")
@click.option("--dry-run", is_flag=True,
              help="Write nothing; print the decisions a real run would commit.")
@click.option("--steps", default=None, metavar="LIST",
              help=f"Comma-separated steps to run (default all: {','.join(STEP_NAMES)}).")
@click.option("--skip", multiple=True, type=click.Choice(STEP_NAMES),
              help="Leave out a step (repeatable).")
@click.option("--forget", "forget_below", type=click.FloatRange(0.0, 1.0), default=None,
              metavar="BELOW", help="Archive (never delete) memories whose decayed importance "
                                    "is below this.")
@click.option("--llm", default=None, metavar="SPEC",
              help="A local model for the ambiguous cases: gguf:PATH (needs the [llm] extra).")
@click.option("--llm-facts", is_flag=True,
              help="With --llm: also extract facts from turns the rules find none in (a call "
                   "per such turn).")
@click.option("--max-llm-calls", type=click.IntRange(min=0), default=200, show_default=True,
              help="LLM call budget for this run.")
@click.option("--max-llm-tokens", type=click.IntRange(min=0), default=20000,
              show_default=True, help="LLM token budget (prompt and output) for this run.")
@click.option("--chunk", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Memories per committed transaction.")
@lock_timeout_option
@quiet_option
@format_option(("auto", "msgpack", "jsonl", "table"))
def consolidate_cmd(input_, store, output, ns, since, full, dry_run, steps, skip, forget_below,
                    llm, llm_facts, max_llm_calls, max_llm_tokens, chunk, lock_timeout, quiet,
                    format_):
    """Deduplicate, supersede, link, summarise and tier memories; idempotent.

    Works on the store, or with INPUT ('-' or a record stream file) on those records alone,
    writing the consolidated stream to -o. Every change is a decision record: a pipe or
    --format jsonl shows them, `memstack history ID` explains one memory.

    \b
    Examples:
        memstack consolidate
        memstack consolidate --since 1d --ns user:alice
        memstack consolidate --dry-run --format jsonl | jq .
        memstack ingest new.jsonl -o - | memstack consolidate - -o - | memstack recall --from - "q"
        memstack consolidate --llm gguf:model.gguf --max-llm-calls 200
        memstack consolidate --forget 0.05
    """
    from memstack.core.consolidate.run import ConsolidateOptions

    fmt = resolve_format(format_)
    if input_ is not None and output is None:
        raise click.UsageError("with INPUT give -o FILE (or -o - for stdout)")
    if output is not None and input_ is None:
        raise click.UsageError("-o needs INPUT (the store is consolidated in place)")
    if output is None:
        refuse_binary_tty(fmt)
    opts = ConsolidateOptions(ns=list(ns) or None, since=parse_when(since, "--since"),
                              full=full, dry_run=dry_run, steps=_steps(steps, skip),
                              forget_below=forget_below, max_llm_calls=max_llm_calls,
                              llm_facts=llm_facts,
                              chunk=chunk)
    if input_ is not None:
        _pipe(input_, output, opts, llm, max_llm_tokens, fmt, quiet)
        return
    from memstack.cli.common import store_embedder
    from memstack.core.consolidate.run import consolidate, run_lock

    st = open_store(store, write=not dry_run, lock_timeout=lock_timeout)
    if not dry_run:  # commits take the writer lock one transaction at a time
        st.close()
        st = open_store(store, write=True, lock_timeout=lock_timeout, lazy=True)
    emb = store_embedder(st, None)
    opts.llm = _load_llm(llm, st, max_llm_calls, max_llm_tokens, dry_run)
    with run_lock(st.path, lock_timeout, shared=dry_run):
        report = consolidate(st, emb, opts)
    _emit(report, fmt, quiet, "consolidate" + (" --dry-run" if dry_run else ""))


def _load_llm(spec, st, max_calls, max_tokens, dry_run):
    if not spec:
        return None
    from memstack.core.consolidate.llm import load_llm
    from memstack.core.consolidate.run import LmdbCache

    cache = {} if dry_run or st is None else LmdbCache(st)
    return load_llm(spec, max_calls=max_calls, max_tokens=max_tokens, cache=cache)


def _pipe(input_, output, opts, llm, max_tokens, fmt, quiet) -> None:
    """Consolidate a record stream in a private store and write every record back out."""
    from memstack.cli.common import atomic_output, load_embedder
    from memstack.core.admin import export
    from memstack.core.consolidate.run import consolidate
    from memstack.core.recall import stream_store
    from memstack.formats.stream import RecordWriter

    fp = sys.stdin.buffer if input_ == "-" else open(input_, "rb")  # noqa: SIM115
    name = "<stdin>" if input_ == "-" else input_
    out_fmt = fmt if fmt in ("msgpack", "jsonl") else "msgpack"
    try:
        with stream_store(fp, name, load_embedder) as (st, emb):
            opts.llm = _load_llm(llm, None, opts.max_llm_calls, max_tokens, True)
            report = consolidate(st, emb, opts)
            meta = {"embedder": st.meta.get("embedder"), "tokenizer": st.meta.get("tokenizer")}
            with atomic_output(output) as out, RecordWriter(out, out_fmt, meta=meta) as writer:
                if not opts.dry_run:
                    for rec in export(st):
                        writer.write(rec)
                for dec in report.decisions:
                    writer.write(dec)
    finally:
        if input_ != "-":
            fp.close()
    if not quiet:
        click.echo(f"consolidate: {report.summary()}", err=True)


def _emit(report, fmt: str, quiet: bool, label: str) -> None:
    if fmt in ("msgpack", "jsonl"):
        from memstack.formats.stream import RecordWriter

        with RecordWriter(sys.stdout.buffer, fmt) as writer:
            for dec in report.decisions:
                writer.write(dec)
    else:
        for dec in report.decisions[:200]:
            objs = ",".join(o[:8] for o in dec["objects"][:4])
            more = f"+{len(dec['objects']) - 4}" if len(dec["objects"]) > 4 else ""
            click.echo(f"{dec['action']:10} {dec['subject'][:8]}  {objs}{more:4} "
                       f"{dec['method']:8} {dec['score']:.3f}  {dec['reason'][:60]}")
        if len(report.decisions) > 200:
            click.echo(f"... {len(report.decisions) - 200} more (use --format jsonl)")
    if not quiet:
        click.echo(f"{label}: {report.summary()}", err=True)


@click.command(name="history")
@click.argument("memory_id")
@store_option
@format_option(("auto", "msgpack", "jsonl", "table"))
def history_cmd(memory_id, store, format_):
    """Show the versions, merges and decisions behind one memory (an id or a unique prefix).

    \b
    Examples:
        memstack history 3f2a9c1d
        memstack history 3f2a9c1d --format jsonl | jq 'select(.kind == "decision")'
    """
    from memstack.core.consolidate.history import history

    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    st = open_store(store)
    h = history(st, memory_id)
    if fmt in ("msgpack", "jsonl"):
        from memstack.formats.stream import RecordWriter

        with RecordWriter(sys.stdout.buffer, fmt) as writer:
            for rec in [h["memory"], *h["older"], *h["newer"], *h["sources"],
                        *([h["merged_into"]] if h["merged_into"] else []), *h["decisions"]]:
                writer.write(rec)
        return
    click.echo(_describe("memory", h["memory"]))
    for label, key in (("replaced", "older"), ("replaced by", "newer"),
                       ("merged from", "sources")):
        for rec in h[key]:
            click.echo(_describe(label, rec))
    if h["merged_into"]:
        click.echo(_describe("merged into", h["merged_into"]))
    for d in h["decisions"]:
        click.echo(f"  {d['t']}  {d['action']:10} {d['subject'][:8]} <- "
                   f"{','.join(o[:8] for o in d['objects'][:6])}  by {d['method']} "
                   f"({d['score']:.3f}): {d['reason']}")


def _describe(label: str, rec: dict) -> str:
    meta = rec.get("meta") or {}
    valid = f"{rec.get('valid_from') or '?'} .. {rec.get('valid_to') or 'now'}"
    status = meta.get("status") or ("superseded" if rec.get("valid_to") else "current")
    text = " ".join(rec["text"].split())
    return f"{label:12} {rec['id'][:12]}  [{status}; valid {valid}]  {text[:90]}"
