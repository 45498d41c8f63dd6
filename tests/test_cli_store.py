"""`memstack store stats|export|import|verify|compact` on real LMDB stores."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from helpers import (
    LOCOMO,
    decode_jsonl,
    decode_msgpack,
    error_line,
    export_records,
    ok,
    run,
    store_problems,
    summary,
    verify,
    write_chat,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("stores")
    path = base / "store"
    ok(run("ingest", LOCOMO, "--store", path))
    ok(run("ingest", write_chat(base / "chat.jsonl", 40), "--store", path, "--ns", "user:bo"))
    return path


def records_with_vectors(path):
    return export_records(path, vectors=True)


def same_records(a: list[dict], b: list[dict]) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["text"] for r in a] == [r["text"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x["vec"], y["vec"]), x["id"]
        assert {k: v for k, v in x.items() if k != "vec"} == \
            {k: v for k, v in y.items() if k != "vec"}


def test_stats_fields(store):
    proc = ok(run("store", "stats", "--store", store))
    stats = json.loads(proc.stdout)
    assert proc.stderr == b""
    recs = export_records(store)
    assert stats["kind"] == "store_stats" and stats["v"] == 1
    assert stats["path"] == str(store)
    assert stats["memories"] == 459 == len(recs)
    assert stats["current"] == 459
    assert stats["namespaces"] == {"default": 419, "user:bo": 40}
    assert stats["levels"] == {"turn": 459}
    assert stats["tokens"] == sum(r["tokens"] for r in recs) > 0
    assert stats["embedder"]["spec"] == "hash:dim=128" and stats["embedder"]["dim"] == 128
    assert stats["tokenizer"]["requested"] == "cl100k_base"
    assert stats["schema"] == 1
    assert stats["bytes_on_disk"] == os.path.getsize(store / "data.mdb")
    assert stats["map_size"] >= stats["bytes_on_disk"] > 1 << 20  # grew past the 1 MiB map
    assert stats["posting_segments"] > 0


@pytest.mark.parametrize("fmt", ["msgpack", "jsonl"])
def test_export_import_round_trip(tmp_path, store, fmt):
    backup = tmp_path / f"backup.{fmt}"
    ok(run("store", "export", "--store", store, "-o", backup, "--format", fmt))
    head, recs = (decode_msgpack if fmt == "msgpack" else decode_jsonl)(backup.read_bytes())
    assert len(recs) == 459 and head["meta"]["embedder"]["spec"] == "hash:dim=128"
    restored = tmp_path / "restored"
    proc = ok(run("store", "import", backup, "--store", restored))
    assert summary(proc) == f"import: 459 new, 0 already present, 0 bad into {restored}"
    same_records(records_with_vectors(store), records_with_vectors(restored))
    again = ok(run("store", "import", backup, "--store", restored))
    assert "0 new, 459 already present" in summary(again)
    # export of the restored store is byte for byte the backup it came from
    second = tmp_path / f"second.{fmt}"
    ok(run("store", "export", "--store", restored, "-o", second, "--format", fmt))
    assert second.read_bytes() == backup.read_bytes()


def test_export_to_stdout_and_without_vectors(tmp_path, store):
    proc = ok(run("store", "export", "--store", store, "--no-vectors"))
    recs = decode_msgpack(proc.stdout)[1]
    assert len(recs) == 459 and all("vec" not in r for r in recs)
    path = tmp_path / "novec.msgpack"
    path.write_bytes(proc.stdout)
    restored = tmp_path / "restored"
    ok(run("store", "import", path, "--store", restored))
    same_records(records_with_vectors(store), records_with_vectors(restored))  # re-embedded


def test_import_from_stdin_and_a_foreign_embedder(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl", 5)
    small = tmp_path / "dim128.msgpack"
    ok(run("ingest", chat, "--embedder", "hash:dim=64", "-o", small))
    target = tmp_path / "store"
    ok(run("ingest", write_chat(tmp_path / "other.jsonl", 3, seed=9), "--store", target))
    proc = ok(run("store", "import", "-", "--store", target, input=small.read_bytes()))
    assert "5 new" in summary(proc)
    recs = records_with_vectors(target)
    assert len(recs) == 8 and {r["vec"].shape for r in recs} == {(128,)}  # re-embedded


def test_verify_good_store(store):
    proc = ok(verify(store))
    assert proc.stdout == b""
    assert proc.stderr.decode().strip() == "verify: ok (459 memories)"


def _damage(store_dir, needle: bytes, how: str) -> None:
    """Overwrite bytes inside data.mdb where a known record lives (live data, not free
    pages: random offsets often land in free or padding pages that nothing reads)."""
    path = os.path.join(store_dir, "data.mdb")
    with open(path, "rb") as fp:
        data = fp.read()
    at = data.find(needle)
    assert at > 0
    rng = np.random.default_rng(7)
    with open(path, "r+b") as fp:
        if how == "page":  # the whole 4 KiB page: LMDB itself finds it damaged
            fp.seek(at // 4096 * 4096)
            fp.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        else:  # the record's msgpack around the text: undecodable record
            fp.seek(at - 48)
            fp.write(b"\xc1" * 96)  # 0xc1 is never valid msgpack


@pytest.mark.parametrize("how", ["page", "record"])
def test_verify_damaged_store(tmp_path, store, how):
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    _damage(damaged, b"LGBTQ support group yesterday", how)
    proc = verify(damaged)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err  # and not a crash (negative: killed by a signal)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("memstack: error:") and str(damaged) in lines[-1]
    assert all(ln.startswith("memstack: verify: ") for ln in lines[:-1]) and lines[:-1]


def test_compact_to_a_new_directory(tmp_path, store):
    dest = tmp_path / "compacted"
    proc = ok(run("store", "compact", dest, "--store", store))
    assert f"written to {dest}" in proc.stderr.decode()
    assert (dest / "data.mdb").is_file()
    assert os.path.getsize(dest / "data.mdb") <= os.path.getsize(store / "data.mdb")
    assert store_problems(dest) == []
    same_records(records_with_vectors(store), records_with_vectors(dest))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".memstack-compact-")]


def test_compact_onto_an_existing_directory_fails(tmp_path, store):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    proc = run("store", "compact", dest, "--store", store)
    error_line(proc, 1, str(dest), "already exists")
    assert os.listdir(dest) == ["keep.txt"] and (dest / "keep.txt").read_text() == "precious"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".memstack-compact-")]


def test_store_commands_on_a_missing_store(tmp_path):
    where = tmp_path / "nothing"
    for args in (["stats"], ["export"], ["verify"], ["compact", tmp_path / "c"]):
        error_line(run("store", *args, "--store", where), 1, str(where))
    assert not where.exists() and not (tmp_path / "c").exists()


def test_export_over_a_damaged_record_leaves_no_file(tmp_path, store):
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    _damage(damaged, b"LGBTQ support group yesterday", "record")
    out = tmp_path / "backup.msgpack"
    error_line(run("store", "export", "--store", damaged, "-o", out), 1, str(damaged))
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["damaged"]  # no temp file left behind
