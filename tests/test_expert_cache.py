"""MoE expert-cache sizing: policies against brute force and each other, SCH/SRP, traces."""

from __future__ import annotations

import itertools
import json
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstack.core.errors import ConfigError, InputError
from memstack.core.model.expert_cache import (
    expert_cache_record,
    knee,
    load_trace,
    segment_cache_hit_rate,
    segment_routing_performance,
    simulate,
    synthetic_trace,
)


# ---- references -------------------------------------------------------------------------------
def naive_hits(seq: list[int], size: int, policy: str) -> int:
    """Demand paging, one request at a time, exactly as the module documents its policies."""
    cache: list[int] = []
    count: dict[int, int] = {}
    last: dict[int, int] = {}
    hits = 0
    for t, x in enumerate(seq):
        count[x] = count.get(x, 0) + 1
        if x in cache:
            hits += 1
        else:
            if len(cache) >= size:
                if policy == "lru":
                    victim = min(cache, key=lambda e: last[e])
                elif policy == "lfu":
                    victim = min(cache, key=lambda e: (count[e], last[e]))
                else:
                    victim = max(cache, key=lambda e: next(
                        (s for s in range(t + 1, len(seq)) if seq[s] == e), len(seq) + e))
                cache.remove(victim)
            cache.append(x)
        last[x] = t
    return hits


def brute_force_hits(seq: tuple[int, ...], size: int) -> int:
    """The most hits any demand-paging cache of `size` can get: try every eviction choice."""

    @cache
    def best(t: int, cache: frozenset[int]) -> int:
        if t == len(seq):
            return 0
        x = seq[t]
        if x in cache:
            return 1 + best(t + 1, cache)
        if len(cache) < size:
            return best(t + 1, cache | {x})
        return max(best(t + 1, (cache - {v}) | {x}) for v in cache)

    return best(0, frozenset())


def per_layer_seq(trace: np.ndarray, layer: int) -> list[int]:
    return trace[:, layer, :].ravel().tolist()


traces = st.integers(2, 6).flatmap(lambda e: st.tuples(
    st.just(e), st.integers(1, min(3, e)), st.integers(1, 25), st.integers(0, 10_000),
    st.floats(0.0, 0.95)))


# ---- policies ---------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(traces)
def test_belady_never_loses_to_lru_or_lfu(args):
    experts, k, tokens, seed, locality = args
    tr = synthetic_trace(tokens, 2, experts, k, locality, seed=seed)
    cv = simulate(tr, experts)
    assert (cv["belady"].hits >= cv["lru"].hits).all()
    assert (cv["belady"].hits >= cv["lfu"].hits).all()
    for name in ("lru", "lfu", "belady"):  # a bigger cache never hits less (stack property)
        assert (np.diff(cv[name].hits, axis=1) >= 0).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=30))
def test_belady_never_loses_on_arbitrary_sequences(seq):
    cv = simulate(np.array(seq, np.int16)[:, None, None], 5)
    assert (cv["belady"].hits >= np.maximum(cv["lru"].hits, cv["lfu"].hits)).all()


@settings(max_examples=25, deadline=None)
@given(traces)
def test_policies_match_a_request_by_request_simulation(args):
    experts, k, tokens, seed, locality = args
    tr = synthetic_trace(tokens, 2, experts, k, locality, seed=seed)
    cv = simulate(tr, experts)
    for layer in range(2):
        seq = per_layer_seq(tr, layer)
        for name in ("lru", "lfu", "belady"):
            want = [naive_hits(seq, c, name) for c in range(1, experts + 1)]
            assert cv[name].hits[layer].tolist() == want, name


def test_belady_equals_brute_force_on_tiny_traces():
    rng = np.random.default_rng(3)
    for _ in range(30):
        experts = int(rng.integers(2, 5))
        seq = tuple(int(v) for v in rng.integers(0, experts, int(rng.integers(1, 12))))
        tr = np.array(seq, np.int16)[:, None, None]
        hits = simulate(tr, experts, ("belady",))["belady"].hits[0]
        assert hits.tolist() == [brute_force_hits(seq, c) for c in range(1, experts + 1)]


