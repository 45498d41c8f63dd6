"""The "LLM in a flash" cost model: windowing, bundling, the chunk-size curve and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from memstack.core.errors import ConfigError
from memstack.core.model.flash import (
    agg_curve_from_mask,
    aggregate_usage,
    bandwidth_at,
    flash_ffn_cost,
    flash_window_sweep,
)

GIB = float(1 << 30)
# random-read throughput of an NVMe SSD with many threads, by read size (rises with size)
CURVE = [(4096, 0.25e9), (16384, 0.9e9), (32768, 1.5e9), (65536, 2.2e9), (1 << 20, 6e9)]
OPT = dict(hidden=4096, ffn=16384, gated=False, bytes_per_weight=2.0, sparsity=0.9,
           chunk_curve=CURVE, layers=32)


def test_bundling_halves_reads_and_doubles_chunks():
    for window in (0, 1, 5):
        apart = flash_ffn_cost(window=window, bundling=False, **OPT)
        together = flash_ffn_cost(window=window, bundling=True, **OPT)
        assert together["flash_bytes"] == pytest.approx(apart["flash_bytes"])
        assert together["reads"] == pytest.approx(apart["reads"] / 2)
        assert together["chunk_bytes"] == pytest.approx(2 * apart["chunk_bytes"])
        assert together["io_s"] < apart["io_s"]
    gated = {**OPT, "gated": True}
    assert flash_ffn_cost(window=2, bundling=True, **gated)["reads"] == pytest.approx(
        flash_ffn_cost(window=2, bundling=False, **gated)["reads"] / 3)


def test_bigger_window_reads_less_and_holds_more():
    rows = [flash_ffn_cost(window=w, bundling=True, **OPT) for w in range(0, 12)]
    flash = [r["flash_bytes"] for r in rows]
    dram = [r["dram_bytes"] for r in rows]
    assert all(b < a for a, b in zip(flash, flash[1:], strict=False))
    assert all(b > a for a, b in zip(dram, dram[1:], strict=False))
    assert rows[0]["dram_bytes"] == pytest.approx(0.1 * rows[0]["ffn_bytes"])


def test_zero_sparsity_is_a_dense_load():
    dense = flash_ffn_cost(window=0, bundling=False, **{**OPT, "sparsity": 0.0})
    ffn_bytes = 32 * 16384 * 2 * 4096 * 2.0
    assert dense["flash_bytes"] == pytest.approx(ffn_bytes) == dense["ffn_bytes"]
    assert dense["reads"] == pytest.approx(32 * 2)  # one sequential read per matrix
    assert dense["bandwidth"] == pytest.approx(6e9)  # past the curve's end: flat
    bundled = flash_ffn_cost(window=0, bundling=True, **{**OPT, "sparsity": 0.0})
    assert bundled["reads"] == pytest.approx(32)
    kept = flash_ffn_cost(window=3, bundling=True, **{**OPT, "sparsity": 0.0})
    assert kept["flash_bytes"] == 0 and kept["dram_bytes"] == pytest.approx(ffn_bytes)


def test_markov_reuse_model():
    assert aggregate_usage(0.1, 1) == pytest.approx(0.1)
    assert aggregate_usage(0.1, 4, persistence=0.1) == pytest.approx(1 - 0.9 ** 4)  # independent
    assert aggregate_usage(0.1, 9, persistence=1.0) == pytest.approx(0.1)  # the same neurons
    # the paper's OPT-6.7B: ~10% predicted per token, a window of 5 holds ~24% of the FFN
    assert aggregate_usage(0.1, 5) == pytest.approx(0.25, abs=0.02)
    assert aggregate_usage(0.0, 5) == 0 and aggregate_usage(1.0, 5) == 1


def test_measured_reuse_curve():
    rng = np.random.default_rng(0)
    same = np.tile(rng.random(400) < 0.1, (50, 1))
    assert agg_curve_from_mask(same, 4) == pytest.approx([same[0].mean()] * 4)
    indep = rng.random((4000, 400)) < 0.1
    assert agg_curve_from_mask(indep, 3) == pytest.approx([1 - 0.9 ** k for k in (1, 2, 3)],
                                                          abs=0.01)
    curve = agg_curve_from_mask(indep, 6)
    row = flash_ffn_cost(window=2, bundling=True, agg_curve=curve, **OPT)
    assert row["reuse_model"] == "curve" and row["new_fraction"] == pytest.approx(
        curve[2] - curve[1])
    with pytest.raises(ConfigError):
        flash_ffn_cost(window=6, bundling=True, agg_curve=curve, **OPT)  # needs s_agg(7)


def test_bandwidth_interpolates_log_log():
    assert bandwidth_at(CURVE, 16384) == pytest.approx(0.9e9)
    mid = bandwidth_at(CURVE, np.sqrt(4096 * 16384))
    assert mid == pytest.approx(np.sqrt(0.25e9 * 0.9e9))
    assert bandwidth_at(CURVE, 100) == pytest.approx(0.25e9)
    assert bandwidth_at([(4096, 1e9)], 1 << 30) == pytest.approx(1e9)


def test_sweep_recommends_the_fastest_window_that_fits():
    res = flash_window_sweep(range(0, 17), dram_budget=2 * GIB, bundling=True, **OPT)
    chosen = next(r for r in res["rows"] if r["window"] == res["recommended"])
    assert chosen["fits"] and chosen["dram_bytes"] <= 2 * GIB
    assert all(r["io_s"] >= chosen["io_s"] for r in res["rows"] if r["fits"])
    bigger = flash_window_sweep(range(0, 17), dram_budget=6 * GIB, bundling=True, **OPT)
    assert bigger["recommended"] > res["recommended"]
    with pytest.raises(ConfigError, match="GiB"):
        flash_window_sweep(range(0, 4), dram_budget=0.01 * GIB, bundling=True, **OPT)


def test_active_is_one_minus_sparsity():
    a = flash_ffn_cost(window=3, bundling=True, **OPT)
    kw = {k: v for k, v in OPT.items() if k != "sparsity"}
    b = flash_ffn_cost(window=3, bundling=True, active=0.1, **kw)
    assert a["flash_bytes"] == pytest.approx(b["flash_bytes"]) and b["sparsity"] == 0.9
    with pytest.raises(ConfigError):
        flash_ffn_cost(window=3, bundling=True, active=0.1, **OPT)  # both given
    with pytest.raises(ConfigError):
        flash_ffn_cost(window=3, bundling=True, **kw)  # neither


@pytest.mark.parametrize("bad", [
    {"hidden": -4096}, {"ffn": 0}, {"layers": -1}, {"bytes_per_weight": 0.0},
    {"bytes_per_weight": -2.0}, {"sparsity": 1.5}, {"sparsity": -0.1}, {"window": -1},
    {"chunk_curve": []}, {"chunk_curve": [(4096, -1.0)]}, {"persistence": 2.0},
    {"dram_budget": -1.0}, {"agg_curve": [0.2, 0.1]}, {"hidden": 4096.5},
    {"sparsity": None, "active": 1.2},
])
def test_bad_inputs_are_config_errors(bad):
    kw = {**OPT, "window": 2, "bundling": True, **bad}
    with pytest.raises(ConfigError):
        flash_ffn_cost(**kw)
