"""Retrieval quality on LoCoMo-format files: memstack (default options) vs bm25s.

Turn-level recall@k / hit@k (k = 1, 5, 10, 20) and MRR over the questions that have evidence,
category 5 (adversarial) excluded, all scored by memstack.core.bench's own helpers
(`questions`, `evidence_ids`, `score_ranking`) so both systems are judged by identical code.

Each conversation (sample) is its own corpus, as in memstack's `bench recall`: memstack ingests
it into a temporary store; bm25s (Lucene BM25, PyStemmer English stemming, English stop words)
indexes the same turns twice:
  * "raw": the turn's `text` field only;
  * "same text": exactly what memstack indexes, read back from the store
    (speaker + ": " + text, LoCoMo image captions appended as " [shares a photo: CAPTION]").

    .venv/bin/python benchmarks/bench_quality.py [--dataset PATH ...] [--json OUT]
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402

KS = (1, 5, 10, 20)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
SYSTEMS = ("memstack", "bm25s (same text)", "bm25s (raw text)")


class Bm25sIndex:
    """bm25s over a list of (id, text); ranks ids for a query, zero-score docs left out."""

    def __init__(self, ids: list[str], texts: list[str]):
        import bm25s
        import Stemmer

        self.ids = ids
        self.tok = bm25s.tokenization.Tokenizer(stopwords="en",
                                                stemmer=Stemmer.Stemmer("english"))
        corpus = self.tok.tokenize(texts, update_vocab=True, return_as="ids",
                                   show_progress=False)
        self.model = bm25s.BM25()
        self.model.index(corpus, show_progress=False)

    def rank(self, query: str, k: int) -> list[str]:
        q = self.tok.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)
        k = min(k, len(self.ids))
        docs, scores = self.model.retrieve(q, k=k, show_progress=False, n_threads=1)
        return [self.ids[int(d)] for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


def raw_turns(sample: dict) -> dict[str, str]:
    """dia_id -> the turn's own text, straight from the LoCoMo JSON."""
    out = {}
    for key, turns in sample["conversation"].items():
        if key.startswith("session_") and isinstance(turns, list):
            for t in turns:
                if isinstance(t, dict) and "dia_id" in t:
                    out[str(t["dia_id"])] = str(t.get("text", ""))
    return out


def evaluate(dataset: str) -> tuple[dict, dict]:
    """{system: {category: [score dicts]}}, facts about the run."""
    from memstack.core.bench import evidence_ids, load_locomo, questions, score_ranking
    from memstack.core.ingest import IngestOptions, IngestStats, index_text, ingest_items
    from memstack.core.parse import parse_locomo_obj
    from memstack.core.recall import RecallOptions, Searcher
    from memstack.core.store import LmdbStore
    from memstack.plugins.registry import load_embedder

    scores: dict[str, dict[str, list[dict]]] = {s: defaultdict(list) for s in SYSTEMS}
    facts = {"samples": 0, "turns": 0, "questions": 0, "same_text_mismatch": 0}
    for sample in load_locomo(dataset):
        qs = questions(sample)
        facts["samples"] += 1
        with common.temp_dir() as tmp:
            emb = load_embedder("hash")
            with LmdbStore(tmp, write=True, create=True) as st:
                st.check_identity(emb.identity(), None)
                ingest_items(parse_locomo_obj(sample, dataset), dataset, embedder=emb,
                             tokenizer=None, store=st, out=None, opts=IngestOptions(),
                             stats=IngestStats())
                ids, same = [], []
                for _, rec, _ in st.iter_records():
                    ids.append(str(rec["source"].get("offset")))
                    same.append(index_text(rec))
                raw = raw_turns(sample)
                facts["turns"] += len(ids)
                facts["same_text_mismatch"] += len(set(ids) ^ set(raw))
                bm_same = Bm25sIndex(ids, same)
                raw_ids = list(raw)
                bm_raw = Bm25sIndex(raw_ids, [raw[i] for i in raw_ids])
                searcher = Searcher(st, emb)
                opts = RecallOptions(k=max(KS))
                for q in qs:
                    text = str(q["question"])
                    gold = evidence_ids(q)
                    ranked = {
                        "memstack": [str(h.record["source"].get("offset"))
                                     for h in searcher.search(text, opts)],
                        "bm25s (same text)": bm_same.rank(text, max(KS)),
                        "bm25s (raw text)": bm_raw.rank(text, max(KS)),
                    }
                    cat = CATEGORIES.get(q.get("category"), "other")
                    for system, r in ranked.items():
                        res = score_ranking(r, gold, KS)
                        scores[system]["all"].append(res)
                        scores[system][cat].append(res)
                    facts["questions"] += 1
    return scores, facts