def test_single_policies_agree_with_the_joint_pass():
    tr = synthetic_trace(300, 3, 6, 2, 0.5, seed=9)
    joint = simulate(tr, 6)
    for name in ("lru", "lfu", "belady"):
        assert (simulate(tr, 6, (name,))[name].hits == joint[name].hits).all()


def test_a_cache_of_every_expert_misses_only_compulsorily():
    tr = synthetic_trace(500, 4, 8, 2, 0.3, seed=1)
    for cv in simulate(tr, 8).values():
        assert np.allclose(cv.warm_hit_rate[:, -1], 1.0)
        assert np.allclose(cv.hit_rate[:, -1], 1 - cv.compulsory / cv.requests)
        assert (cv.compulsory <= 8).all() and cv.overall_warm[-1] == pytest.approx(1.0)


def test_higher_locality_gives_higher_lru_hit_rate():
    rates = [simulate(synthetic_trace(3000, 2, 16, 2, loc, seed=4), 16, ("lru",))["lru"]
             .overall[1:8] for loc in (0.1, 0.5, 0.9)]
    assert (rates[0] < rates[1]).all() and (rates[1] < rates[2]).all()


def test_cache_smaller_than_top_k_still_hits_across_tokens():
    tr = np.array([[[0, 1]], [[0, 1]], [[0, 1]]], np.int16)  # same two experts every token
    for cv in simulate(tr, 4).values():  # size 1: each request evicts the other, even for MIN
        assert cv.hits[0].tolist() == [0, 4, 4, 4] and cv.compulsory[0] == 2


# ---- segment metrics ----------------------------------------------------------------------------
def test_segment_cache_hit_rate_bounds_and_order():
    tr = synthetic_trace(400, 3, 8, 2, 0.6, seed=2)
    sch = segment_cache_hit_rate(tr, 8, 16)
    assert sch.shape == (3, 8) and np.allclose(sch[:, -1], 1.0)
    assert (np.diff(sch, axis=1) >= -1e-12).all()
    assert np.allclose(segment_cache_hit_rate(tr, 8, 1)[:, 1], 1.0)  # one token: its 2 experts
    low = segment_cache_hit_rate(synthetic_trace(400, 3, 8, 2, 0.1, seed=2), 8, 16)
    assert (sch[:, 2] > low[:, 2]).all()


def test_segment_cache_hit_rate_by_hand():
    tr = np.array([0, 0, 1, 2], np.int16)[:, None, None]  # top-1, one layer
    # windows of 2: (0,0) (0,1) (1,2): best single expert serves 2, 1, 1 of 2 requests
    assert segment_cache_hit_rate(tr, 3, 2)[0].tolist() == pytest.approx([4 / 6, 1, 1])


def test_segment_routing_performance():
    constant = np.tile(np.array([[1, 3]], np.int16), (64, 2, 1))
    res = segment_routing_performance(constant, 4, 16)
    assert res["srp"] == pytest.approx(1.0) and res["layers"] == pytest.approx([1.0, 1.0])
    sticky = segment_routing_performance(synthetic_trace(500, 2, 8, 2, 0.9, seed=1), 8, 16)
    loose = segment_routing_performance(synthetic_trace(500, 2, 8, 2, 0.0, seed=1), 8, 16)
    assert 0 < loose["srp"] < sticky["srp"] <= 1


# ---- knee and records ---------------------------------------------------------------------------
def test_knee_rule():
    sizes = list(range(1, 9))
    assert knee(sizes, [0.1, 0.6, 0.8, 0.85, 0.88, 0.9, 0.91, 0.92]) == 3
    assert knee(sizes, [0.5] * 8) == 1
    assert knee(sizes, [i / 8 for i in range(8)]) == 1  # a straight line has no knee
    with pytest.raises(ConfigError):
        knee([1, 2], [0.1])


def test_expert_cache_record_is_json():
    tr = synthetic_trace(200, 2, 8, 2, 0.7, seed=5)
    rec = json.loads(json.dumps(expert_cache_record(tr, 8, segments=(4, 16, 999))))
    assert rec["kind"] == "expert-cache" and set(rec["policies"]) == {"lru", "lfu", "belady"}
    assert set(rec["sch"]) == {"4", "16"} and 1 <= rec["recommended_size"] <= 8
    assert rec["policies"]["lru"]["warm_hit_rate"][-1] == pytest.approx(1.0)


