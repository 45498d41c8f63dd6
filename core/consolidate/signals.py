"""Deterministic text signals for consolidation: exact keys, MinHash/LSH, value signals,
keywords and (subject, slot, value) claims.

Everything here is a pure function of the text (and the speaker for claims), stable across
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


# -- claims -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One statement of fact: subject's slot has value (or, negated, no longer has it)."""

    subject: str
    slot: str
    value: str
    negated: bool = False


# Slots a person has several values of at once: a differing value adds, never replaces.
MULTI_VALUED = frozenset("""
pet likes hobby allergy language child sister brother son daughter friend cousin aunt uncle
niece nephew grandchild colleague coworker neighbor roommate graduated
""".split())


def is_multi_valued(slot: str) -> bool:
    return slot in MULTI_VALUED or slot.startswith("likes")


_RELATIONS = {
    "sister": "sister", "brother": "brother", "mom": "mom", "mum": "mom", "mother": "mom",
    "mommy": "mom", "dad": "dad", "father": "dad", "daddy": "dad", "wife": "wife",
    "husband": "husband", "partner": "partner", "spouse": "spouse", "boyfriend": "boyfriend",
    "girlfriend": "girlfriend", "fiance": "fiance", "fiancé": "fiance", "fiancee": "fiance",
    "fiancée": "fiance", "son": "son", "daughter": "daughter", "friend": "friend",
    "best friend": "best friend", "roommate": "roommate", "boss": "boss", "manager": "boss",
    "coworker": "coworker", "co-worker": "coworker", "colleague": "colleague",
    "cousin": "cousin", "aunt": "aunt", "uncle": "uncle", "niece": "niece",
    "nephew": "nephew", "grandma": "grandma", "grandmother": "grandma", "grandpa": "grandpa",
    "grandfather": "grandpa", "neighbor": "neighbor", "neighbour": "neighbor",
    "stepmom": "stepmom", "stepdad": "stepdad", "kid": "child", "child": "child",
    "older sister": "sister", "younger sister": "sister", "big sister": "sister",
    "little sister": "sister", "older brother": "brother", "younger brother": "brother",
    "big brother": "brother", "little brother": "brother",
}
_REL_RE = "|".join(sorted((re.escape(r) for r in _RELATIONS), key=len, reverse=True))

_OCCUPATIONS = frozenset("""
nurse doctor physician surgeon dentist teacher professor lecturer tutor engineer developer
programmer designer architect lawyer attorney accountant banker manager director consultant
analyst scientist researcher chef cook baker waiter waitress bartender barista cashier clerk
salesman saleswoman salesperson driver pilot mechanic electrician plumber carpenter painter
artist musician singer writer author journalist editor photographer actor actress student
intern firefighter officer policeman policewoman cop soldier veteran farmer pharmacist
therapist psychologist psychiatrist counselor counsellor vet veterinarian librarian secretary
assistant receptionist administrator entrepreneur founder ceo cto cfo coo freelancer
contractor technician paramedic caregiver nanny coach trainer instructor janitor cleaner
guard economist mathematician physicist chemist biologist historian translator interpreter
sociologist dietitian nutritionist optometrist midwife surveyor realtor agent broker
recruiter marketer strategist supervisor lead principal dean tailor butcher florist
hairdresser barber stylist model dancer comedian producer animator illustrator blogger
youtuber streamer influencer investor trader auditor paralegal judge detective sheriff
sergeant captain lieutenant marine sailor welder machinist mover courier postman housewife
homemaker volunteer pastor priest rabbi imam minister missionary athlete footballer
""".split())
_OCC_SUFFIX = ("ist", "ician", "ologist", "grapher", "eer", "smith")
_OCC_SUFFIX_RE = re.compile(r"\w\w\w(?:ist|ician|grapher|eer|smith)\b", re.I).search

_PETS = {"dog": "dog", "puppy": "dog", "pup": "dog", "cat": "cat", "kitten": "cat",
         "kitty": "cat", "hamster": "hamster", "rabbit": "rabbit", "bunny": "rabbit",
         "parrot": "parrot", "bird": "bird", "fish": "fish", "goldfish": "goldfish",
         "turtle": "turtle", "tortoise": "tortoise", "snake": "snake", "lizard": "lizard",
         "horse": "horse", "pony": "horse", "guinea pig": "guinea pig", "ferret": "ferret",
         "gecko": "gecko", "budgie": "bird", "chinchilla": "chinchilla", "hedgehog": "hedgehog"}
_PET_RE = "|".join(sorted((re.escape(p) for p in _PETS), key=len, reverse=True))
_PET_TRIGGERS = " ".join(w for p in _PETS for w in (p, p + "s", p + "es", p[:-1] + "ies"))

