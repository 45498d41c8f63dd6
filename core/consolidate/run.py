"""The consolidate batch job: guard, deduplicate, supersede, link, summarise and tier.

It works incrementally: the store's meta keeps a watermark (the first docno not yet
consolidated), so a nightly run looks only at what arrived since, finding its candidates
through a blocking index (exact keys, MinHash bands, subject/slot keys) and one vector scan
per namespace. Each chunk commits its new memories, marks and decisions in one transaction,
watermark included, so a killed run leaves a consistent store and a re-run finishes the work.
Nothing is deleted or overwritten: duplicates are merged into a new memory and marked,
superseded memories get their validity closed, everything else only gains links and marks.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from memstack.core.consolidate.decisions import DecisionLog
from memstack.core.store import (
    COLUMNS,
    LATE_COLUMNS,
    LEVEL_CODE,
    STATUS_ACTIVE,
    STATUS_MERGED,
    TIER_CODE,
    LmdbStore,
    Snapshot,
    status_of,
    wait_flock,
)
from memstack.formats.records import from_iso, memory_record, now_iso, to_iso

BASE_LEVELS = ("turn", "chunk", "doc", "fact")
STEPS = ("guard", "dedup", "supersede", "links", "summaries", "clusters", "decay")
NEIGHBOURS = 8  # nearest earlier memories kept per new memory (dedup, conflicts, links)
CONTRADICT_COS = 0.6  # below this two statements are not about the same thing
RECLUSTER_GROWTH = 1.25  # topic clusters are rebuilt when the store grew by this factor
MIN_CLUSTER_STORE = 50
STATE_KEY = "consolidate"
# the newest memories under one key that are judged: a crowded MinHash band or a much
# repeated slot says little more past these, and the newest are the current ones
KEY_CANDIDATES = 48
_RELATION_NAME = re.compile(
    r"\b[Mm]y\s+(sister|brother|roommate|flatmate|friend|colleague|coworker|co-worker|"
    r"partner|wife|husband|boyfriend|girlfriend|mom|dad|mother|father|son|daughter|cousin|"
    r"neighbou?r|boss|manager|aunt|uncle|niece|nephew|grandma|grandpa|best\s+friend)"
    r",?\s+([A-Z][a-z]+)\b")


@dataclass
class ConsolidateOptions:
    ns: list[str] | None = None
    since: float | None = None  # only memories ingested at or after this time
    full: bool = False  # look at every memory again, not only those after the watermark
    dry_run: bool = False
    steps: tuple[str, ...] = STEPS
    forget_below: float | None = None
    llm: object | None = None
    llm_facts: bool = False  # also extract facts from turns with the LLM (a call per turn)
    max_llm_calls: int = 200
    chunk: int = 5000
    now: float | None = None
    related_k: int = 3
    related_min: float = 0.5
    dedup: object | None = None  # a dedup.DedupConfig; None = its defaults


@dataclass
class ConsolidateReport:
    run: str
    counts: Counter = field(default_factory=Counter)
    examined: int = 0
    created: int = 0
    updated: int = 0
    llm_calls: int = 0
    seconds: float = 0.0
    decisions: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        acts = ", ".join(f"{n} {a}" for a, n in sorted(self.counts.items())) or "no changes"
        llm = f", {self.llm_calls} LLM calls" if self.llm_calls else ""
        return (f"examined {self.examined} memories: {acts}; {self.created} new memories, "
                f"{self.updated} marked{llm} ({self.seconds:.2f}s)")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        p = self.parent.setdefault(x, x)
        while p != self.parent[p]:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        self.parent[x] = p
        return p

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[str]]:
        out: dict[str, list[str]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return [g for g in out.values() if len(g) > 1]


def _key(prefix: bytes, text: str) -> bytes:
    return prefix + hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                    digest_size=12).digest()


def _time(rec: dict, key: str) -> float:
    t = from_iso(rec.get(key)) if rec.get(key) else None
    return math.nan if t is None else t


def _has_link(rec: dict, typ: str, rid: str) -> bool:
    return any(ln.get("type") == typ and ln.get("id") == rid for ln in rec.get("links") or ())


def _link(rec: dict, typ: str, rid: str) -> bool:
    if rid == rec["id"] or _has_link(rec, typ, rid):
        return False
    rec.setdefault("links", []).append({"type": typ, "id": rid})
    return True


class Consolidation:
    """One run over one store. Library callers use consolidate(); this holds its state."""

    def __init__(self, store: LmdbStore, embedder, opts: ConsolidateOptions):
        from memstack.core.consolidate import dedup as dedup_mod

        self.store = store
        self.embedder = embedder
        self.o = opts
        self.now = opts.now if opts.now is not None else time.time()
        t = now_iso() if opts.now is None else to_iso(opts.now)
        run = hashlib.blake2b(f"{t}\x1f{time.time_ns()}".encode(), digest_size=8).hexdigest()
        self.log = DecisionLog(run=run, t=t)
        self.report = ConsolidateReport(run=run)
        self.cfg = opts.dedup or dedup_mod.DedupConfig()
        self.over: dict[str, dict] = {}  # id -> record as this run leaves it (uncommitted)
        self.created: dict[str, tuple[dict, np.ndarray]] = {}  # new memories, uncommitted
        self.pending: dict[bytes, list[str]] = {}  # index keys -> ids, uncommitted
        self.run_index: dict[bytes, list[str]] = {}  # every key this run filed (lookups)
        self.prior_index = False  # whether the store's index held keys when the run began
        self._before: dict[str, tuple[bool, int]] = {}  # id -> (closed, status) before marks
        self.col_updates: dict[str, dict[str, float]] = {}  # column -> id -> value
        self.claims: dict[str, list] = {}
        self._cands: dict[str, dict[str, list]] = {}  # new id -> candidates (cos, reasons)
        self.sigs: dict[str, np.ndarray] = {}  # MinHash signatures of this chunk's texts
        self._read: dict[str, dict | None] = {}  # records read from this chunk's snapshot
        self._question: dict[str, str] = {}  # short turn id -> the turn it answers
        self._own: list[tuple[int, int]] = []  # docno ranges of the memories this run made
        self._ids: list[str] = []  # docno -> id (docnos never change: cached for the run)
        self._docno: dict[str, int] = {}
        self.vecs: dict[str, np.ndarray | None] = {}
        self._done = 0  # decisions already committed
        self.state = dict(store.meta.get(STATE_KEY) or {})
        self.llm = opts.llm
        self.aliases: dict[str, dict[str, str]] = {
            ns: dict(m) for ns, m in (self.state.get("aliases") or {}).items()}
        self.dim = int((store.meta.get("embedder") or {}).get("dim") or embedder.dim)

    # -- records through this run's overlay ----------------------------------------------
    def record(self, snap: Snapshot, rid: str) -> dict | None:
        if rid in self.over:
            return self.over[rid]
        if rid in self.created:
            return self.created[rid][0]
        rec = self._read.get(rid)
        if rec is None:
            rec = self._read[rid] = snap.record_by_id(rid)
        return rec

    def edit(self, snap: Snapshot, rid: str) -> dict:
        """The record, copied into the overlay so it can be marked."""
        if rid in self.created:
            return self.created[rid][0]
        if rid not in self.over:
            rec = dict(self.record(snap, rid))  # marks only add keys, links and meta entries
            self._before[rid] = (bool(rec.get("valid_to")), status_of(rec))
            rec["meta"] = dict(rec.get("meta") or {})
            rec["links"] = list(rec.get("links") or ())
            self.over[rid] = rec
        return self.over[rid]

    def file(self, key: bytes, rid: str) -> None:
        """File a candidate key for a memory: found by the rest of this run at once, and by
        later runs once committed."""
        self.pending.setdefault(key, []).append(rid)
        self.run_index.setdefault(key, []).append(rid)

    def filed(self, snap: Snapshot, keys: list[bytes]) -> dict[bytes, list[str]]:
        """Ids under each key: the store's index (when it held anything before this run;
        this run's own keys are known without a lookup), then this run's."""
        out: dict[bytes, list[str]] = {}
        found = self.store.cindex_get(snap.txn, keys) if self.prior_index else {}
        for k in keys:
            ids = [self.id_of(snap, int(d)) for d in found.get(k, ())[-KEY_CANDIDATES:]
                   if int(d) < snap.n]
            mine = self.run_index.get(k)
            if mine:
                ids = (ids + mine[-KEY_CANDIDATES:])[-KEY_CANDIDATES:]
            if ids:
                out[k] = ids
        return out

    def id_of(self, snap: Snapshot, d: int) -> str:
        """The id at a docno, from one cursor pass over the ids database (not a lookup per
        neighbour)."""
        if d >= len(self._ids):
            cur = snap.txn.cursor(db=snap.dbs["ids"])
            if cur.set_key(len(self._ids).to_bytes(4, "big")):
                for val in cur.iternext(keys=False, values=True):
                    self._ids.append(bytes(val).decode())
                    if len(self._ids) >= snap.n:
                        break
        return self._ids[d] if d < len(self._ids) else snap.doc_id(d)

    def claims_of(self, rec: dict) -> list:
        """What a memory states, as (subject, slot, value) claims: an LLM-extracted fact
        carries its claim, everything else goes through the deterministic extractor."""
        from memstack.core.consolidate.claims import Claim, extract_claims

        rid = rec["id"]
        if rid not in self.claims:
            meta = rec.get("meta") or {}
            if meta.get("claim"):
                given = meta["claim"]
                self.claims[rid] = [Claim(subject=given["subject"], slot=given["slot"],
                                          value=given["value"],
                                          negated=bool(given.get("negated")))]
            elif meta.get("claims") is not None:  # a merged memory: all its sources say
                self.claims[rid] = [Claim(subject=c[0], slot=c[1], value=c[2],
                                          negated=bool(c[3])) for c in meta["claims"]]
            else:
                speaker = (rec.get("source") or {}).get("speaker")
                found = extract_claims(rec["text"], speaker or "",
                                       question=self._question.get(rid))
                aliases = self.aliases.get(rec["ns"])
                if aliases:  # "my roommate" is Omar once someone said "my roommate Omar"
                    found = [Claim(subject=aliases.get(c.subject) or c.subject, slot=c.slot,
                                   value=c.value, negated=c.negated) for c in found]
                self.claims[rid] = found
        return self.claims[rid]

    def _learn_aliases(self, recs: list[dict]) -> None:
        """Names of the people a speaker calls "my <relation>": one name per relation per
        namespace (two different roommates make the relation ambiguous: no alias)."""
        for r in recs:
            speaker = ((r.get("source") or {}).get("speaker") or "").casefold().strip()
            if not speaker:
                continue
            for rel, name in _RELATION_NAME.findall(r["text"]):
                key = f"{speaker}'s {rel.casefold()}"
                known = self.aliases.setdefault(r["ns"], {})
                name = name.casefold()
                if known.get(key, name) != name:
                    known[key] = ""  # ambiguous
                elif key not in known:
                    known[key] = name

    def _questions(self, snap: Snapshot, docnos: np.ndarray, recs: list[dict]) -> None:
        """The turn each short turn answers (the one before it in its session, by someone
        else), so "27, sadly." after "How old are you?" states an age."""
        short = [i for i, r in enumerate(recs) if len(r["text"]) < 60 and docnos[i] > 0]
        if not short:
            return
        at = docnos[short]
        same = snap.column_at("group", at) == snap.column_at("group", at - 1)
        for i, ok in zip(short, same, strict=True):
            if not ok:
                continue
            prev = snap.record(int(docnos[i]) - 1)
            me = (recs[i].get("source") or {}).get("speaker")
            if (prev.get("source") or {}).get("speaker") != me:
                self._question[recs[i]["id"]] = prev["text"]

    def _union_claims(self, recs: list[dict]) -> list:
        out: dict = {}
        for r in recs:
            for c in self.claims_of(r):
                out.setdefault((c.subject, c.slot, c.value, c.negated), c)
        return list(out.values())

    def _llm_facts(self, snap: Snapshot, recs: list[dict]) -> None:
        """Fact memories from turns the deterministic extractor found nothing in (opt-in:
        every such turn costs a call). They are consolidated on the next run."""
        for r in recs:
            if r.get("level") != "turn" or self.claims_of(r) or not self.llm.budget_left():
                continue
            speaker = (r.get("source") or {}).get("speaker")
            facts = self.llm.extract_facts(r["text"], speaker)
            for i, f in enumerate(facts or ()):
                subject = " ".join(str(f["subject"]).split()).casefold()
                slot = " ".join(str(f["relation"]).split()).casefold()
                value = " ".join(str(f["value"]).split())
                src = dict(r.get("source") or {})
                src["offset"] = f"{src.get('offset', '')}#fact{i}"
                rec = memory_record(
                    ns=r["ns"], text=f"{f['subject']} {f['relation']} {f['value']}",
                    tokens=0, t_event=r.get("t_event"), t_ingest=self.log.t, source=src,
                    level="fact", valid_from=r.get("valid_from"),
                    links=[{"type": "derived_from", "id": r["id"]}],
                    meta={"claim": {"subject": subject, "slot": slot,
                                    "value": value.casefold()},
                          "by": self.llm.model_id})
                if self.record(snap, rec["id"]) is not None or rec["id"] in self.created:
                    continue
                vec = np.asarray(self.embedder.embed([rec["text"]]), dtype=np.float32)[0]
                self.created[rec["id"]] = (rec, vec)
                self.report.created += 1
                self.report.counts["fact"] += 1

    def current_of(self, snap: Snapshot, rid: str) -> dict | None:
        """The memory that stands for rid now: its merged memory when it was merged."""
        rec = self.record(snap, rid)
        seen = 0
        while rec is not None and (rec.get("meta") or {}).get("merged_into") and seen < 8:
            rec = self.record(snap, rec["meta"]["merged_into"])
            seen += 1
        return rec

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> ConsolidateReport:
        t0 = time.perf_counter()
        st = self.store
        if not self.o.dry_run:
            st.ensure_late_dbs()
        with st.snapshot() as snap:
            n = snap.n
            db = st.late_db("cindex")
            self.prior_index = db is not None and snap.txn.stat(db)["entries"] > 0
        start = 0 if self.o.full else int(self.state.get("upto", 0))
        filtered = bool(self.o.ns or self.o.since is not None)
        for lo in range(start, n, self.o.chunk):
            hi = min(n, lo + self.o.chunk)
            with st.snapshot() as snap:
                self._chunk(snap, lo, hi)
            if not filtered and not self.o.full:
                self.state["upto"] = hi
            self._commit()
        if self.o.full and not filtered:
            self.state["upto"] = n
        with st.snapshot() as snap:
            if "summaries" in self.o.steps or "clusters" in self.o.steps:
                self._granularities(snap, start)
            self._commit()
        with st.snapshot() as snap:
            if "decay" in self.o.steps:
                self._decay(snap)
        self.state["runs"] = int(self.state.get("runs", 0)) + (0 if self.o.dry_run else 1)
        self._commit(final=True)
        self._skip_own()
        self.report.llm_calls = int(getattr(self.llm, "calls", 0) or 0)
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _skip_own(self) -> None:
        """Move the watermark past the memories this run made (merged memories, summaries,
        clusters need no examining) where they follow it directly: memories another
        process ingested meanwhile stay ahead of it."""
        if self.o.dry_run or self.o.ns or self.o.since is not None:
            return
        upto = int(self.state.get("upto", 0))
        for lo, hi in sorted(self._own):
            if lo == upto:
                upto = hi
        if upto != int(self.state.get("upto", 0)):
            self.state["upto"] = upto
            state = dict(self.state, aliases=self.aliases)
            self.store.write_batch(lambda txn: self.store.put_meta(txn, STATE_KEY, state))

    # -- one chunk of new memories -----------------------------------------------------
    def _chunk(self, snap: Snapshot, lo: int, hi: int) -> None:
        from memstack.core.consolidate import signals

        docnos = np.arange(lo, hi)
        status = snap.column_at("status", docnos)
        level = snap.column_at("level", docnos)
        vt = snap.column_at("valid_to", docnos)
        base = np.isin(level, [LEVEL_CODE[lv] for lv in BASE_LEVELS])
        ok = base & (status == STATUS_ACTIVE) & np.isinf(vt)
        if self.o.ns:
            codes = snap.store.meta.get("ns_codes", {})
            want = [codes[x] for x in self.o.ns if x in codes]
            ok &= np.isin(snap.column_at("ns", docnos), np.asarray(want, dtype=np.uint32))
        docnos = docnos[ok]
        recs = [snap.record(int(d)) for d in docnos]
        if self.o.since is not None:
            keep = [i for i, r in enumerate(recs) if _time(r, "t_ingest") >= self.o.since]
            docnos, recs = docnos[keep], [recs[i] for i in keep]
        recs = [r for r in recs if not (r.get("meta") or {}).get("sources")]  # merged ones
        if not recs:
            return
        docnos = np.asarray([snap.docno(r["id"]) for r in recs], dtype=np.int64)
        self._docno.update(zip((r["id"] for r in recs), docnos.tolist(), strict=True))
        self.report.examined += len(recs)
        self._questions(snap, docnos, recs)
        self._learn_aliases(recs)
        vecs = snap.vectors_at(docnos, self.dim)
        if "guard" in self.o.steps:
            keep = self._guard(snap, recs)
            docnos, recs, vecs = docnos[keep], [recs[i] for i in keep], vecs[keep]
        if self.llm is not None and self.o.llm_facts:
            self._llm_facts(snap, recs)
        texts = [r["text"] for r in recs]
        exact = [signals.exact_key(t) for t in texts]
        sigs = signals.minhash(texts)
        bands = signals.band_keys(sigs)
        near_ok = [self.cfg.min_words_near <= signals.word_count(t) for t in texts]
        nb_ids, nb_cos = self._neighbours(snap, docnos, vecs)
        novelty = np.where(np.isfinite(nb_cos[:, 0]), 1.0 - nb_cos[:, 0], 1.0) \
            if nb_cos.shape[1] else np.ones(len(recs))
        for r, nv in zip(recs, novelty, strict=True):
            self.col_updates.setdefault("novelty", {})[r["id"]] = float(np.clip(nv, 0, 1))
        # candidate keys: committed index, then this run's uncommitted additions
        min_exact = getattr(self.cfg, "min_words_exact", 1)
        keys: list[list[tuple[str, bytes]]] = []
        for i, r in enumerate(recs):
            ns = r["ns"].encode() + b"\x1f"
            ks = []
            if signals.word_count(texts[i]) >= min_exact:  # filler ("ok") is no candidate
                ks.append(("exact", b"x" + ns + exact[i]))
            if near_ok[i]:
                raw = bands[i].astype("<u8").tobytes()
                ks += [("band", b"b" + ns + raw[j : j + 8]) for j in range(0, len(raw), 8)]
            ks += [("slot", _key(b"s", k)) for k in self._slot_keys(r)]
            keys.append(ks)
        under = self.filed(snap, sorted({k for ks in keys for _, k in ks}))
        pend, runi = self.pending, self.run_index

        for i, r in enumerate(recs):
            self.sigs[r["id"]] = sigs[i]
            self.vecs[r["id"]] = vecs[i]
        uf = _UnionFind()
        verdicts: dict[tuple[str, str], object] = {}
        for i, r in enumerate(recs):
            cands: dict[str, list] = {}  # id -> [cosine or nan, reasons]
            exact_hit = bool(under.get(keys[i][0][1])) if keys[i] and \
                keys[i][0][0] == "exact" else False
            for why, k in keys[i]:
                lst = under.get(k)
                if not lst or (why == "band" and exact_hit):
                    # an exact repeat joins its group; the group's first member already
                    # met the near duplicates its bands would find
                    continue
                for cid in lst[-KEY_CANDIDATES:]:
                    e = cands.get(cid)
                    if e is None:
                        cands[cid] = [math.nan, {why}]
                    else:
                        e[1].add(why)
            for cid, c in zip(nb_ids[i], nb_cos[i], strict=True):
                if cid:
                    cands.setdefault(cid, [math.nan, set()])[0] = float(c)
                    cands[cid][1].add("near-vector")
            cands.pop(r["id"], None)
            if "dedup" in self.o.steps:
                self._dedup_candidates(snap, r, cands, uf, verdicts)
            rid = r["id"]
            for _, k in keys[i]:  # file the keys (inlined: ~20 per memory)
                pend.setdefault(k, []).append(rid)
                runi.setdefault(k, []).append(rid)
                under.setdefault(k, []).append(rid)  # later memories of this chunk
            self._cands[r["id"]] = cands
        if "dedup" in self.o.steps:
            self._merge(snap, uf, verdicts, dict(zip((r["id"] for r in recs), vecs,
                                                      strict=True)))
        for i, r in enumerate(recs):
            if "supersede" in self.o.steps:
                self._supersede(snap, r)
            if "links" in self.o.steps:
                self._links(snap, r, nb_ids[i], nb_cos[i])
        self._cands.clear()
        self._read.clear()

    def _slot_keys(self, rec: dict) -> list[str]:
        from memstack.core.consolidate.supersede import slot_keys

        return slot_keys(rec["ns"], self.claims_of(rec))

    # -- guard ---------------------------------------------------------------------------
    def _guard(self, snap: Snapshot, recs: list[dict]) -> list[int]:
        from memstack.core.consolidate.guard import guard

        keep = []
        for i, r in enumerate(recs):
            v = guard(r["text"])
            if not v.quarantine:
                keep.append(i)
                continue
            rec = self.edit(snap, r["id"])
            meta = rec.setdefault("meta", {})
            meta["status"] = "quarantined"
            meta["quarantine"] = {"score": round(float(v.score), 4), "reasons": list(v.reasons)}
            self._decide("quarantine", r["id"], [], method="guard", score=v.score,
                         reason="looks like injected instructions: " + ", ".join(v.reasons),
                         signals={"reasons": list(v.reasons)})
        return keep

    # -- neighbours: one vector scan per namespace ---------------------------------------
    def _neighbours(self, snap: Snapshot, docnos: np.ndarray,
                    vecs: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
        """The NEIGHBOURS most similar earlier current memories of each new one, in the same
        namespace (ids, cosines; '' / -inf where there are fewer)."""
        m = len(docnos)
        k = NEIGHBOURS
        best_c = np.full((m, k), -np.inf, dtype=np.float32)
        best_d = np.full((m, k), -1, dtype=np.int64)
        if m == 0:
            return [[""] * k for _ in range(m)], best_c
        hi = int(docnos.max()) + 1
        ns_all = snap.column("ns")[:hi]
        pool_ok = np.isin(snap.column("status")[:hi], [STATUS_ACTIVE, STATUS_MERGED]) & \
            np.isinf(snap.column("valid_to")[:hi]) & \
            np.isin(snap.column("level")[:hi], [LEVEL_CODE[lv] for lv in BASE_LEVELS])
        ns_new = ns_all[docnos]
        for code in np.unique(ns_new):
            rows = np.flatnonzero(ns_new == code)
            pool = np.flatnonzero(pool_ok & (ns_all == code))
            if not len(pool):
                continue
            q = vecs[rows]
            qd = docnos[rows]
            step = 16384
            for a in range(0, len(pool), step):
                pd = pool[a : a + step]
                sims = q @ snap.vectors_at(pd, self.dim).T
                sims[pd[None, :] >= qd[:, None]] = -np.inf  # only earlier memories
                kk = min(k, sims.shape[1])
                top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
                cand_c = np.concatenate([best_c[rows], np.take_along_axis(sims, top, 1)], 1)
                cand_d = np.concatenate([best_d[rows], pd[top]], 1)
                order = np.argsort(-cand_c, axis=1, kind="stable")[:, :k]
                best_c[rows] = np.take_along_axis(cand_c, order, 1)
                best_d[rows] = np.take_along_axis(cand_d, order, 1)
        ids = [[self.id_of(snap, int(d)) if d >= 0 and np.isfinite(c) else ""
                for d, c in zip(dr, cr, strict=True)] for dr, cr in zip(best_d, best_c,
                                                                       strict=True)]
        return ids, best_c

    # -- dedup -------------------------------------------------------------------------------
    def _cos(self, snap: Snapshot, a: str, b: str) -> float:
        va, vb = self._vec(snap, a), self._vec(snap, b)
        return float(va @ vb) if va is not None and vb is not None else 0.0

    def _vec(self, snap: Snapshot, rid: str) -> np.ndarray | None:
        if rid not in self.vecs:
            if rid in self.created:
                self.vecs[rid] = self.created[rid][1]
            else:
                d = snap.docno(rid)
                self.vecs[rid] = None if d is None else snap.vector(d, self.dim)
        return self.vecs[rid]

    def _sig(self, rid: str, text: str) -> np.ndarray:
        from memstack.core.consolidate.signals import minhash

        if rid not in self.sigs:
            self.sigs[rid] = minhash([text])[0]
        return self.sigs[rid]

    def _dedup_candidates(self, snap, r, cands, uf, verdicts) -> None:
        """Tiered: a candidate is judged only when a cheap signal puts it in reach (same
        exact key or claim, a shared MinHash band with a close Jaccard estimate, or a cosine
        at the ambiguous band or above)."""
        from memstack.core.consolidate import signals
        from memstack.core.consolidate.dedup import duplicate_verdict

        # Jaccard estimates of every band candidate in one comparison
        band = [cid for cid, (_, why) in cands.items() if "band" in why]
        jacs: dict[str, float] = {}
        if band:
            mine = self.sigs[r["id"]]
            sigs = np.stack([self._sig(cid, (self.record(snap, cid) or {"text": ""})["text"])
                             for cid in band])
            jacs = dict(zip(band, (sigs == mine).mean(axis=1).tolist(), strict=True))
        for cid, (cos, why) in cands.items():
            jac = jacs.get(cid)
            if not ("exact" in why or "slot" in why
                    or (jac is not None and jac >= self.cfg.near_threshold - 0.1)
                    or (not math.isnan(cos) and cos >= self.cfg.ambiguous_low)):
                continue
            other = self.record(snap, cid)
            if other is None or other["ns"] != r["ns"]:
                continue
            meta = other.get("meta") or {}
            if other.get("valid_to") or meta.get("status") in ("quarantined", "archived"):
                continue
            if other.get("level") not in BASE_LEVELS or meta.get("sources"):
                continue
            if math.isnan(cos):
                cos = cands[cid][0] = self._cos(snap, r["id"], cid)
            if jac is None:
                jac = signals.jaccard(self.sigs[r["id"]], self._sig(cid, other["text"]))
            v = duplicate_verdict(other, r, cos=cos, jaccard=jac, claims_a=self.claims_of(other),
                                  claims_b=self.claims_of(r), cfg=self.cfg)
            method = v.kind
            if v.kind is None and v.ambiguous and self.llm is not None:
                ans = self.llm.decide_duplicate(other["text"], r["text"])
                if ans and ans.get("same") and float(ans.get("confidence", 0)) >= 0.5:
                    method = f"llm:{self.llm.model_id}"
            if method:
                uf.union(r["id"], cid)
                verdicts[(r["id"], cid)] = (method, v)

    def _merge(self, snap: Snapshot, uf: _UnionFind, verdicts: dict,
               new_vecs: dict[str, np.ndarray]) -> None:
        by_root: dict[str, list] = {}
        for (a, b), (method, v) in verdicts.items():
            by_root.setdefault(uf.find(a), []).append((a, b, method, v))
        rank = {"exact": 0, "slot": 1, "near": 2, "semantic": 3}
        for group in uf.groups():
            pairs = by_root.get(uf.find(group[0]), [])
            members: list[dict] = []
            target = None
            for rid in sorted(group):
                rec = self.record(snap, rid)
                meta = rec.get("meta") or {}
                if meta.get("sources"):
                    target = target or rec
                    continue
                if meta.get("merged_into"):
                    cur = self.record(snap, meta["merged_into"])
                    if cur is not None and target is None:
                        target = cur
                    continue
                members.append(rec)
            if not members or (target is None and len(members) < 2):
                continue
            sig = {f"{a[:8]}~{b[:8]}": {"method": m, "score": round(v.score, 4)}
                   for a, b, m, v in pairs[:32]}
            method = min((m for _, _, m, _ in pairs), key=lambda m: rank.get(m, 9),
                         default="exact")
            if target is None:
                target = self._new_merged(snap, members, new_vecs)
            else:
                target = self.edit(snap, target["id"])
                target["meta"]["sources"] = target["meta"].get("sources", 0) + len(members)
                claims = self._union_claims([target, *members])
                target["meta"]["claims"] = [[c.subject, c.slot, c.value, c.negated]
                                            for c in claims]
                self.claims[target["id"]] = claims
                for k in self._slot_keys(target):
                    self.file(_key(b"s", k), target["id"])
            for rec in members:
                _link(target, "derived_from", rec["id"])
                mrec = self.edit(snap, rec["id"])
                mrec.setdefault("meta", {})["status"] = "merged"
                mrec["meta"]["merged_into"] = target["id"]
            score = max((v.score for _, _, _, v in pairs), default=1.0)
            self._decide("merge", target["id"], [r["id"] for r in members], method=method,
                         score=score, reason=f"{len(members)} duplicate(s) ({method})",
                         signals=sig)

    def _new_merged(self, snap: Snapshot, members: list[dict],
                    new_vecs: dict[str, np.ndarray]) -> dict:
        """A new current memory standing for a group of duplicates: the most complete text,
        the earliest times, derived_from every source."""
        rep = max(members, key=lambda r: (len(r["text"]), -_time(r, "valid_from")
                                         if not math.isnan(_time(r, "valid_from")) else 0))
        first = min(members, key=lambda r: (r.get("valid_from") or "", r["id"]))
        src = dict(rep.get("source") or {})
        src["uri"] = "memstack:merge"
        src["offset"] = first["id"]
        speakers = sorted({(r.get("source") or {}).get("speaker") or "" for r in members} - {""})
        claims = self._union_claims(members)
        rec = memory_record(ns=rep["ns"], text=rep["text"], tokens=int(rep.get("tokens") or 0),
                            t_event=first.get("t_event"), t_ingest=self.log.t, source=src,
                            level=rep.get("level", "turn"), valid_from=first.get("valid_from"),
                            meta={"sources": len(members), "speakers": speakers,
                                  "claims": [[c.subject, c.slot, c.value, c.negated]
                                             for c in claims]})
        vec = new_vecs.get(rep["id"])
        if vec is None:
            vec = snap.vector(snap.docno(rep["id"]), self.dim)
        self.created[rec["id"]] = (rec, np.asarray(vec, dtype=np.float32))
        self.claims[rec["id"]] = claims
        self.report.created += 1
        for k in self._slot_keys(rec):
            self.file(_key(b"s", k), rec["id"])
        return rec

    # -- supersession and conflicts --------------------------------------------------------
    def _supersede(self, snap: Snapshot, r: dict) -> None:
        from memstack.core.consolidate.supersede import relate

        me = self.current_of(snap, r["id"])
        if me is None or me.get("valid_to") or (me.get("meta") or {}).get("status"):
            return
        cands = self._cands.get(r["id"], {})
        seen: set[str] = {me["id"], r["id"]}
        for cid, (cos, why) in cands.items():
            if "slot" not in why and (math.isnan(cos) or cos < CONTRADICT_COS):
                continue
            other = self.current_of(snap, cid)
            if other is None or other["id"] in seen:
                continue
            seen.add(other["id"])
            ometa = other.get("meta") or {}
            if other.get("valid_to") or ometa.get("status") or other["ns"] != me["ns"]:
                continue
            if other.get("level") not in BASE_LEVELS:
                continue
            if math.isnan(cos):
                cos = self._cos(snap, me["id"], other["id"])
            older, newer = (other, me) if (other.get("valid_from") or "", other["id"]) <= \
                (me.get("valid_from") or "", me["id"]) else (me, other)
            rel = relate(older, newer, cos=cos, claims_old=self.claims_of(older),
                         claims_new=self.claims_of(newer))
            kind, method = rel.kind, rel.signals.get("method", "slot" if rel.kind ==
                                                      "supersedes" else "signals")
            if kind is None and rel.ambiguous and self.llm is not None:
                ans = self.llm.decide_conflict(older["text"], newer["text"])
                if ans and ans.get("relation") in ("supersedes", "contradicts"):
                    kind, method = ans["relation"], f"llm:{self.llm.model_id}"
            if kind == "supersedes":
                self._close(snap, older, newer, method, rel)
                if older["id"] == me["id"]:
                    return
            elif kind == "contradicts":
                nrec = self.edit(snap, newer["id"])
                if _link(nrec, "contradicts", older["id"]):
                    self._decide("contradict", newer["id"], [older["id"]], method=method,
                                 score=rel.score, reason=rel.reason, signals=rel.signals)

    def _close(self, snap: Snapshot, older: dict, newer: dict, method: str, rel) -> None:
        """Close the older statement's validity where the newer one begins."""
        until = newer.get("valid_from") or newer.get("t_ingest")
        ids = [older["id"]] + [ln["id"] for ln in older.get("links") or ()
                               if ln.get("type") == "derived_from"
                               and (older.get("meta") or {}).get("sources")]
        for rid in ids:
            rec = self.edit(snap, rid)
            if rec.get("valid_to"):
                continue
            rec["valid_to"] = until
            rec["t_expired"] = self.log.t
            rec.setdefault("meta", {})["superseded_by"] = newer["id"]
        _link(self.edit(snap, newer["id"]), "supersedes", older["id"])
        self._decide("supersede", newer["id"], [older["id"]], method=method, score=rel.score,
                     reason=rel.reason, signals=rel.signals)

    # -- links (A-MEM) ---------------------------------------------------------------------
    def _links(self, snap: Snapshot, r: dict, nb_ids: list[str], nb_cos: np.ndarray) -> None:
        from memstack.core.consolidate.signals import keywords

        me = self.current_of(snap, r["id"])
        if me is None or (me.get("meta") or {}).get("status") == "quarantined":
            return
        rec = self.edit(snap, r["id"])
        rec.setdefault("meta", {})["keywords"] = keywords(r["text"])
        if (rec["meta"].get("status") == "merged"):
            return
        linked, scores = [], []
        for cid, c in zip(nb_ids, nb_cos, strict=True):
            if not cid or c < self.o.related_min or len(linked) >= self.o.related_k:
                continue
            other = self.current_of(snap, cid)
            if other is None or other["id"] == me["id"] or other["id"] in linked:
                continue
            if other.get("valid_to") or _has_link(rec, "supersedes", other["id"]):
                continue
            if _link(rec, "related", other["id"]):
                _link(self.edit(snap, other["id"]), "related", rec["id"])
                linked.append(other["id"])
                scores.append(float(c))
                for x in (rec["id"], other["id"]):
                    deg = self.col_updates.setdefault("degree_add", {})
                    deg[x] = deg.get(x, 0) + 1
        if linked:
            self._decide("link", rec["id"], linked, method="cosine", score=max(scores),
                         reason=f"{len(linked)} nearest neighbour(s) at cosine >= "
                                f"{self.o.related_min}",
                         signals={"cosines": scores, "keywords": rec["meta"]["keywords"]})

    # -- summaries and topic clusters (MemGAS) --------------------------------------------
    def _granularities(self, snap: Snapshot, start: int) -> None:
        from memstack.core.consolidate import clusters

        n = snap.n
        if n == 0:
            return
        level = snap.column("level")
        status = snap.column("status")
        # what was said, current or not (a session summary covers the whole session and a
        # topic cluster everything said on the topic), but nothing quarantined or archived;
        # this run's uncommitted marks count too, so a dry run sees what a real run sees
        base = np.isin(level, [LEVEL_CODE[lv] for lv in BASE_LEVELS]) & \
            np.isin(status, [STATUS_ACTIVE, STATUS_MERGED])
        for rid, rec in self.over.items():
            d = snap.docno(rid)
            if d is not None and (rec.get("meta") or {}).get("status") in ("quarantined",
                                                                            "archived"):
                base[d] = False
        ns_col = snap.column("ns")
        if self.o.ns:
            codes = snap.store.meta.get("ns_codes", {})
            base &= np.isin(ns_col, [codes[x] for x in self.o.ns if x in codes])
        if "summaries" in self.o.steps:
            group = snap.column("group")
            touched = np.unique(group[start:][base[start:]]) if not self.o.full else \
                np.unique(group[base])
            rows = np.flatnonzero(base & np.isin(group, touched))
            if len(rows):
                recs = [self._rec_at(snap, int(d)) for d in rows]
                keep = [i for i, r in enumerate(recs) if not (r.get("meta") or {}).get("sources")]
                recs = [recs[i] for i in keep]
                vecs = snap.vectors_at(rows[keep], self.dim)
                for g in clusters.session_summaries(recs, vecs):
                    self._group_memory(snap, g, [recs[i] for i in g.members], vecs[g.members],
                                       "summarize")
        if "clusters" in self.o.steps:
            total = int(base.sum())
            last = int(self.state.get("clustered_n", 0))
            if total >= MIN_CLUSTER_STORE and (self.o.full or total >= RECLUSTER_GROWTH * last
                                               or not last):
                rows = np.flatnonzero(base)
                recs = [self._rec_at(snap, int(d)) for d in rows]
                keep = [i for i, r in enumerate(recs) if not (r.get("meta") or {}).get("sources")]
                rows, recs = rows[keep], [recs[i] for i in keep]
                vecs = snap.vectors_at(rows, self.dim)
                made = set()
                for g in clusters.topic_clusters(recs, vecs):
                    rec = self._group_memory(snap, g, [recs[i] for i in g.members],
                                             vecs[g.members], "cluster")
                    made.add(rec["id"])
                for old in self.state.get("clusters", []):
                    if old not in made:
                        orec = self.record(snap, old)
                        if orec is not None and not orec.get("valid_to"):
                            orec = self.edit(snap, old)
                            orec["valid_to"] = self.log.t
                            orec["t_expired"] = self.log.t
                self.state["clusters"] = sorted(made)
                self.state["clustered_n"] = total

    def _rec_at(self, snap: Snapshot, d: int) -> dict:
        """A record by docno, read once per snapshot (summaries and clusters share reads)."""
        rid = self.id_of(snap, d)
        rec = self._read.get(rid)
        if rec is None:
            rec = self._read[rid] = snap.record(d)
        return rec

    def _group_memory(self, snap: Snapshot, g, members: list[dict], vecs: np.ndarray,
                      action: str) -> dict:
        """A summary or cluster memory for a group (content addressed by its members, so an
        unchanged group is the same memory); a changed session summary supersedes the old."""
        src = {"uri": f"memstack:{g.level}", "offset": g.key}
        sess = {(m.get("source") or {}).get("session") for m in members}
        if g.level == "summary" and len(sess) == 1:
            src["session"] = next(iter(sess))
        first = min((m.get("valid_from") or "" for m in members), default="") or None
        text, method = g.text, "mmr" if action == "summarize" else "kmeans"
        if g.level == "summary" and self.llm is not None and self.llm.budget_left():
            abstract = self.llm.summarize([m["text"] for m in members])
            if abstract:
                text, method = abstract, f"llm:{self.llm.model_id}"
        rec = memory_record(ns=g.ns, text=text, tokens=0, t_event=g.t_event,
                            t_ingest=self.log.t, source=src, level=g.level,
                            valid_from=first,
                            links=[{"type": "derived_from", "id": m["id"]} for m in members],
                            meta={"keywords": list(g.keywords), "size": len(members)})
        if self.record(snap, rec["id"]) is not None:
            return rec
        centroid = vecs.mean(axis=0)
        norm = float(np.linalg.norm(centroid))
        self.created[rec["id"]] = (rec, (centroid / norm if norm else centroid)
                                   .astype(np.float32))
        self.report.created += 1
        skey = _key(b"S", f"{g.ns}\x1f{src.get('session', '')}") if g.level == "summary" \
            else None
        olds: list[str] = []
        if skey is not None:
            olds = self.filed(snap, [skey]).get(skey, [])
            self.file(skey, rec["id"])
        for old in olds:
            orec = self.record(snap, old)
            if orec is not None and not orec.get("valid_to") and old != rec["id"]:
                orec = self.edit(snap, old)
                orec["valid_to"] = rec["valid_from"]
                orec["t_expired"] = self.log.t
                orec.setdefault("meta", {})["superseded_by"] = rec["id"]
                _link(rec, "supersedes", old)
        self._decide(action, rec["id"], [m["id"] for m in members], method=method, score=1.0,
                     reason=f"{g.level} of {len(members)} memories",
                     signals={"keywords": list(g.keywords)})
        return rec

    # -- importance, decay, tiers, forgetting --------------------------------------------
    def _decay(self, snap: Snapshot) -> None:
        from memstack.core.consolidate import decay

        n = snap.n
        if n == 0:
            return
        access = decay.access_counts(self._access_log(snap), n)
        novelty = snap.column("novelty").astype(np.float32)
        degree = snap.column("degree").astype(np.float32)
        for rid, val in self.col_updates.get("novelty", {}).items():
            d = snap.docno(rid)
            if d is not None:
                novelty[d] = val
        for rid, add in self.col_updates.get("degree_add", {}).items():
            d = snap.docno(rid)
            if d is not None:
                degree[d] += add
        tier_col = snap.column("tier")
        pinned = tier_col == TIER_CODE["pinned"]
        imp = decay.importance(age_s=np.zeros(n), access_count=access, novelty=novelty,
                               links=degree, pinned=pinned)
        tier = decay.assign_tier(imp, access, pinned)
        self.col_updates["importance_all"] = imp
        self.col_updates["tier_all"] = tier
        if self.o.forget_below is None:
            return
        te = snap.column("t_event")
        vf = snap.column("valid_from")
        when = np.where(np.isnan(te), vf, te)
        age = np.clip(np.nan_to_num(self.now - when, nan=0.0), 0, None)
        strength = decay.decay_term(imp, tier, age)
        status = snap.column("status")
        for d in np.flatnonzero(decay.forget_mask(strength, self.o.forget_below, pinned,
                                                  status)):
            rid = snap.doc_id(int(d))
            rec = self.edit(snap, rid)
            meta = rec.setdefault("meta", {})
            if meta.get("status"):
                continue
            meta["status"] = "archived"
            meta["archived"] = {"t": self.log.t, "strength": round(float(strength[d]), 6)}
            self._decide("archive", rid, [], method="decay", score=float(strength[d]),
                         reason=f"strength {strength[d]:.4f} below {self.o.forget_below:g}",
                         signals={"importance": float(imp[d]), "tier": int(tier[d]),
                                  "age_days": round(float(age[d]) / 86400, 2),
                                  "access": int(access[d])})

    def _access_log(self, snap: Snapshot) -> np.ndarray:
        out = []
        for key in snap.txn.cursor(db=snap.dbs["log"]).iternext(keys=True, values=False):
            out.append(int.from_bytes(bytes(key)[8:12], "big"))
        return np.asarray(out, dtype=np.int64)

    # -- decisions and commits ---------------------------------------------------------------
    def _decide(self, action: str, subject: str, objects: list[str], **kw) -> None:
        rec = self.log.add(action, subject, objects, **kw)
        if rec is not None:
            self.report.counts[action] += 1
            self.report.decisions.append(rec)

    def _commit(self, final: bool = False) -> None:
        """One transaction: new memories, marks, decisions, index keys, columns, state."""
        if self.o.dry_run:
            return
        st = self.store
        created = list(self.created.values())
        prep = None
        if created:
            from memstack.core.ingest import prepare

            recs = [r for r, _ in created]
            self._count_tokens(recs)
            prep = prepare(recs, self.embedder, None,
                           vectors=np.stack([v for _, v in created]).astype(np.float32))
        decisions = self.log.items[self._done :]
        updates = [r for rid, r in self.over.items() if rid not in self.created]
        pending = self.pending
        cols = self.col_updates

        known = self._docno
        before = self._before
        own = self._own

        def docnos_of(txn, ids) -> tuple[np.ndarray, list]:
            at, keep = [], []
            for rid in ids:
                d = known.get(rid)
                if d is None:
                    raw = txn.get(rid.encode(), db=st.dbs["docnos"])
                    if raw is None:
                        continue
                    d = known[rid] = int.from_bytes(bytes(raw), "big")
                at.append(d)
                keep.append(rid)
            return np.asarray(at, dtype=np.int64), keep

        def fn(txn):
            if prep is not None:
                lo = int(st.stats.get("n", 0))
                st.add_in(txn, prep)
                own.append((lo, int(st.stats.get("n", 0))))
            st.update_records(txn, updates, before=before)
            st.put_decisions(txn, decisions)
            index: dict[bytes, list[int]] = {}
            get, db = txn.get, st.dbs["docnos"]
            for k, ids in pending.items():
                row = []
                for rid in ids:
                    d = known.get(rid)
                    if d is None:
                        raw = get(rid.encode(), db=db)
                        if raw is None:
                            continue
                        d = known[rid] = int.from_bytes(bytes(raw), "big")
                    row.append(d)
                if row:
                    index[k] = row
            st.cindex_add(txn, index)
            nov = cols.get("novelty") or {}
            at, keep = docnos_of(txn, list(nov))
            if len(at):
                st.set_cells(txn, "novelty", at, np.asarray([nov[r] for r in keep]))
            deg = cols.get("degree_add") or {}
            at, keep = docnos_of(txn, list(deg))
            if len(at):
                with st.snapshot_in(txn) as snap:
                    have = snap.column_at("degree", at).astype(np.int64)
                st.set_cells(txn, "degree", at, np.minimum(
                    have + np.asarray([deg[r] for r in keep]), 65535))
            n = int(st.stats.get("n", 0))
            for name in ("importance", "tier"):
                full = cols.get(f"{name}_all")
                if full is not None:
                    vals = np.full(n, LATE_COLUMNS[name], dtype=COLUMNS[name])
                    vals[: min(n, len(full))] = full[:n]
                    st.write_column(txn, name, vals)
            st.put_meta(txn, STATE_KEY, dict(self.state, aliases=self.aliases))

        st.write_batch(fn)
        self.report.updated += len(updates)
        self._done = len(self.log.items)
        self.over.clear()
        self._before.clear()
        self.created.clear()
        self._read.clear()
        self.pending = {}
        self.col_updates = {}

    def _count_tokens(self, recs: list[dict]) -> None:
        todo = [r for r in recs if not r.get("tokens")]
        if not todo:
            return
        from memstack.core.text import load_tokenizer

        enc = (self.store.meta.get("tokenizer") or {}).get("requested") or "cl100k_base"
        for r, n in zip(todo, load_tokenizer(enc).count([r["text"] for r in todo]),
                        strict=True):
            r["tokens"] = int(n)


