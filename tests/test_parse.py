"""Input parsing: format detection, every chat shape, time parsing, and LoCoMo.

These call the parser API (memstack.core.parse) directly; the CLI tests run the same inputs
through `memstack ingest`.
"""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timedelta, timezone

import msgpack
import pytest
from helpers import LOCOMO
from hypothesis import given, settings
from hypothesis import strategies as st

from memstack.core.errors import InputError
from memstack.core.parse import SNIFF_BYTES, Bad, Item, detect_format, parse, parse_time


def fp_of(data: bytes) -> io.BufferedReader:
    """A peekable binary file, like the ones ingest opens."""
    return io.BufferedReader(io.BytesIO(data))


def items_of(data: bytes, name: str = "in.jsonl", fmt: str = "auto", **kw) -> list:
    return list(parse(fp_of(data), name, fmt, **kw))


def jsonl(*objs) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objs).encode()


def utc(s: str) -> str:
    return s  # readability: expected values below are already ISO UTC


# -- detection ---------------------------------------------------------------------------
MSGPACK_STREAM = (msgpack.packb({"kind": "header", "format": "memstack", "v": [1, 0]})
                  + msgpack.packb({"kind": "eos", "count": 0}))
JSONL_STREAM = jsonl({"kind": "header", "format": "memstack", "v": [1, 0]},
                     {"kind": "eos", "count": 0})


@pytest.mark.parametrize("data,name,want", [
    (MSGPACK_STREAM, "stream.bin", "records"),
    (MSGPACK_STREAM, "weird.md", "records"),  # content beats the name
    (JSONL_STREAM, "stream.jsonl", "records"),
    (jsonl({"role": "user", "content": "hi"}), "chat.jsonl", "jsonl"),
    (jsonl({"role": "user", "content": "hi"}), "chat.txt", "jsonl"),
    (b'\xef\xbb\xbf  {"role": "user", "content": "hi"}\n', "bom.jsonl", "jsonl"),
    (b'{\n  "messages": [{"role": "user", "content": "hi"}]\n}\n', "doc.json", "json"),
    (b'[{"role": "user", "content": "hi"}]', "list.json", "json"),
    (b"just some words\nand more\n", "notes.md", "markdown"),
    (b"# Title\n\nbody text\n", "notes.txt", "markdown"),
    (b"\n\n### Deep heading\nbody\n", "notes", "markdown"),
    (b"#hashtag is not a heading\n", "notes.txt", "text"),
    (b"plain words only\n", "notes.txt", "text"),
    (b"", "empty.txt", "text"),
    (b" \n\t\n", "blank.jsonl", "text"),
])
def test_detect_format(data, name, want):
    assert detect_format(data[:SNIFF_BYTES], name) == want


def test_detect_locomo_file_is_json_and_parses_as_locomo():
    with open(LOCOMO, "rb") as fp:
        head = fp.read(SNIFF_BYTES)
    assert detect_format(head, LOCOMO) == "json"
    with open(LOCOMO, "rb") as fp:
        items = list(parse(fp, LOCOMO))
    assert len(items) == 419
    assert items[0].offset == "D1:1"


def test_detect_jsonl_with_bad_bytes_in_first_line_stays_jsonl():
    """One undecodable line must not turn the whole file into a 'JSON document'
    (then --skip-bad could not skip it, and the error would not name the line)."""
    data = b'{"role": "user", "content": "caf\xff"}\n{"role": "user", "content": "ok"}\n'
    assert detect_format(data, "chat.jsonl") == "jsonl"
    got = items_of(data, "chat.jsonl", skip_bad=True)
    assert [type(x) for x in got] == [Bad, Item]
    assert got[0].error.where.startswith("line 1")
    assert got[1].text == "ok"


