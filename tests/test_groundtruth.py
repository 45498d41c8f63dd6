"""The consolidate ground truth: a deterministic generator whose truth is consistent, streams
that `memstack ingest` reads, and evaluate() on hand-made consolidated states."""

from __future__ import annotations

import copy
import itertools

import pytest
from helpers import export_records, ok, run

from memstack.core.consolidate import groundtruth as gt
from memstack.core.consolidate.evaluate import evaluate, mentions
from memstack.formats.records import from_iso, memory_record


@pytest.fixture(scope="module")
def ds() -> gt.Dataset:
    return gt.generate(users=6, sessions=6, seed=1, poison_rate=0.05)


def by_id(ds: gt.Dataset) -> dict[str, dict]:
    return {r["id"]: r for r in ds.records}


# -- the generator ----------------------------------------------------------------------
def test_deterministic_for_a_seed():
    a, b = gt.generate(users=3, seed=7), gt.generate(users=3, seed=7)
    assert a.records == b.records
    assert a.truth == b.truth
    c = gt.generate(users=3, seed=8)
    assert [r["text"] for r in c.records] != [r["text"] for r in a.records]


def test_records_are_memstack_turns_in_time_order(ds):
    ids = [r["id"] for r in ds.records]
    assert len(set(ids)) == len(ids)
    assert set(ids) == set(ds.truth.facts)
    times = [r["t_event"] for r in ds.records]
    assert times == sorted(times)
    for r in ds.records:
        assert r["kind"] == "memory" and r["level"] == "turn"
        assert r["ns"].startswith("user:")
        src = r["source"]
        assert src["uri"] == "groundtruth" and isinstance(src["offset"], int)
        assert src["session"].startswith(r["ns"].split(":", 1)[1] + "-s")
        assert src["speaker"]
    # sessions of one user lie days or weeks apart
    starts: dict[str, dict[str, float]] = {}
    for r in ds.records:
        starts.setdefault(r["ns"], {}).setdefault(r["source"]["session"],
                                                   from_iso(r["t_event"]))
    for sessions in starts.values():
        t = sorted(sessions.values())
        assert all(b - a > 86400 for a, b in itertools.pairwise(t))


def test_supersedes_pairs_are_changes_of_one_key(ds):
    t, recs = ds.truth, by_id(ds)
    assert t.supersedes
    for old, new in t.supersedes:
        fo, fn = t.facts[old], t.facts[new]
        assert t.ns[old] == t.ns[new]
        assert fo[:2] == fn[:2] and fo[2] != fn[2]
        assert from_iso(recs[new]["valid_from"]) > from_iso(recs[old]["valid_from"])
        key = (t.ns[old], *fo[:2])
        values = [v for _, v in t.history[key]]
        assert values.index(fn[2]) == values.index(fo[2]) + 1  # a chain links neighbours only
    # every statement of a replaced value is superseded by the first statement of the next
    olds = {o for o, _ in t.supersedes}
    for rid, fact in t.facts.items():
        if fact is None:
            continue
        values = [v for _, v in t.history[(t.ns[rid], *fact[:2])]]
        assert (rid in olds) == (fact[2] != values[-1])


def test_duplicate_pairs_state_the_same_fact(ds):
    t = ds.truth
    assert t.duplicate_pairs
    kinds = set()
    for pair in t.duplicate_pairs:
        a, b = sorted(pair)
        assert t.facts[a] is not None and t.facts[a] == t.facts[b] and t.ns[a] == t.ns[b]
        kinds.add(t.pair_kind[pair])
    assert kinds == {"exact", "near", "paraphrase"}
    # ... and every two statements of one fact are a pair
    groups: dict = {}
    for rid, fact in t.facts.items():
        if fact is not None:
            groups.setdefault((t.ns[rid], fact), []).append(rid)
    want = {frozenset(p) for g in groups.values() for p in itertools.combinations(g, 2)}
    assert want == t.duplicate_pairs


