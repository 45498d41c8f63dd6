"""Find the memories that answer a query: hybrid BM25 + vector scoring over the store's index.

Scores are fused on a common scale (z-scores over the eligible memories), then each memory
takes a share of its best conversational neighbour's score: in a dialogue the answer often
sits in the turn next to the one that repeats the question's words. Filters (namespace,
time, validity, level) are column masks; nothing is rebuilt per call.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

import numpy as np

from memstack.core.analyze import get_analyzer
from memstack.core.store import COLUMNS, STATUS_ACTIVE, LmdbStore, Snapshot
from memstack.formats.records import LEVELS

K1, B = 1.2, 0.75


@dataclass
class RecallOptions:
    k: int = 10
    ns: list[str] | None = None
    since: float | None = None
    until: float | None = None
    as_of: float | None = None
    levels: list[str] | None = None
    include_archived: bool = False
    vec_weight: float = 0.5
    neighbour: float = 0.35
    recency_half_life: float | None = None  # seconds
    recency_weight: float = 0.5
    mmr: float | None = None  # lambda in (0, 1]; None = no diversity re-ranking
    explain: bool = False
    now: float | None = None


@dataclass
class Hit:
    docno: int
    id: str
    score: float
    record: dict
    explain: dict = field(default_factory=dict)


def _z(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """z-scores (float32) with mean and spread taken over the eligible memories."""
    vals = x if mask is None else x[mask]
    if vals.size == 0:
        return np.zeros(x.shape, dtype=np.float32)
    sd = float(vals.std())
    if sd == 0.0:
        return np.zeros(x.shape, dtype=np.float32)
    out = x.astype(np.float32, copy=True)
    out -= np.float32(vals.mean())
    out *= np.float32(1.0 / sd)
    return out


def _rank_of(scores: np.ndarray, mask: np.ndarray, docno: int) -> int:
    return int(np.count_nonzero(scores[mask] > scores[docno])) + 1


class Searcher:
    """Query one store. Cheap to make; each search runs in its own short read transaction."""

    def __init__(self, store: LmdbStore, embedder):
        self.store = store
        self.embedder = embedder
        self.analyzer = getattr(embedder, "analyzer", None) or get_analyzer()

    def _mask(self, snap: Snapshot, o: RecallOptions) -> np.ndarray:
        n = snap.n
        mask = np.ones(n, dtype=bool)
        if o.as_of is not None:
            vf, vt = snap.column("valid_from"), snap.column("valid_to")
            mask &= (np.isnan(vf) | (vf <= o.as_of)) & (vt > o.as_of)
        elif snap.stats.get("not_current", 0):
            mask &= np.isinf(snap.column("valid_to"))
        if not o.include_archived and snap.stats.get("archived", 0):
            mask &= snap.column("status") == STATUS_ACTIVE
        if o.ns:
            codes = self.store.meta.get("ns_codes", {})
            want = [codes[n_] for n_ in o.ns if n_ in codes]
            mask &= np.isin(snap.column("ns"), np.asarray(want, dtype=COLUMNS["ns"]))
        if o.since is not None or o.until is not None:
            te = snap.column("t_event")
            if o.since is not None:
                mask &= te >= o.since
            if o.until is not None:
                mask &= te < o.until
        if o.levels:
            want = [LEVELS.index(lv) for lv in o.levels]
            mask &= np.isin(snap.column("level"), np.asarray(want, dtype=np.uint8))
        return mask

    def _bm25(self, snap: Snapshot, terms: list[str]) -> tuple[np.ndarray, dict[str, float]]:
        n = snap.n
        scores = np.zeros(n, dtype=np.float32)
        idf: dict[str, float] = {}
        if not terms:
            return scores, idf
        avgdl = max(float(snap.stats.get("total_len", 0)) / max(n, 1), 1e-9)
        dl = None
        for term in dict.fromkeys(terms):
            docs, tfs = snap.postings(term)
            df = len(docs)
            idf[term] = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            if df == 0:
                continue
            if dl is None:
                dl = snap.column("dl").astype(np.float32)
            tf = tfs.astype(np.float32)
            norm = K1 * (1.0 - B + B * dl[docs] / avgdl)
            scores[docs] += idf[term] * tf * (K1 + 1.0) / (tf + norm)
        return scores, idf

    def _vectors(self, snap: Snapshot, q: np.ndarray) -> np.ndarray:
        out = np.empty(snap.n, dtype=np.float32)
        for lo, block in snap.vector_blocks(len(q)):
            np.matmul(block, q, out=out[lo : lo + len(block)])
        return out

    def search(self, query: str, o: RecallOptions | None = None) -> list[Hit]:
        """The best memories for `query`, best first, at most o.k of them."""
        o = o or RecallOptions()
        with self.store.snapshot() as snap:
            if snap.n == 0 or o.k <= 0:
                return []
            return self._search(snap, query, o)

    def _search(self, snap: Snapshot, query: str, o: RecallOptions) -> list[Hit]:
        mask = self._mask(snap, o)
        if not mask.any():
            return []
        terms = self.analyzer.terms(query)
        bm25, idf = self._bm25(snap, terms)
        idf_fn: Callable[[list[str]], np.ndarray] | None = None
        if getattr(self.embedder, "uses_idf", False) and idf:
            default = math.log(1.0 + snap.n)
            idf_fn = lambda stems: np.array([idf.get(s, default) for s in stems])  # noqa: E731
        if getattr(self.embedder, "uses_idf", False):
            q = self.embedder.embed_query(query, idf=idf_fn)
        else:
            q = self.embedder.embed_query(query)
        vec = self._vectors(snap, q.astype(np.float32)) if np.any(q) else None
        every = None if mask.all() else mask
        fused = _z(bm25, every) if bm25.any() else np.zeros(snap.n, dtype=np.float32)
        if vec is not None:
            zv = _z(vec, every)
            zv *= np.float32(o.vec_weight)
            fused += zv
        bonus = None
        if o.neighbour and snap.n > 1:
            group = snap.column("group")
            same = group[1:] == group[:-1]
            best = np.full(snap.n, -np.inf, dtype=np.float32)
            best[1:] = np.where(same, fused[:-1], -np.inf)
            np.maximum(best[:-1], np.where(same, fused[1:], -np.inf), out=best[:-1])
            bonus = np.where(best > -np.inf, np.float32(o.neighbour) * best, np.float32(0))
            fused = fused + bonus
        recency = None
        if o.recency_half_life:
            te = snap.column("t_event")
            # ages count back from the newest memory (or --as-of), so an old archive still
            # ranks its own recent events first
            newest = float(np.nanmax(te)) if np.isfinite(te).any() else time.time()
            now = o.now if o.now is not None else (o.as_of or newest)
            age = np.clip(np.nan_to_num(now - te, nan=np.inf), 0, None)
            recency = (o.recency_weight * np.exp2(-age / o.recency_half_life)).astype(np.float32)
            fused = fused + recency
        final = fused if every is None else np.where(mask, fused, -np.inf)
        eligible = int(mask.sum())
        want = min(eligible, max(o.k * (5 if o.mmr else 1), o.k))
        top = np.argpartition(-final, want - 1)[:want] if want < snap.n else np.arange(snap.n)
        top = top[np.lexsort((top, -final[top]))][:want]
        if o.mmr:
            top = self._mmr(snap, top, final, q.shape[0], o)
        top = top[: o.k]
        hits = []
        for d in top:
            d = int(d)
            rec = snap.record(d)
            ex = {}
            if o.explain:
                ex = {"fused": float(final[d]), "bm25": float(bm25[d]),
                      "bm25_rank": _rank_of(bm25, mask, d) if bm25[d] > 0 else None,
                      "terms": terms}
                if vec is not None:
                    ex.update(vec=float(vec[d]), vec_rank=_rank_of(vec, mask, d))
                if bonus is not None:
                    ex["neighbour"] = float(bonus[d])
                if recency is not None:
                    ex["recency"] = float(recency[d])
            hits.append(Hit(docno=d, id=rec["id"], score=float(final[d]), record=rec,
                            explain=ex))
        return hits

    def _mmr(self, snap: Snapshot, cand: np.ndarray, score: np.ndarray, dim: int,
             o: RecallOptions) -> np.ndarray:
        """Maximal marginal relevance: trade relevance against similarity to picks so far."""
        vecs = np.stack([snap.vector(int(d)) for d in cand])
        rel = score[cand]
        rel = (rel - rel.min()) / (np.ptp(rel) or 1.0)
        chosen: list[int] = []
        sim_max = np.full(len(cand), -np.inf)
        lam = float(o.mmr)
        for _ in range(min(o.k, len(cand))):
            gain = lam * rel - (1 - lam) * np.where(np.isfinite(sim_max), sim_max, 0.0)
            gain[chosen] = -np.inf
            j = int(np.argmax(gain))
            chosen.append(j)
            sim_max = np.maximum(sim_max, vecs @ vecs[j])
        return cand[chosen]


def pack_budget(hits: list[Hit], budget: int, cost: Callable[[Hit], int]) -> list[Hit]:
    """Greedy in rank order: keep each hit that still fits the token budget."""
    kept, used = [], 0
    for hit in hits:
        c = cost(hit)
        if used + c <= budget:
            kept.append(hit)
            used += c
    return kept


@contextmanager
def stream_store(fp: IO[bytes], name: str, load_embedder: Callable[[str], object]):
    """Index a record stream in a private temporary store (for `recall --from`).

    The stream's header names the embedder that made its vectors; they are reused as they are.
    Yields (store, embedder); everything is removed afterwards.
    """
    from memstack.core.ingest import IngestOptions, IngestStats, ingest_items
    from memstack.core.parse import open_records

    meta, items = open_records(fp, name)
    embedder = load_embedder((meta.get("embedder") or {}).get("spec") or "hash")
    tmp = tempfile.mkdtemp(prefix="memstack-recall-")
    store = None
    try:
        store = LmdbStore(tmp, write=True, create=True)
        store.check_identity(embedder.identity(), None)
        ingest_items(items, name, embedder=embedder, tokenizer=None, store=store, out=None,
                     opts=IngestOptions(batch_size=5000), stats=IngestStats())
        yield store, embedder
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)
