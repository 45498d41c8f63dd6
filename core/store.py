"""The default store: one LMDB environment holding records, their index and the store identity.

Layout (named databases):
  records  id -> msgpack memory record (without its vector)
  docnos   id -> docno (uint32 BE);  ids  docno (BE) -> id
  cols     "<column>:" + block (BE) -> a block of BLOCK_ROWS values of one column
  vectors  first docno (BE) -> a segment of rows x dim float32, read zero-copy from the map;
           one segment per ingest batch, small ones merged by optimize()
  codes    first docno (BE) -> SimHash sign bits of the same rows (uint64 words), so recall
           on a big store scans 32 bytes a memory before it re-scores the best exactly
  qvectors (only once `quantize_vectors` set a scheme in meta["vector_quant"]) the same
           segments quantized (int8, q4 or binary, see core/vector_quant.py), same keys
  postings term + 0x00 + segment (BE) -> uint32 docnos then uint16 term frequencies
  meta     schema, embedder, tokenizer, stats, namespace codes
  log      access log for decay (time_ns BE + docno BE -> b"")

Docnos are dense, assigned in ingest order, so columns and vectors are plain arrays and
neighbouring turns of one conversation sit next to each other. Nothing is ever deleted.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import lmdb
import msgpack
import numpy as np

from memstack.core.errors import StoreBusy, StoreError
from memstack.formats import ndarray
from memstack.formats.records import LEVELS, from_iso

SCHEMA_VERSION = 1
BLOCK_ROWS = 16384
SEGMENT_BYTES = 16 << 20  # merge target: a segment this big is scanned at memory speed
SMALL_SEGMENT_BYTES = 4 << 20  # segments below this (from small batches) are merged
CODE_BITS = 256  # SimHash bits per vector: the prefilter of recall on big stores
SEGMENT_MAX = 65536
DB_NAMES = ("records", "docnos", "ids", "cols", "vectors", "codes", "postings", "meta", "log")
QVECTORS = "qvectors"  # made on demand: stores that were never quantized do not have it
# made by the first consolidate (older stores lack them): decision records, the memory ->
# decision index behind `memstack history`, consolidate's candidate index, the LLM cache
LATE_DBS = ("decisions", "dec_index", "cindex", "llm_cache")
COLUMNS = {
    "ns": np.uint32,
    "t_event": np.float64,
    "valid_from": np.float64,
    "valid_to": np.float64,
    "level": np.uint8,
    "group": np.uint32,
    "dl": np.uint32,
    "tokens": np.uint32,
    "status": np.uint8,
    "importance": np.float32,  # written by consolidate; 0 until then
    "tier": np.uint8,  # decay tier (core/consolidate/decay.py), 0 = none yet
    "novelty": np.float32,  # 1 - cosine to the nearest earlier memory (consolidate)
    "degree": np.uint16,  # links made by consolidate
}
# columns older stores may lack: read as their default until consolidate writes them
LATE_COLUMNS = {"importance": 0.0, "tier": 0, "novelty": 1.0, "degree": 0}
STATUS_ACTIVE, STATUS_ARCHIVED, STATUS_MERGED, STATUS_QUARANTINED = 0, 1, 2, 3
TIER_CODE = {"short": 1, "mid": 2, "long": 3, "pinned": 4}
STATUS_CODE = {"active": STATUS_ACTIVE, "archived": STATUS_ARCHIVED, "merged": STATUS_MERGED,
               "quarantined": STATUS_QUARANTINED}
LEVEL_CODE = {name: i for i, name in enumerate(LEVELS)}
DEFAULT_MAP_SIZE = 256 << 20
_U32 = struct.Struct(">I")
_NO_TIME = float("nan")


def simhash(vecs: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Sign bits of random projections, packed into uint64 words, shape (bits/64, rows):
    word-major, so Hamming distances are computed on contiguous arrays."""
    bits = np.packbits((vecs @ planes.T) > 0, axis=1, bitorder="little")
    return np.ascontiguousarray(np.ascontiguousarray(bits).view(np.uint64).T)


def vector_moments(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and Gram matrix of a batch of vectors (float32 products, float64 totals)."""
    vecs = np.asarray(vecs, dtype=np.float32)
    return vecs.sum(axis=0, dtype=np.float64), (vecs.T @ vecs).astype(np.float64)


def _join_codes(parts: list[bytes]) -> bytes:
    """Concatenate word-major code segments row-wise."""
    words = CODE_BITS // 64
    arrays = [np.frombuffer(p, dtype=np.uint64).reshape(words, -1) for p in parts]
    return np.ascontiguousarray(np.concatenate(arrays, axis=1)).tobytes()


def same_embedder(a: dict, b: dict) -> bool:
    """Identities match on everything but the spec (a GGUF file may move; its hash may not)."""
    def key(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != "spec"}
    return key(a) == key(b)


def wait_flock(path: str, timeout: float, busy: str, shared: bool = False) -> int:
    """Open and flock a sidecar lock file, waiting up to `timeout` seconds; returns the fd
    (closing it releases the lock). StoreBusy (exit 75) says `busy` when time runs out."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            fcntl.flock(fd, mode)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            raise StoreBusy(f"{busy} (waited {timeout:g}s); retry later or raise "
                            "--lock-timeout")
        time.sleep(0.05)


def default_store_path() -> str:
    """$MEMSTACK_STORE, else the per-user data directory."""
    env = os.environ.get("MEMSTACK_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(base, "memstack", "store")


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=ndarray.default, use_bin_type=True)


def unpack(data) -> dict:
    return msgpack.unpackb(data, raw=False, ext_hook=ndarray.ext_hook, strict_map_key=False)


def _time(value: str | None) -> float:
    t = from_iso(value) if value else None
    return _NO_TIME if t is None else t


