"""Turn inputs into memory records: parse, chunk, count tokens, embed, index, commit in batches."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from memstack.core.analyze import Analysis
from memstack.core.parse import SNIFF_BYTES, Bad, Item, detect_format, parse
from memstack.core.store import (
    LmdbStore,
    Prepared,
    pack,
    row_columns,
    simhash,
    vector_moments,
)
from memstack.core.text import Tokenizer, chunk_text
from memstack.formats.records import memory_record, now_iso
from memstack.formats.stream import RecordWriter

MAX_PIECE_CHARS = 1 << 16  # tiktoken's BPE is quadratic in one pre-token: cut giant runs first


@dataclass
class IngestStats:
    new: int = 0
    present: int = 0
    bad: int = 0
    written: int = 0

    def summary(self) -> str:
        return f"{self.new} new, {self.present} already present, {self.bad} bad"


@dataclass
class IngestOptions:
    ns: str = "default"
    source: str | None = None
    fmt: str = "auto"
    batch_size: int = 10000
    chunk_tokens: int = 256
    overlap: int = 32
    skip_bad: bool = False
    max_line: int = 16 << 20
    workers: int = 1  # processes preparing batches of big JSONL inputs; 0 = one per core
    # (the CLI defaults to 0; library callers opt in, since worker processes re-import
    # the calling script unless it guards with `if __name__ == "__main__"`)


def _safe_pieces(text: str) -> list[str]:
    """Split text with giant runs of non-space characters into bounded pieces."""
    if len(text) <= MAX_PIECE_CHARS:
        return [text]
    return [text[i : i + MAX_PIECE_CHARS] for i in range(0, len(text), MAX_PIECE_CHARS)]


def expand(items: Iterable[Item | Bad], tok: Tokenizer | None, opts: IngestOptions,
           uri: str, t_ingest: str, on_bad: Callable[[Bad], None]) -> Iterator[dict]:
    """Items -> memory records (documents and over-long turns are chunked by tokens)."""
    for item in items:
        if isinstance(item, Bad):
            on_bad(item)
            continue
        if item.record is not None:
            yield _passthrough(item, opts, t_ingest)
            continue
        text = item.text
        if not text.strip():
            continue
        source = {"uri": uri, "offset": item.offset}
        if item.speaker:
            source["speaker"] = item.speaker
        if item.session:
            source["session"] = item.session
        long = tok is not None and (item.level == "doc" or len(text) > opts.chunk_tokens * 3)
        chunks = [(0, text)]
        if long:
            chunks = []
            base = 0
            for piece in _safe_pieces(text):
                chunks.extend((base + o, c) for o, c in chunk_text(piece, tok, opts.chunk_tokens,
                                                                   opts.overlap))
                base += len(piece)
        level = item.level if len(chunks) == 1 and item.level != "doc" else "chunk"
        for off, chunk in chunks:
            src = dict(source)
            if len(chunks) > 1 or item.level == "doc":
                # a document chunk's offset is its character offset in the input, so equal
                # text in two markdown sections is two memories, not one
                src["offset"] = f"{item.offset}+{off}" if item.level != "doc" \
                    else item.offset + off
            yield memory_record(ns=opts.ns, text=chunk, tokens=0, t_event=item.t_event,
                                t_ingest=t_ingest, source=src, level=level,
                                meta=dict(item.meta))


def _passthrough(item: Item, opts: IngestOptions, t_ingest: str) -> dict:
    rec = dict(item.record)
    rec.setdefault("t_ingest", t_ingest)
    rec.setdefault("level", "turn")
    rec.setdefault("links", [])
    rec.setdefault("meta", {})
    rec.setdefault("source", {})
    rec.setdefault("valid_from", rec.get("t_event") or rec["t_ingest"])
    rec.setdefault("valid_to", None)
    return rec


def index_text(rec: dict) -> str:
    """What is indexed: the speaker's name is part of what a turn is about."""
    speaker = (rec.get("source") or {}).get("speaker")
    return f"{speaker}: {rec['text']}" if speaker else rec["text"]


def group_of(rec: dict) -> int:
    """Neighbour group: records of one session of one source sit in one group."""
    src = rec.get("source") or {}
    key = f"{rec['ns']}\x1f{src.get('uri', '')}\x1f{src.get('session', '')}"
    return zlib.crc32(key.encode("utf-8", "surrogatepass"))


