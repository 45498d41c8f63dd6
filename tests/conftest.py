"""Shared fixtures: a tiny LMDB map so the growth path runs, and the CLI as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY_MAP = 65536


def memstack_cmd() -> list[str]:
    """The installed console script next to this interpreter, else `python -m memstack`."""
    script = Path(sys.executable).with_name("memstack")
    return [str(script)] if script.exists() else [sys.executable, "-m", "memstack"]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: tiny map, pinned clock, no inherited store."""
    env = {k: v for k, v in os.environ.items() if k != "MEMSTACK_STORE"}
    env.update(MEMSTACK_MAP_SIZE=str(TINY_MAP), SOURCE_DATE_EPOCH="1700000000",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def write_chat_jsonl(path: Path, n: int, start: int = 0) -> Path:
    """n short chat turns, one per line, each a distinct memory."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"speaker": f"user{i % 5}",
                                "text": f"turn {i} mentions item{i % 97} and city{i % 13}",
                                "time": 1700000000 + i}) + "\n")
    return path


@pytest.fixture
def tiny_map(monkeypatch: pytest.MonkeyPatch) -> int:
    """Start every store opened in this process with a 64 KiB map."""
    monkeypatch.setenv("MEMSTACK_MAP_SIZE", str(TINY_MAP))
    monkeypatch.delenv("MEMSTACK_STORE", raising=False)
    return TINY_MAP


@pytest.fixture
def run_memstack():
    """Run `memstack ARGS...` to completion; returns the CompletedProcess (bytes)."""

    def run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", subprocess_env())
        return subprocess.run([*memstack_cmd(), *args], capture_output=True, timeout=timeout,
                              **kw)

    return run
