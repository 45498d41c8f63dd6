"""Quantization (issue #4): speed beside gguf's reference, accuracy per bit, peak memory on a
2 GB safetensors file, and the store's quantized vectors.

(a) Throughput: `memstack bench quantize --format jsonl` (core/bench_quant.py) as a child
    process, on a 4096×4096 float32 matrix of N(0, 0.02²) weights ("plain") and the same with
    16 random input columns ×25 ("outlier"). MB/s of float32 input (10^6 bytes), median of
    repeats after a warm-up, memstack with every core and with one thread beside
    gguf.quants.quantize (single-threaded numpy, as shipped), and whether the bytes are the
    same. gguf's MXFP4 is timed on the first 1024 rows (it does ~80 MB/s); bytes are always
    compared on the whole matrices.
(b) Accuracy per bit: bits per weight (every stored bit: scales, permutations, type ids), SNR,
    RMSE and cosine of every scheme on both matrices, from the same run.
(c) Peak memory: `memstack quantize big.safetensors -s q4_0 -o out.gguf --force -q` as a child
    on a ~2 GB file of float32 tensors whose largest is 512 MiB (written once, by hand, under
    the bench cache). Peak RSS = max(/usr/bin/time's %M, RSS polled every 20 ms); the baseline
    is the same command on a tiny file (interpreter and imports). Target: (peak - baseline) /
    largest tensor <= 1.5.
(d) Store vectors: benchmarks/bench_vectors.py's bench_vector_quant() in a child process, when
    that file is present: recall@10 against the float top 10, bytes per vector scanned.

    .venv/bin/python benchmarks/bench_quantize.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402

GGML = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mx:fp4")
TYPE_NAME = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1",
             "mx:fp4": "MXFP4"}
SPEED_TARGETS = {"q4_0": 1.5, "q8_0": 1.5, "mx:fp4": 5.0}  # memstack ÷ gguf, same bytes
BPW_LIMIT, SNR_TARGET_DB = 4.6, 21.0
PEAK_TARGET = 1.5
# recall@10 and float bytes ÷ scheme bytes; int8's 4x is its codes: the float32 scale it keeps
# per vector costs 3% at 128 dimensions (3.88x), hence 3.85
VEC_TARGETS = {"int8": (0.97, 3.85), "binary": (0.95, 31.9)}
CHUNK_BYTES = 16 << 20
MEMSTACK = os.path.join(common.VENV_BIN, "memstack")


# -- (a) and (b): the matrices -----------------------------------------------------------------
def matrix_records(size: int, repeats: int, timeout: float) -> tuple[list[dict], float, str]:
    cmd = [MEMSTACK, "bench", "quantize", "--size", str(size), "--repeats", str(repeats),
           "--format", "jsonl"]
    res = common.run_measured(cmd, timeout=timeout, poll=None, env=common.bench_env())
    recs = [r for r in map(json.loads, res.stdout.splitlines())
            if r.get("kind") == "bench" and r.get("bench") == "quantize"]
    if not recs:
        raise RuntimeError(f"`memstack bench quantize` printed no records:\n{res.stderr[-2000:]}")
    return recs, res.wall_s, res.stderr.strip()


def pivot(recs: list[dict]) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for r in recs:
        cell = out.setdefault((r["scheme"], r["matrix"]), {})
        cell[r["metric"]] = r["value"]
        for k in ("threads", "rows", "size", "repeats"):
            if k in r:
                cell.setdefault("_" + k, r[k])
    return out


def throughput_rows(m: dict, schemes: list[str]) -> list[dict]:
    rows = []
    gguf_v = common.version_of("gguf")
    for s in schemes:
        if s not in GGML or (s, "plain") not in m:
            continue
        c = m[(s, "plain")]
        metric = f"{TYPE_NAME[s]} quantize, plain matrix"
        rows.append({"system": f"memstack (threads=auto: {c.get('_threads', '?')})",
                     "metric": metric, "value": c["mb_per_s"], "unit": "MB/s", "group": s})
        rows.append({"system": "memstack (threads=1)", "metric": metric,
                     "value": c["mb_per_s_1t"], "unit": "MB/s", "group": s})
        if "gguf_mb_per_s" in c:
            sliced = c.get("_rows") and c["_rows"] < c.get("_size", 0)
            rows.append({"system": f"gguf.quants.quantize {gguf_v}"
                                   + (f" (first {c['_rows']} rows)" if sliced else ""),
                         "metric": metric, "value": c["gguf_mb_per_s"], "unit": "MB/s",
                         "group": s})
    return rows


def _same(m: dict, s: str) -> str:
    vals = [m.get((s, mx), {}).get("identical_bytes") for mx in ("plain", "outlier")]
    if s not in GGML:
        return "-"
    if any(v is None for v in vals):
        return "n/a"
    return ", ".join("yes" if v == 1.0 else "**NO**" for v in vals)


def accuracy_table(m: dict, schemes: list[str]) -> dict:
    order = sorted(schemes, key=lambda s: m[(s, "plain")]["bpw"])  # stable: ties keep order
    rows = []
    for s in order:
        p, o = m[(s, "plain")], m[(s, "outlier")]
        bpw = f"{p['bpw']:.3f}" if abs(p["bpw"] - o["bpw"]) < 5e-4 else \
            f"{p['bpw']:.3f} / {o['bpw']:.3f}"
        rows.append([f"`{s}`", bpw, f"{p['snr_db']:.2f}", f"{o['snr_db']:.2f}",
                     f"{p['rmse']:.2e}", f"{o['rmse']:.2e}", f"{p['cosine']:.5f}",
                     f"{o['cosine']:.5f}", f"{p['mb_per_s']:,.0f}", f"{o['mb_per_s']:,.0f}",
                     _same(m, s)])
    return {"title": "Accuracy per bit (sorted by bits per weight; plain / outlier matrix)",
            "columns": ["scheme", "bpw (plain / outlier when they differ)", "SNR dB plain",
                        "SNR dB outlier", "RMSE plain", "RMSE outlier", "cosine plain",
                        "cosine outlier", "memstack MB/s plain",
                        "MB/s outlier", "bytes = gguf (plain, outlier)"],
            "rows": rows}


def outlier_aware(spec: str) -> bool:
    return spec.startswith("split:") or spec.endswith(":outlier")


def matrix_targets(m: dict, schemes: list[str], quick: bool, have_gguf: bool) -> list[dict]:
    targets = []
    for s, need in SPEED_TARGETS.items():
        c = m.get((s, "plain"), {})
        name = f"{TYPE_NAME[s]} >= {need:g}x gguf, identical bytes"
        if "ratio_vs_gguf" not in c:
            targets.append({"name": name, "ok": None, "detail": "gguf not installed"
                            if not have_gguf else f"{s} not measured"})
            continue
        same = _same(m, s)
        ok = c["ratio_vs_gguf"] >= need and "NO" not in same
        targets.append({"name": name, "ok": None if quick else ok,
                        "detail": f"{c['ratio_vs_gguf']:.2f}x ({c['mb_per_s']:,.0f} vs "
                                  f"{c['gguf_mb_per_s']:,.0f} MB/s), same bytes: {same}"
                                  + (" (quick: smaller matrix)" if quick else "")})
    ggml = [s for s in schemes if s in GGML]
    sames = {s: _same(m, s) for s in ggml}
    if have_gguf and ggml:
        bad = [s for s, v in sames.items() if v != "yes, yes"]
        targets.append({"name": "bytes identical to gguf on every GGML type, both matrices",
                        "ok": not bad,
                        "detail": "all identical: " + " ".join(TYPE_NAME[s] for s in ggml)
                                  if not bad else "differ: " + ", ".join(bad)})
    cands = [(m[(s, "outlier")]["snr_db"], s) for s in schemes
             if outlier_aware(s) and m[(s, "outlier")]["bpw"] <= BPW_LIMIT]
    ref = "; ".join(f"{s} {m[(s, 'outlier')]['snr_db']:.1f} dB at {m[(s, 'outlier')]['bpw']:.2f}"
                    for s in ("q4_0", "q5_0") if (s, "outlier") in m)
    name = f"outlier-aware scheme <= {BPW_LIMIT} bpw reaches SNR >= {SNR_TARGET_DB:g} dB on " \
           "the outlier matrix"
    if cands:
        snr, best = max(cands)
        detail = (f"best: {best} {snr:.1f} dB at {m[(best, 'outlier')]['bpw']:.3f} bpw"
                  + (f" (for scale: {ref})" if ref else "")
                  + (" (quick: smaller matrix)" if quick else ""))
        targets.append({"name": name, "ok": None if quick else snr >= SNR_TARGET_DB,
                        "detail": detail})
    else:
        targets.append({"name": name, "ok": None, "detail": "no outlier-aware scheme measured"})
    return targets


# -- (c): peak memory on a big safetensors file ----------------------------------------------
def big_layout(quick: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Tensors like a small model's: embeddings, per-block weights, 1-D norms, and one expert
    tensor 4x a block weight; total 4x the largest (2 GiB at full size, 512 MiB quick)."""
    cols, rows = (8192, 4096) if quick else (16384, 8192)
    layout: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (rows // 2, cols))]
    for i in range(4):
        layout += [(f"blk.{i}.attn_norm.weight", (cols,)),
                   (f"blk.{i}.attn_qkv.weight", (rows // 4, cols)),
                   (f"blk.{i}.ffn_down.weight", (rows // 4, cols))]
        if i == 1:
            layout.append(("blk.1.ffn_up_exps.weight", (rows, cols)))
    layout.append(("output.weight", (rows // 2, cols)))
    return layout


def _header(layout: list[tuple[str, tuple[int, ...]]]) -> tuple[bytes, int]:
    head: dict = {"__metadata__": {"format": "pt", "source": "memstack bench_quantize.py"}}
    off = 0
    for name, shape in layout:
        n = 4 * int(np.prod(shape))
        head[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(head, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # data starts 8-byte aligned, as the safetensors writer does
    return hb, off


def write_safetensors(path: str, layout: list[tuple[str, tuple[int, ...]]], seed: int = 0
                      ) -> None:
    """8-byte little-endian header length, JSON header, raw little-endian data; written in
    16 MiB chunks so the writer never holds a tensor."""
    hb, _ = _header(layout)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fp:
        fp.write(struct.pack("<Q", len(hb)))
        fp.write(hb)
        for _, shape in layout:
            rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
            step = max(1, CHUNK_BYTES // (4 * cols))
            for start in range(0, rows, step):
                x = rng.standard_normal((min(step, rows - start), cols), dtype=np.float32)
                x *= np.float32(0.02)
                fp.write(np.asarray(x, "<f4").data)


def cached_safetensors(name: str, layout: list[tuple[str, tuple[int, ...]]]
                       ) -> tuple[str, float | None]:
    """The file under the bench cache, written once; (path, seconds to write or None)."""
    hb, data = _header(layout)
    path = common.cache_path(name)
    if os.path.exists(path) and os.path.getsize(path) == 8 + len(hb) + data:
        return path, None
    tmp = f"{path}.tmp{os.getpid()}"
    t0 = time.perf_counter()
    try:
        write_safetensors(tmp, layout)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, time.perf_counter() - t0


def warm_page_cache(path: str) -> None:
    buf = bytearray(CHUNK_BYTES)
    with open(path, "rb", buffering=0) as fp:
        while fp.readinto(buf):
            pass


def quantize_cmd(src: str, out: str) -> list[str]:
    return [MEMSTACK, "quantize", src, "-s", "q4_0", "-o", out, "--force", "-q"]


def peak_memory(quick: bool) -> tuple[dict, dict, list[str]]:
    """Peak RSS of `memstack quantize` on the big file, less the same on a tiny file."""
    layout = big_layout(quick)
    sizes = [4 * int(np.prod(s)) for _, s in layout]
    big, wrote = cached_safetensors(f"quant-{sum(sizes) >> 20}MiB-{max(sizes) >> 20}MiB"
                                    ".safetensors", layout)
    tiny, _ = cached_safetensors("quant-tiny.safetensors",
                                 [("blk.0.attn_norm.weight", (64,)), ("w.weight", (64, 64))])
    have_gguf = common.version_of("gguf") != "not installed"
    ext = ".gguf" if have_gguf else ".msgpack"
    runs = 2 if quick else 3
    notes = []
    if wrote is not None:
        notes.append(f"wrote the {common.mib(os.path.getsize(big)):,.0f} MiB input in "
                     f"{wrote:.0f} s (cached under {common.CACHE})")
    bw = common.memory_bandwidth_gbs()
    warm_page_cache(big)
    base, peak, wall = [], [], []
    with common.temp_dir() as tmp:
        out = os.path.join(tmp, "out" + ext)
        for _ in range(runs):  # alternate, so both see the same machine
            r = common.run_measured(quantize_cmd(tiny, out), timeout=300, poll=0.02,
                                    env=common.bench_env(), time_rss=True)
            base.append(r.peak_rss)
            r = common.run_measured(quantize_cmd(big, out), timeout=1200, poll=0.02,
                                    env=common.bench_env(), time_rss=True)
            peak.append(r.peak_rss)
            wall.append(r.wall_s)
        out_bytes = os.path.getsize(out)
        n_tensors = _gguf_tensors(out) if have_gguf else None
    largest = max(sizes)
    p, b, w = common.median(peak), common.median(base), common.median(wall)
    ratio = (p - b) / largest
    src_bytes = os.path.getsize(big)
    mbs = src_bytes / 1e6 / w
    res = {"peak": p, "base": b, "largest": largest, "ratio": ratio, "mb_s": mbs,
           "file": src_bytes, "out": out_bytes, "wall": w, "tensors": len(layout)}
    table = {"title": f"Peak memory: `memstack quantize` of a {common.mib(src_bytes) / 1024:.1f}"
                      f" GiB safetensors file to Q4_0 {ext[1:].upper()}",
             "columns": ["input", "tensors", "largest tensor", "peak RSS", "baseline RSS (tiny "
                         "file)", "(peak - baseline) / largest", "end to end"],
             "rows": [[f"{common.mib(src_bytes):,.0f} MiB float32", str(len(layout)),
                       f"{common.mib(largest):,.0f} MiB", f"{common.mib(p):,.0f} MiB",
                       f"{common.mib(b):,.0f} MiB", f"{ratio:.2f}", f"{mbs:,.0f} MB/s"]]}
    notes.append(f"peak memory: {runs} runs each, alternating with the baseline; peak RSS per "
                 f"run (MiB): {', '.join(str(common.mib(x)) for x in peak)}; baseline: "
                 f"{', '.join(str(common.mib(x)) for x in base)}; wall per run (s): "
                 f"{', '.join(f'{x:.1f}' for x in wall)} (process start and imports included, "
                 f"input in the page cache); output {common.mib(out_bytes):,.0f} MiB"
                 + (f", {n_tensors} tensors read back by gguf.GGUFReader" if n_tensors else "")
                 + f", deleted; memory bandwidth before this part {bw} GB/s")
    notes.append("the input is memory-mapped, so RSS counts the mapped pages of the tensor being "
                 "quantized (file-backed, released after each tensor); the rest of the peak is "
                 "the quantized output of that tensor and the per-chunk temporaries")
    if not have_gguf:
        notes.append("gguf is not installed: the peak-memory run writes memstack tensor records "
                     "instead of GGUF")
    return res, table, notes


def _gguf_tensors(path: str) -> int:
    from gguf import GGUFReader

    return len(GGUFReader(path).tensors)


# -- (d): store vectors ---------------------------------------------------------------------
def vector_worker(n: int, queries: int) -> dict:
    from bench_vectors import bench_vector_quant

    return {"records": bench_vector_quant(n=n, queries=queries)}


def store_vectors(quick: bool) -> tuple[dict | None, list[dict], list[str]]:
    names = [f"{s}: recall@10 >= {r:g} of float at {round(b)}x fewer bytes (>= {b:g}x)"
             + (" for the scan, with float re-rank" if s == "binary" else "")
             for s, (r, b) in VEC_TARGETS.items()]
    if not os.path.exists(os.path.join(HERE, "bench_vectors.py")):
        return None, [{"name": n, "ok": None, "detail": "benchmarks/bench_vectors.py missing"}
                      for n in names], ["store vectors: benchmarks/bench_vectors.py is not "
                                        "there yet, so no store-vectors table"]
    n, queries = (20_000, 100) if quick else (100_000, 200)
    try:
        out, _ = common.run_worker("bench_quantize.py", ["--worker", "vectors", "--n", str(n),
                                                         "--queries", str(queries)],
                                   timeout=1500, poll=None)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        return None, [{"name": nm, "ok": False, "detail": "bench_vectors did not finish"}
                      for nm in names], [f"store vectors failed: {str(exc)[-1500:]}"]
    recs = out["records"]
    by: dict[str, dict] = {}
    units: dict[str, str] = {}
    for r in recs:
        by.setdefault(r["scheme"], {})[r["metric"]] = r["value"]
        units.setdefault(r["metric"], r.get("unit", ""))
    metrics = list(units)
    table = {"title": f"Store vectors ({n:,} synthetic turns, {recs[0].get('queries', queries)} "
                      "queries; recall@10 against the exact float top 10)",
             "columns": ["scheme", *[f"{m} ({units[m]})" if units[m] else m for m in metrics]],
             "rows": [[f"`{s}`", *[common.fmt_value(vals[m]) if m in vals else "" for m in
                                   metrics]] for s, vals in by.items()]}
    targets = []
    for (s, (need_r, need_b)), name in zip(VEC_TARGETS.items(), names, strict=True):
        vals = by.get(s, {})
        rec, ratio = vals.get("recall@10"), vals.get("ratio_vs_float")
        if rec is None or ratio is None:
            targets.append({"name": name, "ok": None,
                            "detail": f"no recall@10/ratio_vs_float for {s} in the records"})
            continue
        targets.append({"name": name, "ok": None if quick else (rec >= need_r
                                                               and ratio >= need_b),
                        "detail": f"recall@10 {rec:.3f}, {ratio:.2f}x fewer bytes scanned"
                                  + (f" (quick: {n:,} turns)" if quick else "")})
    notes = ["store vectors: benchmarks/bench_vectors.py's bench_vector_quant "
             f"(n={n:,}, queries={queries}) in a child process; int8 stores a float32 scale "
             "per vector, hence a little under 4x"]
    return table, targets, notes


# -- the section ---------------------------------------------------------------------------
def run(quick: bool) -> dict:
    t0 = time.perf_counter()
    size = 2048 if quick else 4096
    repeats = 2 if quick else 5
    notes: list[str] = []
    tables: list[dict] = []
    have_gguf = common.version_of("gguf") != "not installed"

    bw = common.memory_bandwidth_gbs()
    recs, wall, stderr = matrix_records(size, repeats, timeout=1500)
    m = pivot(recs)
    schemes = list(dict.fromkeys(r["scheme"] for r in recs))
    rows = throughput_rows(m, schemes)
    tables.append(accuracy_table(m, schemes))
    targets = matrix_targets(m, schemes, quick, have_gguf)
    notes.append(f"matrices: {size}x{size} float32 ({size * size * 4 / 1e6:.0f} MB), "
                 f"N(0, 0.02^2), and the same with 16 random input columns x25; MB/s of "
                 f"float32 input, median of {repeats} runs after a warm-up, memstack (every "
                 "core, then one thread) and gguf taking turns in each repeat; `memstack bench "
                 f"quantize` ran {wall:.0f} s; memory bandwidth before it {bw} GB/s")
    out_ratios = [f"{TYPE_NAME[s]} {m[(s, 'outlier')]['ratio_vs_gguf']:.2f}" for s in GGML
                  if "ratio_vs_gguf" in m.get((s, "outlier"), {})]
    if out_ratios:
        notes.append("outlier matrix, memstack ÷ gguf: " + ", ".join(out_ratios))
    c = m.get(("mx:fp4", "plain"), {})
    if c.get("_rows") and c["_rows"] < size:
        notes.append(f"gguf's MXFP4 quantizer is timed on the first {c['_rows']} rows only (it "
                     "computes 16 error columns per element); its bytes are compared on the "
                     "whole matrices")
    if not have_gguf or stderr:
        notes.append(stderr or "gguf is not installed: no reference rows")
    bpw_split = m.get(("split:q4_0", "outlier"), {}).get("bpw")
    kept = round((bpw_split - 4.5) * size / 16.03) if bpw_split else "?"
    notes.append("bpw counts every stored bit (codes, scales, permutations, type ids, F16 "
                 "outlier columns and their indices); SNR = 10 log10(sum w^2 / sum (w - w_hat)^2)"
                 f"; `split:` keeps in F16 the input columns whose max |w| is over 4x the "
                 f"median column's, at most 1% ({kept} of {size} on the outlier matrix, which "
                 "has 16 outlier columns; none on the plain one), `bfp:*:outlier` reorders "
                 "input channels by magnitude")

    res, peak_table, peak_notes = peak_memory(quick)
    tables.append(peak_table)
    notes += peak_notes
    targets.append({"name": f"peak RSS <= {PEAK_TARGET:g}x the largest tensor (less the "
                            "baseline)",
                    "ok": None if quick else res["ratio"] <= PEAK_TARGET,
                    "detail": f"({common.mib(res['peak']):,.0f} - {common.mib(res['base']):,.0f}"
                              f") / {common.mib(res['largest']):,.0f} MiB = {res['ratio']:.2f}; "
                              f"{common.mib(res['file']) / 1024:.1f} GiB file at "
                              f"{res['mb_s']:,.0f} MB/s end to end"
                              + (" (quick: 512 MiB file)" if quick else "")})

    vtable, vtargets, vnotes = store_vectors(quick)
    if vtable:
        tables.append(vtable)
    targets += vtargets
    notes += vnotes

    title = (f"6. Quantization ({size}x{size} float32 weights beside gguf; "
             f"{common.mib(res['file']) / 1024:.1f} GiB safetensors; store vectors)")
    return {"key": "quantize", "title": title, "command": common.command_line(), "rows": rows,
            "tables": tables, "notes": notes, "targets": targets,
            "wall_s": time.perf_counter() - t0}


def finish(sec: dict, args: argparse.Namespace, t0: float, meter: common.NoiseMeter) -> dict:
    """common.finish, printing the extra tables too."""
    from run_all import section_markdown

    sec["wall_s"] = time.perf_counter() - t0
    sec.setdefault("notes", []).append(meter.summary())
    common.add_ratios(sec["rows"])
    print(section_markdown(sec))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fp:
            json.dump(sec, fp, indent=1, default=float)
    return sec


def main(argv: list[str] | None = None) -> dict | None:
    ap = common.base_args(__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["vectors"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--queries", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "vectors":
        print(json.dumps(vector_worker(args.n, args.queries), default=float))
        return None
    t0, meter = time.perf_counter(), common.NoiseMeter()
    return finish(run(args.quick), args, t0, meter)


if __name__ == "__main__":
    main()
