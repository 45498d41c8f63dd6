"""Wire format: record round trips through msgpack and JSONL framing, reader errors with
positions, the ndarray ext type, ISO times and content-addressed ids."""

from __future__ import annotations

import io
import json
import math
import re
import struct
from datetime import datetime, timedelta, timezone

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memstack.core.errors import InputError
from memstack.formats import ndarray
from memstack.formats.records import (
    check_memory,
    check_version,
    from_iso,
    memory_id,
    memory_record,
    normalise_text,
    to_iso,
)
from memstack.formats.stream import RecordReader, RecordWriter, read_records

FORMATS = ("msgpack", "jsonl")
HEADER = msgpack.packb({"kind": "header", "format": "memstack", "v": [1, 0], "producer": "t"})


# -- helpers -----------------------------------------------------------------------------
def encode(records: list[dict], fmt: str) -> bytes:
    buf = io.BytesIO()
    with RecordWriter(buf, fmt) as writer:
        for rec in records:
            writer.write(rec)
    return buf.getvalue()


def decode(data: bytes, fmt: str | None = None) -> list[dict]:
    """Read a stream the way the CLI does (a buffered binary file)."""
    return list(RecordReader(io.BufferedReader(io.BytesIO(data)), "in.bin", fmt))


def read_error(data: bytes, fmt: str | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        decode(data, fmt)
    err = info.value
    assert "\n" not in str(err)
    assert str(err).startswith("in.bin: ")
    return err


def same(a, b, fmt: str) -> bool:
    """Deep equality that knows NaN, signed zero, bytes vs str, and array dtypes.

    msgpack stores arrays little-endian, so a big-endian array comes back with the same
    values in the little-endian dtype; JSONL keeps the dtype string as it was.
    """
    if isinstance(a, np.ndarray):
        want = a.dtype.newbyteorder("<") if fmt == "msgpack" else a.dtype
        return (isinstance(b, np.ndarray) and b.dtype == want and b.shape == a.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, fmt) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k], fmt) for k in a)
    return a == b


# -- strategies --------------------------------------------------------------------------
# no lone surrogates: they are not encodable as UTF-8 in either format
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
# the JSONL view spells arrays and bytes as one-key maps {"$ndarray": …} / {"$bytes": …}
KEYS = TEXT.filter(lambda k: k not in ("$ndarray", "$bytes"))
DTYPES = ["|b1", "|i1", "|u1", "<i2", ">u2", "<i4", ">i4", "<i8", "<u8", "<f2", "<f4", "<f8",
          ">f8", "<c8", "<c16"]
ARRAYS = st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(
    np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | TEXT | st.binary(max_size=16))
VALUES = st.recursive(SCALARS | ARRAYS,
                      lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=12)
RECORDS = st.dictionaries(KEYS.filter(lambda k: k not in ("kind", "v")), VALUES,
                          max_size=5).map(lambda d: {"kind": "test", **d})


# -- round trips ----------------------------------------------------------------------------
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(RECORDS, max_size=5))
def test_round_trip(records):
    for fmt in FORMATS:
        data = encode(records, fmt)
        reader = RecordReader(io.BufferedReader(io.BytesIO(data)), "in", None)
        out = list(reader)
        assert reader.fmt == fmt
        assert reader.header["format"] == "memstack" and reader.header["v"] == [1, 0]
        assert reader.count == len(records)
        assert len(out) == len(records)
        for a, b in zip(records, out, strict=True):
            assert same(a, b, fmt), (fmt, a, b)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_examples(fmt):
    rec = {"kind": "memory", "text": "naïve café 😀 𝄞 漢字 \u2028 line\nbreak \x00",
           "n": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1], "f": [0.1, -0.0, 1e308, math.inf],
           "nan": math.nan, "b": b"\x00\xff\x80", "empty": {}, "none": None, "t": True,
           "a0": np.array(3.5, dtype=np.float32), "e": np.zeros((0, 4), dtype=np.int16),
           "m": np.arange(24, dtype=np.float64).reshape(2, 3, 4)[:, ::2, ::-1],
           "f16": np.array([1.5, -2.0], dtype=np.float16),
           "nested": [{"deep": [[b"x", np.array([True, False])]]}]}
    (out,) = decode(encode([rec], fmt))
    assert same(rec, out, fmt)