def test_unrelated_facts_are_other_subjects_or_unchanged_slots(ds):
    t = ds.truth
    changed = {k for k, h in t.history.items() if len(h) > 1}
    for rid in t.unrelated:
        ns, (subject, slot, _) = t.ns[rid], t.facts[rid]
        assert (ns, subject, slot) not in changed
    assert not t.unrelated & {o for o, _ in t.supersedes}
    others = [rid for rid, f in t.facts.items() if f and f[0] != gt.SELF]
    assert others and set(others) <= t.unrelated
    # the hard case is there: another person's fact in a slot whose own value changes
    assert any((t.ns[rid], gt.SELF, t.facts[rid][1]) in changed for rid in others)


def test_history_current_and_queries_agree(ds):
    t = ds.truth
    for key, hist in t.history.items():
        assert hist == sorted(hist) and t.current[key] == hist[-1][1]
        assert len({v for _, v in hist}) == len(hist)  # a value is never re-adopted
    assert {(q["ns"], q["subject"], q["slot"]) for q in t.queries} == set(t.history)
    as_of = [q for q in t.queries if q["as_of"]]
    assert as_of
    for q in t.queries:
        hist = t.history[(q["ns"], q["subject"], q["slot"])]
        if q["as_of"] is None:
            assert q["expected"] == hist[-1][1]
        else:
            then = [v for since, v in hist if since <= q["as_of"]]
            assert then[-1] == q["expected"] and then[-1] != hist[-1][1]
        assert q["question"].endswith("?")


def test_poison_and_chit_chat_state_no_fact(ds):
    t = ds.truth
    assert t.poison and all(t.facts[p] is None for p in t.poison)
    texts = [r["text"] for r in ds.records if r["id"] in t.poison]
    assert any("ignore" in x.casefold() for x in texts)
    assert sum(1 for f in t.facts.values() if f is None) > len(t.poison)


def test_phrasing_is_varied_and_values_unambiguous():
    for slot in gt.SLOTS:
        assert len(gt.STATE[slot]) >= 5 and len(gt.CHANGE[slot]) >= 4
        assert len(gt.ASK[slot]) >= 2 and gt.TERSE[slot]
    for slot in gt.OTHER_SLOTS:
        assert len(gt.OTHER[slot]) >= 5
    for slot, values in gt.VALUES.items():  # no value is found inside another's text
        for a, b in itertools.permutations(values, 2):
            assert not mentions(b, a), (slot, a, b)
        assert len(set(values)) == len(values)


def test_fact_texts_name_their_value(ds):
    for r in ds.records:
        fact = ds.truth.facts[r["id"]]
        if fact is not None:
            assert mentions(r["text"], fact[2]), (r["text"], fact)


def test_scale_is_exact_and_fast():
    import time

    t0 = time.perf_counter()
    big = gt.scale(5000, seed=3)
    assert time.perf_counter() - t0 < 5
    assert len(big.records) == 5000 == len(big.truth.facts)
    times = [r["t_event"] for r in big.records]
    assert times == sorted(times)
    assert all(o in big.truth.facts and n in big.truth.facts for o, n in big.truth.supersedes)


# -- streams through the real CLI -------------------------------------------------------
@pytest.mark.parametrize("ext", ["jsonl", "msgpack"])
def test_stream_round_trips_through_memstack_ingest(tmp_path, ext):
    ds = gt.generate(users=3, sessions=4, seed=2)
    path = tmp_path / f"gt.{ext}"
    assert gt.to_stream(ds, str(path)) == len(ds.records)
    store = tmp_path / "store"
    ok(run("ingest", path, "--store", store, "-q"))
    got = {r["id"]: r for r in export_records(store)}
    assert set(got) == set(ds.truth.facts)
    for r in ds.records:
        assert got[r["id"]]["text"] == r["text"]
        assert got[r["id"]]["source"] == r["source"]
        assert got[r["id"]]["t_event"] == r["t_event"]


