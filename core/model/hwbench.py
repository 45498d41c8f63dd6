"""Measure this machine into a `Target` (kind "cpu") with numpy and the filesystem only.

What is measured, and why that measure:
- DRAM bandwidth: a float32 GEMV (matrix × vector) over a matrix far larger than the
  last-level cache, on all threads. LLM decode is a chain of GEMVs, and one core cannot keep
  enough loads in flight to saturate DRAM, so a single-threaded sum or copy reads low; the GEMV
  streams the way llama.cpp's decode does. A threaded 1-D dot and a copy are recorded beside it.
- fp32 GEMM FLOP/s on all threads and on one (the BLAS thread count is set through the loaded
  OpenBLAS); numpy has no useful fp16 matmul, and CPU kernels widen fp16/bf16 to fp32, so their
  peaks are the fp32 one.
- Disk random-read bandwidth per chunk size (4 KiB … 4 MiB) on a temporary file, read with
  O_DIRECT (else after POSIX_FADV_DONTNEED) so the page cache does not answer: the flash tier's
  chunk_curve. A hypervisor's host cache can still answer on a VM; `sources` says what was done.
- Capacities from sysconf (DRAM) and statvfs (free disk); threads from the affinity mask.

Measured tiers carry efficiency 1.0: the number is already what a stream achieves.

Weight formats (`formats`): llama.cpp's CPU decode kernels (dequantize + dot, AVX2) are
compute-bound on small machines: on the reference 2-core VM every format decodes 8-17 G weights/s
on 2 threads whatever its bytes, so F16 runs at ~0.55 of its bytes/bandwidth rate and Q4_0 at
~0.18 (perf: 53% of the time in ggml_vec_dot_q4_0_q8_0, 34% spinning at ggml's barriers). Each
format's `gemv_rate` (weights/s) comes from a quantity numpy measures, the best single-core fp32
GEMM rate, which scales with clock × SIMD issue rate as the dot kernels do:

    gemv_rate(fmt) = threads × gemm_fp32_1t / OPS_PER_WEIGHT[fmt]

and a step costs, as `simulate` charges it,

    Σ_matmuls max(bytes / bandwidth, weights / gemv_rate) + token_overhead
        + launch_overhead × kernels_per_layer × layers

OPS_PER_WEIGHT ("fp32-GEMM FLOPs per weight") and the fixed costs are calibrated against real
decode (`bench_decode`); the fixed costs scale from the reference by 1 / single-core speed. With
them `simulate` is within ±20% of measured decode in 36 of 38 uncontended cells (54M-498M
params, f16/q8_0/q4_0 and q4_1/q5_0/q5_1/q4_k/q5_k/q6_k), see the constants below.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import numpy as np

from memstack.core.model.target import FormatCost, Link, Target, Tier

MIB = 1 << 20
CHUNKS = (4096, 16384, 65536, 262144, MIB, 4 * MIB)
GEMV_COLS = 4096  # 16 KiB rows: long streams per row, the vector stays in L1

# ---- calibration ------------------------------------------------------------------------------
# Reference machine: 2-vCPU KVM guest on an AVX-512 Xeon (OpenBLAS picks its SkylakeX kernel),
# best single-core fp32 GEMM 165 GFLOP/s; ctransformers 0.2.27 (llama.cpp of Sep 2023, its
# avx2 build); random llamas from `gguf_synth` at 54M/197M/498M params (238M for k-quants),
# 64 prompt tokens, 32 decoded, 2 threads; `bench_decode` medians of uncontended runs, 3 grids.
REF_GEMM_1T = 165e9
# Cost of ggml's batch-1 dot kernel per weight, in fp32-GEMM FLOPs of one core:
#   gemv_rate = threads × gemm_fp32_1t / OPS_PER_WEIGHT.
# Fitted as ms/token = token + layers × per-layer + weights / gemv_rate (weights = every matrix
# element one step multiplies). On the reference machine every format is kernel-bound, not
# memory-bound: 2 threads decode 8-17 G weights/s whatever the bytes, i.e. 5-18 GB/s of the
# ~30 GB/s a GEMV stream gets, and F16 reaches only ~0.6 of its bytes/bandwidth rate. f16,
# q8_0, q4_0: least squares over 24 cells (log error); the others: one 197M/238M model each.
OPS_PER_WEIGHT = {
    "f16": 39.5, "q8_0": 33.0, "q4_0": 35.0,  # 8.4 / 10.0 / 9.4 G weights/s on 2 threads
    # one 197M (238M for k-quants) model each, scaled by the q4_0 control timed in the same
    # session (that session ran 1.13x faster than the fit): q4_1·q8_1 skips q4_0's sign
    # trick; k-quants' 256-weight super-blocks amortise their scales
    "q4_1": 27.5, "q5_0": 43.0, "q5_1": 38.0, "q4_k": 26.5, "q5_k": 35.0, "q6_k": 22.0,
    # not timed (no quantizer here writes them; f32 is memory-bound anyway): by the nearest
    "f32": 39.5, "q2_k": 26.5, "q3_k": 35.0,
}
# llama.cpp's mixed k-quant file types are costed as their main matrix type
MIXES = {"q2_k_s": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k",
         "q4_k_s": "q4_k", "q4_k_m": "q4_k", "q5_k_s": "q5_k", "q5_k_m": "q5_k"}
DEFAULT_OPS = 35.0  # "*": any other format is costed like q4_0, the middle of the timed ones
# Prefill (64-token batches) runs ggml's own dot kernels (ctransformers has no BLAS), so its
# rate also follows the single core: FLOP/s (2 × matrix weights, lm_head once, as `simulate`
# counts) as a fraction of threads × gemm_fp32_1t. `gemm_efficiency` is that rate over the
# measured all-thread numpy GEMM, the target's fp32 peak. ±20% run to run; same scaling by
# the q4_0 control as above for the singly-timed formats.
PREFILL_PER_CORE = {"f16": 0.13, "q8_0": 0.14, "q4_0": 0.14, "q4_1": 0.15, "q5_0": 0.115,
                    "q5_1": 0.105, "q4_k": 0.16, "q5_k": 0.11, "q6_k": 0.12, "f32": 0.13,
                    "q2_k": 0.16, "q3_k": 0.11}
DEFAULT_PREFILL_PER_CORE = 0.13
# Fixed costs per decode step on the reference (they scale with 1 / single-core speed):
# sampling over the vocabulary, graph build, thread start, Python/ctypes: the intercept; and
# ggml's barrier after each graph node, which the 2 threads spin at: 0.06 ms per layer.
REF_TOKEN_OVERHEAD = 0.2e-3
KERNELS_PER_LAYER = 35  # ggml graph nodes per llama layer in llama.cpp's graph (Sep 2023)
REF_NODE_OVERHEAD = 0.06e-3 / KERNELS_PER_LAYER


# ---- BLAS threads ----------------------------------------------------------------------------

def _openblas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """set/get thread-count functions of the OpenBLAS numpy loaded (found in /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(libs):
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                return setter, getter
    return None


@contextmanager
def blas_threads(n: int) -> Iterator[bool]:
    """Run numpy's BLAS on `n` threads inside the block; yields False if it cannot be set."""
    fns = _openblas()
    if fns is None:
        yield False
        return
    setter, getter = fns
    old = getter()
    setter(n)
    try:
        yield True
    finally:
        setter(old)


# ---- timing ----------------------------------------------------------------------------------

def _times(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm: page faults, thread start
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _rate(work: float, times: list[float]) -> tuple[float, float]:
    """(best, median) work per second: best is the machine, median what a run meets."""
    return work / min(times), work / statistics.median(times)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


# ---- memory ----------------------------------------------------------------------------------

def _gemv_bandwidth(nbytes: int, repeats: int) -> tuple[float, float]:
    rows = max(1, nbytes // (4 * GEMV_COLS))
    m = np.ones((rows, GEMV_COLS), np.float32)
    v = np.ones(GEMV_COLS, np.float32)
    return _rate(m.nbytes, _times(lambda: m.dot(v), repeats))


def measure_bandwidth(quick: bool = True, threads: int | None = None) -> float:
    """DRAM bytes/s a GEMV stream gets now (median of runs): re-measured before each model by
    the fidelity benchmark because the shared machine's bandwidth drifts minute to minute."""
    nbytes, repeats = (256 * MIB, 9) if quick else (_stream_bytes(), 15)
    with blas_threads(threads or default_threads()):
        return _gemv_bandwidth(nbytes, repeats)[1]


def _llc_bytes() -> int:
    """Largest cache the kernel reports (0 if unknown)."""
    sizes = []
    for idx in range(8):
        p = f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size"
        try:
            with open(p, encoding="ascii") as f:
                s = f.read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": MIB, "G": 1 << 30}.get(s[-1:], 1)
        sizes.append(int(s.rstrip("KMG") or 0) * mult)
    return max(sizes, default=0)


def _stream_bytes() -> int:
    """4× the LLC, within 256 MiB … 1 GiB (VM-reported LLCs can be the host's whole L3), and
    at most 1/16 of DRAM: the copy test holds three such arrays at once."""
    dram = _dram_bytes() or float(1 << 34)
    return int(min(max(4 * _llc_bytes(), 256 * MIB), 1024 * MIB, dram // 16))


def _memory(quick: bool, threads: int) -> dict[str, float]:
    nbytes = 256 * MIB if quick else _stream_bytes()
    repeats = 5 if quick else 11
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    out: dict[str, float] = {"stream_bytes": float(nbytes)}
    with blas_threads(threads):
        out["gemv"], out["gemv_median"] = _gemv_bandwidth(nbytes, repeats)
        out["dot"], _ = _rate(a.nbytes, _times(lambda: a.dot(a), repeats))
    out["copy"], _ = _rate(2 * a.nbytes, _times(lambda: np.copyto(b, a), repeats))
    out["sum_1t"], _ = _rate(a.nbytes, _times(a.sum, repeats))
    with blas_threads(1):
        out["gemv_1t"], _ = _gemv_bandwidth(nbytes // 2, repeats)
    return out


def _square(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)


def gemm_rate(n: int, threads: int, repeats: int) -> float | None:
    """Best fp32 GEMM FLOP/s of n×n matrices on `threads` BLAS threads (None: the thread count
    cannot be set, so a 1-thread number would be a many-thread one)."""
    a = _square(n)
    with blas_threads(threads) as ok:
        if not ok and threads == 1:
            return None
        return _rate(2 * n**3, _times(lambda: a @ a, repeats))[0]


def _gemm(quick: bool, threads: int) -> dict[str, float]:
    n = 1024 if quick else 2048
    repeats = 5 if quick else 9
    all_threads = gemm_rate(n, threads, repeats) or 0.0
    one = gemm_rate(n, 1, repeats)
    return {"n": float(n), "fp32": all_threads,
            "fp32_1t": one if one is not None else all_threads / threads}


# ---- disk ------------------------------------------------------------------------------------

def _fill(fd: int, nbytes: int) -> None:
    """Incompressible, non-repeating data (a storage layer could dedupe zeros or repeats)."""
    rng = np.random.default_rng()
    for _ in range(0, nbytes, 4 * MIB):
        os.write(fd, rng.bytes(4 * MIB))
    os.fsync(fd)


def _open_uncached(path: str) -> tuple[int, bool]:
    """(fd, True) opened with O_DIRECT when the filesystem takes it, else a plain fd whose
    cached pages were dropped."""
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, os.O_RDONLY | direct), True
        except OSError:
            pass
    fd = os.open(path, os.O_RDONLY)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd, False


def _random_reads(path: str, chunk: int, size: int, budget_s: float) -> tuple[float, bool]:
    """(bytes/s, direct) of queue-depth-1 reads of distinct random `chunk`-aligned blocks."""
    fd, direct = _open_uncached(path)
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    try:
        order = np.random.default_rng().permutation(size // chunk)
        done, t0 = 0, time.perf_counter()
        for block in order:
            if os.preadv(fd, [buf], int(block) * chunk) != chunk:
                raise OSError(f"short read of {path}")
            done += 1
            if time.perf_counter() - t0 > budget_s and done >= 4:
                break
        return done * chunk / (time.perf_counter() - t0), direct
    finally:
        os.close(fd)
        buf.close()


def _disk(directory: str, quick: bool) -> dict[str, Any]:
    size = (32 if quick else 256) * MIB
    budget = 0.1 if quick else 0.4
    fd, path = tempfile.mkstemp(prefix=".memstack-hwbench-", dir=directory)
    try:
        _fill(fd, size)
        os.close(fd)
        fd = -1
        curve, direct = [], True
        for chunk in CHUNKS:
            rate, d = _random_reads(path, chunk, size, budget)
            curve.append((float(chunk), rate))
            direct &= d
        return {"curve": tuple(curve), "direct": direct, "file_bytes": size}
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


# ---- capacities and names --------------------------------------------------------------------

def _dram_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


# ---- formats ---------------------------------------------------------------------------------

def format_costs(gemm_1t: float, threads: int, gemm_all: float) -> dict[str, FormatCost]:
    """Per-format decode rate and prefill efficiency from the single-core GEMM rate (see
    OPS_PER_WEIGHT and PREFILL_PER_CORE); `gemm_all` is the fp32 peak they are relative to."""
    def cost(base: str, ops: float) -> FormatCost:
        prefill = PREFILL_PER_CORE.get(base, DEFAULT_PREFILL_PER_CORE) * threads * gemm_1t
        return FormatCost(gemv_rate=threads * gemm_1t / ops,
                          gemm_efficiency=min(1.0, prefill / gemm_all) if gemm_all > 0 else 1.0)

    out = {fmt: cost(fmt, ops) for fmt, ops in OPS_PER_WEIGHT.items()}
    out.update({mix: out[base] for mix, base in MIXES.items()})
    out["*"] = cost("*", DEFAULT_OPS)
    return out


def overheads(gemm_1t: float) -> tuple[float, float]:
    """(token_overhead, launch_overhead) scaled from the reference by single-core speed."""
    scale = REF_GEMM_1T / gemm_1t if gemm_1t > 0 else 1.0
    return REF_TOKEN_OVERHEAD * scale, REF_NODE_OVERHEAD * scale


# ---- the target ------------------------------------------------------------------------------

def measure(quick: bool = False, threads: int | None = None,
            directory: str | None = None) -> Target:
    """Measure memory, compute and disk of this machine (quick: ~2 s; full: ~15 s)."""
    threads = threads or default_threads()
    directory = directory or tempfile.gettempdir()
    gemm = _gemm(quick, threads)
    bursts = [gemm["fp32_1t"]]
    mem = _memory(quick, threads)
    bursts.append(gemm_rate(1024, 1, 5) or 0.0)
    disk = _disk(directory, quick)
    # more single-core bursts: the reference VM's single-core GEMM rate flips between two
    # levels (~125 and ~165 GFLOP/s) for seconds at a time while the AVX2 decode kernels do
    # not; the best of several bursts spread over the measurement finds the core's real rate
    for _ in range(4):
        bursts.append(gemm_rate(1024, 1, 5) or 0.0)
        time.sleep(0.2)
    gemm["fp32_1t"] = max(bursts)
    curve = disk["curve"]
    small_latency = curve[0][0] / curve[0][1]
    flash_bw = max(r for _, r in curve)
    token_overhead, launch_overhead = overheads(gemm["fp32_1t"])
    tiers = (
        Tier("dram", _dram_bytes(), mem["gemv"], efficiency=1.0),
        Tier("flash", float(shutil.disk_usage(directory).free), flash_bw, efficiency=1.0,
             latency=small_latency, chunk_curve=curve),
    )
    return Target(
        name="this-machine", kind="cpu", description=f"{_cpu_name()}, {threads} threads "
        "(measured by memstack bench hw)",
        compute={"fp32": gemm["fp32"], "fp16": gemm["fp32"], "bf16": gemm["fp32"]},
        tiers=tiers,
        links=(Link("flash", "dram", flash_bw, small_latency, "disk"),),
        compute_efficiency=1.0, launch_overhead=launch_overhead,
        kernels_per_layer=KERNELS_PER_LAYER, token_overhead=token_overhead,
        formats=format_costs(gemm["fp32_1t"], threads, gemm["fp32"]), threads=threads,
        sources=_sources(quick, threads, mem, gemm, disk, directory))


def _sources(quick: bool, threads: int, mem: dict[str, float], gemm: dict[str, float],
             disk: dict[str, Any], directory: str) -> tuple[str, ...]:
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    g = 1e9
    return (
        f"measured {when} by memstack bench hw ({'quick' if quick else 'full'}), numpy "
        f"{np.__version__}, {threads} threads",
        f"dram: fp32 GEMV over {mem['stream_bytes'] / MIB:.0f} MiB, best {mem['gemv'] / g:.1f} "
        f"GB/s (median {mem['gemv_median'] / g:.1f}); 1-D dot {mem['dot'] / g:.1f}, copy "
        f"(read+write) {mem['copy'] / g:.1f}, 1-thread sum {mem['sum_1t'] / g:.1f}, 1-thread "
        f"GEMV {mem['gemv_1t'] / g:.1f} GB/s; capacity from sysconf",
        f"compute: fp32 GEMM {gemm['n']:.0f}² {gemm['fp32'] / g:.0f} GFLOP/s on {threads} "
        f"threads, {gemm['fp32_1t'] / g:.0f} on 1; fp16/bf16 = fp32 (CPU kernels widen)",
        f"flash: QD1 random reads of distinct blocks of a {disk['file_bytes'] / MIB:.0f} MiB file "
        f"in {directory}, {'O_DIRECT' if disk['direct'] else 'after POSIX_FADV_DONTNEED'}; "
        "capacity = free space there",
        "formats: gemv_rate = threads × fp32 GEMM 1-thread / OPS_PER_WEIGHT "
        f"({', '.join(f'{k} {v:g}' for k, v in OPS_PER_WEIGHT.items())}); overheads scaled "
        f"from the reference by {REF_GEMM_1T / 1e9:.0f} GFLOP/s ÷ measured 1-thread GEMM",
    )
