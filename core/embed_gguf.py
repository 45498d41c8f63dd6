"""`gguf:PATH`: embed with a local GGUF language model through ctransformers (offline, optional).

The vector of a text is the model's final hidden state at the last token (what llama.cpp's
embedding mode returns in ctransformers 0.2.27), L2-normalised. Each text is evaluated from
position 0 with a fresh KV cache, so a vector never depends on the texts embedded before it.

The GGUF header is read here, by a small streaming parser, rather than with `gguf.GGUFReader`:
the reader decodes the whole vocabulary (5 s for a 150k-token vocabulary), while this one reads
only the few keys we need and checks the tensor table, so a file that would crash the C library
(truncated, big-endian, a tensor type ctransformers 0.2.27 does not know) fails with a one-line
error instead of a segfault.
"""

from __future__ import annotations

import hashlib
import importlib.util
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError, MemstackError

INSTALL_HINT = "gguf embedder needs ctransformers: pip install 'memstack[llm]'"
DEFAULT_CTX = 512  # llama.cpp's default n_ctx: a longer context costs KV-cache memory
MAX_BATCH = 512  # ctransformers 0.2.27 builds llama contexts with n_batch = 512
CHARS_PER_TOKEN_CAP = 32  # cut text before tokenizing: no real token is longer than this
HASH_CHUNK = 1 << 20
_OPTIONS = {"model_type", "ctx", "threads"}

# GGUF metadata value types: struct format and size of the fixed-size ones
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
_STRING, _ARRAY = 8, 9
# ggml tensor types ctransformers 0.2.27 (llama.cpp of Sep 2023) loads: (block bytes, block size)
_GGML_TYPES = {0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32),
               8: (34, 32), 10: (84, 256), 11: (110, 256), 12: (144, 256), 13: (176, 256),
               14: (210, 256)}
_hash_cache: dict[tuple[str, int, int, int], str] = {}


class _Header:
    """Bounds-checked little-endian reads over the mapped file, errors name the byte offset."""

    def __init__(self, buf: Any, path: str):
        self.buf, self.path, self.pos = buf, path, 0

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"gguf embedder: {self.path}: byte {self.pos}: {what}")

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise self.fail("file is truncated (GGUF header ends early)")
        (val,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return val

    def string(self, len_fmt: str) -> bytes:
        n = self.take(len_fmt)
        if self.pos + n > len(self.buf):
            raise self.fail(f"string of {n} bytes runs past the end of the file")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos])

    def value(self, vtype: int, len_fmt: str) -> Any:
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string(len_fmt).decode("utf-8", "replace")
        if vtype == _ARRAY:
            itype, count = self.take("I"), self.take(len_fmt)
            if itype in _SCALAR:  # skip fixed-size items in one step
                size = struct.calcsize("<" + _SCALAR[itype]) * count
                if self.pos + size > len(self.buf):
                    raise self.fail(f"array of {count} items runs past the end of the file")
                self.pos += size
            else:
                for _ in range(count):
                    self.value(itype, len_fmt)
            return None  # arrays are skipped; no key we need is an array
        raise self.fail(f"unknown metadata value type {vtype}")


