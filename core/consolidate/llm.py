"""`--llm gguf:PATH`: a local model for the cases the deterministic rules leave ambiguous.

Offline only, through ctransformers 0.2.27 (the `[llm]` extra). Every answer is valid by
construction or it is dropped, so a bad or tiny model can cost budget but never corrupt a run:

- classification (duplicate? which relation?) does not generate: each allowed JSON answer is
  scored by its log-likelihood under the model given the prompt, and the best one wins, with
  confidence = softmax over the options;
- free text (summaries, facts) is generated greedily, the first JSON value is parsed and checked
  against a strict schema, and after 2 nudged retries the answer is None (counted in `invalid`).

A budget of calls and tokens bounds the cost of a run; once spent, methods return None and the
caller falls back to the deterministic path. Answers are cached by BLAKE2b(model bytes hash,
task, prompt), so a re-run pays nothing for questions it already asked (cache hits are served
even when the budget is spent: they cost nothing and keep re-runs reproducible).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import math
import mmap
import os
import re
import time
from collections.abc import MutableMapping
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from memstack.core.embed_gguf import (
    _ARRAY,
    _STRING,
    _cpu_lib,
    _Header,
    file_sha256,
    read_gguf_info,
)
from memstack.core.errors import ConfigError, MemstackError

INSTALL_HINT = "--llm gguf needs ctransformers: pip install 'memstack[llm]'"
PROMPT_VERSION = "memstack-llm-v1"  # part of every cache key: bump when prompts or schemas change
DEFAULT_CTX = 2048  # context we ask for: enough for every prompt here, modest KV-cache memory
MAX_BATCH = 512  # ctransformers 0.2.27 builds llama contexts with n_batch = 512
RETRIES = 2  # extra attempts for free text after an invalid answer
START_WITHIN = 48  # generated tokens without a "{" or "[" before an attempt is given up
CLIP_SCHEDULE = (1500, 600, 250, 100, 40)  # characters kept per input text, tried in order
MAX_PARSE_CHARS = 20_000
MAX_FIELD_CHARS = 200
MAX_FACTS = 16
WORD_SLACK = 1.25  # a summary may overshoot max_words by this factor before it is refused
RELATIONS = ("supersedes", "contradicts", "compatible", "duplicate")

SYSTEM = "You curate a long-term memory store. Reply with JSON only."
NUDGE = ("\nYour previous reply was not valid JSON in the required form. Reply with the JSON "
         "only, nothing before or after it.")
# chat markers that models map to single (control) tokens; user text never carries them
MARKERS = ("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<|system|>", "<|user|>",
           "<|assistant|>", "<|end|>", "</s>", "[INST]", "[/INST]")
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "[INST]")
_MARKER_RE = re.compile("|".join(map(re.escape, MARKERS)))
_JSON_START = re.compile(r"[\[{]")
_NON_SLUG = re.compile(r"[^0-9a-z]+")
_FIRST_PERSON = {"i", "me", "myself"}


class LlmUnavailable(MemstackError):
    """The --llm model cannot be used: bad spec, missing or unloadable file, no ctransformers."""


# -- JSON parsing and validation (pure: tested directly, never raise) -----------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_json(text: Any) -> dict | list | None:
    """The first JSON object or array in `text` (models wrap JSON in prose or code fences)."""
    if not isinstance(text, str):
        return None
    text = text[:MAX_PARSE_CHARS]
    for m in islice(_JSON_START.finditer(text), 32):
        try:
            value, _ = _DECODER.raw_decode(text, m.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(value, (dict, list)):
            return value
    return None


def _field(value: Any) -> str | None:
    """A one-line string of 1..MAX_FIELD_CHARS characters, or None."""
    if not isinstance(value, str):
        return None
    value = " ".join(value.split())
    return value if 0 < len(value) <= MAX_FIELD_CHARS else None


def validate_summary(value: Any, max_words: int) -> str | None:
    """`{"summary": str}` with 1..max_words words (some slack); the text, whitespace collapsed."""
    if not isinstance(value, dict) or not isinstance(value.get("summary"), str):
        return None
    words = value["summary"].split()
    if not words or len(words) > math.ceil(max_words * WORD_SLACK):
        return None
    text = " ".join(words)
    return text if len(text) <= 16 * max(max_words, 1) else None


def validate_facts(value: Any, speaker: str | None = None) -> list[dict] | None:
    """A list (or `{"facts": list}`) of subject/relation/value strings; extra keys dropped.

    Relations become snake_case slot names; a first-person subject becomes the speaker. One
    malformed item refuses the whole answer: a model that got the schema wrong once is not
    trusted for the rest. At most MAX_FACTS are kept, duplicates removed.
    """
    if isinstance(value, dict) and set(value) == {"facts"}:
        value = value["facts"]
    if not isinstance(value, list):
        return None
    facts: list[dict] = []
    for item in value:
        if not isinstance(item, dict):
            return None
        subject, relation, val = (_field(item.get(k)) for k in ("subject", "relation", "value"))
        if subject is None or relation is None or val is None:
            return None
        relation = _NON_SLUG.sub("_", relation.casefold()).strip("_")
        if not relation:
            return None
        if speaker and subject.casefold() in _FIRST_PERSON:
            subject = speaker
        fact = {"subject": subject, "relation": relation, "value": val}
        if fact not in facts:
            facts.append(fact)
    return facts[:MAX_FACTS]


def _valid_choice(value: Any, key: str, allowed: tuple) -> dict | None:
    """A cached classification answer, re-checked (a cache may be shared or damaged)."""
    if not isinstance(value, dict) or set(value) != {key, "confidence"}:
        return None
    conf = value["confidence"]
    if value[key] not in allowed or type(value[key]) is not type(allowed[0]):
        return None
    if not isinstance(conf, float) or not 0.0 <= conf <= 1.0:
        return None
    return value


class _JsonEnd:
    """Watches generated bytes and says when the first JSON object/array has closed."""

    def __init__(self) -> None:
        self.depth, self.started, self.in_str, self.escape = 0, False, False, False

    def feed(self, data: bytes) -> bool:
        for c in data:  # structural JSON bytes are ASCII; UTF-8 multibyte never matches them
            if not self.started:
                if c in b"{[":
                    self.started, self.depth = True, 1
                continue
            if self.in_str:
                if self.escape:
                    self.escape = False
                elif c == 0x5C:  # backslash
                    self.escape = True
                elif c == 0x22:
                    self.in_str = False
            elif c == 0x22:
                self.in_str = True
            elif c in b"{[":
                self.depth += 1
            elif c in b"}]":
                self.depth -= 1
                if self.depth == 0:
                    return True
        return False


# -- prompts ---------------------------------------------------------------------------------
def _clean(text: str, limit: int) -> str:
    """One line of user text, without chat markers, cut to `limit` characters."""
    text = " ".join(_MARKER_RE.sub(" ", str(text)).replace("\x00", " ").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def template_family(template: str | None) -> str:
    """Which chat format a GGUF `tokenizer.chat_template` (Jinja) describes, by its markers.

    Rendering the Jinja itself would need jinja2 and runs code from the file; the handful of
    formats llama-architecture models use are told apart by their marker strings instead.
    """
    t = template or ""
    for marker, family in (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3"),
                           ("<start_of_turn>", "gemma"), ("[INST]", "inst"),
                           ("<|user|>", "zephyr")):
        if marker in t:
            return "inst-sys" if family == "inst" and "<<SYS>>" in t else (
                "phi3" if family == "zephyr" and "<|end|>" in t else family)
    return "plain"


def render(family: str, user: str, system: str = SYSTEM) -> str:
    """The prompt text up to where the assistant's answer starts (BOS is added by tokenizing)."""
    if family == "chatml":
        return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                "<|im_start|>assistant\n")
    if family == "llama3":
        return (f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
                f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    if family == "gemma":
        return f"<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n"
    if family == "inst-sys":
        return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
    if family == "inst":
        return f"[INST] {system}\n\n{user} [/INST]"
    if family == "phi3":
        return f"<|system|>\n{system}<|end|>\n<|user|>\n{user}<|end|>\n<|assistant|>\n"
    if family == "zephyr":
        return f"<|system|>\n{system}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n"
    return f"{system}\n\n### Instruction:\n{user}\n\n### Response:\n"


def _duplicate_prompt(a: str, b: str, clip: int) -> str:
    return ("Do these two memories state the same information, so that one could replace the "
            f"other?\nMemory A: {_clean(a, clip)}\nMemory B: {_clean(b, clip)}\n"
            'Reply {"same": true} or {"same": false}.')


def _conflict_prompt(old: str, new: str, clip: int) -> str:
    return ("Two memories about the same subject, an older one and a newer one.\n"
            f"Older: {_clean(old, clip)}\nNewer: {_clean(new, clip)}\n"
            "How does the newer memory relate to the older one?\n"
            "supersedes: it updates the older fact, which is no longer true;\n"
            "contradicts: they disagree and it is unclear which is right;\n"
            "compatible: both can be true at the same time;\n"
            "duplicate: they say the same thing.\n"
            'Reply {"relation": "supersedes"}, {"relation": "contradicts"}, '
            '{"relation": "compatible"} or {"relation": "duplicate"}.')


def _summary_prompt(texts: list[str], max_words: int, clip: int) -> str:
    lines = "\n".join(f"- {_clean(t, clip)}" for t in texts)
    return (f"Summarize these memories in at most {max_words} words. Keep names, numbers and "
            f"dates; state only what they say.\n{lines}\n"
            'Reply with JSON only: {"summary": "..."}')


def _facts_prompt(text: str, speaker: str | None, clip: int) -> str:
    who = _clean(speaker, 80) if speaker else ""
    head = f"Speaker: {who} (write the speaker's name, not \"I\")\n" if who else ""
    return ("Extract the facts this message states as subject-relation-value triples.\n"
            f"{head}Message: {_clean(text, clip)}\n"
            "Use short snake_case relations such as lives_in, works_at, likes. "
            "Reply [] if it states no facts.\n"
            'Reply with JSON only: [{"subject": "...", "relation": "...", "value": "..."}]')


# -- GGUF metadata the prompts need ----------------------------------------------------------
def read_chat_info(path: str) -> tuple[str | None, dict[str, int]]:
    """The chat template (if any) and the token id of each chat marker that is one token.

    llama.cpp of Sep 2023 does not parse special tokens in text, so "<|im_start|>" would be
    tokenized letter by letter; the ids found here are spliced in instead.
    """
    wanted = {m.encode(): m for m in MARKERS}
    template, ids = None, {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        h = _Header(buf, path)
        h.pos = 4
        len_fmt = "I" if h.take("I") == 1 else "Q"
        h.take(len_fmt)  # tensor count
        for _ in range(h.take(len_fmt)):
            key, vtype = h.string(len_fmt), h.take("I")
            if key == b"tokenizer.chat_template" and vtype == _STRING:
                template = h.string(len_fmt).decode("utf-8", "replace")
                continue
            if key == b"tokenizer.ggml.tokens" and vtype == _ARRAY:
                if h.take("I") == _STRING:
                    for i in range(h.take(len_fmt)):
                        tok = h.string(len_fmt)
                        if tok in wanted:
                            ids[wanted[tok]] = i
                    continue
                h.pos -= 4  # not strings: rewind the item type and skip the array below
            h.value(vtype, len_fmt)
    return template, ids


# -- loading ---------------------------------------------------------------------------------
def _fail(message: str) -> LlmUnavailable:
    return LlmUnavailable(f"--llm: {message}")


def load_llm(spec: str, *, max_calls: int = 200, max_tokens: int = 20000,
             cache: MutableMapping[bytes, bytes] | None = None,
             threads: int | None = None) -> LocalLLM:
    """Load `gguf:PATH` for this run; LlmUnavailable (one line, naming the file) if it can't."""
    kind, sep, raw = (spec or "").partition(":")
    if kind != "gguf" or not sep or not raw.strip():
        raise _fail(f"expected gguf:PATH (a local GGUF model file), got {spec!r}")
    path = Path(raw.strip()).expanduser()
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise _fail(f"model file {raw.strip()} {what}")
    try:
        info = read_gguf_info(str(path))
        template, marker_ids = read_chat_info(str(path))
    except ConfigError as exc:
        raise _fail(str(exc).removeprefix("gguf embedder: ")) from None
    except (OSError, ValueError, MemoryError) as exc:
        raise _fail(f"{path}: cannot read the GGUF header: {exc}") from None
    if importlib.util.find_spec("ctransformers") is None:
        raise LlmUnavailable(INSTALL_HINT)
    try:
        from ctransformers import LLM, Config
    except ImportError:
        raise LlmUnavailable(INSTALL_HINT) from None
    ctx = min(info["context_length"] or DEFAULT_CTX, DEFAULT_CTX)
    threads = threads or min(4, os.cpu_count() or 1)
    config = Config(context_length=ctx, threads=threads, batch_size=min(MAX_BATCH, ctx))
    try:
        model = LLM(str(path), "llama", config=config, lib=_cpu_lib())
    except (RuntimeError, ValueError, OSError) as exc:
        raise _fail(f"cannot load {path}: {exc}") from None
    return LocalLLM(model, str(path), template, marker_ids, max_calls=max_calls,
                    max_tokens=max_tokens, cache=cache, threads=threads)


class LocalLLM:
    """One loaded model with this run's budget, cache and counters (see the module docstring)."""

    def __init__(self, model: Any, path: str, template: str | None, marker_ids: dict[str, int],
                 *, max_calls: int, max_tokens: int,
                 cache: MutableMapping[bytes, bytes] | None, threads: int):
        self._m, self.path, self.threads = model, path, threads
        self.model_hash = file_sha256(path)
        self.model_id = f"gguf:{Path(path).name}@{self.model_hash[:12]}"
        self.family = template_family(template)
        self.ctx = int(model.context_length)
        self.max_calls, self.max_tokens = max_calls, max_tokens
        self.cache = cache
        self.calls = self.cache_hits = self.invalid = self.tokens = self.skipped = 0
        self.seconds = 0.0
        self._spent = False
        self._bos_id = int(model.bos_token_id) if model.model_type == "llama" else None
        rendered = render(self.family, "x")
        self._specials = {m: i for m, i in marker_ids.items() if m in rendered}
        self._split = (re.compile("(" + "|".join(map(re.escape, self._specials)) + ")")
                       if self._specials else None)
        self._stop_ids = {int(model.eos_token_id)}
        self._stop_ids |= {i for m, i in marker_ids.items() if m in END_MARKERS and m in rendered}
        self._stop_text = [m.encode() for m in END_MARKERS if m in rendered]

    # -- accounting ----------------------------------------------------------------------
    def budget_left(self) -> bool:
        """Whether another model call may run (cache hits are free either way)."""
        return not self._spent and self.calls < self.max_calls and self.tokens < self.max_tokens

    def stats(self) -> dict:
        """Counters for the run report."""
        return {"model": self.model_id, "calls": self.calls, "cache_hits": self.cache_hits,
                "invalid": self.invalid, "tokens": self.tokens, "skipped": self.skipped,
                "seconds": round(self.seconds, 3)}

    def _reserve(self, n_tokens: int) -> bool:
        """Take one call and `n_tokens` from the budget, or mark it spent."""
        if not self.budget_left() or self.tokens + n_tokens > self.max_tokens:
            self._spent = True
            return False
        self.calls += 1
        return True

    def _key(self, task: str, prompt: str) -> bytes:
        h = hashlib.blake2b(digest_size=20, person=b"memstack-llm")
        for part in (PROMPT_VERSION, self.model_hash, task, prompt):
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
        return h.digest()

    def _cached(self, key: bytes) -> tuple[bool, Any]:
        raw = self.cache.get(key) if self.cache is not None else None
        if raw is None:
            return False, None
        try:
            return True, json.loads(bytes(raw).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return False, None

    def _store(self, key: bytes, value: Any) -> None:
        if self.cache is not None:
            self.cache[key] = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()

    # -- the model -----------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        """Token ids, BOS first, chat markers as their single ids where the vocab has them."""
        ids = [self._bos_id] if self._bos_id is not None else []
        parts = self._split.split(text) if self._split else [text]
        for i, part in enumerate(parts):
            if i % 2:  # the split pattern captures markers: odd parts are markers
                ids.append(self._specials[part])
            elif part:
                data = part.encode("utf-8", "replace")
                # sized for the worst case: ctransformers' tokenize() overflows on byte fallback
                buf = (ctypes.c_int * (3 * len(data) + 8))()
                n = self._m.ctransformers_llm_tokenize(data, False, buf)
                ids.extend(buf[:n])
        return ids

    def _eval(self, ids: list[int], n_past: int) -> np.ndarray | None:
        """Evaluate `ids` after `n_past` cached positions; log-probabilities of the next token."""
        arr = (ctypes.c_int * len(ids))(*ids)
        if not self._m.ctransformers_llm_batch_eval(arr, len(ids), n_past,
                                                    min(MAX_BATCH, self.ctx), self.threads):
            return None
        n = self._m.ctransformers_llm_logits_size()
        logits = np.ctypeslib.as_array(self._m.ctransformers_llm_logits_data(), shape=(n,))
        logits = logits.astype(np.float64)
        if not np.isfinite(logits).all():
            return None
        top = logits.max()
        return logits - top - math.log(np.exp(logits - top).sum())

    def _fit(self, build: Any, reserve: int) -> tuple[str, list[int]] | None:
        """The longest prompt (by input clipping) that leaves `reserve` tokens of context."""
        for clip in CLIP_SCHEDULE:
            prompt = render(self.family, build(clip))
            ids = self._encode(prompt)
            if len(ids) + reserve <= self.ctx:
                return prompt, ids
        self.skipped += 1
        return None

    def _choose(self, prompt: str, options: list[str]) -> tuple[int, float] | None:
        """Index of the most likely option and its softmax share, scoring whole sequences.

        Each option is tokenized together with the prompt (a tokenizer may merge across the
        seam), the prefix all sequences share is evaluated once, then each option's remaining
        tokens one at a time from that point of the KV cache.
        """
        seqs = [self._encode(prompt + o) for o in options]
        if max(map(len, seqs)) > self.ctx:
            self.skipped += 1
            return None
        shared = 0
        while shared < min(map(len, seqs)) - 1 and len({s[shared] for s in seqs}) == 1:
            shared += 1
        if shared == 0:
            return None
        cost = shared + sum(len(s) - shared - 1 for s in seqs)
        if not self._reserve(cost):
            return None
        self.tokens += cost
        t0 = time.perf_counter()
        try:
            base = self._eval(seqs[0][:shared], 0)
            if base is None:
                return None
            scores = []
            for s in seqs:
                lp = float(base[s[shared]])
                for j in range(shared, len(s) - 1):
                    logp = self._eval([s[j]], j)
                    if logp is None:
                        return None
                    lp += float(logp[s[j + 1]])
                scores.append(lp)
        finally:
            self.seconds += time.perf_counter() - t0
        probs = np.exp(np.array(scores) - max(scores))
        probs /= probs.sum()
        best = int(np.argmax(probs))
        return best, round(float(probs[best]), 4)

    def _generate(self, ids: list[int], max_new: int) -> str | None:
        """Greedy decoding until the first JSON value closes, a stop token, or `max_new`."""
        t0 = time.perf_counter()
        try:
            logp = self._eval(ids, 0)
            out, end = bytearray(), _JsonEnd()
            for n in range(max_new):
                if logp is None:
                    return None
                tok = int(np.argmax(logp))
                self.tokens += 1
                if tok in self._stop_ids:
                    break
                piece = self._m.ctransformers_llm_detokenize(tok) or b""
                out += piece
                if end.feed(piece) or any(s in out for s in self._stop_text):
                    break
                if not end.started and n >= START_WITHIN:
                    break
                logp = self._eval([tok], len(ids) + n)
            return out.decode("utf-8", "replace")
        finally:
            self.seconds += time.perf_counter() - t0

    def _ask(self, task: str, user_build: Any, max_new: int, check: Any, wrap: Any) -> Any:
        """Generate, parse and `check`, retrying with a nudge; None when all attempts fail.

        The cache holds `wrap(result)`, which `check` accepts again, or null for an answer
        that stayed invalid (greedy decoding would repeat the same garbage).
        """
        max_new = min(max_new, self.ctx // 2)
        first = self._fit(user_build, reserve=max_new)
        if first is None:
            return None
        key = self._key(task, first[0])
        hit, value = self._cached(key)
        result = None if value is None else check(value)
        if hit and (value is None or result is not None):
            self.cache_hits += 1
            return result
        for attempt in range(RETRIES + 1):
            fitted = first if attempt == 0 else self._fit(
                lambda clip: user_build(clip) + NUDGE, reserve=max_new)
            if fitted is None or not self._reserve(len(fitted[1]) + max_new):
                return None
            self.tokens += len(fitted[1])
            result = check(parse_json(self._generate(fitted[1], max_new)))
            if result is not None:
                self._store(key, wrap(result))
                return result
        self.invalid += 1
        self._store(key, None)
        return None

    def _classify(self, task: str, user_build: Any, name: str, allowed: tuple,
                  options: list[str]) -> dict | None:
        fitted = self._fit(user_build, reserve=max(len(o) for o in options))
        if fitted is None:
            return None
        key = self._key(task, fitted[0])
        hit, value = self._cached(key)
        if hit and _valid_choice(value, name, allowed) is not None:
            self.cache_hits += 1
            return value
        chosen = self._choose(fitted[0], options) if self.budget_left() else None
        if chosen is None:
            return None
        result = {name: allowed[chosen[0]], "confidence": chosen[1]}
        self._store(key, result)
        return result

    # -- the tasks -----------------------------------------------------------------------
    def decide_duplicate(self, a: str, b: str) -> dict | None:
        """{"same": bool, "confidence": float}: do `a` and `b` state the same information?"""
        return self._classify("duplicate", lambda clip: _duplicate_prompt(a, b, clip), "same",
                              (True, False), ['{"same": true}', '{"same": false}'])

    def decide_conflict(self, old: str, new: str) -> dict | None:
        """{"relation": one of RELATIONS, "confidence": float}: how `new` relates to `old`."""
        return self._classify("conflict", lambda clip: _conflict_prompt(old, new, clip),
                              "relation", RELATIONS,
                              [f'{{"relation": "{r}"}}' for r in RELATIONS])

    def summarize(self, texts: list[str], max_words: int = 60) -> str | None:
        """An abstractive summary of `texts` in at most about `max_words` words, or None."""
        texts = [t for t in texts if str(t).strip()]
        if not texts or max_words < 1:
            return None
        return self._ask("summary", lambda clip: _summary_prompt(texts, max_words, clip),
                         2 * max_words + 24, lambda v: validate_summary(v, max_words),
                         lambda s: {"summary": s})

    def extract_facts(self, text: str, speaker: str | None) -> list[dict] | None:
        """[{"subject", "relation", "value"}] stated in `text` ([] for none), or None."""
        if not str(text).strip():
            return []
        return self._ask("facts", lambda clip: _facts_prompt(text, speaker, clip), 192,
                         lambda v: validate_facts(v, speaker), lambda facts: facts)
