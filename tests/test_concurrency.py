"""Many processes, one store: writers queue or exit 75, readers never notice a writer, a
reader survives another process growing the map, killed readers leave no stale slots."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import memstack_cmd, subprocess_env, write_chat_jsonl

from memstack.core import admin
from memstack.core.errors import EXIT_BUSY, StoreBusy
from memstack.core.store import LmdbStore
from memstack.formats.stream import RecordReader

pytestmark = pytest.mark.usefixtures("tiny_map")

# Opens the store and then waits, deterministically, until its stdin is closed.
HOLD = """
import sys
from memstack.core.store import LmdbStore
mode = sys.argv[2]
st = LmdbStore(sys.argv[1], write=mode == "write", create=mode == "write")
if mode == "txn":  # a reader in the middle of a read transaction
    snap = st.snapshot()
    snap.__enter__()
print("ready", flush=True)
sys.stdin.read()
st.close()
"""


@contextmanager
def holding(path: Path, mode: str):
    """A helper process holding the store: 'write' (the writer lock), 'read' or 'txn'."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], env=subprocess_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line == b"ready\n", proc.stderr.read().decode()
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)


def ingest(path: Path, src: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*memstack_cmd(), "ingest", str(src), "--store", str(path),
                             "--batch-size", "200", "--workers", "1", *extra],
                            env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def memories(path: Path) -> int:
    with LmdbStore(str(path)) as st:
        assert admin.verify(st) == []
        return int(st.stats["n"])


@pytest.fixture
def small_store(tmp_path, run_memstack) -> Path:
    store = tmp_path / "S"
    src = write_chat_jsonl(tmp_path / "seed.jsonl", 300, start=100000)
    done = run_memstack("ingest", str(src), "--store", str(store))
    assert done.returncode == 0, done.stderr.decode()
    return store


def test_two_writers_queue_and_both_finish(tmp_path, small_store):
    a = write_chat_jsonl(tmp_path / "a.jsonl", 1500)
    b = write_chat_jsonl(tmp_path / "b.jsonl", 1500, start=1500)
    with holding(small_store, "write"):  # both start while the store is held: both wait
        procs = [ingest(small_store, a), ingest(small_store, b)]
        time.sleep(0.3)
        assert all(p.poll() is None for p in procs)
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        assert "1500 new, 0 already present" in err.decode()
    assert memories(small_store) == 3300


def test_busy_store_exits_75_and_changes_nothing(tmp_path, small_store, run_memstack):
    src = write_chat_jsonl(tmp_path / "a.jsonl", 200)
    with holding(small_store, "write"):
        busy = run_memstack("ingest", str(src), "--store", str(small_store), "--lock-timeout", "0")
        assert busy.returncode == EXIT_BUSY == 75
        err = busy.stderr.decode()
        assert err.count("\n") == 1 and "another writer" in err and "Traceback" not in err
        start = time.monotonic()
        waited = run_memstack("ingest", str(src), "--store", str(small_store),
                              "--lock-timeout", "0.6")
        assert waited.returncode == 75 and time.monotonic() - start >= 0.6
        with pytest.raises(StoreBusy) as info:  # the library says the same
            LmdbStore(str(small_store), write=True, lock_timeout=0)
        assert info.value.exit_code == 75
        # readers do not care about the writer lock
        found = run_memstack("recall", "--store", str(small_store), "city3", "--format", "jsonl")
        assert found.returncode == 0, found.stderr.decode()
        assert memories(small_store) == 300
    done = run_memstack("ingest", str(src), "--store", str(small_store), "--lock-timeout", "0")
    assert done.returncode == 0, done.stderr.decode()
    assert memories(small_store) == 500


def valid_hits(stdout: bytes) -> list[dict]:
    reader = RecordReader(io.BufferedReader(io.BytesIO(stdout)), "recall")
    hits = list(reader)
    assert hits and all(h["kind"] == "hit" and h["memory"]["kind"] == "memory" for h in hits)
    return hits


def test_readers_work_while_a_writer_ingests(tmp_path, small_store):
    src = write_chat_jsonl(tmp_path / "big.jsonl", 4000)
    writer = ingest(small_store, src)
    during, results = 0, []
    try:
        while writer.poll() is None and len(results) < 12:
            during += 1
            readers = [subprocess.Popen([*memstack_cmd(), "recall", "--store", str(small_store),
                                         f"item{n} city{n}", "-k", "5", "--format", "msgpack"],
                                        env=subprocess_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE) for n in range(2)]
            results += [(r, *r.communicate(timeout=60)) for r in readers]
    finally:
        _, werr = writer.communicate(timeout=120)
    assert writer.returncode == 0, werr.decode()
    assert during >= 1, "the writer finished before any reader started"
    for proc, out, err in results:
        assert proc.returncode == 0, err.decode()
        assert len(valid_hits(out)) == 5
    assert memories(small_store) == 4300


def test_open_reader_survives_map_growth_by_another_process(tmp_path, small_store):
    src = write_chat_jsonl(tmp_path / "big.jsonl", 3000)
    with LmdbStore(str(small_store)) as st:
        with st.snapshot() as snap:
            assert snap.n == 300
        mapped = st.env.info()["map_size"]
        writer = ingest(small_store, src)
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()
        with st.snapshot() as snap:  # the same open environment, after the file grew
            assert snap.n == 3300
            last = snap.record(snap.n - 1)
            assert last["text"].startswith("turn 2999 ")
            assert snap.vector(snap.n - 1) is not None
        assert st.env.info()["map_size"] > mapped  # it adopted the bigger map
        assert admin.verify(st) == []


def test_killed_readers_leave_no_stale_slots(tmp_path, small_store, run_memstack):
    with holding(small_store, "read"):  # keeps the environment open: no lock-file reset
        killed = []
        for _ in range(3):
            proc = subprocess.Popen([sys.executable, "-c", HOLD, str(small_store), "txn"],
                                    env=subprocess_env(), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            assert proc.stdout.readline() == b"ready\n"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            killed.append(proc.pid)
        with LmdbStore(str(small_store)) as st:  # opening reaps the dead readers' slots
            table = st.env.readers()
            for pid in killed:
                assert not any(line.split()[:1] == [str(pid)] for line in table.splitlines())
        src = write_chat_jsonl(tmp_path / "more.jsonl", 500)
        done = run_memstack("ingest", str(src), "--store", str(small_store))
        assert done.returncode == 0, done.stderr.decode()
        found = run_memstack("recall", "--store", str(small_store), "city3", "--format",
                             "msgpack")
        assert found.returncode == 0 and valid_hits(found.stdout)
    assert memories(small_store) == 800
