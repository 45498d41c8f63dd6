"""`memstack history ID`: the versions, merges and decisions behind one memory."""

from __future__ import annotations

from memstack.core.errors import MemstackError
from memstack.core.store import LmdbStore


class UnknownMemory(MemstackError):
    exit_code = 1


def resolve_id(store: LmdbStore, prefix: str) -> str:
    """A full id from an id or a unique prefix of at least 6 hex digits."""
    prefix = prefix.strip().lower()
    if len(prefix) < 6 or any(c not in "0123456789abcdef" for c in prefix):
        raise UnknownMemory(f"{prefix!r}: give a memory id (32 hex digits) or a prefix of at "
                            "least 6")
    with store._read_txn() as txn:
        cur = txn.cursor(db=store.dbs["docnos"])
        found = []
        if cur.set_range(prefix.encode()):
            for key in cur.iternext(keys=True, values=False):
                k = bytes(key).decode()
                if not k.startswith(prefix):
                    break
                found.append(k)
                if len(found) > 1:
                    break
    if not found:
        raise UnknownMemory(f"{store.path}: no memory with id {prefix!r}")
    if len(found) > 1:
        raise UnknownMemory(f"{store.path}: id prefix {prefix!r} is ambiguous; give more "
                            "digits")
    return found[0]


def history(store: LmdbStore, rid: str) -> dict:
    """The memory, the chain of versions before and after it, what it was merged from or
    into, and every decision that names it or them (oldest first)."""
    rid = resolve_id(store, rid)
    with store.snapshot() as snap:
        rec = snap.record_by_id(rid)

        def links(r: dict, typ: str) -> list[str]:
            return [ln["id"] for ln in r.get("links") or () if ln.get("type") == typ]

        older, newer = [], []
        seen = {rid}
        todo = links(rec, "supersedes")
        while todo:  # every version it replaced, transitively
            oid = todo.pop(0)
            if oid in seen:
                continue
            seen.add(oid)
            o = snap.record_by_id(oid)
            if o is not None:
                older.append(o)
                todo.extend(links(o, "supersedes"))
        cur = rec
        while (cur.get("meta") or {}).get("superseded_by") and len(newer) < 1000:
            nid = cur["meta"]["superseded_by"]
            if nid in seen:
                break
            seen.add(nid)
            cur = snap.record_by_id(nid)
            if cur is None:
                break
            newer.append(cur)
        merged_into = None
        if (rec.get("meta") or {}).get("merged_into"):
            merged_into = snap.record_by_id(rec["meta"]["merged_into"])
        sources = [s for s in (snap.record_by_id(x) for x in links(rec, "derived_from"))
                   if s is not None]
    names = [rid, *(o["id"] for o in older), *(x["id"] for x in newer)]
    if merged_into is not None:
        names.append(merged_into["id"])
    decisions: dict[str, dict] = {}
    for name in names:
        for d in store.decisions_for(name):
            decisions[d["id"]] = d
    ordered = sorted(decisions.values(), key=lambda d: (d.get("t", ""), d.get("seq", 0)))
    return {"memory": rec, "older": older, "newer": newer, "merged_into": merged_into,
            "sources": sources, "decisions": ordered}
