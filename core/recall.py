"""Find the memories that answer a query: hybrid BM25 + vector scoring over the store's index.

Scores are fused on a common scale (z-scores over the eligible memories), then each memory
takes a share of its best conversational neighbour's score: in a dialogue the answer often
sits in the turn next to the one that repeats the question's words. Filters (namespace,
time, validity, level, status) are column masks; nothing is rebuilt per call.

Consolidated stores also hold summaries and topic clusters. They are searched only when
`levels` names them, or when `route` asks recall to pick the granularity per query
(core/routing.py); a routed summary or cluster hit comes back as its member memories.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import IO

import numpy as np

from memstack.core.analyze import get_analyzer
from memstack.core.routing import ROUTES
from memstack.core.store import (
    COLUMNS,
    STATUS_ACTIVE,
    STATUS_CODE,
    STATUS_MERGED,
    LmdbStore,
    Snapshot,
)
from memstack.formats.records import LEVELS

K1, B = 1.2, 0.75
CANDIDATES = 1000  # per signal; every candidate's neighbours are scored too
BINARY_MIN = 250_000  # from this many memories, vectors are prefiltered by SimHash codes
INCLUDE = ("archived", "merged", "quarantined")  # statuses recall skips unless asked
DERIVED_LEVELS = ("summary", "cluster")  # made by consolidate; searched only when asked
DERIVED_CODES = tuple(LEVELS.index(lv) for lv in DERIVED_LEVELS)
assert DERIVED_CODES == (len(LEVELS) - 2, len(LEVELS) - 1)  # base levels are the codes below
# LoCoMo recall@10 with summaries and clusters (benchmarks/bench_routing.py): off 0.672 (as
# without them), boost 0.697, entropy 0.644, fuse 0.420; boost is the only route that helps
DEFAULT_ROUTE = "boost"
GROUP_HITS = 10  # summaries/clusters expanded per query when routing
PER_GROUP: int | None = None  # members a routed group brings (None = all eligible; caps of
# 1-5 members each lowered entropy's recall@10 by 0.02-0.10 on LoCoMo)


@dataclass
class RecallOptions:
    k: int = 10
    ns: list[str] | None = None
    since: float | None = None
    until: float | None = None
    as_of: float | None = None
    levels: list[str] | None = None
    include: frozenset[str] = frozenset()  # of INCLUDE: statuses returned besides active
    include_archived: bool = False  # the older spelling of include={"archived"}
    route: str = DEFAULT_ROUTE  # of routing.ROUTES; ignored when `levels` is given
    decay: bool = False  # add decay_weight * decay_term (consolidated stores only)
    decay_weight: float = 0.5
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


@dataclass
class _Signals:
    """A query's raw signals over the whole store."""

    terms: list[str]
    bm25: np.ndarray
    q: np.ndarray
    vec: np.ndarray | None
    approx: bool  # vec is a coarse scan; candidates are re-scored exactly
    vq: dict | None


@dataclass
class _Scored:
    """Fused scores of one eligible set's candidates, and the parts --explain shows."""

    cand: np.ndarray
    final: np.ndarray  # -inf where not eligible
    every: np.ndarray | None
    ext: np.ndarray
    v_ext: np.ndarray | None
    bonus: np.ndarray | None = None
    recency: np.ndarray | None = None
    decay: np.ndarray | None = None


def _fill(first: list[tuple[int, float]], rest: list[int],
          own: dict[int, float]) -> list[tuple[int, float]]:
    """A routed ranking, then the base ranking's other memories (scored below the last
    routed one, so scores stay in rank order)."""
    seen = {d for d, _ in first}
    out = list(first)
    floor = first[-1][1] if first else math.inf
    for d in rest:
        if d not in seen:
            out.append((d, min(own[d], floor)))
            floor = out[-1][1]
    return out