def test_msgpack_arrays_are_little_endian_read_only_views():
    big = np.arange(5, dtype=">i4")
    (out,) = decode(encode([{"a": big}], "msgpack"))
    assert out["a"].dtype == np.dtype("<i4")
    assert out["a"].tolist() == [0, 1, 2, 3, 4]
    assert not out["a"].flags.writeable
    assert np.array_equal(ndarray.decode_ndarray(ndarray.encode_ndarray(big).data), big)


@pytest.mark.parametrize("fmt", FORMATS)
def test_numpy_scalars_become_python_scalars(fmt):
    (out,) = decode(encode([{"i": np.int64(7), "f": np.float32(0.5), "b": np.bool_(True)}], fmt))
    assert out == {"i": 7, "f": 0.5, "b": True}
    assert type(out["i"]) is int and type(out["f"]) is float and type(out["b"]) is bool


def test_reader_accepts_unpeekable_seekable_input():
    # io.BytesIO has no peek(): the format must still be sniffed, not taken for "empty"
    for fmt in FORMATS:
        data = encode([{"x": 1}], fmt)
        reader = RecordReader(io.BytesIO(data), "in")
        assert list(reader) == [{"x": 1}]
        assert reader.fmt == fmt


def test_unknown_ext_types_stay_opaque():
    data = (HEADER + msgpack.packb({"x": msgpack.ExtType(42, b"abc")})
            + msgpack.packb({"kind": "eos", "count": 1}))
    assert decode(data) == [{"x": msgpack.ExtType(42, b"abc")}]


def test_newer_minor_version_and_unknown_keys_are_read():
    head = msgpack.packb({"kind": "header", "format": "memstack", "v": [1, 9], "new": 1})
    data = head + msgpack.packb({"v": 1, "kind": "memory", "future": [1]}) + msgpack.packb(
        {"kind": "eos", "count": 1})
    assert decode(data) == [{"v": 1, "kind": "memory", "future": [1]}]


# -- object dtype: no pickle anywhere ---------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_object_arrays_are_refused_and_the_stream_stays_valid(fmt):
    buf = io.BytesIO()
    writer = RecordWriter(buf, fmt)
    writer.write({"ok": 1})
    with pytest.raises(TypeError):
        writer.write({"bad": np.array([{"a": 1}, None], dtype=object)})
    writer.write({"ok": 2})
    writer.close()
    assert decode(buf.getvalue()) == [{"ok": 1}, {"ok": 2}]


def test_object_dtype_in_input_is_refused():
    head = msgpack.packb(["|O", [1]])
    ext = msgpack.ExtType(ndarray.NDARRAY_EXT, struct.pack("<I", len(head)) + head + b"\0" * 8)
    data = HEADER + msgpack.packb({"a": ext}) + msgpack.packb({"kind": "eos", "count": 1})
    err = read_error(data)
    assert err.where == f"byte {len(HEADER)}"
    line = json.dumps({"a": {"$ndarray": {"dtype": "|O", "shape": [1], "data": "AAAAAAAAAAA="}}})
    jsonl = encode([], "jsonl").split(b"\n")[0] + b"\n" + line.encode() + b"\n"
    assert read_error(jsonl).where.startswith("line 2")


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40), head=st.sampled_from([
    None, ["<f4", [2]], ["|O", [1]], [1, 2], ["<f4", 3], ["zz", [1]], [{"a": 1}, [1]],
    [[["a", "O"]], [1]], ["<f4", [-1]], ["V0", [3]], ["<f4", [2**40, 2**40]], "x"]))
def test_garbage_ndarray_ext_gives_input_error_or_an_array(payload, head):
    if head is not None:
        packed = msgpack.packb(head)
        payload = struct.pack("<I", len(packed)) + packed + payload
    data = (HEADER + msgpack.packb({"a": msgpack.ExtType(ndarray.NDARRAY_EXT, payload)})
            + msgpack.packb({"kind": "eos", "count": 1}))
    try:
        (out,) = decode(data)
    except InputError as err:
        assert err.where == f"byte {len(HEADER)}"
    else:
        assert isinstance(out["a"], np.ndarray) and not out["a"].dtype.hasobject


