"""Bad input, bad stores and interruptions: one clear line, the documented exit code, and
never half a write (the store is unchanged, an `-o` file is not created).

Exit codes (DESIGN.md): 1 failure, 2 usage, 75 store busy, 130 interrupted.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import msgpack
import psutil
import pytest
from helpers import (
    LOCOMO,
    cli_env,
    decode_jsonl,
    error_line,
    export_records,
    fingerprint,
    invoke,
    ok,
    out_bytes,
    popen,
    run,
    store_problems,
    store_stats,
    summary,
    verify,
    write_big_chat,
    write_chat,
)

from memstack.core import pipeline


@pytest.fixture
def store(tmp_path):
    """A small store that each test tries to damage; compare with fingerprint()."""
    path = tmp_path / "store"
    ok(invoke("ingest", write_chat(tmp_path / "base.jsonl", 20, seed=1), "--store", path))
    return path


def assert_no_output_file(tmp_path, name="out.msgpack"):
    assert not (tmp_path / name).exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".memstack-")]


# -- malformed input files ------------------------------------------------------------------
def test_malformed_json_line(tmp_path, store):
    before = fingerprint(store)
    bad = tmp_path / "chat.jsonl"
    third = '{"role": "user", "content": "three",, "x": 1}'
    col = third.index(",,") + 2  # 1-based column of the second comma
    bad.write_text('{"role": "user", "content": "one"}\n'
                   '{"role": "user", "content": "two"}\n'
                   f'{third}\n'
                   '{"role": "user", "content": "four"}\n')
    line = error_line(run("ingest", bad, "--store", store), 1,
                      f"{bad}: line 3, column {col}: malformed JSON")
    assert fingerprint(store) == before
    error_line(run("ingest", bad, "-o", tmp_path / "out.msgpack"), 1, f"line 3, column {col}")
    assert_no_output_file(tmp_path)
    assert "Expecting" in line  # says what was expected


def test_committed_batches_stay_and_a_rerun_completes(tmp_path, store):
    """With small batches, the batches before the bad line are committed (by design); fixing
    the input and re-running adds the rest exactly once."""
    lines = [json.dumps({"role": "user", "content": f"fresh turn {i}"}) for i in range(7)]
    bad = tmp_path / "chat.jsonl"
    bad.write_text("\n".join(lines[:5] + ["{oops"] + lines[5:]) + "\n")
    error_line(run("ingest", bad, "--store", store, "--batch-size", "2"), 1, "line 6")
    assert len(export_records(store)) == 20 + 4  # two whole batches of two
    bad.write_text("\n".join(lines) + "\n")
    proc = ok(run("ingest", bad, "--store", store, "--batch-size", "2"))
    assert summary(proc) == f"ingest: 3 new, 4 already present, 0 bad into {store}"
    assert len(export_records(store)) == 27 and store_problems(store) == []


def test_invalid_utf8_names_the_byte(tmp_path, store):
    before = fingerprint(store)
    first = b'{"role": "user", "content": "fine"}\n'
    second = b'{"role": "user", "content": "caf\xe9 au lait"}\n'
    bad = tmp_path / "chat.jsonl"
    bad.write_bytes(first + second)
    at = len(first) + second.index(b"\xe9")
    error_line(run("ingest", bad, "--store", store), 1,
               f"{bad}: line 2 (byte {at}): invalid UTF-8")
    assert fingerprint(store) == before
    skipped = ok(run("ingest", bad, "--store", store, "--skip-bad"))
    assert "1 new, 0 already present, 1 bad" in summary(skipped)
    text = tmp_path / "notes.txt"
    text.write_bytes(b"plain words\n\xff\xfe more\n")
    error_line(run("ingest", text, "--store", store), 1, f"{text}: byte 12: invalid UTF-8")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    error_line(run("ingest", binary, "--store", store), 1, "invalid UTF-8", "byte ")


def test_missing_input_file_and_directory(tmp_path, store):
    before = fingerprint(store)
    error_line(run("ingest", tmp_path / "nope.jsonl", "--store", store), 1, "nope.jsonl")
    proc = run("ingest", tmp_path, "--store", store)  # a directory is not an input file
    assert proc.returncode == 2 and b"is a directory" in proc.stderr
    assert fingerprint(store) == before


HUGE = 50 << 20


@pytest.fixture(scope="module")
def huge_line_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "huge.jsonl"
    with open(path, "w") as fp:
        fp.write(json.dumps({"role": "user", "content": "before the giant line"}) + "\n")
        fp.write('{"role": "user", "content": "' + "x" * HUGE + '"}\n')
        fp.write(json.dumps({"role": "user", "content": "after the giant line"}) + "\n")
    return path


@pytest.mark.parametrize("workers", ["0", "1"])  # 0: the parallel pipeline (file > 4 MiB)
def test_line_over_max_line_bytes(tmp_path, store, huge_line_file, workers):
    before = fingerprint(store)
    t0 = time.monotonic()
    error_line(run("ingest", huge_line_file, "--store", store, "--workers", workers), 1,
               f"{huge_line_file}: line 2: line longer than the {16 << 20} byte limit",
               "--max-line-bytes")
    assert fingerprint(store) == before
    error_line(run("ingest", huge_line_file, "-o", tmp_path / "out.msgpack",
                   "--workers", workers), 1, "line 2")
    assert_no_output_file(tmp_path)
    proc = ok(run("ingest", huge_line_file, "--store", store, "--skip-bad",
                  "--workers", workers))
    assert summary(proc) == f"ingest: 2 new, 0 already present, 1 bad into {store}"
    assert "memstack: skipped:" in proc.stderr.decode() and "line 2" in proc.stderr.decode()
    texts = [r["text"] for r in export_records(store)]
    assert texts[-2:] == ["before the giant line", "after the giant line"]
    assert time.monotonic() - t0 < 60


def test_small_max_line_bytes(tmp_path, store):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"role": "user", "content": "short"}) + "\n"
                    + json.dumps({"role": "user", "content": "y" * 3000}) + "\n")
    error_line(run("ingest", path, "--store", store, "--max-line-bytes", "2048"), 1,
               "line 2: line longer than the 2048 byte limit")
    assert run("ingest", path, "--max-line-bytes", "10").returncode == 2  # below the minimum


# -- record streams -------------------------------------------------------------------------
def _stream(tmp_path, n=30) -> tuple[bytes, list[int]]:
    """A msgpack record stream from `ingest -o` and the end offset of each object in it."""
    path = tmp_path / "records.msgpack"
    ok(invoke("ingest", write_chat(tmp_path / "src.jsonl", n, seed=5), "-o", path))
    data = path.read_bytes()
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False)
    ends = []
    for _ in unpacker:
        ends.append(unpacker.tell())
    assert len(ends) == n + 2
    return data, ends


def test_truncated_stream_mid_record(tmp_path, store):
    before = fingerprint(store)
    data, ends = _stream(tmp_path)
    start = ends[10]  # record 11 starts here and is cut 40 bytes in
    cut = data[: start + 40]
    want = f"byte {start}: stream is truncated in the middle of a record"
    error_line(run("recall", "--from", "-", "coffee", input=cut), 1, f"<stdin>: {want}")
    path = tmp_path / "cut.msgpack"
    path.write_bytes(cut)
    error_line(run("store", "import", path, "--store", store), 1, f"{path}: {want}")
    error_line(run("store", "import", "-", "--store", store, input=cut), 1, want)
    error_line(run("ingest", path, "--store", store), 1, want)
    assert fingerprint(store) == before


def test_stream_without_trailer(tmp_path, store):
    before = fingerprint(store)
    data, ends = _stream(tmp_path)
    cut = data[: ends[-2]]  # every record, but no eos
    want = f"byte {ends[-2]}: stream is truncated (no end-of-stream trailer)"
    error_line(run("recall", "--from", "-", "coffee", input=cut), 1, want)
    path = tmp_path / "cut.msgpack"
    path.write_bytes(cut)
    error_line(run("store", "import", path, "--store", store), 1, want)
    assert fingerprint(store) == before
    jsonl = tmp_path / "cut.jsonl"  # the JSONL view of a cut stream is refused the same way
    lines = out_bytes(ok(invoke("ingest", tmp_path / "src.jsonl", "-o", "-",
                                "--out-format", "jsonl"))).splitlines(keepends=True)
    jsonl.write_bytes(b"".join(lines[:-1]))
    error_line(run("store", "import", jsonl, "--store", store), 1,
               f"line {len(lines)}: stream is truncated")
    assert fingerprint(store) == before


def _v2_streams():
    head = {"kind": "header", "format": "memstack", "v": [1, 0]}
    rec = {"v": 2, "kind": "memory", "id": "m1", "ns": "default", "text": "from the future"}
    eos = {"kind": "eos", "count": 1}
    mp_rec = msgpack.packb(head) + msgpack.packb(rec) + msgpack.packb(eos)
    mp_head = msgpack.packb(dict(head, v=[2, 0])) + msgpack.packb(dict(rec, v=1)) \
        + msgpack.packb(eos)
    jl_rec = "".join(json.dumps(x) + "\n" for x in (head, rec, eos)).encode()
    return {"msgpack record": (mp_rec, f"byte {len(msgpack.packb(head))}"),
            "msgpack header": (mp_head, "byte 0"), "jsonl record": (jl_rec, "line 2")}


@pytest.mark.parametrize("case", ["msgpack record", "msgpack header", "jsonl record"])
def test_newer_format_version_is_refused(tmp_path, store, case):
    data, where = _v2_streams()[case]
    before = fingerprint(store)
    path = tmp_path / "future.stream"
    path.write_bytes(data)
    want = f"{where}: format version 2 is newer than this memstack reads (1); upgrade"
    error_line(run("recall", "--from", "-", "future", input=data), 1, want)
    error_line(run("store", "import", path, "--store", store), 1, want)
    error_line(run("ingest", path, "--store", store, "--format", "records"), 1, want)
    assert fingerprint(store) == before


def test_garbage_that_looks_like_msgpack(tmp_path, store):
    before = fingerprint(store)
    data = msgpack.packb({"kind": "header", "format": "memstack", "v": [1, 0]}) + b"\x81\xc1"
    error_line(run("recall", "--from", "-", "x", input=data), 1, "<stdin>: byte ")
    not_ours = msgpack.packb({"kind": "memory", "text": "no header"})
    error_line(run("recall", "--from", "-", "x", input=not_ours), 1, "no header record")
    assert fingerprint(store) == before


# -- usage errors ---------------------------------------------------------------------------
def test_unknown_format_values_are_usage_errors(tmp_path):
    where = tmp_path / "store"
    chat = write_chat(tmp_path / "chat.jsonl", 2)
    for args in (["ingest", chat, "--store", where, "--format", "yaml"],
                 ["ingest", chat, "--store", where, "--out-format", "csv", "-o", "-"],
                 ["recall", "x", "--store", where, "--format", "html"],
                 ["store", "export", "--store", where, "--format", "xml"]):
        proc = run(*args)
        assert proc.returncode == 2, args
        err = proc.stderr.decode()
        assert "Invalid value for '--" in err and "Traceback" not in err
        assert proc.stdout == b""
    assert not where.exists()


def test_bad_time_option_is_a_usage_error(store):
    proc = run("recall", "x", "--store", store, "--since", "the day before yesterday")
    assert proc.returncode == 2 and b"--since" in proc.stderr


# -- empty inputs -----------------------------------------------------------------------------
def test_empty_inputs(tmp_path, store):
    before = fingerprint(store)
    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_bytes(b"")
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_bytes(b"\n\n")
    for path in (empty_txt, empty_jsonl):  # nothing to remember is not an error
        proc = ok(run("ingest", path, "--store", store))
        assert summary(proc) == f"ingest: 0 new, 0 already present, 0 bad into {store}"
    assert fingerprint(store) == before
    # an empty *record stream* is not a stream: the producer died before its header
    error_line(run("recall", "--from", "-", "x", input=b""), 1,
               "<stdin>: byte 0: empty input: expected a memstack record stream")
    error_line(run("recall", "--from", empty_txt, "x"), 1, f"{empty_txt}: byte 0: empty input")
    error_line(run("store", "import", empty_txt, "--store", store), 1, "empty input")
    # ... while a framed stream of zero records is a valid, empty answer
    framed = out_bytes(ok(invoke("ingest", empty_txt, "-o", "-")))
    proc = ok(run("recall", "--from", "-", "x", "--format", "jsonl", input=framed))
    assert decode_jsonl(proc.stdout)[1] == []
    assert fingerprint(store) == before


# -- stores -------------------------------------------------------------------------------------
def test_store_built_with_another_embedder(tmp_path, store):
    before = fingerprint(store)
    chat = write_chat(tmp_path / "more.jsonl", 3, seed=3)
    error_line(run("ingest", chat, "--store", store, "--embedder", "hash:dim=64"), 1,
               str(store), "'hash:dim=128'", "'hash:dim=64'")
    error_line(run("ingest", chat, "--store", store, "--embedder", "hash:dim=64",
                   "-o", tmp_path / "out.msgpack"), 1, "hash:dim=64")
    assert_no_output_file(tmp_path)
    assert fingerprint(store) == before
    bad_spec = run("ingest", chat, "--store", store, "--embedder", "hash:dim=3")
    assert bad_spec.returncode in (1, 2) and b"Traceback" not in bad_spec.stderr
    assert b"dim" in bad_spec.stderr
    assert fingerprint(store) == before


def _damage_record(store_dir, needle: bytes) -> None:
    path = os.path.join(store_dir, "data.mdb")
    with open(path, "rb") as fp:
        at = fp.read().find(needle)
    assert at > 0
    with open(path, "r+b") as fp:
        fp.seek(at - 40)
        fp.write(b"\xc1" * 80)


def test_corrupt_store(tmp_path):
    path = tmp_path / "store"
    ok(invoke("ingest", LOCOMO, "--store", path))
    _damage_record(path, b"LGBTQ support group yesterday")
    error_line(run("recall", "LGBTQ support group", "--store", path), 1, str(path),
               "unreadable", "store verify")
    proc = verify(path)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    not_lmdb = tmp_path / "not-lmdb"
    not_lmdb.mkdir()
    (not_lmdb / "data.mdb").write_bytes(os.urandom(20000))
    for args in (["recall", "x"], ["store", "stats"], ["store", "verify"],
                 ["ingest", LOCOMO]):
        error_line(run(*args, "--store", not_lmdb), 1, "not-lmdb", "not a readable LMDB store")
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    (plain_dir / "notes.txt").write_text("mine")
    error_line(run("ingest", LOCOMO, "--store", plain_dir), 1, "not a memstack store")
    assert os.listdir(plain_dir) == ["notes.txt"]


def test_truncated_store_file_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "store"
    ok(invoke("ingest", LOCOMO, "--store", path))
    os.truncate(path / "data.mdb", 8192)
    error_line(run("recall", "x", "--store", path), 1, str(path))


HOLD_LOCK = """
import sys
from memstack.core.store import LmdbStore
store = LmdbStore(sys.argv[1], write=True, create=True)
print("locked", flush=True)
sys.stdin.read()
store.close()
"""


def test_locked_store_exits_75_quickly(tmp_path, store):
    before = fingerprint(store)
    chat = write_chat(tmp_path / "more.jsonl", 5, seed=4)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=cli_env())
    try:
        assert holder.stdout.readline() == b"locked\n"
        t0 = time.monotonic()
        proc = run("ingest", chat, "--store", store, "--lock-timeout", "0.2")
        elapsed = time.monotonic() - t0
        error_line(proc, 75, str(store), "another writer holds the store")
        assert elapsed < 5
        error_line(run("store", "import", tmp_path / "whatever", "--store", store,
                       "--lock-timeout", "0"), 75)
        # readers are not writers: recall and stats still work while the lock is held
        ok(run("recall", "coffee", "--store", store, "--format", "jsonl"))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert fingerprint(store) == before
    proc = ok(run("ingest", chat, "--store", store, "--lock-timeout", "0"))
    assert "5 new" in summary(proc)


def test_tiny_map_grows(tmp_path):
    env = cli_env(MEMSTACK_MAP_SIZE="65536")
    path = tmp_path / "store"
    proc = ok(run("ingest", LOCOMO, "--store", path, "--batch-size", "50", env=env))
    assert summary(proc) == f"ingest: 419 new, 0 already present, 0 bad into {path}"
    stats = store_stats(path)
    assert stats["memories"] == 419 and stats["map_size"] > 65536
    assert ok(verify(path, env=env)).returncode == 0
    hits = decode_jsonl(ok(run("recall", "LGBTQ support group", "--store", path, "-k", "3",
                               "--format", "jsonl", env=env)).stdout)[1]
    assert len(hits) == 3


# -- interruptions -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_chat(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    n = write_big_chat(path, pipeline.PARALLEL_MIN_BYTES + (64 << 10), seed=11)
    return path, n


BATCH = 2000


def _start_and_wait_for_a_commit(store, *args) -> tuple[subprocess.Popen, list]:
    """Start an ingest and return once it has committed at least one batch."""
    proc = popen("ingest", *args, "--store", store, "--batch-size", BATCH)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ingest finished before it could be interrupted"
        try:
            if store_stats(store)["memories"] > 0:
                return proc, psutil.Process(proc.pid).children(recursive=True)
        except Exception:  # noqa: BLE001 - not created or not initialised yet
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no batch committed in time")


def _after_interrupt(store, path, n):
    """The store holds whole batches and verifies; a re-run adds the rest exactly once."""
    assert store_problems(store) == []
    assert ok(verify(store)).returncode == 0
    have = store_stats(store)["memories"]
    assert 0 < have < n and have % BATCH == 0
    proc = ok(run("ingest", path, "--store", store, "--lock-timeout", "0"))
    assert summary(proc) == f"ingest: {n - have} new, {have} already present, 0 bad into {store}"
    recs = export_records(store)
    assert len(recs) == n == len({r["id"] for r in recs})


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the pipeline needs two cores")
def test_ctrl_c_mid_ingest(tmp_path, big_chat):
    path, n = big_chat
    store = tmp_path / "store"
    proc, children = _start_and_wait_for_a_commit(store, path)  # default workers: pipeline
    assert children, "the big file should go through the worker pool"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out == b""
    assert err.decode().strip() == "memstack: interrupted"
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "worker processes outlived the interrupted ingest"
    _after_interrupt(store, path, n)


@pytest.fixture(scope="module")
def mid_chat(tmp_path_factory):
    """Big enough for several batches, small enough to stay on the serial path."""
    path = tmp_path_factory.mktemp("mid") / "mid.jsonl"
    n = write_big_chat(path, 3 << 20, seed=12)
    return path, n


@pytest.mark.parametrize("workers", ["1", "0"])
def test_kill_9_mid_ingest(tmp_path, big_chat, mid_chat, workers):
    path, n = mid_chat if workers == "1" else big_chat
    store = tmp_path / "store"
    proc, children = _start_and_wait_for_a_commit(store, path, "--workers", workers)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    psutil.wait_procs(children, timeout=10)
    _after_interrupt(store, path, n)

