"""Consolidate: quality on a generated ground truth, speed at 100k memories, LoCoMo recall.

Quality: core/consolidate/groundtruth.py generates users' conversations with known
duplicates, value changes, other people's facts and injected instructions; they are ingested
into a fresh store (library `ingest` of the record stream), scored by
core/consolidate/evaluate.py, consolidated with
`consolidate(store, embedder, ConsolidateOptions())` (no LLM) and scored again. Targets:
merge and supersession F1 >= 0.9, no unrelated fact invalidated.

Speed: groundtruth.scale() memories in time order; the first 100k are ingested and
consolidated in one full pass, then 10 times 1k newer memories are ingested and an
incremental run consolidates them. Ingest time is not counted. Targets: full pass <= 60 s,
every incremental run <= 2 s.

LoCoMo: recall@10 of every question with evidence (adversarial excluded, as core/bench.py
does) on ../shared/data/locomo-sample.json, before and after consolidating each conversation's
store; a hit on a merged memory counts through the turns it was derived from. Target: no drop.

With --llm gguf:PATH the quality set is consolidated once more with the model for the
ambiguous cases, and its LLM calls per 1k memories are reported.

    .venv/bin/python benchmarks/bench_consolidate.py [--quick] [--json OUT] [--llm SPEC]
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402

TARGET_F1 = 0.9
TARGET_FULL_S = 60.0
TARGET_INCREMENTAL_S = 2.0
RECALL_K = 10
SYSTEM = "memstack consolidate"
BASELINE = "no consolidation (baseline)"


def _embedder():
    from memstack.core.embed import HashingEmbedder

    return HashingEmbedder()


def open_store(path: str, emb):
    from memstack.core.store import LmdbStore

    st = LmdbStore(path, write=True, create=True)
    st.check_identity(emb.identity(), None)
    return st


def add(st, records: list[dict], emb, tmp: str) -> float:
    """Ingest records as a record stream through the library; returns seconds."""
    from memstack.core.consolidate.groundtruth import to_stream
    from memstack.core.ingest import IngestOptions, ingest

    path = os.path.join(tmp, f"batch-{time.perf_counter_ns()}.msgpack")
    to_stream(records, path)
    t0 = time.perf_counter()
    with open(path, "rb") as fp:
        ingest([(path, fp)], embedder=emb, tokenizer=None, store=st,
               opts=IngestOptions(workers=1))
    os.unlink(path)
    return time.perf_counter() - t0


def consolidate(st, emb, llm=None, full: bool = False, now: float | None = None):
    from memstack.core.consolidate.run import ConsolidateOptions
    from memstack.core.consolidate.run import consolidate as run

    calls = {"max_llm_calls": 10**6} if llm is not None else {}
    return run(st, emb, ConsolidateOptions(full=full, llm=llm, now=now, **calls))


def load_llm(spec: str):
    from memstack.core.consolidate.llm import load_llm as load

    return load(spec, max_calls=10**6, max_tokens=10**9, cache={})


def _end_time(records: list[dict]) -> float:
    from memstack.formats.records import from_iso

    return max(from_iso(r["t_event"]) for r in records) + 86400


# -- quality ------------------------------------------------------------------------------
def quality(quick: bool, tmp: str, llm=None) -> dict:
    from memstack.core.consolidate import groundtruth as gt
    from memstack.core.consolidate.evaluate import evaluate

    ds = gt.generate(users=8 if quick else 20, seed=0)
    emb = _embedder()
    path = os.path.join(tmp, f"quality-{'llm' if llm else 'rules'}")
    with open_store(path, emb) as st:
        add(st, ds.records, emb, tmp)
        before = evaluate(st, ds.truth, emb, recall_k=RECALL_K)
        t0 = time.perf_counter()
        report = consolidate(st, emb, llm=llm, now=_end_time(ds.records))
        seconds = time.perf_counter() - t0
        after = evaluate(st, ds.truth, emb, recall_k=RECALL_K)
    return {"stats": gt.stats(ds), "before": before, "after": after, "seconds": seconds,
            "counts": dict(report.counts), "llm_calls": report.llm_calls,
            "examined": report.examined}


def quality_rows(q: dict, label: str = SYSTEM) -> list[dict]:
    a, b = q["after"], q["before"]
    rows = []
    for metric, key in (("merge precision", "merge_precision"),
                        ("merge recall", "merge_recall"), ("merge F1", "merge_f1"),
                        ("supersession precision", "supersede_precision"),
                        ("supersession recall", "supersede_recall"),
                        ("supersession F1", "supersede_f1"),
                        ("poison quarantine precision", "poison_precision"),
                        ("poison quarantine recall", "poison_recall")):
        rows.append({"system": label, "metric": metric, "value": a[key], "unit": "",
                     "higher": True, "group": key})
    rows.append({"system": label, "metric": "unrelated facts invalidated",
                 "value": float(a["unrelated_invalidated"]), "unit": "facts", "higher": False,
                 "group": "unrelated"})
    rows.append({"system": label, "metric": "input memories still present",
                 "value": a["sources_present"] / max(1, a["inputs"]), "unit": "",
                 "higher": True, "group": "present"})
    for metric, key in (("current-fact accuracy (top 1)", "current_accuracy"),
                        (f"current-fact accuracy (top {RECALL_K})", "current_accuracy_at_k"),
                        ("as-of accuracy (top 1)", "as_of_accuracy"),
                        (f"as-of accuracy (top {RECALL_K})", "as_of_accuracy_at_k")):
        rows.append({"system": label, "metric": metric, "value": a[key], "unit": "",
                     "higher": True, "group": key})
        if label == SYSTEM:
            rows.append({"system": BASELINE, "metric": metric, "value": b[key], "unit": "",
                         "higher": True, "group": key})
    return rows


# -- speed ----------------------------------------------------------------------------------
def speed(quick: bool, tmp: str) -> dict:
    from memstack.core.consolidate import groundtruth as gt

    n, inc, runs = (20_000, 1000, 3) if quick else (100_000, 1000, 10)
    t0 = time.perf_counter()
    ds = gt.scale(n + inc * runs, seed=1)
    gen_s = time.perf_counter() - t0
    emb = _embedder()
    out = {"n": n, "inc": inc, "runs": runs, "gen_s": gen_s, "incremental": [],
           "inc_examined": []}
    with open_store(os.path.join(tmp, "speed"), emb) as st:
        out["ingest_s"] = add(st, ds.records[:n], emb, tmp)
        t0 = time.perf_counter()
        rep = consolidate(st, emb, full=True, now=_end_time(ds.records[:n]))
        out["full_s"] = time.perf_counter() - t0
        out["full_examined"] = rep.examined
        out["full_counts"] = dict(rep.counts)
        for i in range(runs):
            lo = n + i * inc
            batch = ds.records[lo : lo + inc]
            add(st, batch, emb, tmp)
            t0 = time.perf_counter()
            rep = consolidate(st, emb, now=_end_time(batch))
            out["incremental"].append(time.perf_counter() - t0)
            out["inc_examined"].append(rep.examined)
    return out


# -- LoCoMo -----------------------------------------------------------------------------------
def _offsets(snap, rec: dict, depth: int = 0) -> set[str]:
    """LoCoMo turn ids a hit stands for: its own, or those of the turns it was merged from."""
    if rec.get("level") not in ("summary", "cluster") and depth < 8:
        srcs = [ln["id"] for ln in rec.get("links") or () if ln.get("type") == "derived_from"]
        if srcs:
            out: set[str] = set()
            for sid in srcs:
                src = snap.record_by_id(sid)
                if src is not None:
                    out |= _offsets(snap, src, depth + 1)
            return out
    off = (rec.get("source") or {}).get("offset")
    return {str(off)} if off is not None and rec.get("level") not in ("summary",
                                                                       "cluster") else set()


def _recall_at_k(st, emb, qs: list[dict]) -> list[float]:
    from memstack.core.bench import evidence_ids
    from memstack.core.recall import RecallOptions, Searcher

    searcher = Searcher(st, emb)
    out = []
    for q in qs:
        gold = evidence_ids(q)
        hits = searcher.search(str(q["question"]), RecallOptions(k=RECALL_K))
        with st.snapshot() as snap:
            got: set[str] = set()
            for h in hits:
                got |= _offsets(snap, h.record)
        out.append(len(gold & got) / len(gold))
    return out


def locomo(tmp: str) -> dict:
    from memstack.core.bench import load_locomo, questions
    from memstack.core.ingest import IngestOptions, IngestStats, ingest_items
    from memstack.core.parse import parse_locomo_obj

    before, after, secs, counts = [], [], 0.0, {}
    for i, sample in enumerate(load_locomo(common.LOCOMO)):
        emb = _embedder()
        with open_store(os.path.join(tmp, f"locomo-{i}"), emb) as st:
            ingest_items(parse_locomo_obj(sample, common.LOCOMO), common.LOCOMO, embedder=emb,
                         tokenizer=None, store=st, out=None, opts=IngestOptions(),
                         stats=IngestStats())
            qs = questions(sample)
            before += _recall_at_k(st, emb, qs)
            t0 = time.perf_counter()
            rep = consolidate(st, emb)
            secs += time.perf_counter() - t0
            for k, v in rep.counts.items():
                counts[k] = counts.get(k, 0) + v
            after += _recall_at_k(st, emb, qs)
    n = max(1, len(before))
    return {"before": sum(before) / n, "after": sum(after) / n, "questions": len(before),
            "seconds": secs, "counts": counts}


# -- the section --------------------------------------------------------------------------------
def _counts(c: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def run(quick: bool, llm_spec: str | None) -> dict:
    rows, notes, targets = [], [], []
    judge = None if quick else True
    with common.temp_dir() as tmp:
        q = quality(quick, tmp)
        rows += quality_rows(q)
        a, s = q["after"], q["stats"]
        notes.append(
            f"ground truth (groundtruth.generate(users={8 if quick else 20}, seed=0)): "
            f"{s['memories']} memories in {s['namespaces']} namespaces, "
            f"{s['fact_memories']} stating facts over {s['keys']} subject/slot keys "
            f"({s['changed_keys']} change value); {s['duplicate_pairs']} duplicate pairs "
            f"({s.get('pairs_exact', 0)} exact, {s.get('pairs_near', 0)} near, "
            f"{s.get('pairs_paraphrase', 0)} paraphrased), {s['supersedes']} supersession "
            f"pairs, {s['unrelated']} unrelated facts, {s['poison']} injected instructions, "
            f"{s['queries']} queries ({s['as_of_queries']} as-of)")
        notes.append(f"quality run: consolidate took {q['seconds']:.2f} s, examined "
                     f"{q['examined']}; actions: {_counts(q['counts'])}. Merge recall by kind: "
                     f"exact {a['merge_recall_exact']:.3f}, near {a['merge_recall_near']:.3f}, "
                     f"paraphrase {a['merge_recall_paraphrase']:.3f}; "
                     f"{a['merge_pairs_false']} wrong pairs, {a['merge_pairs_neutral']} "
                     f"identical chit-chat pairs (not scored); supersession links "
                     f"{a['supersede_links']} ({a['supersede_links_right']} right), stale "
                     f"statements still valid {a['stale_open']}; statements of current values "
                     f"invalidated {a['current_invalidated']}")
        notes.append("accuracy rows: each truth query asked with `Searcher.search` (its "
                     f"namespace, k={RECALL_K}, as_of for as-of queries); top 1: the first "
                     f"hit names the expected value; top {RECALL_K}: a hit names it and no "
                     "hit above it names another value the key had")
        for name, key in (("merge F1", "merge_f1"), ("supersession F1", "supersede_f1")):
            targets.append({"name": f"{name} >= {TARGET_F1} without LLM",
                            "ok": (a[key] >= TARGET_F1) if judge else None,
                            "detail": f"{a[key]:.3f}"})
        targets.append({"name": "0 unrelated facts invalidated",
                        "ok": (a["unrelated_invalidated"] == 0) if judge else None,
                        "detail": f"{a['unrelated_invalidated']} of {a['unrelated']}"})

        if llm_spec:
            ql = quality(quick, tmp, llm=load_llm(llm_spec))
            rows += quality_rows(ql, f"memstack consolidate --llm {os.path.basename(llm_spec)}")
            per_k = 1000 * ql["llm_calls"] / max(1, ql["stats"]["memories"])
            rows.append({"system": f"memstack consolidate --llm {os.path.basename(llm_spec)}",
                         "metric": "LLM calls per 1k memories", "value": per_k, "unit": "",
                         "higher": False, "group": "llm"})
            notes.append(f"--llm {llm_spec}: {ql['llm_calls']} calls for "
                         f"{ql['stats']['memories']} memories, {ql['seconds']:.1f} s")

        sp = speed(quick, tmp)
        sc = f"{sp['n'] // 1000}k"
        med, worst = common.median(sp["incremental"]), max(sp["incremental"])
        rows += [{"system": SYSTEM, "metric": f"full pass @{sc}", "value": sp["full_s"],
                  "unit": "s", "higher": False, "group": "full"},
                 {"system": SYSTEM, "metric": f"incremental run, {sp['inc']} new, median",
                  "value": med, "unit": "s", "higher": False, "group": "inc"},
                 {"system": SYSTEM, "metric": f"incremental run, {sp['inc']} new, max",
                  "value": worst, "unit": "s", "higher": False, "group": "incmax"}]
        notes.append(f"speed: groundtruth.scale({sp['n'] + sp['inc'] * sp['runs']:,}) took "
                     f"{sp['gen_s']:.1f} s; ingesting {sp['n']:,} took {sp['ingest_s']:.1f} s "
                     f"(not counted); full pass examined {sp['full_examined']:,}, actions "
                     f"{_counts(sp['full_counts'])}; incremental runs (s): "
                     + ", ".join(f"{x:.2f}" for x in sp["incremental"])
                     + f"; examined per run: {sp['inc_examined']}")
        targets.append({"name": f"full pass @100k <= {TARGET_FULL_S:.0f} s",
                        "ok": (sp["full_s"] <= TARGET_FULL_S) if judge else None,
                        "detail": f"{sp['full_s']:.1f} s" + (f" (quick: {sc})" if quick else "")})
        targets.append({"name": f"incremental 1k <= {TARGET_INCREMENTAL_S:.0f} s/run",
                        "ok": (worst <= TARGET_INCREMENTAL_S) if judge else None,
                        "detail": f"max {worst:.2f} s, median {med:.2f} s over "
                                  f"{sp['runs']} runs"})

        lo = locomo(tmp)
        rows += [{"system": SYSTEM, "metric": f"LoCoMo recall@{RECALL_K}", "value": lo["after"],
                  "unit": "", "higher": True, "group": "locomo"},
                 {"system": BASELINE, "metric": f"LoCoMo recall@{RECALL_K}",
                  "value": lo["before"], "unit": "", "higher": True, "group": "locomo"}]
        notes.append(f"LoCoMo ({os.path.relpath(common.LOCOMO, common.REPO)}): "
                     f"{lo['questions']} questions; consolidate took {lo['seconds']:.2f} s, "
                     f"actions {_counts(lo['counts'])}; a hit on a merged memory counts "
                     "through the turns it was derived from, summary and cluster hits count "
                     "for no turn")
        targets.append({"name": f"LoCoMo recall@{RECALL_K} does not drop",
                        "ok": (lo["after"] >= lo["before"] - 1e-9) if judge else None,
                        "detail": f"{lo['before']:.3f} -> {lo['after']:.3f}"})
    return {"key": "consolidate", "title": "Consolidate (issue #3)",
            "command": common.command_line(), "rows": rows, "notes": notes,
            "targets": targets}


def main(argv: list[str] | None = None) -> dict:
    ap = common.base_args(__doc__.split("\n")[0])
    ap.add_argument("--llm", metavar="SPEC",
                    help="also consolidate the quality set with this model (gguf:PATH)")
    args = ap.parse_args(argv)
    t0, meter = time.perf_counter(), common.NoiseMeter()
    return common.finish(run(args.quick, args.llm), args, t0, meter)


if __name__ == "__main__":
    main()