def mean_scores(rows: list[dict]) -> dict[str, float]:
    return {m: float(np.mean([r[m] for r in rows])) for m in rows[0]} if rows else {}


def bootstrap_ci(diff: np.ndarray, reps: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-question differences (paired bootstrap)."""
    if len(diff) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(reps, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run(datasets: list[str]) -> dict:
    t0 = time.perf_counter()
    rows, notes, targets = [], [], []
    metrics = [f"recall@{k}" for k in KS] + [f"hit@{k}" for k in KS] + ["mrr"]
    for ds in datasets:
        name = os.path.basename(ds)
        scores, facts = evaluate(ds)
        notes.append(f"{name}: {facts['samples']} conversation(s), {facts['turns']} turns, "
                     f"{facts['questions']} questions with evidence (category 5 excluded); "
                     f"turn ids differing between memstack's store and the raw JSON: "
                     f"{facts['same_text_mismatch']}")
        means = {s: mean_scores(scores[s]["all"]) for s in SYSTEMS}
        for m in metrics:
            for s in SYSTEMS:
                rows.append({"system": s, "metric": f"{m} ({name})" if len(datasets) > 1 else m,
                             "value": means[s].get(m, float("nan")), "unit": "",
                             "group": name})
        cats = sorted(c for c in scores["memstack"] if c != "all")
        per_cat = "; ".join(
            f"{c} (n={len(scores['memstack'][c])}): " + ", ".join(
                f"{s} {mean_scores(scores[s][c])['recall@10']:.3f}" for s in SYSTEMS)
            for c in cats)
        notes.append(f"{name} recall@10 by category: {per_cat}")
        for peer in SYSTEMS[1:]:
            for m in ("recall@1", "recall@10"):
                d = np.array([a[m] - b[m] for a, b in zip(scores["memstack"]["all"],
                                                          scores[peer]["all"], strict=True)])
                lo, hi = bootstrap_ci(d)
                notes.append(f"{name}: memstack - {peer} {m} = {d.mean():+.3f}, paired "
                             f"bootstrap 95% CI [{lo:+.3f}, {hi:+.3f}] over {len(d)} questions")
        ms = means["memstack"]
        for peer in ("bm25s (same text)", "bm25s (raw text)"):
            pm = means[peer]
            ok10 = ms["recall@10"] >= pm["recall@10"] + 0.05
            ok1 = ms["recall@1"] >= pm["recall@1"]
            targets.append({"name": f"{name}: recall@10 >= {peer} + 0.05", "ok": ok10,
                            "detail": f"{ms['recall@10']:.3f} vs {pm['recall@10']:.3f} "
                                      f"(+ 0.05 = {pm['recall@10'] + 0.05:.3f})"})
            targets.append({"name": f"{name}: recall@1 >= {peer}", "ok": ok1,
                            "detail": f"{ms['recall@1']:.3f} vs {pm['recall@1']:.3f}"})
    notes.append("bm25s: Lucene BM25 (k1=1.5, b=0.75), bm25s Tokenizer with stopwords='en' and "
                 "PyStemmer('english'); results with score 0 are dropped. memstack: "
                 "RecallOptions() defaults (hybrid BM25 + hashing-embedder vectors + "
                 "neighbour bonus), each conversation in its own store.")
    return {"key": "quality", "title": "1. Retrieval quality (LoCoMo, turn level)",
            "command": common.command_line(), "rows": rows, "targets": targets,
            "notes": notes, "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    ap = common.base_args(__doc__.split("\n")[0])
    ap.add_argument("--dataset", action="append", metavar="PATH",
                    help="LoCoMo-format JSON file (repeatable); default: "
                         "../shared/data/locomo-sample.json")
    args = ap.parse_args(argv)
    t0, meter = time.perf_counter(), common.NoiseMeter()
    datasets = args.dataset or [common.LOCOMO]
    for ds in datasets:
        if not os.path.exists(ds):
            ap.error(f"dataset not found: {ds}")
    sec = run(datasets)
    return common.finish(sec, args, t0, meter)


if __name__ == "__main__":
    main()
