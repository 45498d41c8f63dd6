"""Quantized store vectors (core/vector_quant.py): a scheme set on a real store built by ingest,
recall on the quantized copy, idempotence, the copy kept in step by later ingests and merges,
dropped floats, stats/verify, recall@10 against the float ranking, and the failure modes."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, invoke, ok

from memstack.core import admin, vector_quant
from memstack.core.embed import HashingEmbedder
from memstack.core.errors import ConfigError, StoreBusy, StoreError
from memstack.core.ingest import IngestOptions, ingest
from memstack.core.recall import RecallOptions, Searcher
from memstack.core.store import LmdbStore
from memstack.core.text import load_tokenizer
from memstack.core.vector_quant import quantize_store_vectors, quantize_vectors, vector_top

N = 3000
QUERIES = 80


# -- a store of synthetic chat turns, built once through the real ingest API ----------------------
def synthetic_turns(n: int, seed: int, start: int = 0) -> list[dict]:
    """Chat-like turns: words of a made-up vocabulary drawn with Zipf frequencies."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(4000)]
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    p /= p.sum()
    lens = rng.integers(10, 24, n)
    words = rng.choice(len(vocab), size=(n, 24), p=p)
    return [{"speaker": f"user{(start + i) % 4}",
             "text": " ".join(vocab[w] for w in words[i, : lens[i]]),
             "time": 1_700_000_000 + 60 * (start + i), "session": f"s{(start + i) // 300}"}
            for i in range(n)]


def jsonl(turns: list[dict]) -> io.BufferedReader:
    data = "".join(json.dumps(t) + "\n" for t in turns).encode()
    return io.BufferedReader(io.BytesIO(data))


@pytest.fixture(scope="module")
def emb():
    return HashingEmbedder()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("cl100k_base")


def ingest_turns(path: Path, turns: list[dict], emb, tok, batch_size: int = 1000) -> None:
    with LmdbStore(str(path), write=True, create=True) as st:
        ingest([("turns.jsonl", jsonl(turns))], embedder=emb, tokenizer=tok, store=st,
               opts=IngestOptions(batch_size=batch_size))


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, emb, tok) -> Path:
    path = tmp_path_factory.mktemp("vq") / "base"
    ingest_turns(path, synthetic_turns(N, seed=7), emb, tok, batch_size=500)
    return path


@pytest.fixture
def store_path(base_store, tmp_path) -> Path:
    """A private copy of the base store (tests change it)."""
    path = tmp_path / "store"
    shutil.copytree(base_store, path)
    (path / "writer.lock").unlink(missing_ok=True)
    return path


@pytest.fixture(scope="module")
def queries(base_store, emb) -> list[tuple[str, np.ndarray]]:
    """Queries of 3-6 consecutive words of stored turns, with their search-time vectors."""
    turns = synthetic_turns(N, seed=7)
    rng = np.random.default_rng(3)
    out = []
    with LmdbStore(str(base_store)) as st:
        s = Searcher(st, emb)
        while len(out) < QUERIES:
            words = turns[int(rng.integers(N))]["text"].split()
            k = int(rng.integers(3, 7))
            i = int(rng.integers(0, max(1, len(words) - k)))
            text = " ".join(words[i : i + k])
            q = s.query_vector(text)
            if q.any():
                out.append((text, q))
    return out


def hit_ids(path: Path, emb, texts: list[str], **opts) -> list[list[str]]:
    with LmdbStore(str(path)) as st:
        s = Searcher(st, emb)
        return [[h.id for h in s.search(t, RecallOptions(**opts))] for t in texts]


def segments(st: LmdbStore, db) -> list[tuple[bytes, bytes]]:
    with st.snapshot() as snap:
        return [(bytes(k), bytes(v)) for k, v in snap.txn.cursor(db=db)]


