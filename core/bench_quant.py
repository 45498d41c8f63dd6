"""`memstack bench quantize`: speed and error of every scheme, beside gguf's reference quantizer.

Two matrices shaped like a transformer weight: N(0, 0.02²) ("plain"), and the same with 16
random input columns (the last axis, which blocks run along) scaled ×25 ("outlier"), the case
outlier-aware schemes are for. Throughput is MB (10^6 bytes) of float32 input per second, the
median of `repeats` timed runs after one untimed warm-up; memstack, its single-threaded run and
the reference take turns inside each repeat so a busy machine slows them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from memstack.core.errors import ConfigError
from memstack.core.quant.metrics import error_sums
from memstack.core.quant.parallel import default_threads
from memstack.core.quant.schemes import GgmlScheme, Scheme, parse_scheme

GGML_SCHEMES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mx:fp4")
OTHER_SCHEMES = ("nf4", "nf4:dq", "mx:fp6", "mx:fp8", "mx:int8", "bfp:4", "bfp:4:outlier",
                 "bfp:8:outlier", "mixed:4", "mixed:3", "split:q4_0", "split:q5_0")
DEFAULT_SCHEMES = GGML_SCHEMES + OTHER_SCHEMES
# gguf's MXFP4 quantizer does ~80 MB/s (16 error columns per element): it is timed on this many
# rows so a run stays short; its bytes are still compared on the whole matrix
REFERENCE_ROWS = {"mx:fp4": 1024}
SIGMA = 0.02
OUTLIER_COLUMNS = 16
OUTLIER_GAIN = 25.0
WARMUP_ROWS = 64
ACCURACY_METRICS = ("bpw", "snr_db", "rmse", "cosine")


def bench_record(scheme: str, matrix: str, metric: str, value: float, **extra) -> dict:
    return {"v": 1, "kind": "bench", "bench": "quantize", "scheme": scheme, "matrix": matrix,
            "metric": metric, "value": round(float(value), 6), **extra}


def test_matrices(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The plain matrix and its outlier twin (same weights, 16 input columns ×25)."""
    rng = np.random.default_rng(seed)
    plain = rng.standard_normal((size, size), dtype=np.float32)
    plain *= np.float32(SIGMA)
    outlier = plain.copy()
    cols = rng.choice(size, min(OUTLIER_COLUMNS, size), replace=False)
    outlier[:, cols] *= np.float32(OUTLIER_GAIN)
    return {"plain": plain, "outlier": outlier}


Reference = Callable[[np.ndarray], np.ndarray]


def gguf_reference(scheme: Scheme) -> Reference | None:
    """gguf.quants.quantize for this GGML type, or None when gguf, the type or its quantizer
    (K-quants: gguf only dequantizes them) is missing."""
    if not isinstance(scheme, GgmlScheme) or scheme.ggml_type is None:
        return None
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        qtype = GGMLQuantizationType(scheme.ggml_type)
        quantize(np.zeros((1, 256), np.float32), qtype)
    except (ImportError, ValueError, KeyError, NotImplementedError):
        return None
    return lambda w: quantize(w, qtype)


def gguf_available() -> bool:
    return gguf_reference(parse_scheme("q8_0")) is not None


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _check(specs: Iterable[str], size: int) -> list[Scheme]:
    schemes = [parse_scheme(s) for s in specs]
    if not schemes:
        raise ConfigError("no schemes to measure")
    bad = [s.spec for s in schemes if not s.fits(size)]
    if bad:
        raise ConfigError(f"--size {size} is not a multiple of the block of {', '.join(bad)} "
                          "(use a multiple of 128)")
    return schemes


def bench_quantize(size: int = 4096, schemes: Iterable[str] = DEFAULT_SCHEMES,
                   repeats: int = 3, threads: int = 0, seed: int = 0) -> Iterator[dict]:
    """Per scheme and matrix: bits per weight, error, memstack's MB/s; for GGML types also
    MB/s with one thread, the gguf reference's MB/s, the ratio and byte identity."""
    checked = _check(schemes, size)
    if repeats < 1:
        raise ConfigError("repeats must be at least 1")
    nthreads = threads or default_threads()
    mats = test_matrices(size, seed)
    for scheme in checked:
        ref = gguf_reference(scheme)
        for name, w in mats.items():
            yield from _one(scheme, name, w, ref, repeats, nthreads)


def _one(scheme: Scheme, matrix: str, w: np.ndarray, ref: Reference | None, repeats: int,
         threads: int) -> Iterator[dict]:
    spec = scheme.spec
    ggml = isinstance(scheme, GgmlScheme)
    mb = w.nbytes / 1e6
    ref_rows = min(REFERENCE_ROWS.get(spec, w.shape[0]), w.shape[0])
    w_ref = w[:ref_rows]
    warm = w[:WARMUP_ROWS]
    scheme.quantize(warm, threads=threads)
    if ggml:
        scheme.quantize(warm, threads=1)
    if ref is not None:
        ref(warm)

    t_auto, t_one, t_ref = [], [], []
    q = ref_out = None
    for _ in range(repeats):
        dt, q = _timed(lambda: scheme.quantize(w, threads=threads))
        t_auto.append(dt)
        if ggml:
            t_one.append(_timed(lambda: scheme.quantize(w, threads=1))[0])
        if ref is not None:
            dt, ref_out = _timed(lambda: ref(w_ref))
            t_ref.append(dt)

    extra = {"size": w.shape[0], "threads": threads}
    rep = error_sums(w, scheme.dequantize(q)).report()
    yield bench_record(spec, matrix, "bpw", q.bpw, **extra)
    for metric in ACCURACY_METRICS[1:]:
        yield bench_record(spec, matrix, metric, rep[metric], **extra)
    rate = mb / float(np.median(t_auto))
    yield bench_record(spec, matrix, "mb_per_s", rate, repeats=repeats, **extra)
    if not ggml:
        return
    yield bench_record(spec, matrix, "mb_per_s_1t", mb / float(np.median(t_one)),
                       repeats=repeats, **extra)
    if ref is None:
        return
    ref_rate = w_ref.nbytes / 1e6 / float(np.median(t_ref))
    yield bench_record(spec, matrix, "gguf_mb_per_s", ref_rate, repeats=repeats,
                       rows=ref_rows, **extra)
    yield bench_record(spec, matrix, "ratio_vs_gguf", rate / ref_rate, **extra)
    if ref_rows < w.shape[0]:
        ref_out = ref(w)  # bytes compared on the whole matrix, untimed
    same = np.array_equal(np.asarray(ref_out).reshape(-1).view(np.uint8),
                          q.parts["blocks"].reshape(-1))
    yield bench_record(spec, matrix, "identical_bytes", 1.0 if same else 0.0, **extra)
