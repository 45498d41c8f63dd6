"""The `quantize` job: tensor file in, per-tensor scheme choice, error report, GGUF or records out.

One tensor is in memory at a time: the input is memory-mapped and its pages are released after
each tensor; the GGUF writer gets every tensor's size up front (header first), then the
quantized bytes tensor by tensor. Output goes to a temporary file renamed at the end, so a
failure or Ctrl-C never leaves half a model behind.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from memstack.core.errors import ConfigError, InputError
from memstack.core.quant.metrics import ErrorSums, error_sums
from memstack.core.quant.schemes import (
    FloatScheme,
    GgmlScheme,
    NonFiniteError,
    QuantTensor,
    Scheme,
    parse_scheme,
)
from memstack.formats.tensorfile import TensorEntry, TensorFile, open_tensor_file

# llama.cpp's general.file_type for a model quantized with one of these types
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
             "q4_k": 15, "q5_k": 17, "q6_k": 18, "bf16": 32, "mx:fp4": 38}
ODD_POLICIES = ("f16", "refuse")
GGUF_INTS = ("I8", "I16", "I32", "I64")  # GGUF integer tensors: not quantized, stored as F32


@dataclass
class QuantizeOptions:
    schemes: list[str]
    output: str | None = None          # a .gguf path, a records path, "-" or None (report only)
    records_format: str = "msgpack"    # for non-GGUF output
    report: bool = False
    calib: str | None = None
    keep: list[str] = field(default_factory=list)  # glob patterns of tensors left unquantized
    odd: str = "f16"
    allow_requantize: bool = False
    threads: int = 0
    force: bool = False


@dataclass
class TensorPlan:
    entry: TensorEntry
    scheme: Scheme
    note: str = ""


def output_kind(path: str | None) -> str | None:
    if path is None:
        return None
    return "gguf" if path.lower().endswith(".gguf") else "records"


def plan(tf: TensorFile, scheme: Scheme, opts: QuantizeOptions) -> list[TensorPlan]:
    """Which scheme each tensor really gets, and why when it is not the requested one."""
    out = []
    for t in tf.tensors:
        keep_type = {"F16": "f16", "BF16": "bf16"}.get(t.dtype, "f32")
        if not t.is_float and (t.ggml_type is None or t.dtype in GGUF_INTS):
            out.append(TensorPlan(t, FloatScheme("f32"), f"{t.dtype} tensor stored as F32"))
        elif t.ggml_type is not None and not t.is_float and not _dequantizable(t):
            raise InputError(tf.path, f"tensor {t.name!r}", f"{t.dtype} cannot be read back to "
                             "floats (the gguf package has no dequantizer for it)")
        elif t.numel == 0:
            out.append(TensorPlan(t, FloatScheme("f32"), "empty tensor"))
        elif any(fnmatch.fnmatchcase(t.name, pat) for pat in opts.keep):
            out.append(TensorPlan(t, FloatScheme(keep_type), "kept (--keep)"))
        elif len(t.shape) < 2 or scheme.spec in FloatScheme.TYPES:
            note = "1-D tensor kept in F32, as runtimes expect for norms and biases" \
                if len(t.shape) < 2 else ""
            out.append(TensorPlan(t, FloatScheme("f32") if len(t.shape) < 2 else scheme, note))
        elif not scheme.fits(t.shape[-1]):
            msg = (f"row length {t.shape[-1]} is not a multiple of {scheme.spec}'s block of "
                   f"{scheme.block}")
            if opts.odd == "refuse":
                raise InputError(tf.path, f"tensor {t.name!r}", msg + " (llama.cpp would keep "
                                 "it unquantized; --odd f16 does the same)")
            out.append(TensorPlan(t, FloatScheme("f16"), msg + ": kept in F16"))
        else:
            if not t.is_float and not opts.allow_requantize:
                raise InputError(tf.path, f"tensor {t.name!r}", f"already quantized as "
                                 f"{t.dtype}; requantizing compounds the error "
                                 "(pass --allow-requantize to do it anyway)")
            out.append(TensorPlan(t, scheme))
    return out


def _dequantizable(t: TensorEntry) -> bool:
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import _type_traits
    except ImportError:
        return False
    return GGMLQuantizationType(t.ggml_type) in _type_traits


def _float_rows(t: TensorEntry) -> tuple[np.ndarray, bool]:
    """The tensor as rows × cols in its source dtype (bf16 as raw uint16) and the bf16 flag."""
    raw = t.load()
    if not t.is_float and t.ggml_type is not None and t.dtype not in GGUF_INTS:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        raw = dequantize(raw, GGMLQuantizationType(t.ggml_type))
    cols = t.shape[-1] if t.shape else 1
    return raw.reshape(-1, cols), t.dtype == "BF16"


def _quantize_entry(tf: TensorFile, p: TensorPlan, threads: int) -> tuple[QuantTensor,
                                                                        np.ndarray, bool]:
    rows, bf16 = _float_rows(p.entry)
    if rows.dtype == np.float64:
        rows = rows.astype(np.float32)
    if rows.size == 0:  # the schemes need at least one row
        return QuantTensor("f32", rows.shape, {"data": np.zeros(rows.shape, np.float32)}, 0), \
            rows, False
    try:
        q = p.scheme.quantize(rows, bf16=bf16, threads=threads)
    except NonFiniteError as exc:
        raise InputError(tf.path, f"tensor {p.entry.name!r} element {exc.index}",
                         "NaN or Inf in the weights; nothing was written") from None
    return q, rows, bf16


def load_calib(path: str | None) -> dict[str, np.ndarray] | np.ndarray | None:
    """acts.npy (samples × in_features) for every tensor, or an npz keyed by tensor name."""
    if path is None:
        return None
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(path, "header", f"not a readable .npy/.npz file ({exc})") from None
    if isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise InputError(path, "header", f"calibration activations must be 2-D "
                             f"(samples × features), not shape {data.shape}")
        return data.astype(np.float32)
    return {k: np.asarray(data[k], np.float32).reshape(-1, data[k].shape[-1]) for k in data.files}


def _calib_for(calib, name: str, cols: int) -> np.ndarray | None:
    x = calib.get(name) if isinstance(calib, dict) else calib
    if x is None or x.shape[-1] != cols:
        return None
    return x


def _row_report(name: str, shape: tuple, q: QuantTensor, sums: ErrorSums, note: str) -> dict:
    rec = {"kind": "quant_report", "v": 1, "tensor": name, "scheme": q.scheme,
           "shape": list(shape), "bpw": q.bpw, "bytes": q.bits // 8, "params": int(
               np.prod(q.shape))}
    rec.update(sums.report())
    if note:
        rec["note"] = note
    return rec


def _refuse_existing(path: str | None, force: bool) -> None:
    if path and path != "-" and os.path.exists(path) and not force:
        raise ConfigError(f"{path} exists; pass --force to replace it")


def quantize_file(path: str, opts: QuantizeOptions, *,
                  progress: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Quantize every tensor of `path`; iterate the result for report records (per tensor and
    scheme, then totals). Options and the input are checked before this returns; output,
    when asked for, is written atomically and appears once the iterator is exhausted.
    """
    schemes = [parse_scheme(s) for s in opts.schemes]
    kind = output_kind(opts.output)
    if kind and len(schemes) != 1:
        raise ConfigError("writing a file needs exactly one --scheme; use --report to compare")
    if kind == "gguf" and schemes[0].ggml_type is None:
        raise ConfigError(f"{schemes[0].spec} has no GGUF type that runtimes read; GGUF takes "
                          "q8_0 q4_0 q4_1 q5_0 q5_1 mx:fp4 q4_k q5_k q6_k f16 bf16 f32; write "
                          "tensor records "
                          "instead (-o out.msgpack)")
    if opts.odd not in ODD_POLICIES:
        raise ConfigError(f"--odd must be one of {ODD_POLICIES}")
    _refuse_existing(opts.output, opts.force)
    tf = open_tensor_file(path)
    calib = load_calib(opts.calib)
    plans = {s.spec: plan(tf, s, opts) for s in schemes}
    totals = {s.spec: ErrorSums() for s in schemes}
    bits = {s.spec: 0 for s in schemes}
    params = {s.spec: 0 for s in schemes}

    def each(write: Callable[[TensorPlan, QuantTensor], None] | None) -> Iterator[dict]:
        for i, t in enumerate(tf.tensors):
            if progress:
                progress(t.name)
            for s in schemes:
                p = plans[s.spec][i]
                q, rows, bf16 = _quantize_entry(tf, p, opts.threads)
                if write is not None:
                    write(p, q)
                if opts.report:
                    w_hat = p.scheme.dequantize(q)
                    sums = error_sums(rows, w_hat.reshape(rows.shape), bf16=bf16,
                                      calib=_calib_for(calib, t.name, rows.shape[-1]))
                    del w_hat
                    totals[s.spec].merge(sums)
                    yield _row_report(t.name, t.shape, q, sums, p.note)
                bits[s.spec] += q.bits
                params[s.spec] += int(np.prod(q.shape))
                del q
            t.release()
        if opts.report:
            for s in schemes:
                n = params[s.spec] or 1
                rec = {"kind": "quant_report", "v": 1, "tensor": "*", "scheme": s.spec,
                       "bpw": bits[s.spec] / n, "bytes": bits[s.spec] // 8,
                       "params": params[s.spec], "tensors": len(tf.tensors)}
                rec.update(totals[s.spec].report())
                yield rec

    if kind is None:
        return each(None)
    if kind == "gguf":
        return _write_gguf(tf, plans[schemes[0].spec], schemes[0], opts, each)
    return _write_records(tf, opts, each)