# -- truncation and corruption ------------------------------------------------------------------
SAMPLE = [{"kind": "memory", "text": "héllo 😀", "vec": np.arange(6, dtype=np.float32)},
          {"kind": "memory", "text": "second", "b": b"\x00\x01", "n": None},
          {"kind": "memory", "text": "third", "f": [1.5, -2]}]


def test_every_msgpack_prefix_is_refused():
    data = encode(SAMPLE, "msgpack")
    assert len(decode(data)) == len(SAMPLE)  # sanity: the full stream reads
    for cut in range(len(data)):
        with pytest.raises(InputError) as info:
            decode(data[:cut])
        where = info.value.where
        assert re.fullmatch(r"byte \d+", where), where
        assert int(where.split()[1]) <= cut


def test_every_jsonl_prefix_is_refused_or_complete():
    data = encode(SAMPLE, "jsonl")
    full = decode(data)
    assert len(full) == len(SAMPLE)
    for cut in range(len(data)):
        try:
            out = decode(data[:cut])
        except InputError as err:
            assert re.match(r"(line|byte) \d+", err.where), err.where
        else:  # only the final newline may go missing
            assert cut == len(data) - 1
            assert all(same(a, b, "jsonl") for a, b in zip(SAMPLE, out, strict=True))


def test_truncation_at_a_record_boundary_names_the_end():
    data = encode(SAMPLE, "msgpack")
    trailer = len(msgpack.packb({"kind": "eos", "count": 3}))
    err = read_error(data[:-trailer])
    assert err.where == f"byte {len(data) - trailer}"
    assert "truncated" in err.detail and "trailer" in err.detail


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flipped_bytes_give_input_error_or_records(data):
    raw = bytearray(encode(SAMPLE, "msgpack"))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    try:
        out = decode(bytes(raw))
    except InputError as err:  # a flipped first byte can make it sniff as JSONL
        assert re.match(r"(byte|line) \d+", err.where), err.where
    else:
        assert len(out) == len(SAMPLE)


def offsets(records: list[dict]) -> list[int]:
    """Byte offset of each record after the header."""
    pos, out = len(HEADER), []
    for rec in records:
        out.append(pos)
        pos += len(msgpack.packb(rec, default=ndarray.default, use_bin_type=True))
    return out


def test_garbled_byte_names_the_record_offset():
    recs = [{"a": 1}, {"b": 2}]
    data = bytearray(HEADER + b"".join(msgpack.packb(r) for r in recs)
                     + msgpack.packb({"kind": "eos", "count": 2}))
    second = offsets(recs)[1]
    data[second] = 0xC1  # never used by msgpack
    err = read_error(bytes(data))
    assert err.where == f"byte {second}"
    assert "garbled msgpack" in err.detail and "()" not in err.detail


def test_deep_nesting_is_an_input_error():
    err = read_error(HEADER + b"\x91" * 100000 + b"\x80")
    assert err.where == f"byte {len(HEADER)}" and "()" not in err.detail
    head = encode([], "jsonl").split(b"\n")[0] + b"\n"
    err = read_error(head + b"[" * 100000 + b"]" * 100000 + b"\n")
    assert err.where == "line 2"


def test_invalid_utf8_inside_a_msgpack_string():
    bad = b"\x81" + msgpack.packb("text") + b"\xa3ok\xff"
    data = HEADER + msgpack.packb({"a": 1}) + bad + msgpack.packb({"kind": "eos", "count": 2})
    err = read_error(data)
    assert err.where == f"byte {len(HEADER) + len(msgpack.packb({'a': 1}))}"
    assert "UTF-8" in err.detail