# Words that end a value: conjunctions, prepositions, time adverbs, fillers, verbs.
_BOUNDARY = frozenset("""
and but or because since so for as where which who whom whose that when while with until till
now anymore any these nowadays right currently today yesterday tomorrow tonight last next this
though too also lol haha lmao hehe in at on from to by after before again already yet although
if unless than about like just still full-time part-time full part every each most more even
ever really actually probably maybe either neither not no is are was were be been have has had
do does did will would can could should might must i we you he she they it me him her us them
there here ever since these those what how why
""".split())
_REJECT_START = frozenset("""
it this that these those there here you your yours u ur him her them me us something anything
everything nothing someone somebody anyone anybody everyone everybody one how what when where
why who which whether if so very really pretty super quite too kind sort like just not such
going gonna getting about lot lots bit all same way idea thought fact thing things stuff
home back there somewhere anywhere everywhere nowhere well many much
hearing seeing knowing getting having being doing making talking chatting telling saying
think know say believe see hear imagine be have get go do make keep try help hope want need
""".split())
# Opinions and passing states: "my job is great" is no fact to keep or replace.
_EVALUATIVE = frozenset("""
sure fine ok okay good great amazing awesome nice cool fun hard tough busy crazy boring
interesting beautiful lovely perfect terrible awful bad horrible wonderful fantastic incredible
better worse best worst easy difficult important different special weird strange funny cute
sweet adorable huge big small tiny long short new young gorgeous stressful tiring exhausting
hectic wild insane tired happy sad excited glad sorry proud grateful thankful blessed lucky
ready able gone done over important unimportant irrelevant secret complicated private
""".split())
_GENERIC_PLACE = frozenset("""
town city village apartment house flat condo place area suburb suburbs neighborhood
neighbourhood dorm studio home countryside part state country building street region
small big same new old nice quiet tiny little
""".split())
# What people "live in" or are "moved to" that is no place ("the moment", "fear", "tears").
_NOT_PLACE = frozenset("""
moment moments fear denial hope peace harmony sin luxury poverty style past present now
future bubble head world dream dreams dreamland bliss misery pain hell heaven shame terror
limbo chaos comfort silence fantasy reality tears action anger sadness joy awe hiding
fear fashion debt love hopes doubt panic
""".split())
_NOT_EMPLOYER = frozenset("""
place company firm business job office home night nights weekends weekend moment noon
midnight times least most first all same it that this
""".split())
_SCHOOL_WORDS = re.compile(r"\b(?:school|college|university|uni|academy|institute|"
                           r"conservatory|polytechnic|seminary)\b")
_SECOND_PERSON = frozenset({"you", "your", "yours", "u", "ur", "yourself"})
_DISCOURSE_NP = frozenset("""
point question guess problem thing concern worry bad fault pleasure turn god gosh goodness
word answer reason understanding impression feeling opinion take bet advice excuse mind
heart day week weekend morning night life plan plans idea hope wish dream goal mistake
experience story situation suggestion recommendation question answer feedback thought
thoughts view
""".split())

# Contractions expanded before matching; the case of the first letter is kept.
_EXPANSIONS = {
    "i'm": "i am", "im": "i am", "i've": "i have", "ive": "i have", "i'd": "i would",
    "i'll": "i will", "can't": "can not", "cant": "can not", "won't": "will not",
    "he's": "he is", "she's": "she is", "it's": "it is", "that's": "that is",
    "there's": "there is", "who's": "who is", "what's": "what is", "you're": "you are",
    "we're": "we are", "they're": "they are",
}
for _aux in ("do", "does", "did", "is", "are", "was", "were", "have", "has", "had"):
    _EXPANSIONS[_aux + "n't"] = _EXPANSIONS[_aux + "nt"] = _aux + " not"
_CONTRACT = re.compile(r"\b(?:[A-Za-z]+'[A-Za-z]+|[Ii][mv]e?|[A-Za-z]+nt)\b")


def _contraction(m: re.Match) -> str:
    g = m.group(0)
    rep = _EXPANSIONS.get(g.lower())
    return g if rep is None else g[0] + rep[1:]


_CLAUSE = re.compile(r"([.!?]+)['\")\]]*(?=\s|$)|[;\n]+|\s+[-–—]+\s+|,")
_HEDGE = re.compile(r"\b(?:if|wish|hope|maybe|perhaps|would|could|might|should|imagine|"
                    r"suppose|pretend|whether|unless|dream|dreamt|dreamed|want|wanted|"
                    r"planning|considering|thinking)\b", re.I)
_ANYMORE = re.compile(r"\b(?:anymore|any\s+more|no\s+more|no\s+longer)\b", re.I)

_AUX_WORDS = frozenset("""
am is are was have has had been do does not no longer never still currently now also just
recently actually really used to stopped quit officially finally already happily proudly
even both again presently newly only mostly basically started began became become
""".split())
_BE = frozenset({"am", "is", "are", "been", "became", "become"})
_PAST = frozenset({"was", "had"})
_NEG_AUX = frozenset({"not", "never", "used", "stopped", "quit"})

_V = r"(?P<v>[^,.;:!?()\"\n]+)"
_NUM = r"(?P<v>\d{1,3}|" + _NUMWORD + r")"
_NEW_JOB = (r"(?:got|have|has|landed|accepted|took|started|found|began)\s+(?:a|an|the|my)\s+"
            r"(?:new\s+|first\s+)?(?:full-time\s+|part-time\s+)?(?:job|position|role|internship)")
_AGE_END = (r"(?:\s+years?(?:\s+old)?|\s+y/?o)?(?=\s*$|\s+(?:and|but|now|today|this|so|"
            r"already|lol|haha|myself|too)\b)")


