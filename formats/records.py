"""Record format v1: the envelope, memory and hit records, ids and version checks."""

from __future__ import annotations

import hashlib
import os
import time
import unicodedata
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

FORMAT_NAME = "memstack"
VERSION = (1, 0)
RECORD_VERSION = 1

LEVELS = ("turn", "chunk", "doc", "fact", "summary", "cluster")
LINK_TYPES = ("supersedes", "derived_from", "related", "contradicts")

def normalise_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the form ids are computed from."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def source_position(source: dict) -> str:
    """Where in its source a memory was said: file name (not its directory, so the same
    file reached by another path is the same source), session and offset."""
    return f"{_base_name(str(source.get('uri', '')))}#{source.get('session', '')}#" \
           f"{source.get('offset', '')}"


@lru_cache(maxsize=1024)
def _base_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] if "://" not in uri else uri


def memory_id(ns: str, text: str, position: str = "") -> str:
    """Content-addressed id: the same text at the same source position is the same memory."""
    key = f"{ns}\x1f{normalise_text(text)}\x1f{position}\x1f"
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def now_iso() -> str:
    """Ingest time; SOURCE_DATE_EPOCH pins it for reproducible output."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    ts = float(sde) if sde else time.time()
    return to_iso(ts)


_DAY_CACHE: dict[int, str] = {}
_DATE_CACHE: dict[str, int] = {}


def to_iso(ts: float | None) -> str | None:
    """Epoch seconds -> 'YYYY-MM-DDTHH:MM:SSZ' (UTC), with the date part cached per day."""
    if ts is None:
        return None
    sec = int(ts // 1)
    day, rest = divmod(sec, 86400)
    date = _DAY_CACHE.get(day)
    if date is None:
        d = datetime.fromtimestamp(day * 86400, tz=timezone.utc)
        date = f"{d.year:04d}-{d.month:02d}-{d.day:02d}"  # strftime gives "999" for year 999
        if len(_DAY_CACHE) < 100000:
            _DAY_CACHE[day] = date
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{date}T{h:02d}:{m:02d}:{s:02d}Z"


def from_iso(value: str | None) -> float | None:
    """ISO 8601 -> epoch seconds; our own fixed UTC form takes a fast path."""
    if value is None:
        return None
    if len(value) == 20 and value[10] == "T" and value[19] == "Z" and value[13] == ":":
        day = _DATE_CACHE.get(value[:10])
        if day is None:
            day = int(datetime.fromisoformat(value[:10] + "T00:00:00+00:00").timestamp())
            if len(_DATE_CACHE) < 100000:
                _DATE_CACHE[value[:10]] = day
        try:
            return float(day + int(value[11:13]) * 3600 + int(value[14:16]) * 60
                         + int(value[17:19]))
        except ValueError:
            pass
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def memory_record(
    *,
    ns: str,
    text: str,
    tokens: int,
    t_event: str | None,
    t_ingest: str,
    source: dict,
    level: str = "turn",
    links: list | None = None,
    meta: dict | None = None,
    valid_from: str | None = None,
    valid_to: str | None = None,
) -> dict:
    """Build a memory record with the fixed key order of FORMAT.md."""
    return {
        "v": RECORD_VERSION,
        "kind": "memory",
        "id": memory_id(ns, text, source_position(source)),
        "ns": ns,
        "text": text,
        "tokens": tokens,
        "t_event": t_event,
        "t_ingest": t_ingest,
        "valid_from": valid_from if valid_from is not None else (t_event or t_ingest),
        "valid_to": valid_to,
        "source": source,
        "level": level,
        "links": links or [],
        "meta": meta or {},
    }


def check_version(rec: Any) -> str | None:
    """Return why a decoded object is not a readable record, or None when it is."""
    if not isinstance(rec, dict):
        return f"expected a map, got {type(rec).__name__}"
    v = rec.get("v", RECORD_VERSION)
    major = v[0] if isinstance(v, list | tuple) and v else v
    if not isinstance(major, int):
        return f"bad version field {v!r}"
    if major > VERSION[0]:
        return (f"format version {major} is newer than this memstack reads ({VERSION[0]}); "
                "upgrade memstack")
    return None


def check_memory(rec: dict) -> str | None:
    """Validate the fields a memory record must carry; None when it is well formed."""
    for key, typ in (("id", str), ("ns", str), ("text", str)):
        if not isinstance(rec.get(key), typ):
            return f"memory record needs a string {key!r}"
    if rec.get("level", "turn") not in LEVELS:
        return f"unknown level {rec.get('level')!r}"
    for key in ("t_event", "t_ingest", "valid_from", "valid_to"):
        val = rec.get(key)
        if val is not None:
            try:
                from_iso(val)
            except (TypeError, ValueError):
                return f"{key} {val!r} is not an ISO 8601 time"
    return None
