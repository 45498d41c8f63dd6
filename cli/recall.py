"""`memstack recall`: the best memories for each query, packed into a token budget."""

from __future__ import annotations

import sys

import click

from memstack.cli.common import (
    format_option,
    open_store,
    parse_duration,
    parse_when,
    refuse_binary_tty,
    resolve_format,
    store_option,
)

RECALL_FORMATS = ("auto", "msgpack", "jsonl", "table", "text", "prompt")
LEVEL_CHOICES = ("turn", "chunk", "doc", "fact", "summary", "cluster")
INCLUDE_CHOICES = ("archived", "merged", "quarantined")  # core.recall.INCLUDE
ROUTE_CHOICES = ("off", "entropy", "fuse", "boost")  # core.routing.ROUTES (kept light here)
DEFAULT_ROUTE = "boost"  # core.recall.DEFAULT_ROUTE; tests check they agree


@click.command(name="recall")
@click.argument("queries", nargs=-1)
@click.option("--from", "from_", metavar="FILE", default=None,
              help="Search a record stream (file or '-') instead of the store.")
@store_option
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Hits per query.")
@click.option("--budget", type=click.IntRange(min=1), default=None,
              help="Pack the best hits into this many tokens.")
@click.option("--ns", multiple=True, help="Only these namespaces (repeatable).")
@click.option("--since", default=None, help="Only memories of events at or after this time "
                                            "(ISO date, epoch, or an age like 7d).")
@click.option("--until", default=None, help="Only memories of events before this time.")
@click.option("--as-of", default=None, help="Answer as of this time (bi-temporal validity).")
@click.option("--level", "levels", multiple=True, type=click.Choice(LEVEL_CHOICES),
              help="Only memories of this level (repeatable); summaries and clusters are "
                   "searched only when named here or picked by --route.")
@click.option("--include", "include", multiple=True, type=click.Choice(INCLUDE_CHOICES),
              help="Also return memories consolidate archived, merged into another, or "
                   "quarantined (repeatable).")
@click.option("--include-archived", is_flag=True, help="Same as --include archived.")
@click.option("--route", type=click.Choice(ROUTE_CHOICES), default=DEFAULT_ROUTE,
              show_default=True,
              help="Use consolidated summaries/clusters: entropy answers from the most "
                   "decisive granularity, fuse merges them by rank, boost lifts members of "
                   "matching session summaries (ignored with --level).")
@click.option("--recency", default=None, metavar="HALF_LIFE",
              help="Favour recent events with this half-life (e.g. 30d).")
