"""Duplicate verdicts for one candidate pair of memories, in tiers: exact normalised text,
MinHash near-duplicate, semantic cosine, identical claims; cosines just under the semantic
threshold are 'ambiguous' (the band an optional LLM may settle).

Gates run before any tier, because a wrong merge hides a fact: memories in different
namespaces, by different people about themselves, with a changed number, date, name or
negation, or with conflicting claims are never duplicates, however similar the wording.
One exception comes before the value gates: a plain statement of claims the other memory
also makes ("I'm 34" / "At 34 I finally feel settled, haha") is subsumed by it, since the
merged memory keeps the longer text and so loses nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from memstack.core.analyze import STOP_WORDS
from memstack.core.consolidate.claims import strip_discourse
from memstack.core.consolidate.signals import (
    FILLER,
    Claim,
    changed_signals,
    exact_key,
    shingle_jaccard,
    value_signals,
    word_count,
    words,
)

# First/second person: the same words from two speakers are two facts ("I'm so tired").
_PERSONAL = frozenset("i me my mine myself we us our ours you your yours im i'm i've i'd "
                      "i'll".split())
# Deixis: "I went for a run today" said in two sessions is two runs, not one.
_DEICTIC = re.compile(r"\b(?:today|tonight|yesterday|tomorrow|this\s+(?:morning|afternoon|"
                      r"evening|week|weekend)|last\s+(?:night|week|weekend)|right\s+now|"
                      r"just\s+now)\b", re.IGNORECASE)


@dataclass
class DedupConfig:
    """Thresholds for the tiers. near_threshold is on word-bigram Jaccard (MinHash finds
    the pair, the verdict uses the exact value): one changed word in an n-word turn leaves
    (n-3)/(n+1), so 0.6 keeps single edits from 9 words up (0.7 would need 13), while two
    different sentences on one topic sit near 0.2; the word-swap gate (substituted()) and
    the value gates stop the edits that change meaning. min_words_near: below 6 words one
    edit moves the bigram Jaccard by 0.3 or more, so short texts only merge exactly.
    min_words_exact: texts under 3 words, or made only of filler ("ok", "thanks so much!",
    "lol"), are conversational noise, not facts; they merge only when the same speaker
    repeats them in the same session (a double send), never across speakers or sessions.
    semantic_threshold 0.93 / ambiguous_low 0.85 are cosines of L2-normalised embeddings:
    above 0.93 paraphrases that passed every gate are safe to merge; 0.85-0.93 is the band
    where a model's judgement (or none) decides."""

    near_threshold: float = 0.6
    min_words_near: int = 6
    min_words_exact: int = 3
    semantic_threshold: float = 0.93
    ambiguous_low: float = 0.85
    slot_residual: int = 2  # non-claim content words a "slot" duplicate may differ by


@dataclass
class DupVerdict:
    kind: str | None  # "exact" | "near" | "semantic" | "slot" | None
    score: float
    ambiguous: bool
    signals: dict = field(default_factory=dict)


def _source(rec: dict) -> tuple[str, str]:
    src = rec.get("source") or {}
    return (str(src.get("speaker") or "").casefold(), str(src.get("session") or ""))


def _content(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOP_WORDS and w not in FILLER
            and re.split(r"['’]", w, maxsplit=1)[0] not in STOP_WORDS}


def is_filler(text: str, cfg: DedupConfig) -> bool:
    """Chat noise that carries no fact: very short, or nothing but filler words."""
    return word_count(text) < cfg.min_words_exact or not _content(text)


def _personal(text: str) -> bool:
    return any(w in _PERSONAL for w in words(text))


def _claims_conflict(ca: list[Claim], cb: list[Claim]) -> str | None:
    """Why two claim lists cannot describe one statement, or None."""
    subj_a, subj_b = {c.subject for c in ca}, {c.subject for c in cb}
    if ca and cb and not subj_a & subj_b:
        return "different subjects"
    idx = {(c.subject, c.slot): c for c in ca}
    for c in cb:
        o = idx.get((c.subject, c.slot))
        if o is not None and (o.value != c.value or o.negated != c.negated):
            return f"claim {c.slot}: {o.value!r} vs {c.value!r}"
    return None


def substituted(ta: str, tb: str) -> list[str]:
    """Content words each text has that the other lacks, when both sides have some that
    are not typos of each other ("marketing team" / "sales team"): a word swapped for
    another, which word-bigram overlap alone cannot tell from a typo."""
    da, db = _content(ta) - _content(tb), _content(tb) - _content(ta)

    def typo(w: str, others: set[str]) -> bool:
        return any(SequenceMatcher(None, w, o).ratio() >= 0.75 for o in others)

    ua = sorted(w for w in da if not typo(w, db))
    ub = sorted(w for w in db if not typo(w, da))
    return ua + ub if ua and ub else []