def _atomic_path(dest: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".memstack-", suffix=".part",
                               dir=os.path.dirname(os.path.abspath(dest)))
    os.close(fd)
    return tmp


def _write_records(tf: TensorFile, opts: QuantizeOptions, each) -> Iterator[dict]:
    import sys

    from memstack.formats.stream import RecordWriter

    meta = {"source": os.path.basename(tf.path), "source_kind": tf.kind}
    if opts.output == "-":
        fp, tmp = sys.stdout.buffer, None
    else:
        tmp = _atomic_path(opts.output)
        fp = open(tmp, "wb")
    try:
        writer = RecordWriter(fp, opts.records_format, meta=meta)

        def write(p: TensorPlan, q: QuantTensor) -> None:
            writer.write({"kind": "tensor", "v": 1, "name": p.entry.name,
                          "shape": list(p.entry.shape), "rows": q.shape[0],
                          "source_dtype": p.entry.dtype, "scheme": q.scheme, "bpw": q.bpw,
                          "parts": q.parts, **({"note": p.note} if p.note else {})})
            writer.flush()
        yield from each(write)
        writer.close()
        if tmp:
            _publish(fp, tmp, opts.output)
            tmp = None
    finally:
        if tmp:
            fp.close()
            os.unlink(tmp)


def _gguf_nbytes(p: TensorPlan) -> tuple[int, int]:
    """(ggml type, bytes) of a tensor's output, known before quantizing it."""
    n = p.entry.numel
    s = p.scheme
    if isinstance(s, GgmlScheme):
        return s.ggml_type, n // s.block * s.width
    if isinstance(s, FloatScheme):
        return s.ggml_type, n * (4 if s.spec == "f32" else 2)
    raise AssertionError(s.spec)


