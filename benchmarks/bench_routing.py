"""Granularity routing (MemGAS) on LoCoMo: does answering from summaries/clusters help recall?

Each conversation of ../shared/data/locomo-sample.json is ingested into a fresh store (hash
embedder, as core/bench.py does). Session summaries and topic clusters are made with
core/consolidate/clusters.py and added as memories of level summary/cluster that link
`derived_from` their members (as `memstack consolidate` does, without the other steps).
recall@10 is then measured on every question with evidence (adversarial excluded) for:

  * no consolidation: the turns alone, default options;
  * route off: summaries and clusters present but not searched (the default);
  * route entropy: the most decisive granularity answers (MemGAS);
  * route fuse: reciprocal-rank fusion of the granularities.

A hit counts by its source dia_id; routed summary/cluster hits arrive expanded to their
members, so a summary counts only through them. The 95% CI is a paired bootstrap of the
difference to "no consolidation" over questions.

    .venv/bin/python benchmarks/bench_routing.py [--dataset PATH] [--k 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
LOCOMO = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data",
                                       "locomo-sample.json"))
T_RUN = "2024-01-01T00:00:00Z"  # ingest time of the group memories: fixed, for stable ids


def group_records(records: list[dict], vecs: np.ndarray) -> list[dict]:
    """Summary and cluster memories for a conversation, as consolidate writes them."""
    from memstack.core.consolidate.clusters import session_summaries, topic_clusters
    from memstack.formats.records import memory_record

    out = []
    for g in session_summaries(records, vecs) + topic_clusters(records, vecs):
        members = [records[i] for i in g.members]
        src = {"uri": f"memstack:{g.level}", "offset": g.key}
        sess = {(m.get("source") or {}).get("session") for m in members}
        if g.level == "summary" and len(sess) == 1 and None not in sess:
            src["session"] = next(iter(sess))
        out.append(memory_record(
            ns=g.ns, text=g.text, tokens=0, t_event=g.t_event, t_ingest=T_RUN, source=src,
            level=g.level, links=[{"type": "derived_from", "id": m["id"]} for m in members],
            meta={"keywords": g.keywords, "size": len(members)}))
    return out


def evidence_hits(hits) -> list[str]:
    """dia_ids of the hits, in rank order (summary/cluster hits contribute nothing)."""
    return [str(h.record["source"].get("offset")) for h in hits
            if h.record.get("level") not in ("summary", "cluster")]


def recall_at(searcher, qs: list[dict], k: int, picks: dict | None = None,
              **opts) -> list[float]:
    """recall@k per question; `picks` counts the level entropy routing answered from."""
    from memstack.core.bench import evidence_ids
    from memstack.core.recall import RecallOptions

    o = RecallOptions(k=k, explain=picks is not None, **opts)
    out = []
    for q in qs:
        gold = evidence_ids(q)
        hits = searcher.search(str(q["question"]), o)
        if picks is not None and hits:
            level = hits[0].explain.get("level", "base")
            picks[level] = picks.get(level, 0) + 1
        got = set(evidence_hits(hits)[:k])
        out.append(len(gold & got) / len(gold))
    return out


def bootstrap_ci(diff: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), (reps, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run(dataset: str, k: int) -> dict[str, dict]:
    from memstack.core.bench import CATEGORIES, load_locomo, questions
    from memstack.core.embed import HashingEmbedder
    from memstack.core.ingest import IngestOptions, IngestStats, ingest_items, prepare
    from memstack.core.parse import parse_locomo_obj
    from memstack.core.recall import Searcher
    from memstack.core.store import LmdbStore

    configs = {"no consolidation": {}, "route off": {"route": "off"},
               "route entropy": {"route": "entropy"}, "route fuse": {"route": "fuse"},
               "route boost": {"route": "boost"}}
    scores: dict[str, list[float]] = defaultdict(list)
    cats: list[str] = []
    made: dict[str, int] = defaultdict(int)
    picks: dict[str, int] = {}
    for sample in load_locomo(dataset):
        tmp = tempfile.mkdtemp(prefix="memstack-routing-")
        try:
            emb = HashingEmbedder()
            with LmdbStore(tmp, write=True, create=True) as st:
                st.check_identity(emb.identity(), None)
                ingest_items(parse_locomo_obj(sample, dataset), dataset, embedder=emb,
                             tokenizer=None, store=st, out=None, opts=IngestOptions(),
                             stats=IngestStats())
                qs = questions(sample)
                cats += [CATEGORIES.get(q.get("category"), "other") for q in qs]
                searcher = Searcher(st, emb)
                scores["no consolidation"] += recall_at(searcher, qs, k)
                rows = list(st.iter_records())
                recs = [r for _, r, _ in rows]
                vecs = np.stack([v for _, _, v in rows])
                groups = group_records(recs, vecs)
                for g in groups:
                    made[g["level"]] += 1
                st.add(prepare(groups, emb, None, planes=st.simhash_planes(emb.dim)))
                searcher = Searcher(st, emb)
                for name, opts in configs.items():
                    if name != "no consolidation":
                        scores[name] += recall_at(searcher, qs, k, picks if
                                                  opts["route"] == "entropy" else None, **opts)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    base = np.asarray(scores["no consolidation"])
    out = {}
    for name in configs:
        s = np.asarray(scores[name])
        by_cat = {c: float(s[[i for i, x in enumerate(cats) if x == c]].mean())
                  for c in sorted(set(cats))}
        out[name] = {"recall": float(s.mean()), "ci": bootstrap_ci(s - base),
                     "by_cat": by_cat, "n": len(s)}
    out["_made"] = dict(made)
    out["_picks"] = picks
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=LOCOMO)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)
    res = run(args.dataset, args.k)
    made = res.pop("_made")
    picks = res.pop("_picks")
    cats = list(next(iter(res.values()))["by_cat"])
    n = next(iter(res.values()))["n"]
    print(f"LoCoMo recall@{args.k}, {n} questions; added {made.get('summary', 0)} summaries, "
          f"{made.get('cluster', 0)} clusters\n")
    print(f"| config | recall@{args.k} | vs none, 95% CI | " + " | ".join(cats) + " |")
    print("|---" * (3 + len(cats)) + "|")
    none = res["no consolidation"]["recall"]
    for name, r in res.items():
        lo, hi = r["ci"]
        ci = "-" if name == "no consolidation" else \
            f"{r['recall'] - none:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        print(f"| {name} | {r['recall']:.3f} | {ci} | "
              + " | ".join(f"{r['by_cat'][c]:.3f}" for c in cats) + " |")
    if picks:
        print("\nentropy routing answered from: "
              + ", ".join(f"{lv} {c}" for lv, c in sorted(picks.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