def _subsumed(ta: str, tb: str, ca: list[Claim], cb: list[Claim], cfg: DedupConfig,
              other_session: bool) -> str | None:
    """Which text ("a" or "b") says nothing the other does not, when both state the same
    claims: the plain statement of a fact ("I'm 34") next to a chattier one ("At 34 I
    finally feel like I know what I'm doing"). Merging keeps the longer text, so nothing
    is lost; the value gates below would otherwise keep them apart over "haha" or "now"."""
    if not ca or not cb:
        return None
    sa, sb = set(ca), set(cb)
    for side, short, long_, cs, cl in (("a", ta, tb, sa, sb), ("b", tb, ta, sb, sa)):
        if not cs <= cl or len(short) > len(long_):
            continue  # the longer may add a claim ("I sold my Volvo and bought a Golf")
        short = strip_discourse(short)
        if len(_content(short) - _claim_words(cs) - _CUES) > cfg.slot_residual:
            continue
        if other_session and _DEICTIC.search(short):
            continue  # "my partner made dinner tonight" is an event, said once
        vs, vl = value_signals(short), value_signals(long_)
        claimed = {w for c in cs for w in c.value.split()}
        if vs["negated"] and not vl["negated"]:
            continue
        if not set(vs["numbers"]) <= set(vl["numbers"]) | claimed or \
                not set(vs["dates"]) <= set(vl["dates"]) or \
                not set(vs["names"]) <= set(vl["names"]) | {c.value for c in cs}:
            continue
        return side
    return None


def _claim_words(claims: list[Claim]) -> set[str]:
    out: set[str] = set()
    for c in claims:
        out.update(words(c.value))  # "gluten-free" is two words of the text
        out.update(c.slot.split())
    return out


def duplicate_verdict(a: dict, b: dict, *, cos: float, jaccard: float | None,
                      claims_a: list[Claim], claims_b: list[Claim],
                      cfg: DedupConfig) -> DupVerdict:
    """Whether memory records a and b say the same thing (see the module docstring for the
    order of gates and tiers). `jaccard` is the MinHash estimate that found the pair; the
    near tier decides on the exact shingle Jaccard of the two texts. signals always says
    which gate or tier decided."""
    sig: dict = {"cos": round(float(cos), 4)}
    if jaccard is not None:
        sig["jaccard_est"] = round(float(jaccard), 4)
    if a.get("ns") != b.get("ns"):
        return DupVerdict(None, 0.0, False, {**sig, "gate": "namespace"})
    ta, tb = a.get("text") or "", b.get("text") or ""
    (spk_a, ses_a), (spk_b, ses_b) = _source(a), _source(b)
    same_speaker = not spk_a or not spk_b or spk_a == spk_b
    same_claims = bool(claims_a) and set(claims_a) == set(claims_b)
    if (is_filler(ta, cfg) or is_filler(tb, cfg)) and not same_claims:  # "I'm 24" is a fact
        if not (spk_a == spk_b and ses_a and ses_a == ses_b and exact_key(ta) == exact_key(tb)):
            return DupVerdict(None, 0.0, False, {**sig, "gate": "filler"})
        return DupVerdict("exact", 1.0, False, {**sig, "tier": "exact", "filler": True})
    if not same_speaker and (_personal(ta) or _personal(tb)):
        return DupVerdict(None, 0.0, False, {**sig, "gate": "speaker",
                                             "speakers": [spk_a, spk_b]})
    side = _subsumed(ta, tb, claims_a, claims_b, cfg, ses_a != ses_b)
    if side is not None:
        if exact_key(ta) == exact_key(tb):
            return DupVerdict("exact", 1.0, False, {**sig, "tier": "exact"})
        return DupVerdict("slot", 1.0, False, {**sig, "tier": "slot", "subsumed": side,
                                               "slots": sorted({c.slot for c in claims_a})})
    if ses_a != ses_b and (_DEICTIC.search(ta) or _DEICTIC.search(tb)):
        return DupVerdict(None, 0.0, False, {**sig, "gate": "deictic time"})
    changed = changed_signals(value_signals(ta), value_signals(tb))
    if changed:
        return DupVerdict(None, 0.0, False, {**sig, "gate": "values", "changed": changed})
    why = _claims_conflict(claims_a, claims_b)
    if why:
        return DupVerdict(None, 0.0, False, {**sig, "gate": "claims", "why": why})
    if exact_key(ta) == exact_key(tb):
        return DupVerdict("exact", 1.0, False, {**sig, "tier": "exact"})
    if min(word_count(ta), word_count(tb)) >= cfg.min_words_near:
        jac = sig["jaccard"] = round(shingle_jaccard(ta, tb), 4)  # exact, not the estimate
        if jac >= cfg.near_threshold:
            swapped = substituted(ta, tb)
            if not swapped:
                return DupVerdict("near", jac, False, {**sig, "tier": "near"})
            sig["substituted"] = swapped
    if cos >= cfg.semantic_threshold:
        return DupVerdict("semantic", float(cos), False, {**sig, "tier": "semantic"})
    if claims_a and set(claims_a) == set(claims_b):
        cw = _claim_words(claims_a)
        ra, rb = _content(ta) - cw - _CUES, _content(tb) - cw - _CUES
        if len(ra) <= cfg.slot_residual and len(rb) <= cfg.slot_residual:
            return DupVerdict("slot", 1.0, False,
                              {**sig, "tier": "slot", "slots": sorted({c.slot
                                                                       for c in claims_a})})
        sig["residual"] = sorted(ra ^ rb)
    if cos >= cfg.ambiguous_low:
        return DupVerdict(None, float(cos), True, {**sig, "tier": "ambiguous"})
    return DupVerdict(None, float(max(cos, sig.get("jaccard", 0.0))), False, sig)


# Words that only say which slot a sentence fills ("I work at" / "my employer is").
_CUES = frozenset("""
work works working worked job employer company employed workplace live lives living lived
home based moved relocated located settled address hometown town city age old years year
turned name called named married engaged divorced single dating relationship partner pet
dog cat drive drives car phone number email mail favorite favourite fave love loves like
likes enjoy enjoys study studies studying major school university college student diet
allergic allergy hobby hobbies into play plays speak speaks currently now still really
new being eat eats follow follows joined started partner together birthday officially
""".split())
