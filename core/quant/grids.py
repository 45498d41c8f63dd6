"""Value grids of small number formats (OCP minifloats, NF4, BitMoD) and rounding to them."""

from __future__ import annotations

from functools import cache

import numpy as np

# (exponent bits, mantissa bits, bias, has IEEE inf/NaN codes, has one NaN code at the top)
MINIFLOATS = {
    "fp4": (2, 1, 1, False, False),   # E2M1, max 6
    "fp6": (2, 3, 1, False, False),   # E2M3, max 7.5
    "fp6e3m2": (3, 2, 3, False, False),  # E3M2, max 28
    "fp8": (4, 3, 7, False, True),    # E4M3 (OCP "FN"), max 448
    "fp8e5m2": (5, 2, 15, True, False),  # E5M2, max 57344
}

# bitsandbytes' NF4 code table (normal-float quantiles, Dettmers et al. 2023)
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)


@cache
def minifloat_magnitudes(fmt: str) -> np.ndarray:
    """Non-negative values by magnitude code (code = exponent field << m | mantissa)."""
    e, m, bias, ieee, top_nan = MINIFLOATS[fmt]
    codes = np.arange(1 << (e + m))
    exp = codes >> m
    man = codes & ((1 << m) - 1)
    vals = np.where(exp == 0, man / (1 << m) * 2.0 ** (1 - bias),
                    (1 + man / (1 << m)) * 2.0 ** (exp - bias))
    if ieee:
        vals = vals[exp < (1 << e) - 1]
    elif top_nan:
        vals = vals[:-1]
    return vals.astype(np.float32)


def emax(fmt: str) -> int:
    """Exponent of the largest normal value (OCP MX's emax_elem)."""
    return int(np.floor(np.log2(minifloat_magnitudes(fmt)[-1])))


def round_to_magnitudes(a: np.ndarray, fmt: str) -> np.ndarray:
    """Magnitude code of the nearest value of minifloat `fmt` for a >= 0: round to nearest,
    ties to even, saturating at the largest finite value.

    Computed, not searched: with e = max(floor(log2 a), emin) the representable neighbours
    are multiples of 2^(e - m), so n = rint(a / 2^(e-m)) (numpy's rint is ties-to-even on the
    mantissa) and the code is n + (e - emin) << m; a carry past the top mantissa lands on
    the next exponent's code by itself.
    """
    _, m, bias, *_ = MINIFLOATS[fmt]
    emin = 1 - bias
    _, ex = np.frexp(a)
    e = np.where(a > 0, np.maximum(ex.astype(np.int32) - 1, emin), emin)  # frexp(0) is 0
    n = np.rint(np.ldexp(a.astype(np.float32), m - e))
    code = n.astype(np.int32) + ((e - emin) << m)
    np.minimum(code, minifloat_magnitudes(fmt).size - 1, out=code)
    return code.astype(np.uint8)


def nearest(v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the nearest value of an ascending grid (ties to the lower).

    Counting the midpoints below v is a handful of SIMD compares for the 8- and 16-value
    grids used here, several times faster than np.searchsorted's scalar binary search.
    """
    mid = (grid[1:] + grid[:-1]) * np.float32(0.5)
    if mid.size > 32:
        return np.searchsorted(mid, v, side="left").astype(np.uint8)
    idx = np.zeros(v.shape, np.uint8)
    for m in mid:
        idx += v > m
    return idx


def _e2m1() -> list[float]:
    pos = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    return sorted(set(pos + [-p for p in pos]))


def _fp3() -> list[float]:
    pos = [0.0, 1.0, 2.0, 4.0]
    return sorted(set(pos + [-p for p in pos]))


@cache
def bitmod_grids(bits: int) -> tuple[np.ndarray, ...]:
    """BitMoD's datatypes: a small float grid whose redundant -0 becomes one extra value,
    for resolution (ER: ±5 for FP4, ±3 for FP3) or asymmetry (EA: ±8 / ±6)."""
    base, er, ea = (_e2m1(), 5.0, 8.0) if bits == 4 else (_fp3(), 3.0, 6.0)
    grids = [sorted(base + [x]) for x in (er, -er, ea, -ea)]
    return tuple(np.array(g, np.float32) for g in grids)


BITMOD_NAMES = ("er+", "er-", "ea+", "ea-")