@dataclass
class Prepared:
    """A batch ready to commit: packed records, column values, vectors and BM25 postings.

    Everything costly is done here, so worker processes can prepare while the writer
    commits; the records themselves are kept only when a caller still needs them.
    """

    ids: list[bytes]
    packed: list[bytes]  # msgpack of each record, as stored
    ns: list[str]
    cols: dict[str, np.ndarray]  # every column of COLUMNS but ns
    vectors: np.ndarray  # float32 (n, dim)
    term_doc: np.ndarray  # int64 index into the batch of each (doc, term) pair
    term_stem: list[str]  # stem of each distinct term in the batch
    term_idx: np.ndarray  # int64 index into term_stem of each pair
    term_tf: np.ndarray  # uint16 frequency of each pair
    records: list[dict] | None = None
    codes: np.ndarray | None = None  # SimHash words (bits/64, n), when the planes were known
    moments: tuple[np.ndarray, np.ndarray] | None = None  # sum and gram of the vectors

    def __len__(self) -> int:
        return len(self.ids)


def status_of(rec: dict) -> int:
    """Status code of a record: meta.status, or the older meta.archived flag."""
    meta = rec.get("meta") or {}
    if meta.get("status"):
        return STATUS_CODE.get(meta["status"], STATUS_ACTIVE)
    return STATUS_ARCHIVED if meta.get("archived") else STATUS_ACTIVE


def tier_of(rec: dict) -> int:
    """Decay tier code: pinned memories (meta.pinned) never decay."""
    meta = rec.get("meta") or {}
    return TIER_CODE["pinned"] if meta.get("pinned") else TIER_CODE.get(meta.get("tier"), 0)


def row_columns(records: list[dict], doc_len: np.ndarray, groups: np.ndarray) -> dict:
    """Column values of a batch of records (all but the namespace code)."""
    m = len(records)
    t_event = np.fromiter((_time(r.get("t_event")) for r in records), np.float64, m)
    same = all(r.get("valid_from") == r.get("t_event") for r in records)  # the usual case
    return {
        "t_event": t_event,
        "valid_from": t_event.copy() if same else np.fromiter(
            (_time(r.get("valid_from")) for r in records), np.float64, m),
        "valid_to": np.fromiter((_time(r["valid_to"]) if r.get("valid_to") else math.inf
                                 for r in records), np.float64, m),
        "level": np.fromiter((LEVEL_CODE[r.get("level", "turn")] for r in records),
                             np.uint8, m),
        "group": groups.astype(np.uint32),
        "dl": doc_len.astype(np.uint32),
        "tokens": np.fromiter((r.get("tokens") or 0 for r in records), np.uint32, m),
        "status": np.fromiter((status_of(r) for r in records), np.uint8, m),
        "importance": np.fromiter((float((r.get("meta") or {}).get("importance") or 0.0)
                                   for r in records), np.float32, m),
        "tier": np.fromiter((tier_of(r) for r in records), np.uint8, m),
        "novelty": np.ones(m, dtype=np.float32),
        "degree": np.zeros(m, dtype=np.uint16),
    }