# -- evaluate() on hand-made states ---------------------------------------------------------
def consolidated(ds: gt.Dataset) -> list[dict]:
    """The state a perfect consolidate leaves: one merged memory per repeated fact, each
    replaced value closed and linked from the next, injections quarantined."""
    t = ds.truth
    recs = {r["id"]: copy.deepcopy(r) for r in ds.records}
    groups: dict = {}
    for r in ds.records:
        if t.facts[r["id"]] is not None:
            groups.setdefault((r["ns"], t.facts[r["id"]]), []).append(r["id"])
    stands: dict = {}  # (ns, fact) -> the memory standing for it
    new = []
    for cls, ids in groups.items():
        if len(ids) == 1:
            stands[cls] = recs[ids[0]]
            continue
        src = [recs[i] for i in ids]
        m = memory_record(ns=cls[0], text=max((s["text"] for s in src), key=len), tokens=0,
                          t_event=src[0]["t_event"], t_ingest=src[-1]["t_ingest"],
                          source={"uri": "consolidate", "offset": f"merge:{ids[0]}"},
                          links=[{"type": "derived_from", "id": i} for i in ids])
        for s in src:
            s["meta"] = {"status": "merged", "merged_into": m["id"]}
        stands[cls] = m
        new.append(m)
    for key, hist in t.history.items():
        ns, subject, slot = key
        for (_, old), (since, value) in itertools.pairwise(hist):
            a, b = stands[(ns, (subject, slot, old))], stands[(ns, (subject, slot, value))]
            a["valid_to"] = since
            b["links"].append({"type": "supersedes", "id": a["id"]})
    for p in t.poison:
        recs[p]["meta"] = {"status": "quarantined", "quarantine": {"reasons": ["injection"]}}
    return [*recs.values(), *new]


def store_of(tmp_path, records: list[dict], name: str):
    """A store holding exactly these records, ingested as a stream (library path)."""
    from memstack.core.embed import HashingEmbedder
    from memstack.core.ingest import IngestOptions, ingest
    from memstack.core.store import LmdbStore

    path = tmp_path / f"{name}.msgpack"
    gt.to_stream(records, str(path))
    emb = HashingEmbedder()
    st = LmdbStore(str(tmp_path / name), write=True, create=True)
    with open(path, "rb") as fp:
        ingest([(str(path), fp)], embedder=emb, tokenizer=None, store=st,
               opts=IngestOptions(workers=1))
    return st, emb


@pytest.fixture(scope="module")
def small() -> gt.Dataset:
    return gt.generate(users=4, sessions=5, seed=4, poison_rate=0.06)


def test_evaluate_untouched_store(tmp_path, small):
    st, emb = store_of(tmp_path, small.records, "raw")
    with st:
        m = evaluate(st, small.truth, emb)
    assert m["sources_present"] == len(small.truth.facts) and m["sources_missing"] == 0
    assert m["merge_recall"] == 0 and m["supersede_recall"] == 0 and m["poison_recall"] == 0
    assert m["unrelated_invalidated"] == 0 == m["current_invalidated"]
    assert m["stale_open"] == len({o for o, _ in small.truth.supersedes})
    assert m["current_queries"] + m["as_of_queries"] == len(small.truth.queries)
    assert all(isinstance(v, int | float) for v in m.values())


def test_evaluate_perfect_state_scores_one(tmp_path, small):
    state = consolidated(small)
    st, emb = store_of(tmp_path, state, "perfect")
    with st:
        m = evaluate(st, small.truth, emb)
        raw, _ = store_of(tmp_path, small.records, "raw2")
        with raw:
            before = evaluate(raw, small.truth, emb)
    assert m["records"] == len(state) and m["sources_present"] == len(small.truth.facts)
    for name in ("merge", "supersede", "poison"):
        assert m[f"{name}_precision"] == 1.0 and m[f"{name}_recall"] == 1.0, name
        assert m[f"{name}_f1"] == 1.0
    assert m["unrelated_invalidated"] == 0 and m["current_invalidated"] == 0
    assert m["stale_open"] == 0
    # with the stale statements closed, no stale value outranks the current one any more
    assert m["current_accuracy_at_k"] >= before["current_accuracy_at_k"]
    assert m["current_accuracy_at_k"] > 0.5


