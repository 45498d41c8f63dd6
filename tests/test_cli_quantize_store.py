"""`memstack quantize --store S --vectors ...` as users run it: recall keeps working, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_chat_jsonl
from test_concurrency import holding

from memstack.core.store import LmdbStore


@pytest.fixture
def store(tmp_path: Path, run_memstack) -> Path:
    path = tmp_path / "S"
    src = write_chat_jsonl(tmp_path / "seed.jsonl", 400)
    done = run_memstack("ingest", str(src), "--store", str(path))
    assert done.returncode == 0, done.stderr.decode()
    return path


def _hits(run_memstack, store: Path, query: str) -> list[dict]:
    out = run_memstack("recall", query, "--store", str(store), "-k", "5", "--format", "jsonl",
                       "--explain")
    assert out.returncode == 0, out.stderr.decode()
    return [r for r in map(json.loads, out.stdout.decode().splitlines()) if r["kind"] == "hit"]


@pytest.mark.parametrize("scheme", ["int8", "q4", "binary"])
def test_quantized_vectors_serve_recall(store: Path, run_memstack, scheme: str) -> None:
    before = _hits(run_memstack, store, "item42 city3")
    done = run_memstack("quantize", "--store", str(store), "--vectors", scheme)
    assert done.returncode == 0, done.stderr.decode()
    assert f"400 vectors quantized to {scheme}" in done.stderr.decode()
    again = run_memstack("quantize", "--store", str(store), "--vectors", scheme)
    assert "already quantized" in again.stderr.decode()
    after = _hits(run_memstack, store, "item42 city3")
    assert [h["id"] for h in after] == [h["id"] for h in before]  # floats re-rank the top
    assert all(h["explain"]["vec_scheme"] == scheme for h in after)
    with LmdbStore(str(store)) as st:
        assert st.meta["vector_quant"]["scheme"] == scheme
    stats = json.loads(run_memstack("store", "stats", "--store", str(store)).stdout)
    assert stats["vectors"]["scheme"] == scheme
    assert run_memstack("store", "verify", "--store", str(store)).returncode == 0


def test_drop_float_and_refusals(store: Path, run_memstack) -> None:
    bad = run_memstack("quantize", "--store", str(store), "--vectors", "binary", "--drop-float")
    assert bad.returncode == 2 and b"--drop-float" in bad.stderr
    done = run_memstack("quantize", "--store", str(store), "--vectors", "int8", "--drop-float")
    assert done.returncode == 0 and b"float copies dropped" in done.stderr
    assert len(_hits(run_memstack, store, "item42")) == 5
    back = run_memstack("quantize", "--store", str(store), "--vectors", "float")
    assert back.returncode == 2 and b"Traceback" not in back.stderr
    both = run_memstack("quantize", "x.npy", "--store", str(store), "--vectors", "int8")
    assert both.returncode == 2


def test_busy_store_exits_75(store: Path, run_memstack) -> None:
    with holding(store, "write"):
        busy = run_memstack("quantize", "--store", str(store), "--vectors", "int8",
                            "--lock-timeout", "0")
    assert busy.returncode == 75 and busy.stderr.count(b"\n") == 1
    with LmdbStore(str(store)) as st:
        assert "vector_quant" not in st.meta
