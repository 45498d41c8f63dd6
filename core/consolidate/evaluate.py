"""Score a consolidated store against a ground truth (core/consolidate/groundtruth.py).

What the store is read for (the marks consolidate writes, see FORMAT.md):
  merges       a source with meta.status "merged" and meta.merged_into M, and a memory that
               links derived_from -> a merged source, are in one merge group (transitively:
               a merged memory merged again joins the group). Two input memories are
               predicted duplicates when they are in one group.
  supersession a memory y linking {"type": "supersedes", "id": x} predicts (x, y). A memory
               stands for the input memories it was derived from (a merged memory for its
               sources, recursively; summaries and clusters for nothing), so a link between
               merged memories counts for the inputs behind them.

Metrics:
  merge_*       precision/recall/F1 over duplicate pairs. A predicted pair of two chit-chat
                memories with the same normalised text ("That's great!" twice) is neither
                right nor wrong: it states no fact, and merging exact copies is harmless.
  supersede_*   precision over predicted links: right when some input behind x states a
                value and some input behind y states the next value of the same key, i.e.
                (fact(x), fact(y)) is the fact pair of a truth pair. Recall over truth pairs
                (old, new): found when a link (x, y) has old behind x and an input stating
                new's fact behind y (any statement of the new value is an acceptable
                superseder, not only the first).
  unrelated_invalidated  unrelated memories whose validity got closed, or that were archived,
                quarantined, or merged into a memory standing for another fact (following
                merged_into, the memory it now lives in must not be closed either).
  current_invalidated    the same check for the statements of every key's final value.
  stale_open    truth old memories still valid (neither they nor their merged memory closed).
  poison_*      quarantine precision/recall over input memories.
  sources_present  input memories that still have their record (nothing may be deleted).
  current_accuracy / as_of_accuracy  per truth query, recall (ns of the query, k=recall_k,
                as_of for as-of queries): right when the top hit's text contains the expected
                value (case-folded, on word boundaries). *_at_k: right when some hit of the
                top k contains it and no hit ranked above that one states another value the
                key had (a stale or not-yet-true value) without the expected one.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

from memstack.core.consolidate.groundtruth import Truth
from memstack.formats.records import from_iso, normalise_text

DERIVED_ONLY = ("summary", "cluster")


def prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    """Precision, recall, F1; an empty prediction is perfect only when nothing was to find."""
    p = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    r = tp / n_true if n_true else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@lru_cache(maxsize=4096)
def _pattern(value: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(value.casefold()) + r"(?!\w)")


def mentions(text: str, value: str) -> bool:
    return _pattern(value).search(text.casefold()) is not None


class _Store:
    """The store's records by id, with the merge groups and what each memory stands for."""

    def __init__(self, store, truth: Truth):
        self.truth = truth
        self.recs: dict[str, dict] = {}
        for _, rec, _ in store.iter_records():
            self.recs[rec["id"]] = rec
        self.parent: dict[str, str] = {}
        for rid, rec in self.recs.items():
            meta = rec.get("meta") or {}
            if meta.get("status") == "merged" and meta.get("merged_into"):
                self._union(rid, meta["merged_into"])
            if rec.get("level") not in DERIVED_ONLY:
                for link in rec.get("links") or ():
                    src = self.recs.get(link.get("id"))
                    if link.get("type") == "derived_from" and src is not None and \
                            (src.get("meta") or {}).get("status") == "merged":
                        self._union(rid, link["id"])
        self._leaves: dict[str, frozenset[str]] = {}

    def _find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def _union(self, a: str, b: str) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[ra] = rb

    def groups(self) -> list[list[str]]:
        """Input memories of each merge group with two or more of them."""
        out: dict[str, list[str]] = {}
        for rid in self.parent:
            if rid in self.truth.facts:
                out.setdefault(self._find(rid), []).append(rid)
        return [sorted(g) for g in out.values() if len(g) > 1]

    def leaves(self, rid: str, depth: int = 0) -> frozenset[str]:
        """The input memories a memory stands for."""
        if rid in self.truth.facts:
            return frozenset((rid,))
        if rid in self._leaves:
            return self._leaves[rid]
        rec = self.recs.get(rid)
        out: set[str] = set()
        if rec is not None and rec.get("level") not in DERIVED_ONLY and depth < 32:
            for link in rec.get("links") or ():
                if link.get("type") == "derived_from":
                    out |= self.leaves(link.get("id", ""), depth + 1)
        self._leaves[rid] = frozenset(out)
        return self._leaves[rid]

    def chain(self, rid: str) -> list[dict]:
        """The record and the memories it was merged into, in order."""
        out, seen = [], set()
        while rid in self.recs and rid not in seen:
            seen.add(rid)
            rec = self.recs[rid]
            out.append(rec)
            rid = (rec.get("meta") or {}).get("merged_into") or ""
        return out

    def cls(self, rid: str) -> tuple | None:
        fact = self.truth.facts.get(rid)
        return None if fact is None else (self.truth.ns[rid], fact)

    def invalidated(self, rid: str) -> bool:
        """Closed, archived, quarantined, or merged with another fact."""
        chain = self.chain(rid)
        if not chain:
            return True
        for rec in chain:
            if rec.get("valid_to") or (rec.get("meta") or {}).get("status") in (
                    "archived", "quarantined"):
                return True
        if len(chain) > 1:
            mine = self.cls(rid)
            return any(self.cls(x) != mine for x in self.leaves(chain[-1]["id"]))
        return False


