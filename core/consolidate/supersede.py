"""Whether a later statement supersedes or contradicts an earlier one.

Supersession closes the older memory's validity, so it needs proof: the same subject and
slot with a changed value ("I work at Google" -> "I joined Apple"), or the same value with
the negation flipped ("I live in Paris" -> "I no longer live in Paris"). Everything weaker
(high similarity with a changed number, date, name or negation, but no matching claim) is
at most a `contradicts` link, which invalidates nothing. Different subjects never relate:
"my sister works at Apple" says nothing about where I work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memstack.core.analyze import STOP_WORDS
from memstack.core.consolidate.signals import (
    FILLER,
    Claim,
    changed_signals,
    is_multi_valued,
    value_signals,
    words,
)

CONTRADICT_COS = 0.6  # below this two statements are not about the same thing
AMBIGUOUS_COS = 0.75  # same subject, no decisive signal: an LLM may judge
FRAME_MIN = 0.4  # content-word overlap (values left out) for a conflict, not a new topic
_PERSONAL = frozenset("i me my mine myself im we us our ours".split())  # the speaker's


@dataclass
class Relation:
    kind: str | None  # "supersedes" | "contradicts" | None
    score: float
    ambiguous: bool
    signals: dict = field(default_factory=dict)
    reason: str = ""


def slot_keys(ns: str, claims: list[Claim]) -> list[str]:
    """Blocking keys "ns\\x1fsubject\\x1fslot": statements that could supersede each other
    share one, so an incremental run finds its candidates without a scan."""
    return sorted({f"{ns}\x1f{c.subject}\x1f{c.slot}" for c in claims})


def same_value(a: str, b: str) -> bool:
    """Equal, or one's words contain the other's ("google" / "google inc", "dog" / "dog
    max"): a more specific restatement is not a change."""
    wa, wb = set(a.split()), set(b.split())
    return a == b or bool(wa and wb and (wa <= wb or wb <= wa))


def _slot_change(old: Claim, new: Claim) -> str | None:
    """How `new` replaces `old` (same subject and slot), or None when both can hold."""
    same = same_value(old.value, new.value)
    if old.negated != new.negated:
        return "negation" if same else None
    if old.negated or same or is_multi_valued(new.slot):
        return None  # both negative, a restatement, or one more pet/hobby
    return "value"


def _reason(old: Claim, new: Claim, how: str) -> str:
    who = new.subject or "speaker"
    if how == "negation":
        state = "no longer" if new.negated else "again"
        return f"{who}: {new.slot} {state} {new.value!r}"
    return f"{who}: {new.slot} changed from {old.value!r} to {new.value!r}"


def _mentions(rec: dict, claims: list[Claim], names: list[str]) -> set[str]:
    """Who a memory is about: its claims' subjects, else the speaker when it speaks in the
    first person, plus the people and places it names."""
    if claims:
        return {c.subject for c in claims}
    out = set(names)
    if any(w in _PERSONAL for w in words(rec.get("text") or "")):
        out.add(str((rec.get("source") or {}).get("speaker") or "").casefold())
    return out


def _frame(text: str, values: dict) -> set[str]:
    """Content words with the values left out: what the sentence is about."""
    drop = set(values["numbers"]) | {w for n in values["names"] for w in n.split()}
    return {w for w in words(text) if w not in STOP_WORDS and w not in FILLER
            and w not in drop and not any(c.isdigit() for c in w)
            and w.split("'")[0] not in STOP_WORDS}


def relate(old: dict, new: dict, *, cos: float, claims_old: list[Claim],
           claims_new: list[Claim]) -> Relation:
    """How the later memory `new` bears on the earlier `old` (records ordered by
    valid_from by the caller)."""
    sig: dict = {"cos": round(float(cos), 4)}
    if old.get("ns") != new.get("ns"):
        return Relation(None, 0.0, False, {**sig, "gate": "namespace"}, "different namespaces")
    by_key: dict[tuple[str, str], list[Claim]] = {}
    for c in claims_old:
        by_key.setdefault((c.subject, c.slot), []).append(c)
    shared = False
    for cn in claims_new:
        for co in by_key.get((cn.subject, cn.slot), ()):
            shared = True
            how = _slot_change(co, cn)
            if how is None:
                continue
            others = [c for c in claims_old if (c.subject, c.slot) != (cn.subject, cn.slot)]
            return Relation("supersedes", 1.0, False, {
                **sig, "method": "slot", "subject": cn.subject, "slot": cn.slot,
                "old": co.value, "new": cn.value, "change": how,
                "negated": [co.negated, cn.negated], "partial": bool(others)},
                _reason(co, cn, how))
    subj_old = {c.subject for c in claims_old}
    subj_new = {c.subject for c in claims_new}
    if shared:  # compatible values; a changed count ("two dogs" / "three dogs") may conflict
        sig["claims"] = "agree"
    elif claims_old and claims_new:
        gate = "claims on other slots" if subj_old & subj_new else "different subjects"
        return Relation(None, float(cos), False, {**sig, "gate": gate}, gate)
    vo, vn = value_signals(old.get("text") or ""), value_signals(new.get("text") or "")
    about = _mentions(old, claims_old, vo["names"]) & _mentions(new, claims_new, vn["names"])
    if not about:
        return Relation(None, float(cos), False, {**sig, "gate": "different subjects"},
                        "no shared subject")
    if cos < CONTRADICT_COS:
        return Relation(None, float(cos), False, sig, "not similar enough")
    changed = changed_signals(vo, vn, both=True)
    if shared:  # the claims settled names and negation ("Google" / "Google Cloud")
        changed = [c for c in changed if c in ("numbers", "dates")]
    fo, fn = _frame(old.get("text") or "", vo), _frame(new.get("text") or "", vn)
    frame = len(fo & fn) / len(fo | fn) if fo | fn else 0.0
    sig.update({"changed": changed, "frame": round(frame, 4), "about": sorted(about)})
    if changed and frame >= FRAME_MIN:
        return Relation("contradicts", float(cos), False, {**sig, "method": "signals"},
                        "similar statements about " + ", ".join(sorted(about) or ["?"])
                        + " differ in " + ", ".join(changed))
    if shared:
        return Relation(None, float(cos), False, {**sig, "gate": "claims agree"},
                        "same subject and slot, compatible values")
    return Relation(None, float(cos), cos >= AMBIGUOUS_COS, sig,
                    "similar, no deterministic conflict signal")
