"""`memstack offload-plan` end to end: plans pipe into `simulate --plan`, bad budgets fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import decode_jsonl, error_line, ok, run

from memstack.core.model import offload
from memstack.core.model.load_spec import load_model
from memstack.core.model.simulate import Workload
from memstack.core.model.targets import load_target


def test_plan_pipes_into_simulate():
    plan = ok(run("offload-plan", "--model", "mixtral-8x7b", "--target", "rtx4090", "--budget",
                  "hbm=20GiB,dram=48GiB", "--weights", "q4_0", "-q"))
    _, (rec,) = decode_jsonl(ok(run("simulate", "--plan", "-", "--format", "jsonl",
                                    input=plan.stdout)).stdout)
    assert rec["kind"] == "sim" and rec["plan"] == "greedy"
    assert rec["bytes"]["hbm"] <= 20 * 2**30
    assert rec["bytes"]["dram"] > 0  # 25 GiB of q4_0 experts cannot all sit in 20 GiB
    assert rec["tpot_s"] > 0


def test_plan_record_and_baseline_on_stderr(tmp_path: Path):
    proc = ok(run("offload-plan", "--model", "llama-2-13b", "--target", "rtx4090",
                  "--weights", "f16", "--format", "jsonl"))
    _, (rec,) = decode_jsonl(proc.stdout)
    assert rec["kind"] == "plan" and rec["feasible"]
    assert rec["model"]["name"] == "llama-2-13b"
    assert sum(u["bytes"] for u in rec["units"]) > 24e9
    err = proc.stderr.decode()
    assert "accelerate-style baseline" in err
    table = ok(run("offload-plan", "--model", "llama-2-13b", "--target", "rtx4090",
                   "--format", "table")).stdout.decode()
    assert "time per token" in table and "slower" in table


def test_plans_beat_the_accelerate_rule_and_fit_budgets():
    spec, tgt = load_model("llama-2-70b"), load_target("a100-80gb")
    budget = offload.parse_budget("hbm=40GiB", tgt)
    ps = offload.build_problem(spec, tgt, Workload(1, 512, 64, "f16"), budget)
    greedy = offload.plan(ps, "greedy")
    base = offload.plan(ps, "accelerate")
    assert offload.step_time(ps, greedy) < offload.step_time(ps, base)
    rec = offload.plan_record(ps, greedy, "greedy")
    assert rec["bytes"]["hbm"] <= 40 * 2**30 + 1
    lp = offload.plan(ps, "lp")
    assert offload.step_time(ps, lp) <= offload.step_time(ps, base)


def test_everything_fits_means_nothing_moves():
    spec, tgt = load_model("llama-2-7b"), load_target("h100-sxm")
    ps = offload.build_problem(spec, tgt, Workload(1, 512, 64, "f16"),
                               offload.parse_budget("", tgt))
    placement = offload.plan(ps, "greedy")
    rec = offload.plan_record(ps, placement, "greedy")
    assert rec["bytes"].get("dram", 0) == 0 and rec["bytes"].get("flash", 0) == 0


@pytest.mark.parametrize("budget, needle", [
    ("vram=10GiB", "no tier 'vram'"),
    ("hbm=ten", "not a size"),
    ("hbm", "TIER=SIZE"),
])
def test_bad_budgets_are_usage_errors(budget, needle):
    error_line(run("offload-plan", "--model", "llama-2-7b", "--target", "rtx4090", "--budget",
                   budget), 2, needle)


def test_a_model_that_cannot_fit_anywhere_says_the_minimum():
    proc = run("offload-plan", "--model", "llama-2-70b", "--target", "rtx4090", "--budget",
               "hbm=10GiB,dram=20GiB,flash=20GiB")
    line = error_line(proc, 2, "GiB")
    assert "need" in line or "minimum" in line


def test_plan_input_must_be_a_plan(tmp_path: Path):
    sim = ok(run("simulate", "--model", "gpt2", "--target", "l4")).stdout
    error_line(run("simulate", "--plan", "-", input=sim), 1, "no plan record")
    error_line(run("simulate", "--plan", "-", input=b"garbage"), 1, "<stdin>")


def test_routing_trace_sizes_the_expert_cache(tmp_path: Path):
    import numpy as np

    from memstack.core.model.expert_cache import synthetic_trace

    path = tmp_path / "trace.npy"
    np.save(path, synthetic_trace(2000, 4, 8, 2, 0.6, seed=3))
    _, (rec,) = decode_jsonl(ok(run("offload-plan", "--routing-trace", path, "--experts", "8",
                                    "--top-k", "2", "--format", "jsonl")).stdout)
    assert rec["kind"] == "expert-cache" and rec["sizes"] == list(range(1, 9))
    lru, belady = rec["policies"]["lru"]["hit_rate"], rec["policies"]["belady"]["hit_rate"]
    assert all(b >= x - 1e-12 for b, x in zip(belady, lru, strict=True))
    assert 1 <= rec["recommended_size"] <= 8
    # the experts and top-k of an MoE model are taken from it
    ok(run("offload-plan", "--routing-trace", path, "--model", "mixtral-8x7b"))
    np.save(path, np.full((10, 4, 2), 9))  # expert 9 of 8
    error_line(run("offload-plan", "--routing-trace", path, "--experts", "8", "--top-k", "2"),
               1, str(path))
    path.write_bytes(b"\x93NUMPY garbage")
    error_line(run("offload-plan", "--routing-trace", path, "--experts", "8", "--top-k", "2"),
               1, str(path))


def test_flash_plan_bundles_and_fits_the_window():
    _, recs = decode_jsonl(ok(run("offload-plan", "--model", "opt-6.7b", "--target", "m1-max",
                                  "--flash", "--budget", "unified=16GiB", "--format",
                                  "jsonl")).stdout)
    by = {r["bundling"]: r for r in recs}
    assert by[True]["reads"] < by[False]["reads"]
    assert by[True]["chunk_bytes"] > by[False]["chunk_bytes"]
    assert by[True]["tpot_s"] < by[True]["naive_tpot_s"]
    assert all(r["dram_bytes"] <= r["dram_for_ffn"] for r in recs)
    error_line(run("offload-plan", "--model", "opt-6.7b", "--target", "m1-max", "--flash",
                   "--budget", "unified=1GiB"), 2, "non-FFN")
