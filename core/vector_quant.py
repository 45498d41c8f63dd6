"""Quantized copies of a store's vectors: recall scans 4-32x fewer bytes, then re-ranks exactly.

The point is the memory a scan touches (RAM, page cache, stores bigger than RAM); in numpy the
int8 and q4 scans cost more CPU per row than a float32 BLAS call, so latency drops only once
the floats would not stay cached (see benchmarks/bench_vectors.py).

A scheme (int8, q4 or binary) is set once per store with quantize_vectors(); from then on
every float32 segment in `vectors` has a twin in `qvectors` under the same key (first docno)
holding the same rows, fixed-size, row-major, so segments join by concatenation like the
floats do. ingest writes the twin in the same transaction as the float segment and optimize()
merges both over the same runs, so the copy never falls behind or drifts apart.

Row layouts (dim d, little-endian):
  int8    float32 scale (max|v|/127), then d int8 codes            4 + d bytes
  q4      float32 scale, float32 offset (min), then ceil(d/2) bytes: the low nibble holds
          element j, the high nibble element j + ceil(d/2) (two contiguous halves, so a
          scan multiplies each half with half of q, no interleaving) 8 + ceil(d/2) bytes
  binary  sign bits of the vector after a fixed random rotation, np.packbits order
                                                                     ceil(d/8) bytes

Binary codes are scored asymmetrically: the (rotated) float query against the +-1 signs, by
byte lookup tables. Plain sign bits compared by Hamming distance lose too much on sparse
embeddings (the hashing embedder leaves a third of a document's and most of a query's
coordinates at zero): on 5,000 synthetic turns, recall@10 after re-ranking 200 candidates
was 0.36 for Hamming on raw signs, 0.81 for the float query on raw signs, 0.94 with the
rotation. The rotation (three rounds of random signs and a Walsh-Hadamard transform) spreads
every vector over all coordinates; its signs come from a fixed integer hash, so codes never
depend on a library's random stream, and nothing needs storing.

With keep_float=False the float segments are dropped (int8 and q4 only: binary codes are
too coarse to stand in for vectors); every reader then gets dequantized vectors instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from memstack.core.errors import ConfigError, StoreError
from memstack.core.store import LmdbStore, Snapshot

SCHEMES = ("int8", "q4", "binary")
OFF = ("none", "float")
META_KEY = "vector_quant"
PENDING_KEY = "vector_quant_pending"  # the scheme a started, unfinished quantize is building
META_VERSION = 1
CHUNK = 4096  # rows unpacked at a time: the buffers stay in L2 cache
WRITE_BYTES = 64 << 20  # quantized bytes per write transaction while quantizing a store


def check_scheme(scheme: str) -> str | None:
    """The canonical scheme name, or None for none/float (no quantized copy)."""
    name = (scheme or "").strip().lower()
    if name in OFF:
        return None
    if name not in SCHEMES:
        raise ConfigError(f"unknown vector scheme {scheme!r}; use one of "
                          f"{', '.join(SCHEMES + OFF)}")
    return name


def bytes_per_vector(scheme: str, dim: int) -> int:
    if scheme == "int8":
        return 4 + dim
    if scheme == "q4":
        return 8 + (dim + 1) // 2
    if scheme == "binary":
        return (dim + 7) // 8
    raise ConfigError(f"unknown vector scheme {scheme!r}")


# -- codecs: whole batches at once, rows × bytes_per_vector uint8 ------------------------------
def encode(scheme: str, vecs: np.ndarray) -> np.ndarray:
    """Quantize float vectors (m, d) into rows of bytes (m, bytes_per_vector)."""
    v = np.ascontiguousarray(vecs, dtype=np.float32)
    m, dim = v.shape
    out = np.empty((m, bytes_per_vector(scheme, dim)), dtype=np.uint8)
    if scheme == "binary":
        out[:] = np.packbits(rotate(v) > 0, axis=1)
        return out
    if scheme == "int8":
        scale = (np.abs(v).max(axis=1, initial=0.0) / 127.0).astype(np.float32)
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        codes = np.clip(np.rint(v * inv[:, None]), -127, 127).astype(np.int8)
        out[:, :4] = scale.view(np.uint8).reshape(m, 4)
        out[:, 4:] = codes.view(np.uint8)
        return out
    if scheme == "q4":
        lo = v.min(axis=1, initial=np.inf) if dim else np.zeros(m, np.float32)
        hi = v.max(axis=1, initial=-np.inf) if dim else np.zeros(m, np.float32)
        scale = ((hi - lo) / 15.0).astype(np.float32)
        offset = lo.astype(np.float32)
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        half = (dim + 1) // 2
        codes = np.zeros((m, 2 * half), dtype=np.uint8)
        codes[:, :dim] = np.clip(np.rint((v - offset[:, None]) * inv[:, None]), 0, 15)
        out[:, :4] = scale.view(np.uint8).reshape(m, 4)
        out[:, 4:8] = offset.view(np.uint8).reshape(m, 4)
        out[:, 8:] = codes[:, :half] | (codes[:, half:] << 4)
        return out
    raise ConfigError(f"unknown vector scheme {scheme!r}")


def _f32_column(rows: np.ndarray, at: int) -> np.ndarray:
    """One float32 field of every row (rows are not 4-aligned in general: copy it out)."""
    return np.ascontiguousarray(rows[:, at : at + 4]).view(np.float32).reshape(len(rows))


def decode(scheme: str, rows: np.ndarray, dim: int) -> np.ndarray:
    """Dequantize rows of bytes back to float32 vectors (m, d)."""
    m = len(rows)
    if scheme == "int8":
        return rows[:, 4 : 4 + dim].view(np.int8).astype(np.float32) * \
            _f32_column(rows, 0)[:, None]
    if scheme == "q4":
        half = (dim + 1) // 2
        codes = np.empty((m, 2 * half), dtype=np.float32)
        codes[:, :half] = rows[:, 8:] & 15
        codes[:, half:] = rows[:, 8:] >> 4
        return codes[:, :dim] * _f32_column(rows, 0)[:, None] + _f32_column(rows, 4)[:, None]
    if scheme == "binary":  # a rough reconstruction: the signs, rotated back
        signs = 2.0 * np.unpackbits(rows, axis=1, count=dim).astype(np.float32) - 1.0
        v = rotate(signs, inverse=True)
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.where(norm > 0, norm, 1.0).astype(np.float32)
    raise ConfigError(f"unknown vector scheme {scheme!r}")


ROTATION_ROUNDS = 3
_ROTATION_SEED = 0x5EC7_0B175


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed integer hash (uint64 arithmetic wraps): the rotation's random signs."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _signs(size: int) -> np.ndarray:
    """+-1 of shape (ROTATION_ROUNDS, size)."""
    idx = np.arange(ROTATION_ROUNDS * size, dtype=np.uint64) + np.uint64(_ROTATION_SEED)
    bit = (_splitmix64(idx) >> np.uint64(63)).astype(np.float32)
    return (1.0 - 2.0 * bit).reshape(ROTATION_ROUNDS, size)


def _fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal Walsh-Hadamard transform along the last axis (a power of two long)."""
    m, size = x.shape
    h = 1
    while h < size:
        y = x.reshape(m, size // (2 * h), 2, h)
        x = np.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), axis=2)
        h *= 2
    return x.reshape(m, size) * np.float32(1.0 / math.sqrt(size))


