"""Synthetic chat turns for throughput and latency benchmarks.

Words are drawn from the LoCoMo sample's own turns with their real frequencies (so the
vocabulary and its Zipf tail look like chat), ~30 tokens a turn, deterministic per seed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
LOCOMO = os.path.join(HERE, "..", "..", "shared", "data", "locomo-sample.json")
SPEAKERS = ["Caroline", "Melanie", "Alice", "Bob", "Dana", "Eli", "Farah", "Gus"]


def vocabulary(path: str = LOCOMO) -> tuple[list[str], np.ndarray]:
    with open(path, encoding="utf-8") as fp:
        data = json.load(fp)
    words: Counter = Counter()
    for sample in data:
        for key, turns in sample["conversation"].items():
            if re.fullmatch(r"session_\d+", key):
                for t in turns:
                    words.update(re.findall(r"[A-Za-z']+", t["text"]))
    vocab = sorted(words)
    freq = np.array([words[w] for w in vocab], dtype=np.float64)
    # extend the tail with rare made-up names/terms, as real stores accumulate them
    rng = np.random.default_rng(1)
    extra = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(4, 10)))
             for _ in range(20000)]
    vocab += extra
    freq = np.concatenate([freq, np.full(len(extra), 0.05 * freq.sum() / len(extra))])
    return vocab, freq / freq.sum()


def turns(n: int, seed: int = 0, words_per_turn: int = 22) -> list[dict]:
    """n chat turns as {speaker, text, time, session} dicts."""
    vocab, p = vocabulary()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(vocab), size=(n, words_per_turn), p=p)
    varr = np.array(vocab, dtype=object)
    out = []
    base = 1_600_000_000
    for i in range(n):
        text = " ".join(varr[idx[i]]).capitalize() + "."
        out.append({"speaker": SPEAKERS[i % 2 + 2 * ((i // 400) % 4)], "text": text,
                    "time": base + i * 60, "session": f"s{i // 400}"})
    return out


def write_jsonl(path: str, n: int, seed: int = 0) -> None:
    with open(path, "w", encoding="utf-8") as fp:
        for t in turns(n, seed):
            fp.write(json.dumps(t) + "\n")


if __name__ == "__main__":
    write_jsonl(sys.argv[1], int(sys.argv[2]))
