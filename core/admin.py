"""Store administration: statistics, export/import as record streams, verification, compaction."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator

import lmdb
import numpy as np

from memstack.core import vector_quant
from memstack.core.errors import StoreError
from memstack.core.store import (
    BLOCK_ROWS,
    CODE_BITS,
    COLUMNS,
    LATE_COLUMNS,
    STATUS_CODE,
    LmdbStore,
    status_of,
)
from memstack.formats.records import check_memory


def stats(store: LmdbStore) -> dict:
    """Counts by namespace, level and validity, sizes, and the store identity."""
    by_ns: Counter = Counter()
    by_level: Counter = Counter()
    by_status: Counter = Counter()
    current = 0
    tokens = 0
    with store.snapshot() as snap:
        n = snap.n
        codes = {v: k for k, v in store.meta.get("ns_codes", {}).items()}
        if n:
            for code, cnt in zip(*np.unique(snap.column("ns"), return_counts=True), strict=True):
                by_ns[codes.get(int(code), str(code))] = int(cnt)
            from memstack.formats.records import LEVELS

            for code, cnt in zip(*np.unique(snap.column("level"), return_counts=True),
                                 strict=True):
                by_level[LEVELS[int(code)]] = int(cnt)
            current = int(np.isinf(snap.column("valid_to")).sum())
            tokens = int(snap.column("tokens").sum())
            names = {v: k for k, v in STATUS_CODE.items()}
            for code, cnt in zip(*np.unique(snap.column("status"), return_counts=True),
                                 strict=True):
                by_status[names.get(int(code), str(code))] = int(cnt)
        terms = snap.txn.stat(store.dbs["postings"])["entries"]
        vectors = vector_quant.describe(snap)
        ddb = store.late_db("decisions")
        n_decisions = snap.txn.stat(ddb)["entries"] if ddb is not None else 0
    info = store.env.info()
    state = store.meta.get("consolidate") or {}
    disk = os.path.getsize(os.path.join(store.path, "data.mdb"))
    return {
        "v": 1, "kind": "store_stats", "path": store.path, "memories": n, "current": current,
        "tokens": tokens, "namespaces": dict(sorted(by_ns.items())),
        "levels": dict(sorted(by_level.items())), "status": dict(sorted(by_status.items())),
        "decisions": n_decisions,
        "consolidated": {"runs": int(state.get("runs", 0)), "upto": int(state.get("upto", 0)),
                         "clusters": len(state.get("clusters", []))},
        "posting_segments": terms,
        "bytes_on_disk": disk, "map_size": info["map_size"],
        "embedder": store.meta.get("embedder"), "tokenizer": store.meta.get("tokenizer"),
        "schema": store.meta.get("schema"), "vectors": vectors,
    }


def export(store: LmdbStore, with_vectors: bool = True) -> Iterator[dict]:
    """Every record in ingest order, with its vector; short read transactions throughout."""
    for _, rec, vec in store.iter_records():
        if with_vectors and vec is not None:
            rec["vec"] = vec
        yield rec


def verify(store: LmdbStore) -> list[str]:
    """Cross-check records, id maps, columns, vectors and postings; return the problems."""
    problems: list[str] = []
    try:
        with store.snapshot() as snap:
            n = snap.n
            txn, dbs = snap.txn, store.dbs
            for name, db in (("records", dbs["records"]), ("docnos", dbs["docnos"]),
                             ("ids", dbs["ids"])):
                count = txn.stat(db)["entries"]
                if count != n:
                    problems.append(f"{name}: {count} entries, stats say {n}")
            status_col = snap.column("status") if n else np.zeros(0, np.uint8)
            vt_col = snap.column("valid_to") if n else np.zeros(0)
            for d in range(n):
                try:
                    rid = snap.doc_id(d)
                    rec = snap.record_by_id(rid)
                except lmdb.Error:
                    raise  # the read transaction is dead after this; reported below
                except Exception as exc:  # noqa: BLE001 - any decoding failure is a finding
                    problems.append(f"docno {d}: unreadable ({type(exc).__name__}: {exc})")
                    continue
                if rec is None:
                    problems.append(f"docno {d}: id {rid} has no record")
                    continue
                why = check_memory(rec)
                if why:
                    problems.append(f"record {rid}: {why}")
                if status_of(rec) != status_col[d]:
                    problems.append(f"record {rid}: status column {status_col[d]} disagrees "
                                    f"with the record ({status_of(rec)})")
                if bool(rec.get("valid_to")) == bool(np.isinf(vt_col[d])):
                    problems.append(f"record {rid}: valid_to column disagrees with the record")
                if snap.docno(rid) != d:
                    problems.append(f"record {rid}: docno map disagrees ({snap.docno(rid)} != {d})")
                if len(problems) > 100:
                    problems.append("… stopping after 100 problems")
                    return problems
            for name in COLUMNS:
                blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
                if name in LATE_COLUMNS and not snap.has_column(name):
                    continue  # a store older than the column: read as its default
                for b in range(blocks):
                    raw = txn.get(f"{name}:".encode() + b.to_bytes(4, "big"), db=dbs["cols"])
                    if raw is None or len(raw) != BLOCK_ROWS * np.dtype(COLUMNS[name]).itemsize:
                        problems.append(f"column {name}: block {b} missing or wrong size")
            dim = (store.meta.get("embedder") or {}).get("dim")
            problems += vector_quant.verify(snap)
            if n and dim and not snap.floats_dropped:
                expect = 0
                for key, raw in txn.cursor(db=dbs["vectors"]):
                    start = int.from_bytes(bytes(key), "big")
                    if start != expect or len(raw) % (4 * dim):
                        problems.append(f"vectors: segment at {start} breaks the sequence "
                                        f"(expected {expect})")
                        break
                    arr = np.frombuffer(raw, dtype=np.float32)
                    if not np.isfinite(arr).all():
                        problems.append(f"vectors: segment at {start} holds NaN or Inf")
                    expect = start + len(raw) // (4 * dim)
                else:
                    if expect != n:
                        problems.append(f"vectors: {expect} rows stored, stats say {n}")
            if n and dim:
                row_bytes = CODE_BITS // 8
                expect = 0
                for key, raw in txn.cursor(db=dbs["codes"]):
                    start = int.from_bytes(bytes(key), "big")
                    if start != expect or len(raw) % row_bytes:
                        problems.append(f"codes: segment at {start} breaks the sequence "
                                        f"(expected {expect})")
                        break
                    expect = start + len(raw) // row_bytes
                else:
                    if expect != n:
                        problems.append(f"codes: {expect} rows stored, stats say {n}")
            total = 0
            cur = txn.cursor(db=dbs["postings"])
            for key, val in cur:
                if len(val) % 6:
                    problems.append(f"postings {bytes(key)[:-5]!r}: bad length {len(val)}")
                    continue
                k = len(val) // 6
                docs = np.frombuffer(val, np.uint32, k)
                if k and int(docs.max()) >= n:
                    problems.append(f"postings {bytes(key)[:-5]!r}: docno beyond {n}")
                total += int(np.frombuffer(val, np.uint16, k, 4 * k).sum())
            if total < int(snap.stats.get("total_len", 0)):
                problems.append(f"postings hold {total} term occurrences, stats say "
                                f"{snap.stats.get('total_len')}")
    except lmdb.Error as exc:  # a damaged page: the transaction is unusable, stop here
        problems.append(f"LMDB reports damage ({exc}); restore from a backup "
                        "(`memstack store export` / `compact` of a good copy)")
    return problems


def compact(store: LmdbStore, dest: str) -> int:
    """A consistent, compacted copy into `dest` (must not exist), while others keep reading."""
    if os.path.exists(dest):
        raise StoreError(f"{dest}: already exists; compact writes a new store")
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    tmp = tempfile.mkdtemp(prefix=".memstack-compact-", dir=parent)
    try:
        store.env.copy(tmp, compact=True)
        os.replace(tmp, dest)
    except (lmdb.Error, OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.getsize(os.path.join(dest, "data.mdb"))
