"""The default embedder: feature hashing, numpy only, no downloads, same vectors everywhere.

Each text becomes a signed, hashed bag of word stems, stem bigrams and character 3-5-grams
(subwords, so "painting" meets "paint" and typos still match). Documents are stored with
plain counts; a query weights each word's features by its IDF from the store's own BM25
statistics, so rare words dominate without re-embedding the store as it grows.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from memstack.core.analyze import Analysis, Analyzer, get_analyzer

CHAR_NGRAMS = (3, 4, 5)
CHAR_WEIGHT = 0.35
BIGRAM_WEIGHT = 1.0


def _mix(h: np.ndarray) -> np.ndarray:
    """A 32-bit integer finaliser (murmur3 fmix32) done in uint64 to avoid overflow."""
    h = h.astype(np.uint64)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    return h


class HashingEmbedder:
    """`hash` or `hash:dim=N`: hashed lexical features, L2-normalised float32 vectors."""

    name = "hash"
    uses_idf = True

    def __init__(self, arg: str | None = None):
        dim = 128  # lexical features: recall is flat from 128 to 384 dims on LoCoMo
        for part in filter(None, (arg or "").split(",")):
            key, _, val = part.partition("=")
            if key == "dim" or (not val and key.isdigit()):
                dim = int(val or key)
            else:
                raise ValueError(f"hash embedder: unknown option {part!r} (use dim=N)")
        if not 16 <= dim <= 8192:
            raise ValueError("hash embedder: dim must be between 16 and 8192")
        self.dim = dim
        self.analyzer: Analyzer = get_analyzer()
        self._ptr = np.zeros(1, dtype=np.int64)
        self._bucket = np.zeros(0, dtype=np.int64)
        self._val = np.zeros(0, dtype=np.float32)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._known = 0

    def spec(self) -> str:
        return f"hash:dim={self.dim}"

    def identity(self) -> dict:
        return {"name": "hash", "version": 1, "dim": self.dim, "spec": self.spec(),
                "features": "stem+bigram+char3-5/crc32"}

    # -- per-word features, built once per distinct word ------------------------------
    def _sync(self) -> None:
        """Extend the per-word feature table (CSR) to every word the analyzer knows."""
        an = self.analyzer
        n = len(an.stems)
        if n < self._known:  # the analyzer's cache was reset
            self._ptr = np.zeros(1, dtype=np.int64)
            self._bucket = np.zeros(0, dtype=np.int64)
            self._val = np.zeros(0, dtype=np.float32)
            self._known = 0
        if n == self._known:
            return
        keys: list[int] = []
        vals: list[float] = []
        lens: list[int] = []
        crc = zlib.crc32
        for w in range(self._known, n):
            surface = "<" + an.surface[w] + ">"
            grams = [surface[i : i + k] for k in CHAR_NGRAMS
                     for i in range(len(surface) - k + 1)]
            keys.append(an.stem_hash[w])
            keys.extend(crc(g.encode("utf-8")) ^ 0x5BD1E995 for g in grams)
            vals.append(1.0)
            vals.extend([CHAR_WEIGHT] * len(grams))
            lens.append(1 + len(grams))
        h = _mix(np.asarray(keys, dtype=np.uint64))
        sign = np.where((h >> np.uint64(31)) & np.uint64(1), -1.0, 1.0).astype(np.float32)
        self._ptr = np.concatenate([self._ptr, self._ptr[-1] + np.cumsum(lens)])
        self._bucket = np.concatenate([self._bucket, (h % np.uint64(self.dim)).astype(np.int64)])
        self._val = np.concatenate([self._val, sign * np.asarray(vals, dtype=np.float32)])
        self._known = n

    def _vectors(self, a: Analysis, word_weight: np.ndarray | None) -> np.ndarray:
        self._sync()
        n, dim = a.n_docs, self.dim
        out = np.zeros((n, dim), dtype=np.float32)
        if len(a.word) == 0:
            return out
        # dense features of each distinct word of the batch, then summed per document
        uniq, local = np.unique(a.word, return_inverse=True)
        starts = self._ptr[uniq]
        lens = self._ptr[uniq + 1] - starts
        offs = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
        rows = np.repeat(np.arange(len(uniq), dtype=np.int64), lens)
        feats = np.bincount(rows * dim + self._bucket[offs], weights=self._val[offs],
                            minlength=len(uniq) * dim).reshape(len(uniq), dim)
        feats = feats.astype(np.float32)
        weights = (np.ones(len(local), dtype=np.float32) if word_weight is None
                   else word_weight.astype(np.float32))
        if n == 1:
            out[0] = weights @ feats[local]
        else:
            import scipy.sparse as sp  # C++ sparse x dense: 20x faster than np.add.reduceat

            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.bincount(a.doc, minlength=n), out=indptr[1:])
            out += sp.csr_matrix((weights, local, indptr), shape=(n, len(uniq))) @ feats
        # stem bigrams inside each document
        if len(a.word) > 1:
            same = a.doc[1:] == a.doc[:-1]
            sh = np.asarray(self.analyzer.stem_hash, dtype=np.uint64)[a.word]
            pair = _mix((sh[:-1] * np.uint64(0x01000193) ^ sh[1:]) & np.uint64(0xFFFFFFFF))[same]
            bval = np.where((pair >> np.uint64(31)) & np.uint64(1), -BIGRAM_WEIGHT, BIGRAM_WEIGHT)
            if word_weight is not None:
                bval = bval * np.sqrt(word_weight[:-1] * word_weight[1:])[same]
            bflat = a.doc[:-1][same].astype(np.int64) * dim + (pair % np.uint64(dim)).astype(
                np.int64)
            out += np.bincount(bflat, weights=bval, minlength=n * dim).reshape(n, dim).astype(
                np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def embed(self, texts: list[str], analysis: Analysis | None = None) -> np.ndarray:
        """Document vectors, shape (len(texts), dim)."""
        return self._vectors(analysis or self.analyzer.analyze(texts), None)

    def embed_query(self, text: str,
                    idf: Callable[[list[str]], np.ndarray] | None = None) -> np.ndarray:
        """A query vector; `idf(stems)` weights each word when store statistics exist."""
        a = self.analyzer.analyze([text])
        weight = None
        if idf is not None and len(a.word):
            weight = np.asarray(idf([self.analyzer.stems[i] for i in a.word]), dtype=np.float64)
        return self._vectors(a, weight)[0]