@dataclass(frozen=True)
class _Rule:
    slot: str
    tail: re.Pattern
    triggers: frozenset
    kind: str = "np"  # value validator
    be: bool = False  # needs a copula in the auxiliaries (or got/became in the tail)
    event: bool = False  # past tense allowed (moved, joined, was promoted...)
    neg: bool = False  # the verb itself negates (left, quit, hate)
    proper: bool = False  # the value must be capitalised in the original text
    maxw: int = 5


def _rule(slot, tail, triggers, **kw) -> _Rule:
    return _Rule(slot, re.compile(r"\s+" + tail, re.I), frozenset(triggers.split()), **kw)


# After "I" / a named or related third person (auxiliaries already consumed).
_P_RULES = [
    _rule("employer", r"(?P<verb>work|works|working|worked)\s+(?:at|for)\s+" + _V,
          "work works working worked", kind="org"),
    _rule("employer", r"(?:employed|hired)\s+(?:by|at)\s+" + _V, "employed hired",
          kind="org", event=True),
    _rule("employer", _NEW_JOB + r"(?:\s+as\s+(?:a\s+|an\s+)?[\w\s-]+?)?\s+(?:at|with)\s+"
          + _V, "job position role internship", kind="org", event=True),
    _rule("role", _NEW_JOB + r"\s+as\s+(?:a\s+|an\s+)?" + _V, "job position role internship",
          kind="occupation", event=True),
    _rule("employer", r"(?:joined|started\s+(?:working\s+)?(?:at|with))\s+" + _V,
          "joined started", kind="org", event=True, proper=True),
    _rule("employer", r"(?:left|quit)\s+(?:my|his|her|their)\s+(?:job|position|role)\s+"
          r"(?:at|with)\s+" + _V, "left quit", kind="org", event=True, neg=True),
    _rule("employer", r"(?:left|quit)\s+" + _V, "left quit", kind="org", event=True,
          neg=True, proper=True),
    _rule("employer", r"(?:got\s+|was\s+)?(?:fired|laid\s+off|let\s+go)\s+(?:from|by)\s+" + _V,
          "fired laid let", kind="org", event=True, neg=True),
    _rule("employer", r"retired\s+from\s+" + _V, "retired", kind="org", event=True, neg=True),
    _rule("role", r"(?:work|works|working)\s+as\s+(?:a\s+|an\s+)?" + _V, "as",
          kind="occupation"),
    _rule("role", r"(?:got\s+|was\s+|been\s+)?promoted\s+to\s+(?:a\s+|an\s+)?" + _V,
          "promoted", kind="role", event=True),
    _rule("role", r"(?:(?P<bec>became|become|becoming)\s+)?(?:a|an)\s+" + _V,
          "<occ>", kind="occupation", be=True),
    _rule("role", r"(?P<v>retired|unemployed|self-employed)(?![\w-])",
          "retired unemployed self-employed", be=True),
    _rule("home", r"(?P<verb>live|lives|living|lived)\s+in\s+" + _V,
          "live lives living lived", kind="place"),
    _rule("home", r"(?:moved|relocated)\s+(?:back\s+)?to\s+" + _V, "moved relocated",
          kind="place", event=True),
    _rule("home", r"(?:based|located|settled)\s+in\s+" + _V, "based located settled",
          kind="place", event=True),
    _rule("home", r"moved\s+(?:out\s+of|away\s+from)\s+" + _V, "moved", kind="place",
          event=True, neg=True),
    _rule("origin", r"(?:(?P<bec>come|comes)\s+from|(?:originally\s+)?from)\s+" + _V,
          "from", kind="place", proper=True, be=True),
    _rule("origin", r"(?:grew\s+up|(?:was\s+)?born|born\s+and\s+raised|(?:was\s+)?raised)"
          r"\s+in\s+" + _V,
          "grew born raised", kind="place", event=True),
    _rule("age", _NUM + _AGE_END, "<num>", kind="age", be=True),
    _rule("age", r"turned\s+" + _NUM + r"\b(?!\s*(?:%|percent|minutes?|hours?|days?|weeks?|"
          r"months?|dollars?|pounds?|degrees?|kg|km|miles?|times?|pages?|o'clock|pm|am)\b)",
          "turned", kind="age", event=True),
    _rule("name", r"(?:called|named)\s+" + _V, "called named", kind="name", be=True),
    _rule("relationship", r"(?:(?P<bec>got|getting)\s+)?(?:happily\s+|newly\s+|recently\s+)?"
          r"(?P<v>married|engaged|divorced|separated|widowed|single)(?![\w-])"
          r"(?:\s+to\s+(?P<p>(?-i:[A-Z][\w'-]+)(?:\s+(?-i:[A-Z][\w'-]+))?))?",
          "married engaged divorced separated widowed single", kind="status", be=True),
    _rule("relationship", r"(?:in\s+a\s+relationship|dating\s+someone|seeing\s+someone)",
          "relationship dating seeing", kind="status", be=True),
    _rule("partner", r"dating\s+(?P<v>(?-i:[A-Z][\w'-]+)(?:\s+(?-i:[A-Z][\w'-]+))?)",
          "dating", kind="name", be=True),
    _rule("partner", r"broke\s+up\s+with\s+(?P<v>(?-i:[A-Z][\w'-]+))", "broke",
          kind="name", event=True, neg=True),
    _rule("pet", r"(?:have|has|got|adopted|own|owns|rescued)\s+(?:a|an|one|two|three|four|"
          r"\d+)?\s*(?:new\s+|little\s+|cute\s+|pet\s+|baby\s+)?(?P<kind>" + _PET_RE + r")s?"
          r"(?:(?=\s*$|\s+(?:" + "|".join(sorted(_BOUNDARY)) + r")\b)|"
          r"\s+(?:named|called)\s+" + _V + r")",
          _PET_TRIGGERS, kind="pet"),
    _rule("vehicle", r"(?:drive|drives|driving)\s+(?:a|an|the)\s+" + _V, "drive drives driving",
          kind="thing", maxw=3),
    _rule("favorite", r"(?:love|like|enjoy|loves|likes|enjoys)\s+(?P<v>[^,.;:!?()\"\n]+?)"
          r"\s+(?:the\s+)?(?:most|best)\s*$", "most best"),
    _rule("studies", r"(?:study|studies|studying|majoring\s+in|major\s+in|majored\s+in)\s+"
          + _V, "study studies studying majoring major majored", kind="thing", maxw=4),
    _rule("school", r"(?:study|studies|studying)\s+(?:[a-z]+\s+){0,3}?at\s+" + _V,
          "study studies studying", kind="school"),
    _rule("school", r"(?:go|goes)\s+to\s+" + _V, "go goes", kind="school_word"),
    _rule("school", r"(?:attend|attends|attending)\s+" + _V, "attend attends attending",
          kind="school"),
    _rule("school", r"(?:a\s+|an\s+)?(?:[a-z]+\s+)?(?:student|freshman|sophomore|junior|"
          r"senior|undergrad|undergraduate)\s+at\s+" + _V, "student freshman sophomore "
          "junior senior undergrad undergraduate", kind="school", be=True),
    _rule("graduated", r"graduated\s+from\s+" + _V, "graduated", kind="school", event=True),
    _rule("diet", r"(?:a\s+)?(?P<v>vegetarian|vegan|pescatarian|pescetarian|flexitarian|"
          r"carnivore|keto|paleo)(?![\w-])", "vegetarian vegan pescatarian pescetarian "
          "flexitarian carnivore keto paleo", be=True),
    _rule("diet", r"on\s+(?:a|the)\s+(?P<v>[a-z-]+)\s+diet\b", "diet", be=True),
    _rule("allergy", r"allergic\s+to\s+" + _V, "allergic", kind="thing", be=True, maxw=3),
    _rule("allergy", r"(?P<v>lactose|gluten)[\s-]+intolerant", "intolerant", be=True),
    _rule("allergy", r"(?:have|has)\s+(?:a|an)\s+(?P<v>[a-z]+)\s+allergy", "allergy"),
    _rule("hobby", r"(?:really\s+|very\s+|big\s+|super\s+|totally\s+)?into\s+" + _V, "into",
          kind="thing", be=True, maxw=3),
    _rule("hobby", r"(?:took|taken|picked)\s+up\s+" + _V, "took taken picked", kind="thing",
          event=True, maxw=3),
    _rule("hobby", r"(?:play|plays|playing)\s+(?:the\s+)?" + _V, "play plays playing",
          kind="thing", maxw=3),
    _rule("language", r"(?:speak|speaks|speaking)\s+(?:fluent\s+)?" + _V, "speak speaks "
          "speaking", kind="thing", proper=True, maxw=2),
    _rule("children", r"(?:have|has)\s+(?P<v>\d{1,2}|" + _NUMWORD + r"|a|one|no)\s+"
          r"(?:kids|children|kid|child)\b", "kids children kid child", kind="count"),
    _rule("likes", r"(?P<verb>love|loves|like|likes|adore|adores|enjoy|enjoys|hate|hates|"
          r"dislike|dislikes|detest|detests)\s+" + _V, "love loves like likes adore adores "
          "enjoy enjoys hate hates dislike dislikes detest detests", kind="thing", maxw=3),
]