def _merge_metrics(st: _Store, truth: Truth) -> dict:
    pred, neutral = set(), 0
    for group in st.groups():
        for a, b in itertools.combinations(group, 2):
            pair = frozenset((a, b))
            if pair in truth.duplicate_pairs:
                pred.add(pair)
            elif truth.facts[a] is None and truth.facts[b] is None and \
                    normalise_text(st.recs[a]["text"]) == normalise_text(st.recs[b]["text"]):
                neutral += 1
            else:
                pred.add(pair)
    tp = len(pred & truth.duplicate_pairs)
    p, r, f = prf(tp, len(pred), len(truth.duplicate_pairs))
    out = {"merge_precision": p, "merge_recall": r, "merge_f1": f, "merge_pairs_true": tp,
           "merge_pairs_false": len(pred) - tp, "merge_pairs_missed":
           len(truth.duplicate_pairs) - tp, "merge_pairs_neutral": neutral,
           "merge_groups": len(st.groups())}
    for kind in ("exact", "near", "paraphrase"):
        want = {pair for pair, k in truth.pair_kind.items() if k == kind}
        out[f"merge_recall_{kind}"] = len(want & pred) / len(want) if want else 1.0
    return out


def _supersede_metrics(st: _Store, truth: Truth) -> dict:
    links = set()
    for rid, rec in st.recs.items():
        for link in rec.get("links") or ():
            if link.get("type") == "supersedes":
                links.add((link.get("id", ""), rid))
    fact_pairs = {(st.cls(o), st.cls(n)) for o, n in truth.supersedes}
    right = 0
    covered: dict[str, set] = {}  # input memory -> facts of the memories that superseded it
    for x, y in links:
        lx, ly = st.leaves(x), st.leaves(y)
        cy = {st.cls(n) for n in ly}
        if any((st.cls(m), c) in fact_pairs for m in lx for c in cy):
            right += 1
        for m in lx:
            covered.setdefault(m, set()).update(cy)
    found = sum(1 for o, n in truth.supersedes if st.cls(n) in covered.get(o, ()))
    p, _, _ = prf(right, len(links), len(truth.supersedes))
    r = found / len(truth.supersedes) if truth.supersedes else 1.0
    olds = {o for o, _ in truth.supersedes}
    stale_open = sum(1 for o in olds
                     if not any(rec.get("valid_to") for rec in st.chain(o)))
    return {"supersede_precision": p, "supersede_recall": r,
            "supersede_f1": 2 * p * r / (p + r) if p + r else 0.0,
            "supersede_links": len(links), "supersede_links_right": right,
            "supersede_pairs_found": found, "supersede_pairs": len(truth.supersedes),
            "stale_open": stale_open}


def _query_metrics(store, truth: Truth, embedder, k: int) -> dict:
    from memstack.core.recall import RecallOptions, Searcher

    if embedder is None:
        from memstack.plugins.registry import load_embedder

        embedder = load_embedder((store.meta.get("embedder") or {}).get("spec") or "hash")
    searcher = Searcher(store, embedder)
    score = {"current": [0, 0, 0], "as_of": [0, 0, 0]}  # queries, top-1 right, at-k right
    for q in truth.queries:
        key = (q["ns"], q["subject"], q["slot"])
        others = [v for _, v in truth.history.get(key, ()) if v != q["expected"]]
        as_of = from_iso(q["as_of"]) if q.get("as_of") else None
        hits = searcher.search(q["question"], RecallOptions(k=k, ns=[q["ns"]], as_of=as_of))
        s = score["as_of" if as_of is not None else "current"]
        s[0] += 1
        for i, hit in enumerate(hits):
            text = hit.record.get("text", "")
            if mentions(text, q["expected"]):
                s[1] += i == 0
                s[2] += 1
                break
            if any(mentions(text, v) for v in others):
                break
    out = {}
    for name, (n, top, atk) in score.items():
        out[f"{name}_queries"] = n
        out[f"{name}_accuracy"] = top / n if n else 1.0
        out[f"{name}_accuracy_at_k"] = atk / n if n else 1.0
    return out


def evaluate(store, truth: Truth, embedder=None, *, recall_k: int = 5,
             queries: bool = True) -> dict:
    """Flat metrics (floats and ints) of a consolidated store against `truth`."""
    st = _Store(store, truth)
    out: dict = {"records": len(st.recs), "inputs": len(truth.facts)}
    present = sum(1 for rid in truth.facts if rid in st.recs)
    out["sources_present"] = present
    out["sources_missing"] = len(truth.facts) - present
    out.update(_merge_metrics(st, truth))
    out.update(_supersede_metrics(st, truth))
    out["unrelated"] = len(truth.unrelated)
    out["unrelated_invalidated"] = sum(1 for u in truth.unrelated if st.invalidated(u))
    final = {(ns, (subject, slot, value)) for (ns, subject, slot), value in truth.current.items()}
    out["current_invalidated"] = sum(1 for rid in truth.facts
                                     if st.cls(rid) in final and st.invalidated(rid))
    quarantined = {rid for rid in truth.facts
                   if any((r.get("meta") or {}).get("status") == "quarantined"
                          for r in st.chain(rid)[:1])}
    tp = len(quarantined & truth.poison)
    p, r, f = prf(tp, len(quarantined), len(truth.poison))
    out.update(poison_precision=p, poison_recall=r, poison_f1=f,
               poison_quarantined=len(quarantined), poison=len(truth.poison))
    if queries:
        out.update(_query_metrics(store, truth, embedder, recall_k))
    return out
