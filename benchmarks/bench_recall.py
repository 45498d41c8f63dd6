"""Recall latency, warm (library API) and cold (new process), and peak RSS, vs bm25s/chromadb.

Warm: each system runs in its own process on the same synthetic turns (benchmarks/synth.py):
  * memstack: `Searcher(LmdbStore(path), embedder).search(q, RecallOptions(k=10))` on a store
    built by `memstack ingest` (cached under the bench cache directory);
  * bm25s: `retrieve(k=10)` (query tokenization included) on an index of the same turns;
  * chromadb: `collection.query(query_embeddings=[v], n_results=10)` on a PersistentClient
    store of the same turns and vectors, v = memstack's HashingEmbedder().embed_query(q)
    (embedding included in the timing, as memstack's search embeds its query too).
Queries: 3-6 consecutive words of a random stored turn (fixed seed), 20 untimed warm-up
queries, then several rounds over all queries; p50/p95 per round, the median over rounds.
Then the same at 1M memories for memstack (and bm25s), after a memory bandwidth probe.

Cold: wall time from spawn to exit of `memstack recall --store STORE "q" -k 10 --format jsonl`
vs a fresh `python -c` that opens the chromadb store and queries it with a precomputed vector.

    .venv/bin/python benchmarks/bench_recall.py [--quick] [--json OUT]
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402

WARMUP = 20
# memstack as shipped lets OpenBLAS start one thread per core; on this shared 2-core machine
# that makes its BLAS calls many times slower whenever the other core is busy. The diagnostic
# rows run memstack once more with one BLAS thread, to show the size of that effect.
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
CHUNK = 50  # queries per turn when the warm rounds alternate between systems
TARGET_P95_100K_MS = 10.0
TARGET_P95_1M_MS = 60.0
TARGET_COLD_S = 0.35

CHROMA_COLD = r"""
import json, sys
import chromadb
from chromadb.config import Settings
c = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
col = c.get_collection(sys.argv[2])
r = col.query(query_embeddings=[json.loads(sys.argv[3])], n_results=10)
for i, d, s in zip(r["ids"][0], r["documents"][0], r["distances"][0]):
    print(json.dumps({"id": i, "text": d, "distance": s}))