_IS = r"\s+is\s+(?P<neg>(?:not|no\s+longer)\s+)?(?:now\s+|still\s+)?"
# After "my" / "Bob's" / "my sister's": the possessed noun phrase.
_POSS_RULES = [
    _rule("employer", r"(?:employer|company|workplace)" + _IS + _V,
          "employer company workplace", kind="org"),
    _rule("employer", r"(?:new\s+|current\s+)?job" + _IS + r"(?:at|with)\s+" + _V, "job",
          kind="org"),
    _rule("role", r"(?:new\s+|current\s+)?(?:job|job\s+title|title|role|occupation|profession|"
          r"position)" + _IS + r"(?:a\s+|an\s+)?" + _V,
          "job title role occupation profession position", kind="occupation"),
    _rule("home", r"home" + _IS + r"(?:in\s+)?" + _V, "home", kind="place"),
    _rule("home", r"(?:home\s+|current\s+)?address" + _IS + _V, "address", kind="thing"),
    _rule("origin", r"(?:hometown|home\s+town)" + _IS + _V, "hometown town", kind="place"),
    _rule("age", r"age" + _IS + _NUM + r"\b", "age", kind="age"),
    _rule("name", r"(?:full\s+|first\s+)?name" + _IS + _V, "name", kind="name"),
    _rule("pet", r"(?P<kind>" + _PET_RE + r")(?:['’]s\s+name)?" + _IS +
          r"(?:called\s+|named\s+)?" + _V, _PET_TRIGGERS, kind="pet"),
    _rule("vehicle", r"(?:new\s+)?car" + _IS + r"(?:a|an)\s+" + _V, "car", kind="thing", maxw=3),
    _rule("phone", r"(?:(?:phone|cell|mobile|telephone)(?:\s+number)?|number)" + _IS +
          r"(?P<v>\+?\d[\d\s().-]{5,}\d)", "phone cell mobile telephone number", kind="raw"),
    _rule("email", r"e-?mail(?:\s+address)?" + _IS +
          r"(?P<v>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)", "email e-mail", kind="raw"),
    _rule("favorite", r"(?:absolute\s+|all-time\s+|new\s+)?fav(?:ou?rite|e)\s+(?P<cat>[a-z]+"
          r"(?:[\s-][a-z]+){0,2}?)" + _IS + r"(?:to\s+)?" + _V,
          "favorite favourite favorit fave", kind="thing", maxw=4),
    _rule("likes", r"(?:absolute\s+|all-time\s+)?fav(?:ou?rite|e)\s+(?P<cat>[a-z]+"
          r"(?:[\s-][a-z]+){0,2}?)\s+are\s+" + _V, "favorite favourite fave", kind="thing",
          maxw=4),
    _rule("hobby", r"(?:favorite\s+)?hobb(?:y|ies)\s+(?:is|are|include|includes)\s+" + _V,
          "hobby hobbies", kind="thing", maxw=3),
    _rule("studies", r"major" + _IS + r"(?:in\s+)?" + _V, "major", kind="thing", maxw=4),
    _rule("school", r"(?:school|university|college|uni)" + _IS + _V,
          "school university college uni", kind="school"),
]
# Nouns the table owns: the generic rule must not invent e.g. slot "phone" = "dead".
_TABLE_NP = frozenset("""
employer company workplace job title role occupation profession position home address
hometown town age name car phone cell mobile telephone number email e-mail mail hobby major
school university college uni
""".split()) | frozenset(_PETS)
_ALL_TRIGGERS = frozenset().union(*(r.triggers for r in _P_RULES + _POSS_RULES)) | {
    "my", "favorite", "favourite", "fave"}
