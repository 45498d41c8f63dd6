"""llama.cpp's K-quants (Q4_K, Q5_K, Q6_K): super-blocks of 256 with 6-/8-bit sub-block scales.

The scale search follows llama.cpp's reference quantizer (make_qkx2_quants for Q4_K/Q5_K,
make_qx_quants with x² weights for Q6_K), vectorised over all super-blocks at once: each search
step is one pass over the chunk instead of a C loop per sub-block. The byte layout is
llama.cpp's, checked with gguf's dequantizer and by loading the files in ctransformers;
sums run in a different order than the C code, so a rare near-tie may pick another scale than
llama.cpp would and the bytes are not promised identical to its quantizer.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
TYPE_SIZE = {"q4_k": 144, "q5_k": 176, "q6_k": 210}
GGML_TYPE = {"q4_k": 12, "q5_k": 13, "q6_k": 14}
GROUP_MAX_EPS = np.float32(1e-15)
F32 = np.float32


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of x (32, n) (sub-blocks as columns, so sums are fast row additions):
    the scale and the min (returned as -min >= 0) of the best of nstep+1 trial scales."""
    mn = np.minimum(x.min(axis=0), F32(0))
    mx = x.max(axis=0)
    span = mx - mn
    flat = span == 0
    safe = np.where(flat, F32(1), span)
    sum_w = w.sum(axis=0)
    sum_x = (w * x).sum(axis=0)
    xm = x - mn
    iscale = F32(nmax) / safe
    scale = F32(1) / iscale
    L = np.clip(np.rint(iscale * xm), 0, nmax)
    best = (w * (scale * L + mn - x) ** 2).sum(axis=0)
    for step in range(nstep + 1):
        isc = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / safe
        la = np.clip(np.rint(isc * xm), 0, nmax)
        wl = w * la
        sum_l = wl.sum(axis=0)
        sum_l2 = (wl * la).sum(axis=0)
        sum_xl = (wl * x).sum(axis=0)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = _div(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = _div(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, _div(sum_xl, sum_l2), this_scale)
        err = (w * (this_scale * la + this_min - x) ** 2).sum(axis=0)
        better = (D > 0) & (err < best)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, F32(0), scale)
    return scale.astype(F32), (-mn).astype(F32)


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of x (16, n): levels -nmax..nmax-1 (stored +nmax) and the scale, from an
    x²-weighted search over 19 trial scales (Q6_K)."""
    ax = np.abs(x)
    amax = ax.max(axis=0)
    idx = ax.argmax(axis=0)
    mx = x[idx, np.arange(x.shape[1])]
    zero = amax < GROUP_MAX_EPS
    safe = np.where(zero, F32(1), mx)
    w = x * x
    wx = w * x

    def levels(iscale: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(iscale * x), -nmax, nmax - 1)

    lv = levels(F32(-nmax) / safe)
    sumlx = (wx * lv).sum(axis=0)
    suml2 = (w * lv * lv).sum(axis=0)
    scale = _div(sumlx, suml2)
    best = scale * sumlx
    L = lv
    for step in [s for s in range(-9, 10) if s]:
        lv = levels(-(F32(nmax) + F32(0.1) * F32(step)) / safe)
        sumlx = (wx * lv).sum(axis=0)
        suml2 = (w * lv * lv).sum(axis=0)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better, lv, L)
        new_scale = _div(sumlx, suml2)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, new_scale * sumlx, best)
    L = np.where(zero, 0, L + nmax)
    return L.astype(np.uint8), np.where(zero, F32(0), scale).astype(F32)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins into llama.cpp's 12 bytes (get_scale_min_k4's inverse)."""
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4]
    out[:, 4:8] = lm[:, :4]
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:] >> 4) << 6
    return out