def rotate(v: np.ndarray, inverse: bool = False) -> np.ndarray:
    """A fixed random rotation of rows (zero-padded to a power of two, then cut back to d
    coordinates): O(d log d) a row, the same on every machine."""
    v = np.asarray(v, dtype=np.float32)
    m, dim = v.shape
    size = 1 << max(0, (dim - 1).bit_length())
    x = np.zeros((m, size), dtype=np.float32)
    x[:, :dim] = v
    signs = _signs(size)
    rounds = range(ROTATION_ROUNDS)
    for r in (reversed(rounds) if inverse else rounds):
        x = _fwht(x) * signs[r] if inverse else _fwht(x * signs[r])
    return np.ascontiguousarray(x[:, :dim])


# bit i (big-endian, as np.packbits) of every byte value: the lookup tables' basis
_BYTE_BITS = ((np.arange(256)[:, None] >> (7 - np.arange(8))) & 1).astype(np.float32)


def _binary_scores(rows: np.ndarray, dim: int, q: np.ndarray, out: np.ndarray) -> None:
    """Rotated float query . +-1 signs, through one 256-entry table per code byte.

    Scaled by sqrt(pi / 2) / sqrt(d), the expected ratio to the cosine, so the estimate
    reads like a cosine."""
    m, nb = rows.shape
    qr = np.zeros(8 * nb, dtype=np.float32)
    qr[:dim] = rotate(q[None, :])[0]
    table = (_BYTE_BITS @ qr.reshape(nb, 8).T).T.copy()  # (nb, 256): sum of q over set bits
    c = min(CHUNK * 2, m)
    for a in range(0, m, c):
        b = min(m, a + c)
        cols = rows[a:b].T.copy()  # byte-major: each take() reads one contiguous column
        acc = out[a:b]
        acc[:] = 0
        for p in range(nb):  # one pass per code byte (16 for 128 dims), never per row
            acc += table[p].take(cols[p])
    out *= np.float32(2.0 * math.sqrt(math.pi / 2) / math.sqrt(max(dim, 1)))
    out -= np.float32(qr.sum(dtype=np.float64) * math.sqrt(math.pi / 2) / math.sqrt(max(dim, 1)))