_GENERIC = re.compile(r"\s+(?P<np>[a-z]+(?:[\s-][a-z]+){0,2}?)" + _IS + _V, re.I)
_REVERSE_FAV = re.compile(r"(?P<v>[^,.;:!?()\"\n]+?)\s+(?:is|are)\s+(?:definitely\s+|probably"
                          r"\s+|still\s+|now\s+)?my\s+(?:absolute\s+|all-time\s+|new\s+)?"
                          r"fav(?:ou?rite|e)(?:\s+(?P<cat>[a-z]+(?:\s+[a-z]+)?))?\s*$", re.I)
_SUBJECT = re.compile(
    r"\b(?:(?P<i>i)\b(?!['’])"
    r"|(?P<my>my)\b(?:\s+(?P<rel>" + _REL_RE + r")\b(?:\s+(?P<relname>(?-i:[A-Z][a-z]+)))?)?"
    r"|(?P<name>(?-i:[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2})))(?P<gen>['’]s\b)?",
    re.I)
_LEMMA = {"favourite": "favorite", "colour": "color", "flavour": "flavor",
          "neighbour": "neighbor", "fave": "favorite"}
_ASCII_WORD = re.compile(r"[a-z][a-z'-]*")


def _lemma(word: str) -> str:
    """Singular, American spelling: "colours" -> "color" (enough for slot names)."""
    w = word
    if len(w) > 3 and not w.endswith(("ss", "us", "is")):
        if w.endswith("ies"):
            w = w[:-3] + "y"
        elif w.endswith(("ches", "shes", "xes", "sses")):
            w = w[:-2]
        elif w.endswith("s"):
            w = w[:-1]
    return _LEMMA.get(w, w)


def _lemma_np(np_: str) -> str:
    return " ".join(_lemma(w) for w in np_.casefold().replace("-", " ").split())


def _clauses(text: str) -> list[tuple[str, bool]]:
    """(clause, is_question): split at sentence ends, semicolons, dashes and commas; a clause
    is a question when a '?' ends it ("I live in Paris, you?" keeps its first clause)."""
    parts = _CLAUSE.split(text)
    out = []
    for i in range(0, len(parts), 2):
        clause = parts[i].strip() if parts[i] else ""
        if len(clause) >= 4:
            end = parts[i + 1] if i + 1 < len(parts) else None
            out.append((clause, bool(end and "?" in end)))
    return out


