"""Framed record streams: a header, the records, an `eos` trailer; msgpack or JSON Lines.

msgpack's Unpacker stops silently on a cut stream, so readers insist on the trailer and
report truncation with the byte offset where the data ended.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

import msgpack

from memstack import __version__
from memstack.core.errors import InputError
from memstack.formats import ndarray
from memstack.formats.records import FORMAT_NAME, VERSION, check_version

MAX_BUFFER = 1 << 30  # one record may be up to 1 GiB (big tensors)
MSGPACK_MAP_FIRST = set(range(0x80, 0x90)) | {0xDE, 0xDF}


def header(meta: dict | None = None) -> dict:
    head = {"kind": "header", "format": FORMAT_NAME, "v": list(VERSION),
            "producer": f"memstack {__version__}"}
    if meta:
        head["meta"] = meta
    return head


def sniff(fp: IO[bytes]) -> str:
    """Guess 'msgpack', 'jsonl' or 'empty' from the first byte without consuming it."""
    if hasattr(fp, "peek"):
        first = fp.peek(1)[:1]
    elif getattr(fp, "seekable", lambda: False)():  # io.BytesIO: read one byte, step back
        here = fp.tell()
        first = fp.read(1)
        fp.seek(here)
    else:
        first = b""
    if not first:
        return "empty"
    if first[0] in MSGPACK_MAP_FIRST:
        return "msgpack"
    return "jsonl"


def _json_default(obj: Any):
    import numpy as np

    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be encoded (no pickle)")
        data = base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode()
        return {"$ndarray": {"dtype": obj.dtype.str, "shape": list(obj.shape), "data": data}}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(obj)).decode()}
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def _json_hook(obj: dict):
    if len(obj) == 1:
        if "$ndarray" in obj:
            import numpy as np

            spec = obj["$ndarray"]
            arr = np.frombuffer(base64.b64decode(spec["data"], validate=True),
                                dtype=np.dtype(spec["dtype"]))
            return arr.reshape(spec["shape"])
        if "$bytes" in obj:
            return base64.b64decode(obj["$bytes"], validate=True)
    return obj


def to_json(rec: Any) -> str:
    return json.dumps(rec, ensure_ascii=False, default=_json_default, separators=(",", ":"))


class RecordWriter:
    """Write a framed stream; call close() (or use as a context manager) to write the trailer."""

    def __init__(self, fp: IO[bytes], fmt: str = "msgpack", meta: dict | None = None):
        if fmt not in ("msgpack", "jsonl"):
            raise ValueError(f"unknown stream format {fmt!r}")
        self.fp = fp
        self.fmt = fmt
        self.count = 0
        self._packer = msgpack.Packer(default=ndarray.default, use_bin_type=True)
        self._closed = False
        self._emit(header(meta))

    def _emit(self, rec: dict) -> None:
        if self.fmt == "msgpack":
            self.fp.write(self._packer.pack(rec))
        else:
            self.fp.write(to_json(rec).encode("utf-8") + b"\n")

    def write(self, rec: dict) -> None:
        self._emit(rec)
        self.count += 1

    def write_many(self, recs: Iterable[dict]) -> None:
        """Many records in one write (sweeps emit hundreds of thousands)."""
        if self.fmt == "msgpack":
            pack = self._packer.pack
            chunk = [pack(r) for r in recs]
            self.fp.write(b"".join(chunk))
        else:
            chunk = [to_json(r).encode("utf-8") + b"\n" for r in recs]
            self.fp.write(b"".join(chunk))
        self.count += len(chunk)

    def flush(self) -> None:
        self.fp.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit({"kind": "eos", "count": self.count})
            self.fp.flush()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


class RecordReader:
    """Iterate the records of a framed stream, checking header, versions and trailer.

    `header` is available after the first record (or after exhausting an empty stream).
    """

    def __init__(self, fp: IO[bytes], name: str = "<stdin>", fmt: str | None = None):
        self.fp = fp
        self.name = name
        self.fmt = fmt or sniff(fp)
        self.header: dict | None = None
        self.count = 0

    def __iter__(self) -> Iterator[dict]:
        if self.fmt == "empty":
            raise InputError(self.name, "byte 0", "empty input: expected a memstack record stream")
        objs = self._msgpack() if self.fmt == "msgpack" else self._jsonl()
        first = True
        seen_eos = False
        for where, obj in objs:
            if seen_eos:
                raise InputError(self.name, where, "data after the end-of-stream trailer")
            problem = check_version(obj)
            if problem:
                raise InputError(self.name, where, problem)
            kind = obj.get("kind")
            if first:
                first = False
                if kind != "header" or obj.get("format") != FORMAT_NAME:
                    raise InputError(self.name, where,
                                     "not a memstack record stream (no header record)")
                self.header = obj
                continue
            if kind == "eos":
                if obj.get("count") != self.count:
                    raise InputError(self.name, where, f"trailer counts {obj.get('count')} "
                                     f"records but the stream held {self.count}")
                seen_eos = True
                continue
            if kind == "header":
                raise InputError(self.name, where, "second header inside a stream")
            self.count += 1
            yield obj
        if first:
            raise InputError(self.name, "byte 0", "empty input: expected a memstack record stream")
        if not seen_eos:
            raise InputError(self.name, self._end_position(),
                             "stream is truncated (no end-of-stream trailer)")

    def _end_position(self) -> str:
        return getattr(self, "_end", "end of input")

    def _msgpack(self) -> Iterator[tuple[str, Any]]:
        unpacker = msgpack.Unpacker(self.fp, raw=False, ext_hook=ndarray.ext_hook,
                                    max_buffer_size=MAX_BUFFER, strict_map_key=False)
        pos = 0
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                self._end = f"byte {unpacker.tell()}"
                if unpacker.tell() != pos:
                    raise InputError(self.name, f"byte {pos}",
                                     "stream is truncated in the middle of a record") from None
                return
            except UnicodeDecodeError:
                raise InputError(self.name, f"byte {pos}", "invalid UTF-8 in a string") from None
            except (ValueError, msgpack.UnpackException, TypeError) as exc:
                raise InputError(self.name, f"byte {pos}",
                                 f"garbled msgpack ({str(exc) or type(exc).__name__})") \
                    from None
            yield f"byte {pos}", obj
            pos = unpacker.tell()
            self._end = f"byte {pos}"

    def _jsonl(self) -> Iterator[tuple[str, Any]]:
        offset = 0
        lineno = 0
        for lineno, raw in enumerate(self.fp, 1):
            where = f"line {lineno}"
            start = offset
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(self.name, f"{where} (byte {start + exc.start})",
                                 "invalid UTF-8") from None
            try:
                obj = json.loads(text, object_hook=_json_hook)
            except RecursionError:
                raise InputError(self.name, where, "malformed JSON (nested too deeply)") \
                    from None
            except (ValueError, KeyError, TypeError) as exc:
                col = getattr(exc, "colno", None)
                pos = f"{where}, column {col}" if col else where
                raise InputError(self.name, pos, f"malformed JSON ({getattr(exc, 'msg', exc)})") \
                    from None
            yield where, obj
        self._end = f"line {lineno + 1}"


def read_records(fp: IO[bytes], name: str = "<stdin>") -> Iterator[dict]:
    """Records of a framed stream (msgpack or JSONL, sniffed)."""
    return iter(RecordReader(fp, name))