def scores(scheme: str, rows: np.ndarray, dim: int, q: np.ndarray,
           out: np.ndarray | None = None) -> np.ndarray:
    """Approximate dot products of q with every row's vector, without materialising them.

    int8 and q4 multiply the codes with q by einsum, which casts as it goes (a matmul would
    need a float copy, and on a busy machine BLAS threads cost more than they save on these
    small calls), then scale (and offset) per row; binary sums the rotated query over each
    row's signs."""
    m = len(rows)
    out = np.empty(m, dtype=np.float32) if out is None else out
    if m == 0:
        return out
    q = np.ascontiguousarray(q, dtype=np.float32)
    if scheme == "binary":
        _binary_scores(rows, dim, q, out)
        return out
    if scheme == "int8":  # einsum casts as it goes: no float copy of the codes
        np.einsum("ij,j->i", rows[:, 4 : 4 + dim].view(np.int8), q, out=out)
    elif scheme == "q4":  # the two nibble halves against the two halves of q
        half = (dim + 1) // 2
        qq = np.zeros(2 * half, dtype=np.float32)
        qq[:dim] = q
        c = min(CHUNK, m)
        nib = np.empty((c, half), dtype=np.uint8)
        tmp = np.empty(c, dtype=np.float32)
        for a in range(0, m, c):
            b = min(m, a + c)
            np.bitwise_and(rows[a:b, 8:], 15, out=nib[: b - a])
            np.einsum("ij,j->i", nib[: b - a], qq[:half], out=out[a:b])
            np.right_shift(rows[a:b, 8:], 4, out=nib[: b - a])
            np.einsum("ij,j->i", nib[: b - a], qq[half:], out=tmp[: b - a])
            out[a:b] += tmp[: b - a]
    else:
        raise ConfigError(f"unknown vector scheme {scheme!r}")
    out *= _f32_column(rows, 0)
    if scheme == "q4":
        out += _f32_column(rows, 4) * np.float32(q.sum(dtype=np.float64))
    return out