def _copy_metadata(reader, writer) -> None:
    from gguf import GGUFValueType

    skip = ("general.architecture", "general.file_type", "general.quantization_version",
            "general.alignment")
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name in skip:
            continue
        vtype = GGUFValueType(f.types[0])
        sub = GGUFValueType(f.types[-1]) if vtype == GGUFValueType.ARRAY else None
        if sub == GGUFValueType.ARRAY:
            continue  # nested arrays: no runtime key uses them and the reader cannot give them
        writer.add_key_value(name, f.contents(), vtype, sub_type=sub)


def _write_gguf(tf: TensorFile, plans: list[TensorPlan], scheme: Scheme, opts, each):
    try:
        from gguf import GGMLQuantizationType, GGUFWriter
    except ImportError:
        raise ConfigError("writing GGUF needs the gguf package: pip install "
                          "'memstack[gguf]'") from None
    if opts.output == "-":
        raise ConfigError("GGUF is written to a file, not stdout")
    arch = "llama"
    if tf.gguf is not None and (f := tf.gguf.fields.get("general.architecture")) is not None:
        arch = f.contents()
    elif tf.metadata.get("architecture"):
        arch = tf.metadata["architecture"]
    tmp = _atomic_path(opts.output)
    writer = GGUFWriter(tmp, arch)
    ok = False
    try:
        if tf.gguf is not None:
            _copy_metadata(tf.gguf, writer)
        else:
            for k, v in sorted(tf.metadata.items()):
                if k != "architecture":
                    writer.add_string(f"memstack.source.{k}", v)
        writer.add_file_type(FILE_TYPE.get(scheme.spec, 0))
        writer.add_quantization_version(2)
        writer.add_string("general.quantized_by", "memstack")
        for p in plans:
            gtype, nbytes = _gguf_nbytes(p)
            writer.add_tensor_info(p.entry.name, list(p.entry.shape), np.dtype(np.float32),
                                   nbytes, raw_dtype=GGMLQuantizationType(gtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()

        def write(p: TensorPlan, q: QuantTensor) -> None:
            data = next(iter(q.parts.values()))
            writer.write_tensor_data(np.ascontiguousarray(data))
        yield from each(write)
        (fout,) = writer.fout
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
        _publish(None, tmp, opts.output)
        ok = True
    finally:
        if not ok:
            for fout in writer.fout or []:
                fout.close()
            if os.path.exists(tmp):
                os.unlink(tmp)


def _publish(fp, tmp: str, dest: str) -> None:
    """Make the finished temporary file the output: durable first, then renamed over dest,
    with the mode a new file gets (mkstemp makes 0600)."""
    if fp is not None:
        fp.flush()
        os.fsync(fp.fileno())
        fp.close()
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, dest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
