"""The roofline engine: each term behaves as its physics says, grids equal single runs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstack.core.errors import ConfigError
from memstack.core.model.precision import kv_bytes, weight_bits
from memstack.core.model.simulate import Cat, Workload, sim_record, simulate
from memstack.core.model.spec import ModelSpec
from memstack.core.model.strategies import MemoryStats, parse_strategies, price
from memstack.core.model.sweep import parse_grid, run_sweep
from memstack.core.model.target import FormatCost, Target, Tier

LLAMA = ModelSpec("llama-2-7b", "llama", 32, 4096, 32, 32, 128, 11008, 32000)
GQA = ModelSpec("gqa", "llama", 32, 4096, 32, 8, 128, 14336, 32000)
MOE = ModelSpec("mixtral", "mixtral", 32, 4096, 32, 8, 128, 0, 32000, experts=8, top_k=2,
                expert_ffn=14336)


def gpu(launch: float = 0.0, token: float = 0.0, kpl: int = 0) -> Target:
    return Target("gpu", "gpu", "test GPU", {"fp32": 50e12, "fp16": 200e12, "fp8": 400e12},
                  (Tier("hbm", 80 * 2**30, 2e12, 0.8),), compute_efficiency=0.5,
                  launch_overhead=launch, kernels_per_layer=kpl, token_overhead=token)


def cpu(q4_rate: float = 0.0) -> Target:
    formats = {"q4_0": FormatCost(gemv_rate=q4_rate)} if q4_rate else {}
    return Target("cpu", "cpu", "test CPU", {"fp32": 1e12}, (Tier("dram", 64 * 2**30, 50e9, 1.0),),
                  compute_efficiency=0.8, formats=formats, threads=8)


def test_batch1_decode_is_weight_bytes_over_bandwidth():
    res = simulate(LLAMA, gpu(), Workload(1, 16, 8, "f16"))
    floor = LLAMA.total_params() * 2 / (2e12 * 0.8)  # every weight read once per token
    assert res.totals["tpot_s"] == pytest.approx(floor, rel=0.02)
    assert sim_record(res)["decode_bound"] == "memory"


def test_launch_overhead_dominates_small_models_on_fast_gpus():
    tiny = ModelSpec("tiny", "llama", 12, 512, 8, 8, 64, 1536, 8000)
    plain = simulate(tiny, gpu(), Workload(1, 16, 8, "f16")).totals["tpot_s"]
    real = simulate(tiny, gpu(launch=5e-6, kpl=12), Workload(1, 16, 8, "f16"))
    assert real.totals["tpot_s"] > 5 * plain
    assert sim_record(real)["decode_bound"] == "overhead"


def test_dequant_rate_bounds_block_formats_on_cpu():
    fast = simulate(LLAMA, cpu(), Workload(1, 16, 8, "q4_0")).totals["tpot_s"]
    slow = simulate(LLAMA, cpu(q4_rate=20e9), Workload(1, 16, 8, "q4_0"))
    assert slow.totals["tpot_s"] > 1.5 * fast
    assert sim_record(slow)["decode_bound"] == "dequant"
    # f16 has no dequant cost on this target: bytes alone
    f16 = simulate(LLAMA, cpu(q4_rate=20e9), Workload(1, 16, 8, "f16")).totals["tpot_s"]
    assert f16 == pytest.approx(LLAMA.total_params() * 2 / 50e9, rel=0.03)


def test_fewer_bits_decode_faster_and_need_less_memory():
    times = [simulate(LLAMA, gpu(), Workload(1, 512, 64, w)).totals for w in
             ("f32", "f16", "q8_0", "q4_0")]
    tp = [float(t["tpot_s"]) for t in times]
    mem = [float(t["mem_weights"]) for t in times]
    assert tp == sorted(tp, reverse=True)
    assert mem == sorted(mem, reverse=True)
    assert mem[1] / mem[3] == pytest.approx(16 / 4.5, rel=0.01)


def test_prefill_is_compute_bound_and_batch_raises_decode_throughput():
    res = simulate(LLAMA, gpu(), Workload(1, 4096, 8, "f16"))
    flops = 2 * LLAMA.total_params() * 4096
    assert float(res.totals["ttft_s"]) >= flops / (200e12 * 0.5)
    one = simulate(LLAMA, gpu(), Workload(1, 512, 64, "f16")).totals
    many = simulate(LLAMA, gpu(), Workload(64, 512, 64, "f16")).totals
    assert float(many["decode_tok_s"]) > 20 * float(one["decode_tok_s"])
    assert float(many["tpot_s"]) > float(one["tpot_s"])


def test_gqa_shrinks_the_kv_cache_and_long_context_costs_attention():
    mha = simulate(LLAMA, gpu(), Workload(1, 32768, 16, "f16")).totals
    gqa = simulate(GQA, gpu(), Workload(1, 32768, 16, "f16")).totals
    assert float(mha["mem_kv"]) / float(gqa["mem_kv"]) == pytest.approx(4.0)
    short = simulate(LLAMA, gpu(), Workload(1, 512, 16, "f16")).totals
    assert float(mha["tpot_s"]) > float(short["tpot_s"])
    kv = 32 * 2 * 32 * 128 * 2 * (32768 + 16)
    assert float(mha["mem_kv"]) == pytest.approx(kv)
    assert float(simulate(LLAMA, gpu(), Workload(1, 512, 16, "f16", kv="q8_0")).totals[
        "mem_kv"]) == pytest.approx(32 * 2 * 32 * 128 * kv_bytes("q8_0") * 528)


def test_moe_reads_only_routed_experts_at_batch_one():
    res = simulate(MOE, gpu(), Workload(1, 16, 8, "f16"))
    active = MOE.active_params() * 2 / (2e12 * 0.8)
    assert float(res.totals["tpot_s"]) == pytest.approx(active, rel=0.03)
    big = simulate(MOE, gpu(), Workload(256, 16, 8, "f16"))  # every expert touched
    total = MOE.total_params() * 2 / (2e12 * 0.8)
    assert float(big.totals["tpot_s"]) >= total * 0.97
    assert float(res.totals["mem_weights"]) == pytest.approx(
        float(big.totals["mem_weights"]))


def test_footprint_and_fit():
    small = gpu()
    tight = Target("small", "gpu", "8 GiB", small.compute, (Tier("hbm", 8 * 2**30, 1e12),))
    assert bool(simulate(LLAMA, small, Workload(1, 512, 64, "f16")).totals["fits"])
    assert not bool(simulate(LLAMA, tight, Workload(1, 512, 64, "f16")).totals["fits"])
    assert bool(simulate(LLAMA, tight, Workload(1, 512, 64, "q4_0")).totals["fits"])


def test_cached_prefix_prefills_only_the_query():
    full = simulate(LLAMA, gpu(), Workload(1, 8000, 16, "f16")).totals
    cached = simulate(LLAMA, gpu(), Workload(1, 32, 16, "f16", prefix=7968)).totals
    assert float(cached["ttft_s"]) < float(full["ttft_s"]) / 20
    assert float(cached["mem_kv"]) == pytest.approx(float(full["mem_kv"]))
    assert float(cached["tpot_s"]) == pytest.approx(float(full["tpot_s"]), rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 512), ctx=st.integers(0, 100_000), gen=st.integers(1, 4096),
       w=st.sampled_from(["f16", "q8_0", "q4_0", "fp8", "int4"]))
def test_grid_equals_single_runs(batch, ctx, gen, w):
    target = gpu(launch=4e-6, kpl=10, token=1e-4)
    single = sim_record(simulate(LLAMA, target, Workload(batch, ctx, gen, w)))
    grid = Workload(np.array([1, batch]), np.array([7, ctx]), np.array([3, gen]),
                    Cat(("q4_0", w), np.array([0, 1])))
    rec = sim_record(simulate(LLAMA, target, grid), 1)
    for k in ("ttft_s", "tpot_s", "mem_total", "decode_tok_s"):
        assert rec[k] == pytest.approx(single[k], rel=1e-12)
    assert rec["weights"] == w and rec["batch"] == batch
    assert single["tpot_s"] > 0 and single["ttft_s"] > 0


def test_sweep_streams_every_point_in_order():
    axes = parse_grid("batch=1,8;ctx=2k,8k;weights=f16,q4_0")
    base = {"model": "m", "target": "t", "batch": 1, "ctx": 512, "gen": 64, "weights": "f16",
            "kv": "f16", "act": "f16"}
    recs = list(run_sweep(axes, base, lambda m: LLAMA, lambda t: gpu(), chunk=3))
    assert len(recs) == 8
    assert [(r["batch"], r["ctx"], r["weights"]) for r in recs[:3]] == [
        (1, 2048, "f16"), (1, 2048, "q4_0"), (1, 8192, "f16")]
    one = sim_record(simulate(LLAMA, gpu(), Workload(8, 8192, 64, "q4_0")))
    assert recs[-1]["tpot_s"] == pytest.approx(one["tpot_s"])


@pytest.mark.parametrize("grid", ["batch", "batch=", "speed=1,2", "batch=1;batch=2",
                                  "ctx=2q", "batch=1.5", "", "batch=1e3"])
def test_bad_grids_are_usage_errors(grid):
    with pytest.raises(ConfigError) as e:
        parse_grid(grid)
    assert e.value.exit_code == 2


def test_bad_workloads_are_usage_errors():
    with pytest.raises(ConfigError, match="batch"):
        simulate(LLAMA, gpu(), Workload(0, 16, 8, "f16"))
    with pytest.raises(ConfigError, match="ctx"):
        simulate(LLAMA, gpu(), Workload(1, -5, 8, "f16"))
    with pytest.raises(ConfigError, match="weight format"):
        simulate(LLAMA, gpu(), Workload(1, 16, 8, "q3_zz"))
    with pytest.raises(ConfigError, match="KV cache"):
        simulate(LLAMA, gpu(), Workload(1, 16, 8, "f16", kv="q9"))


def test_weight_bits_count_every_stored_bit():
    assert weight_bits("q4_0") == 4.5
    assert weight_bits("bits:3.25") == 3.25
    assert 4.0 < weight_bits("nf4:dq") < 4.2
    assert 4.1 < weight_bits("mixed:4") < 4.2
    with pytest.raises(ConfigError):
        weight_bits("bits:0")


def test_strategies_price_recall_below_full_context():
    stats = MemoryStats(2000, 40.0)
    recs = price(LLAMA, gpu(launch=4e-6, kpl=10), stats,
                 parse_strategies("full-context,recall:k=10,kv-cache"))
    by = {r["strategy"]: r for r in recs}
    assert by["full-context"]["prompt_tokens"] == 80_032
    assert by["recall:k=10"]["prompt_tokens"] == 432
    assert by["recall:k=10"]["speedup_vs_full"] > 5
    assert by["kv-cache"]["ttft_s"] < by["full-context"]["ttft_s"]
    assert by["kv-cache"]["kv_bytes"] > by["recall:k=10"]["kv_bytes"] * 50
    for bad in ("", "recall:k=0", "everything", "kv-cache:k=3", "recall:n=4"):
        with pytest.raises(ConfigError):
            parse_strategies(bad)