def _unpack_scales_k4(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ls = np.empty((sc.shape[0], 8), np.uint8)
    lm = np.empty((sc.shape[0], 8), np.uint8)
    ls[:, :4] = sc[:, 0:4] & 63
    lm[:, :4] = sc[:, 4:8] & 63
    ls[:, 4:] = (sc[:, 8:12] & 0xF) | ((sc[:, 0:4] >> 6) << 4)
    lm[:, 4:] = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
    return ls, lm


def _qk_asym(b: np.ndarray, nmax: int, rmin: float, nstep: int,
             width: int) -> tuple[np.ndarray, np.ndarray]:
    """Shared Q4_K/Q5_K: sub-block scale/min search, 6-bit quantized scales, final levels.

    Returns the output blocks with their common 16-byte head (d, dmin, packed scales)
    filled in, and the levels (nb, 256) for the caller to pack."""
    nb = b.shape[0]
    x = np.ascontiguousarray(b.reshape(nb * 8, 32).T)
    av = np.sqrt((x * x).sum(axis=0) / F32(32))
    w = av + np.abs(x)
    scales, mins = make_qkx2_quants(x, w, nmax, rmin, 0.1, nstep)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    max_scale = scales.max(axis=1)
    max_min = mins.max(axis=1)
    inv_s = _div(np.full_like(max_scale, 63), max_scale)
    inv_m = _div(np.full_like(max_min, 63), max_min)
    ls = np.minimum(np.rint(inv_s[:, None] * scales), 63).astype(np.uint8)
    lm = np.minimum(np.rint(inv_m[:, None] * mins), 63).astype(np.uint8)
    d16 = (max_scale / F32(63)).astype(np.float16)
    dmin16 = (max_min / F32(63)).astype(np.float16)
    d = d16.astype(F32)[:, None] * ls
    dm = dmin16.astype(F32)[:, None] * lm
    xs = b.reshape(nb, 8, 32)
    L = np.clip(np.rint(_div(xs + dm[..., None], np.broadcast_to(d[..., None], xs.shape))),
                0, nmax).astype(np.uint8)
    L = np.where((d == 0)[..., None], 0, L)
    out = np.empty((nb, width), np.uint8)
    out[:, 0:2] = d16.view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = _pack_scales_k4(ls, lm)
    return out, L.reshape(nb, QK_K)


def q4_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    out, L = _qk_asym(b, 15, -1.0, 20, 144)
    L4 = L.reshape(nb, 4, 2, 32)  # per 64 values: low nibbles the first 32, high the next 32
    out[:, 16:] = (L4[:, :, 0] | (L4[:, :, 1] << 4)).reshape(nb, 128)
    return out


def q5_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    out, L = _qk_asym(b, 31, -0.5, 15, 176)
    L4 = L.reshape(nb, 4, 2, 32)
    hi = (L4 >> 4) & 1  # (nb, 4, 2, 32): bit 2n of qh[j] for the first half, 2n+1 the second
    shifts = (np.arange(4, dtype=np.uint8)[:, None] * 2 + np.arange(2, dtype=np.uint8)[None, :])
    qh = np.bitwise_or.reduce(hi << shifts[None, :, :, None], axis=(1, 2))
    out[:, 16:48] = qh
    lo = L4 & 0xF
    out[:, 48:] = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(nb, 128)
    return out


def q6_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    L, scales = make_qx_quants(np.ascontiguousarray(b.reshape(nb * 16, 16).T), 32)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), idx]
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = _div(np.full_like(max_scale, -128), max_scale)
    d16 = np.where(empty, F32(0), _div(np.ones_like(iscale), iscale)).astype(np.float16)
    sc = np.minimum(np.rint(iscale[:, None] * scales), 127).astype(np.int8)
    d = d16.astype(F32)[:, None] * sc.astype(F32)
    xs = b.reshape(nb, 16, 16)
    lq = np.clip(np.rint(_div(xs, np.broadcast_to(d[..., None], xs.shape))), -32, 31) + 32
    L = np.where((d != 0)[..., None], lq, L).astype(np.uint8).reshape(nb, 2, 4, 32)
    out = np.zeros((nb, 210), np.uint8)
    ql = (L[:, :, 0:2] & 0xF) | ((L[:, :, 2:4] & 0xF) << 4)  # (nb, 2, 2, 32)
    out[:, 0:128] = ql.reshape(nb, 128)
    qh = np.bitwise_or.reduce((L >> 4) << (np.arange(4, dtype=np.uint8) * 2)[None, None, :, None],
                              axis=2)
    out[:, 128:192] = qh.reshape(nb, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d16.view(np.uint8).reshape(nb, 2)
    out[empty] = 0
    return out


QUANTIZERS = {"q4_k": q4_k, "q5_k": q5_k, "q6_k": q6_k}


def dequantize(kind: str, blocks: np.ndarray) -> np.ndarray:
    """(n, type_size) → (n, 256) float32, the layout's meaning written out independently."""
    nb = blocks.shape[0]
    if kind == "q6_k":
        ql = blocks[:, 0:128].reshape(nb, 2, 2, 32)
        qh = blocks[:, 128:192].reshape(nb, 2, 1, 32)
        lo = np.concatenate([ql & 0xF, ql >> 4], axis=2)  # (nb, 2, 4, 32)
        hi = (qh >> (np.arange(4, dtype=np.uint8) * 2)[None, None, :, None]) & 3
        q = (lo | (hi << 4)).astype(np.int16) - 32
        sc = blocks[:, 192:208].view(np.int8).astype(F32)
        d = blocks[:, 208:210].copy().view(np.float16).astype(F32)
        return (q.reshape(nb, 16, 16) * (d * sc)[..., None]).reshape(nb, QK_K)
    d = blocks[:, 0:2].copy().view(np.float16).astype(F32).reshape(nb)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(F32).reshape(nb)
    ls, lm = _unpack_scales_k4(blocks[:, 4:16])
    if kind == "q4_k":
        qs = blocks[:, 16:].reshape(nb, 4, 1, 32)
        q = np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(nb, 8, 32)
    else:
        qh = blocks[:, 16:48].reshape(nb, 1, 1, 32)
        qs = blocks[:, 48:].reshape(nb, 4, 1, 32)
        lo = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # (nb, 4, 2, 32)
        shifts = (np.arange(4, dtype=np.uint8)[:, None] * 2 + np.arange(2, dtype=np.uint8))
        hi = (qh >> shifts[None, :, :, None]) & 1
        q = (lo | (hi << 4)).reshape(nb, 8, 32)
    return (d[:, None, None] * ls[..., None] * q - (dmin[:, None] * lm)[..., None]).reshape(
        nb, QK_K)
