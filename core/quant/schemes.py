"""Quantization schemes by name: parse a spec, quantize a 2-D tensor, dequantize it back.

A tensor is quantized as rows × cols with blocks along the last axis (the input-feature axis of a
weight, the contiguous axis in GGUF), so every scheme's blocks stay inside one row. The result
holds named parts (the stored arrays), and bits counts every stored bit: codes, scales,
permutations and type ids, so bits per weight is what a file of these parts really costs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import ceil, log2

import numpy as np

from memstack.core.errors import ConfigError
from memstack.core.quant import bits, ggml, grids, kquants
from memstack.core.quant.parallel import (
    CHUNK_ELEMENTS,
    THREADED_CHUNK_ELEMENTS,
    as_f32,
    default_threads,
    map_blocks,
)


class NonFiniteError(ValueError):
    """A NaN or Inf in the input; carries the flat element index of the first one."""

    def __init__(self, index: int):
        self.index = index
        super().__init__(f"NaN or Inf at element {index}")


@dataclass
class QuantTensor:
    scheme: str
    shape: tuple[int, ...]
    parts: dict[str, np.ndarray]
    ggml_type: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def bits(self) -> int:
        return sum(int(p.nbytes) * 8 for p in self.parts.values())

    @property
    def bpw(self) -> float:
        n = int(np.prod(self.shape)) or 1
        return self.bits / n


def _check_finite(chunk: np.ndarray, first: int, width: int) -> None:
    if not np.isfinite(chunk).all():
        bad = int(np.flatnonzero(~np.isfinite(chunk.reshape(-1)))[0])
        raise NonFiniteError(first * width + bad)


class Scheme(ABC):
    """Base: a name, the row multiple it needs, and quantize/dequantize of rows × cols."""

    spec = ""
    block = 1
    ggml_type: int | None = None

    @abstractmethod
    def quantize(self, w: np.ndarray, *, bf16: bool = False, threads: int = 0) -> QuantTensor:
        """rows × cols (float32/float16, or bf16 bits as uint16 with bf16=True) → parts."""

    @abstractmethod
    def dequantize(self, q: QuantTensor) -> np.ndarray:
        """Parts → float32 rows × cols."""

    def fits(self, cols: int) -> bool:
        return cols % self.block == 0


def _rows(w: np.ndarray) -> np.ndarray:
    return w.reshape(-1, w.shape[-1]) if w.ndim != 2 else w


def map_rows(fn: Callable[[np.ndarray, int], dict[str, np.ndarray]], w: np.ndarray, *,
             bf16: bool, threads: int, rows_per_chunk: int | None = None) -> dict[str, np.ndarray]:
    """fn(float32 row chunk, first row) → parts with one leading entry per row; concatenated."""
    w = _rows(w)
    rows, cols = w.shape
    threads = threads or default_threads()
    per_chunk = CHUNK_ELEMENTS if threads == 1 else THREADED_CHUNK_ELEMENTS
    step = rows_per_chunk or max(1, per_chunk // max(cols, 1))

    def run(start: int) -> dict[str, np.ndarray]:
        chunk = as_f32(w[start:start + step], bf16)
        _check_finite(chunk, start, cols)
        with np.errstate(all="ignore"):
            return fn(chunk, start)

    if rows == 0:  # run on one zero row for the part shapes, keep none of it
        with np.errstate(all="ignore"):
            return {k: v[:0] for k, v in fn(np.zeros((1, cols), np.float32), 0).items()}
    starts = list(range(0, rows, step))
    if threads == 1 or len(starts) == 1:
        results = [run(s) for s in starts]
    else:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(run, starts))
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


# --- plain floats ----------------------------------------------------------------------------

class FloatScheme(Scheme):
    """f32 / f16 / bf16: what runtimes expect for norms and 1-D tensors."""

    TYPES = {"f32": 0, "f16": 1, "bf16": 30}

    def __init__(self, name: str):
        self.spec = name
        self.ggml_type = self.TYPES[name]

    def quantize(self, w, *, bf16=False, threads=0):
        def fn(x, _):
            if self.spec == "f32":
                return {"data": x}
            if self.spec == "f16":
                with np.errstate(over="ignore"):
                    return {"data": x.astype(np.float16)}
            u = x.view(np.uint32)  # ggml_compute_fp32_to_bf16: round to nearest even
            r = (u.astype(np.uint64) + (0x7FFF + ((u >> 16) & 1))) >> 16
            return {"data": r.astype(np.uint16)}
        return QuantTensor(self.spec, tuple(w.shape), map_rows(fn, w, bf16=bf16, threads=threads),
                           self.ggml_type)

    def dequantize(self, q):
        d = q.parts["data"]
        if self.spec == "bf16":
            return (d.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return d.astype(np.float32)


# --- GGML ------------------------------------------------------------------------------------

class GgmlScheme(Scheme):
    """llama.cpp's types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4 (blocks of 32, byte-identical to
    ggml's quantizer) and the K-quants Q4_K, Q5_K, Q6_K (super-blocks of 256)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.spec = "mx:fp4" if kind == "mxfp4" else kind
        mod = kquants if kind in kquants.QUANTIZERS else ggml
        self.module = mod
        self.block = kquants.QK_K if mod is kquants else ggml.QK
        self.width = mod.TYPE_SIZE[kind]
        self.ggml_type = mod.GGML_TYPE[kind]

    def quantize(self, w, *, bf16=False, threads=0):
        w = _rows(w)
        rows, cols = w.shape
        blocks = w.reshape(-1, self.block)
        data = map_blocks(self.module.QUANTIZERS[self.kind], blocks, self.width, threads=threads,
                          bf16=bf16, check=lambda c, first: _check_finite(c, first, self.block))
        return QuantTensor(self.spec, (rows, cols),
                           {"blocks": data.reshape(rows, cols // self.block * self.width)},
                           self.ggml_type)

    def dequantize(self, q):
        rows, cols = q.shape
        blocks = q.parts["blocks"].reshape(-1, self.width)
        with np.errstate(all="ignore"):
            return self.module.dequantize(self.kind, blocks).reshape(rows, cols)


# --- NF4 -------------------------------------------------------------------------------------

class Nf4Scheme(Scheme):
    """QLoRA's NF4: absmax per block of 64, 4-bit index into the normal-float table.

    Double quantization stores the block scales as int8 around their mean, one float32 scale
    per 256 of them (bitsandbytes uses an 8-bit dynamic map there; linear is within 0.1 dB).
    """

    block = 64
    DQ_BLOCK = 256

    def __init__(self, double: bool):
        self.double = double
        self.spec = "nf4:dq" if double else "nf4"

    def quantize(self, w, *, bf16=False, threads=0):
        def fn(x, _):
            b = x.reshape(x.shape[0], -1, self.block)
            absmax = np.abs(b).max(axis=2)
            inv = np.divide(1.0, absmax, out=np.zeros_like(absmax), where=absmax > 0)
            codes = grids.nearest(b * inv[..., None], grids.NF4)
            return {"codes": bits.pack(codes, 4).reshape(x.shape[0], -1), "absmax": absmax}
        parts = map_rows(fn, w, bf16=bf16, threads=threads)
        if self.double:
            parts.update(self._double(parts.pop("absmax")))
        return QuantTensor(self.spec, tuple(_rows(w).shape), parts)

    def _double(self, absmax: np.ndarray) -> dict[str, np.ndarray]:
        flat = absmax.reshape(-1).astype(np.float32)
        offset = np.float32(flat.mean()) if flat.size else np.float32(0)
        pad = (-flat.size) % self.DQ_BLOCK
        c = np.concatenate([flat - offset, np.zeros(pad, np.float32)]).reshape(-1, self.DQ_BLOCK)
        scale = (np.abs(c).max(axis=1) / 127).astype(np.float32)
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        q = np.clip(np.rint(c * inv[:, None]), -127, 127).astype(np.int8)
        return {"absmax_q": q.reshape(-1)[:flat.size], "absmax_scale": scale,
                "absmax_offset": np.array([offset], np.float32)}

    def _absmax(self, q: QuantTensor) -> np.ndarray:
        rows, cols = q.shape
        if not self.double:
            return q.parts["absmax"]
        a = q.parts["absmax_q"].astype(np.float32)
        scale = np.repeat(q.parts["absmax_scale"], self.DQ_BLOCK)[:a.size]
        return (a * scale + q.parts["absmax_offset"][0]).reshape(rows, cols // self.block)

    def dequantize(self, q):
        rows, cols = q.shape
        codes = bits.unpack(q.parts["codes"], 4, rows * cols).reshape(
            rows, cols // self.block, self.block)
        return (grids.NF4[codes] * self._absmax(q)[..., None]).reshape(rows, cols)


# --- OCP microscaling ------------------------------------------------------------------------

def _floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2(a)) exactly for a > 0 (frexp, not log2, which rounds near powers of two)."""
    _, e = np.frexp(a)
    return (e - 1).astype(np.int32)


class MxScheme(Scheme):
    """OCP MX v1.0: 32 elements share an E8M0 scale 2^(floor(log2 amax) - emax_elem);
    elements FP6 (E2M3/E3M2), FP8 (E4M3/E5M2) round to nearest even and saturate, INT8 is
    a fixed-point value with scale 2^-6. (mx:fp4 is ggml's MXFP4, see GgmlScheme.)"""

    block = 32

    def __init__(self, elem: str):
        self.elem = elem
        self.spec = f"mx:{elem}"
        if elem == "int8":
            self.elem_bits, self.emax = 8, 0
        else:
            e, m, *_ = grids.MINIFLOATS[elem]
            self.elem_bits, self.emax = 1 + e + m, grids.emax(elem)

    def quantize(self, w, *, bf16=False, threads=0):
        def fn(x, _):
            b = x.reshape(x.shape[0], -1, self.block)
            amax = np.abs(b).max(axis=2)
            exp = np.where(amax > 0, _floor_log2(np.where(amax > 0, amax, 1)) - self.emax, -127)
            exp = np.clip(exp, -127, 127)
            v = b * np.ldexp(np.float32(1), -exp)[..., None].astype(np.float32)
            if self.elem == "int8":
                codes = np.clip(np.rint(v * 64), -127, 127).astype(np.int8).view(np.uint8)
            else:
                mag = grids.round_to_magnitudes(np.abs(v), self.elem)
                codes = mag | ((v < 0).astype(np.uint8) << np.uint8(self.elem_bits - 1))
            return {"scales": (exp + 127).astype(np.uint8),
                    "codes": bits.pack(codes, self.elem_bits).reshape(x.shape[0], -1)}
        return QuantTensor(self.spec, tuple(_rows(w).shape),
                           map_rows(fn, w, bf16=bf16, threads=threads))

    def dequantize(self, q):
        rows, cols = q.shape
        codes = bits.unpack(q.parts["codes"], self.elem_bits, rows * cols)
        if self.elem == "int8":
            vals = codes.view(np.int8).astype(np.float32) / 64
        else:
            sign_bit = 1 << (self.elem_bits - 1)
            mags = grids.minifloat_magnitudes(self.elem)
            vals = mags[np.minimum(codes & (sign_bit - 1), mags.size - 1)]
            vals = np.where(codes & sign_bit, -vals, vals)
        scale = np.ldexp(np.float32(1), q.parts["scales"].astype(np.int32) - 127)
        vals = vals.reshape(rows, cols // self.block, self.block)
        return (vals * scale[..., None]).reshape(rows, cols)


# --- block floating point with outlier-aware channel order ----------------------------------

def column_absmax(w: np.ndarray, bf16: bool) -> np.ndarray:
    """max |w| of every input column, in one pass over row chunks."""
    w = _rows(w)
    colmax = np.zeros(w.shape[1], np.float32)
    step = max(1, (1 << 18) // max(w.shape[1], 1))
    for start in range(0, w.shape[0], step):
        np.maximum(colmax, np.abs(as_f32(w[start:start + step], bf16)).max(axis=0), out=colmax)
    return colmax


def magnitude_order(w: np.ndarray, bf16: bool) -> np.ndarray:
    """Columns by descending max |w|, so outlier channels fill the same blocks."""
    return np.argsort(-column_absmax(w, bf16), kind="stable").astype(np.int32)


def _perm_bits(cols: int) -> int:
    return max(1, ceil(log2(cols))) if cols > 1 else 1


class BfpScheme(Scheme):
    """Block floating point: a shared 8-bit exponent per block, M-bit signed mantissas.

    With `outlier`, input channels are first reordered by magnitude (Trukhanov & Soloveychik,
    "Accurate Block Quantization in LLMs with Outliers"): outlier channels share blocks instead
    of inflating every block's exponent. The permutation is stored (ceil(log2 cols) bits per
    column) and applied at compile time to the previous layer's outputs, so inference is
    unchanged.
    """

    def __init__(self, mbits: int, block: int, outlier: bool):
        if not 2 <= mbits <= 8:
            raise ConfigError(f"bfp mantissa bits must be 2..8, not {mbits}")
        self.mbits, self.block, self.outlier = mbits, block, outlier
        self.spec = f"bfp:{mbits}" + (f":{block}" if block != 32 else "") + \
            (":outlier" if outlier else "")

    def quantize(self, w, *, bf16=False, threads=0):
        w = _rows(w)
        perm = magnitude_order(w, bf16) if self.outlier else None
        qmax = (1 << (self.mbits - 1)) - 1

        def fn(x, _):
            if perm is not None:
                x = x[:, perm]
            b = x.reshape(x.shape[0], -1, self.block)
            amax = np.abs(b).max(axis=2)
            e = np.where(amax > 0, _floor_log2(np.where(amax > 0, amax, 1)) + 1, -126)
            e = np.clip(e, -126, 128)
            step = np.ldexp(np.float32(1), e - (self.mbits - 1)).astype(np.float32)
            q = np.clip(np.rint(b / step[..., None]), -qmax, qmax).astype(np.int16)
            return {"exps": (e + 126).astype(np.uint8),
                    "codes": bits.pack_rows((q + qmax).astype(np.uint8).reshape(x.shape[0], -1),
                                            self.mbits)}
        parts = map_rows(fn, w, bf16=bf16, threads=threads)
        if perm is not None:
            parts["perm"] = bits.pack_index(perm, _perm_bits(perm.size))
        return QuantTensor(self.spec, tuple(w.shape), parts)

    def dequantize(self, q):
        rows, cols = q.shape
        qmax = (1 << (self.mbits - 1)) - 1
        codes = bits.unpack_rows(q.parts["codes"], self.mbits, cols).astype(np.float32) - qmax
        step = np.ldexp(np.float32(1), q.parts["exps"].astype(np.int32) - 126 - (self.mbits - 1))
        codes = codes.reshape(rows, cols // self.block, self.block)
        x = (codes * step[..., None]).reshape(rows, cols)
        if "perm" in q.parts:
            perm = bits.unpack_index(q.parts["perm"], _perm_bits(cols), cols)
            out = np.empty_like(x)
            out[:, perm] = x
            return out
        return x


# --- BitMoD: per-group choice of datatype ----------------------------------------------------

class MixedScheme(Scheme):
    """Per group of 128 weights, the datatype among four (FP4 or FP3 with one extra value for
    resolution or asymmetry, either sign) with the least squared error; 2 bits of type id and an
    fp16 scale per group (Chen et al., BitMoD, HPCA 2025)."""

    def __init__(self, nbits: int, group: int = 128):
        if nbits not in (3, 4):
            raise ConfigError(f"mixed supports 3 or 4 bits, not {nbits}")
        self.nbits, self.block = nbits, group
        self.spec = f"mixed:{nbits}" + (f":{group}" if group != 128 else "")
        self.grids = grids.bitmod_grids(nbits)

    def quantize(self, w, *, bf16=False, threads=0):
        def fn(x, _):
            g = x.reshape(x.shape[0], -1, self.block)
            best_err = best_codes = best_type = best_scale = None
            for t, grid in enumerate(self.grids):
                scale = (np.abs(g).max(axis=2) / np.abs(grid).max()).astype(np.float16)
                s = scale.astype(np.float32)
                inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
                codes = grids.nearest(g * inv[..., None], grid)
                err = ((grid[codes] * s[..., None] - g) ** 2).sum(axis=2)
                if best_err is None:
                    best_err, best_codes, best_scale = err, codes, scale
                    best_type = np.zeros(err.shape, np.uint8)
                    continue
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best_codes = np.where(better[..., None], codes, best_codes)
                best_scale = np.where(better, scale, best_scale)
                best_type[better] = t
            rows = x.shape[0]
            return {"types": bits.pack_rows(best_type, 2),
                    "scales": best_scale,
                    "codes": bits.pack(best_codes, self.nbits).reshape(rows, -1)}
        return QuantTensor(self.spec, tuple(_rows(w).shape),
                           map_rows(fn, w, bf16=bf16, threads=threads))

    def dequantize(self, q):
        rows, cols = q.shape
        groups = cols // self.block
        types = bits.unpack_rows(q.parts["types"], 2, groups)
        codes = bits.unpack(q.parts["codes"], self.nbits, rows * cols).reshape(
            rows, groups, self.block)
        table = np.stack(self.grids)  # (4, 2**nbits)
        vals = table[types[..., None], codes]
        return (vals * q.parts["scales"].astype(np.float32)[..., None]).reshape(rows, cols)


# --- outlier split ---------------------------------------------------------------------------

class SplitScheme(Scheme):
    """Outlier input columns kept in F16 beside a base scheme (LLM.int8()'s decomposition, at
    weight level); the base quantizes the rest with those columns zeroed.

    By default the outliers are found, not guessed: columns whose largest |w| is over
    OUTLIER_RATIO times the median column's, at most 1% of the columns. `split:BASE:K` fixes K.
    """

    OUTLIER_RATIO = 4.0
    MAX_FRACTION = 0.01

    def __init__(self, base: Scheme, k: int | None):
        self.base, self.k = base, k
        self.block = base.block
        self.spec = f"split:{base.spec}"
        if k is not None:  # a bare :K unless BASE:K would read as another base scheme
            try:
                parse_scheme(f"{base.spec}:{k}")
                self.spec += f":k={k}"
            except ConfigError:
                self.spec += f":{k}"

    def outlier_columns(self, w: np.ndarray, bf16: bool) -> np.ndarray:
        colmax = column_absmax(w, bf16)
        order = np.argsort(-colmax, kind="stable")
        if self.k is not None:
            k = min(self.k, colmax.size)
        else:
            cap = max(1, int(np.ceil(colmax.size * self.MAX_FRACTION)))
            k = min(cap, int((colmax > self.OUTLIER_RATIO * np.median(colmax)).sum()))
        return np.sort(order[:k]).astype(np.int32)

    def quantize(self, w, *, bf16=False, threads=0):
        w = _rows(w)
        idx = self.outlier_columns(w, bf16)
        k = idx.size
        rows, cols = w.shape
        step = max(1, (1 << 18) // cols)
        out_cols = np.empty((rows, k), np.float16)
        rest = np.empty((rows, cols), np.float32)
        for start in range(0, rows, step):
            x = as_f32(w[start:start + step], bf16)
            _check_finite(x, start, cols)
            out_cols[start:start + step] = x[:, idx]
            rest[start:start + step] = x
            rest[start:start + step, idx] = 0
        q = self.base.quantize(rest, threads=threads)
        parts = {f"base.{n}": p for n, p in q.parts.items()}
        parts.update(cols=idx, outliers=out_cols)
        return QuantTensor(self.spec, (rows, cols), parts)

    def dequantize(self, q):
        base = QuantTensor(self.base.spec, q.shape,
                           {n[5:]: p for n, p in q.parts.items() if n.startswith("base.")})
        x = self.base.dequantize(base)
        x[:, q.parts["cols"]] = q.parts["outliers"].astype(np.float32)
        return x


# --- parsing ---------------------------------------------------------------------------------

SCHEME_HELP = ("q8_0 q4_0 q4_1 q5_0 q5_1 mx:fp4 q4_k q5_k q6_k | nf4[:dq] | "
               "mx:fp6|fp6e3m2|fp8|fp8e5m2|int8 | bfp:M[:BLOCK][:outlier] | mixed:3|4 | "
               "split:BASE[:K] | f16 f32 bf16")


def parse_scheme(spec: str) -> Scheme:
    s = spec.strip().lower()
    parts = s.split(":")
    head = parts[0]
    try:
        if (s in ggml.QUANTIZERS and s != "mxfp4") or s in kquants.QUANTIZERS:
            return GgmlScheme(s)
        if s in ("mx:fp4", "mxfp4"):
            return GgmlScheme("mxfp4")
        if s in FloatScheme.TYPES:
            return FloatScheme(s)
        if head == "nf4" and parts[1:] in ([], ["dq"]):
            return Nf4Scheme(double=parts[1:] == ["dq"])
        if head == "mx" and len(parts) == 2 and (parts[1] in grids.MINIFLOATS
                                                  or parts[1] == "int8"):
            return MxScheme(parts[1])
        if head == "bfp" and 2 <= len(parts) <= 4:
            outlier = parts[-1] == "outlier"
            nums = parts[1:-1] if outlier else parts[1:]
            if 1 <= len(nums) <= 2:
                block = int(nums[1]) if len(nums) == 2 else 32
                if block < 1:
                    raise ValueError
                return BfpScheme(int(nums[0]), block, outlier)
        if head == "mixed" and len(parts) in (2, 3):
            group = int(parts[2]) if len(parts) == 3 else 128
            if group < 1:
                raise ValueError
            return MixedScheme(int(parts[1]), group)
        if head == "split" and len(parts) >= 2:
            return _parse_split(parts[1:])
    except ValueError:
        pass
    raise ConfigError(f"unknown scheme {spec!r}; known: {SCHEME_HELP}")


def _parse_split(rest: list[str]) -> SplitScheme:
    """split:BASE, split:BASE:k=N, or split:BASE:N when BASE:N is not itself a scheme
    (so split:mixed:4 is mixed:4, and split:bfp:4:16 is bfp:4 with a 16-wide block)."""
    k = None
    if rest[-1].startswith("k="):
        k, rest = int(rest[-1][2:]), rest[:-1]
    elif len(rest) > 1 and rest[-1].isdigit():
        try:
            base = parse_scheme(":".join(rest))
        except ConfigError:
            k, rest = int(rest[-1]), rest[:-1]
    if not rest or (k is not None and k < 0):
        raise ValueError
    base = parse_scheme(":".join(rest))
    if isinstance(base, SplitScheme):
        raise ValueError
    return SplitScheme(base, k)


def scheme_of(q: QuantTensor) -> Scheme:
    return parse_scheme(q.scheme)
