"""Lexical analysis shared by BM25 and the hashing embedder: words, stop words, stems.

Deterministic across runs and machines (no Python `hash()`, crc32 for features), and cached
per distinct word because chat text repeats the same few thousand words.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)

# English function words: articles, pronouns, auxiliaries, question words, conjunctions.
STOP_WORDS = frozenset("""
a an the and or but nor so yet if then than because as of at by for from in into on onto to
up down out off over under with within without about above below between through during
before after again further once here there when where why how what which who whom whose
all any both each few more most other some such no not only own same too very just also
i me my myself we us our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves this that these those
am is are was were be been being have has had having do does did doing will would shall
should can could may might must ought let lets s t d ll m re ve don didn doesn isn wasn aren
weren won wouldn couldn shouldn hasn haven hadn
""".split())

_CACHE_LIMIT = 1 << 19


@dataclass
class Analysis:
    """A batch of texts as flat arrays: token i belongs to doc `doc[i]` and is word `word[i]`."""

    doc: np.ndarray  # int32, document index of each kept (non-stop) token
    word: np.ndarray  # int32, analyzer word id of each kept token
    n_docs: int


class Analyzer:
    """Lower-case, split into words, drop stop words, Snowball-stem; word ids are per process."""

    def __init__(self, language: str = "english"):
        import Stemmer

        self._stemmer = Stemmer.Stemmer(language)
        self._ids: dict[str, int] = {}  # surface word -> word id (-1 for stop words)
        self.surface: list[str] = []
        self.stems: list[str] = []
        self.stem_hash: list[int] = []
        self.word_stem: list[int] = []  # word id -> stem id (several words share a stem)
        self.stem_ids: dict[str, int] = {}
        self.stem_list: list[str] = []

    def _new_words(self, words: list[str]) -> None:
        todo = [w for w in dict.fromkeys(words) if w not in self._ids]
        if not todo:
            return
        if len(self._ids) > _CACHE_LIMIT:
            self._ids.clear()
            self.surface.clear()
            self.stems.clear()
            self.stem_hash.clear()
            self.word_stem.clear()
        keep = [w for w in todo if w not in STOP_WORDS and _base(w) not in STOP_WORDS]
        for w in todo:
            self._ids[w] = -1
        stems = self._stemmer.stemWords([_base(w) for w in keep])
        for w, s in zip(keep, stems, strict=True):
            self._ids[w] = len(self.stems)
            self.surface.append(w)
            self.stems.append(s)
            self.stem_hash.append(zlib.crc32(s.encode("utf-8")))
            sid = self.stem_ids.get(s)
            if sid is None:
                sid = self.stem_ids[s] = len(self.stem_list)
                self.stem_list.append(s)
            self.word_stem.append(sid)

    def words(self, text: str) -> list[str]:
        return WORD.findall(text.lower())

    def terms(self, text: str) -> list[str]:
        """Stems of the non-stop words of one text, in order (for BM25 and queries)."""
        words = self.words(text)
        self._new_words(words)
        ids = self._ids
        stems = self.stems
        return [stems[i] for i in (ids[w] for w in words) if i >= 0]

    def analyze(self, texts: list[str]) -> Analysis:
        per_doc = [self.words(t) for t in texts]
        self._new_words([w for ws in per_doc for w in ws])
        ids = self._ids
        flat: list[int] = []
        lens = np.empty(len(texts), dtype=np.int64)
        for i, ws in enumerate(per_doc):
            kept = [j for j in map(ids.__getitem__, ws) if j >= 0]
            lens[i] = len(kept)
            flat.extend(kept)
        word = np.asarray(flat, dtype=np.int32)
        doc = np.repeat(np.arange(len(texts), dtype=np.int32), lens)
        return Analysis(doc=doc, word=word, n_docs=len(texts))


def _base(word: str) -> str:
    """Strip a possessive or contraction: "caroline's" -> "caroline"."""
    for ap in ("'", "’"):
        if ap in word:
            return word.split(ap, 1)[0]
    return word


_SHARED: Analyzer | None = None


def get_analyzer() -> Analyzer:
    """The process-wide analyzer, so BM25 and the hashing embedder share word ids and caches."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Analyzer()
    return _SHARED