def assert_twins(path: Path, scheme: str, dim: int = 128) -> None:
    """Every float segment has a quantized twin under the same key holding exactly its rows."""
    with LmdbStore(str(path)) as st:
        floats = segments(st, st.dbs["vectors"])
        quant = segments(st, st.qvectors_db())
        assert [k for k, _ in floats] == [k for k, _ in quant]
        for (_, f), (_, q) in zip(floats, quant, strict=True):
            vecs = np.frombuffer(f, dtype=np.float32).reshape(-1, dim)
            assert q == vector_quant.encode(scheme, vecs).tobytes()
        assert sum(len(f) for _, f in floats) // (4 * dim) == st.stats["n"]
        assert admin.verify(st) == []


def float_tops(path: Path, queries) -> list[set[int]]:
    """The exact vector-only top 10 of each query: the yardstick."""
    with LmdbStore(str(path)) as st, st.snapshot() as snap:
        return [set(vector_top(snap, q, 10, method="float")[0].tolist()) for _, q in queries]


def recall_at_10(path: Path, queries, refs: list[set[int]] | None = None, **kw) -> float:
    refs = float_tops(path, queries) if refs is None else refs
    with LmdbStore(str(path)) as st, st.snapshot() as snap:
        got = [len(ref & set(vector_top(snap, q, 10, **kw)[0].tolist())) / 10
               for ref, (_, q) in zip(refs, queries, strict=True)]
    return float(np.mean(got))


def file_digest(path: Path) -> str:
    return hashlib.sha256((path / "data.mdb").read_bytes()).hexdigest()


# -- round trip ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["int8", "q4", "binary"])
def test_quantize_then_recall_returns_the_float_results(store_path, emb, queries, scheme):
    texts = [t for t, _ in queries[:20]]
    before = hit_ids(store_path, emb, texts)
    summary = quantize_store_vectors(str(store_path), scheme)
    bpv = vector_quant.bytes_per_vector(scheme, 128)
    assert summary == {"scheme": scheme, "dim": 128, "vectors": N, "bytes_per_vector": bpv,
                       "keep_float": True, "float_bytes": N * 512, "quant_bytes": N * bpv,
                       "ratio": round(512 / bpv, 3), "changed": True}
    assert_twins(store_path, scheme)
    after = hit_ids(store_path, emb, texts)
    assert all(len(h) == 10 for h in after)
    # the quantized scan only picks candidates; they are re-scored with the exact floats
    assert after == before
    with LmdbStore(str(store_path)) as st:
        assert st.meta["vector_quant"] == {"scheme": scheme, "dim": 128, "bytes_per_vector": bpv,
                                           "keep_float": True, "v": 1}
        hits = Searcher(st, emb).search(texts[0], RecallOptions(k=3, explain=True))
        assert all(h.explain["vec_scheme"] == scheme and h.record["text"] for h in hits)


def test_cli_recall_stats_and_verify_see_the_scheme(store_path, queries):
    quantize_store_vectors(str(store_path), "int8")
    proc = ok(invoke("recall", queries[0][0], "--store", store_path, "-k", 3, "--explain",
                     "--format", "jsonl"))
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    hits = [r for r in rows if r.get("kind") == "hit"]
    assert len(hits) == 3 and all(h["explain"]["vec_scheme"] == "int8" for h in hits)
    table = ok(invoke("recall", queries[0][0], "--store", store_path, "-k", 2, "--explain",
                      "--format", "table")).stdout
    assert "vec_scheme=int8" in table
    stats = json.loads(ok(invoke("store", "stats", "--store", store_path)).stdout)
    assert stats["vectors"] == {"scheme": "int8", "dim": 128, "float_bytes": N * 512,
                                "bytes_per_vector": 132, "quant_bytes": N * 132,
                                "keep_float": True, "scan_ratio": round(512 / 132, 3)}
    ok(invoke("store", "verify", "--store", store_path))


def test_stats_of_an_unquantized_store(base_store):
    with LmdbStore(str(base_store)) as st:
        assert admin.stats(st)["vectors"] == {"scheme": "float", "dim": 128,
                                              "float_bytes": N * 512, "bytes_per_vector": 512}


# -- idempotence, scheme changes, resuming --------------------------------------------------------
def test_same_scheme_twice_changes_nothing(store_path):
    first = quantize_store_vectors(str(store_path), "binary")
    digest = file_digest(store_path)
    with LmdbStore(str(store_path)) as st:
        txn_id = st.env.info()["last_txnid"]
    again = quantize_store_vectors(str(store_path), "binary")
    assert again == dict(first, changed=False)
    assert file_digest(store_path) == digest
    with LmdbStore(str(store_path)) as st:
        assert st.env.info()["last_txnid"] == txn_id


