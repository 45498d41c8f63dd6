"""Shared helpers for the CLI tests: run the real `memstack` command, decode its streams.

The stream decoder here is written against DESIGN.md (header map, records, `eos` trailer,
ndarray ext type 1 = u32 header length, msgpack [dtype.str, shape], raw bytes) rather than
reusing memstack's own reader, so a writer bug cannot hide behind a matching reader bug.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

REPO = str(Path(__file__).resolve().parent.parent)
LOCOMO = os.path.join(REPO, "..", "shared", "data", "locomo-sample.json")
MAP_SIZE = "1048576"  # 1 MiB: every store in these tests has to grow its map
SOURCE_DATE_EPOCH = "1700000000"
MEMSTACK = [sys.executable, "-m", "memstack"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a memstack subprocess: small map, pinned ingest time, no
    stray default store."""
    env = dict(os.environ)
    for key in ("MEMSTACK_STORE", "MEMSTACK_LOAD_PLUGINS"):
        env.pop(key, None)
    env["MEMSTACK_MAP_SIZE"] = MAP_SIZE
    env["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run(*args: Any, input: bytes | None = None, cwd: Any = None, env: dict | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m memstack ARGS...`; stdout and stderr come back as bytes."""
    return subprocess.run(MEMSTACK + [str(a) for a in args], input=input, cwd=cwd,
                          env=env or cli_env(), capture_output=True, timeout=timeout)


def _default_sigint() -> None:
    """A shell that started the test run in the background ignores SIGINT, and children
    inherit that; Ctrl-C tests need the default disposition back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(*args: Any, env: dict | None = None, **kw) -> subprocess.Popen:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("preexec_fn", _default_sigint)
    return subprocess.Popen(MEMSTACK + [str(a) for a in args], env=env or cli_env(), **kw)


def invoke(*args: Any, input: bytes | None = None, env: dict | None = None):
    """Run the click app in this process (CliRunner; stdout and stderr kept apart).

    Cheaper than a subprocess; used where process-level behaviour (exit codes set by the
    console entry point, signals, pipes) is not what a test is about."""
    from click.testing import CliRunner

    from memstack.cli.main import cli

    base: dict[str, str | None] = {"MEMSTACK_MAP_SIZE": MAP_SIZE,
                                   "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
                                   "MEMSTACK_STORE": None}
    base.update(env or {})
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=base,
                              catch_exceptions=False)


def ok(proc):
    """Assert success (a CompletedProcess or a CliRunner Result); return it."""
    code = getattr(proc, "returncode", getattr(proc, "exit_code", None))
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
    assert code == 0, (code, err)
    assert "Traceback" not in err, err
    return proc


def out_bytes(proc) -> bytes:
    return proc.stdout_bytes if hasattr(proc, "stdout_bytes") else proc.stdout


def error_line(proc: subprocess.CompletedProcess, code: int = 1, *needles: str) -> str:
    """Assert the documented failure shape: exit `code`, exactly one stderr line that
    starts with 'memstack: error:' and contains every needle; return that line."""
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("memstack: error:"), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def summary(proc: subprocess.CompletedProcess) -> str:
    """The final `ingest:`/`import:` summary line on stderr."""
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.startswith(("ingest:", "import:"))]
    assert lines, err
    return lines[-1]


# -- streams ---------------------------------------------------------------------------
def _ext_hook(code: int, data: bytes):
    assert code == 1, f"unknown ext type {code}"
    (hlen,) = struct.unpack_from("<I", data)
    dtype, shape = msgpack.unpackb(data[4 : 4 + hlen])
    return np.frombuffer(data[4 + hlen :], dtype=np.dtype(dtype)).reshape(shape)


def _json_hook(obj: dict):
    if len(obj) == 1 and "$ndarray" in obj:
        spec = obj["$ndarray"]
        arr = np.frombuffer(base64.b64decode(spec["data"]), dtype=np.dtype(spec["dtype"]))
        return arr.reshape(spec["shape"])
    return obj


def _check_frame(objs: list[dict]) -> tuple[dict, list[dict]]:
    assert len(objs) >= 2, f"a stream needs a header and a trailer, got {objs!r}"
    head, *body, tail = objs
    assert head.get("kind") == "header" and head.get("format") == "memstack", head
    assert list(head.get("v", []))[:1] == [1], head
    assert tail.get("kind") == "eos", tail
    assert tail.get("count") == len(body), (tail, len(body))
    assert all(r.get("kind") not in ("header", "eos") for r in body)
    return head, body


def decode_msgpack(data: bytes) -> tuple[dict, list[dict]]:
    """(header, records) of a framed msgpack stream; asserts the framing."""
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, ext_hook=_ext_hook,
                                strict_map_key=False, max_buffer_size=1 << 30)
    objs = list(unpacker)
    assert unpacker.tell() == len(data), "trailing bytes after the stream"
    return _check_frame(objs)


def decode_jsonl(data: bytes) -> tuple[dict, list[dict]]:
    """(header, records) of a framed JSON Lines stream; every line must be JSON."""
    objs = [json.loads(line, object_hook=_json_hook)
            for line in data.decode("utf-8").splitlines() if line.strip()]
    return _check_frame(objs)


def decode_any(data: bytes) -> tuple[dict, list[dict]]:
    return decode_jsonl(data) if data[:1] == b"{" else decode_msgpack(data)


# -- store inspection ----------------------------------------------------------------------
# In-process and read-only (a subprocess per look would dominate the run time); each call
# opens and closes the environment, so no LMDB handle outlives it or crosses a fork.
def export_records(store: Any, vectors: bool = False) -> list[dict]:
    """Every memory of a store in docno order (with its vector under "vec" if asked)."""
    from memstack.core.store import LmdbStore

    with LmdbStore(str(store)) as st:
        out = []
        for _, rec, vec in st.iter_records():
            if vectors:
                rec["vec"] = vec
            out.append(rec)
        return out


def store_stats(store: Any) -> dict:
    from memstack.core.admin import stats
    from memstack.core.store import LmdbStore

    with LmdbStore(str(store)) as st:
        return stats(st)


def store_problems(store: Any) -> list[str]:
    from memstack.core.admin import verify
    from memstack.core.store import LmdbStore

    with LmdbStore(str(store)) as st:
        return verify(st)


def fingerprint(store: Any) -> list[tuple]:
    """What 'the store is unchanged' compares: ids, namespaces and texts in order."""
    return [(r["id"], r["ns"], r["text"]) for r in export_records(store)]


def verify(store: Any, env: dict | None = None) -> subprocess.CompletedProcess:
    """`memstack store verify` as a command."""
    return run("store", "verify", "--store", store, env=env)


# -- inputs ----------------------------------------------------------------------------------
WORDS = ("alpha beta gamma delta river mountain coffee tea garden paint music guitar city "
         "train ocean forest book lamp window cloud pepper violin harbour meadow").split()


def chat_line(i: int, rng: random.Random, words: int = 12) -> str:
    text = f"turn {i}: " + " ".join(rng.choice(WORDS) for _ in range(words))
    return json.dumps({"role": "user" if i % 2 else "assistant", "content": text,
                       "session": f"s{i // 50}"})


def write_chat(path: Path, n: int, seed: int = 0) -> Path:
    """n OpenAI-style chat turns, all distinct (their text carries the turn number)."""
    rng = random.Random(seed)
    path.write_text("".join(chat_line(i, rng) + "\n" for i in range(n)), encoding="utf-8")
    return path


def write_big_chat(path: Path, min_bytes: int, seed: int = 0) -> int:
    """A chat JSONL of at least min_bytes; returns its number of (distinct) lines."""
    rng = random.Random(seed)
    n = 0
    size = 0
    with open(path, "w", encoding="utf-8") as fp:
        while size < min_bytes:
            line = chat_line(n, rng) + "\n"
            fp.write(line)
            size += len(line.encode())
            n += 1
    return n