def consolidate(store: LmdbStore, embedder, opts: ConsolidateOptions | None = None
                ) -> ConsolidateReport:
    """Consolidate a store (see the module docstring). With opts.dry_run nothing is written
    and the report's decisions are exactly those a real run would commit."""
    return Consolidation(store, embedder, opts or ConsolidateOptions()).run()


@contextmanager
def run_lock(path: str, timeout: float, shared: bool = False) -> Iterator[None]:
    """One consolidate at a time per store (a dry run only waits out a real one): the
    sidecar consolidate.lock, flock'd, waiting up to `timeout` before exit 75."""
    fd = wait_flock(os.path.join(path, "consolidate.lock"), timeout,
                    f"{path}: another consolidate is running", shared=shared)
    try:
        yield
    finally:
        os.close(fd)


class LmdbCache(MutableMapping):
    """The LLM response cache in the store's llm_cache database (one small write
    transaction per new answer; answers are few and costly)."""

    def __init__(self, store: LmdbStore):
        self.store = store
        store.ensure_late_dbs()
        self.db = store.late_db("llm_cache")

    def __getitem__(self, key: bytes) -> bytes:
        with self.store._read_txn() as txn:
            raw = txn.get(key, db=self.db)
        if raw is None:
            raise KeyError(key)
        return bytes(raw)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.store.write_batch(lambda txn: txn.put(key, value, db=self.db))

    def __delitem__(self, key: bytes) -> None:
        raise TypeError("the LLM cache only grows")

    def __iter__(self):
        with self.store._read_txn() as txn:
            keys = [bytes(k) for k in txn.cursor(db=self.db).iternext(values=False)]
        return iter(keys)

    def __len__(self) -> int:
        return sum(1 for _ in self)

