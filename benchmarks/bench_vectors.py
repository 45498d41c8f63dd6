"""Quantized store vectors: recall@10 against the float ranking, bytes scanned, scan latency.

On a store of n synthetic turns (benchmarks/synth.py, built once by `memstack ingest` and
cached), each scheme in turn is set on a private copy with quantize_vectors(), then for every
query (3-6 consecutive words of a stored turn, embedded as recall embeds it):
  * recall@10: overlap of the scheme's vector-only top 10 (quantized scan, best candidates
    re-ranked with the exact floats) with the exact float top 10;
  * bytes per vector the scan reads, and float32's bytes divided by that;
  * scan: median time of scoring every memory (float32 matmul, or the quantized scan);
  * top-10: median time of the whole vector-only top 10 (scan, candidates, re-rank).
The schemes take turns for three rounds of timing, so noise from other processes is shared.

    .venv/bin/python benchmarks/bench_vectors.py --n 20000 [--queries 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402

SCHEMES = ("float", "int8", "binary", "q4")
WARMUP = 5
METRICS = (("recall@10", ""), ("bytes/vector", "B"), ("ratio_vs_float", "x"),
           ("scan_ms_p50", "ms"), ("top10_ms_p50", "ms"), ("quantize_s", "s"))


def make_queries(jsonl: str, n: int, count: int, seed: int) -> list[str]:
    turns = common.read_texts(jsonl, n)
    rng = random.Random(seed + 1)
    out: list[str] = []
    while len(out) < count:
        words = turns[rng.randrange(len(turns))]["text"].rstrip(".").split()
        k = rng.randint(3, 6)
        if len(words) >= k:
            i = rng.randint(0, len(words) - k)
            out.append(" ".join(words[i : i + k]))
    return out


def _timed(fn, items) -> tuple[list, list[float]]:
    """Results and seconds of fn over items, after a few untimed warm-up calls."""
    for x in items[:WARMUP]:
        fn(x)
    times, results = [], []
    for x in items:
        t0 = time.perf_counter()
        results.append(fn(x))
        times.append(time.perf_counter() - t0)
    return results, times


def bench_vector_quant(n: int = 100_000, queries: int = 200, seed: int = 0,
                       rounds: int = 3) -> list[dict]:
    """One record per (scheme, metric): {"bench": "vectors", "scheme", "metric", "value",
    "unit", "n", "queries"}. Latencies are medians over `rounds` turns of every scheme."""
    import numpy as np

    from memstack.core import vector_quant as vq
    from memstack.core.recall import Searcher
    from memstack.core.store import LmdbStore
    from memstack.plugins.registry import load_embedder

    source, _ = common.memstack_store(n, seed)
    texts = make_queries(common.synth_jsonl(n, seed), n, queries * 2, seed)
    records: list[dict] = []
    with common.temp_dir("memstack-bench-vectors-") as tmp:
        path = os.path.join(tmp, "store")
        shutil.copytree(source, path, ignore=shutil.ignore_patterns(".complete", "writer.lock"))
        with LmdbStore(path, write=True) as st:
            emb = load_embedder(st.meta["embedder"]["spec"])
            searcher = Searcher(st, emb)
            qvecs = [q for q in (searcher.query_vector(t) for t in texts) if q.any()][:queries]
            dim = len(qvecs[0])
            with st.snapshot() as snap:
                refs = [set(vq.vector_top(snap, q, 10, method="float")[0].tolist())
                        for q in qvecs]
            samples: dict[str, dict[str, list[float]]] = {}
            values: dict[str, dict[str, float]] = {}
            for rnd in range(rounds):  # schemes take turns, so machine noise hits all alike
                for scheme in SCHEMES:
                    t0 = time.perf_counter()
                    vq.quantize_vectors(st, "none" if scheme == "float" else scheme)
                    quantize_s = time.perf_counter() - t0
                    with st.snapshot() as snap:
                        scan = vq.float_scan if scheme == "float" else vq.scan
                        _, scan_t = _timed(lambda q, scan=scan, snap=snap: scan(snap, q), qvecs)
                        tops, top_t = _timed(
                            lambda q, snap=snap: vq.vector_top(snap, q, 10)[0], qvecs)
                    got = samples.setdefault(scheme, {"scan": [], "top": []})
                    got["scan"] += scan_t
                    got["top"] += top_t
                    if rnd == 0:
                        bpv = 4 * dim if scheme == "float" else vq.bytes_per_vector(scheme, dim)
                        recall = float(np.mean([len(r & set(t.tolist())) / 10
                                                for r, t in zip(refs, tops, strict=True)]))
                        values[scheme] = {"recall@10": recall, "bytes/vector": bpv,
                                          "ratio_vs_float": 4 * dim / bpv,
                                          "quantize_s": quantize_s}
            for scheme in SCHEMES:
                values[scheme]["scan_ms_p50"] = common.median(samples[scheme]["scan"]) * 1e3
                values[scheme]["top10_ms_p50"] = common.median(samples[scheme]["top"]) * 1e3
                for metric, unit in METRICS:
                    if scheme == "float" and metric == "quantize_s":
                        continue
                    records.append({"bench": "vectors", "scheme": scheme, "metric": metric,
                                    "value": values[scheme][metric], "unit": unit, "n": n,
                                    "queries": len(qvecs)})
            vq.quantize_vectors(st, "none")
    return records


def markdown(records: list[dict]) -> str:
    """One row per scheme."""
    by: dict[str, dict] = {}
    for r in records:
        by.setdefault(r["scheme"], {})[r["metric"]] = r["value"]
    lines = ["| scheme | recall@10 vs float | bytes/vector scanned | float ÷ scheme | "
             "scan p50 (ms) | vector top-10 p50 (ms) | quantize (s) |",
             "|---|---|---|---|---|---|---|"]
    for scheme, m in by.items():
        qs = m.get("quantize_s")
        lines.append(f"| {scheme} | {m['recall@10']:.3f} | {m['bytes/vector']:.0f} | "
                     f"{m['ratio_vs_float']:.1f} | {m['scan_ms_p50']:.2f} | "
                     f"{m['top10_ms_p50']:.2f} | {'' if qs is None else f'{qs:.2f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="memories in the store")
    ap.add_argument("--queries", type=int, default=200, help="queries per scheme")
    ap.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds over all schemes")
    ap.add_argument("--json", metavar="PATH", help="also write the records as JSON to PATH")
    args = ap.parse_args()
    records = bench_vector_quant(args.n, args.queries, args.seed, args.rounds)
    print(f"Vector quantization, n={args.n:,}, {records[0]['queries']} queries, "
          f"{args.rounds} rounds ({common.cpu_model()}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.2f})\n")
    print(markdown(records))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fp:
            json.dump(records, fp, indent=1)


if __name__ == "__main__":
    main()