def _value_words(raw: str) -> list[tuple[str, str]]:
    """(original, casefolded) words of a raw value, edge punctuation and symbols removed."""
    out = []
    for w in raw.split():
        w = "".join(ch for ch in w if unicodedata.category(ch)[0] not in "SC")
        i, j = 0, len(w)
        while i < j and not w[i].isalnum():
            i += 1
        while j > i and not w[j - 1].isalnum():
            j -= 1
        if i < j:
            out.append((w[i:j], w[i:j].casefold()))
    return out


def _trim(raw: str, maxw: int, keep_and: bool = False) -> tuple[str, str] | None:
    """Cut a raw value at its first boundary word ("and"/"or" kept for list slots); None
    when empty, too long or rejected. Returns (original-case text, normalised value)."""
    ws = _value_words(raw)
    for i, (orig, low) in enumerate(ws):
        adverb = i > 0 and len(low) > 4 and low.endswith("ly") and orig[0].islower()
        if adverb or low in _BOUNDARY and not (keep_and and low in ("and", "or") and i > 0):
            ws = ws[:i]  # "Ohio originally", "Google and", "Paris at the moment"
            break
    while ws and ws[0][1] in ("the", "a", "an"):
        ws = ws[1:]
    while ws and ws[-1][1] in ("the", "a", "an", "my", "of", "and", "or"):
        ws = ws[:-1]
    if not ws or len(ws) > maxw:
        return None
    lows = [w for _, w in ws]
    if lows[0] in _REJECT_START or any(w in _SECOND_PERSON for w in lows):
        return None
    if all(w in STOP_WORDS for w in lows):
        return None
    return " ".join(o for o, _ in ws), " ".join(lows)


def _place(raw: str) -> tuple[str, str] | None:
    """A place: 'a small town in Ohio' -> Ohio; a bare 'small apartment' says nothing."""
    m = re.match(r"\s*(?:(?:a|an|the|my|our)\s+)?(?P<head>[\w\s-]*?)\s+(?:in|near|outside(?:\s+of)?"
                 r"|just\s+outside(?:\s+of)?)\s+(?P<rest>.+)$", raw, re.I)
    if m and all(w.casefold() in _GENERIC_PLACE for w in m.group("head").split()):
        raw = m.group("rest")
    t = _trim(raw, 4)
    if t is None or all(w in _GENERIC_PLACE for w in t[1].split()):
        return None
    if t[0][0].islower() and (t[1].split()[0] in _NOT_PLACE or " of " in f" {t[1]} "):
        return None
    return t


def _is_occupation(value: str) -> bool:
    ws = value.split()
    if not ws or len(ws) > 3:
        return False
    head = _lemma(ws[-1])
    return head in _OCCUPATIONS or (len(head) > 5 and head.endswith(_OCC_SUFFIX))


def _age(v: str) -> str | None:
    try:
        n = int(_num_value(v))
    except ValueError:
        return None
    return str(n) if 1 <= n <= 120 else None


def _value(rule: _Rule, m: re.Match) -> str | None:
    """The validated, normalised value of a rule's match, or None (precision first)."""
    raw = m.group("v") if "v" in m.groupdict() and m.group("v") is not None else None
    kind = rule.kind
    if kind == "pet":
        pet = _PETS[re.sub(r"\s+", " ", m.group("kind").casefold())]
        if raw is None:
            return pet
        t = _trim(raw, 5, keep_and=True)
        names = _split_multi("pet", t[1]) if t else []
        if not names or any(len(n.split()) > 2 for n in names):
            return None
        return " and ".join(f"{pet} {n}" for n in names)  # split again by the caller
    if raw is None:
        return None
    if rule.slot in ("likes", "hobby"):
        raw = re.sub(r"^\s*to\s+", "", raw)  # "I love to travel"
    if kind == "raw":
        v = raw.strip().casefold()
        return re.sub(r"[\s().-]+", "", v) if rule.slot == "phone" else v
    if kind == "age":
        return _age(raw)
    if kind == "count":
        low = raw.casefold()
        return {"a": "1", "one": "1", "no": "0"}.get(low) or _num_value(low)
    if kind == "status":
        low = raw.casefold()
        return "in a relationship" if low.startswith(("in a", "dating", "seeing")) else low
    multi = is_multi_valued(rule.slot)
    t = _place(raw) if kind == "place" else _trim(raw, rule.maxw * (3 if multi else 1), multi)
    if t is not None and multi and any(len(x.split()) > rule.maxw
                                       for x in _split_multi(rule.slot, t[1])):
        return None
    if t is None:
        return None
    orig, v = t
    if rule.proper and not orig[0].isupper():
        return None
    if kind not in ("place", "org", "name") and orig[0].islower() and \
            v.split()[0] in _EVALUATIVE:
        return None
    if kind == "org" and (v.split()[0] in _NOT_EMPLOYER or v[0].isdigit()):
        return None
    if kind == "occupation" and not _is_occupation(v):
        return None
    if kind == "role" and (v[0].isdigit() or len(v.split()) > 4):
        return None
    if kind == "name" and not all(_ASCII_WORD.fullmatch(w) or w.isalpha() for w in v.split()):
        return None
    if kind == "name" and (len(v.split()) > 3 or v.split()[0] in NON_NAMES or
                           orig[0].islower() and v.split()[0] in _EVALUATIVE):
        return None
    if kind == "school" and not (_SCHOOL_WORDS.search(v) or orig[0].isupper()):
        return None
    if kind == "school_word" and not _SCHOOL_WORDS.search(v):
        return None
    return v or None