def prepare(records: list[dict], embedder, tok: Tokenizer | None,
            vectors: np.ndarray | None = None, keep_records: bool = True,
            planes: np.ndarray | None = None) -> Prepared:
    """Count tokens, embed, analyse and pack a batch of records (everything but the commit)."""
    if tok is not None:
        todo = [r for r in records if not r.get("tokens")]
        for rec, n in zip(todo, tok.count([r["text"] for r in todo]), strict=True):
            rec["tokens"] = n
    texts = [index_text(r) for r in records]
    analyzer = getattr(embedder, "analyzer", None)
    if analyzer is None:
        from memstack.core.analyze import get_analyzer

        analyzer = get_analyzer()
    analysis: Analysis = analyzer.analyze(texts)
    if vectors is None:
        vectors = embedder.embed(texts, analysis=analysis)
    vectors = np.asarray(vectors, dtype=np.float32)
    stem = np.asarray(analyzer.word_stem, dtype=np.int64)[analysis.word]
    n = len(records)
    pair = stem * max(n, 1) + analysis.doc
    uniq, counts = np.unique(pair, return_counts=True)
    term_global = uniq // max(n, 1)
    term_doc = uniq % max(n, 1)
    terms, term_idx = np.unique(term_global, return_inverse=True)
    doc_len = np.bincount(analysis.doc, minlength=n)
    groups = np.fromiter((group_of(r) for r in records), dtype=np.uint32, count=n)
    return Prepared(
        ids=[r["id"].encode() for r in records], packed=[pack(r) for r in records],
        ns=[r["ns"] for r in records], cols=row_columns(records, doc_len, groups),
        vectors=np.asarray(vectors, dtype=np.float32), term_doc=term_doc.astype(np.int64),
        term_stem=[analyzer.stem_list[t] for t in terms], term_idx=term_idx.astype(np.int64),
        term_tf=np.minimum(counts, 65535).astype(np.uint16),
        records=records if keep_records else None,
        codes=None if planes is None else simhash(vectors, planes),
        moments=None if planes is None else vector_moments(vectors))


def commit(prep: Prepared, store: LmdbStore | None, out: RecordWriter | None,
           stats: IngestStats, seen: set[bytes]) -> None:
    """Commit a prepared batch to the store and/or the output stream, and count it."""
    fresh = None
    if store is not None:
        new, present = store.add(prep)
    else:
        fresh = first_seen(prep.ids, seen)
        new = sum(fresh)
        present = len(prep) - new
    stats.new += new
    stats.present += present
    if out is not None:
        for i, (rec, vec) in enumerate(zip(prep.records, prep.vectors, strict=True)):
            if fresh is not None and not fresh[i]:
                continue  # without a store, the stream holds each id once
            out.write(dict(rec, vec=vec))
            stats.written += 1
        out.flush()


def batched(it: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for rec in it:
        batch.append(rec)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def ingest(inputs: list[tuple[str, IO[bytes]]], *, embedder, tokenizer: Tokenizer | None,
           store: LmdbStore | None = None, out: RecordWriter | None = None,
           opts: IngestOptions | None = None,
           on_bad: Callable[[Bad], None] | None = None,
           progress: Callable[[int], None] | None = None) -> IngestStats:
    """Ingest every input; commits per batch so an interrupted run keeps whole batches.

    Re-running the same inputs adds nothing (ids are content addressed). With no store, the
    records only go to `out`, each id once.
    """
    opts = opts or IngestOptions()
    stats = IngestStats()
    if store is not None:
        store.check_identity(embedder.identity(), tokenizer.identity() if tokenizer else None)
    workers = opts.workers or min(2, os.cpu_count() or 1)
    seen: set[bytes] = set()  # without a store: ids already counted, across all inputs
    for name, fp in inputs:
        fmt = opts.fmt
        if fmt == "auto":
            head = fp.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(fp, "peek") else b""
            fmt = detect_format(head, name)
        if workers > 1 and tokenizer is not None:
            from memstack.core import pipeline

            if pipeline.worth_it(fp, fmt):
                pipeline.ingest_parallel(fp, name, embedder=embedder,
                                         encoding=tokenizer.requested, store=store, out=out,
                                         opts=opts, stats=stats, on_bad=on_bad,
                                         progress=progress, workers=workers, seen=seen,
                                         planes=store.simhash_planes(embedder.dim)
                                         if store is not None else None)
                continue
        items = parse(fp, name, fmt, max_line=opts.max_line, skip_bad=opts.skip_bad)
        ingest_items(items, opts.source or name, embedder=embedder, tokenizer=tokenizer,
                     store=store, out=out, opts=opts, stats=stats, on_bad=on_bad,
                     progress=progress, seen=seen)
    if store is not None:
        store.optimize()
    return stats


def first_seen(ids: list[bytes], seen: set[bytes]) -> list[bool]:
    """For each id, whether it is new to `seen` (also within the list); updates `seen`."""
    out = []
    for rid in ids:
        out.append(rid not in seen)
        seen.add(rid)
    return out


def ingest_items(items: Iterable[Item | Bad], uri: str, *, embedder,
                 tokenizer: Tokenizer | None, store: LmdbStore | None,
                 out: RecordWriter | None, opts: IngestOptions, stats: IngestStats,
                 on_bad: Callable[[Bad], None] | None = None,
                 progress: Callable[[int], None] | None = None,
                 seen: set[bytes] | None = None) -> None:
    """The batch loop behind ingest(): expand, prepare, commit and/or write."""
    seen = set() if seen is None else seen
    spec = embedder.spec()
    planes = store.simhash_planes(embedder.dim) if store is not None else None

    def bad(b: Bad) -> None:
        stats.bad += 1
        if on_bad:
            on_bad(b)

    records = expand(items, tokenizer, opts, uri, now_iso(), bad)
    for batch in batched(records, opts.batch_size):
        given = []
        for r in batch:
            vec = r.pop("vec", None)
            given.append(vec if r.pop("_vec_spec", None) == spec else None)
        vecs = None
        if all(v is not None and len(v) == embedder.dim for v in given):
            vecs = np.stack(given)
        prep = prepare(batch, embedder, tokenizer, vecs, planes=planes)
        commit(prep, store, out, stats, seen)
        if progress:
            progress(len(batch))
