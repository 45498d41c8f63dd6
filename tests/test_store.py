"""The LMDB store: idempotent adds, map growth, identity, bad paths, read-only, index
consistency, posting merges, export/import, compaction and crash consistency.

Every store starts with a 64 KiB map (the `tiny_map` fixture, MEMSTACK_MAP_SIZE for children)
so the grow-and-replay path runs in nearly every test.
"""

from __future__ import annotations

import io
import math
import os
import re
import signal
import subprocess
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import TINY_MAP, memstack_cmd, subprocess_env, write_chat_jsonl

from memstack.core import admin
from memstack.core import store as store_mod
from memstack.core.analyze import get_analyzer
from memstack.core.embed import HashingEmbedder
from memstack.core.errors import StoreError
from memstack.core.ingest import IngestOptions, IngestStats, group_of, index_text, prepare
from memstack.core.ingest import ingest_items as ingest_items_
from memstack.core.parse import open_records
from memstack.core.store import COLUMNS, LEVEL_CODE, LmdbStore
from memstack.core.text import load_tokenizer
from memstack.formats.records import from_iso, memory_record
from memstack.formats.stream import RecordWriter

pytestmark = pytest.mark.usefixtures("tiny_map")

NAMESPACES = ("user:alice", "user:bob", "project:x")
LEVELS = ("turn", "chunk", "fact", "summary")


@pytest.fixture(scope="module")
def emb():
    return HashingEmbedder("dim=32")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("cl100k_base")


def make_records(lo: int, hi: int) -> list[dict]:
    """Distinct memories with every column exercised (times, validity, levels, archive)."""
    out = []
    for i in range(lo, hi):
        src = {"uri": f"/data/chat{i % 2}.jsonl", "offset": i, "session": f"s{i % 4}"}
        if i % 3 == 0:
            src["speaker"] = f"speaker{i % 5}"
        out.append(memory_record(
            ns=NAMESPACES[i % 3],
            text=f"Memory {i}: the {['red', 'green', 'blue'][i % 3]} fox visits town{i % 11} "
                 f"with item{i % 7}; weather report {i % 5} and cats cats cats.",
            tokens=0,
            t_event=None if i % 5 == 0 else f"2024-01-{1 + i % 28:02d}T10:{i % 60:02d}:00Z",
            t_ingest="2024-02-01T00:00:00Z", source=src, level=LEVELS[i % 4],
            valid_to="2024-03-01T00:00:00Z" if i % 6 == 0 else None,
            meta={"archived": True} if i % 9 == 0 else {"i": i}))
    return out


@contextmanager
def writer(path: Path, emb, tok, **kw):
    st = LmdbStore(str(path), write=True, create=True, **kw)
    try:
        st.check_identity(emb.identity(), tok.identity())
        yield st
    finally:
        st.close()


@contextmanager
def reader(path: Path):
    st = LmdbStore(str(path))
    try:
        yield st
    finally:
        st.close()


def all_postings(st: LmdbStore) -> tuple[dict[str, list[tuple[int, int]]], Counter]:
    """Every term's (docno, tf) pairs in key order, and its number of segments."""
    out: dict[str, list[tuple[int, int]]] = {}
    segs: Counter = Counter()
    with st.snapshot() as snap:
        for key, val in snap.txn.cursor(db=st.dbs["postings"]):
            term = bytes(key[:-5]).decode()
            n = len(val) // 6
            docs = np.frombuffer(val, np.uint32, n).tolist()
            tfs = np.frombuffer(val, np.uint16, n, 4 * n).tolist()
            out.setdefault(term, []).extend(zip(docs, tfs, strict=True))
            segs[term] += 1
    return out, segs