def test_detect_jsonl_whose_first_line_is_longer_than_the_sniff():
    first = json.dumps({"role": "user", "content": "long " * (SNIFF_BYTES // 4)})
    data = (first + "\n" + json.dumps({"role": "user", "content": "short"}) + "\n").encode()
    assert len(first) > SNIFF_BYTES
    assert detect_format(data[:SNIFF_BYTES], "chat.jsonl") == "jsonl"
    got = items_of(data, "chat.jsonl")
    assert [i.text for i in got] == [json.loads(first)["content"], "short"]


# -- chat shapes ---------------------------------------------------------------------------
def test_openai_role_content_lines():
    got = items_of(jsonl(
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "where is the harbour?", "session": "abc"},
        {"role": "assistant", "content": [{"type": "text", "text": "north"},
                                          {"type": "text", "text": "of town"}]},
    ))
    assert [(i.speaker, i.text) for i in got] == [
        ("system", "be brief"), ("user", "where is the harbour?"),
        ("assistant", "north of town")]
    assert [i.offset for i in got] == [1, 2, 3]  # line numbers
    assert got[1].session == "abc" and got[0].session is None
    assert all(i.t_event is None and i.level == "turn" for i in got)


def test_messages_object_per_line():
    got = items_of(jsonl(
        {"messages": [{"role": "user", "content": "a1"}, {"role": "assistant", "content": "a2"}],
         "time": "2024-01-02T03:04:05Z"},
        {"conversation_id": 77, "messages": [{"role": "user", "content": "b1"}]},
    ))
    assert [i.text for i in got] == ["a1", "a2", "b1"]
    assert [i.offset for i in got] == ["1:0", "1:1", "2:0"]
    assert [i.session for i in got] == ["1", "1", "77"]
    # a conversation-level time applies to its messages
    assert [i.t_event for i in got] == ["2024-01-02T03:04:05Z"] * 2 + [None]
    assert got[0].where == "line 1, message 0"


def test_sharegpt_conversations():
    got = items_of(jsonl({"id": "conv-9", "conversations": [
        {"from": "human", "value": "what's the capital of Peru?"},
        {"from": "gpt", "value": "Lima"}]}))
    assert [(i.speaker, i.text, i.session) for i in got] == [
        ("human", "what's the capital of Peru?", "conv-9"), ("gpt", "Lima", "conv-9")]


def test_speaker_text_time():
    got = items_of(jsonl(
        {"speaker": "Ana", "text": "I moved to Lisbon", "time": "2023-03-01 10:00:00"},
        {"speaker": "Bo", "text": "nice", "time": 1677665400},
        {"speaker": "Ana", "text": "yes", "time": 1677665460000},
    ))
    assert [(i.speaker, i.text) for i in got] == [("Ana", "I moved to Lisbon"), ("Bo", "nice"),
                                                   ("Ana", "yes")]
    assert [i.t_event for i in got] == ["2023-03-01T10:00:00Z", "2023-03-01T10:10:00Z",
                                        "2023-03-01T10:11:00Z"]


def test_json_document_shapes():
    as_list = items_of(json.dumps([{"role": "user", "content": "x"},
                                   {"role": "assistant", "content": "y"}]).encode(), "d.json")
    assert [i.text for i in as_list] == ["x", "y"]
    convs = items_of(json.dumps([
        {"messages": [{"role": "user", "content": "c0"}]},
        {"conversations": [{"from": "human", "value": "c1"}]}]).encode(), "d.json")
    assert [(i.text, i.where) for i in convs] == [("c0", "item 0, message 0"),
                                                  ("c1", "item 1, message 0")]
    doc = items_of(json.dumps({"messages": [{"role": "user", "content": "m"}]},
                              indent=2).encode(), "d.json")
    assert [i.text for i in doc] == ["m"]


def test_message_without_text_names_line():
    data = jsonl({"role": "user", "content": "fine"}, {"role": "user", "nope": 1})
    with pytest.raises(InputError) as info:
        items_of(data)
    assert info.value.where == "line 2" and "no text field" in info.value.detail
    got = items_of(data, skip_bad=True)
    assert [type(x) for x in got] == [Item, Bad]


def test_non_object_line_is_an_error():
    with pytest.raises(InputError, match=r"line 1: expected a JSON object, got int"):
        items_of(b"42\n", fmt="jsonl")


def test_bad_time_names_line():
    with pytest.raises(InputError) as info:
        items_of(jsonl({"speaker": "a", "text": "t", "time": "next tuesday-ish"}))
    assert info.value.where == "line 1" and "unrecognised time" in info.value.detail


def test_blank_lines_are_skipped_but_counted_in_line_numbers():
    data = b'{"role":"user","content":"one"}\n\n   \n{"role":"user","content":"four"}\n'
    assert [(i.text, i.offset) for i in items_of(data)] == [("one", 1), ("four", 4)]


def test_markdown_sections_and_text_documents():
    md = b"intro line\n# First\nalpha text\n## Second\nbeta text\n"
    got = items_of(md, "n.md")
    assert [i.level for i in got] == ["doc"] * 3
    assert [i.meta.get("heading") for i in got] == [None, "First", "Second"]
    assert [i.offset for i in got] == [0, 11, 30]
    assert b"".join(i.text.encode() for i in got) == md
    txt = items_of(b"# not split\nas text\n", "n.txt", fmt="text")
    assert len(txt) == 1 and txt[0].level == "doc"
    assert items_of(b"   \n", "n.txt", fmt="text") == []


# -- times ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value,want", [
    ("2023-05-08T13:56:00Z", "2023-05-08T13:56:00Z"),
    ("2023-05-08T13:56:00+02:00", "2023-05-08T11:56:00Z"),
    ("2023-05-08T13:56:00.999-05:30", "2023-05-08T19:26:00Z"),
    ("2023-05-08T13:56:00", "2023-05-08T13:56:00Z"),  # naive means UTC
    ("2023-05-08", "2023-05-08T00:00:00Z"),
    ("2023-05-08 13:56", "2023-05-08T13:56:00Z"),
    (1683554160, "2023-05-08T13:56:00Z"),
    (1683554160.75, "2023-05-08T13:56:00Z"),
    ("1683554160", "2023-05-08T13:56:00Z"),
    (1683554160000, "2023-05-08T13:56:00Z"),  # milliseconds
    ("1683554160000", "2023-05-08T13:56:00Z"),
    ("1:56 pm on 8 May, 2023", "2023-05-08T13:56:00Z"),  # LoCoMo
    ("12:05 am on 1 January, 2024", "2024-01-01T00:05:00Z"),
    ("10:37 am on 27 June, 2023", "2023-06-27T10:37:00Z"),
    ("8 May 2023", "2023-05-08T00:00:00Z"),
    ("May 8, 2023", "2023-05-08T00:00:00Z"),
    ("Mon, 08 May 2023 13:56:00 +0000", "2023-05-08T13:56:00Z"),
    (None, None),
    ("", None),
])
def test_parse_time_examples(value, want):
    assert parse_time(value) == want