# -- scanning ------------------------------------------------------------------------------------
def scan(snap: Snapshot, q: np.ndarray) -> np.ndarray:
    """Approximate scores of every memory from the quantized segments (zero where none)."""
    vq = snap.vector_quant
    if vq is None:
        raise StoreError(f"{snap.store.path}: the store has no quantized vectors")
    out = np.zeros(snap.n, dtype=np.float32)
    for lo, rows in snap.qvector_blocks():
        scores(vq["scheme"], rows, vq["dim"], q, out=out[lo : lo + len(rows)])
    return out


def float_scan(snap: Snapshot, q: np.ndarray) -> np.ndarray:
    """Exact scores of every memory from the float32 segments (what recall does unquantized)."""
    out = np.zeros(snap.n, dtype=np.float32)
    for lo, block in snap.vector_blocks(len(q)):
        np.matmul(block, q, out=out[lo : lo + len(block)])
    return out


def default_candidates(k: int, scheme: str | None) -> int:
    """How many of the scan's best to re-rank. int8 and q4 rank almost exactly (recall@10 of
    1.0 from 100 candidates on 100,000 synthetic turns); binary needs more: 0.87 from 200,
    0.95 from 500, 0.98 from 1,000 (re-ranking 1,000 vectors reads 0.5 MB)."""
    return max(100 * k, 1000) if scheme == "binary" else max(10 * k, 200)