def read_gguf_info(path: str) -> dict[str, Any]:
    """Check a GGUF file's header and tensor table; return its architecture, dims and context.

    Raises ConfigError naming the path (and the byte offset) for anything ctransformers 0.2.27
    could not load, because the C library aborts the process on such files.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ConfigError(f"gguf embedder: {path}: not a GGUF file (no GGUF magic)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Header(buf, path), len(buf))
    except OSError as exc:
        raise ConfigError(f"gguf embedder: cannot read {path}: {exc.strerror or exc}") from None


def _parse(h: _Header, size: int) -> dict[str, Any]:
    h.pos = 4
    version = h.take("I")
    if version & 0xFFFF == 0 and version:
        raise h.fail("big-endian GGUF files are not supported")
    if not 1 <= version <= 3:
        raise h.fail(f"unsupported GGUF version {version} (expected 1 to 3)")
    len_fmt = "I" if version == 1 else "Q"
    n_tensors, n_kv = h.take(len_fmt), h.take(len_fmt)
    if n_kv > size // 8 or n_tensors > size // 16:
        raise h.fail(f"implausible counts ({n_tensors} tensors, {n_kv} metadata keys)")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = h.string(len_fmt).decode("utf-8", "replace")
        meta[key] = h.value(h.take("I"), len_fmt)
    data_end = 0
    for _ in range(n_tensors):
        name = h.string(len_fmt).decode("utf-8", "replace")
        n_dims = h.take("I")
        if n_dims > 4:
            raise h.fail(f"tensor {name!r} has {n_dims} dimensions (at most 4)")
        count = 1
        for _ in range(n_dims):
            count *= h.take(len_fmt)
        ttype, offset = h.take("I"), h.take("Q")
        if ttype not in _GGML_TYPES:
            raise h.fail(f"tensor {name!r} has ggml type {ttype}, which ctransformers 0.2.27 "
                         "cannot load (use an f16, q4_0..q8_0 or k-quant file)")
        block_bytes, block = _GGML_TYPES[ttype]
        data_end = max(data_end, offset + -(-count // block) * block_bytes)
    align = meta.get("general.alignment") or 32
    if not isinstance(align, int) or align <= 0:
        raise h.fail(f"bad general.alignment {align!r}")
    start = -(-h.pos // align) * align
    if start + data_end > size:
        raise ConfigError(f"gguf embedder: {h.path}: file is truncated: tensor data needs "
                          f"{start + data_end} bytes, the file has {size}")
    arch = meta.get("general.architecture")
    dim = meta.get(f"{arch}.embedding_length")
    if not isinstance(arch, str) or not isinstance(dim, int) or dim <= 0:
        raise ConfigError(f"gguf embedder: {h.path}: no general.architecture or "
                          f"<arch>.embedding_length in the GGUF metadata")
    ctx = meta.get(f"{arch}.context_length")
    return {"version": version, "arch": arch, "dim": dim,
            "context_length": ctx if isinstance(ctx, int) and ctx > 0 else None}


def file_sha256(path: str, chunk: int = HASH_CHUNK) -> str:
    """First 16 hex digits of the file's sha256, cached per (path, size, mtime, inode)."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()[:16]
    return _hash_cache[key]


def _cpu_lib() -> str | None:
    """The ctransformers build for this CPU, read from /proc/cpuinfo on x86 Linux.

    ctransformers otherwise asks py-cpuinfo, which spawns a subprocess and costs about a second
    of every process start. None lets ctransformers decide (other systems, a local build).
    """
    import ctransformers

    if (Path(ctransformers.__file__).parent / "lib" / "local").is_dir():
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    if "avx2" in flags:
        return "avx2"
    return "avx" if "avx" in flags and "f16c" in flags else "basic"


def _parse_arg(arg: str | None) -> tuple[str, dict[str, str]]:
    """Split `PATH[,model_type=llama][,ctx=N][,threads=N]`; commas inside PATH stay in PATH."""
    parts = (arg or "").split(",")
    opts: dict[str, str] = {}
    while len(parts) > 1:
        key, eq, val = parts[-1].partition("=")
        if not eq or key.strip() not in _OPTIONS:
            break
        opts.setdefault(key.strip(), val.strip())
        parts.pop()
    path = ",".join(parts).strip()
    if not path:
        raise ConfigError("gguf embedder: give a model file, e.g. --embedder gguf:model.gguf")
    return path, opts


def _int_opt(opts: dict[str, str], key: str, lo: int) -> int | None:
    if key not in opts:
        return None
    try:
        val = int(opts[key])
    except ValueError:
        val = lo - 1
    if val < lo:
        raise ConfigError(f"gguf embedder: {key} must be an integer >= {lo}, got {opts[key]!r}")
    return val


