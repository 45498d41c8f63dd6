"""GGML block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4), byte-identical to ggml's quantizer.

Each function takes float32 blocks of shape (n, 32) and returns (n, type_size) uint8. The
arithmetic is the reference's (same float32 operations in the same order), only reorganised:
two reductions instead of abs+argmax, one lookup instead of 16 error columns, no concatenate.
Blocks where the cheap path could disagree with the reference (a tie between +max and -max,
all-zero blocks with signed zeros, MXFP4 scales near the subnormal range) take the reference
formula, so the output is the same bytes for every finite input.
"""

from __future__ import annotations

import numpy as np

QK = 32
TYPE_SIZE = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "mxfp4": 17}
GGML_TYPE = {"q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "mxfp4": 39}
_HALF_DOWN_BITS = np.uint32(0x3EFFFFFF)  # the float32 just below 0.5
_SIGN = np.uint32(0x80000000)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d with 0 where d is 0, as the reference computes `id`."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32, copy=False)


def _copysign_half(y: np.ndarray) -> np.ndarray:
    """±(0.5 - ulp) with y's sign, by bit operations (np.copysign is 3x slower).

    trunc(y + that) is round-half-away-from-zero for every float32 y: the ulp keeps
    0.49999997 from rounding up, and is below half an ulp for |y| >= 1.
    """
    s = y.view(np.uint32) & _SIGN
    s |= _HALF_DOWN_BITS
    return s.view(np.float32)


def _columns(b: np.ndarray) -> np.ndarray:
    """Blocks as rows (n, 32) → (16, 2n): row r holds elements 2r and 2r+1 of every block,
    side by side. Reductions and arithmetic become long contiguous vector operations, and
    moving 8-byte pairs makes the transpose twice as fast as moving single floats."""
    n = b.shape[0]
    return np.ascontiguousarray(b.view(np.uint64).T).view(np.float32).reshape(16, 2 * n)


def _per_block(v: np.ndarray) -> np.ndarray:
    """A per-block vector spread over the two columns each block occupies."""
    return np.repeat(v, 2)


def _extremes(bt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mx = bt.max(axis=0)
    mn = bt.min(axis=0)
    return np.maximum(mx[0::2], mx[1::2]), np.minimum(mn[0::2], mn[1::2])


def _absmax(mx: np.ndarray, mn: np.ndarray) -> np.ndarray:
    out = np.maximum(mx, -mn)
    out += np.float32(0)  # -0.0 → +0.0, as abs() then max() gives
    return out


def _signed_absmax(b: np.ndarray, mx: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """The element of largest magnitude per block, the first one on ties (as argmax picks)."""
    out = np.where(mx >= -mn, mx, mn)
    tie = mx == -mn  # +a and -a both present (or the block is all zeros): order decides
    if tie.any():
        rows = b[tie]
        idx = np.abs(rows).argmax(axis=1)
        out[tie] = rows[np.arange(rows.shape[0]), idx]
    return out


def _to_blocks(q: np.ndarray, out: np.ndarray) -> None:
    """(rows, 2n) uint8 in the paired layout → out (n, 2*rows): byte 2r+p of block i is
    q[r, 2i+p], so viewing pairs as uint16 makes it one plain transpose."""
    out.view(np.uint16)[:] = q.view(np.uint16).T


def _pack_nibbles(q: np.ndarray, out: np.ndarray) -> None:
    """ggml's nibble order: byte j holds element j (low) and element j+16 (high)."""
    packed = q[8:] << np.uint8(4)
    packed |= q[:8] & np.uint8(0x0F)
    _to_blocks(packed, out)


def _half_bytes(x: np.ndarray, out: np.ndarray) -> None:
    out[:] = x.astype(np.float16).view(np.uint8).reshape(-1, 2)


def q8_0(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    out = np.empty((n, 34), np.uint8)
    bt = _columns(b)
    d = _absmax(*_extremes(bt)) / np.float32(127)
    y = bt * _per_block(_inverse(d))
    y += _copysign_half(y)  # round half away from zero, exact for every float32
    _to_blocks(y.astype(np.int8).view(np.uint8), out[:, 2:])
    _half_bytes(d, out[:, :2])
    return out


_TINY = np.float32(np.finfo(np.float32).tiny)


def _clip_cast(y: np.ndarray, levels: int, d: np.ndarray, redo) -> np.ndarray:
    """min(y, levels-1) then uint8: clipping in float first is SIMD (uint8 minimum is not) and
    equal to the reference's cast-then-clip while 0 <= y. A subnormal scale can push y out of
    range or to inf; those blocks are recomputed the reference's way."""
    np.minimum(y, np.float32(levels - 1), out=y)
    q = y.astype(np.uint8)
    odd = (np.abs(d) < _TINY) & (d != 0)
    if odd.any():
        cols = _per_block(odd)
        with np.errstate(invalid="ignore", over="ignore"):
            q[:, cols] = np.minimum(redo(cols).astype(np.uint8), np.uint8(levels - 1))
    return q


def _q_sym(b: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Shared part of Q4_0/Q5_0: d = max/-(levels/2), q = trunc(x/d + levels/2 + 0.5), clipped."""
    half = levels // 2
    bt = _columns(b)
    d = _signed_absmax(b, *_extremes(bt)) / np.float32(-half)
    inv = _per_block(_inverse(d))
    y = bt * inv
    y += np.float32(half + 0.5)
    return d, _clip_cast(y, levels, d, lambda cols: bt[:, cols] * inv[cols] + np.float32(
        half + 0.5))


def _q_asym(b: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shared part of Q4_1/Q5_1: d = (max-min)/(levels-1), q = trunc((x-min)/d + 0.5)."""
    bt = _columns(b)
    mx, mn = _extremes(bt)
    zero = (mx == 0) | (mn == 0)  # which signed zero max()/min() return depends on order:
    if zero.any():                # take the reference's own reductions for those blocks
        mx[zero] = b[zero].max(axis=-1)
        mn[zero] = b[zero].min(axis=-1)
    d = (mx - mn) / np.float32(levels - 1)
    inv = _per_block(_inverse(d))
    mn2 = _per_block(mn)
    y = bt - mn2
    y *= inv
    y += np.float32(0.5)
    return d, mn, _clip_cast(y, levels, d, lambda cols: (bt[:, cols] - mn2[cols]) * inv[cols]
                             + np.float32(0.5))


def q4_0(b: np.ndarray) -> np.ndarray:
    out = np.empty((b.shape[0], 18), np.uint8)
    d, q = _q_sym(b, 16)
    _half_bytes(d, out[:, :2])
    _pack_nibbles(q, out[:, 2:])
    return out


def q4_1(b: np.ndarray) -> np.ndarray:
    out = np.empty((b.shape[0], 20), np.uint8)
    d, m, q = _q_asym(b, 16)
    _half_bytes(d, out[:, :2])
    _half_bytes(m, out[:, 2:4])
    _pack_nibbles(q, out[:, 4:])
    return out


_PAIR_SHIFTS = (np.arange(4, dtype=np.uint8) * 2).reshape(1, 4, 1)


def _high_bits(q: np.ndarray, out: np.ndarray) -> None:
    """Bit 4 of each of the 32 values, little-endian in a uint32 (ggml's qh): element
    j = 2r+p sits in row r, column parity p, and lands in bit j."""
    h = (q >> np.uint8(4)).reshape(4, 4, -1)  # (byte k, row r within it, 2n)
    h <<= _PAIR_SHIFTS
    h = np.bitwise_or.reduce(h, axis=1)  # (4, 2n): even columns hold bits 2r, odd 2r+1
    packed = h[:, 0::2] | (h[:, 1::2] << np.uint8(1))
    out[:] = packed.T


def q5_0(b: np.ndarray) -> np.ndarray:
    out = np.empty((b.shape[0], 22), np.uint8)
    d, q = _q_sym(b, 32)
    _half_bytes(d, out[:, :2])
    _high_bits(q, out[:, 2:6])
    _pack_nibbles(q, out[:, 6:])
    return out


def q5_1(b: np.ndarray) -> np.ndarray:
    out = np.empty((b.shape[0], 24), np.uint8)
    d, m, q = _q_asym(b, 32)
    _half_bytes(d, out[:, :2])
    _half_bytes(m, out[:, 2:4])
    _high_bits(q, out[:, 4:8])
    _pack_nibbles(q, out[:, 8:])
    return out


# MXFP4: E2M1 element values doubled, as ggml stores them; the scale byte is E8M0 (bias 127)
# and ggml multiplies by half of 2^(e-127).
MXFP4_VALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)


def _mxfp4_lut() -> np.ndarray:
    """Magnitude code for t = |x|/d by u = ceil(2t): nearest grid value, ties to the smaller.

    All midpoints between grid values are multiples of 0.5, so each interval ((u-1)/2, u/2]
    has one answer, and the midpoint itself (its right end) goes to the lower value, which is
    what argmin over the reference's 16 error columns picks.
    """
    grid = MXFP4_VALUES[:8].astype(np.float64)
    lut = np.zeros(34, np.uint8)
    for u in range(1, 34):
        lut[u] = int(np.argmin(np.abs(grid - (u / 2 - 0.25))))
    return lut


_MXFP4_LUT = _mxfp4_lut()


def e8m0_to_half(e: np.ndarray) -> np.ndarray:
    """ggml_e8m0_to_fp32_half: 2^(e-128) as float32 (subnormal for e < 2)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _mxfp4_reference_codes(b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The reference's 16-column argmin, for the few blocks the fast path cannot take."""
    with np.errstate(over="ignore", invalid="ignore"):
        errs = np.abs(d.reshape(-1, 1, 1) * MXFP4_VALUES.astype(np.float32)
                      - b.reshape(b.shape[0], QK, 1))
    return np.argmin(errs, axis=-1).astype(np.uint8)


def mxfp4(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    out = np.empty((n, 17), np.uint8)
    bt = _columns(b)
    amax = _absmax(*_extremes(bt)).reshape(n, 1)
    with np.errstate(divide="ignore"):
        e = np.where(amax > 0, np.floor(np.log2(amax)) - 2 + 127, 0).astype(np.uint8)[:, 0]
    d = e8m0_to_half(e)
    out[:, 0] = e
    t = np.abs(bt)
    t *= _per_block(_inverse(d) * np.float32(2))  # exact: 2/d is a power of two
    np.ceil(t, out=t)
    np.minimum(t, np.float32(33), out=t)
    q = _MXFP4_LUT[t.astype(np.uint8)]
    q |= (bt < 0).view(np.uint8) << np.uint8(3)
    q[q == 8] = 0  # a negative value that rounds to zero is code 0, as in the reference
    # near the subnormal range products may round, near float32 max the reference's d*k
    # overflows to inf: both take the reference formula
    odd = (e < 24) | (e > 250)
    if odd.any():
        ref = _mxfp4_reference_codes(b[odd], d[odd])  # (k, 32) → paired layout (16, 2k)
        q[:, _per_block(odd)] = ref.reshape(-1, 16, 2).transpose(1, 0, 2).reshape(16, -1)
    _pack_nibbles(q, out[:, 1:])
    return out


QUANTIZERS = {"q8_0": q8_0, "q4_0": q4_0, "q4_1": q4_1, "q5_0": q5_0, "q5_1": q5_1,
              "mxfp4": mxfp4}


# --- dequantization (for error reports and for reading GGUF) -------------------------------

def _nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _fp16(col: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(col).view(np.float16).astype(np.float32)


def _qh_bits(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


def dequantize(kind: str, blocks: np.ndarray) -> np.ndarray:
    """(n, type_size) uint8 → (n, 32) float32, the way ggml's dequantize_row_* computes it."""
    b = blocks
    if kind == "q8_0":
        return _fp16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)
    if kind == "q4_0":
        q = _nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
        return _fp16(b[:, :2]) * q.astype(np.float32)
    if kind == "q4_1":
        return _fp16(b[:, :2]) * _nibbles(b[:, 4:]).astype(np.float32) + _fp16(b[:, 2:4])
    if kind == "q5_0":
        q = (_nibbles(b[:, 6:]) | _qh_bits(b[:, 2:6])).astype(np.int8) - np.int8(16)
        return _fp16(b[:, :2]) * q.astype(np.float32)
    if kind == "q5_1":
        q = _nibbles(b[:, 8:]) | _qh_bits(b[:, 4:8])
        return _fp16(b[:, :2]) * q.astype(np.float32) + _fp16(b[:, 2:4])
    if kind == "mxfp4":
        vals = MXFP4_VALUES.astype(np.float32)[_nibbles(b[:, 1:])]
        return e8m0_to_half(b[:, 0]).reshape(-1, 1) * vals
    raise KeyError(kind)
