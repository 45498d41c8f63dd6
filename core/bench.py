"""Measurements on real data: store throughput and retrieval quality/latency on LoCoMo files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator

import numpy as np

from memstack import __version__
from memstack.core.ingest import IngestOptions, IngestStats, ingest_items
from memstack.core.parse import parse_locomo_obj
from memstack.core.recall import RecallOptions, Searcher
from memstack.core.store import LmdbStore

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop",
              5: "adversarial"}


def machine() -> dict:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "system": platform.system(), "memstack": __version__}


def bench_record(name: str, metric: str, value: float, **extra) -> dict:
    return {"v": 1, "kind": "bench", "bench": name, "metric": metric,
            "value": round(float(value), 6), **extra}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


# -- store throughput ----------------------------------------------------------------
def bench_store(n: int = 20000, dim: int = 256, batch: int = 2000,
                seed: int = 0) -> Iterator[dict]:
    """put/get/scan throughput of the LMDB store on synthetic chat-sized records."""
    from memstack.core.embed import HashingEmbedder
    from memstack.core.ingest import prepare
    from memstack.formats.records import memory_record

    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(5000)]
    emb = HashingEmbedder(f"dim={dim}")
    recs = []
    for i in range(n):
        text = " ".join(words[j] for j in rng.integers(0, len(words), 24))
        recs.append(memory_record(ns="bench", text=text, tokens=30, t_event=None,
                                  t_ingest="2024-01-01T00:00:00Z",
                                  source={"uri": "bench", "offset": i}))
    preps = [prepare(recs[i : i + batch], emb, None) for i in range(0, n, batch)]
    tmp = tempfile.mkdtemp(prefix="memstack-bench-")
    try:
        with LmdbStore(tmp, write=True, create=True) as st:
            st.check_identity(emb.identity(), None)
            t0 = time.perf_counter()
            for p in preps:
                st.add(p)
            put = time.perf_counter() - t0
            ids = [recs[i]["id"] for i in rng.integers(0, n, min(n, 20000))]
            t0 = time.perf_counter()
            with st.snapshot() as snap:
                for rid in ids:
                    snap.record_by_id(rid)
            get = time.perf_counter() - t0
            t0 = time.perf_counter()
            count = sum(1 for _ in st.iter_records())
            scan = time.perf_counter() - t0
        size = os.path.getsize(os.path.join(tmp, "data.mdb"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    yield bench_record("store", "put_records_per_s", n / put, n=n, batch=batch)
    yield bench_record("store", "get_records_per_s", len(ids) / get, n=len(ids))
    yield bench_record("store", "scan_records_per_s", count / scan, n=count)
    yield bench_record("store", "bytes_per_record", size / n, n=n)


# -- retrieval quality on LoCoMo -----------------------------------------------------
def load_locomo(path: str) -> list[dict]:
    with open(path, "rb") as fp:
        data = json.load(fp)
    return data if isinstance(data, list) else [data]


def questions(sample: dict) -> list[dict]:
    """Questions with evidence, adversarial (category 5) excluded as the benchmark asks."""
    return [q for q in sample.get("qa", [])
            if q.get("category") != 5 and q.get("evidence")]


def evidence_ids(q: dict) -> set[str]:
    """Evidence like 'D1:3' (some entries list several separated by ';' or spaces)."""
    out = set()
    for ev in q["evidence"]:
        for part in str(ev).replace(";", " ").replace(",", " ").split():
            out.add(part.strip())
    return out


def score_ranking(ranked: list[str], gold: set[str], ks: tuple[int, ...]) -> dict:
    """recall@k (share of evidence in the top k), hit@k, and reciprocal rank."""
    out = {}
    for k in ks:
        top = set(ranked[:k])
        out[f"recall@{k}"] = len(gold & top) / len(gold)
        out[f"hit@{k}"] = float(bool(gold & top))
    rr = 0.0
    for i, d in enumerate(ranked):
        if d in gold:
            rr = 1.0 / (i + 1)
            break
    out["mrr"] = rr
    return out


def bench_recall(dataset: str, ks: tuple[int, ...] = (1, 5, 10, 20), embedder_spec: str = "hash",
                 cold_runs: int = 5, opts: RecallOptions | None = None) -> Iterator[dict]:
    """Ingest each conversation into a temporary store and ask every question with evidence."""
    from memstack.plugins.registry import load_embedder

    samples = load_locomo(dataset)
    per_cat: dict[str, list[dict]] = defaultdict(list)
    latencies: list[float] = []
    cold: list[float] = []
    base = opts or RecallOptions()
    for sample in samples:
        tmp = tempfile.mkdtemp(prefix="memstack-bench-")
        try:
            emb = load_embedder(embedder_spec)
            with LmdbStore(tmp, write=True, create=True) as st:
                st.check_identity(emb.identity(), None)
                ingest_items(parse_locomo_obj(sample, dataset), dataset, embedder=emb,
                             tokenizer=None, store=st, out=None, opts=IngestOptions(),
                             stats=IngestStats())
                searcher = Searcher(st, emb)
                o = RecallOptions(**{**base.__dict__, "k": max(ks)})
                for q in questions(sample):
                    t0 = time.perf_counter()
                    hits = searcher.search(str(q["question"]), o)
                    latencies.append(time.perf_counter() - t0)
                    ranked = [str(h.record["source"].get("offset")) for h in hits]
                    res = score_ranking(ranked, evidence_ids(q), ks)
                    per_cat[CATEGORIES.get(q.get("category"), "other")].append(res)
                    per_cat["all"].append(res)
            first_q = next(iter(questions(sample)), None)
            if first_q and cold_runs:
                cold.extend(cold_start(tmp, str(first_q["question"]), cold_runs))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for cat in sorted(per_cat, key=lambda c: (c != "all", c)):
        rows = per_cat[cat]
        for metric in rows[0]:
            yield bench_record("recall", metric, float(np.mean([r[metric] for r in rows])),
                               category=cat, questions=len(rows), dataset=dataset)
    yield bench_record("recall", "latency_p50_ms", 1000 * percentile(latencies, 50),
                       queries=len(latencies))
    yield bench_record("recall", "latency_p95_ms", 1000 * percentile(latencies, 95),
                       queries=len(latencies))
    if cold:
        yield bench_record("recall", "cold_start_median_s", float(np.median(cold)),
                           runs=len(cold))


def cold_start(store: str, query: str, runs: int) -> list[float]:
    """Wall time of a fresh `memstack recall` process until it has printed its hits."""
    cmd = [sys.executable, "-m", "memstack", "recall", "--store", store, query, "-k", "10",
           "--format", "jsonl"]
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out