class GgufEmbedder:
    """`gguf:PATH[,model_type=llama][,ctx=N][,threads=N]`: last-token LLM embeddings.

    The model loads on the first embed, so opening a store (which only needs `identity()`)
    does not pay for it. `ctx` caps tokens per text (default min(model context, 512)).
    """

    name = "gguf"
    uses_idf = False

    def __init__(self, arg: str | None = None):
        raw, opts = _parse_arg(arg)
        path = Path(raw).expanduser()
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(f"gguf embedder: model file {raw} {what}")
        if importlib.util.find_spec("ctransformers") is None:
            raise MemstackError(INSTALL_HINT)
        self.path = str(path.resolve())
        info = read_gguf_info(self.path)
        self.arch: str = info["arch"]
        self.dim: int = info["dim"]
        self.model_type = opts.get("model_type") or "llama"
        model_ctx = info["context_length"]
        ctx = _int_opt(opts, "ctx", 8)
        self._ctx_opt = ctx
        self.context_length = min(ctx or DEFAULT_CTX, model_ctx or DEFAULT_CTX)
        self.threads = _int_opt(opts, "threads", 1) or min(2, os.cpu_count() or 1)
        self._llm: Any = None

    def spec(self) -> str:
        extra = "" if self.model_type == "llama" else f",model_type={self.model_type}"
        if self._ctx_opt is not None:
            extra += f",ctx={self._ctx_opt}"
        return f"gguf:{self.path}{extra}"

    def identity(self) -> dict:
        """What the store records: changes when the file's bytes or the options change."""
        return {"name": "gguf", "version": 1, "dim": self.dim, "spec": self.spec(),
                "file_sha256": file_sha256(self.path), "size": os.path.getsize(self.path)}

    # -- the model, loaded once per instance --------------------------------------------
    def _model(self) -> Any:
        if self._llm is None:
            try:
                from ctransformers import LLM, Config
            except ImportError:
                raise MemstackError(INSTALL_HINT) from None
            config = Config(context_length=self.context_length, threads=self.threads,
                            batch_size=min(MAX_BATCH, self.context_length))
            try:
                llm = LLM(self.path, self.model_type, config=config, lib=_cpu_lib())
            except (RuntimeError, ValueError, OSError) as exc:
                raise MemstackError(f"gguf embedder: cannot load {self.path}: {exc}") from None
            if llm.ctransformers_llm_embeddings_size() not in (0, self.dim):
                raise MemstackError(f"gguf embedder: {self.path}: model embeds into "
                                    f"{llm.ctransformers_llm_embeddings_size()} dims, the "
                                    f"header says {self.dim}")
            self.context_length = min(self.context_length, int(llm.context_length))
            self._llm = llm
        return self._llm

    def tokenize(self, text: str) -> list[int]:
        """Token ids (with BOS) of at most `context_length` tokens.

        Calls the C function with a buffer sized for the worst case: ctransformers' own
        `tokenize` sizes it by characters and overflows the heap on byte-fallback text (emoji).
        """
        import ctypes

        llm = self._model()
        cut = text[: self.context_length * CHARS_PER_TOKEN_CAP].replace("\x00", " ")
        data = cut.encode("utf-8", "replace")
        # each token covers >= 1 byte of " " + text with spaces escaped to 3-byte "▁", plus BOS
        buf = (ctypes.c_int * (3 * len(data) + 8))()
        n = llm.ctransformers_llm_tokenize(data, llm.model_type == "llama", buf)  # as ctransformers
        return list(buf[: min(n, self.context_length)])

    def _embed_one(self, text: str) -> np.ndarray:
        out = np.zeros(self.dim, dtype=np.float32)
        if not text.strip():
            return out
        import ctypes

        llm = self._model()
        tokens = self.tokenize(text)
        arr = (ctypes.c_int * len(tokens))(*tokens)
        batch = min(MAX_BATCH, self.context_length)
        if not llm.ctransformers_llm_batch_eval(arr, len(tokens), 0, batch, self.threads):
            raise MemstackError(f"gguf embedder: {self.path}: evaluation failed")
        n = llm.ctransformers_llm_embeddings_size()
        if n != self.dim:
            raise MemstackError(f"gguf embedder: {self.path}: got {n} embedding values, "
                                f"expected {self.dim} (does this architecture embed?)")
        vec = np.ctypeslib.as_array(llm.ctransformers_llm_embeddings_data(), shape=(n,))
        out[:] = vec
        if not np.isfinite(out).all():
            raise MemstackError(f"gguf embedder: {self.path}: the model produced NaN/inf")
        norm = float(np.linalg.norm(out))
        if norm > 0:
            out /= norm
        return out

    def embed(self, texts: list[str], analysis: object | None = None) -> np.ndarray:
        """Document vectors, shape (len(texts), dim); blank texts give zero rows."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._embed_one(text)
        return out

    def embed_query(self, text: str,
                    idf: Callable[[list[str]], np.ndarray] | None = None) -> np.ndarray:
        """A query vector, shape (dim,); `idf` is ignored (uses_idf is False)."""
        return self._embed_one(text)
