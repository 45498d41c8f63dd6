"""Decision records: every mark consolidate makes is written down with its reasons.

A decision is content addressed (action, subject, objects), so re-running consolidate finds
its earlier decisions and adds nothing, and `--dry-run` prints the same records a real run
commits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from memstack.formats.records import RECORD_VERSION

ACTIONS = ("merge", "supersede", "contradict", "link", "summarize", "cluster", "archive",
           "quarantine")


def decision_id(action: str, subject: str, objects: list[str]) -> str:
    key = "\x1f".join([action, subject, *sorted(objects)])
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _plain(value):
    """Signals as msgpack/JSON-safe plain values (numpy scalars become floats/ints)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


@dataclass
class DecisionLog:
    """The decisions of one run, in the order they were taken."""

    run: str
    t: str
    items: list[dict] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def add(self, action: str, subject: str, objects: list[str], *, method: str,
            score: float, reason: str, signals: dict | None = None) -> dict | None:
        """Record a decision; None when this run already took the same one."""
        assert action in ACTIONS, action
        did = decision_id(action, subject, objects)
        if did in self.seen:
            return None
        self.seen.add(did)
        rec = {"v": RECORD_VERSION, "kind": "decision", "id": did, "action": action,
               "subject": subject, "objects": list(objects), "method": method,
               "score": round(float(score), 6), "signals": _plain(signals or {}),
               "reason": reason, "run": self.run, "t": self.t, "seq": len(self.items)}
        self.items.append(rec)
        return rec