@pytest.mark.parametrize("value", ["tomorrow", "2023-13-45", True, [2023], {"t": 1}])
def test_parse_time_refuses(value):
    with pytest.raises(ValueError):
        parse_time(value)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(min_value=datetime(1974, 1, 1), max_value=datetime(2199, 12, 31),
                       timezones=offsets)


@settings(max_examples=300, deadline=None)
@given(moments)
def test_parse_time_iso_roundtrip(dt):
    want = _iso(dt)
    assert parse_time(dt.isoformat()) == want
    assert parse_time(dt.isoformat().replace("+00:00", "Z")) == want
    naive = dt.astimezone(timezone.utc).replace(tzinfo=None)
    assert parse_time(naive.isoformat()) == want  # no zone: UTC


@settings(max_examples=300, deadline=None)
@given(moments, st.integers(min_value=0, max_value=999))
def test_parse_time_epoch_seconds_and_millis(dt, ms):
    secs = int(dt.timestamp() // 1)
    want = _iso(datetime.fromtimestamp(secs, tz=timezone.utc))
    assert parse_time(secs) == want
    assert parse_time(str(secs)) == want
    assert parse_time(secs + ms / 1000) == want
    assert parse_time(secs * 1000 + ms) == want


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1974, 1, 1), max_value=datetime(2199, 12, 31)))
def test_parse_time_locomo_form(dt):
    dt = dt.replace(second=0, microsecond=0)
    hour = dt.hour % 12 or 12
    text = f"{hour}:{dt.minute:02d} {'am' if dt.hour < 12 else 'pm'} on {dt.day} " \
           f"{dt.strftime('%B')}, {dt.year}"
    assert parse_time(text) == dt.strftime("%Y-%m-%dT%H:%M:00Z")


# -- LoCoMo ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def locomo():
    with open(LOCOMO, encoding="utf-8") as fp:
        raw = json.load(fp)
    with open(LOCOMO, "rb") as fp:
        items = list(parse(fp, "locomo-sample.json"))
    return raw, items


def _turns(raw):
    conv = raw[0]["conversation"]
    keys = sorted((k for k in conv if re.fullmatch(r"session_\d+", k)),
                  key=lambda k: int(k.split("_")[1]))
    for key in keys:
        when = datetime.strptime(conv[f"{key}_date_time"], "%I:%M %p on %d %B, %Y")
        for turn in conv[key]:
            yield key, when.strftime("%Y-%m-%dT%H:%M:00Z"), turn


def test_locomo_turns_offsets_times_sessions(locomo):
    raw, items = locomo
    turns = list(_turns(raw))
    assert len(items) == len(turns) == 419
    assert all(isinstance(i, Item) for i in items)
    for item, (key, when, turn) in zip(items, turns, strict=True):
        assert item.offset == turn["dia_id"]
        assert item.speaker == turn["speaker"]
        assert item.t_event == when
        assert item.session == f"conv-26/{key}"
        assert item.text.startswith(turn["text"])
    assert len({i.offset for i in items}) == 419
    d13 = next(i for i in items if i.offset == "D1:3")
    assert d13.t_event == "2023-05-08T13:56:00Z"
    assert "LGBTQ support group" in d13.text


def test_locomo_captions_appended(locomo):
    raw, items = locomo
    by_id = {i.offset: i for i in items}
    with_caption = [t for _, _, t in _turns(raw) if "blip_caption" in t]
    assert with_caption, "the sample has image turns"
    for turn in with_caption:
        item = by_id[turn["dia_id"]]
        assert item.text == f"{turn['text']} [shares a photo: {turn['blip_caption']}]"
        assert item.meta.get("image") is True
    plain = [i for i in items if not i.meta.get("image")]
    assert all("[shares a photo:" not in i.text for i in plain)
    assert len(plain) == 419 - len(with_caption)


def test_locomo_bad_session_date_names_session():
    doc = {"sample_id": "s1", "conversation": {
        "speaker_a": "A", "speaker_b": "B",
        "session_1_date_time": "sometime in spring",
        "session_1": [{"speaker": "A", "dia_id": "D1:1", "text": "hi"}]}}
    with pytest.raises(InputError) as info:
        items_of(json.dumps([doc]).encode(), "lc.json")
    assert info.value.where == "sample s1, session_1_date_time"
