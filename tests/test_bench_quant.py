"""`memstack bench quantize`: records parse, bits per weight are exact, GGML bytes match gguf.

Speeds are not asserted (the machine is shared); only that they are positive numbers.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import memstack_cmd, subprocess_env


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*memstack_cmd(), "bench", "quantize", *args], capture_output=True,
                          text=True, env=subprocess_env(), timeout=300)


def test_bench_quantize_jsonl_records():
    res = _bench("--size", "256", "--schemes", "q4_0,nf4", "--repeats", "1",
                 "--format", "jsonl")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    recs = [r for r in lines if r.get("kind") == "bench"]
    assert lines[-1]["kind"] == "eos" and lines[-1]["count"] == len(recs)
    got = {(r["scheme"], r["matrix"], r["metric"]): r["value"] for r in recs}
    assert {r["bench"] for r in recs} == {"quantize"}
    assert {(s, m) for s, m, _ in got} == {(s, m) for s in ("q4_0", "nf4")
                                           for m in ("plain", "outlier")}
    for matrix in ("plain", "outlier"):
        # Q4_0: 2-byte scale + 16 bytes per 32 weights; NF4: 4 bits + a float32 absmax per 64
        assert got[("q4_0", matrix, "bpw")] == pytest.approx(4.5)
        assert got[("nf4", matrix, "bpw")] == pytest.approx(4.5)
        for scheme in ("q4_0", "nf4"):
            assert got[(scheme, matrix, "mb_per_s")] > 0
            assert 10 < got[(scheme, matrix, "snr_db")] < 40
            assert 0.9 < got[(scheme, matrix, "cosine")] <= 1.0
            assert got[(scheme, matrix, "rmse")] > 0
        assert got[("q4_0", matrix, "mb_per_s_1t")] > 0
        assert ("nf4", matrix, "identical_bytes") not in got  # no reference outside GGML
    # the outlier matrix is harder for a scheme with no outlier handling
    assert got[("q4_0", "outlier", "snr_db")] < got[("q4_0", "plain", "snr_db")]
    try:
        import gguf  # noqa: F401
    except ImportError:
        return
    for matrix in ("plain", "outlier"):
        assert got[("q4_0", matrix, "identical_bytes")] == 1.0
        assert got[("q4_0", matrix, "gguf_mb_per_s")] > 0
        assert got[("q4_0", matrix, "ratio_vs_gguf")] > 0


def test_bench_quantize_refuses_bad_input():
    res = _bench("--size", "256", "--schemes", "q4_0,nosuch", "--format", "jsonl")
    assert res.returncode != 0 and "nosuch" in res.stderr and res.stdout == ""
    res = _bench("--size", "200", "--schemes", "q4_0", "--format", "jsonl")
    assert res.returncode != 0 and "multiple" in res.stderr and res.stdout == ""
