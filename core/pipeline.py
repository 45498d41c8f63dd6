"""Parallel ingest of line-oriented inputs: workers parse, count, analyse and embed; the
parent commits in input order.

One Python process cannot keep up with LMDB (parsing, tokenising and embedding a chat turn
cost ~50 us of interpreter time), so JSONL inputs are cut into batches of lines that worker
processes prepare while the parent writes the previous batch. Order is kept, so docnos and
conversational neighbours are the same as in a serial run.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from typing import IO

from memstack.core.errors import InputError
from memstack.core.ingest import IngestOptions, IngestStats, commit, expand, prepare
from memstack.core.parse import Bad, iter_lines, parse_jsonl_lines
from memstack.core.store import LmdbStore
from memstack.formats.records import now_iso
from memstack.formats.stream import RecordWriter

PARALLEL_MIN_BYTES = 8 << 20
_W: dict = {}


def worth_it(fp: IO[bytes], fmt: str) -> bool:
    """Parallel only for big JSONL files, and only with more than one core."""
    if fmt != "jsonl" or (os.cpu_count() or 1) < 2:
        return False
    try:
        return os.fstat(fp.fileno()).st_size >= PARALLEL_MIN_BYTES
    except (OSError, io.UnsupportedOperation, AttributeError):
        return False


def _init(embedder_spec: str, encoding: str, opts: IngestOptions, keep_records: bool,
          planes=None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # results and errors travel back to the parent; if the parent dies (kill -9), the
    # orphaned worker's BrokenPipe noise must not land on the user's terminal
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    from memstack.core.text import load_tokenizer
    from memstack.plugins.registry import load_embedder

    _W["embedder"] = load_embedder(embedder_spec)
    _W["tok"] = load_tokenizer(encoding)
    _W["opts"] = opts
    _W["keep_records"] = keep_records
    _W["planes"] = planes


def _err_args(exc: InputError) -> tuple[str, str, str]:
    return exc.source, exc.where, exc.detail


def _work(job: tuple[str, str, list[tuple[int, int, bytes | None]], str]):
    """Parse and prepare one batch of lines; errors come back as values, in order."""
    name, uri, lines, t_ingest = job
    opts: IngestOptions = _W["opts"]
    # errors travel as (source, where, detail): InputError's signature does not unpickle,
    # and an unpicklable result kills the pool's result thread and hangs the parent
    bads: list[tuple[str, str, str]] = []
    items = parse_jsonl_lines(lines, name, opts.max_line, opts.skip_bad)
    try:
        records = list(expand(items, _W["tok"], opts, uri, t_ingest,
                              lambda b: bads.append(_err_args(b.error))))
    except InputError as exc:
        return None, bads, _err_args(exc)
    if not records:
        return None, bads, None
    keep = _W["keep_records"]
    return (prepare(records, _W["embedder"], _W["tok"], keep_records=keep,
                    planes=_W["planes"]), bads, None)


def _jobs(fp: IO[bytes], name: str, uri: str, batch: int, max_line: int,
          t_ingest: str) -> Iterator[tuple]:
    lines: list[tuple[int, int, bytes | None]] = []
    for line in iter_lines(fp, name, max_line):
        lines.append(line)
        if len(lines) >= batch:
            yield name, uri, lines, t_ingest
            lines = []
    if lines:
        yield name, uri, lines, t_ingest


def ingest_parallel(fp: IO[bytes], name: str, *, embedder, encoding: str,
                    store: LmdbStore | None, out: RecordWriter | None, opts: IngestOptions,
                    stats: IngestStats, on_bad: Callable[[Bad], None] | None = None,
                    progress: Callable[[int], None] | None = None, workers: int = 2,
                    seen: set[bytes] | None = None, planes=None) -> None:
    """Ingest one JSONL input with `workers` processes preparing batches."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # inherited by the fork server: one BLAS thread each
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["memstack.core.ingest", "memstack.core.embed"])
    seen = set() if seen is None else seen
    jobs = _jobs(fp, name, opts.source or name, opts.batch_size, opts.max_line, now_iso())
    with ctx.Pool(workers, initializer=_init,
                  initargs=(embedder.spec(), encoding, opts, out is not None, planes)) as pool:
        for prep, bads, error in pool.imap(_work, jobs):
            for err in bads:
                stats.bad += 1
                if on_bad:
                    on_bad(Bad(InputError(*err)))
            if error is not None:
                raise InputError(*error)
            if prep is None:
                continue
            commit(prep, store, out, stats, seen)
            if progress:
                progress(len(prep))