"""


# -- queries --------------------------------------------------------------------------------
def make_queries(jsonl: str, n_turns: int, count: int, seed: int = 1) -> list[str]:
    turns = common.read_texts(jsonl, n_turns)
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        words = turns[rng.randrange(len(turns))]["text"].rstrip(".").split()
        k = rng.randint(3, 6)
        if len(words) < k:
            continue
        i = rng.randint(0, len(words) - k)
        out.append(" ".join(words[i : i + k]))
    return out


# -- workers (each in its own process, driven over stdin/stdout) ------------------------------
def setup_memstack(store: str) -> tuple:
    from memstack.core.recall import RecallOptions, Searcher
    from memstack.core.store import LmdbStore
    from memstack.plugins.registry import load_embedder

    st = LmdbStore(store)
    emb = load_embedder(st.meta["embedder"]["spec"])
    s = Searcher(st, emb)
    opts = RecallOptions(k=10)

    def q(text: str) -> int:
        return len(s.search(text, opts))

    return q, {"n": st.meta["stats"]["n"]}


def setup_bm25s(jsonl: str, n: int) -> tuple:
    import bm25s
    import Stemmer

    texts = [f"{t['speaker']}: {t['text']}" for t in common.read_texts(jsonl, n)]
    t0 = time.perf_counter()
    tok = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))
    corpus = tok.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False)
    model = bm25s.BM25()
    model.index(corpus, show_progress=False)
    del corpus
    index_s = time.perf_counter() - t0

    def q(text: str) -> int:
        qt = tok.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)
        _, scores = model.retrieve(qt, k=10, show_progress=False, n_threads=1)
        return int((scores > 0).sum())

    return q, {"n": len(texts), "index_s": index_s}


def setup_chroma(path: str) -> tuple:
    from memstack.core.embed import HashingEmbedder

    client = common.chroma_client(path)
    col = client.get_collection(common.CHROMA_COLLECTION)
    emb = HashingEmbedder()

    def q(text: str) -> int:
        v = emb.embed_query(text)
        return len(col.query(query_embeddings=[v], n_results=10)["ids"][0])

    return q, {"n": col.count()}


def serve(system: str, args, queries: list[str]) -> None:
    """Set up, warm up, then answer 'round' (time every query once) and 'quit' on stdin.
    Replies are one JSON line each, prefixed with '@@' (libraries may print too)."""
    t0 = time.perf_counter()
    if system == "memstack":
        fn, info = setup_memstack(args.store)
    elif system == "bm25s":
        fn, info = setup_bm25s(args.jsonl, args.n)
    else:
        fn, info = setup_chroma(args.path)
    info["setup_s"] = time.perf_counter() - t0
    info["hits"] = fn(queries[0])
    for q in queries[:WARMUP]:
        fn(q)

    def reply(obj: dict) -> None:
        sys.stdout.write("@@" + json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply(info)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "round":
            lo, hi = int(cmd[1]), int(cmd[2])
            lat = []
            for q in queries[lo:hi]:
                t1 = time.perf_counter()
                fn(q)
                lat.append((time.perf_counter() - t1) * 1000)
            reply({"lat_ms": lat})
        else:
            break
    reply({"vmhwm": common.vm_hwm()})


# -- parent side ----------------------------------------------------------------------------
class Worker:
    """One warm-latency worker process; its peak RSS is its own VmHWM."""

    def __init__(self, system: str, args: list[str], qfile: str, timeout: float,
                 env_extra: dict | None = None):
        import subprocess
        import tempfile

        self.system = system
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen([common.PY, os.path.abspath(__file__), "--worker", system,
                                   "--queries", qfile, *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err, text=True,
                                  env={**common.bench_env(), **(env_extra or {})},
                                  start_new_session=True)
        self.lat: list[list[float]] = []
        self.info = self._read(timeout)

    def _read(self, timeout: float) -> dict:
        import signal
        import threading

        def kill() -> None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            while True:
                line = self.p.stdout.readline()
                if not line:
                    self.err.seek(0)
                    tail = self.err.read().decode("utf-8", "replace")[-2000:]
                    raise RuntimeError(f"warm worker {self.system} died:\n{tail}")
                if line.startswith("@@"):
                    return json.loads(line[2:])
        finally:
            timer.cancel()

    def round(self, lo: int, hi: int, timeout: float) -> list[float]:
        self.p.stdin.write(f"round {lo} {hi}\n")
        self.p.stdin.flush()
        return self._read(timeout)["lat_ms"]

    def close(self, timeout: float = 60) -> dict:
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        end = self._read(timeout)
        self.p.wait(timeout)
        self.err.close()
        out = dict(self.info)
        out["lat_ms"] = self.lat
        out["p50"] = common.median([common.pct(r, 50) for r in self.lat])
        out["p95"] = common.median([common.pct(r, 95) for r in self.lat])
        out["p95_rounds"] = [round(common.pct(r, 95), 2) for r in self.lat]
        out["rss"] = end["vmhwm"]
        out["queries"] = len(self.lat[0])
        return out

    def kill(self) -> None:
        if self.p.poll() is None:
            import signal

            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait()


def warm(specs: dict[str, tuple[str, list[str], dict]], qfile: str, rounds: int, timeout: float,
         before=None) -> dict[str, dict]:
    """Start every worker (one after another), then run the rounds (each query once per round)
    in chunks of CHUNK queries alternating between the systems, so that drift in machine load
    or memory bandwidth hits every system alike."""
    workers: dict[str, Worker] = {}
    results: dict[str, dict] = {}
    try:
        for name, (system, args, env_extra) in specs.items():
            try:
                workers[name] = Worker(system, args, qfile, timeout, env_extra)
            except (RuntimeError, OSError) as exc:
                results[name] = {"error": str(exc)[-300:]}
        if before is not None:
            before()
        with open(qfile, encoding="utf-8") as fp:
            nq = len(json.load(fp))
        for _ in range(rounds):
            lat: dict[str, list[float]] = {name: [] for name in workers}
            for lo in range(0, nq, CHUNK):
                for name, w in workers.items():
                    lat[name] += w.round(lo, min(nq, lo + CHUNK), timeout)
            for name, w in workers.items():
                w.lat.append(lat[name])
        for name, w in workers.items():
            results[name] = w.close()
    finally:
        for w in workers.values():
            w.kill()
    return results


def warm_rows(label: str, scale: str, r: dict) -> list[dict]:
    if "error" in r:
        return [{"system": label, "metric": f"warm p95 @{scale}", "value": None, "unit": "ms",
                 "group": f"p95{scale}"}]
    rows = [{"system": label, "metric": f"warm p50 @{scale}", "value": r["p50"], "unit": "ms",
             "group": f"p50{scale}"},
            {"system": label, "metric": f"warm p95 @{scale}", "value": r["p95"], "unit": "ms",
             "group": f"p95{scale}"},
            {"system": label, "metric": f"peak RSS, warm @{scale}", "value": common.mib(r["rss"]),
             "unit": "MiB", "group": f"rss{scale}"}]
    return rows[:2] if "diagnostic" in label else rows


def scale_name(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def cold_runs(cmds: dict[str, tuple[list[str], dict]], runs: int, check) -> dict[str, dict]:
    """Alternate the systems run by run so drift hits them alike; one untimed run each first.
    Peak RSS from 3 more runs each under /usr/bin/time (not in the timings)."""
    base = common.bench_env()
    envs = {}
    for name, (cmd, extra) in cmds.items():
        envs[name] = {**base, **extra}
        for key in [k for k, v in extra.items() if v is None]:
            envs[name].pop(key, None)
        common.run_measured(cmd, timeout=120, poll=None, env=envs[name])
    out = {k: {"wall": [], "rss": []} for k in cmds}
    for _ in range(runs):
        for name, (cmd, _) in cmds.items():
            res = common.run_measured(cmd, timeout=120, poll=None, env=envs[name])
            check(name, res.stdout)
            out[name]["wall"].append(res.wall_s)
    for _ in range(3):
        for name, (cmd, _) in cmds.items():
            res = common.run_measured(cmd, timeout=120, poll=0.01, env=envs[name],
                                      time_rss=True)
            out[name]["rss"].append(res.peak_rss)
    return out


def run(quick: bool) -> dict:
    from bench_ingest import chroma_store

    from memstack.core.embed import HashingEmbedder

    t0 = time.perf_counter()
    n = 20_000 if quick else 100_000
    big = None if quick else 1_000_000
    rounds = 2 if quick else 3
    n_queries = 200 if quick else 300
    cold_n = 7 if quick else 9
    rows, notes, targets = [], [], []
    sc = scale_name(n)

    jsonl = common.synth_jsonl(n)
    ms_store, built = common.memstack_store(n)
    if built:
        notes.append(f"memstack {sc} store built now with `memstack ingest` in {built:.1f} s")
    ch_store, ch_built = chroma_store(n)
    if ch_built:
        notes.append(f"chromadb {sc} store built now in {ch_built:.0f} s")
    notes.append(f"memstack {sc} store on disk: {common.mib(common.dir_bytes(ms_store))} MiB; "
                 f"chromadb {sc} store: {common.mib(common.dir_bytes(ch_store))} MiB")
    queries = make_queries(jsonl, n, n_queries)

    with common.temp_dir() as tmp:
        qfile = os.path.join(tmp, "queries.json")
        with open(qfile, "w", encoding="utf-8") as fp:
            json.dump(queries, fp)
        bw = {}

        def probe(key: str) -> None:
            bw[key] = common.memory_bandwidth_gbs()

        res = warm({"memstack": ("memstack", ["--store", ms_store], {}),
                    "memstack-1t": ("memstack", ["--store", ms_store], ONE_BLAS_THREAD),
                    "bm25s": ("bm25s", ["--jsonl", jsonl, "--n", str(n)], {}),
                    "chromadb": ("chromadb", ["--path", ch_store], {})}, qfile, rounds, 600,
                   before=lambda: probe("small"))
        labels = {"memstack": "memstack Searcher.search",
                  "memstack-1t": "memstack, OPENBLAS_NUM_THREADS=1 (diagnostic)",
                  "bm25s": "bm25s retrieve", "chromadb": "chromadb query"}
        for k, r in res.items():
            rows += warm_rows(labels[k], sc, r)
        ok = {k: r for k, r in res.items() if "error" not in r}
        notes.append(f"warm @{sc}: {n:,} memories, {n_queries} queries x {rounds} rounds per "
                     f"system, alternating between systems every {CHUNK} queries, after "
                     f"{WARMUP} warm-up queries; memory bandwidth just before: "
                     f"{bw['small']} GB/s; p95 per round (ms): "
                     + "; ".join(f"{k} {r['p95_rounds']}" for k, r in ok.items())
                     + "; setup s (open, or build the index): "
                     + ", ".join(f"{k} {r['setup_s']:.2f}" for k, r in ok.items())
                     + "; hits for the first query: "
                     + ", ".join(f"{k} {r['hits']}" for k, r in ok.items())
                     + "; peak RSS = the worker's VmHWM (includes the bm25s corpus texts)")
        for k, r in res.items():
            if "error" in r:
                notes.append(f"warm @{sc}: {k} failed: {r['error']}")
        p95 = res["memstack"].get("p95", float("nan"))
        targets.append({"name": f"warm p95 @{sc} <= {TARGET_P95_100K_MS:.0f} ms",
                        "ok": p95 <= TARGET_P95_100K_MS if not quick else None,
                        "detail": f"{p95:.1f} ms" + (" (quick: 20k, not the target size)"
                                                     if quick else "")})

        # -- cold -------------------------------------------------------------------------
        emb = HashingEmbedder()
        cq = queries[0]
        vec = json.dumps([round(float(x), 7) for x in emb.embed_query(cq)])
        ms_cmd = [os.path.join(common.VENV_BIN, "memstack"), "recall", "--store", ms_store, cq,
                  "-k", "10", "--format", "jsonl"]
        cmds = {
            "memstack": (ms_cmd, {}),
            "memstack-1t": (ms_cmd, ONE_BLAS_THREAD),
            "memstack-nopyc": (ms_cmd, {"PYTHONDONTWRITEBYTECODE": "1",
                                        "PYTHONPYCACHEPREFIX": None}),
            "chromadb": ([common.PY, "-c", CHROMA_COLD, ch_store, common.CHROMA_COLLECTION, vec],
                         {}),
        }

        def check(name: str, stdout: str) -> None:
            lines = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
            got = len([r for r in lines if r.get("kind", "hit") == "hit"])
            if got != 10:
                raise RuntimeError(f"cold {name}: expected 10 hits, got {got}:\n{stdout[:500]}")

        cold = cold_runs(cmds, cold_n, check)
        py_start = common.median([common.run_measured([common.PY, "-c", "pass"], timeout=60,
                                                      poll=None).wall_s for _ in range(5)])
        for name, label in (("memstack", "memstack recall (new process)"),
                            ("memstack-1t", "memstack, OPENBLAS_NUM_THREADS=1 (diagnostic)"),
                            ("memstack-nopyc", "memstack, no .pyc caches (diagnostic)"),
                            ("chromadb", "chromadb python -c (new process)")):
            c = cold[name]
            rows.append({"system": label, "metric": f"cold median @{sc}",
                         "value": common.median(c["wall"]), "unit": "s", "group": "cold"})
            if "diagnostic" in label:
                continue
            rows.append({"system": label, "metric": f"peak RSS, cold @{sc}",
                         "value": common.mib(common.median(c["rss"])), "unit": "MiB",
                         "group": "coldrss"})
        cm = common.median(cold["memstack"]["wall"])
        notes.append(f"cold @{sc}: {cold_n} runs each, alternating, after one untimed run each; "
                     "wall s per run: "
                     + "; ".join(f"{k} " + ", ".join(f"{w:.3f}" for w in c["wall"])
                                 for k, c in cold.items())
                     + f"; a bare `python -c pass` takes {py_start:.3f} s here. Cold RSS: "
                     "/usr/bin/time %M (max with 10 ms RSS polling), 3 more runs each. Python "
                     "bytecode caches are used (written under the bench cache via "
                     "PYTHONPYCACHEPREFIX, as an installed wheel would have them); the "
                     "'no .pyc caches' row runs with PYTHONDONTWRITEBYTECODE=1 as this "
                     "workplace's shell sets it, so memstack's modules compile on every start.")
        targets.append({"name": f"cold median @{sc} <= {TARGET_COLD_S} s",
                        "ok": cm <= TARGET_COLD_S if not quick else None,
                        "detail": f"{cm:.3f} s" + (" (quick: 20k)" if quick else "")})

        # -- 1M -----------------------------------------------------------------------------
        if big:
            bs = scale_name(big)
            t1 = time.perf_counter()
            big_jsonl = common.synth_jsonl(big)
            gen_s = time.perf_counter() - t1
            big_store, big_built = common.memstack_store(big, timeout=1500)
            if big_built:
                notes.append(f"memstack {bs} store built now with `memstack ingest` in "
                             f"{big_built:.0f} s ({big / big_built:,.0f} turns/s, 1 run)"
                             + (f"; generating the JSONL took {gen_s:.0f} s more"
                                if gen_s >= 1 else ""))
            else:
                notes.append(f"memstack {bs} store reused from the cache ({big_store})")
            notes.append(f"memstack {bs} store on disk: "
                         f"{common.mib(common.dir_bytes(big_store))} MiB")
            bq = make_queries(big_jsonl, big, n_queries)
            bqfile = os.path.join(tmp, "queries-big.json")
            with open(bqfile, "w", encoding="utf-8") as fp:
                json.dump(bq, fp)
            rb = warm({"memstack": ("memstack", ["--store", big_store], {}),
                       "memstack-1t": ("memstack", ["--store", big_store], ONE_BLAS_THREAD),
                       "bm25s": ("bm25s", ["--jsonl", big_jsonl, "--n", str(big)], {})},
                      bqfile, rounds, 600, before=lambda: probe("big"))
            bw_after = common.memory_bandwidth_gbs()
            for k, r in rb.items():
                rows += warm_rows(labels[k], bs, r)
            parts = [f"{k} {r['p95_rounds']}" if "error" not in r else f"{k} failed: "
                     f"{r['error'][-200:]}" for k, r in rb.items()]
            notes.append(f"warm @{bs}: memory bandwidth measured right before the timed rounds: "
                         f"{bw['big']} GB/s, right after: {bw_after} GB/s (numpy copy of 512 MB, "
                         f"bytes read + written); p95 per round (ms): {'; '.join(parts)}; bm25s "
                         f"index build {rb.get('bm25s', {}).get('setup_s', float('nan')):.0f} s; "
                         f"chromadb not run at {bs}: building its store would take 10+ min at "
                         "the add() rate of section 2")
            p95_big = rb["memstack"].get("p95", float("nan"))
            targets.append({"name": f"warm p95 @{bs} <= {TARGET_P95_1M_MS:.0f} ms",
                            "ok": bool(p95_big <= TARGET_P95_1M_MS),
                            "detail": f"{p95_big:.1f} ms at {bw['big']} GB/s"})
    notes.append("ratio = memstack / row for the same metric: < 1 means memstack is faster or "
                 "smaller.")
    return {"key": "recall", "title": f"3-5. Recall latency and memory ({sc}"
                                      + (f" and {scale_name(big)}" if big else "")
                                      + " synthetic memories)",
            "command": common.command_line(), "rows": rows, "notes": notes,
            "targets": targets, "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict | None:
    import argparse

    ap = common.base_args(__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["memstack", "bm25s", "chromadb"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--queries", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        with open(args.queries, encoding="utf-8") as fp:
            serve(args.worker, args, json.load(fp))
        return None
    t0, meter = time.perf_counter(), common.NoiseMeter()
    return common.finish(run(args.quick), args, t0, meter)


if __name__ == "__main__":
    main()
