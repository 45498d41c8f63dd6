"""Tensor files in: npy, npz, safetensors and GGUF, opened lazily with every size checked.

Tensors are memory-mapped (npz members are read one at a time), so a file larger than memory
is processed tensor by tensor. safetensors is parsed here rather than through the
`safetensors` package: its numpy API has no bfloat16 (the dtype of most checkpoints) and
copies whole tensors, and a hostile header must be refused with a position, not a crash.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from memstack.core.errors import ConfigError, InputError

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                      "BF16": np.uint16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
                      "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
MAX_HEADER = 100 << 20  # the safetensors spec's own limit


@dataclass
class TensorEntry:
    """One tensor: name, logical shape, source dtype name, and a loader of its raw array."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    load: Callable[[], np.ndarray]
    nbytes: int = 0
    ggml_type: int | None = None
    release: Callable[[], None] = lambda: None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass
class TensorFile:
    path: str
    kind: str
    tensors: list[TensorEntry]
    metadata: dict = field(default_factory=dict)
    gguf: object | None = None

    @property
    def largest(self) -> int:
        return max((t.nbytes for t in self.tensors), default=0)


def detect_kind(path: str) -> str:
    with open(path, "rb") as fp:
        head = fp.read(8)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "npz"
    low = path.lower()
    for ext in ("safetensors", "gguf", "npz", "npy"):
        if low.endswith("." + ext):
            return ext
    if len(head) == 8:
        return "safetensors"
    raise InputError(path, "byte 0", "not a tensor file (npy, npz, safetensors or GGUF)")


def open_tensor_file(path: str) -> TensorFile:
    if not os.path.isfile(path):
        raise InputError(path, "byte 0", "no such file")
    kind = detect_kind(path)
    return {"npy": _open_npy, "npz": _open_npz, "safetensors": _open_safetensors,
            "gguf": _open_gguf}[kind](path)


def _dtype_name(dt: np.dtype) -> str:
    names = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
             np.dtype(np.float16): "F16"}
    return names.get(np.dtype(dt).newbyteorder("="), str(dt))


def _drop_pages(arr: np.ndarray) -> None:
    """Tell the kernel we are done with a mapped tensor, so resident memory stays at one."""
    base = arr
    while getattr(base, "base", None) is not None and not isinstance(base, mmap.mmap):
        base = base.base
    if isinstance(base, mmap.mmap) and hasattr(base, "madvise"):
        try:
            base.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _check_numeric(path: str, where: str, dtype: np.dtype) -> None:
    """Only numbers can be quantized: refuse strings, records, complex and dates up front."""
    if dtype.kind not in "biuf":
        raise InputError(path, where, f"unsupported dtype {dtype} (float, int or bool only)")


def _open_npy(path: str) -> TensorFile:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(path, "header", f"not a readable .npy file ({exc})") from None
    _check_numeric(path, "header", arr.dtype)
    name = os.path.splitext(os.path.basename(path))[0]
    entry = TensorEntry(name, tuple(arr.shape), _dtype_name(arr.dtype), lambda: arr, arr.nbytes,
                        release=lambda: _drop_pages(arr))
    return TensorFile(path, "npy", [entry])


def _open_npz(path: str) -> TensorFile:
    try:
        zf = zipfile.ZipFile(path)
        members = [m for m in zf.infolist() if m.filename.endswith(".npy")]
        entries = []
        for m in members:
            with zf.open(m) as fp:
                version = np.lib.format.read_magic(fp)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(fp)
            if dtype.hasobject:
                raise InputError(path, m.filename, "object arrays are refused (no pickle)")
            _check_numeric(path, m.filename, dtype)
            name = m.filename[:-4]
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

            def load(name=name) -> np.ndarray:
                with np.load(path, allow_pickle=False) as npz:
                    return npz[name]
            entries.append(TensorEntry(name, tuple(shape), _dtype_name(dtype), load, nbytes))
    except InputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(path, "archive", f"not a readable .npz file ({exc})") from None
    return TensorFile(path, "npz", entries)


