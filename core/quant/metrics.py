"""Quantization error: RMSE, SNR, max error and cosine of W, and optionally of X·Wᵀ.

Accumulated over row chunks in float64, so a large tensor never needs a second full copy,
and the activation-aware error (what accuracy follows) costs one matmul per chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memstack.core.quant.parallel import as_f32


@dataclass
class ErrorSums:
    n: int = 0
    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    approx: float = 0.0
    max_abs: float = 0.0
    act_signal: float = 0.0
    act_noise: float = 0.0
    act_n: int = 0

    def add(self, w: np.ndarray, w_hat: np.ndarray, calib: np.ndarray | None) -> None:
        w = w.astype(np.float64, copy=False)
        diff = w - w_hat
        self.n += w.size
        self.signal += float(np.einsum("ij,ij->", w, w))
        self.noise += float(np.einsum("ij,ij->", diff, diff))
        self.dot += float(np.einsum("ij,ij->", w, w_hat))
        self.approx += float(np.einsum("ij,ij->", w_hat, w_hat, dtype=np.float64))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
        if calib is not None:
            y = calib @ w.T
            dy = calib @ diff.T
            self.act_signal += float(np.einsum("ij,ij->", y, y))
            self.act_noise += float(np.einsum("ij,ij->", dy, dy))
            self.act_n += y.size

    def merge(self, other: ErrorSums) -> None:
        for name in ("n", "signal", "noise", "dot", "approx", "act_signal", "act_noise",
                     "act_n"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_abs = max(self.max_abs, other.max_abs)

    def report(self) -> dict:
        """Plain JSON numbers: a value that is not finite (an overflowed reconstruction) is
        None, and a lossless tensor says so instead of an infinite SNR."""
        with np.errstate(all="ignore"):
            cosine = (self.dot / math.sqrt(self.signal * self.approx)
                      if self.signal > 0 and self.approx > 0 else
                      (1.0 if self.signal == self.approx else 0.0))
        out = {
            "rmse": _finite(math.sqrt(self.noise / self.n) if self.n else 0.0),
            "snr_db": _db(self.signal, self.noise),
            "max_abs": _finite(self.max_abs),
            "cosine": _finite(cosine),
        }
        if self.noise == 0:
            out["lossless"] = True
        if self.act_n:
            out["act_rmse"] = _finite(math.sqrt(self.act_noise / self.act_n))
            out["act_snr_db"] = _db(self.act_signal, self.act_noise)
        return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _db(signal: float, noise: float) -> float | None:
    """SNR in dB; None where it is not a number JSON can carry: no error at all (lossless),
    or an overflowed (inf) error."""
    if noise <= 0 or not math.isfinite(noise) or not math.isfinite(signal):
        return None
    if signal <= 0:
        return None
    return 10 * math.log10(signal / noise)


def error_sums(w: np.ndarray, w_hat: np.ndarray, *, bf16: bool = False,
               calib: np.ndarray | None = None, rows_per_chunk: int = 0) -> ErrorSums:
    """Error of w_hat (float32, rows × cols) against the source rows w (any float dtype)."""
    sums = ErrorSums()
    w = w.reshape(-1, w.shape[-1]) if w.ndim != 2 else w
    step = rows_per_chunk or max(1, (1 << 18) // max(w.shape[1], 1))
    cal = calib.astype(np.float64) if calib is not None else None
    for start in range(0, w.shape[0], step):
        sums.add(as_f32(w[start:start + step], bf16), w_hat[start:start + step], cal)
    return sums