def test_newer_version_is_refused_naming_it():
    recs = [{"v": 1, "kind": "memory"}, {"v": 2, "kind": "memory"}]
    data = HEADER + b"".join(msgpack.packb(r) for r in recs) + msgpack.packb(
        {"kind": "eos", "count": 2})
    err = read_error(data)
    assert err.where == f"byte {offsets(recs)[1]}"
    assert "version 2" in err.detail and "upgrade" in err.detail
    newer_head = msgpack.packb({"kind": "header", "format": "memstack", "v": [2, 0]})
    err = read_error(newer_head + msgpack.packb({"kind": "eos", "count": 0}))
    assert err.where == "byte 0" and "version 2" in err.detail


def test_missing_header():
    data = msgpack.packb({"kind": "memory"}) + msgpack.packb({"kind": "eos", "count": 1})
    err = read_error(data)
    assert err.where == "byte 0" and "header" in err.detail


def test_second_header_and_non_map_records():
    err = read_error(HEADER + HEADER + msgpack.packb({"kind": "eos", "count": 0}))
    assert err.where == f"byte {len(HEADER)}" and "header" in err.detail
    err = read_error(HEADER + msgpack.packb([1, 2]) + msgpack.packb({"kind": "eos", "count": 1}))
    assert err.where == f"byte {len(HEADER)}" and "map" in err.detail


@pytest.mark.parametrize("fmt", FORMATS)
def test_data_after_the_trailer(fmt):
    data = encode([{"a": 1}], fmt)
    extra = msgpack.packb({"a": 2}) if fmt == "msgpack" else b'{"a":2}\n'
    err = read_error(data + extra)
    assert err.where == (f"byte {len(data)}" if fmt == "msgpack" else "line 4")
    assert "after the end-of-stream trailer" in err.detail


@pytest.mark.parametrize("count", [0, 2, "1", None])
def test_wrong_trailer_count(count):
    body = HEADER + msgpack.packb({"a": 1})
    err = read_error(body + msgpack.packb({"kind": "eos", "count": count}))
    assert err.where == f"byte {len(body)}"
    assert "trailer counts" in err.detail and "held 1" in err.detail


@pytest.mark.parametrize("make", [lambda d: io.BufferedReader(io.BytesIO(d)), io.BytesIO])
def test_empty_input(make):
    with pytest.raises(InputError) as info:
        list(read_records(make(b""), "in.bin"))
    assert info.value.where == "byte 0" and "empty input" in info.value.detail


def test_jsonl_malformed_line_names_line_and_column():
    data = encode([{"a": 1}, {"b": 2}], "jsonl").split(b"\n")
    data[2] = b'{"b": tru}'
    err = read_error(b"\n".join(data))
    assert err.where == "line 3, column 7"
    assert "malformed JSON" in err.detail


def test_jsonl_invalid_utf8_names_line_and_byte():
    lines = encode([{"a": "x"}, {"b": "y"}], "jsonl").split(b"\n")
    lines[2] = b'{"b": "\xff"}'
    data = b"\n".join(lines)
    err = read_error(data)
    bad_at = data.index(b"\xff")
    assert err.where == f"line 3 (byte {bad_at})"
    assert "UTF-8" in err.detail


def test_jsonl_blank_lines_are_ignored():
    data = encode([{"a": 1}], "jsonl").replace(b"\n", b"\n\n  \n")
    assert decode(data) == [{"a": 1}]


# -- times ----------------------------------------------------------------------------------
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FIRST, LAST = -62135596800, 253402300799  # 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z


@settings(max_examples=500, deadline=None)
@given(st.integers(FIRST, LAST))
def test_iso_round_trip_seconds(ts):
    iso = to_iso(ts)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", iso), iso
    assert iso == (EPOCH + timedelta(seconds=ts)).isoformat().replace("+00:00", "Z")
    assert from_iso(iso) == ts
    assert to_iso(from_iso(iso)) == iso


@settings(max_examples=200, deadline=None)
@given(st.floats(FIRST, LAST - 1, allow_nan=False))
def test_iso_truncates_fractions_to_the_second(ts):
    assert from_iso(to_iso(ts)) == math.floor(ts)


