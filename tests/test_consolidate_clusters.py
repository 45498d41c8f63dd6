"""Session summaries and topic clusters (core/consolidate/clusters.py): k-means, MMR, groups."""

from __future__ import annotations

import numpy as np
import pytest

from memstack.core.consolidate.clusters import (
    MAX_TEXT_CHARS,
    choose_k,
    group_key,
    kmeans,
    mmr_sentences,
    session_summaries,
    topic_clusters,
)


def planted(n_topics: int, per: int, dim: int = 64, noise: float = 0.3, seed: int = 0):
    """Unit vectors around n_topics random directions, shuffled; returns (vecs, topic)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_topics, dim))
    topic = rng.permutation(np.repeat(np.arange(n_topics), per))
    vecs = centres[topic] / np.sqrt(dim) * 4 + rng.normal(size=(len(topic), dim)) * noise
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32), topic


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings split the points identically (label names aside)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_planted_clusters():
    vecs, topic = planted(8, 60)
    centroids, labels = kmeans(vecs, 8)
    assert centroids.shape == (8, vecs.shape[1]) and labels.shape == (480,)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    assert same_partition(labels, topic)


def test_kmeans_is_deterministic_and_bounded():
    vecs, _ = planted(5, 30, seed=3)
    a = kmeans(vecs, 5, seed=7)
    b = kmeans(vecs, 5, seed=7)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    c, lab = kmeans(vecs[:3], 10)  # k is capped at n
    assert len(c) == 3 and sorted(lab.tolist()) == [0, 1, 2]
    c, lab = kmeans(np.zeros((0, 8), np.float32), 4)
    assert c.shape == (0, 8) and lab.shape == (0,)
    same = np.tile(vecs[:1], (20, 1))  # fewer distinct points than k: no crash, no NaN
    c, lab = kmeans(same, 4)
    assert np.isfinite(c).all() and len(lab) == 20


def test_kmeans_fills_every_cluster():
    vecs, _ = planted(3, 50, seed=1)
    _, labels = kmeans(vecs, 6)
    assert len(np.unique(labels)) == 6  # emptied clusters are re-seeded


@pytest.mark.parametrize(("n", "k"), [(0, 1), (3, 1), (4, 2), (419, 14), (20_000, 100),
                                      (100_000, 224), (10_000_000, 256)])
def test_choose_k(n, k):
    assert choose_k(n) == k


def test_mmr_picks_central_then_diverse():
    rng = np.random.default_rng(0)
    topic = rng.normal(size=16)
    side = rng.normal(size=16)
    vecs = np.stack([
        topic + 0.05 * rng.normal(size=16),  # 0: central
        topic + 0.05 * rng.normal(size=16),  # 1: central, near-duplicate of 0
        topic + 0.05 * rng.normal(size=16),  # 2: central, near-duplicate of 0
        topic + 0.9 * side,  # 3: on topic, another aspect
        -topic,  # 4: off topic
    ]).astype(np.float32)
    texts = [f"t{i}" for i in range(5)]
    one = mmr_sentences(texts, vecs, max_items=1)
    assert one[0] in (0, 1, 2)
    two = mmr_sentences(texts, vecs, max_items=2, lam=0.5)
    assert len(two) == 2 and 3 in two and 4 not in two and two == sorted(two)
    assert mmr_sentences(texts, vecs, max_items=2, lam=1.0) != two  # pure relevance
    assert mmr_sentences([], np.zeros((0, 16)), max_items=3) == []


def test_mmr_skips_exact_repeats():
    vecs = np.array([[1, 0], [1, 0.01], [0.6, 0.8]], dtype=np.float32)
    picks = mmr_sentences(["Same  text", "same text", "other"], vecs, max_items=2, lam=1.0)
    assert len(picks) == 2 and picks[1] == 2  # one of the repeats, then the other text


def _rec(i, text, session, ns="default", uri="chat.jsonl", speaker=None, t=None,
         level="turn"):
    src = {"uri": uri, "offset": i, "session": session}
    if speaker:
        src["speaker"] = speaker
    return {"id": f"id{i:04d}", "ns": ns, "text": text, "source": src, "level": level,
            "t_event": t}


def test_session_summaries_group_by_session():
    vecs, topic = planted(3, 6, seed=2)
    recs = [_rec(i, f"memory number {i} about topic{topic[i]} and the garden",
                 f"s{topic[i]}", speaker="Ann" if i % 2 else None,
                 t=f"2024-01-{i + 1:02d}T10:00:00Z") for i in range(len(topic))]
    recs.append(_rec(99, "a lone memory", "s9"))  # below min_members: no summary
    recs.append(_rec(98, "old summary", "s0", level="summary"))  # never summarised again
    vecs = np.vstack([vecs, vecs[:2]])
    groups = session_summaries(recs, vecs)
    assert [g.level for g in groups] == ["summary"] * 3
    assert [sorted({recs[m]["source"]["session"] for m in g.members}) for g in groups] == \
        [[f"s{topic[0]}"], *[[s] for s in sorted({f"s{t}" for t in topic} - {f"s{topic[0]}"},
                                                 key=lambda s: list(topic).index(int(s[1])))]]
    for g in groups:
        assert len(g.members) == 6 and g.members == sorted(g.members)
        assert g.ns == "default" and len(g.text) <= MAX_TEXT_CHARS
        assert 1 <= len(g.text.splitlines()) <= 3
        assert g.t_event == max(recs[m]["t_event"] for m in g.members)
        assert g.key == group_key([recs[m]["id"] for m in g.members])
        assert "garden" in g.keywords or "memory" in g.keywords
        lines = g.text.splitlines()
        assert any(ln.startswith("Ann: ") for ln in lines) or \
            all(not (recs[m]["source"].get("speaker")) for m in g.members
                if recs[m]["text"] in g.text)
    again = session_summaries(recs, vecs)
    assert [(g.members, g.text, g.key, g.keywords) for g in again] == \
        [(g.members, g.text, g.key, g.keywords) for g in groups]


def test_sessions_are_per_namespace_and_source():
    vecs, _ = planted(1, 16, seed=4)
    recs = [_rec(i, f"text {i}", "s1", ns="a" if i < 8 else "b",
                 uri="x.jsonl" if i % 2 else "y.jsonl") for i in range(16)]
    groups = session_summaries(recs, vecs, min_members=4)
    assert len(groups) == 4
    for g in groups:
        keys = {(recs[m]["ns"], recs[m]["source"]["uri"]) for m in g.members}
        assert len(keys) == 1 and g.ns == next(iter(keys))[0]


def test_summary_text_is_capped():
    vecs, _ = planted(1, 5, seed=5)
    long = "word " * 400
    recs = [_rec(i, f"{i} {long}", "s", speaker="Bob") for i in range(5)]
    (g,) = session_summaries(recs, vecs)
    assert len(g.text) <= MAX_TEXT_CHARS
    assert all(ln.startswith("Bob: ") and ln.endswith("…") for ln in g.text.splitlines())


def test_group_key_ignores_order():
    assert group_key(["b", "a", "c"]) == group_key(["c", "b", "a"])
    assert group_key(["a", "b"]) != group_key(["a", "b", "c"])
    assert len(group_key(["a"])) == 32


def test_topic_clusters_find_planted_topics_per_namespace():
    vecs, topic = planted(4, 25, seed=6)
    words = ["violin", "harbour", "pepper", "meadow"]
    recs = [_rec(i, f"{words[topic[i]]} note {i}", f"s{i % 7}", ns="a" if i % 2 else "b")
            for i in range(len(topic))]
    groups = topic_clusters(recs, vecs, k=4)
    assert {g.ns for g in groups} == {"a", "b"} and {g.level for g in groups} == {"cluster"}
    assert [g.ns for g in groups] == sorted((g.ns for g in groups),
                                            key=["b", "a"].index)  # first appearance
    for g in groups:
        assert len({int(topic[m]) for m in g.members}) == 1  # one planted topic each
        assert len({recs[m]["ns"] for m in g.members}) == 1
        assert words[int(topic[g.members[0]])] in g.keywords
    assert sum(len(g.members) for g in groups) == len(recs)
    again = topic_clusters(recs, vecs, k=4)
    assert [(g.members, g.key, g.text) for g in again] == \
        [(g.members, g.key, g.text) for g in groups]


def test_topic_clusters_drop_small_groups_and_tiny_namespaces():
    vecs, topic = planted(3, 10, seed=8)
    recs = [_rec(i, f"t{i}", "s") for i in range(30)]
    assert all(len(g.members) >= 11 for g in topic_clusters(recs, vecs, k=3,
                                                            min_members=11)) is True
    assert topic_clusters(recs, vecs, k=3, min_members=11) == []
    assert topic_clusters(recs[:3], vecs[:3]) == []  # choose_k(3) = 1: nothing to split