def test_synthetic_trace_shape_and_ids():
    tr = synthetic_trace(100, 3, 8, 2, 0.5, seed=0)
    assert tr.shape == (100, 3, 2) and tr.min() >= 0 and tr.max() < 8
    assert (tr[:, :, 0] != tr[:, :, 1]).all()
    assert (tr == synthetic_trace(100, 3, 8, 2, 0.5, seed=0)).all()
    with pytest.raises(ConfigError):
        synthetic_trace(10, 1, 4, 5, 0.5)


# ---- loading ------------------------------------------------------------------------------------
def test_load_trace_accepts_ids_npz_and_logits(tmp_path):
    ids = synthetic_trace(20, 2, 8, 2, 0.5, seed=1)
    np.save(tmp_path / "t.npy", ids.astype(np.int64))
    assert (load_trace(tmp_path / "t.npy", 8, 2) == ids).all()
    np.save(tmp_path / "flat.npy", ids[:, 0, :])
    assert load_trace(tmp_path / "flat.npy", 8, 2).shape == (20, 1, 2)
    np.savez(tmp_path / "t.npz", routing=ids)
    assert (load_trace(tmp_path / "t.npz", 8, 2) == ids).all()
    logits = np.random.default_rng(0).normal(size=(5, 2, 8)).astype(np.float32)
    np.save(tmp_path / "logits.npy", logits)
    got = load_trace(tmp_path / "logits.npy", 8, 3)
    assert (got == np.argsort(-logits, axis=2)[:, :, :3]).all()


@pytest.mark.parametrize("make, where, words", [
    (lambda: np.zeros((4, 2, 2), bool), "header", "dtype"),
    (lambda: np.zeros((4, 2, 2, 1), np.int32), "header", "dimensions"),
    (lambda: np.zeros((0, 2, 2), np.int32), "header", "empty"),
    (lambda: np.tile(np.arange(3, dtype=np.int32), (4, 2, 1)), "header", "top_k"),
    (lambda: np.array([[[0, 1]], [[1, 2]], [[0, 9]]], np.int32), "token 2 layer 0", "outside"),
    (lambda: np.array([[[0, 1], [2, 3]], [[1, -1], [0, 1]]]), "token 1 layer 0", "outside"),
    (lambda: np.array([[[0, 1], [2, 2]]], np.int32), "token 0 layer 1", "twice"),
    (lambda: np.zeros((3, 2, 5), np.float32), "header", "5 experts"),
    (lambda: np.where(np.arange(16).reshape(2, 1, 8) == 11, np.nan, 0.0), "token 1 layer 0",
     "not finite"),
])
def test_bad_traces_name_the_position(tmp_path, make, where, words):
    path = tmp_path / "bad.npy"
    np.save(path, make())
    with pytest.raises(InputError) as e:
        load_trace(path, 8, 2)
    assert e.value.where == where and words in e.value.detail and e.value.source == str(path)


def test_unreadable_files_are_header_errors(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, synthetic_trace(50, 2, 8, 2, 0.5))
    truncated = tmp_path / "cut.npy"
    truncated.write_bytes(good.read_bytes()[:-40])
    corrupt = tmp_path / "bad.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    two = tmp_path / "two.npz"
    np.savez(two, a=np.zeros((2, 2), np.int32), b=np.zeros((2, 2), np.int32))
    objects = tmp_path / "obj.npy"
    np.save(objects, np.array([[1, 2]], dtype=object), allow_pickle=True)
    for path in (truncated, corrupt, two, objects, tmp_path / "missing.npy"):
        with pytest.raises(InputError) as e:
            load_trace(path, 8, 2)
        assert e.value.where == "header", path


def test_bad_shape_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        load_trace(tmp_path / "x.npy", 4, 5)
    with pytest.raises(ConfigError):
        simulate(np.ones((3, 1, 1), np.int16), 1)
    with pytest.raises(ConfigError):
        simulate(np.zeros((3, 1, 1), np.int16), 2, ("fifo",))


def test_every_small_trace_shape_runs():
    for experts, k in itertools.product((1, 2, 5), (1, 2)):
        if k <= experts:
            tr = synthetic_trace(7, 2, experts, k, 0.5, seed=experts)
            assert all(cv.hits.shape == (2, experts) for cv in simulate(tr, experts).values())
