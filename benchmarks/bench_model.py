"""Model memory (issue #5): simulate against real decode here and published numbers elsewhere,
sweep speed, offload plans beside accelerate's rule, expert caches, agent-memory strategies.

(a) Fidelity here: llama GGUF files of ~50M, ~200M and ~500M parameters in F16, Q8_0 and Q4_0
    (random weights, written once by core/model/gguf_synth.py under the bench cache) decoded by
    ctransformers (memstack.core.model.bench_decode: 2 threads, prompt 64, 32 tokens, 5 runs,
    median of the runs no other process disturbed) beside `simulate --target this-machine`,
    the target measured by `bench hw` at the start and its bandwidth re-measured right before
    each model. Target: every cell within ±20%.
(b) Fidelity on published measurements: benchmarks/fidelity_published.py over
    benchmarks/data/published.toml (GPUs and Apple silicon, llama.cpp and TensorRT-LLM), no
    per-row tuning; holdout rows were never used to set a constant. Target: MAPE <= 20%.
(c) Speed: configurations per second of a sweep (in process, and the CLI end to end writing
    msgpack to a file), and the wall time of one `memstack simulate` process.
(d) Plans: cases that need offloading, memstack's greedy and LP beside the accelerate-style
    baseline (infer_auto_device_map's rule, implemented in core/model/placement.py); and the
    greedy beside the exact optimum on small random problems.
(e) Expert caches: hit rates of LRU, LFU and Belady on synthetic routing traces, the knee.
(f) Strategies: full context vs recall vs cached KV for the LoCoMo sample's store.

    .venv/bin/python benchmarks/bench_model.py [--quick] [--json OUT]
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import fidelity_published  # noqa: E402

MEMSTACK = os.path.join(common.VENV_BIN, "memstack")
SIZES = {"50m": 50e6, "200m": 200e6, "500m": 500e6}
FTYPES = ("f16", "q8_0", "q4_0")
THREADS = 2
FIDELITY_TOL = 0.20
PUBLISHED_MAPE = 20.0
SWEEP_TARGET = 100_000
SINGLE_TARGET_S = 0.5
PLAN_RATIO_TARGET = 1.5
EXACT_GAP = 0.02


# -- (a) fidelity here -------------------------------------------------------------------------
def model_file(size: str, ftype: str) -> str:
    from memstack.core.model.gguf_synth import write_llama_gguf

    path = common.cache_path("models", f"synth-{size}-{ftype}.gguf")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_llama_gguf(path, params_target=SIZES[size], ftype=ftype)
    return path


def fidelity_here(quick: bool) -> tuple[dict, list[dict], list[str]]:
    import dataclasses

    from memstack.core.model.bench_decode import bench_decode
    from memstack.core.model.hwbench import measure, measure_bandwidth
    from memstack.core.model.load_spec import from_gguf
    from memstack.core.model.simulate import Workload, simulate

    base = measure(quick=quick, threads=THREADS)
    sizes = ["50m", "200m"] if quick else list(SIZES)
    rows, cells = [], []
    for size in sizes:
        for ftype in FTYPES:
            path = model_file(size, ftype)
            for _attempt in range(3):  # a cell whose every run was disturbed is measured again
                bw = measure_bandwidth(quick=True, threads=THREADS)
                rec = bench_decode(path, prompt_tokens=64, gen_tokens=32,
                                   repeats=3 if quick else 5, threads=THREADS)
                if rec.get("contended_runs", 0) < rec["repeats"]:
                    break
            main = dataclasses.replace(base.main, bandwidth=bw, efficiency=1.0)
            target = dataclasses.replace(base, tiers=(main, *base.tiers[1:]))
            res = simulate(from_gguf(path), target, Workload(1, 64, 32, ftype))
            pred = 1e3 * float(res.totals["tpot_s"])
            meas = rec["decode_ms_per_token"]
            floor = 1e3 * rec["weight_bytes_per_token"] / bw
            cells.append(pred / meas - 1)
            rows.append([f"{rec['params'] / 1e6:.0f}M", ftype, f"{rec['file_bytes'] / 1e6:.0f}",
                         f"{bw / 1e9:.1f}", f"{floor:.2f}", f"{meas:.2f}", f"{meas / floor:.2f}",
                         f"{pred:.2f}", f"{pred / meas:.2f}",
                         f"{rec.get('contended_runs', 0)}/{rec['repeats']}"])
    worst = max(abs(c) for c in cells)
    ok = worst <= FIDELITY_TOL
    table = {"title": "(a) decode ms/token here: ctransformers measured vs simulate predicted",
             "columns": ["model", "type", "file MB", "bandwidth GB/s", "bytes/bw floor ms",
                         "measured ms", "measured ÷ floor", "predicted ms",
                         "predicted ÷ measured", "disturbed runs"],
             "rows": rows}
    target = {"name": f"simulate within ±{FIDELITY_TOL:.0%} of ctransformers decode, "
                      f"{len(cells)} cells", "ok": None if quick else ok,
              "detail": f"worst {worst:+.1%}; mean |error| "
                        f"{100 * statistics.fmean(abs(c) for c in cells):.1f}%"}
    notes = [f"this-machine target from `bench hw` at the start: single-core fp32 GEMM "
             f"{base.compute.get('fp32', 0) / 1e9:.0f} GFLOP/s (all threads), "
             f"{THREADS} threads; decode rates per format follow from it (core/model/hwbench.py"
             ") and the bandwidth is re-measured before each model",
             "decode here is bound by ggml's dot kernels and thread barriers, not by bytes: "
             "see the measured ÷ floor column"]
    return target, [table], notes


# -- (b) published -----------------------------------------------------------------------------
def published() -> tuple[list[dict], list[dict], list[str]]:
    res = fidelity_published.evaluate()
    s = fidelity_published.summary(res)
    rows = [[k, str(n), f"{m:.1f}%", f"{med:.1f}%"] for k, (n, m, med) in s.items()]
    table = {"title": "(b) simulate vs published measurements (tokens/s), no per-row tuning",
             "columns": ["rows", "n", "MAPE", "median |error|"], "rows": rows}
    worst = sorted(res, key=lambda r: -abs(r["error"]))[:6]
    wtable = {"title": "(b) largest errors",
              "columns": ["#", "model", "target", "weights", "phase", "measured", "predicted",
                          "error", "runtime"],
              "rows": [[str(r["id"]) + (" (holdout)" if r.get("holdout") else ""), r["model"],
                        r["target"], r["weights"], r["phase"], f"{r['tokens_per_s']:.1f}",
                        f"{r['predicted']:.1f}", f"{100 * r['error']:+.0f}%", r["runtime"][:40]]
                       for r in worst]}
    targets = [{"name": f"published MAPE <= {PUBLISHED_MAPE:.0f}%",
                "ok": s["all"][1] <= PUBLISHED_MAPE,
                "detail": f"all {s['all'][0]} rows {s['all'][1]:.1f}%, holdout "
                          f"{s['holdout'][1]:.1f}%, decode {s['decode'][1]:.1f}%, prefill "
                          f"{s['prefill'][1]:.1f}%"}]
    notes = ["published rows: llama.cpp #4167 (Apple M1 Max / M2 Ultra / M3 Max), the CUDA "
             "scoreboard #15013, XiongjieDai's GPU benchmarks, TensorRT-LLM 0.9 performance.md, "
             "Jetson and Raspberry Pi 5 reports; each row cites its source in published.toml",
             "the largest errors are prefill rows of older llama.cpp CUDA builds (Dec 2023) and "
             "one L40S F16 prompt row that is 3x slower than the same card's Q4_K_M row: one "
             "preset cannot match two builds of a runtime"]
    return targets, [table, wtable], notes


# -- (c) speed ---------------------------------------------------------------------------------
def speed(quick: bool, tmp: str) -> tuple[list[dict], list[dict], list[dict]]:
    from memstack.core.model.load_spec import load_model
    from memstack.core.model.simulate import simulate
    from memstack.core.model.sweep import inner_workload, parse_grid, run_sweep_chunks
    from memstack.core.model.targets import load_target
    from memstack.formats.stream import RecordWriter

    grid = ("batch=1,2,4,8,16,32,64,128,256,512;ctx=128,256,512,1k,2k,4k,8k,16k,32k,64k;"
            "gen=16,32,64,128,256,512,1k,2k,4k,8k;weights=bf16,q8_0,q4_0,q4_k,fp8,int4,nf4,"
            "mxfp4,q6_k,q5_0;kv=f16,fp8,q8_0,q4_0,bf16,int8,f32,q5_0,q5_1,q4_1")
    if not quick:
        grid += ";prefix=0,256,512,1k,2k,4k,8k,16k,32k,64k"
    axes = parse_grid(grid)
    n = int(np.prod([len(v) for v in axes.values()]))
    base = {"model": "llama-3-8b", "target": "h100-sxm", "batch": 1, "ctx": 512, "gen": 128,
            "weights": "bf16", "kv": "f16", "act": "auto"}
    spec, tgt = load_model("llama-3-8b"), load_target("h100-sxm")
    work, _ = inner_workload(axes, base)
    engine = []
    for _ in range(3):
        t0 = time.perf_counter()
        simulate(spec, tgt, work)
        engine.append(n / (time.perf_counter() - t0))
    rates = []
    for _ in range(3):
        with open(os.devnull, "wb") as null:
            t0 = time.perf_counter()
            with RecordWriter(null) as w:
                for block in run_sweep_chunks(axes, base, lambda m: spec, lambda t: tgt):
                    w.write_many(block)
            rates.append(n / (time.perf_counter() - t0))
    out = os.path.join(tmp, "grid.msgpack")
    cli_rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        with open(out, "wb") as fp:
            subprocess.run([MEMSTACK, "simulate", "--model", "llama-3-8b", "--target",
                            "h100-sxm", "--sweep", grid], stdout=fp, check=True)
        cli_rates.append(n / (time.perf_counter() - t0))
    os.unlink(out)
    single = []
    for _ in range(7):
        t0 = time.perf_counter()
        subprocess.run([MEMSTACK, "simulate", "--model", "qwen2.5-7b", "--target", "l4",
                        "--format", "jsonl"], stdout=subprocess.DEVNULL, check=True)
        single.append(time.perf_counter() - t0)
    rows = [
        {"system": "memstack simulate engine (one vectorised pass)", "metric": "configs/s "
         "(engine)", "value": statistics.median(engine), "unit": "/s", "group": "sweep"},
        {"system": "memstack sweep (in process, msgpack)", "metric": "configs/s",
         "value": statistics.median(rates), "unit": "/s", "group": "sweep"},
        {"system": "memstack simulate --sweep (process, to a file)", "metric": "configs/s (CLI)",
         "value": statistics.median(cli_rates), "unit": "/s", "group": "sweep"},
        {"system": "memstack simulate (one process)", "metric": "wall s", "value":
         statistics.median(single), "unit": "s", "group": "single"},
    ]
    targets = [{"name": f">= {SWEEP_TARGET:,} configurations/s in sweep mode",
                "ok": statistics.median(cli_rates) >= SWEEP_TARGET,
                "detail": f"{statistics.median(cli_rates):,.0f}/s through the CLI to a msgpack "
                          f"file, {statistics.median(rates):,.0f}/s in process, "
                          f"{statistics.median(engine):,.0f}/s priced without records "
                          f"({n:,} configs)"},
               {"name": f"one simulate process < {SINGLE_TARGET_S} s",
                "ok": statistics.median(single) < SINGLE_TARGET_S,
                "detail": f"median {statistics.median(single):.3f} s of 7"}]
    return rows, targets, []


# -- (d) plans ---------------------------------------------------------------------------------
PLAN_CASES = [  # (model, target, weights, batch, budget)
    ("llama-2-7b", "rtx4090", "f16", 1, "hbm=8GiB"),
    ("llama-2-13b", "rtx4090", "f16", 1, ""),
    ("llama-2-13b", "rtx3090", "f16", 8, "hbm=16GiB"),
    ("llama-2-70b", "a100-80gb", "f16", 1, ""),
    ("llama-2-70b", "rtx4090", "q4_0", 1, ""),
    ("llama-3-70b", "rtx3090", "q4_k_m", 1, ""),
    ("mixtral-8x7b", "rtx4090", "q4_0", 1, "hbm=20GiB,dram=48GiB"),
    ("mixtral-8x7b", "a100-80gb", "f16", 1, "hbm=60GiB"),
    ("mixtral-8x7b", "l4", "q8_0", 4, ""),
    ("mixtral-8x22b", "a100-80gb", "q4_0", 1, ""),
    ("qwen2.5-72b", "h100-sxm", "bf16", 1, ""),
    ("qwen2.5-32b", "l4", "bf16", 1, ""),
    ("opt-13b", "rtx3090", "f16", 1, "hbm=12GiB"),
    ("deepseek-v2-lite", "l4", "bf16", 1, "hbm=16GiB"),
]


def plans(quick: bool) -> tuple[list[dict], list[dict], list[str]]:
    from memstack.core.model import offload
    from memstack.core.model.load_spec import load_model
    from memstack.core.model.simulate import Workload
    from memstack.core.model.targets import load_target

    rows, ratios, lp_gaps = [], [], []
    for model, target, weights, batch, budget in PLAN_CASES[: 6 if quick else None]:
        spec, tgt = load_model(model), load_target(target)
        ps = offload.build_problem(spec, tgt, Workload(batch, 512, 128, weights),
                                   offload.parse_budget(budget, tgt))
        t0 = time.perf_counter()
        greedy = offload.step_time(ps, offload.plan(ps, "greedy"))
        t_greedy = time.perf_counter() - t0
        lp = offload.step_time(ps, offload.plan(ps, "lp"))
        acc = offload.step_time(ps, offload.plan(ps, "accelerate"))
        best = min(greedy, lp)
        ratios.append(acc / best)
        lp_gaps.append(greedy / lp - 1)
        rows.append([model, target, weights, str(batch), budget or "tier sizes",
                     f"{greedy * 1e3:.1f}", f"{lp * 1e3:.1f}", f"{acc * 1e3:.1f}",
                     f"{acc / best:.2f}×", f"{t_greedy * 1e3:.0f}"])
    gaps = exact_gaps(40 if quick else 200)
    table = {"title": "(d) offload plans: predicted ms/token (batch decode step)",
             "columns": ["model", "target", "weights", "batch", "budget", "greedy", "LP",
                         "accelerate rule", "baseline ÷ best", "greedy ms to plan"],
             "rows": rows}
    targets = [
        {"name": "plan never worse than the accelerate-style baseline",
         "ok": min(ratios) >= 1.0 - 1e-9, "detail": f"min ratio {min(ratios):.2f}×"},
        {"name": f"plan >= {PLAN_RATIO_TARGET}× better on average",
         "ok": statistics.fmean(ratios) >= PLAN_RATIO_TARGET,
         "detail": f"mean {statistics.fmean(ratios):.2f}× (geometric "
                   f"{float(np.exp(np.mean(np.log(ratios)))):.2f}×) over {len(ratios)} cases"},
        {"name": f"greedy within {EXACT_GAP:.0%} of the exact optimum on small cases",
         "ok": max(gaps) <= EXACT_GAP,
         "detail": f"worst {max(gaps):+.2%}, mean {statistics.fmean(gaps):+.3%} over "
                   f"{len(gaps)} random problems"}]
    notes = [f"greedy vs LP on the big cases: worst {max(lp_gaps):+.1%} (the LP's rounded plan "
             "is also offered as --method lp)",
             "the baseline follows accelerate's infer_auto_device_map: modules in order, the "
             "GPU filled up to its budget minus the largest layer, then CPU, then disk; "
             "offloaded weights are copied to the GPU at each forward without overlap, and the "
             "KV cache is not planned for"]
    return targets, [table], notes


def exact_gaps(n: int) -> list[float]:
    """Greedy ÷ exact - 1 on random small models (2-3 layers, budgets that force offload)."""
    from memstack.core.model import offload
    from memstack.core.model import placement as pl
    from memstack.core.model.simulate import Workload
    from memstack.core.model.spec import ModelSpec
    from memstack.core.model.targets import load_target

    rng = random.Random(0)
    gaps = []
    targets = [load_target(t) for t in ("rtx4090", "a100-80gb", "m1-max", "l4")]
    while len(gaps) < n:
        layers = rng.choice([2, 3])
        hidden = rng.choice([2048, 4096, 5120])
        spec = ModelSpec("small", "llama", layers, hidden, hidden // 128, hidden // 512, 128,
                         int(hidden * 2.7), 32000)
        tgt = rng.choice(targets)
        work = Workload(rng.choice([1, 4, 16]), rng.choice([512, 4096, 16384]), 64,
                        rng.choice(["f16", "q8_0", "q4_0"]))
        full = offload.build_problem(spec, tgt, work, offload.parse_budget("", tgt))
        total = sum(u.bytes for u in full.problem.units) + full.reserved
        budget = offload.parse_budget("", tgt)
        budget[tgt.main.name] = full.reserved + total * rng.uniform(0.2, 0.9)
        ps = offload.build_problem(spec, tgt, work, budget)
        try:
            exact = pl.cost(ps.problem, pl.plan_exact(ps.problem)).step_s
        except Exception:  # infeasible draws are skipped
            continue
        greedy = pl.cost(ps.problem, pl.plan_greedy(ps.problem)).step_s
        gaps.append(greedy / exact - 1)
    return gaps


# -- (e) expert caches -------------------------------------------------------------------------
def expert_caches(quick: bool) -> tuple[list[dict], list[str]]:
    from memstack.core.model import expert_cache as ec

    rows = []
    for locality in (0.0, 0.5, 0.9):
        trace = ec.synthetic_trace(5_000 if quick else 50_000, 8, 8, 2, locality=locality,
                                   seed=1)
        t0 = time.perf_counter()
        rec = ec.expert_cache_record(trace, 8)
        dt = time.perf_counter() - t0
        knee = int(rec["recommended_size"])
        i = rec["sizes"].index(knee)
        sch = rec["sch"].get("16")
        rows.append([f"{locality}", str(knee)]
                    + [f"{rec['policies'][p]['hit_rate'][i]:.3f}" for p in ("lru", "lfu",
                                                                             "belady")]
                    + [f"{sch[i]:.3f}" if sch else "-", f"{dt:.1f}"])
    table = {"title": "(e) expert cache hit rate at the knee (8 experts, top-2, 8 layers, "
                      f"{5_000 if quick else 50_000:,} tokens)",
             "columns": ["routing locality", "knee (experts cached per layer)", "LRU", "LFU",
                         "Belady (offline optimum)", "segment cache (SCH, 16 tokens)",
                         "analysis s"],
             "rows": rows}
    return [table], ["synthetic traces: with probability `locality` a token keeps the previous "
                     "token's experts, else it draws from a Zipf popularity (core/model/"
                     "expert_cache.py); Belady is the bound no online policy beats; SCH is the "
                     "segment cache hit rate of 'Not All Models Suit Expert Offloading'"]


# -- (f) strategies ----------------------------------------------------------------------------
def strategies(tmp: str) -> tuple[list[dict], list[str]]:
    store = os.path.join(tmp, "locomo")
    data = os.path.join(common.REPO, "..", "shared", "data", "locomo-sample.json")
    subprocess.run([MEMSTACK, "ingest", data, "--store", store, "-q"], check=True,
                   stdout=subprocess.DEVNULL, env=common.bench_env())
    rows = []
    for model, target in (("llama-3-8b", "l4"), ("llama-3-8b", "h100-sxm"),
                          ("qwen2.5-7b", "m1-max")):
        out = subprocess.run([MEMSTACK, "simulate", "--store", store, "--model", model,
                              "--target", target, "--weights", "q4_0", "--strategies",
                              "full-context,recall:k=10,kv-cache", "--format", "jsonl"],
                             capture_output=True, check=True, text=True).stdout
        import json

        for rec in (json.loads(x) for x in out.splitlines()):
            if rec.get("kind") != "strategy":
                continue
            rows.append([model, target, rec["strategy"], f"{rec['memories']:,}",
                         f"{rec['prompt_tokens']:,}", f"{rec['ttft_s'] * 1e3:,.0f}",
                         f"{rec['total_s']:.2f}", f"{rec['kv_bytes'] / 2**30:.2f}",
                         str(rec["fits"]), f"{rec.get('speedup_vs_full') or 0:.1f}×"])
    table = {"title": "(f) agent-memory strategies per query on the LoCoMo sample's store "
                      "(q4_0 weights, 32-token query, 128-token answer)",
             "columns": ["model", "target", "strategy", "memories", "prompt tokens", "TTFT ms",
                         "total s", "KV GiB", "fits", "speedup vs full"],
             "rows": rows}
    return [table], []


def run(quick: bool) -> dict:
    tables: list[dict] = []
    notes: list[str] = []
    targets: list[dict] = []
    rows: list[dict] = []
    with common.temp_dir() as tmp:
        t, tb, nt = fidelity_here(quick)
        targets.append(t)
        tables += tb
        notes += nt
        t, tb, nt = published()
        targets += t
        tables += tb
        notes += nt
        r, t, _ = speed(quick, tmp)
        rows += r
        targets += t
        t, tb, nt = plans(quick)
        targets += t
        tables += tb
        notes += nt
        tb, nt = expert_caches(quick)
        tables += tb
        notes += nt
        tb, nt = strategies(tmp)
        tables += tb
        notes += nt
    return {"key": "model", "title": "Model memory: simulate, offload-plan, bench decode "
            "(issue #5)", "command": common.command_line(), "rows": rows, "tables": tables,
            "notes": notes, "targets": targets}


def main(argv: list[str] | None = None) -> dict:
    from bench_quantize import finish

    ap = common.base_args(__doc__.split("\n")[0])
    args = ap.parse_args(argv)
    t0, meter = time.perf_counter(), common.NoiseMeter()
    return finish(run(args.quick), args, t0, meter)


if __name__ == "__main__":
    main()