@click.option("--mmr", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Diversify hits: MMR lambda (1 = pure relevance).")
@click.option("--decay", is_flag=True,
              help="Favour memories consolidate rated important and fresh (its decay "
                   "strength; no effect before the first consolidate).")
@click.option("--decay-weight", type=click.FloatRange(0.0), default=0.5, show_default=True,
              help="Weight of the decay strength (0-1) added to the fused score.")
@click.option("--embedder", default=None, help="Embedder spec; must match the store's.")
@click.option("--explain", is_flag=True, help="Show each signal's score and rank.")
@click.option("--log-access", is_flag=True,
              help="Record the hits in the store's access log (used by decay).")
@format_option(RECALL_FORMATS)
def recall_cmd(queries, from_, store, k, budget, ns, since, until, as_of, levels, include,
               include_archived, route, recency, mmr, decay, decay_weight, embedder, explain,
               log_access, format_):
    """Find the memories that answer each query.

    QUERIES are arguments; a single '-' reads one query per line from stdin.

    \b
    Examples:
        memstack recall "when did Caroline go to the support group?" -k 5
        memstack recall "what is alice allergic to" --budget 400 --format prompt
        memstack recall "what did we plan for the trip" --route boost --decay
        memstack recall "old address" --include archived --include merged --explain
        memstack ingest a.jsonl -o - | memstack recall --from - "query"
        printf 'q1\\nq2\\n' | memstack recall - --format jsonl
    """
    from memstack.core.recall import RecallOptions

    qs = list(queries)
    if qs == ["-"]:
        if from_ == "-":
            raise click.UsageError("stdin cannot hold both the queries and --from records")
        qs = [line.strip() for line in sys.stdin if line.strip()]
    elif "-" in qs:
        raise click.UsageError("'-' (queries from stdin) must be the only query argument")
    if not qs:
        raise click.UsageError("give at least one query (or '-' to read them from stdin)")
    fmt = resolve_format(format_)
    refuse_binary_tty(fmt)
    opts = RecallOptions(
        k=k * 3 if budget else k, ns=list(ns) or None,
        since=parse_when(since, "--since"), until=parse_when(until, "--until"),
        as_of=parse_when(as_of, "--as-of"), levels=list(levels) or None,
        include=frozenset(include) | ({"archived"} if include_archived else frozenset()),
        route=route, decay=decay, decay_weight=decay_weight,
        recency_half_life=parse_duration(recency, "--recency"), mmr=mmr, explain=explain)
    if from_ is not None:
        from memstack.cli.common import load_embedder
        from memstack.core.recall import stream_store

        fp = sys.stdin.buffer if from_ == "-" else open(from_, "rb")  # noqa: SIM115
        name = "<stdin>" if from_ == "-" else from_
        try:
            with stream_store(fp, name, load_embedder) as (st, emb):
                _run(st, emb, qs, opts, k, budget, fmt, explain, False)
        finally:
            if from_ != "-":
                fp.close()
        return
    from memstack.cli.common import store_embedder

    st = open_store(store, write=log_access)
    emb = store_embedder(st, embedder)
    _run(st, emb, qs, opts, k, budget, fmt, explain, log_access)


def _run(st, emb, queries, opts, k, budget, fmt, explain, log_access) -> None:
    import msgpack

    from memstack.cli.render import prompt_header, prompt_line, table
    from memstack.core.recall import Searcher, pack_budget
    from memstack.formats.records import RECORD_VERSION
    from memstack.formats.stream import RecordWriter

    searcher = Searcher(st, emb)
    out = sys.stdout.buffer
    writer = RecordWriter(out, fmt) if fmt in ("msgpack", "jsonl") else None
    tok = None
    if budget:
        from memstack.core.text import load_tokenizer

        tok = load_tokenizer((st.meta.get("tokenizer") or {}).get("requested") or "cl100k_base")
    for qn, query in enumerate(queries):
        try:
            hits = searcher.search(query, opts)
        except (UnicodeDecodeError, msgpack.UnpackException) as exc:  # a damaged record
            from memstack.core.errors import StoreError

            raise StoreError(f"{st.path}: a stored record is unreadable ({exc}); run "
                             "`memstack store verify`") from None
        if budget:
            if fmt == "prompt":
                def cost(h):
                    return len(tok.encode(prompt_line(h.record) + "\n"))
                budget_left = budget - len(tok.encode(prompt_header(query) + "\n"))
            else:
                def cost(h):
                    return int(h.record.get("tokens") or 0)
                budget_left = budget
            hits = pack_budget(hits, max(budget_left, 0), cost)[:k]
        if log_access and hits:
            st.log_access([h.docno for h in hits])
        rows = [{"v": RECORD_VERSION, "kind": "hit", "query": query, "qn": qn, "rank": r + 1,
                 "score": round(h.score, 6), "id": h.id, "memory": h.record,
                 **({"explain": h.explain} if explain else {})} for r, h in enumerate(hits)]
        if writer is not None:
            for row in rows:
                writer.write(row)
            writer.flush()
        elif fmt == "prompt":
            lines = [prompt_header(query)] + [prompt_line(r["memory"]) for r in rows]
            out.write(("\n".join(lines) + "\n\n").encode("utf-8"))
        elif fmt == "text":
            out.write("".join(" ".join(r["memory"]["text"].split()) + "\n"
                              for r in rows).encode("utf-8"))
        else:
            if len(queries) > 1:
                out.write(f"query: {query}\n".encode())
            out.write((table(rows, explain) + "\n").encode("utf-8"))
        out.flush()
    if writer is not None:
        writer.close()