def _aux_positions(clause: str, start: int) -> list[tuple[int, list[str]]]:
    """Positions after 0..k auxiliary words following a subject, longest chain first."""
    out = [(start, [])]
    pos = start
    auxes: list[str] = []
    for m in re.finditer(r"\s+([A-Za-z]+)", clause[start:]):
        if m.start() != pos - start:
            break
        w = m.group(1).lower()
        if w not in _AUX_WORDS or len(auxes) >= 6:
            break
        if w == "to" and auxes[-1:] != ["used"]:
            break
        auxes = auxes + [w]
        pos = start + m.end()
        out.append((pos, auxes))
    return out[::-1]


_HATE = frozenset({"hate", "hates", "dislike", "dislikes", "detest", "detests"})


@dataclass(frozen=True)
class _Rules:
    """The rules one text can trigger (chosen once per text by its words)."""

    person: list[_Rule]
    poss: list[_Rule]
    words: set[str]


_ADVERBS = frozenset("""
just recently currently still also now really actually finally officially already never no
longer happily newly only mostly basically even both again presently
""".split())
_PAST_3RD = frozenset("""
is was has had does did got left quit became took grew began broke went won found joined
""".split())


def _third_person_verb(clause: str, end: int) -> bool:
    """Whether the verb after a third-person subject agrees with it ("Bob works", "Emma
    moved"): a capitalised sentence opener followed by a base form ("Make love ...") is
    not a person."""
    for m in re.finditer(r"\s+([A-Za-z']+)", clause[end : end + 60]):
        w = m.group(1).lower()
        if w in _ADVERBS:
            continue
        return w in _PAST_3RD or (w.endswith(("s", "ed")) and w not in ("was", "does"))
    return False


def _person_claims(clause: str, end: int, subject: str, rules: _Rules,
                   out: list[Claim], third: bool = False) -> None:
    """Claims of a subject ("I", "Bob", "my sister") from the verb phrase after it."""
    if not rules.person or (third and not _third_person_verb(clause, end)):
        return
    positions = _aux_positions(clause, end)
    for rule in rules.person:
        for pos, auxes in positions:
            m = rule.tail.match(clause, pos)
            if m is not None:
                _person_claim(clause, rule, m, set(auxes), subject, out)
                break


def _person_claim(clause: str, rule: _Rule, m: re.Match, a: set[str], subject: str,
                  out: list[Claim]) -> None:
    groups = m.groupdict()
    if rule.be and not (a & _BE or a & _PAST or groups.get("bec")):
        return
    verb = (groups.get("verb") or "").lower()
    aux_neg = bool(a & _NEG_AUX or ("no" in a and "longer" in a))
    past = bool(a & _PAST) or verb.endswith("ed")
    if past and not rule.event and not aux_neg:
        perfect = a & {"have", "has"} and "was" not in a and \
            re.search(r"\b(?:for|since)\b", clause[m.start():])
        if not perfect:  # "I was living in Paris", "I worked at X": a past state
            return
    verb_neg = rule.neg or verb in _HATE
    if verb_neg and "used" in a:
        return
    value = _value(rule, m)
    if value is None:
        return
    neg = aux_neg or bool(_ANYMORE.search(clause, m.end() - 1))
    neg = neg != verb_neg  # "I no longer hate X": likes X
    for v in _split_multi(rule.slot, value):
        out.append(Claim(subject, rule.slot, v, neg))
    if groups.get("p"):
        out.append(Claim(subject, "partner", m.group("p").casefold(), neg))


def _split_multi(slot: str, value: str) -> list[str]:
    if is_multi_valued(slot):
        return [v.strip() for v in re.split(r"\s+(?:and|or|&)\s+", value) if v.strip()]
    return [value]


def _poss_claims(clause: str, end: int, subject: str, rules: _Rules, multi: bool,
                 out: list[Claim]) -> None:
    for rule in rules.poss:
        m = rule.tail.match(clause, end)
        if m is None:
            continue
        value = _value(rule, m)
        if value is None:
            return
        neg = bool(m.groupdict().get("neg")) or bool(_ANYMORE.search(clause, m.end() - 1))
        slot = rule.slot
        if "cat" in m.groupdict() and m.group("cat"):
            cat = _lemma_np(m.group("cat"))
            slot = f"likes {cat}" if slot == "likes" or multi else f"favorite {cat}"
        for v in _split_multi(slot, value):
            out.append(Claim(subject, slot, v, neg))
        return
    m = _GENERIC.match(clause, end)
    if m is None:
        return
    np_ = _lemma_np(m.group("np"))
    nws = np_.split()
    if len(nws) > 2 or np_ in _RELATIONS or nws[-1] in _TABLE_NP or any(
            w in STOP_WORDS or w in _DISCOURSE_NP or w in _EVALUATIVE or w in FILLER
            or w in _REJECT_START for w in nws):
        return
    if nws[0] in ("new", "old", "current", "former", "first", "last", "own", "main", "real"):
        nws = nws[1:]
        if not nws:
            return
    rest = clause[m.start("v"):]
    if re.match(r"\s*(?:to|that|like|so|very|really|going|getting|\w+ing)\b", rest, re.I):
        return
    t = _trim(m.group("v"), 4)
    if t is None or t[0][0].islower() and t[1].split()[0] in _EVALUATIVE:
        return
    out.append(Claim(subject, " ".join(nws), t[1],
                     bool(m.group("neg")) or bool(_ANYMORE.search(clause, m.end() - 1))))


