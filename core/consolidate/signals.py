"""Deterministic text signals for consolidation: exact keys, MinHash/LSH, value signals and
keywords; (subject, slot, value) claims live in claims.py and are re-exported here.

Everything here is a pure function of the text, stable across
runs, machines and numpy versions, because exact keys and band keys go into the store's
candidate index and must match what a later run computes.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from memstack.core.analyze import STOP_WORDS

# -- normalisation and exact keys ---------------------------------------------------------

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


class _DropMarks(dict):
    """str.translate table deleting Unicode punctuation (P*) and symbols (S*), filled per
    code point on first sight so translate stays in C."""

    def __missing__(self, cp: int) -> int | None:
        v = None if unicodedata.category(chr(cp))[0] in "PS" else cp
        self[cp] = v
        return v


_DROP_MARKS = _DropMarks()


def _fold(text: str) -> str:
    """NFKC case fold (NFKC, casefold, NFKC again: casefolding can denormalise, "ῒ")."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return t if t.isascii() else unicodedata.normalize("NFKC", t)


def _strip_marks(text: str) -> str:
    """Case-folded, punctuation and symbols dropped, whitespace collapsed: the form of
    exact keys, word counts and MinHash shingles."""
    return " ".join(_fold(text).translate(_DROP_MARKS).split())


def exact_key(text: str) -> bytes:
    """16-byte key of the text normalised harder than ids, so case, spacing and punctuation
    variants of one sentence ("I work at Google." / "i work at google") share it."""
    return hashlib.blake2b(_strip_marks(text).encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()


def words(text: str) -> list[str]:
    """Casefolded words of the NFKC text (apostrophes inside words kept)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def word_count(text: str) -> int:
    """Words of the exact-key form ("don't" is one word, "😂" none)."""
    return len(unicodedata.normalize("NFKC", text).translate(_DROP_MARKS).split())


# -- MinHash over word bigrams ------------------------------------------------------------
#
# Shingles are word 2-grams of the exact-key form (a one-word text is its word, an empty
# text one fixed shingle, so every text has a signature). Chat turns are short (median
# ~15 words): with 3-grams one substituted word in a 10-word turn removes 3 of 8 shingles
# and the Jaccard drops to 0.45, so real near-duplicates (a typo, an added "really") fall
# below any useful threshold; 1-grams ignore order. With 2-grams one edit in an n-word
# text leaves (n-3)/(n+1): 0.6 at 9 words, 0.75 at 15.
#
# Each shingle is hashed once to 32 bits (crc32 of each distinct word, mixed pairwise), then
# num_perm universal hashes h(x) = (a*x + b) mod (2^31 - 1) run for all permutations at once
# on uint64 blocks (a, b < p and x < p, so a*x + b < 2^62 never overflows). The reduction
# must be complete: one Mersenne fold alone leaves the high half of a*x in the value,
# which orders small shingle hashes first in every permutation and inflated estimates
# from 0.69 to 0.90 in testing. Measured on 100k synthetic 22-word chat turns
# (benchmarks/synth.py, 2.1M shingles) on the shared 2-core dev box: minhash 1.3-1.5 s
# (tokenising ~0.4 s, hashing ~0.6 s), band_keys 0.05 s; one text alone ~40 us.

_P31 = np.uint64((1 << 31) - 1)
_MASK31 = (1 << 31) - 1
_BLOCK = 4096  # shingle rows per hashing block (4096 x 64 x 8 B = 2 MiB stays in cache)
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_UNI = np.uint64(0x5851F42D4C957F2D)  # marks a one-word text's shingle
_EMPTY = np.uint64(0x2545F4914F6CDD1D)  # the shingle of an empty text
_SEP = "\x00"  # a control character: kept by _DROP_MARKS, never inside a word


@lru_cache(maxsize=8)
def _perm_params(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) per permutation from BLAKE2b, not numpy's RNG, so signatures never change."""
    a = np.empty(num_perm, dtype=np.uint64)
    b = np.empty(num_perm, dtype=np.uint64)
    for i in range(num_perm):
        d = hashlib.blake2b(b"memstack-minhash-%d" % i, digest_size=16).digest()
        a[i] = int.from_bytes(d[:8], "little") % _MASK31 or 1
        b[i] = int.from_bytes(d[8:], "little") % _MASK31
    return a, b


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place on a uint64 array)."""
    x ^= x >> np.uint64(30)
    x *= _M2
    x ^= x >> np.uint64(27)
    x *= _M3
    x ^= x >> np.uint64(31)
    return x


_SEP_HASH = 1 << 40  # outside crc32's range, so no word hashes to it
_word_hash: dict[str, int] = {_SEP: _SEP_HASH}


def _shingles(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes (< 2^31) in text order and the text index of each."""
    joined = " \x00 ".join(t.replace(_SEP, " ") for t in texts) + " \x00"
    toks = _fold(joined).translate(_DROP_MARKS).split()
    cache = _word_hash
    if len(cache) > 1 << 20:
        cache.clear()
        cache[_SEP] = _SEP_HASH
    for w in set(toks).difference(cache):
        cache[w] = zlib.crc32(w.encode("utf-8", "surrogatepass"))
    h = np.fromiter(map(cache.__getitem__, toks), dtype=np.uint64, count=len(toks))
    sep = h == np.uint64(_SEP_HASH)
    prev_sep = np.concatenate([[True], sep[:-1]])
    next_sep = np.concatenate([sep[1:], [True]])
    word = ~sep
    nxt = np.concatenate([h[1:], [np.uint64(0)]])
    x = np.where(next_sep, h ^ _UNI, h * _M1 + nxt)  # bigram, or the lone word of a text
    x[sep] = _EMPTY
    keep = (word & ~next_sep) | (word & next_sep & prev_sep) | (sep & prev_sep)
    doc = (np.cumsum(sep) - sep)[keep]
    x = _mix(x[keep]) >> np.uint64(33)  # 31 bits, below the prime
    return x, doc