def test_switching_schemes_and_removing_the_copy(store_path, emb, queries):
    texts = [t for t, _ in queries[:10]]
    before = hit_ids(store_path, emb, texts)
    quantize_store_vectors(str(store_path), "int8")
    quantize_store_vectors(str(store_path), "q4")
    assert_twins(store_path, "q4")
    off = quantize_store_vectors(str(store_path), "none")
    assert off["scheme"] == "float" and off["quant_bytes"] == 0 and off["changed"]
    assert quantize_store_vectors(str(store_path), "float")["changed"] is False
    with LmdbStore(str(store_path)) as st:
        assert "vector_quant" not in st.meta and "vector_quant_pending" not in st.meta
        assert segments(st, st.qvectors_db()) == []
        assert admin.verify(st) == []
    assert hit_ids(store_path, emb, texts) == before


def interrupt_third_encode(monkeypatch):
    """Make quantizing stop (as Ctrl-C would) in its third write transaction; returns the
    real encoder so the test can put it back."""
    monkeypatch.setattr(vector_quant, "WRITE_BYTES", 40_000)  # one transaction a segment
    calls = {"n": 0}
    real = vector_quant.encode

    def flaky(scheme, vecs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(scheme, vecs)

    monkeypatch.setattr(vector_quant, "encode", flaky)
    return real


def test_an_interrupted_run_resumes(store_path, monkeypatch):
    real = interrupt_third_encode(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        quantize_store_vectors(str(store_path), "int8")
    with LmdbStore(str(store_path)) as st:
        assert "vector_quant" not in st.meta  # readers still scan the floats
        assert st.meta["vector_quant_pending"] == "int8"
        assert len(segments(st, st.qvectors_db())) == 2
    monkeypatch.setattr(vector_quant, "encode", real)
    done = quantize_store_vectors(str(store_path), "int8")
    assert done["changed"] and done["quant_bytes"] == N * 132
    assert_twins(store_path, "int8")
    with LmdbStore(str(store_path)) as st:
        assert "vector_quant_pending" not in st.meta


def test_leftovers_of_another_scheme_are_not_reused(store_path, monkeypatch):
    real = interrupt_third_encode(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        quantize_store_vectors(str(store_path), "q4")
    monkeypatch.setattr(vector_quant, "encode", real)
    quantize_store_vectors(str(store_path), "binary")
    assert_twins(store_path, "binary")


# -- the copy keeps up with ingest and merges -----------------------------------------------------
@pytest.mark.parametrize("scheme", ["int8", "binary"])
def test_ingest_after_quantize_keeps_the_twins(store_path, emb, tok, scheme, tiny_map):
    quantize_store_vectors(str(store_path), scheme)
    more = synthetic_turns(1200, seed=11, start=N)
    # 12 small batches: optimize() merges them (vectors and twins over the same runs)
    ingest_turns(store_path, more, emb, tok, batch_size=100)
    with LmdbStore(str(store_path)) as st:
        assert st.stats["n"] == N + 1200
        keys = [k for k, _ in segments(st, st.dbs["vectors"])]
        assert int(st.meta.get("merged_at", 0)) > 0
    assert len(keys) < 6 + 12  # runs of small segments were merged
    assert_twins(store_path, scheme)
    summary = quantize_store_vectors(str(store_path), scheme)
    assert summary["changed"] is False and summary["vectors"] == N + 1200
    # recall finds the new memories through the quantized copy
    texts = [t["text"] for t in more[:5]]
    with LmdbStore(str(store_path)) as st:
        s = Searcher(st, emb)
        for text, rec in zip(texts, more[:5], strict=True):
            hits = s.search(text, RecallOptions(k=1, vec_weight=1.0))
            assert hits[0].record["text"] == rec["text"]


def test_forced_optimize_merges_twins_alike(tmp_path, emb, tok):
    path = tmp_path / "small"
    ingest_turns(path, synthetic_turns(300, seed=5), emb, tok, batch_size=50)
    quantize_store_vectors(str(path), "q4")
    with LmdbStore(str(path), write=True) as st:
        assert len(segments(st, st.dbs["vectors"])) == 6
        st.optimize(force=True)
        assert len(segments(st, st.dbs["vectors"])) == 1
    assert_twins(path, "q4")


# -- dropping the floats --------------------------------------------------------------------------
def test_keep_float_false_drops_floats_and_everything_still_works(store_path, emb, tok,
                                                                  queries):
    with LmdbStore(str(store_path)) as st:
        originals = np.stack([v for _, _, v in st.iter_records()])
    refs = float_tops(store_path, queries)
    summary = quantize_store_vectors(str(store_path), "int8", keep_float=False)
    assert summary["keep_float"] is False and summary["float_bytes"] == 0
    with LmdbStore(str(store_path)) as st:
        assert segments(st, st.dbs["vectors"]) == []
        assert admin.verify(st) == []
        assert admin.stats(st)["vectors"]["keep_float"] is False
        back = np.stack([v for _, _, v in st.iter_records()])  # export's path: decoded
        cos = (back * originals).sum(1) / np.linalg.norm(back, axis=1)
        assert cos.min() > 0.99
        with st.snapshot() as snap:
            assert np.allclose(snap.vectors_at(np.array([5, 0, 2999]), 128), back[[5, 0, 2999]])
        s = Searcher(st, emb)
        hits = s.search(queries[0][0], RecallOptions(k=5, mmr=0.7, explain=True))
        assert len(hits) == 5 and hits[0].explain["vec_scheme"] == "int8"
    assert recall_at_10(store_path, queries, refs) >= 0.97  # decoded scores, no re-ranking
    # later ingests write the quantized rows only, and merges fold them
    ingest_turns(store_path, synthetic_turns(400, seed=12, start=N), emb, tok, batch_size=40)
    with LmdbStore(str(store_path)) as st:
        assert st.stats["n"] == N + 400 and segments(st, st.dbs["vectors"]) == []
        assert admin.verify(st) == []
    again = quantize_store_vectors(str(store_path), "int8", keep_float=False)
    assert again["changed"] is False and again["quant_bytes"] == (N + 400) * 132
    for scheme, keep in (("int8", True), ("q4", False), ("none", True)):
        with pytest.raises(ConfigError, match="dropped"):
            quantize_store_vectors(str(store_path), scheme, keep_float=keep)
    assert ok(invoke("store", "verify", "--store", store_path))


def test_binary_cannot_replace_the_floats(store_path):
    with pytest.raises(ConfigError, match="binary"):
        quantize_store_vectors(str(store_path), "binary", keep_float=False)
    with LmdbStore(str(store_path)) as st:
        assert "vector_quant" not in st.meta


# -- quality and size -----------------------------------------------------------------------------
def test_recall_at_10_and_bytes(store_path, queries):
    refs = float_tops(store_path, queries)
    assert recall_at_10(store_path, queries, refs) == 1.0  # the yardstick itself
    found = {}
    for scheme in ("int8", "q4", "binary"):
        summary = quantize_store_vectors(str(store_path), scheme)
        found[scheme] = recall_at_10(store_path, queries, refs)
        found[scheme + "@200"] = recall_at_10(store_path, queries, refs, candidates=200)
        found[scheme + "/floats"] = summary["float_bytes"] / summary["quant_bytes"]
    assert found["int8"] >= 0.97 and found["int8@200"] >= 0.97
    assert found["q4"] >= 0.95 and found["q4@200"] >= 0.95
    # binary scan, then the floats re-rank the candidates (1,000 by default)
    assert found["binary"] >= 0.95
    assert recall_at_10(store_path, queries, refs, candidates=500) >= 0.95
    assert 3.8 < found["int8/floats"] < 4.0  # 132 bytes a vector instead of 512
    assert 7.0 < found["q4/floats"] < 7.2
    assert found["binary/floats"] == 32.0


def test_vector_top_scores_are_exact_after_rerank(store_path, queries):
    quantize_store_vectors(str(store_path), "binary")
    with LmdbStore(str(store_path)) as st, st.snapshot() as snap:
        q = queries[1][1]
        top, score = vector_top(snap, q, 10)
        assert np.allclose(score, snap.vectors_at(top, 128) @ q)
        assert (np.diff(score) <= 0).all()


# -- codecs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [16, 33, 128, 300])
def test_codecs_round_trip(dim):
    rng = np.random.default_rng(dim)
    v = rng.standard_normal((50, dim)).astype(np.float32)
    v[3] = 0.0  # an all-zero vector must not divide by zero
    q = rng.standard_normal(dim).astype(np.float32)
    for scheme, tol in (("int8", 0.01), ("q4", 0.2)):
        rows = vector_quant.encode(scheme, v)
        assert rows.shape == (50, vector_quant.bytes_per_vector(scheme, dim))
        back = vector_quant.decode(scheme, rows, dim)
        assert np.abs(back - v).max() <= tol * np.abs(v).max() + 1e-6
        assert np.allclose(vector_quant.scores(scheme, rows, dim, q), back @ q, atol=1e-3)
    rows = vector_quant.encode("binary", v)
    assert rows.shape == (50, (dim + 7) // 8)
    est = vector_quant.scores("binary", rows, dim, q)
    exact = v @ q
    assert np.corrcoef(est, exact)[0, 1] > 0.6
    rot = vector_quant.rotate(v)
    assert np.allclose(np.linalg.norm(rot, axis=1) <= np.linalg.norm(v, axis=1) + 1e-4, True)


# -- failures -------------------------------------------------------------------------------------
def test_bad_scheme_is_a_config_error(store_path):
    digest = file_digest(store_path)
    for bad in ("int4", "", "Binary2"):
        with pytest.raises(ConfigError) as info:
            quantize_store_vectors(str(store_path), bad)
        assert info.value.exit_code == 2 and "unknown vector scheme" in str(info.value)
    assert file_digest(store_path) == digest
    assert vector_quant.check_scheme(" INT8 ") == "int8"


def test_busy_store_is_store_busy(store_path):
    with LmdbStore(str(store_path), write=True):
        with pytest.raises(StoreBusy) as info:
            quantize_store_vectors(str(store_path), "int8", lock_timeout=0.1)
    assert info.value.exit_code == 75


def test_read_only_and_missing_stores(store_path, tmp_path):
    with LmdbStore(str(store_path)) as st, pytest.raises(StoreError, match="read-only"):
        quantize_vectors(st, "int8")
    with pytest.raises(StoreError, match="no store"):
        quantize_store_vectors(str(tmp_path / "nowhere"), "int8")


def test_verify_finds_a_missing_twin(store_path):
    quantize_store_vectors(str(store_path), "int8")
    with LmdbStore(str(store_path), write=True) as st:
        key = segments(st, st.qvectors_db())[1][0]
        st.write_batch(lambda txn: txn.delete(key, db=st.qvectors_db()))
    with LmdbStore(str(store_path)) as st:
        problems = admin.verify(st)
    assert problems and all(p.startswith("qvectors:") for p in problems)
    assert invoke("store", "verify", "--store", store_path).exit_code == 1
    # re-running the same scheme repairs it
    assert quantize_store_vectors(str(store_path), "int8")["changed"] is True
    assert_twins(store_path, "int8")


def test_a_reader_opened_before_quantizing_adopts_the_scheme(store_path, emb, queries):
    """Another process quantizes while this one has the store open for reading."""
    with LmdbStore(str(store_path)) as st:
        s = Searcher(st, emb)
        before = [h.id for h in s.search(queries[0][0])]
        assert st.qvectors_db() is None
        code = ("import sys; from memstack.core.vector_quant import quantize_store_vectors as q;"
                " q(sys.argv[1], 'q4')")
        subprocess.run([sys.executable, "-c", code, str(store_path)], check=True, cwd=REPO,
                       timeout=120)
        hits = s.search(queries[0][0], RecallOptions(explain=True))
        assert [h.id for h in hits] == before
        assert hits[0].explain["vec_scheme"] == "q4"
        assert st.qvectors_db() is not None