def _open_safetensors(path: str) -> TensorFile:
    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        raw = fp.read(8)
        if len(raw) < 8:
            raise InputError(path, "byte 0", "truncated safetensors header length")
        (hlen,) = struct.unpack("<Q", raw)
        if hlen > MAX_HEADER or hlen > size - 8:
            raise InputError(path, "byte 0", f"header length {hlen} is past the end of a "
                             f"{size}-byte file or over the 100 MB limit")
        head = fp.read(hlen)
    try:
        header = json.loads(head.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {8 + exc.start}", "header is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"byte {8 + exc.pos}", f"header is not JSON: {exc.msg}") from None
    if not isinstance(header, dict):
        raise InputError(path, "byte 8", "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise InputError(path, "byte 8", "__metadata__ is not an object")
    data_start = 8 + hlen
    data_size = size - data_start
    spans = []
    entries = []
    mm = None
    for name, info in header.items():
        where = f"tensor {name!r}"
        if not isinstance(info, dict):
            raise InputError(path, where, "entry is not an object")
        dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dt not in SAFETENSORS_DTYPES:
            raise InputError(path, where, f"unsupported dtype {dt!r}")
        if (not isinstance(shape, list) or not all(isinstance(s, int) and 0 <= s < 1 << 48
                                                   for s in shape)):
            raise InputError(path, where, f"bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) for o in offs) or not 0 <= offs[0] <= offs[1]):
            raise InputError(path, where, f"bad data_offsets {offs!r}")
        itemsize = np.dtype(SAFETENSORS_DTYPES[dt]).itemsize
        nbytes = int(np.prod(shape, dtype=object)) * itemsize
        if offs[1] - offs[0] != nbytes:
            raise InputError(path, where, f"data_offsets span {offs[1] - offs[0]} bytes but "
                             f"shape {shape} of {dt} needs {nbytes}")
        if offs[1] > data_size:
            raise InputError(path, where, f"data ends at byte {data_start + offs[1]}, past the "
                             f"end of the file ({size} bytes): truncated?")
        spans.append((offs[0], offs[1], name))
        entries.append((name, tuple(shape), dt, offs[0], nbytes))
    spans.sort()
    at, prev = 0, None  # the format packs tensors back to back: no overlap, hole or tail
    for start, end, name in spans:
        if start < at:
            raise InputError(path, f"tensor {name!r}", f"data overlaps tensor {prev!r}")
        if start > at:
            raise InputError(path, f"tensor {name!r}", f"{start - at} unclaimed bytes before "
                             f"its data at byte {data_start + at}")
        at, prev = end, name
    if at != data_size:
        raise InputError(path, f"byte {data_start + at}", f"{data_size - at} bytes after the "
                         "last tensor's data: not a safetensors file, or a damaged one")
    if any(n for *_, n in entries):
        fd = os.open(path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
    out = []
    for name, shape, dt, start, nbytes in entries:
        def load(shape=shape, dt=dt, start=start) -> np.ndarray:
            count = int(np.prod(shape, dtype=np.int64))
            if count == 0:
                return np.zeros(shape, SAFETENSORS_DTYPES[dt])
            return np.frombuffer(mm, SAFETENSORS_DTYPES[dt], count,
                                 data_start + start).reshape(shape)

        def release(start=start, nbytes=nbytes) -> None:
            page = mmap.PAGESIZE
            lo = (data_start + start) // page * page
            if mm is not None and nbytes and hasattr(mm, "madvise"):
                try:
                    mm.madvise(mmap.MADV_DONTNEED, lo, data_start + start + nbytes - lo)
                except (OSError, ValueError):
                    pass
        out.append(TensorEntry(name, shape, dt, load, nbytes, release=release))
    return TensorFile(path, "safetensors", out, {str(k): str(v) for k, v in meta.items()})


def _open_gguf(path: str) -> TensorFile:
    try:
        from gguf import GGMLQuantizationType, GGUFReader
    except ImportError:
        raise ConfigError("reading GGUF needs the gguf package: pip install "
                          "'memstack[gguf]'") from None
    size = os.path.getsize(path)
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, KeyError, IndexError on bad bytes
        msg = str(exc) or type(exc).__name__
        if "reshape" in msg or "buffer is too small" in msg:  # a tensor's data is cut short
            raise InputError(path, f"byte {size}", "tensor data runs past the end of the file "
                             "(truncated?)") from None
        raise InputError(path, "header", f"not a readable GGUF file ({msg})") from None
    entries = []
    for t in reader.tensors:
        end = t.data_offset + t.n_bytes
        if end > size:
            raise InputError(path, f"tensor {t.name!r}", f"data ends at byte {end}, past the end "
                             f"of the file ({size} bytes): truncated?")
        qtype = GGMLQuantizationType(int(t.tensor_type))
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        dt = {0: "F32", 1: "F16", 30: "BF16"}.get(int(qtype), qtype.name)

        def load(t=t, dt=dt) -> np.ndarray:
            return t.data.view(np.uint16) if dt == "BF16" else t.data
        entries.append(TensorEntry(t.name, shape, dt, load, int(t.n_bytes), int(qtype),
                                   release=lambda t=t: _drop_pages(t.data)))
    return TensorFile(path, "gguf", entries, gguf=reader)