def test_from_iso_other_forms():
    assert from_iso(None) is None and to_iso(None) is None
    assert from_iso("2024-05-01T12:00:00+02:00") == from_iso("2024-05-01T10:00:00Z")
    assert from_iso("2024-05-01T10:00:00.5Z") == from_iso("2024-05-01T10:00:00Z") + 0.5
    assert from_iso("1970-01-01T00:00:00Z") == 0.0
    for bad in ("yesterday", "2024-13-01T00:00:00Z", "2024-05-01Tab:00:00Z"):
        with pytest.raises(ValueError):
            from_iso(bad)


# -- ids and record checks --------------------------------------------------------------------
def test_memory_id_is_pinned():
    # a change here changes every stored id: re-ingest would no longer be a no-op
    assert memory_id("default", "Hello  World", "a.txt##0") == "e168bfe480d891c9c49c5de62ce539b5"
    rec = memory_record(ns="user:alice", text="Alice is allergic to peanuts.", tokens=7,
                        t_event="2024-01-02T03:04:05Z", t_ingest="2024-01-03T00:00:00Z",
                        source={"uri": "/data/chats/a.jsonl", "session": "s1", "offset": 3})
    assert rec["id"] == memory_id("user:alice", "alice is ALLERGIC to\tpeanuts.", "a.jsonl#s1#3")
    assert list(rec) == ["v", "kind", "id", "ns", "text", "tokens", "t_event", "t_ingest",
                         "valid_from", "valid_to", "source", "level", "links", "meta"]
    assert rec["valid_from"] == rec["t_event"] and rec["valid_to"] is None
    assert check_memory(rec) is None


WORDS = st.lists(st.text("abcdefghijklmnopqrstuvwxyzé猫😀0123456789.,", min_size=1, max_size=8),
                 min_size=1, max_size=8)
SPACES = st.lists(st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\u2003", "\u00a0"]),
                  min_size=8, max_size=8)


@settings(max_examples=200, deadline=None)
@given(words=WORDS, gaps=SPACES, ns=st.text(max_size=5), pos=st.text(max_size=5))
def test_memory_id_ignores_whitespace_and_case(words, gaps, ns, pos):
    plain = " ".join(words)
    spaced = gaps[0] + "".join(w + g for w, g in zip(words, gaps[1:] + [""] * 8, strict=False))
    assert normalise_text(spaced) == normalise_text(plain)
    assert memory_id(ns, spaced.upper(), pos) == memory_id(ns, plain, pos)


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=20), a=st.text(max_size=5), b=st.text(max_size=5))
def test_memory_id_separates_namespaces_and_positions(text, a, b):
    if a != b:
        assert memory_id(a, text, "p") != memory_id(b, text, "p")
        assert memory_id("ns", text, a) != memory_id("ns", text, b)


def test_memory_id_depends_on_source_file_not_directory():
    def rid(uri, offset=1, session=None):
        src = {"uri": uri, "offset": offset, **({"session": session} if session else {})}
        return memory_record(ns="n", text="t", tokens=1, t_event=None, t_ingest="x",
                             source=src)["id"]

    assert rid("/a/chat.jsonl") == rid("/b/c/chat.jsonl") == rid("chat.jsonl")
    assert rid("chat.jsonl") != rid("other.jsonl")
    assert rid("chat.jsonl", 1) != rid("chat.jsonl", 2)
    assert rid("chat.jsonl", session="s1") != rid("chat.jsonl", session="s2")
    assert rid("https://x.org/a/chat.jsonl") != rid("https://y.org/a/chat.jsonl")


def test_check_version_and_check_memory():
    assert check_version({"kind": "memory"}) is None
    assert check_version({"v": [1, 7]}) is None
    assert "version 3" in check_version({"v": [3, 0]})
    assert "bad version" in check_version({"v": "one"})
    assert "expected a map" in check_version([1])
    good = memory_record(ns="n", text="t", tokens=1, t_event=None, t_ingest="2024-01-01T00:00:00Z",
                         source={})
    assert check_memory(good) is None
    assert "'text'" in check_memory({**good, "text": None})
    assert "level" in check_memory({**good, "level": "paragraph"})
    assert "t_event" in check_memory({**good, "t_event": "soon"})