def _zstats(x: np.ndarray, mask: np.ndarray | None) -> tuple[np.float32, np.float32] | None:
    """Mean and 1/spread over the eligible memories (None when the signal is flat)."""
    vals = x if mask is None else x[mask]
    if vals.size == 0:
        return None
    mean = float(vals.sum(dtype=np.float64)) / vals.size
    var = float(np.dot(vals, vals)) / vals.size - mean * mean
    if var <= 1e-12:
        return None
    return np.float32(mean), np.float32(1.0 / math.sqrt(var))


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2's hash-based unique is slower on these sizes)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def _top(x: np.ndarray, c: int) -> np.ndarray:
    """Indices of (at least) the c largest finite values, without sorting the whole array."""
    n = len(x)
    if c >= n:
        return np.arange(n)
    step = max(1, n // 20000)
    sample = x[::step]
    k = min(len(sample) - 1, int(math.ceil(2.0 * c / n * len(sample))) + 1)
    thr = np.partition(sample, len(sample) - k)[len(sample) - k]
    idx = np.flatnonzero(x >= thr)
    if len(idx) < c or len(idx) > 8 * c:  # the sample misjudged: do it exactly
        idx = np.argpartition(-x, c - 1)[:c]
    return idx


def _rank_of(scores: np.ndarray, mask: np.ndarray | None, docno: int) -> int:
    vals = scores if mask is None else scores[mask]
    return int(np.count_nonzero(vals > scores[docno])) + 1


class Searcher:
    """Query one store. Cheap to make; each search runs in its own short read transaction."""

    def __init__(self, store: LmdbStore, embedder):
        self.store = store
        self.embedder = embedder
        self.analyzer = getattr(embedder, "analyzer", None) or get_analyzer()
        self._derived: tuple[int, tuple | None] | None = None  # (store size, _derived_rows)
        self._late_cols: tuple[int, bool] | None = None  # (store size, has importance/tier)

    def _mask(self, snap: Snapshot, o: RecallOptions) -> np.ndarray:
        n = snap.n
        mask = np.ones(n, dtype=bool)
        if o.as_of is not None:
            vf, vt = snap.column("valid_from"), snap.column("valid_to")
            mask &= (np.isnan(vf) | (vf <= o.as_of)) & (vt > o.as_of)
        elif snap.stats.get("not_current", 0):
            mask &= np.isinf(snap.column("valid_to"))
        include = set(o.include) | ({"archived"} if o.include_archived else set())
        if len(include) < len(INCLUDE) and snap.stats.get("archived", 0):
            # stats["archived"] counts every row that is not active: none, nothing to hide
            allowed = [STATUS_ACTIVE] + [STATUS_CODE[x] for x in INCLUDE if x in include]
            status = snap.column("status")
            mask &= status == STATUS_ACTIVE if len(allowed) == 1 else \
                np.isin(status, np.asarray(allowed, dtype=COLUMNS["status"]))
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
        # the corpus statistics are those of the base memories: summaries and clusters
        # repeat their members' words, and must not shift idf or the mean length
        derived = self._derived_rows(snap)
        n_base, total = n, float(snap.stats.get("total_len", 0))
        if derived is not None:
            n_base, total = n - derived[1], total - derived[2]
        avgdl = max(total / max(n_base, 1), 1e-9)
        for term in dict.fromkeys(terms):
            docs, tfs = snap.postings(term)
            df = len(docs) if derived is None else int(np.count_nonzero(~derived[0][docs]))
            idf[term] = math.log(1.0 + (n_base - df + 0.5) / (df + 0.5))
            if df == 0:
                continue
            tf = tfs.astype(np.float32)
            norm = K1 * (1.0 - B + B * snap.column_at("dl", docs).astype(np.float32) / avgdl)
            scores[docs] += idf[term] * tf * (K1 + 1.0) / (tf + norm)
        return scores, idf

    def _exact_zstats(self, snap: Snapshot, q: np.ndarray, every: np.ndarray | None):
        mom = self.store.meta.get("vec_moments")
        if every is None and mom is not None and int(mom["n"]) == snap.n:
            q64 = q.astype(np.float64)
            mean = float(mom["sum"] @ q64) / snap.n
            var = float(q64 @ mom["gram"] @ q64) / snap.n - mean * mean
            if var <= 1e-12:
                return None
            return np.float32(mean), np.float32(1.0 / math.sqrt(var))
        pool = np.arange(snap.n) if every is None else np.flatnonzero(every)
        sample = pool[:: max(1, len(pool) // 4096)]  # an even sample of eligible memories
        return _zstats(snap.vectors_at(sample, len(q)) @ q, None)

    def _hamming(self, snap: Snapshot, q: np.ndarray, planes: np.ndarray) -> np.ndarray:
        """Cosine estimated from SimHash Hamming distances: 32 bytes read per memory."""
        from memstack.core.store import CODE_BITS, simhash

        qcode = simhash(q[None, :], planes)[:, 0]
        table = np.cos(np.pi * np.arange(CODE_BITS + 1) / CODE_BITS).astype(np.float32)
        out = np.zeros(snap.n, dtype=np.float32)
        chunk = 65536  # stay in cache: xor, popcount and add word by word
        acc = np.empty(chunk, dtype=np.uint16)
        tmp = np.empty(chunk, dtype=np.uint64)
        cnt = np.empty(chunk, dtype=np.uint8)
        for lo, codes in snap.code_blocks():
            rows = codes.shape[1]
            for a in range(0, rows, chunk):
                m = min(chunk, rows - a)
                acc[:m] = 0
                for w in range(codes.shape[0]):
                    np.bitwise_xor(codes[w, a : a + m], qcode[w], out=tmp[:m])
                    np.bitwise_count(tmp[:m], out=cnt[:m])
                    acc[:m] += cnt[:m]
                np.take(table, acc[:m], out=out[lo + a : lo + a + m])
        return out

    def _vectors(self, snap: Snapshot, q: np.ndarray) -> np.ndarray:
        out = np.empty(snap.n, dtype=np.float32)
        for lo, block in snap.vector_blocks(len(q)):
            np.matmul(block, q, out=out[lo : lo + len(block)])
        return out

    def query_vector(self, query: str) -> np.ndarray:
        """The query's embedding as search() makes it (IDF weights from the store's BM25
        statistics), for vector-only comparisons such as a scheme's recall."""
        with self.store.snapshot() as snap:
            _, idf = self._bm25(snap, self.analyzer.terms(query))
            return self._query_vector(query, idf, snap.n)

    def _query_vector(self, query: str, idf: dict[str, float], n: int) -> np.ndarray:
        if getattr(self.embedder, "uses_idf", False):
            default = math.log(1.0 + n)
            weights = None
            if idf:
                def weights(stems: list[str]) -> np.ndarray:
                    return np.array([idf.get(s, default) for s in stems])
            q = self.embedder.embed_query(query, idf=weights)
        else:
            q = self.embedder.embed_query(query)
        return np.asarray(q, dtype=np.float32)

    def _candidates(self, snap: Snapshot, bm25: np.ndarray | None, vec: np.ndarray | None,
                    every: np.ndarray | None, o: RecallOptions,
                    approx: bool = False) -> np.ndarray:
        """Memories that can reach the top: the best of each signal (all of a small store)."""
        n = snap.n
        if n <= 4 * CANDIDATES:
            return np.arange(n) if every is None else np.flatnonzero(every)
        parts = []
        for sig, c in ((bm25, CANDIDATES), (vec, CANDIDATES * (2 if approx else 1))):
            if sig is not None:
                parts.append(_top(sig if every is None else np.where(every, sig, -np.inf), c))
        if o.recency_half_life:
            te = np.nan_to_num(snap.column("t_event"), nan=-np.inf)
            parts.append(_top(te if every is None else np.where(every, te, -np.inf),
                              CANDIDATES))
        if not parts:
            parts.append(np.arange(min(n, CANDIDATES)))
        return _sorted_unique(np.concatenate(parts))

    def search(self, query: str, o: RecallOptions | None = None) -> list[Hit]:
        """The best memories for `query`, best first, at most o.k of them."""
        o = o or RecallOptions()
        if o.route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, not {o.route!r}")
        bad = sorted(set(o.include) - set(INCLUDE))
        if bad:
            raise ValueError(f"include takes {', '.join(INCLUDE)}, not {', '.join(bad)}")
        with self.store.snapshot() as snap:
            if snap.n == 0 or o.k <= 0:
                return []
            include = set(o.include) | ({"archived"} if o.include_archived else set())
            if "merged" not in include and snap.stats.get("archived", 0) and \
                    (snap.column("status") == STATUS_MERGED).any():
                return self._through_merged(snap, query, o)
            return self._search(snap, query, o)

    def _through_merged(self, snap: Snapshot, query: str, o: RecallOptions) -> list[Hit]:
        """Search the merged duplicates too, each standing for the memory it was merged
        into: the merged memory holds one wording, but every source's wording still finds
        it (and it comes back once)."""
        loose = replace(o, include=frozenset(o.include) | {"merged"}, k=o.k * 3)
        strict = self._mask(snap, o)
        out: list[Hit] = []
        seen: set[int] = set()
        for hit in self._search(snap, query, loose):
            d, rec = hit.docno, hit.record
            if (rec.get("meta") or {}).get("status") == "merged":
                into = rec["meta"].get("merged_into")
                t = snap.docno(into) if into else None
                if t is None or not strict[t]:
                    continue
                via, d, rec = hit.id, t, snap.record(t)
                hit = Hit(docno=d, id=rec["id"], score=hit.score, record=rec,
                          explain=dict(hit.explain, via_source=via) if o.explain else {})
            elif not strict[d]:
                continue
            if d not in seen:
                seen.add(d)
                out.append(hit)
            if len(out) >= o.k:
                break
        return out

    def _derived_rows(self, snap: Snapshot) -> tuple[np.ndarray, int, float] | None:
        """(is-summary-or-cluster per docno, their count, their total BM25 length), or None
        when the store has none. Levels never change, so this is kept until the store grows."""
        if self._derived is None or self._derived[0] != snap.n:
            flag = snap.column("level") >= DERIVED_CODES[0]
            count = int(flag.sum())
            info = None
            if count:
                info = (flag, count, float(snap.column("dl")[flag].sum(dtype=np.float64)))
            self._derived = (snap.n, info)
        return self._derived[1]

    def _has_derived(self, snap: Snapshot) -> bool:
        return self._derived_rows(snap) is not None

    def _search(self, snap: Snapshot, query: str, o: RecallOptions) -> list[Hit]:
        mask = self._mask(snap, o)
        if o.levels or not self._has_derived(snap):
            if not mask.any():
                return []
            sig = self._signals(snap, query)
            sc = self._score(snap, sig, mask, o)
            top, final_top = self._rank(snap, sc.cand, sc.final, o)
            return self._hits(snap, sig, sc, top, final_top, o)
        level = snap.column("level")
        masks = {"base": mask & (level < DERIVED_CODES[0])}
        if o.route != "off":
            for name, code in zip(DERIVED_LEVELS, DERIVED_CODES, strict=True):
                if o.route != "boost" or name == "summary":  # clusters: no gain measured
                    masks[name] = mask & (level == code)
        masks = {k: v for k, v in masks.items() if k == "base" or v.any()}
        if not masks["base"].any():
            return []
        sig = self._signals(snap, query)
        if len(masks) == 1:
            sc = self._score(snap, sig, masks["base"], o)
            top, final_top = self._rank(snap, sc.cand, sc.final, o)
            return self._hits(snap, sig, sc, top, final_top, o)
        return self._routed(snap, sig, masks, o)

    def _signals(self, snap: Snapshot, query: str) -> _Signals:
        """The query's BM25 scores and vector similarities over the whole store."""
        n = snap.n
        terms = self.analyzer.terms(query)
        bm25, idf = self._bm25(snap, terms)
        q = self._query_vector(query, idf, n)
        vec, approx = None, False
        vq = snap.vector_quant
        if vq is not None and vq["dim"] != len(q):
            vq = None
        if np.any(q):
            planes = self.store.meta.get("simhash")
            if vq is not None:
                # scan the quantized copy; with the floats kept, the candidates are re-scored
                # exactly below (as on the SimHash path), else the decoded scores stand
                from memstack.core.vector_quant import scan

                vec, approx = scan(snap, q), bool(vq["keep_float"])
            elif n >= BINARY_MIN and planes is not None and planes.shape[1] == len(q):
                vec, approx = self._hamming(snap, q, planes), True
            else:
                vec = self._vectors(snap, q)
        return _Signals(terms, bm25, q, vec, approx, vq)

    def _score(self, snap: Snapshot, sig: _Signals, mask: np.ndarray, o: RecallOptions,
               extra: np.ndarray | None = None) -> _Scored:
        """Fused scores of the candidates among `mask` (z-scored over `mask`); `extra`
        docnos are scored too. Ineligible candidates score -inf."""
        n = snap.n
        every = None if mask.all() else mask
        bm25, vec, q, approx, vq = sig.bm25, sig.vec, sig.q, sig.approx, sig.vq
        zb = _zstats(bm25, every) if bm25.any() else None
        zv = _zstats(vec, every) if vec is not None else None
        if approx:  # exact mean and spread of the cosines, from the stored vector moments
            zv = self._exact_zstats(snap, q, every)
        # a coarse scan (SimHash, binary codes) offers twice the vector candidates; int8 and
        # q4 rank nearly exactly already
        wide = approx and (vq is None or vq["scheme"] == "binary")
        cand = self._candidates(snap, bm25 if zb else None, vec, every, o, wide)
        if extra is not None and len(extra):
            cand = _sorted_unique(np.concatenate([cand, np.asarray(extra, dtype=cand.dtype)]))
        # fused scores of the candidates and of their neighbours (for the neighbour share)
        ext = _sorted_unique(np.concatenate([cand - 1, cand, cand + 1]).clip(0, n - 1))
        f_ext = np.zeros(len(ext), dtype=np.float32)
        if zb:
            f_ext += (bm25[ext] - zb[0]) * zb[1]
        v_ext = None
        if zv:
            # on the SimHash path the candidates are re-scored with their exact vectors
            v_ext = snap.vectors_at(ext, len(q)) @ q if approx else vec[ext]
            f_ext += np.float32(o.vec_weight) * (v_ext - zv[0]) * zv[1]
        pos = np.searchsorted(ext, cand)
        final = f_ext[pos].copy()
        sc = _Scored(cand=cand, final=final, every=every, ext=ext, v_ext=v_ext)
        if o.neighbour and n > 1:
            group = snap.column_at("group", ext)
            best = np.full(len(cand), -np.inf, dtype=np.float32)
            for step in (-1, 1):
                nb = np.clip(pos + step, 0, len(ext) - 1)
                ok = (ext[nb] == cand + step) & (group[nb] == group[pos])
                np.maximum(best, np.where(ok, f_ext[nb], -np.inf), out=best)
            sc.bonus = np.where(best > -np.inf, np.float32(o.neighbour) * best, np.float32(0))
            final += sc.bonus
        now = None
        if o.recency_half_life:
            now = o.now if o.now is not None else (o.as_of or snap.newest_event())
            age = np.clip(np.nan_to_num(now - snap.column_at("t_event", cand), nan=np.inf),
                          0, None)
            sc.recency = (o.recency_weight * np.exp2(-age / o.recency_half_life)
                          ).astype(np.float32)
            final += sc.recency
        if (o.decay or o.explain) and self._late(snap):
            from memstack.core.consolidate.decay import decay_term

            if now is None:
                now = o.now if o.now is not None else (o.as_of or snap.newest_event())
            te = snap.column_at("t_event", cand)
            when = np.where(np.isnan(te), snap.column_at("valid_from", cand), te)
            sc.decay = np.asarray(decay_term(snap.column_at("importance", cand),
                                             snap.column_at("tier", cand), now - when),
                                  dtype=np.float32)
            if o.decay:
                final += np.float32(o.decay_weight) * sc.decay
        if every is not None:
            final[~every[cand]] = -np.inf
        return sc

    def _late(self, snap: Snapshot) -> bool:
        """Whether consolidate has written the importance and tier columns."""
        if self._late_cols is None or self._late_cols[0] != snap.n:
            self._late_cols = (snap.n, snap.has_column("importance"))
        return self._late_cols[1]

    def _rank(self, snap: Snapshot, cand: np.ndarray, final: np.ndarray,
              o: RecallOptions) -> tuple[np.ndarray, np.ndarray]:
        """The best o.k of the candidates (MMR-diversified when asked), best first."""
        eligible = int(np.isfinite(final).sum())
        want = min(eligible, max(o.k * (5 if o.mmr else 1), o.k))
        order = np.lexsort((cand, -final))[:want]
        top, final_top = cand[order], final[order]
        if o.mmr:
            keep = self._mmr(snap, top, final_top, o)
            top, final_top = top[keep], final_top[keep]
        return top[: o.k], final_top[: o.k]

    def _routed(self, snap: Snapshot, sig: _Signals, masks: dict[str, np.ndarray],
                o: RecallOptions) -> list[Hit]:
        """Search every granularity, then answer from the most decisive one (entropy) or from
        all of them fused (fuse). Summary and cluster hits are expanded to their members."""
        from memstack.core.routing import expand_groups, pick_level, rrf

        base_mask = masks["base"]
        groups: dict[str, list[tuple[int, float, list[int]]]] = {}
        level_scores: dict[str, np.ndarray] = {}
        wanted: list[np.ndarray] = []
        for name in DERIVED_LEVELS:
            if name not in masks:
                continue
            sc = self._score(snap, sig, masks[name], o)
            ok = np.isfinite(sc.final)
            level_scores[name] = sc.final[ok]
            order = np.lexsort((sc.cand, -sc.final))[: min(int(ok.sum()), GROUP_HITS)]
            hits = []
            for d, s in zip(sc.cand[order].tolist(), sc.final[order].tolist(), strict=True):
                members = self._members(snap, snap.record(d), base_mask)
                hits.append((d, s, members))
                wanted.append(np.asarray(members, dtype=np.int64))
            groups[name] = hits
        extra = _sorted_unique(np.concatenate(wanted)) if wanted else None
        base = self._score(snap, sig, base_mask, o, extra)
        if o.route == "boost":
            return self._boosted(snap, sig, base, groups.get("summary", []), o)
        ok = np.isfinite(base.final)
        own = dict(zip(base.cand[ok].tolist(), base.final[ok].tolist(), strict=True))
        order = np.lexsort((base.cand, -base.final))[: int(ok.sum())]
        base_rank = base.cand[order].tolist()
        via: dict[str, dict[int, int]] = {}  # level -> member -> best group holding it
        expanded: dict[str, list[tuple[int, float]]] = {}
        for name, hits in groups.items():
            expanded[name] = expand_groups([(m, s) for _, s, m in hits], own,
                                           per_group=PER_GROUP)
            via[name] = {}
            for d, _, members in reversed(hits):
                via[name].update(dict.fromkeys(members, d))
        info: dict = {"route": o.route}
        if o.route == "entropy":
            picked, ent = pick_level({"base": base.final[ok], **level_scores})
            info.update(level=picked, entropy={k: round(v, 4) for k, v in ent.items()})
            ranked = [(d, own[d]) for d in base_rank] if picked == "base" else \
                _fill(expanded[picked], base_rank, own)
            through = via.get(picked, {})
        else:
            through = {m: g for name in reversed(list(via)) for m, g in via[name].items()}
            ranked = [(d, float(s)) for d, s in
                      rrf([base_rank] + [[d for d, _ in expanded[k]] for k in expanded])]
        want = max(o.k * (5 if o.mmr else 1), o.k)
        top = np.asarray([d for d, _ in ranked[:want]], dtype=np.int64)
        final_top = np.asarray([s for _, s in ranked[:want]], dtype=np.float32)
        if o.mmr and len(top):
            keep = self._mmr(snap, top, final_top, o)
            top, final_top = top[keep], final_top[keep]
        top, final_top = top[: o.k], final_top[: o.k]
        extra_ex = {}
        if o.explain:
            for d in top.tolist():
                ex = dict(info)
                if d in through:
                    ex["via"] = snap.doc_id(through[d])
                extra_ex[d] = ex
        return self._hits(snap, sig, base, top, final_top, o, extra_ex)

    def _boosted(self, snap: Snapshot, sig: _Signals, base: _Scored,
                 hits: list[tuple[int, float, list[int]]], o: RecallOptions) -> list[Hit]:
        """The base ranking with the members of matching session summaries lifted."""
        from memstack.core.routing import group_boost

        gain = group_boost([(m, s) for _, s, m in hits])
        final = base.final.copy()
        via: dict[int, int] = {}
        for d, _, members in reversed(hits):
            via.update(dict.fromkeys(members, d))
        if gain:
            docs = np.fromiter(gain, dtype=np.int64, count=len(gain))
            pos = np.searchsorted(base.cand, docs)  # members are among the candidates
            final[pos] += np.fromiter(gain.values(), dtype=np.float32, count=len(gain))
        top, final_top = self._rank(snap, base.cand, final, o)
        extra_ex = {}
        if o.explain:
            for d in top.tolist():
                ex = {"route": "boost", "boost": gain.get(d, 0.0)}
                if gain.get(d):
                    ex["via"] = snap.doc_id(via[d])
                extra_ex[d] = ex
        return self._hits(snap, sig, base, top, final_top, o, extra_ex)

    def _members(self, snap: Snapshot, rec: dict, base_mask: np.ndarray) -> list[int]:
        """Docnos of a summary's or cluster's members that recall may return; a member that
        was merged stands for the memory it was merged into."""
        ids = [ln["id"] for ln in rec.get("links") or () if ln.get("type") == "derived_from"]
        docs = [d for d in (snap.docno(i) for i in ids) if d is not None]
        if not docs:
            return []
        arr = np.asarray(docs, dtype=np.int64)
        ok = base_mask[arr]
        out = arr[ok].tolist()
        if not ok.all():
            status = snap.column_at("status", arr[~ok])
            for d in arr[~ok][status == STATUS_MERGED].tolist():
                into = (snap.record(d).get("meta") or {}).get("merged_into")
                t = snap.docno(into) if into else None
                if t is not None and base_mask[t]:
                    out.append(t)
        return list(dict.fromkeys(out))

    def _hits(self, snap: Snapshot, sig: _Signals, sc: _Scored, top: np.ndarray,
              final_top: np.ndarray, o: RecallOptions,
              extra_explain: dict[int, dict] | None = None) -> list[Hit]:
        bm25, vec, vq = sig.bm25, sig.vec, sig.vq
        hits = []
        for d, score in zip(top.tolist(), final_top.tolist(), strict=True):
            rec = snap.record(d)
            ex = {}
            if o.explain:
                i = int(np.searchsorted(sc.cand, d))
                ex = {"fused": float(sc.final[i]) if i < len(sc.cand) and sc.cand[i] == d
                      else None, "bm25": float(bm25[d]),
                      "bm25_rank": _rank_of(bm25, sc.every, d) if bm25[d] > 0 else None,
                      "terms": sig.terms}
                if vec is not None:
                    ex.update(vec=float(vec[d]), vec_rank=_rank_of(vec, sc.every, d))
                    if vq is not None:  # rank by the scanned copy, score exact where re-scored
                        if sig.approx and sc.v_ext is not None:
                            ex["vec"] = float(sc.v_ext[np.searchsorted(sc.ext, d)])
                        ex["vec_scheme"] = vq["scheme"]
                if i < len(sc.cand) and sc.cand[i] == d:
                    if sc.bonus is not None:
                        ex["neighbour"] = float(sc.bonus[i])
                    if sc.recency is not None:
                        ex["recency"] = float(sc.recency[i])
                    if sc.decay is not None:
                        ex["decay"] = float(sc.decay[i])
                if extra_explain and d in extra_explain:
                    ex.update(extra_explain[d])
            hits.append(Hit(docno=d, id=rec["id"], score=score, record=rec, explain=ex))
        return hits

    def _mmr(self, snap: Snapshot, cand: np.ndarray, score: np.ndarray,
             o: RecallOptions) -> np.ndarray:
        """Maximal marginal relevance: trade relevance against similarity to picks so far.

        Returns positions into `cand`, best first."""
        vecs = np.stack([snap.vector(int(d)) for d in cand])
        rel = (score - score.min()) / (np.ptp(score) or 1.0)
        chosen: list[int] = []
        sim_max = np.full(len(cand), -np.inf)
        lam = float(o.mmr)
        for _ in range(min(o.k, len(cand))):
            gain = lam * rel - (1 - lam) * np.where(np.isfinite(sim_max), sim_max, 0.0)
            gain[chosen] = -np.inf
            j = int(np.argmax(gain))
            chosen.append(j)
            sim_max = np.maximum(sim_max, vecs @ vecs[j])
        return np.asarray(chosen, dtype=np.int64)


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