def minhash(texts: list[str], num_perm: int = 64) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures over word bigrams of the normalised texts."""
    n = len(texts)
    sig = np.full((n, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    if n == 0:
        return sig
    a, b = _perm_params(num_perm)
    x, doc = _shingles(texts)
    starts = np.searchsorted(doc, np.arange(n))
    for lo in range(0, len(x), _BLOCK):
        hi = min(lo + _BLOCK, len(x))
        hv = np.multiply.outer(x[lo:hi], a)
        hv += b
        for _ in range(2):  # Mersenne reduction: y mod p = (y & p) + (y >> 31), twice
            top = hv >> np.uint64(31)
            hv &= _P31
            hv += top
        d0, d1 = int(doc[lo]), int(doc[hi - 1])
        seg = np.concatenate([[0], starts[d0 + 1 : d1 + 1] - lo])
        red = np.minimum.reduceat(hv, seg, axis=0).astype(np.uint32)
        np.minimum(sig[d0 : d1 + 1], red, out=sig[d0 : d1 + 1])
    return sig


def band_keys(sig: np.ndarray, bands: int = 16) -> np.ndarray:
    """(n, bands) uint64 LSH keys: texts sharing any key are near-duplicate candidates.
    With 64 permutations in 16 bands of 4, a pair at Jaccard 0.7 shares a band with
    p = 0.99, at 0.6 with 0.89, at 0.5 with 0.64, at 0.3 with 0.12. The band index is mixed
    in, so band 1 of one text never collides with band 2 of another."""
    sig = np.asarray(sig, dtype=np.uint32)
    if sig.ndim == 1:
        sig = sig[None, :]
    n, p = sig.shape
    rows = p // bands
    if rows == 0:
        raise ValueError(f"{bands} bands need at least {bands} permutations, got {p}")
    s = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    h = np.broadcast_to((np.arange(bands, dtype=np.uint64) + np.uint64(1)) * _M1,
                        (n, bands)).copy()
    for j in range(rows):
        h ^= s[:, :, j]
        h *= _M2
        h ^= h >> np.uint64(29)
    return _mix(h)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """MinHash estimate of the shingle Jaccard similarity of two texts."""
    return float(np.count_nonzero(np.asarray(sig_a) == np.asarray(sig_b)) / len(sig_a))


def shingles(text: str) -> set[tuple[str, ...]]:
    """The shingle set MinHash estimates over (word bigrams, or the lone word, or ())."""
    w = _strip_marks(text).split()
    return set(zip(w, w[1:], strict=False)) if len(w) > 1 else {tuple(w)}


def shingle_jaccard(a: str, b: str) -> float:
    """Exact Jaccard of two texts' shingle sets: what a pair's verdict should use once
    MinHash has found it (64 permutations leave a standard error up to 0.06)."""
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def jaccard_rows(sig: np.ndarray, i_idx: np.ndarray, j_idx: np.ndarray) -> np.ndarray:
    """Estimates for the pairs (sig[i_idx[k]], sig[j_idx[k]]), as float32."""
    i_idx = np.asarray(i_idx, dtype=np.int64)
    j_idx = np.asarray(j_idx, dtype=np.int64)
    if sig.shape[1] == 0 or not len(i_idx):
        return np.zeros(len(i_idx), dtype=np.float32)
    return (sig[i_idx] == sig[j_idx]).mean(axis=1, dtype=np.float32)


# -- value signals: numbers, dates, names, negation ----------------------------------------

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")
_MONTH_NO = {m: i + 1 for i, m in enumerate(_MONTHS)}
_MONTH_NO.update({m[:3]: i + 1 for i, m in enumerate(_MONTHS)})
_MONTH_NO["sept"] = 9
_AMBIGUOUS_MONTHS = {"may", "march"}  # also verbs: need a capital and a day/year or "in"
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = {"zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
          "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
          "nineteen": 19}  # "one" left out: mostly a pronoun ("the blue one")
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_DIGITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9}
_NUMWORD = (r"(?:(?:" + "|".join(_TENS) + r")(?:[-\s](?:" + "|".join(_DIGITS) + r"))?|"
            + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")")
_MONTH_RE = "|".join(sorted(_MONTH_NO, key=len, reverse=True))
_DATE = re.compile(
    r"\b(?P<iso>(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2}))\b"
    r"|\b(?P<slash>\d{1,2}/\d{1,2}/\d{2,4})\b"
    r"|\b(?:(?P<d1>\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?)?(?P<mon>" + _MONTH_RE + r")\b\.?"
    r"(?:\s+(?P<d2>\d{1,2})(?:st|nd|rd|th)?\b)?(?:,?\s+(?P<y>(?:19|20)\d{2})\b)?"
    r"|\b(?P<year>(?:19|20)\d{2})\b(?![.,:]\d)"
    r"|\b(?P<wd>" + "|".join(_WEEKDAYS) + r")s?\b",
    re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,:]\d+)*|\b" + _NUMWORD + r"\b", re.IGNORECASE)
_NEGATION = re.compile(
    r"\b(?:not|never|no\s+longer|nobody|nothing|nowhere|neither|nor|cannot|anymore|"
    r"any\s+more)\b|n['’]t\b|\bno\s+(?!(?:way|problem|problems|worries|worry|doubt)\b)\w",
    re.IGNORECASE)

# Capitalised words that are not names: greetings, fillers, sentence adverbs, deixis.
NON_NAMES = frozenset("""
i yesterday today tomorrow tonight hey hi hello oh ah ahh aw aww well yeah yes yep yup nope ok
okay lol haha hahaha lmao omg wow thanks thank please sorry honestly actually btw anyway
anyways maybe sure cool nice great awesome everyone everybody someone somebody anyone anybody
nobody nothing people guys god dear mr mrs ms dr last next recently lately currently still
just so then after before since when while because although though however plus sometimes
usually always often also both good congrats congratulations definitely absolutely totally
exactly right true wait ugh hmm um uh wish hope glad love happy merry dude bro man girl sir
madam bye goodbye cheers alright really seriously luckily unfortunately fortunately hopefully
""".split()) | STOP_WORDS | frozenset(_WEEKDAYS) | frozenset(_MONTHS)


_PUNCT_SPACE = str.maketrans({c: " " for c in ".,;:!?()[]{}\"“”*/\\~#…—–"})
_NUMBER_WORDS = frozenset(_UNITS) | frozenset(_TENS)
_HAS_DIGIT = re.compile(r"\d").search


@dataclass(frozen=True)
class _Values:
    numbers: tuple[str, ...]
    dates: tuple[str, ...]
    names: tuple[str, ...]  # in order of appearance
    negated: bool


def _num_value(tok: str) -> str:
    t = tok.lower().replace("’", "'")
    if t in _UNITS:
        return str(_UNITS[t])
    parts = re.split(r"[-\s]+", t)
    if parts[0] in _TENS:
        return str(_TENS[parts[0]] + (_DIGITS.get(parts[1], 0) if len(parts) > 1 else 0))
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    return t


def _date_value(m: re.Match, text: str) -> str | None:
    if m.group("iso"):
        return f"{int(m.group('iy')):04d}-{int(m.group('im')):02d}-{int(m.group('id')):02d}"
    if m.group("slash"):
        return m.group("slash")
    if m.group("year"):
        return m.group("year")
    if m.group("wd"):
        return m.group("wd").lower()
    mon = m.group("mon")
    low = mon.lower()
    day = m.group("d1") or m.group("d2")
    year = m.group("y")
    if low in _AMBIGUOUS_MONTHS or (len(low) <= 4 and low not in ("june", "july")):
        before = text[max(0, m.start() - 6) : m.start()].lower()
        near = day or year or re.search(r"\b(?:in|of|since|until|by|early|late|mid)\s*$",
                                         before)
        if not (mon[0].isupper() and near) and not (len(low) <= 4 and (day or year)):
            return None
    return f"{year or ''}-{_MONTH_NO[low]:02d}-{int(day):02d}" if day else \
        f"{year or ''}-{_MONTH_NO[low]:02d}-"


_UPPER = "A-ZÀ-ÖØ-ÞĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮİĲĴĶĹĻĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŸŹŻŽ"
_CAP_RUN = re.compile(r"(?<![\w'’])[" + _UPPER + r"][\w'’&-]*(?:[ \t]+[" + _UPPER +
                      r"][\w'’&-]*)*")
_FIRST_PERSON = frozenset({"i", "i'm", "i've", "i'd", "i'll", "i’m", "i’ve", "i’d", "i’ll"})


def _names(text: str) -> list[str]:
    """Capitalised word runs, lower-cased; a run that opens a sentence loses a first word
    that is a common word, and a one-word run there is dropped (could be any word)."""
    out: list[str] = []
    for m in _CAP_RUN.finditer(text):
        before = text[: m.start()].rstrip(" \t\"'“‘(")
        at_start = not before or before[-1] in ".!?\n"
        run: list[str] = []
        for tok in m.group(0).split():
            base = tok[:-2] if tok.endswith(("'s", "’s")) else tok.rstrip("'’")
            low = base.lower()
            if low in _FIRST_PERSON or (len(base) > 1 and base.isupper() and low in NON_NAMES):
                _flush(run, at_start, out)
                run, at_start = [], False
                continue
            run.append(base)
            if base is not tok:  # "Emma's" ends the name
                _flush(run, at_start, out)
                run, at_start = [], False
        _flush(run, at_start, out)
    return out


def _flush(run: list[str], at_start: bool, out: list[str]) -> None:
    ws = run
    if at_start and ws and (ws[0].lower() in NON_NAMES or len(ws) == 1):
        ws = ws[1:]
    if len(ws) == 1 and ws[0].lower() in NON_NAMES:
        ws = []
    if ws:
        out.append(" ".join(ws).lower())


_DATE_WORDS = frozenset(_MONTH_NO) | frozenset(_WEEKDAYS) | {d + "s" for d in _WEEKDAYS}
_NEG_WORDS = frozenset("not never no nobody nothing nowhere neither nor cannot anymore "
                       "any".split())


@lru_cache(maxsize=1 << 16)
def _values(text: str) -> _Values:
    text = unicodedata.normalize("NFKC", text)
    low = text.lower()
    toks = set(low.translate(_PUNCT_SPACE).replace("-", " ").split())
    digit = _HAS_DIGIT(text) is not None
    dates: list[str] = []
    spans: list[tuple[int, int]] = []
    if digit or not toks.isdisjoint(_DATE_WORDS):
        for m in _DATE.finditer(text):
            v = _date_value(m, text)
            if v is not None:
                dates.append(v)
                spans.append(m.span())
    nums = []
    if digit or not toks.isdisjoint(_NUMBER_WORDS):
        for m in _NUMBER.finditer(text):
            if not any(a <= m.start() < b for a, b in spans):
                nums.append(_num_value(m.group(0)))
    names = [n for n in _names(text) if n not in _DATE_WORDS]
    negated = (not toks.isdisjoint(_NEG_WORDS) or "n't" in low or "n’t" in low) and \
        _NEGATION.search(text) is not None
    return _Values(numbers=tuple(sorted(set(nums))), dates=tuple(sorted(set(dates))),
                   names=tuple(dict.fromkeys(names)), negated=negated)


def value_signals(text: str) -> dict:
    """What a sentence pins down: numbers, dates, capitalised names/places, negation. Two
    similar sentences that differ here are an update or a conflict, not a duplicate."""
    v = _values(text)
    return {"numbers": list(v.numbers), "dates": list(v.dates), "names": sorted(v.names),
            "negated": v.negated}


def changed_signals(a: dict, b: dict, *, both: bool = False) -> list[str]:
    """Which value signals differ between two value_signals() dicts. both=False (dedup):
    numbers and dates differ when the sets differ at all (one side pinning a value the
    other lacks is not the same statement); both=True (conflicts): only when each side has
    some and they differ. Names always need both sides, since lower-cased chat drops them."""
    out = []
    for key in ("numbers", "dates"):
        sa, sb = set(a[key]), set(b[key])
        if sa != sb and (not both or (sa and sb)):
            out.append(key)
    na, nb = set(a["names"]), set(b["names"])
    if na and nb and na != nb:
        out.append("names")
    if a["negated"] != b["negated"]:
        out.append("negation")
    return out


# -- keywords -----------------------------------------------------------------------------

FILLER = frozenset("""
yeah yes yep yup nope ok okay lol haha hahaha lmao omg wow thanks thank please sorry cool nice
great awesome sure oh ah hmm um uh hey hi hello bye good really totally definitely absolutely
exactly right true glad love like just got get gonna wanna gotta kinda sorta thing things stuff
lot lots bit much many way know think guess mean feel sounds sound well also even still though
pretty super amazing wonderful fun time day today yesterday tomorrow tonight week now going
make made let's let see say said tell told take want need would could actually literally
""".split())


_NOT_KEYWORDS = STOP_WORDS | FILLER | frozenset(_MONTHS) | frozenset(_WEEKDAYS) | \
    frozenset(_UNITS) | frozenset(_TENS) | frozenset(_DIGITS) | frozenset(
        "anymore dont doesnt didnt isnt cant wont im ive".split())


def keywords(text: str, k: int = 8) -> list[str]:
    """Entities (capitalised names), then numbers and dates, then content words (most
    frequent first, longer first on ties), deduplicated and lower-cased."""
    v = _values(text)
    out: list[str] = []
    seen: set[str] = set()

    def add(w: str) -> None:
        if w and w not in seen:
            seen.add(w)
            out.append(w)

    for n in v.names:
        add(n)
    for d in v.dates:
        add(d)
    for n in v.numbers:
        add(n)
    skip = {w for n in out for w in n.split()}
    counts: dict[str, list[int]] = {}
    for i, w in enumerate(words(text)):
        w = re.split(r"['’]", w, maxsplit=1)[0]
        if len(w) < 3 or w in _NOT_KEYWORDS or w in skip or any(c.isdigit() for c in w):
            continue
        c = counts.setdefault(w, [0, i])
        c[0] += 1
    for w in sorted(counts, key=lambda w: (-counts[w][0], -len(w), counts[w][1])):
        add(w)
    return out[:k]


# -- claims (core/consolidate/claims.py; re-exported, imported on first use) -------------

_CLAIM_NAMES = frozenset({"Claim", "MULTI_VALUED", "extract_claims", "is_multi_valued"})


def __getattr__(name: str):
    """Claim, extract_claims, is_multi_valued and MULTI_VALUED live in claims.py, which
    imports this module: loaded lazily so neither import order is circular."""
    if name in _CLAIM_NAMES:
        from memstack.core.consolidate import claims

        return getattr(claims, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