def expected_postings(records: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """What BM25 should hold for records stored with docnos 0..n-1 in this order."""
    an = get_analyzer()
    out: dict[str, list[tuple[int, int]]] = {}
    for d, rec in enumerate(records):
        for term, tf in Counter(an.terms(index_text(rec))).items():
            out.setdefault(term, []).append((d, min(tf, 65535)))
    return out


def dump(st: LmdbStore) -> tuple[list[dict], np.ndarray]:
    """All records in docno order and their vectors."""
    recs, vecs = [], []
    for _, rec, vec in st.iter_records(batch=50):
        recs.append(rec)
        vecs.append(vec)
    return recs, np.array(vecs)


def add_batches(st, records, emb, tok, size):
    vecs = []
    for lo in range(0, len(records), size):
        prep = prepare(records[lo : lo + size], emb, tok)
        assert st.add(prep) == (len(prep), 0)
        vecs.append(prep.vectors)
    return np.concatenate(vecs)


# -- adding ---------------------------------------------------------------------------------------
def test_add_is_idempotent(tmp_path, emb, tok):
    recs = make_records(0, 60)
    with writer(tmp_path / "s", emb, tok) as st:
        assert st.add(prepare(recs, emb, tok)) == (60, 0)
        before = (dict(st.stats), all_postings(st), dump(st)[0])
        assert st.add(prepare(make_records(0, 60), emb, tok)) == (0, 60)
        assert (dict(st.stats), all_postings(st), dump(st)[0]) == before
        # duplicates inside one batch count once; a mixed batch adds only what is new
        twice = make_records(60, 61) * 2
        assert st.add(prepare(twice, emb, tok)) == (1, 1)
        assert st.add(prepare(make_records(50, 80), emb, tok)) == (19, 11)
        assert st.stats["n"] == 80
        assert admin.verify(st) == []
        stored, _ = dump(st)
    assert [r["id"] for r in stored] == [r["id"] for r in make_records(0, 80)]
    with reader(tmp_path / "s") as st:
        assert all_postings(st)[0] == expected_postings(make_records(0, 80))


def test_map_grows_and_replays_batches(tmp_path, emb, tok):
    recs = make_records(0, 1400)
    with writer(tmp_path / "s", emb, tok) as st:
        assert st.env.info()["map_size"] == TINY_MAP
        vecs = add_batches(st, recs[:800], emb, tok, 40)
        # one batch far bigger than the map: several doublings inside one add()
        big = prepare(recs[800:], emb, tok)
        assert st.add(big) == (600, 0)
        vecs = np.concatenate([vecs, big.vectors])
        size = st.env.info()["map_size"]
        assert size > TINY_MAP * 16 and math.log2(size / TINY_MAP).is_integer()
        assert st.stats["n"] == 1400  # the failed attempts did not count twice
        assert admin.verify(st) == []
    with reader(tmp_path / "s") as st:
        assert st.stats["n"] == 1400 and admin.verify(st) == []
        stored, stored_vecs = dump(st)
        assert stored == recs
        assert np.array_equal(stored_vecs, vecs)


# -- identity -------------------------------------------------------------------------------------
def test_identity_mismatch_is_refused(tmp_path, emb, tok):
    with writer(tmp_path / "s", emb, tok) as st:
        st.add(prepare(make_records(0, 5), emb, tok))
        st.check_identity(emb.identity(), tok.identity())  # the same identity is fine
        other = HashingEmbedder("dim=64")
        with pytest.raises(StoreError) as info:
            st.check_identity(other.identity(), tok.identity())
        msg = str(info.value)
        assert "\n" not in msg and "hash:dim=32" in msg and "hash:dim=64" in msg
        assert "--embedder" in msg
        with pytest.raises(StoreError) as info:
            st.check_identity(emb.identity(), {"requested": "o200k_base",
                                               "encoding": "o200k_base"})
        msg = str(info.value)
        assert "\n" not in msg and "o200k_base" in msg and tok.actual in msg
    with reader(tmp_path / "s") as st:
        assert st.meta["embedder"] == emb.identity()
        assert st.meta["tokenizer"] == tok.identity()
        with pytest.raises(StoreError):
            st.check_identity(HashingEmbedder("dim=64").identity(), None)


# -- bad paths ------------------------------------------------------------------------------------
def one_line_store_error(path: Path, **kw) -> str:
    with pytest.raises(StoreError) as info:
        LmdbStore(str(path), **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


def test_missing_directory(tmp_path):
    for kw in ({}, {"write": True}):
        assert "no store here" in one_line_store_error(tmp_path / "nope", **kw)
    assert not (tmp_path / "nope").exists()


def test_directory_that_is_not_a_store(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    one_line_store_error(plain)
    one_line_store_error(plain, write=True)
    assert "not a memstack store" in one_line_store_error(plain, write=True, create=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_store_error(empty)
    one_line_store_error(empty, write=True)  # opening without create must not create
    assert sorted(os.listdir(plain)) == ["notes.txt"] and os.listdir(empty) == []
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_store_error(afile)
    assert "not a directory" in one_line_store_error(afile, write=True, create=True)


@pytest.mark.parametrize("size", [100, 4096, 3 * 4096 + 7, 65536])
def test_corrupt_data_file(tmp_path, size):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(np.random.default_rng(size).bytes(size))
    for kw in ({}, {"write": True}, {"write": True, "create": True}):
        assert "not a readable LMDB store" in one_line_store_error(bad, **kw)


def test_lmdb_environment_of_someone_else(tmp_path):
    env = lmdb.open(str(tmp_path / "foreign"))
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    assert "not a memstack store" in one_line_store_error(tmp_path / "foreign")


def test_verify_reports_a_corrupt_page(tmp_path, emb, tok):
    with writer(tmp_path / "s", emb, tok) as st:
        add_batches(st, make_records(0, 300), emb, tok, 100)
    data = tmp_path / "s" / "data.mdb"
    raw = data.read_bytes()
    # garble the header of every page (live or an older copy) that holds record 150
    pages = {m.start() // 4096 for m in re.finditer(rb"Memory 150: the", raw)}
    with open(data, "r+b") as f:
        for page in pages:
            f.seek(page * 4096)
            f.write(b"\xa5" * 16)
    with reader(tmp_path / "s") as st:
        problems = admin.verify(st)
    assert problems


# -- read-only ------------------------------------------------------------------------------------
def test_readonly_store_cannot_write(tmp_path, emb, tok):
    with writer(tmp_path / "s", emb, tok) as st:
        st.add(prepare(make_records(0, 10), emb, tok))
    before = (tmp_path / "s" / "data.mdb").read_bytes()
    with reader(tmp_path / "s") as st:
        assert not st.write
        with pytest.raises(StoreError, match="read-only"):
            st.add(prepare(make_records(10, 20), emb, tok))
        with pytest.raises(StoreError, match="read-only"):
            st.log_access([0, 1])
        with pytest.raises(lmdb.ReadonlyError):
            with st.env.begin(write=True) as txn:
                txn.put(b"x", b"y", db=st.dbs["meta"])
        st.check_identity(emb.identity(), tok.identity())  # matching: nothing to write
        assert st.stats["n"] == 10
    assert (tmp_path / "s" / "data.mdb").read_bytes() == before


# -- what a snapshot shows ------------------------------------------------------------------------
def test_snapshot_matches_what_was_added(tmp_path, emb, tok):
    recs = make_records(0, 150)
    with writer(tmp_path / "s", emb, tok) as st:
        vecs = add_batches(st, recs, emb, tok, 37)
    an = get_analyzer()
    with reader(tmp_path / "s") as st, st.snapshot() as snap:
        assert snap.n == 150
        codes = st.meta["ns_codes"]
        assert sorted(codes) == sorted(NAMESPACES)
        for d, rec in enumerate(recs):
            assert snap.doc_id(d) == rec["id"] and snap.docno(rec["id"]) == d
            assert snap.record(d) == rec == snap.record_by_id(rec["id"])
            assert np.array_equal(snap.vector(d), vecs[d])
        assert snap.docno("0" * 32) is None and snap.record_by_id("0" * 32) is None
        got = {name: snap.column(name) for name in COLUMNS}
        for name, values in got.items():
            assert values.dtype == COLUMNS[name] and len(values) == 150
        want_time = [from_iso(r["t_event"]) if r["t_event"] else math.nan for r in recs]
        assert np.array_equal(got["t_event"], want_time, equal_nan=True)
        assert got["valid_from"].tolist() == [from_iso(r["valid_from"]) for r in recs]
        assert got["valid_to"].tolist() == [from_iso(r["valid_to"]) if r["valid_to"]
                                            else math.inf for r in recs]
        assert got["ns"].tolist() == [codes[r["ns"]] for r in recs]
        assert got["level"].tolist() == [LEVEL_CODE[r["level"]] for r in recs]
        assert got["group"].tolist() == [group_of(r) for r in recs]
        assert got["tokens"].tolist() == tok.count([r["text"] for r in recs])
        assert got["dl"].tolist() == [len(an.terms(index_text(r))) for r in recs]
        assert got["status"].tolist() == [int(bool(r["meta"].get("archived"))) for r in recs]
        rows = np.concatenate([blk for _, blk in snap.vector_blocks(emb.dim)])
        assert np.array_equal(rows, vecs)
        expected = expected_postings(recs)
        for term, pairs in expected.items():
            docs, tfs = snap.postings(term)
            assert list(zip(docs.tolist(), tfs.tolist(), strict=True)) == pairs, term
        d0, t0 = snap.postings("nosuchterm")
        assert len(d0) == len(t0) == 0
        assert snap.stats["total_len"] == int(got["dl"].sum())
    with reader(tmp_path / "s") as st:
        assert all_postings(st)[0] == expected  # and no term that should not be there


# -- posting merges -------------------------------------------------------------------------------
@pytest.mark.parametrize("segment_max", [None, 40])
def test_merge_postings_keeps_content(tmp_path, emb, tok, monkeypatch, segment_max):
    if segment_max:  # a tiny SEGMENT_MAX makes the merged lists split across segments
        monkeypatch.setattr(store_mod, "SEGMENT_MAX", segment_max)
    recs = make_records(0, 240)
    with writer(tmp_path / "s", emb, tok) as st:
        add_batches(st, recs, emb, tok, 20)  # 12 batches: common terms have 12 segments
        before, segs = all_postings(st)
        many = {t for t, n in segs.items() if n >= 8}
        assert len(many) >= 5 and max(segs.values()) == 12
        merged = st.merge_postings(min_segments=8)
        after, segs_after = all_postings(st)
        assert after == before  # exactly the same postings, term by term
        assert merged == len(many)
        assert sum(segs_after.values()) < sum(segs.values())
        for term in segs:
            if term in many:
                cap = segment_max or store_mod.SEGMENT_MAX
                assert segs_after[term] == -(-len(before[term]) // cap), term
            else:
                assert segs_after[term] == segs[term], term
        with st.snapshot() as snap:
            for term in many:
                docs, _ = snap.postings(term)
                assert np.all(np.diff(docs.astype(np.int64)) > 0)
        assert st.merge_postings(min_segments=8) == 0  # nothing left to merge
        assert all_postings(st)[0] == before
        # later batches append after the merged segments
        more = make_records(240, 300)
        add_batches(st, more, emb, tok, 30)
        assert all_postings(st)[0] == expected_postings(recs + more)
        assert admin.verify(st) == []


# -- export / import / compact --------------------------------------------------------------------
def test_export_then_import_gives_identical_records(tmp_path, emb, tok):
    recs = make_records(0, 130)
    with writer(tmp_path / "a", emb, tok) as st:
        add_batches(st, recs, emb, tok, 50)
    with reader(tmp_path / "a") as st:
        want_recs, want_vecs = dump(st)
        want_post = all_postings(st)[0]
        streams = {}
        for fmt in ("msgpack", "jsonl"):
            buf = io.BytesIO()
            meta = {"embedder": st.meta["embedder"], "tokenizer": st.meta["tokenizer"]}
            with RecordWriter(buf, fmt, meta=meta) as w:
                for rec in admin.export(st):
                    w.write(rec)
            streams[fmt] = buf.getvalue()
    for fmt, data in streams.items():
        dest = tmp_path / f"b-{fmt}"
        for attempt in range(2):  # the second import is a no-op
            with writer(dest, emb, tok) as st:
                meta, items = open_records(io.BufferedReader(io.BytesIO(data)), "dump")
                assert meta["embedder"] == emb.identity()
                stats = IngestStats()
                ingest_items_(items, "dump", embedder=emb, tokenizer=tok, store=st, out=None,
                              opts=IngestOptions(batch_size=17), stats=stats)
                assert (stats.new, stats.present) == ((130, 0) if attempt == 0 else (0, 130))
        with reader(dest) as st:
            got_recs, got_vecs = dump(st)
            assert got_recs == want_recs
            assert np.array_equal(got_vecs, want_vecs)
            assert all_postings(st)[0] == want_post
            assert admin.verify(st) == []


def test_compact_copy_verifies_and_is_equal(tmp_path, emb, tok):
    with writer(tmp_path / "a", emb, tok) as st:
        add_batches(st, make_records(0, 200), emb, tok, 25)
        st.merge_postings(min_segments=2)  # leaves free pages behind for compaction
    with reader(tmp_path / "a") as st:
        size = admin.compact(st, str(tmp_path / "copy"))
        with pytest.raises(StoreError, match="already exists"):
            admin.compact(st, str(tmp_path / "copy"))
        want = dump(st), all_postings(st)[0], admin.stats(st)["memories"]
    assert size == os.path.getsize(tmp_path / "copy" / "data.mdb")
    assert size <= os.path.getsize(tmp_path / "a" / "data.mdb")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".memstack-compact-")]
    with reader(tmp_path / "copy") as st:
        assert admin.verify(st) == []
        (recs, vecs), post, n = dump(st), all_postings(st)[0], admin.stats(st)["memories"]
    assert recs == want[0][0] and np.array_equal(vecs, want[0][1])
    assert post == want[1] and n == want[2] == 200
    with writer(tmp_path / "copy", emb, tok) as st:  # the copy is a working store
        assert st.add(prepare(make_records(200, 210), emb, tok)) == (10, 0)


# -- crash consistency ----------------------------------------------------------------------------
def committed(path: Path) -> int:
    """Memories committed so far, or -1 while there is no readable store yet."""
    try:
        with reader(path) as st:
            return int(st.stats["n"])
    except StoreError:
        return -1


def test_sigkill_mid_ingest_leaves_a_consistent_store(tmp_path, run_memstack):
    lines = 6000
    big = write_chat_jsonl(tmp_path / "big.jsonl", lines)
    store = tmp_path / "S"
    args = ["ingest", str(big), "--store", str(store), "--batch-size", "200", "--workers", "1"]
    proc = subprocess.Popen([*memstack_cmd(), *args], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while committed(store) < 600 and proc.poll() is None:
            assert time.monotonic() < deadline, "ingest made no progress"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "ingest finished before it could be killed"
    at_kill = committed(store)
    assert 600 <= at_kill < lines and at_kill % 200 == 0  # whole batches only
    done = run_memstack("store", "verify", "--store", str(store))
    assert done.returncode == 0, done.stderr.decode()
    again = run_memstack(*args)
    assert again.returncode == 0, again.stderr.decode()
    assert f"{lines - at_kill} new, {at_kill} already present, 0 bad" in again.stderr.decode()
    with reader(store) as st:
        assert admin.stats(st)["memories"] == lines
        recs, _ = dump(st)
        assert len({r["id"] for r in recs}) == lines  # no duplicates
        assert sorted(int(r["text"].split()[1]) for r in recs) == list(range(lines))
        assert admin.verify(st) == []
