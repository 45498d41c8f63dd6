"""Input parsers for `ingest`: each turns one input into Items, naming positions for errors.

Formats: plain text, markdown, JSONL chat (OpenAI, ShareGPT, {speaker,text,time}), a JSON
document (a message list, {"messages": [...]}, or LoCoMo conversations), and memstack record
streams. `detect_format` sniffs the first bytes so users rarely need --format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain
from typing import IO, Any

from memstack.core.errors import InputError
from memstack.formats.records import check_memory, to_iso
from memstack.formats.stream import MSGPACK_MAP_FIRST, RecordReader

FORMATS = ("auto", "text", "markdown", "jsonl", "json", "locomo", "records")
DEFAULT_MAX_LINE = 16 << 20
SNIFF_BYTES = 1 << 16


@dataclass
class Item:
    """One unit to remember, before tokenising and embedding."""

    text: str
    where: str
    offset: Any = ""
    speaker: str | None = None
    session: str | None = None
    t_event: str | None = None
    level: str = "turn"
    meta: dict = field(default_factory=dict)
    record: dict | None = None  # a memstack record passed through as it is


@dataclass
class Bad:
    """A unit that could not be read; counted and skipped under --skip-bad."""

    error: InputError


# -- times ---------------------------------------------------------------------------
_TIME_FORMATS = (
    "%I:%M %p on %d %B, %Y",  # LoCoMo: "1:56 pm on 8 May, 2023"
    "%I:%M %p on %d %b, %Y",
    "%d %B %Y",
    "%d %B, %Y",
    "%B %d, %Y",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d",
    "%a, %d %b %Y %H:%M:%S %z",
)


def parse_time(value: Any) -> str | None:
    """ISO 8601, epoch seconds/milliseconds, LoCoMo and common human formats -> ISO UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        ts = float(value)
        if ts > 1e11:  # milliseconds
            ts /= 1000.0
        return to_iso(ts)
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return parse_time(float(text))
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        dt = None
        for fmt in _TIME_FORMATS:
            try:
                dt = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        if dt is None:
            raise ValueError(f"unrecognised time {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return to_iso(dt.timestamp())


# -- detection -----------------------------------------------------------------------
def detect_format(head: bytes, name: str) -> str:
    """Pick a parser from the first bytes and the file name."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped:
        return "text"
    if head[0] in MSGPACK_MAP_FIRST:
        return "records"
    lower = name.lower()
    if stripped[:1] == b"[":
        return "json"
    if stripped[:1] == b"{":
        first = stripped.split(b"\n", 1)[0]
        try:  # a bad byte in the first line must not make a JSONL file look like a document
            obj = json.loads(first.decode("utf-8", "replace"))
        except ValueError:
            # a multi-line JSON document, unless the name says JSONL (then the first line is
            # malformed or longer than the sniffed bytes: the JSONL parser reports it by line)
            return "jsonl" if lower.endswith((".jsonl", ".ndjson")) else "json"
        if isinstance(obj, dict) and obj.get("format") == "memstack":
            return "records"
        return "jsonl"
    if lower.endswith((".md", ".markdown")) or re.match(rb"#{1,6} ", stripped):
        return "markdown"
    return "text"


# -- line reading with limits ----------------------------------------------------------
def iter_lines(fp: IO[bytes], name: str, max_line: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number, byte offset, line) with lines over max_line bytes given as None."""
    lineno = 0
    offset = 0
    while True:
        raw = fp.readline(max_line + 1)
        if not raw:
            return
        lineno += 1
        start = offset
        offset += len(raw)
        if len(raw) > max_line and not raw.endswith(b"\n"):
            while True:  # skip the rest of the over-long line without holding it
                more = fp.readline(1 << 20)
                offset += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield lineno, start, None
            continue
        yield lineno, start, raw


def _decode(raw: bytes, name: str, where: str, start: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = f"byte {start + exc.start}"  # a whole document is named by the byte alone
        raise InputError(name, f"{where} ({at})" if where else at, "invalid UTF-8") from None


# -- parsers ---------------------------------------------------------------------------
_ROLE_KEYS = ("role", "from", "speaker", "author", "name", "user")
_TEXT_KEYS = ("content", "value", "text", "message", "body")
_TIME_KEYS = ("time", "timestamp", "created_at", "date", "date_time", "t", "ts")
_SESSION_KEYS = ("session", "session_id", "conversation_id", "thread", "thread_id")


def _first(obj: dict, keys: tuple[str, ...], default: Any = None) -> Any:
    for k in keys:
        if k in obj:
            return obj[k]
    return default


def _message(obj: dict, where: str, name: str, index: Any, defaults: dict) -> Item:
    """One chat message in any of the supported shapes."""
    text = _first(obj, _TEXT_KEYS)
    if isinstance(text, list):  # OpenAI content parts
        text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
    if not isinstance(text, str):
        raise InputError(name, where, "message has no text field "
                         f"(expected one of {', '.join(_TEXT_KEYS)})")
    speaker = None
    for k in _ROLE_KEYS:
        if isinstance(obj.get(k), str):
            speaker = obj[k]
            break
    raw_time = _first(obj, _TIME_KEYS, defaults.get("time"))
    try:
        t_event = parse_time(raw_time)
    except ValueError as exc:
        raise InputError(name, where, str(exc)) from None
    session = _first(obj, _SESSION_KEYS)
    session = defaults.get("session") if session is None else str(session)
    meta = {}
    if "blip_caption" in obj:  # shared images (LoCoMo): the caption is what was said
        text = f"{text} [shares a photo: {obj['blip_caption']}]"
        meta["image"] = True
    offset = obj.get("dia_id") or obj.get("id") or index
    return Item(text=text, where=where, offset=offset if isinstance(offset, str | int) else index,
                speaker=speaker, session=session, t_event=t_event, meta=meta)


def _conversation(obj: Any, where: str, name: str, line_index: int) -> Iterator[Item]:
    """A JSON value holding one message or a whole conversation."""
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
        msgs, defaults = obj["messages"], obj
    elif isinstance(obj, dict) and isinstance(obj.get("conversations"), list):  # ShareGPT
        msgs, defaults = obj["conversations"], obj
    elif isinstance(obj, dict):
        yield _message(obj, where, name, line_index, {})
        return
    elif isinstance(obj, list):
        msgs, defaults = obj, {}
    else:
        raise InputError(name, where, f"expected a JSON object, got {type(obj).__name__}")
    base = {"time": next((defaults.get(k) for k in _TIME_KEYS if k in defaults), None),
            "session": next((str(defaults[k]) for k in _SESSION_KEYS + ("id",)
                             if defaults.get(k) is not None), None)}
    if base["session"] is None and isinstance(obj, dict):
        base["session"] = str(line_index)
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            raise InputError(name, f"{where}, message {i}", "expected a message object")
        yield _message(msg, f"{where}, message {i}", name, f"{line_index}:{i}", base)


def parse_jsonl(fp: IO[bytes], name: str, max_line: int = DEFAULT_MAX_LINE,
                skip_bad: bool = False) -> Iterator[Item | Bad]:
    return parse_jsonl_lines(iter_lines(fp, name, max_line), name, max_line, skip_bad)


def parse_jsonl_lines(lines: Iterable[tuple[int, int, bytes | None]], name: str,
                      max_line: int = DEFAULT_MAX_LINE,
                      skip_bad: bool = False) -> Iterator[Item | Bad]:
    """JSONL chat from (line number, byte offset, line) triples, as iter_lines gives them."""
    for lineno, start, raw in lines:
        where = f"line {lineno}"
        try:
            if raw is None:
                raise InputError(name, where, f"line longer than the {max_line} byte limit "
                                 "(--max-line-bytes)")
            text = _decode(raw, name, where, start)
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise InputError(name, f"{where}, column {getattr(exc, 'colno', '?')}",
                                 f"malformed JSON ({getattr(exc, 'msg', exc)})") from None
            yield from list(_conversation(obj, where, name, lineno))
        except InputError as exc:
            if not skip_bad:
                raise
            yield Bad(exc)


def parse_json(fp: IO[bytes], name: str, skip_bad: bool = False) -> Iterator[Item | Bad]:
    data = fp.read()
    text = _decode(data, name, "", 0) if data else ""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        where = f"line {getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')}"
        raise InputError(name, where, f"malformed JSON ({getattr(exc, 'msg', exc)})") from None
    if _is_locomo(obj):
        yield from parse_locomo_obj(obj, name)
        return
    if isinstance(obj, list) and obj and all(isinstance(o, dict) and
                                             ("messages" in o or "conversations" in o)
                                             for o in obj):
        for i, conv in enumerate(obj):
            yield from _conversation(conv, f"item {i}", name, i)
        return
    yield from _conversation(obj, "document", name, 0)


def _is_locomo(obj: Any) -> bool:
    samples = obj if isinstance(obj, list) else [obj]
    return bool(samples) and all(isinstance(s, dict) and isinstance(s.get("conversation"), dict)
                                 for s in samples)


def parse_locomo_obj(obj: Any, name: str) -> Iterator[Item]:
    """LoCoMo: samples with `conversation.session_N` turn lists and `session_N_date_time`."""
    samples = obj if isinstance(obj, list) else [obj]
    for si, sample in enumerate(samples):
        conv = sample["conversation"]
        sample_id = str(sample.get("sample_id", si))
        keys = [k for k in conv if re.fullmatch(r"session_\d+", k)]
        for key in sorted(keys, key=lambda k: int(k.split("_")[1])):
            turns = conv[key]
            where = f"sample {sample_id}, {key}"
            if not isinstance(turns, list):
                raise InputError(name, where, "expected a list of turns")
            try:
                when = parse_time(conv.get(f"{key}_date_time"))
            except ValueError as exc:
                raise InputError(name, f"{where}_date_time", str(exc)) from None
            for ti, turn in enumerate(turns):
                if not isinstance(turn, dict) or not isinstance(turn.get("text"), str):
                    raise InputError(name, f"{where}, turn {ti}", "turn needs a text string")
                item = _message(turn, f"{where}, turn {ti}", name, turn.get("dia_id", ti),
                                {"time": None})
                item.t_event = when
                item.session = f"{sample_id}/{key}"
                item.meta["sample"] = sample_id
                yield item


def parse_text(fp: IO[bytes], name: str, markdown: bool = False) -> Iterator[Item]:
    """A whole document; ingest chunks it by tokens. Markdown splits at headings first."""
    data = fp.read()
    text = _decode(data, name, "", 0)
    if not markdown:
        if text.strip():
            yield Item(text=text, where="byte 0", offset=0, level="doc")
        return
    heads = [m.start() for m in re.finditer(r"(?m)^#{1,6} ", text)]
    starts = sorted(set([0] + heads))
    for a, b in zip(starts, starts[1:] + [len(text)], strict=True):
        section = text[a:b]
        if section.strip():
            title = section.split("\n", 1)[0].lstrip("#").strip() if section.startswith("#") \
                else None
            meta = {"heading": title} if title else {}
            yield Item(text=section, where=f"char {a}", offset=a, level="doc", meta=meta)


def open_records(fp: IO[bytes], name: str) -> tuple[dict, Iterator[Item]]:
    """Read a record stream's header now; return (header meta, memory items).

    Memory records pass through with their ids; their vectors are tagged with the embedder
    that made them, so ingest reuses them only when it embeds the same way.
    """
    reader = RecordReader(fp, name)
    records = iter(reader)
    first = next(records, None)
    meta = (reader.header or {}).get("meta") or {}
    made_by = (meta.get("embedder") or {}).get("spec")

    def items() -> Iterator[Item]:
        for i, rec in enumerate(chain([first] if first is not None else [], records)):
            if rec.get("kind") != "memory":
                continue
            problem = check_memory(rec)
            if problem:
                raise InputError(name, f"record {i + 1}", problem)
            if "vec" in rec:
                rec = dict(rec, _vec_spec=made_by)
            yield Item(text=rec["text"], where=f"record {i + 1}", record=rec)

    return meta, items()


def parse_records(fp: IO[bytes], name: str) -> Iterator[Item]:
    """memstack record streams (msgpack or JSONL)."""
    return open_records(fp, name)[1]


def parse(fp: IO[bytes], name: str, fmt: str = "auto", *, max_line: int = DEFAULT_MAX_LINE,
          skip_bad: bool = False) -> Iterator[Item | Bad]:
    """Items of one input in the given (or detected) format."""
    if fmt == "auto":
        head = fp.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(fp, "peek") else b""
        fmt = detect_format(head, name)
    if fmt == "jsonl":
        return parse_jsonl(fp, name, max_line, skip_bad)
    if fmt in ("json", "locomo"):
        return parse_json(fp, name, skip_bad)
    if fmt == "records":
        return parse_records(fp, name)
    if fmt in ("text", "markdown"):
        return parse_text(fp, name, markdown=fmt == "markdown")
    raise ValueError(f"unknown format {fmt!r}")