def test_evaluate_counts_an_invalidated_unrelated_fact(tmp_path, small):
    t = small.truth
    state = {r["id"]: r for r in consolidated(small)}
    victim = sorted(u for u in t.unrelated if t.facts[u][0] != gt.SELF
                    and "merged_into" not in state[u]["meta"])[0]
    # a changed key of the same user supersedes the other person's fact
    olds = {o for o, _ in t.supersedes}
    newer = sorted(rid for rid in t.facts if t.facts[rid] and t.ns[rid] == t.ns[victim]
                   and rid not in olds and rid != victim
                   and "merged_into" not in state[rid]["meta"])[0]
    state[victim]["valid_to"] = state[newer]["valid_from"]
    state[newer]["links"].append({"type": "supersedes", "id": victim})
    # and a wrong merge: another unrelated fact merged into a memory of a different fact
    other = sorted(u for u in t.unrelated if u != victim and t.ns[u] != t.ns[victim]
                   and "merged_into" not in state[u]["meta"])[0]
    host = next(r for r in state.values() if r["source"].get("uri") == "consolidate"
                and r["ns"] == t.ns[other])
    state[other]["meta"] = {"status": "merged", "merged_into": host["id"]}
    host["links"].append({"type": "derived_from", "id": other})
    st, emb = store_of(tmp_path, list(state.values()), "bad")
    with st:
        m = evaluate(st, t, emb, queries=False)
    assert m["unrelated_invalidated"] == 2
    assert m["supersede_precision"] < 1.0 and m["supersede_recall"] == 1.0
    assert m["merge_precision"] < 1.0 and m["merge_recall"] == 1.0
    assert "current_accuracy" not in m


def test_merge_through_chained_merges_and_neutral_chit_chat(tmp_path):
    ds = gt.generate(users=2, sessions=4, seed=5, poison_rate=0.0)
    t = ds.truth
    state = {r["id"]: copy.deepcopy(r) for r in ds.records}
    # a duplicate group merged in two steps: (a, b) -> m1, then (m1, c) -> m2
    group = next(g for g in _groups(t).values() if len(g) >= 3)
    a, b, c = group[:3]

    def merged(ids, tag):
        m = memory_record(ns=t.ns[a], text=state[a]["text"], tokens=0,
                          t_event=state[a]["t_event"], t_ingest=state[a]["t_ingest"],
                          source={"uri": "consolidate", "offset": tag},
                          links=[{"type": "derived_from", "id": i} for i in ids])
        for i in ids:
            state[i]["meta"] = {"status": "merged", "merged_into": m["id"]}
        state[m["id"]] = m
        return m

    m1 = merged([a, b], "m1")
    merged([m1["id"], c], "m2")
    # two identical chit-chat turns merged: neither right nor wrong
    chat: dict = {}
    for r in ds.records:
        if t.facts[r["id"]] is None:
            chat.setdefault((r["ns"], r["text"]), []).append(r["id"])
    x, y = next(ids for ids in chat.values() if len(ids) >= 2)[:2]
    merged([x, y], "chat")
    st, emb = store_of(tmp_path, list(state.values()), "chain")
    with st:
        m = evaluate(st, t, emb, queries=False)
    assert m["merge_pairs_true"] == 3 and m["merge_pairs_false"] == 0
    assert m["merge_pairs_neutral"] == 1 and m["merge_precision"] == 1.0
    assert m["unrelated_invalidated"] == 0


def _groups(t: gt.Truth) -> dict:
    out: dict = {}
    for rid, fact in t.facts.items():
        if fact is not None:
            out.setdefault((t.ns[rid], fact), []).append(rid)
    return {k: sorted(v) for k, v in out.items()}


def test_mentions_is_case_and_word_aware():
    assert mentions("I live in BERLIN now", "Berlin")
    assert not mentions("Samantha is here", "Sam")
    assert mentions("I'm 34.", "34") and not mentions("room 134", "34")