def vector_top(snap: Snapshot, q: np.ndarray, k: int = 10, *, method: str = "auto",
               candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vector-only top k (docnos, scores), best first: the yardstick for a scheme's recall.

    method "float" scans the float32 segments exactly; "auto" scans the quantized copy when
    the store has one, takes the best `candidates` and, when float vectors are kept, re-ranks
    them by their exact scores (so returned scores are exact)."""
    q = np.asarray(q, dtype=np.float32)
    vq = snap.vector_quant
    if method not in ("auto", "float"):
        raise ConfigError(f"unknown method {method!r} (auto or float)")
    if method == "float" or vq is None:
        if vq is not None and not vq["keep_float"]:
            raise StoreError(f"{snap.store.path}: float vectors were dropped; only the "
                             f"{vq['scheme']} copy can be scanned")
        s = float_scan(snap, q)
        top = _best(s, k)
        return top, s[top]
    s = scan(snap, q)
    if not vq["keep_float"]:
        top = _best(s, k)
        return top, s[top]
    cand = _best(s, candidates or default_candidates(k, vq["scheme"]))
    exact = snap.vectors_at(cand, len(q)) @ q
    order = np.lexsort((cand, -exact))[:k]
    return cand[order], exact[order]


def _best(s: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (ties by docno)."""
    k = min(k, len(s))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
    return idx[np.lexsort((idx, -s[idx]))]


# -- quantizing a store ----------------------------------------------------------------------------
def _segments(store: LmdbStore, dbname: str) -> list[tuple[bytes, int]]:
    """(key, value length) of every segment of one database, in key order."""
    db = store.dbs.get(dbname) if dbname != "qvectors" else store.qvectors_db()
    if db is None:
        return []
    with store._read_txn(buffers=True) as txn:
        return [(bytes(k), len(v)) for k, v in txn.cursor(db=db)]


def _summary(store: LmdbStore, scheme: str | None, dim: int, changed: bool) -> dict:
    vq = store.meta.get(META_KEY)
    n = int(store.stats.get("n", 0))
    float_bytes = sum(s for _, s in _segments(store, "vectors"))
    quant_bytes = sum(s for _, s in _segments(store, "qvectors")) if vq else 0
    full = n * dim * 4
    return {"scheme": scheme or "float", "dim": dim, "vectors": n,
            "bytes_per_vector": bytes_per_vector(scheme, dim) if scheme else 4 * dim,
            "keep_float": bool(vq["keep_float"]) if vq else True,
            "float_bytes": float_bytes, "quant_bytes": quant_bytes,
            "ratio": round(full / quant_bytes, 3) if quant_bytes else 1.0, "changed": changed}


def quantize_vectors(store: LmdbStore, scheme: str, *, keep_float: bool = True) -> dict:
    """Give an open, writable store a quantized copy of its vectors (or remove it: none/float).

    Idempotent and resumable: segments already quantized under the same key and size are
    kept, so a re-run writes nothing and an interrupted run carries on. The scheme lands in
    meta in the last transaction, so readers use the floats until the copy is complete."""
    name = check_scheme(scheme)
    if not store.write:
        raise StoreError(f"{store.path}: store opened read-only")
    dim = int((store.meta.get("embedder") or {}).get("dim") or 0)
    if not dim:
        raise StoreError(f"{store.path}: the store has no vectors yet (ingest something first)")
    cur = store.meta.get(META_KEY)
    if name is None and not keep_float:
        raise ConfigError("keep_float=False needs a scheme (int8 or q4)")
    if name == "binary" and not keep_float:
        raise ConfigError("binary codes cannot stand in for float vectors; keep them "
                          "(no --drop-float) or use int8 or q4")
    if cur is not None and not cur["keep_float"]:
        if name == cur["scheme"] and not keep_float:
            return _summary(store, name, dim, False)
        raise ConfigError(f"the float vectors of {store.path} were dropped when it was "
                          f"quantized to {cur['scheme']}; they cannot come back (rebuild the "
                          "store from its sources or from `memstack store export`)")
    want = None if name is None else {"scheme": name, "dim": dim,
                                      "bytes_per_vector": bytes_per_vector(name, dim),
                                      "keep_float": bool(keep_float), "v": META_VERSION}
    changed = False
    qdb = store.qvectors_db(create=name is not None)
    pending = store.meta.get(PENDING_KEY)
    same = cur is not None and (cur["scheme"], cur["dim"]) == (name, dim)
    if not same and not (cur is None and pending == name and name is not None):
        # another scheme (or none, or leftovers of an interrupted run for another scheme):
        # start from an empty copy, and say which scheme is being built so a re-run resumes
        if cur is not None or pending is not None or _segments(store, "qvectors") \
                or name is not None:
            def clear(txn):
                if qdb is not None:
                    txn.drop(qdb, delete=False)
                for key in (META_KEY, PENDING_KEY):
                    txn.delete(key.encode(), db=store.dbs["meta"])
                    store.meta.pop(key, None)
                if name is not None:
                    store._put_meta(txn, PENDING_KEY, name)
            store.write_batch(clear)
            changed = True
    if name is None:
        return _summary(store, None, dim, changed)
    bpv = want["bytes_per_vector"]
    floats = _segments(store, "vectors")
    have = dict(_segments(store, "qvectors"))
    rows_of = {k: size // (4 * dim) for k, size in floats}
    stale = [k for k, size in have.items() if rows_of.get(k, -1) * bpv != size]
    todo = [k for k, rows in rows_of.items() if have.get(k) != rows * bpv]
    if stale:
        def drop_stale(txn):
            for k in stale:
                txn.delete(k, db=qdb)
        store.write_batch(drop_stale)
        changed = True
    for keys in _batches(todo, [rows_of[k] * bpv for k in todo]):
        with store._read_txn(buffers=True) as txn:
            parts = [(k, encode(name, np.frombuffer(txn.get(k, db=store.dbs["vectors"]),
                                                    dtype=np.float32).reshape(-1, dim)))
                     for k in keys]

        def put(txn, parts=parts):
            for k, rows in parts:
                txn.put(k, rows.tobytes(), db=qdb)
        store.write_batch(put)
        changed = True
    if store.meta.get(META_KEY) != want or PENDING_KEY in store.meta:
        def finish(txn):
            if not want["keep_float"]:
                txn.drop(store.dbs["vectors"], delete=False)
            store._put_meta(txn, META_KEY, want)
            txn.delete(PENDING_KEY.encode(), db=store.dbs["meta"])
            store.meta.pop(PENDING_KEY, None)
        store.write_batch(finish)
        changed = True
    return _summary(store, name, dim, changed)


def _batches(keys: list[bytes], sizes: list[int]) -> Iterator[list[bytes]]:
    """Keys grouped so each write transaction holds about WRITE_BYTES of quantized rows."""
    run: list[bytes] = []
    total = 0
    for key, size in zip(keys, sizes, strict=True):
        if run and total + size > WRITE_BYTES:
            yield run
            run, total = [], 0
        run.append(key)
        total += size
    if run:
        yield run


def quantize_store_vectors(store_path: str, scheme: str, *, keep_float: bool = True,
                           lock_timeout: float = 30.0) -> dict:
    """Open the store at store_path as its writer (StoreBusy after lock_timeout seconds) and
    run quantize_vectors(); returns its summary (vectors, float_bytes, quant_bytes, ratio)."""
    check_scheme(scheme)  # a bad name fails before the lock is waited for
    with LmdbStore(store_path, write=True, lock_timeout=lock_timeout) as store:
        return quantize_vectors(store, scheme, keep_float=keep_float)


# -- stats and verification ----------------------------------------------------------------------
def describe(snap: Snapshot) -> dict:
    """The scheme and the bytes a vector scan reads, for `store stats`."""
    store = snap.store
    dim = int((store.meta.get("embedder") or {}).get("dim") or 0)
    float_bytes = sum(len(v) for _, v in snap.txn.cursor(db=store.dbs["vectors"]))
    vq = snap.vector_quant
    out = {"scheme": vq["scheme"] if vq else "float", "dim": dim, "float_bytes": float_bytes}
    if vq:
        quant = sum(len(v) for _, v in snap.txn.cursor(db=snap.qdb))
        out.update(bytes_per_vector=vq["bytes_per_vector"], quant_bytes=quant,
                   keep_float=vq["keep_float"],
                   scan_ratio=round(4 * dim / vq["bytes_per_vector"], 3))
    else:
        out["bytes_per_vector"] = 4 * dim
    return out


def verify(snap: Snapshot) -> list[str]:
    """Quantized segments must mirror the float ones: same keys, same rows, right sizes."""
    raw = snap.txn.get(META_KEY.encode(), db=snap.dbs["meta"])
    if raw is None:
        return []
    vq = snap.vector_quant
    if vq is None:
        return [f"{META_KEY}: meta names a scheme but the qvectors database is missing"]
    problems: list[str] = []
    dim, bpv = vq["dim"], vq["bytes_per_vector"]
    if bpv != bytes_per_vector(vq["scheme"], dim):
        return [f"qvectors: {bpv} bytes a vector in meta, {vq['scheme']} needs "
                f"{bytes_per_vector(vq['scheme'], dim)}"]
    qsegs = [(int.from_bytes(bytes(k), "big"), len(v)) for k, v in snap.txn.cursor(db=snap.qdb)]
    expect = 0
    for start, size in qsegs:
        if start != expect or size % bpv:
            problems.append(f"qvectors: segment at {start} breaks the sequence "
                            f"(expected {expect}, {size} bytes)")
            return problems
        expect = start + size // bpv
    if expect != snap.n:
        problems.append(f"qvectors: {expect} rows stored, stats say {snap.n}")
    if vq["keep_float"]:
        fsegs = [(int.from_bytes(bytes(k), "big"), len(v) // (4 * dim))
                 for k, v in snap.txn.cursor(db=snap.dbs["vectors"])]
        if fsegs != [(s, size // bpv) for s, size in qsegs]:
            problems.append(f"qvectors: {len(qsegs)} segments do not mirror the "
                            f"{len(fsegs)} float segments (re-run quantize with "
                            f"{vq['scheme']})")
    elif snap.txn.stat(snap.dbs["vectors"])["entries"]:
        problems.append("vectors: float segments remain although meta says they were dropped")
    return problems