class LmdbStore:
    """An LMDB memstack store. Open one per process per path; writers take a sidecar lock."""

    name = "lmdb"

    def __init__(self, path: str, *, write: bool = False, create: bool = False,
                 lock_timeout: float = 30.0, map_size: int | None = None,
                 lazy_lock: bool = False):
        self.path = os.path.abspath(path)
        self.write = write
        self._lock_fd: int | None = None
        self._qdb = None
        self._late: dict[str, object] = {}
        # a lazy writer takes the writer lock per transaction, not for its lifetime, so a
        # long consolidate lets ingest in between its commits
        self.lazy_lock = lazy_lock and write
        self.lock_timeout = lock_timeout
        if not os.path.isdir(self.path):
            if not create:
                raise StoreError(f"{path}: no store here (create one with `memstack ingest`)")
            if os.path.lexists(self.path):
                raise StoreError(f"{path}: exists and is not a directory")
            os.makedirs(self.path, exist_ok=True)
        elif create and not os.path.exists(os.path.join(self.path, "data.mdb")) \
                and os.listdir(self.path):
            raise StoreError(f"{path}: directory exists and is not a memstack store")
        if not os.path.exists(os.path.join(self.path, "data.mdb")) and not (write and create):
            # checked before locking: opening without create must leave no files behind
            raise StoreError(f"{path}: no store here (create one with `memstack ingest`)")
        if write and not self.lazy_lock:
            self._lock(lock_timeout)
        want = map_size or int(os.environ.get("MEMSTACK_MAP_SIZE", DEFAULT_MAP_SIZE))
        try:
            self.env = lmdb.open(self.path, map_size=want, max_dbs=len(DB_NAMES) + 8,
                                 max_readers=1024, subdir=True, readonly=not write,
                                 max_spare_txns=4)
        except lmdb.Error as exc:
            self._unlock()
            raise StoreError(f"{path}: not a readable LMDB store ({_lmdb_reason(exc)})") from None
        self._check_file_size(path)
        try:
            self.env.reader_check()
            if write:
                self.dbs = {n: self.env.open_db(n.encode()) for n in DB_NAMES}
            else:
                self.dbs = {n: self.env.open_db(n.encode(), create=False) for n in DB_NAMES}
        except lmdb.NotFoundError:
            self.close()
            raise StoreError(f"{path}: not a memstack store (missing databases)") from None
        except lmdb.Error as exc:
            self.close()
            raise StoreError(f"{path}: corrupt store ({_lmdb_reason(exc)})") from None
        self.meta = self._read_meta()
        try:
            self.qvectors_db()
            for name in LATE_DBS:  # before any transaction, so every transaction can use them
                self.late_db(name)
        except lmdb.Error as exc:
            self.close()
            raise StoreError(f"{path}: corrupt store ({_lmdb_reason(exc)})") from None
        if self.meta.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
            self.close()
            raise StoreError(f"{path}: store schema {self.meta['schema']} is newer than this "
                             f"memstack supports ({SCHEMA_VERSION}); upgrade memstack")
        if not write and "schema" not in self.meta:
            self.close()
            raise StoreError(f"{path}: not a memstack store (no schema in meta)")

    def _check_file_size(self, path: str) -> None:
        """A data.mdb cut short (a partial copy) would SIGBUS on first read: refuse it."""
        info, psize = self.env.info(), self.env.stat()["psize"]
        need = (info["last_pgno"] + 1) * psize
        have = os.path.getsize(os.path.join(self.path, "data.mdb"))
        if have < need:
            self.close()
            raise StoreError(f"{path}: data.mdb is truncated ({have} bytes, the store needs "
                             f"{need}); restore it from a backup")

    # -- lifecycle ------------------------------------------------------------------
    def _lock(self, timeout: float) -> None:
        self._lock_fd = wait_flock(os.path.join(self.path, "writer.lock"), timeout,
                                   f"{self.path}: another writer holds the store")

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None
        self._unlock()

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def qvectors_db(self, create: bool = False):
        """The handle of the quantized-vector database, or None while it does not exist.

        Opened outside any transaction (a handle opened later is unusable in transactions
        begun before it), and retried by snapshot() when another process made it."""
        for attempt in range(3):
            if self._qdb is not None:
                break
            try:
                self._qdb = self.env.open_db(QVECTORS.encode(), create=create and self.write)
            except lmdb.NotFoundError:
                return None
            except lmdb.MapResizedError:  # another process grew the map: adopt its size
                self.env.set_mapsize(0)
                if attempt == 2:
                    raise
        return self._qdb

    def late_db(self, name: str, create: bool = False):
        """Handle of a database consolidate adds (None while it does not exist)."""
        if name not in self._late:
            for attempt in range(3):
                try:
                    self._late[name] = self.env.open_db(name.encode(),
                                                        create=create and self.write)
                    break
                except lmdb.NotFoundError:
                    return None
                except lmdb.MapResizedError:
                    self.env.set_mapsize(0)
                    if attempt == 2:
                        raise
        return self._late[name]

    def ensure_late_dbs(self) -> None:
        """Create consolidate's databases, outside any transaction (LMDB opens a database
        in a write transaction of its own)."""
        for name in LATE_DBS:
            if self.late_db(name, create=True) is None:
                raise StoreError(f"{self.path}: cannot create database {name!r}")

    # -- meta and identity -------------------------------------------------------------
    def _read_meta(self) -> dict:
        with self._read_txn() as txn:
            cur = txn.cursor(db=self.dbs["meta"])
            return {bytes(k).decode(): unpack(v) for k, v in cur}

    def _put_meta(self, txn, key: str, value) -> None:
        txn.put(key.encode(), pack(value), db=self.dbs["meta"])
        self.meta[key] = value

    @property
    def stats(self) -> dict:
        return self.meta.get("stats", {"n": 0, "total_len": 0, "not_current": 0})

    def check_identity(self, embedder: dict, tokenizer: dict | None) -> None:
        """Refuse to mix embedders or tokenizers in one store; a new store records them."""
        have = self.meta.get("embedder")
        if have is not None and not same_embedder(have, embedder):
            raise StoreError(f"{self.path}: store was built with embedder {have.get('spec')!r}, "
                             f"not {embedder.get('spec')!r}; use --embedder {have.get('spec')} "
                             f"or another store")
        have_tok = self.meta.get("tokenizer")
        if tokenizer is not None and have_tok is not None and \
                have_tok.get("encoding") != tokenizer.get("encoding"):
            raise StoreError(f"{self.path}: store counts tokens with {have_tok.get('encoding')!r}"
                             f", not {tokenizer.get('encoding')!r}; use --encoding "
                             f"{have_tok.get('requested')} or another store")
        if self.write and (have is None or (tokenizer and have_tok is None)):
            with self._write_txn() as txn:
                self._put_meta(txn, "schema", SCHEMA_VERSION)
                if have is None:
                    self._put_meta(txn, "embedder", embedder)
                if tokenizer and have_tok is None:
                    self._put_meta(txn, "tokenizer", tokenizer)
                if "stats" not in self.meta:
                    self._put_meta(txn, "stats", {"n": 0, "total_len": 0, "not_current": 0})

    # -- transactions -------------------------------------------------------------------
    @contextmanager
    def _read_txn(self, buffers: bool = False):
        for attempt in range(3):
            try:
                txn = self.env.begin(buffers=buffers)
                break
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)  # another process grew the map: adopt its size
                if attempt == 2:
                    raise
        try:
            yield txn
        finally:
            txn.abort()

    @contextmanager
    def _write_txn(self):
        if not self.write:
            raise StoreError(f"{self.path}: store opened read-only")
        if not self.lazy_lock or self._lock_fd is not None:
            with self.env.begin(write=True) as txn:
                yield txn
            return
        self._lock(self.lock_timeout)
        try:
            with self.env.begin(write=True) as txn:
                # another writer may have committed since we last looked
                self.meta = {bytes(k).decode(): unpack(v)
                             for k, v in txn.cursor(db=self.dbs["meta"])}
                yield txn
        finally:
            self._unlock()

    def _grow(self) -> None:
        size = self.env.info()["map_size"]
        self.env.set_mapsize(size * 2)

    def write_batch(self, fn) -> object:
        """Run fn(txn) in one write transaction; on a full map, double it and replay."""
        while True:
            saved = {k: v for k, v in self.meta.items()}
            try:
                with self._write_txn() as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self.meta = saved
                self._grow()
            except lmdb.MapResizedError:
                self.meta = saved
                self.env.set_mapsize(0)

    # -- writing ------------------------------------------------------------------------
    def add(self, batch: Prepared) -> tuple[int, int]:
        """Commit a prepared batch; returns (new, already present). Idempotent by id."""
        return self.write_batch(lambda txn: self._add(txn, batch))

    def _add(self, txn, b: Prepared) -> tuple[int, int]:
        dbs = self.dbs
        stats = dict(self.stats)
        n0 = stats["n"]
        ns_codes = dict(self.meta.get("ns_codes", {}))
        keep: list[int] = []
        seen: set[bytes] = set()
        get = txn.get
        docnos_db = dbs["docnos"]
        for i, rid in enumerate(b.ids):
            if rid in seen or get(rid, db=docnos_db) is not None:
                continue
            seen.add(rid)
            keep.append(i)
        m = len(keep)
        if m == 0:
            return 0, len(b)
        idx = np.asarray(keep, dtype=np.int64)
        docno = np.full(len(b), -1, dtype=np.int64)
        docno[idx] = np.arange(n0, n0 + m)
        rids = [b.ids[i] for i in keep]
        keys = [_U32.pack(d) for d in range(n0, n0 + m)]
        txn.cursor(db=dbs["records"]).putmulti(zip(rids, (b.packed[i] for i in keep),
                                                   strict=True))
        txn.cursor(db=dbs["docnos"]).putmulti(zip(rids, keys, strict=True))
        txn.cursor(db=dbs["ids"]).putmulti(zip(keys, rids, strict=True), append=True)
        ns = [b.ns[i] for i in keep]
        for name in dict.fromkeys(ns):
            if name not in ns_codes:
                ns_codes[name] = len(ns_codes)
        cols = {name: values[idx] for name, values in b.cols.items()}
        cols["ns"] = np.fromiter((ns_codes[x] for x in ns), np.uint32, m)
        for name, values in cols.items():
            self._write_rows(txn, "cols", name, n0, values)
        whole = m == len(b)  # nothing was already present: the batch's codes/moments hold
        self._write_vectors(txn, n0, b.vectors[idx],
                            codes=None if b.codes is None else b.codes[:, idx],
                            moments=b.moments if whole else None)
        seq = int(stats.get("segments", 0))
        self._write_postings(txn, b, docno, seq)
        stats["n"] = n0 + m
        stats["segments"] = seq + 1
        stats["total_len"] = int(stats["total_len"]) + int(cols["dl"].sum())
        stats["not_current"] = int(stats.get("not_current", 0)) + int(
            np.isfinite(cols["valid_to"]).sum())
        stats["archived"] = int(stats.get("archived", 0)) + int(
            np.count_nonzero(cols["status"]))
        self._put_meta(txn, "stats", stats)
        self._put_meta(txn, "ns_codes", ns_codes)
        return m, len(b) - m

    def _write_rows(self, txn, dbname: str, name: str, start: int, values: np.ndarray) -> None:
        db = self.dbs[dbname]
        pos = 0
        while pos < len(values):
            row = start + pos
            block, off = divmod(row, BLOCK_ROWS)
            take = min(BLOCK_ROWS - off, len(values) - pos)
            key = f"{name}:".encode() + _U32.pack(block)
            old = txn.get(key, db=db)
            arr = np.full(BLOCK_ROWS, LATE_COLUMNS.get(name, 0), dtype=values.dtype)
            if old is not None:
                arr[:] = np.frombuffer(old, dtype=values.dtype)
            arr[off : off + take] = values[pos : pos + take]
            txn.put(key, arr.tobytes(), db=db)
            pos += take

    def _write_vectors(self, txn, start: int, vecs: np.ndarray, codes: np.ndarray | None = None,
                       moments: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Append the batch's vectors as one contiguous segment (LMDB keeps a value's
        overflow pages together, so recall scans it with a single BLAS call), and their
        SimHash codes as another. Codes and moments come ready from prepare() when it could
        make them (in the worker processes), else they are made here."""
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        key = _U32.pack(start)
        vq = self.meta.get("vector_quant")
        if vq is None or vq["keep_float"]:
            txn.put(key, vecs.tobytes(), db=self.dbs["vectors"], append=True)
        if vq is not None:  # the quantized twin, in the same transaction: never behind
            from memstack.core.vector_quant import encode

            qdb = self.qvectors_db()
            if qdb is None:
                raise StoreError(f"{self.path}: meta names vector scheme {vq['scheme']!r} but "
                                 "the qvectors database is missing; run `memstack store verify`")
            txn.put(key, encode(vq["scheme"], vecs).tobytes(), db=qdb, append=True)
        if codes is None:
            codes = simhash(vecs, self.simhash_planes(vecs.shape[1], txn))
        txn.put(key, np.ascontiguousarray(codes).tobytes(), db=self.dbs["codes"], append=True)
        # first and second moments of all vectors: the exact mean and spread of any query's
        # cosine scores, without reading the vectors (recall's SimHash path needs them)
        add_sum, add_gram = moments if moments is not None else vector_moments(vecs)
        mom = self.meta.get("vec_moments")
        if mom is None or len(mom["sum"]) != vecs.shape[1]:
            dim = vecs.shape[1]
            mom = {"n": 0, "sum": np.zeros(dim), "gram": np.zeros((dim, dim))}
        self._put_meta(txn, "vec_moments", {"n": int(mom["n"]) + len(vecs),
                                            "sum": mom["sum"] + add_sum,
                                            "gram": mom["gram"] + add_gram})

    def simhash_planes(self, dim: int, txn=None) -> np.ndarray:
        """The store's random hyperplanes, made once and kept in meta (not re-derived from a
        seed, so codes never depend on a library's random stream)."""
        planes = self.meta.get("simhash")
        if planes is None or planes.shape != (CODE_BITS, dim):
            rng = np.random.default_rng(0x5EED)
            planes = rng.standard_normal((CODE_BITS, dim)).astype(np.float32)
            if txn is not None:
                self._put_meta(txn, "simhash", planes)
            else:
                self.write_batch(lambda t: self._put_meta(t, "simhash", planes))
        return planes

    def merge_segments(self, dbname: str, join=None, follow=None) -> int:
        """Fold runs of small segments (from small batches) into segments of up to
        SEGMENT_BYTES; big segments are left alone. Returns the number of runs merged.

        `follow` (a database handle) has segments under the same keys (the quantized
        twins of vectors): its runs are merged alike in the same transaction, so the keys
        of the two stay identical."""
        db = self.dbs[dbname] if dbname in self.dbs else self.qvectors_db()
        with self._read_txn() as txn:
            sizes = [(bytes(k), len(v)) for k, v in txn.cursor(db=db)]
        runs: list[list[bytes]] = []
        run: list[bytes] = []
        total = 0
        for key, size in sizes:
            if size >= SMALL_SEGMENT_BYTES or (run and total + size > SEGMENT_BYTES):
                if len(run) > 1:
                    runs.append(run)
                run, total = [], 0
                if size >= SMALL_SEGMENT_BYTES:
                    continue
            run.append(key)
            total += size
        if len(run) > 1:
            runs.append(run)
        if not runs:
            return 0

        def fn(txn, keys):
            parts = [bytes(txn.get(k, db=db)) for k in keys]
            data = join(parts) if join else b"".join(parts)
            for k in keys[1:]:
                txn.delete(k, db=db)
            txn.put(keys[0], data, db=db)
            if follow is not None:
                twins = [txn.get(k, db=follow) for k in keys]
                if all(t is not None for t in twins):  # else verify reports the gap
                    joined = b"".join(bytes(t) for t in twins)
                    for k in keys[1:]:
                        txn.delete(k, db=follow)
                    txn.put(keys[0], joined, db=follow)

        for keys in runs:  # one transaction per run keeps the dirty pages few
            self.write_batch(lambda txn, keys=keys: fn(txn, keys))
        return len(runs)

    def optimize(self, force: bool = False) -> bool:
        """Merge postings and vector segments once 8 batches have landed since the last
        merge (ingest calls this at its end, so small cron runs stay cheap)."""
        seq = int(self.stats.get("segments", 0))
        if not force and seq - int(self.meta.get("merged_at", 0)) < 8:
            return False
        self.merge_postings()
        vq = self.meta.get("vector_quant")
        if vq is not None and not vq["keep_float"]:
            self.merge_segments(QVECTORS)  # the quantized rows are all there is
        else:
            self.merge_segments("vectors", follow=self.qvectors_db() if vq else None)
        self.merge_segments("codes", join=_join_codes)
        self.write_batch(lambda txn: self._put_meta(txn, "merged_at", seq))
        return True

    def _write_postings(self, txn, b: Prepared, docno: np.ndarray, seq: int) -> None:
        """One new segment per term per batch: append-only, no read-modify-write.

        merge_postings() later folds runs of small segments together (as Lucene merges).
        """
        dn = docno[b.term_doc]
        ok = dn >= 0
        term_idx, dn, tf = b.term_idx[ok], dn[ok], b.term_tf[ok]
        order = np.lexsort((dn, term_idx))
        term_idx, dn, tf = term_idx[order], dn[order].astype(np.uint32), tf[order]
        bounds = np.flatnonzero(np.r_[True, term_idx[1:] != term_idx[:-1], True]).tolist()
        suffix = b"\x00" + _U32.pack(seq)
        dn_b, tf_b = dn.tobytes(), tf.astype(np.uint16).tobytes()
        items = []
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            term = b.term_stem[term_idx[s]].encode("utf-8")[:400]
            items.append((term + suffix, dn_b[4 * s : 4 * e] + tf_b[2 * s : 2 * e]))
        items.sort()
        txn.cursor(db=self.dbs["postings"]).putmulti(items)

    def merge_postings(self, min_segments: int = 8) -> int:
        """Fold each term's segments into as few as possible once it has min_segments.

        Recall reads every segment of a query term, so many small segments (from small
        ingest batches) cost latency. Returns the number of terms merged.
        """
        db = self.dbs["postings"]
        merged = 0
        with self._read_txn() as txn:
            todo: list[bytes] = []
            last, count = None, 0
            for key in txn.cursor(db=db).iternext(keys=True, values=False):
                term = bytes(key[:-5])
                if term != last:
                    if last is not None and count >= min_segments:
                        todo.append(last)
                    last, count = term, 0
                count += 1
            if last is not None and count >= min_segments:
                todo.append(last)
        for lo in range(0, len(todo), 2000):
            def fn(txn, terms=todo[lo : lo + 2000]):
                cur = txn.cursor(db=db)
                for term in terms:
                    prefix = term + b"\x00"
                    keys, docs, tfs = [], [], []
                    if cur.set_range(prefix):
                        for k, v in cur:
                            if len(k) != len(prefix) + 4 or k[: len(prefix)] != prefix:
                                break
                            n = len(v) // 6
                            keys.append(bytes(k))
                            docs.append(np.frombuffer(v, np.uint32, n).copy())
                            tfs.append(np.frombuffer(v, np.uint16, n, 4 * n).copy())
                    d, t = np.concatenate(docs), np.concatenate(tfs)
                    if -(-len(d) // SEGMENT_MAX) > len(keys):
                        continue  # already as compact as segments allow
                    for k in keys:
                        txn.delete(k, db=db)
                    for i, s in enumerate(range(0, len(d), SEGMENT_MAX)):
                        # the merged runs keep the order, named after the segments they replace
                        key = keys[min(i, len(keys) - 1)]
                        txn.put(key, d[s : s + SEGMENT_MAX].tobytes()
                                + t[s : s + SEGMENT_MAX].tobytes(), db=db)
                return len(terms)
            merged += self.write_batch(fn)
        return merged

    # -- consolidation: in-place marks, decisions, candidate index ---------------------
    def update_records(self, txn, records: list[dict],
                       before: dict[str, tuple[bool, int]] | None = None) -> int:
        """Rewrite records whose mutable fields changed (validity, status, links, meta) and
        their columns. Text, ids and times of events are never touched: only marks are added.
        Returns how many were written."""
        stats = dict(self.stats)
        docnos_db, rec_db = self.dbs["docnos"], self.dbs["records"]
        rows, vt, st = [], [], []
        for rec in records:
            key = rec["id"].encode()
            raw_d = txn.get(key, db=docnos_db)
            if raw_d is None:
                raise StoreError(f"{self.path}: memory {rec['id']} is not in the store")
            if before is not None and rec["id"] in before:  # the caller knows (no re-read)
                was_closed, was_status = before[rec["id"]]
            else:
                old = unpack(txn.get(key, db=rec_db))
                was_closed, was_status = bool(old.get("valid_to")), status_of(old)
            now_closed = bool(rec.get("valid_to"))
            stats["not_current"] = int(stats.get("not_current", 0)) + now_closed - was_closed
            stats["archived"] = int(stats.get("archived", 0)) + \
                (status_of(rec) != STATUS_ACTIVE) - (was_status != STATUS_ACTIVE)
            txn.put(key, pack(rec), db=rec_db)
            rows.append(_U32.unpack(bytes(raw_d))[0])
            vt.append(_time(rec["valid_to"]) if rec.get("valid_to") else math.inf)
            st.append(status_of(rec))
        if rows:
            at = np.asarray(rows, dtype=np.int64)
            self.set_cells(txn, "valid_to", at, np.asarray(vt, dtype=np.float64))
            self.set_cells(txn, "status", at, np.asarray(st, dtype=np.uint8))
            self._put_meta(txn, "stats", stats)
        return len(rows)

    def set_cells(self, txn, name: str, docnos: np.ndarray, values: np.ndarray) -> None:
        """Set one column at some docnos: one read-modify-write per block touched."""
        dtype = COLUMNS[name]
        docnos = np.asarray(docnos, dtype=np.int64)
        values = np.asarray(values, dtype=dtype)
        order = np.argsort(docnos, kind="stable")
        docnos, values = docnos[order], values[order]
        blocks = docnos // BLOCK_ROWS
        edges = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1], True]).tolist()
        db = self.dbs["cols"]
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            block = int(blocks[a])
            key = f"{name}:".encode() + _U32.pack(block)
            old = txn.get(key, db=db)
            if old is not None:
                arr = np.frombuffer(old, dtype=dtype).copy()
            else:
                arr = np.full(BLOCK_ROWS, LATE_COLUMNS.get(name, 0), dtype=dtype)
            arr[docnos[a:b] - block * BLOCK_ROWS] = values[a:b]
            txn.put(key, arr.tobytes(), db=db)

    def put_decisions(self, txn, decisions: list[dict]) -> int:
        """Store decision records (content addressed: an existing one is kept) and index
        them under every memory they name. Returns how many were new."""
        ddb, idb = self._late["decisions"], self._late["dec_index"]  # ensure_late_dbs()
        new = 0
        for dec in decisions:
            did = dec["id"].encode()
            if not txn.put(did, pack(dec), db=ddb, overwrite=False):
                continue
            new += 1
            for mid in dict.fromkeys([dec["subject"], *dec.get("objects", ())]):
                txn.put(mid.encode() + b"\x00" + did, b"", db=idb)
        return new

    def decisions_for(self, memory_id: str) -> list[dict]:
        """Every decision that names a memory, oldest first."""
        ddb, idb = self.late_db("decisions"), self.late_db("dec_index")
        if ddb is None or idb is None:
            return []
        prefix = memory_id.encode() + b"\x00"
        out = []
        with self._read_txn() as txn:
            cur = txn.cursor(db=idb)
            if cur.set_range(prefix):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    raw = txn.get(key[len(prefix):], db=ddb)
                    if raw is not None:
                        out.append(unpack(raw))
        return sorted(out, key=lambda d: (d.get("t", ""), d.get("seq", 0)))

    def iter_decisions(self) -> Iterator[dict]:
        """All decision records (in id order)."""
        ddb = self.late_db("decisions")
        if ddb is None:
            return
        with self._read_txn() as txn:
            for _, raw in txn.cursor(db=ddb):
                yield unpack(raw)

    def cindex_get(self, txn, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """Docnos filed under each candidate key (consolidate's blocking index)."""
        db = self.late_db("cindex")
        out: dict[bytes, np.ndarray] = {}
        if db is None:
            return out
        for k in keys:
            raw = txn.get(k, db=db)
            if raw is not None:
                out[k] = np.frombuffer(raw, dtype=np.uint32)
        return out

    def cindex_add(self, txn, items: dict[bytes, list[int]], cap: int = 512) -> None:
        """File docnos under keys; a key keeps its newest `cap` (a band every text shares
        says nothing and must not grow without bound)."""
        db = self._late["cindex"]  # ensure_late_dbs() made it
        for k, docs in items.items():
            old = txn.get(k, db=db)
            arr = np.asarray(docs, dtype=np.uint32)
            if old is not None:
                arr = np.concatenate([np.frombuffer(old, dtype=np.uint32), arr])
            txn.put(k, arr[-cap:].tobytes(), db=db)

    def write_column(self, txn, name: str, values: np.ndarray) -> None:
        """Rewrite a whole column (consolidate's importance and tiers)."""
        self._write_rows(txn, "cols", name, 0, np.asarray(values, dtype=COLUMNS[name]))

    @contextmanager
    def snapshot_in(self, txn) -> Iterator[Snapshot]:
        """A Snapshot view of a caller's (write) transaction."""
        raw = txn.get(b"stats", db=self.dbs["meta"])
        stats = unpack(raw) if raw is not None else {"n": 0}
        yield Snapshot(self, txn, stats)

    def put_meta(self, txn, key: str, value) -> None:
        """Set one meta entry inside a write transaction."""
        self._put_meta(txn, key, value)

    def add_in(self, txn, batch: Prepared) -> tuple[int, int]:
        """add() inside a caller's write transaction (consolidate commits new memories,
        marks and decisions together)."""
        return self._add(txn, batch)

    def log_access(self, docnos: list[int]) -> None:
        """Append recall hits to the access log (decay and importance use it)."""
        now = time.time_ns()

        def fn(txn):
            for i, d in enumerate(docnos):
                txn.put(struct.pack(">QI", now + i, d), b"", db=self.dbs["log"])

        self.write_batch(fn)

    # -- reading ------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A consistent read view; arrays it returns stay valid only inside the block."""
        for attempt in range(2):
            with self._read_txn(buffers=True) as txn:
                raw_vq = txn.get(b"vector_quant", db=self.dbs["meta"])
                if raw_vq is None or self._qdb is not None or attempt == 1:
                    yield self._snapshot(txn, raw_vq)
                    return
            # another process quantized since we opened: open its database (no transaction
            # may be open when the map is adopted), then begin again (a handle is unusable in
            # transactions begun before it)
            self.qvectors_db()

    def _snapshot(self, txn, raw_vq) -> Snapshot:
        raw = txn.get(b"stats", db=self.dbs["meta"])
        stats = unpack(raw) if raw is not None else {"n": 0, "total_len": 0, "not_current": 0}
        if not self.write and stats != self.meta.get("stats", stats):
            # another process wrote since we opened: namespaces, moments etc. moved on
            cur = txn.cursor(db=self.dbs["meta"])
            self.meta = {bytes(k).decode(): unpack(v) for k, v in cur}
        vq = unpack(raw_vq) if raw_vq is not None and self._qdb is not None else None
        return Snapshot(self, txn, stats, vector_quant=vq, qdb=self._qdb)

    def iter_records(self, batch: int = 4096) -> Iterator[tuple[int, dict, np.ndarray | None]]:
        """All records in docno order with their vectors, in short read transactions."""
        start = 0
        while True:
            with self.snapshot() as snap:
                n = snap.n
                if start >= n:
                    return
                end = min(n, start + batch)
                out = []
                for d in range(start, end):
                    out.append((d, snap.record(d), snap.vector(d)))
            yield from out
            start = end


class Snapshot:
    """Arrays and records of one read transaction."""

    def __init__(self, store: LmdbStore, txn, stats: dict, vector_quant: dict | None = None,
                 qdb=None):
        self.store = store
        self.txn = txn
        self.stats = stats
        self.n = int(stats.get("n", 0))
        self.dbs = store.dbs
        self.vector_quant = vector_quant  # the scheme, as this transaction sees it
        self.qdb = qdb
        # with the float segments dropped, vectors are read back from the quantized rows
        self.floats_dropped = vector_quant is not None and not vector_quant["keep_float"]

    def column(self, name: str) -> np.ndarray:
        dtype = COLUMNS[name]
        out = np.empty(self.n, dtype=dtype)
        db = self.dbs["cols"]
        prefix = f"{name}:".encode()
        for block in range(0, (self.n + BLOCK_ROWS - 1) // BLOCK_ROWS):
            raw = self.txn.get(prefix + _U32.pack(block), db=db)
            lo = block * BLOCK_ROWS
            take = min(BLOCK_ROWS, self.n - lo)
            if raw is None and name in LATE_COLUMNS:
                out[lo : lo + take] = LATE_COLUMNS[name]
                continue
            out[lo : lo + take] = np.frombuffer(raw, dtype=dtype, count=take)
        return out

    def has_column(self, name: str) -> bool:
        """Whether any block of a column is stored (late columns appear with consolidate)."""
        return self.n > 0 and self.txn.get(f"{name}:".encode() + _U32.pack(0),
                                           db=self.dbs["cols"]) is not None

    def column_at(self, name: str, docnos: np.ndarray) -> np.ndarray:
        """Values of one column at the given docnos, reading only the blocks they touch."""
        docnos = np.asarray(docnos, dtype=np.int64)
        if len(docnos) * 8 > self.n:
            return self.column(name)[docnos]
        dtype = COLUMNS[name]
        out = np.empty(len(docnos), dtype=dtype)
        if not len(docnos):
            return out
        order = None
        if len(docnos) > 1 and not (docnos[1:] >= docnos[:-1]).all():
            order = np.argsort(docnos, kind="stable")
            docnos = docnos[order]
        blocks = docnos // BLOCK_ROWS
        edges = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1], True]).tolist()
        db = self.dbs["cols"]
        prefix = f"{name}:".encode()
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            block = int(blocks[a])
            raw = self.txn.get(prefix + _U32.pack(block), db=db)
            if raw is None and name in LATE_COLUMNS:
                out[a:b] = LATE_COLUMNS[name]
                continue
            out[a:b] = np.frombuffer(raw, dtype=dtype)[docnos[a:b] - block * BLOCK_ROWS]
        if order is not None:
            result = np.empty_like(out)
            result[order] = out
            return result
        return out

    def newest_event(self) -> float:
        """The latest event time in the store (recency counts back from it)."""
        te = self.column("t_event")
        return float(np.nanmax(te)) if np.isfinite(te).any() else time.time()

    def qvector_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first docno, quantized rows as uint8 (rows, bytes a vector)) per segment,
        zero-copy."""
        if self.vector_quant is None:
            return
        bpv = int(self.vector_quant["bytes_per_vector"])
        for key, raw in self.txn.cursor(db=self.qdb):
            lo = _U32.unpack(bytes(key))[0]
            take = min(len(raw) // bpv, self.n - lo)
            if take <= 0:
                break
            yield lo, np.frombuffer(raw, dtype=np.uint8, count=take * bpv).reshape(take, bpv)

    def vector_blocks(self, dim: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first docno, rows) per segment, zero-copy views into the memory map (decoded
        copies when only quantized rows are kept)."""
        if self.floats_dropped:
            from memstack.core.vector_quant import decode

            for lo, rows in self.qvector_blocks():
                yield lo, decode(self.vector_quant["scheme"], rows, dim)
            return
        row_bytes = 4 * dim
        for key, raw in self.txn.cursor(db=self.dbs["vectors"]):
            lo = _U32.unpack(bytes(key))[0]
            take = min(len(raw) // row_bytes, self.n - lo)
            if take <= 0:
                break
            yield lo, np.frombuffer(raw, dtype=np.float32, count=take * dim).reshape(take, dim)

    def code_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first docno, codes of shape (words, rows)) per segment, zero-copy."""
        words = CODE_BITS // 64
        for key, raw in self.txn.cursor(db=self.dbs["codes"]):
            lo = _U32.unpack(bytes(key))[0]
            rows = len(raw) // (8 * words)
            take = min(rows, self.n - lo)
            if take <= 0:
                break
            yield lo, np.frombuffer(raw, dtype=np.uint64).reshape(words, rows)[:, :take]

    def vectors_at(self, docnos: np.ndarray, dim: int) -> np.ndarray:
        """Exact vectors of some docnos (any order), gathered segment by segment."""
        docnos = np.asarray(docnos, dtype=np.int64)
        order = np.argsort(docnos, kind="stable")
        sorted_d = docnos[order]
        out = np.zeros((len(docnos), dim), dtype=np.float32)
        if self.floats_dropped:  # decode only the rows asked for
            from memstack.core.vector_quant import decode

            for lo, rows in self.qvector_blocks():
                a, b = np.searchsorted(sorted_d, [lo, lo + len(rows)])
                if a < b:
                    out[order[a:b]] = decode(self.vector_quant["scheme"],
                                             rows[sorted_d[a:b] - lo], dim)
            return out
        for lo, rows in self.vector_blocks(dim):
            a, b = np.searchsorted(sorted_d, [lo, lo + len(rows)])
            if a < b:
                out[order[a:b]] = rows[sorted_d[a:b] - lo]
        return out

    def vector(self, docno: int, dim: int | None = None) -> np.ndarray | None:
        """One stored vector (a copy)."""
        dim = dim or (self.store.meta.get("embedder") or {}).get("dim")
        if self.floats_dropped and dim:
            return self._qvector(docno, dim)
        cur = self.txn.cursor(db=self.dbs["vectors"])
        found = cur.prev() if cur.set_range(_U32.pack(docno + 1)) else cur.last()
        if not found or not dim:
            return None
        start = _U32.unpack(bytes(cur.key()))[0]
        raw = cur.value()
        off = (docno - start) * dim * 4
        if start > docno or off + dim * 4 > len(raw):
            return None
        return np.frombuffer(raw, dtype=np.float32, count=dim, offset=off).copy()

    def _qvector(self, docno: int, dim: int) -> np.ndarray | None:
        """One vector decoded from its quantized row (the floats were dropped)."""
        from memstack.core.vector_quant import decode

        bpv = int(self.vector_quant["bytes_per_vector"])
        cur = self.txn.cursor(db=self.qdb)
        found = cur.prev() if cur.set_range(_U32.pack(docno + 1)) else cur.last()
        if not found or docno >= self.n:
            return None
        start = _U32.unpack(bytes(cur.key()))[0]
        raw = cur.value()
        off = (docno - start) * bpv
        if start > docno or off + bpv > len(raw):
            return None
        row = np.frombuffer(raw, dtype=np.uint8, count=bpv, offset=off).reshape(1, bpv)
        return decode(self.vector_quant["scheme"], row, dim)[0]

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        key = term.encode("utf-8")[:400] + b"\x00"
        cur = self.txn.cursor(db=self.dbs["postings"])
        docs, tfs = [], []
        if cur.set_range(key):
            for k, v in cur:
                if len(k) != len(key) + 4 or bytes(k[: len(key)]) != key:
                    break
                n = len(v) // 6
                docs.append(np.frombuffer(v, np.uint32, n))
                tfs.append(np.frombuffer(v, np.uint16, n, 4 * n))
        if not docs:
            return np.zeros(0, np.uint32), np.zeros(0, np.uint16)
        return np.concatenate(docs), np.concatenate(tfs)

    def doc_id(self, docno: int) -> str:
        return bytes(self.txn.get(_U32.pack(docno), db=self.dbs["ids"])).decode()

    def docno(self, rid: str) -> int | None:
        raw = self.txn.get(rid.encode(), db=self.dbs["docnos"])
        return None if raw is None else _U32.unpack(bytes(raw))[0]

    def record(self, docno: int) -> dict:
        rid = self.txn.get(_U32.pack(docno), db=self.dbs["ids"])
        return unpack(self.txn.get(bytes(rid), db=self.dbs["records"]))

    def record_by_id(self, rid: str) -> dict | None:
        raw = self.txn.get(rid.encode(), db=self.dbs["records"])
        return None if raw is None else unpack(raw)


def _lmdb_reason(exc: Exception) -> str:
    text = str(exc).split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__