def _rel_subject(speaker: str, rel: str) -> str:
    return f"{speaker}'s {rel}" if speaker else f"my {rel}"


def _clause_claims(clause: str, speaker: str, rules: _Rules, out: list[Claim]) -> None:
    for m in _SUBJECT.finditer(clause):
        before = clause[: m.start()]
        if _HEDGE.search(before):
            return  # "if I lived in Paris", "I wish my job was..."
        gen = bool(m.group("gen"))
        if m.group("i"):
            if not gen:
                _person_claims(clause, m.end(), speaker, rules, out)
            continue
        if m.group("my"):
            rel = m.group("rel")
            if rel is None:
                multi = bool(re.search(r"\bone\s+of\s+$", before, re.I))
                _poss_claims(clause, m.end(), speaker, rules, multi, out)
                continue
            relname = m.group("relname")
            if relname and relname.lower() not in NON_NAMES:
                subj = relname.casefold()
            else:
                subj = _rel_subject(speaker, _RELATIONS[rel.lower()])
                if relname:  # "my sister Is..." -- not a name after all
                    continue
            if gen:
                _poss_claims(clause, m.end(), subj, rules, False, out)
            else:
                _person_claims(clause, m.end(), subj, rules, out, third=True)
            continue
        ws = m.group("name").split()
        while ws and ws[0].lower() in NON_NAMES:
            ws = ws[1:]
        if not ws or any(w.lower() in NON_NAMES for w in ws):
            continue
        name = " ".join(ws).casefold()
        subj = _rel_subject(speaker, _RELATIONS[name]) if name in _RELATIONS else name
        if gen:
            _poss_claims(clause, m.end(), subj, rules, False, out)
        else:
            _person_claims(clause, m.end(), subj, rules, out, third=True)
    if not rules.words.isdisjoint(("favorite", "favourite", "fave")):
        m = _REVERSE_FAV.search(clause)
        if m and not _HEDGE.search(clause[: m.start("v")]):
            ws = [w for _, w in _value_words(m.group("v"))]
            tail: list[str] = []
            for w in reversed(ws):
                if w in STOP_WORDS or w in _REJECT_START or w.endswith("ly") or w in (
                        "think", "guess", "say", "feel", "believe", "know"):
                    break
                tail.insert(0, w)
            if tail and len(tail) <= 3:
                cat = _lemma_np(m.group("cat")) if m.group("cat") else ""
                plural = re.search(r"\bare\s+(?:\w+\s+)?my\b", m.group(0), re.I)
                slot = ("likes " if plural else "favorite ") + cat if cat else "favorite"
                out.append(Claim(speaker, slot.strip(), " ".join(tail), False))


@lru_cache(maxsize=1 << 15)
def _claims(text: str, speaker: str) -> tuple[Claim, ...]:
    text = unicodedata.normalize("NFKC", text).replace("’", "'")
    toks = set(text.lower().translate(_PUNCT_SPACE).split())  # rule triggers, once per text
    toks.update([t.split("'", 1)[0] for t in toks if "'" in t])  # "dog's" triggers "dog"
    if _HAS_DIGIT(text) or not toks.isdisjoint(_NUMBER_WORDS):
        toks.add("<num>")
    if not toks.isdisjoint(_OCCUPATIONS) or _OCC_SUFFIX_RE(text):
        toks.add("<occ>")
    if toks.isdisjoint(_ALL_TRIGGERS):
        return ()  # nothing any rule could match
    rules = _Rules([r for r in _P_RULES if not r.triggers.isdisjoint(toks)],
                   [r for r in _POSS_RULES if not r.triggers.isdisjoint(toks)], toks)
    if toks & _EXPANSIONS.keys():
        text = _CONTRACT.sub(_contraction, text)
    out: list[Claim] = []
    for clause, question in _clauses(text):
        if not question:
            _clause_claims(clause, speaker, rules, out)
    return tuple(dict.fromkeys(out))


def extract_claims(text: str, speaker: str | None) -> list[Claim]:
    """(subject, slot, value) statements of a text, by a small rule table per slot and a
    generic "my <noun> is <value>" fallback. First person is the speaker (casefolded, ""
    when unknown), "my sister" is "<speaker>'s sister", a name is that person. Questions,
    hypotheticals and plain past states yield nothing: a missed claim is safe, a wrong one
    can close a true fact's validity."""
    spk = unicodedata.normalize("NFKC", speaker or "").casefold().strip()
    return list(_claims(text, spk))
