"""Poisoned-memory detection (A-MemGuard's concern): memories that carry injected instructions.

An attacker who can get text into the memory store (a web page the agent read, a shared
document, a crafted chat turn) plants instructions that a later recall feeds back to the model
as trusted context. consolidate quarantines such memories (status 3, never deleted) so recall
skips them, and writes a `quarantine` decision with the reasons.

The signals are deterministic regexes over a normalised text (NFKC, casefolded, invisible
characters removed so "ig<U+200B>nore" still reads `ignore`; base64 runs and Unicode tag
characters are decoded and scanned too). Each named signal has a weight in [0, 1]; the
strongest signal of each FAMILY counts, and families combine as a noisy-or, 1 - prod(1 - w).
So one strong signal (a chat template header, an instruction override, smuggled tag
characters, sending secrets to a URL) crosses the 0.5 threshold on its own, while weak ones (the
words "system prompt", a curl command, a JSON tool call, a user's "from now on, always answer
in French") need company from another family. Text inside code spans, and delimiters or tool
syntax in text that talks *about* prompt formats, count at a discount, so a developer's
conversation stays below.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

THRESHOLD = 0.5
CODE_DISCOUNT = 0.4  # signals found only inside `code` / ``` fences: quoted, not addressed
DISCUSSION_DISCOUNT = 0.5  # delimiters and tool syntax in text that discusses formats
# consensus: conflicting with >= CONSENSUS_MIN related memories that agree on another value
CONSENSUS_MIN = 3
CONSENSUS_MAX = 0.3  # the most suspicion a consensus conflict adds
BORDERLINE = 0.5  # consensus only counts once injection reaches BORDERLINE * threshold
MAX_DEPTH = 2  # decoded payloads (base64, tag characters) are scanned this deep


@dataclass
class GuardVerdict:
    quarantine: bool
    score: float
    reasons: list[str]


def _n(needles: str) -> tuple[str, ...]:
    return tuple(needles.split())


def _rx(pattern: str) -> re.Pattern:
    """Patterns are lowercase and run on casefolded text: IGNORECASE would only slow them."""
    return re.compile(pattern, re.MULTILINE)


_SECRET = (r"(?:passwords?|passwd|api[\s_-]?keys?|secret\s+keys?|secrets|credentials?|"
           r"access\s+tokens?|auth\s+tokens?|private\s+keys?|ssh\s+keys?|session\s+cookies?|"
           r"cookies|credit\s+card(?:\s+numbers?)?|(?:the\s+)?conversation(?:\s+history)?|"
           r"chat\s+(?:history|logs?)|(?:the\s+)?user'?s\s+(?:data|messages|emails?|address|"
           r"info(?:rmation)?|details|files|history)|all\s+(?:the\s+|of\s+the\s+)?(?:data|"
           r"messages|files|memories|emails|previous\s+messages)|(?:your\s+)?system\s+prompt|"
           r"(?:your\s+|the\s+)?memor(?:y|ies))")
_DEST = r"(?:https?://|www\.|ftp://|[\w.+-]+@[\w-]+\.[a-z]{2,})"
_AI = (r"(?:ai|assistant|chatbot|bot|llm|agent|language\s+model|claude|chatgpt|gpt(?:-?\d)?|"
       r"gemini|copilot)")

# (reason, weight, needles, pattern) over the normalised, casefolded text; a reason scores the
# max weight among its matching rules. A rule's regex runs only when one of its needles occurs
# (a whole [a-z]+ word, or a substring for needles with other characters): most memories hold
# none, and one word split plus a set intersection is far cheaper than 23 regex scans. Every
# match of a pattern must contain one of its needles, so the gate never changes a result.
RULES: list[tuple[str, float, tuple[str, ...], re.Pattern]] = [
    ("instruction-override", 0.7,
     _n("ignore disregard forget override bypass skip drop abandon"), _rx(
        r"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon)\s+(?:all\s+|any\s+|"
        r"every\s+)?(?:of\s+)?(?:the\s+|your\s+|my\s+|these\s+|those\s+|its\s+)?"
        # an AI-ish object with any qualifier, or a general one ("rules") with a strong one
        r"(?:(?:previous|prior|above|earlier|preceding|foregoing|original|initial|system|"
        r"existing|old|former)\s+(?:instructions?|directives|guidelines|prompts?|programming)|"
        r"(?:previous|prior|above|preceding|foregoing|system)\s+(?:rules|directions|context|"
        r"commands?|guidance|constraints|policies)(?!\s+of\b))")),
    ("instruction-override", 0.7, _n("ignore disregard"), _rx(
        r"\b(?:ignore|disregard)\s+(?:all|any|your)\s+(?:instructions?|rules|guidelines)|"
        r"\bignore\s+(?:everything|all)\s+(?:above|before|previously|you\s+were\s+told)")),
    ("role-reassignment", 0.55, _n("now longer"), _rx(
        r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:a\s+|an\s+|in\s+|the\s+)?(?:[\w-]+\s+){0,2}?"
        rf"(?:{_AI}|dan|jailbroken|unrestricted|unfiltered|uncensored|developer\s+mode|"
        r"bound\s+by|restricted|limited\s+by)\b")),
    ("role-reassignment", 0.1, _n("now"), _rx(
        r"\byou\s+are\s+now\b")),
    ("jailbreak", 0.5, _n("anything mode ethical content"), _rx(
        r"\b(?:do\s+anything\s+now|dan\s+mode|developer\s+mode\s+(?:enabled|on|activated)|"
        r"jailbreak\s+mode|no\s+(?:ethical|content)\s+(?:guidelines|restrictions|filters))\b")),
    ("act-as", 0.2, _n("act behave respond pretend"), _rx(
        r"\b(?:act|behave|respond)\s+as\s+(?:if\s+|an?\s+|the\s+)?[^.\n]{0,60}?"
        r"\band\b|\bpretend\s+(?:to\s+be|you\s+are)\b")),
    ("new-instructions", 0.5,
     _n("instruction instructions directive directives prompt context"), _rx(
        r"\b(?:new|updated|revised|real|actual|true|secret|hidden|additional|override|"
        r"important)\s+(?:instructions?|directives?|system\s+prompt)\s*:|"
        r"\b(?:begin|start)\s+(?:of\s+)?(?:new\s+)?instructions\b|"
        r"\bend\s+of\s+(?:the\s+)?(?:system\s+)?(?:instructions|prompt|context)\b")),
    ("new-instructions", 0.25, _n("rules task"), _rx(
        r"\b(?:new|updated|revised)\s+(?:rules|task)\s*:")),
    ("prompt-extraction", 0.45, _n("prompt instructions"), _rx(
        r"\b(?:reveal|print|show|repeat|output|leak|display|dump|tell\s+me|give\s+me)\s+"
        r"(?:me\s+)?(?:your|the)\s+(?:full\s+|entire\s+|original\s+|hidden\s+|initial\s+)?"
        r"(?:system\s+prompt|initial\s+prompt|hidden\s+instructions|system\s+instructions)")),
    ("system-prompt", 0.15, _n("prompt"), _rx(
        r"\bsystem\s+prompt\b")),
    ("tool-call", 0.35, _n("tool_ function invoke \"name\""), _rx(
        r"</?(?:tool_call|tool_use|function_call|function_calls|invoke)\b|<function=|"
        r"\"(?:function_call|tool_calls|tool_use)\"\s*:|"
        r"\{\s*\"name\"\s*:\s*\"[^\"\n]{1,80}\"\s*,\s*\"(?:arguments|parameters|args|input)\"\s*:")),
    ("exfiltration", 0.7, _n("@ http https www. ftp"), _rx(
        r"\b(?:send|post|forward|upload|e-?mail|transmit|exfiltrate|leak|submit|include|append|"
        rf"embed|encode|copy)\b[^\n]{{0,60}}?\b{_SECRET}\b[^\n]{{0,80}}?\b(?:to|at|into|via)\s+"
        rf"{_DEST}")),
    ("exfiltration", 0.3, _n("@ http https www. ftp"), _rx(
        r"\b(?:send|post|forward|upload|e-?mail|transmit|exfiltrate|leak|submit)\b[^.\n]{0,80}?"
        rf"\b(?:to|at|into)\s+{_DEST}")),
    ("exfiltration", 0.3,
     _n("send post forward upload transmit exfiltrate leak reveal include append"), _rx(
        r"\b(?:send|post|forward|upload|transmit|exfiltrate|leak|reveal|include|append)\b"
        rf"[^.\n]{{0,40}}?\b{_SECRET}\b")),
    ("exfiltration", 0.3, _n("!["), _rx(
        r"!\[[^\]\n]*\]\(\s*https?://[^)\s]*\?[^)\s]*=")),
    ("link-injection", 0.3, _n("link links url urls http https"), _rx(
        r"\b(?:always|every\s+time|in\s+every|each\s+time)\b[^.\n]{0,60}?\b(?:include|insert|"
        r"add|append|mention|recommend|promote|link\s+to)\b[^\n]{0,60}?(?:\blinks?\b|\burls?\b|"
        r"https?://)|\b(?:include|insert|add|append)\s+(?:this|the\s+following)\s+(?:link|url)\b"
        r"[^\n]{0,40}?(?:in|to|into)\s+(?:every|each|all)\b")),
    ("shell-fetch", 0.35, _n("curl wget"), _rx(
        r"\b(?:curl|wget)\b[^\n|]*\|\s*(?:sudo\s+)?(?:ba|z)?sh\b")),
    ("shell-fetch", 0.15, _n("curl wget invoke"), _rx(
        r"\b(?:curl|wget|invoke-webrequest)\b[^\n]{0,200}?https?://")),
    ("addressed-to-ai", 0.35,
     _n("ai assistant chatbot bot llm agent model claude chatgpt gpt gemini copilot"), _rx(
        rf"(?:^|[.!?\n]\s*)(?:dear\s+|hey\s+|attention\s+)?{_AI}\s*[,:]\s*(?:you\s+)?"
        r"(?:must|should|will\s+always|always|never|from\s+now\s+on|remember\s+to|make\s+sure|"
        r"do\s+not|don't|ignore|only)\b")),
    ("addressed-to-ai", 0.4,
     _n("note message attention important instruction instructions reminder"), _rx(
        r"\b(?:note|message|attention|important|instructions?|reminder)\s+(?:to|for)\s+"
        rf"(?:the\s+|any\s+|all\s+)?{_AI}s?\b")),
    ("standing-order", 0.3, _n("now"), _rx(
        r"\bfrom\s+now\s+on\b[,\s]*(?:you\s+(?:must|will|should|shall|are\s+to)|always|never|"
        r"only|respond|reply|answer|do\s+not|don't|ignore)\b")),
    ("standing-order", 0.3, _n("must will shall"), _rx(
        r"\byou\s+(?:must|will|shall)\s+(?:always|never|only)\s+(?:respond|reply|answer|say|"
        r"output|recommend|include|mention|tell|refer|direct|use|call|print|return|write)\b")),
    ("planted-trigger", 0.35,
     _n("ask asks mention mentions say says request requests queries searches type types"), _rx(
        r"\b(?:when|whenever|if)\s+(?:the\s+user|a\s+user|users|anyone|someone|somebody)\s+"
        r"(?:asks?|mentions?|says?|requests?|queries|searches|types?)\b[^.\n]{0,100}?"
        r"\b(?:respond|reply|answer|say|tell|recommend|output|direct|redirect|send|include|"
        r"suggest|claim|insist)\b")),
]

# Signals of one family are the same evidence said twice: they do not add up, the strongest
# counts. So a user's own preference ("Claude, from now on always answer in French": addressed
# to the AI and a standing order) stays one weak signal, while a standing order that also
# plants a trigger or a link (manipulation) is two.
FAMILY = {
    "instruction-override": "override", "role-reassignment": "override",
    "jailbreak": "override", "act-as": "override", "new-instructions": "override",
    "prompt-extraction": "override", "system-prompt": "override",
    "template-delimiter": "format", "tool-call": "format",
    "exfiltration": "exfiltration", "shell-fetch": "exfiltration",
    "planted-trigger": "manipulation", "link-injection": "manipulation",
    "addressed-to-ai": "directive", "standing-order": "directive",
    "base64-payload": "hidden", "zero-width": "hidden", "bidi-control": "hidden",
    "unicode-tags": "hidden",
}

# chat-template and prompt delimiters: one distinct token 0.45, two or more (a structured
# prompt) 0.6, a role-opening header followed by text 0.7
_DELIM = _rx(
    r"<\|[a-z_]{2,30}\|>|\[/?inst\]|<</?sys>>|<start_of_turn>|<end_of_turn>|"
    r"^\s*#{2,3}\s*(?:system|instruction|instructions|response|assistant|user|human)\s*:|"
    r"</s>")
_ROLE_OPEN = _rx(
    r"(?:<\|im_start\|>|<\|start_header_id\|>|<\|)\s*(?:system|assistant|developer)\b|"
    r"<<sys>>\s*\S|^\s*#{2,3}\s*(?:system|instruction)\s*:\s*\S")
_STRIKE = re.compile(r"<s>.*?</s>", re.IGNORECASE | re.DOTALL)
_DISCUSSION = _rx(
    r"\b(?:templates?|tokeni[sz]ers?|special\s+tokens?|tokens?|prompt\s+formats?|syntax|jinja|"
    r"delimiters?|schema|api(?![\s_-]?keys?)|sdk|parser|regex|openai|llama|qwen|mistral|"
    r"hugging\s*face)\b")
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)
_B64 = re.compile(r"[A-Za-z0-9+/_-]{60,}={0,2}")
# invisible characters: zero-width, word joiners, BOM, Mongolian vowel separator
_ZW = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e"
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_INVISIBLE = re.compile(f"[{_ZW}{_BIDI}\U000e0000-\U000e007f]")
# emoji subdivision flags (England, Scotland, Wales) are the one honest use of tag characters
_TAG_FLAG = re.compile("\U0001f3f4[\U000e0020-\U000e007e]{1,8}\U000e007f")
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
_HAS_ZW = re.compile(f"[{_ZW}]")


def _suspicious_zero_width(text: str) -> int:
    """Zero-width characters outside their honest uses: ZWJ/ZWNJ between two non-ASCII
    characters (emoji sequences, Persian and Indic scripts), a BOM at the start."""
    n = 0
    for i, ch in enumerate(text):
        if ch not in _ZW or (ch == "\ufeff" and i == 0):
            continue
        if ch in "\u200c\u200d" and 0 < i < len(text) - 1 and not (
                text[i - 1].isascii() or text[i + 1].isascii()):
            continue
        n += 1
    return n


def _add(found: dict[str, float], reason: str, weight: float) -> None:
    if weight > found.get(reason, 0.0):
        found[reason] = weight


_WORD = re.compile(r"[a-z]+")


def _gate() -> tuple[dict[str, tuple[int, ...]], tuple[tuple[str, tuple[int, ...]], ...]]:
    """Index of the rules each needle gates: word needles, then substring needles."""
    words: dict[str, list[int]] = {}
    subs: dict[str, list[int]] = {}
    for i, (_, _, needles, _) in enumerate(RULES):
        for n in needles:
            (words if n.isalpha() and n.isascii() else subs).setdefault(n, []).append(i)
    return ({w: tuple(r) for w, r in words.items()},
            tuple((n, tuple(r)) for n, r in sorted(subs.items())))


_RULES_OF_WORD, _RULES_OF_SUB = _gate()


def _scan_rules(text: str, factor: float, found: dict[str, float]) -> None:
    todo = {i for w in _RULES_OF_WORD.keys() & set(_WORD.findall(text))
            for i in _RULES_OF_WORD[w]}
    todo.update(i for n, rules in _RULES_OF_SUB if n in text for i in rules)
    for i in sorted(todo):
        reason, weight, _, rx = RULES[i]
        if weight * factor > found.get(reason, 0.0) and rx.search(text):
            _add(found, reason, weight * factor)


def _delimiters(text: str) -> float:
    if "<" not in text and "[" not in text and "#" not in text:
        return 0.0
    text = _STRIKE.sub(" ", text)  # HTML strike-through <s>..</s> is not an end-of-sequence
    kinds = {m.group(0).strip() for m in _DELIM.finditer(text)}
    if not kinds:
        return 0.0
    if _ROLE_OPEN.search(text):
        return 0.7
    return 0.6 if len(kinds) >= 2 else 0.45


def _decoded_base64(run: str) -> str | None:
    """The text a base64 run encodes, or None for binary data or no base64 at all."""
    if len(set(run)) < 16 or re.fullmatch(r"[0-9a-fA-F]+", run) or run.count("/") > len(run) / 10:
        return None  # hashes, paths, repeated characters
    try:
        raw = base64.b64decode(run.replace("-", "+").replace("_", "/") + "=" * (-len(run) % 4))
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(c.isprintable() or c.isspace() for c in text)
    return text if text and printable >= 0.9 * len(text) else None


def _score(found: dict[str, float]) -> float:
    """Noisy-or across families of the strongest signal in each family."""
    best: dict[str, float] = {}
    for reason, w in found.items():
        fam = FAMILY.get(reason, reason)
        best[fam] = max(best.get(fam, 0.0), min(max(w, 0.0), 1.0))
    keep = 1.0
    for w in best.values():
        keep *= 1.0 - w
    return min(max(1.0 - keep, 0.0), 1.0)


def _signals(text: str, depth: int) -> dict[str, float]:
    found: dict[str, float] = {}
    if not text.isascii():
        tags = _TAGS.findall(_TAG_FLAG.sub("", text))
        if tags:  # ASCII smuggled as invisible tag characters: scan what they spell
            _add(found, "unicode-tags", 0.8)
            smuggled = "".join(chr(ord(c) - 0xE0000) for run in tags for c in run
                               if 0xE0020 <= ord(c) <= 0xE007E)
            if smuggled.strip() and depth < MAX_DEPTH:
                for r, w in _signals(smuggled, depth + 1).items():
                    _add(found, r, w)
        zw = _suspicious_zero_width(text) if _HAS_ZW.search(text) else 0
        if zw:
            _add(found, "zero-width", 0.4 if zw >= 3 else 0.15)
        if any(c in _BIDI for c in text):
            _add(found, "bidi-control", 0.3)
        text = unicodedata.normalize("NFKC", _INVISIBLE.sub("", text))
    for run in _B64.findall(text):
        decoded = _decoded_base64(run)
        if decoded is None:
            continue
        inner = _signals(decoded, depth + 1) if depth < MAX_DEPTH else {}
        _add(found, "base64-payload", max(0.6, _score(inner)) if inner else 0.3)
        for r, w in inner.items():
            _add(found, r, w)
    norm = text.casefold()
    prose, code = norm, ""
    if "`" in norm:
        prose = _CODE.sub(" ", norm)
        code = " ".join(m.group(0) for m in _CODE.finditer(norm))
    _scan_rules(prose, 1.0, found)
    if code:
        _scan_rules(code, CODE_DISCOUNT, found)
    delim = max(_delimiters(prose), _delimiters(code) * CODE_DISCOUNT)
    if (delim or "tool-call" in found) and _DISCUSSION.search(prose):
        delim *= DISCUSSION_DISCOUNT
        if "tool-call" in found:
            found["tool-call"] *= DISCUSSION_DISCOUNT
    if delim:
        _add(found, "template-delimiter", delim)
    return found


def injection_signals(text: str) -> tuple[float, list[str]]:
    """Score in [0, 1] for text that reads like injected instructions rather than something a
    person said, and the names of the signals behind it (strongest first). Never raises."""
    if not isinstance(text, str) or not text:
        return 0.0, []
    found = _signals(text, 0)
    found = {r: w for r, w in found.items() if w > 0}
    reasons = sorted(found, key=lambda r: (-found[r], r))
    return round(_score(found), 6), reasons


def guard(text: str, *, consensus_conflicts: int = 0, consensus_support: int = 0,
          threshold: float = THRESHOLD) -> GuardVerdict:
    """Quarantine verdict for one memory: injection score plus a consensus term.

    The consensus term: a memory whose claim conflicts with >= CONSENSUS_MIN related memories
    that agree on another value (consensus_conflicts = how many disagree with it,
    consensus_support = how many agree) is more suspicious, up to CONSENSUS_MAX when nothing
    supports it. But a consensus conflict alone never quarantines: a legitimate update ("I
    moved to Berlin") conflicts with its own history by design, and supersession, not the
    guard, handles it. The term only counts once the injection score is at least
    BORDERLINE * threshold, so it tips a borderline injection over the threshold, and a
    memory with no injection signal at all is never quarantined at any threshold.
    """
    score, reasons = injection_signals(text)
    total = score
    conflicts, support = max(int(consensus_conflicts), 0), max(int(consensus_support), 0)
    if conflicts >= CONSENSUS_MIN and conflicts > support and score > 0 and \
            score >= BORDERLINE * threshold:
        c = CONSENSUS_MAX * (conflicts - support) / (conflicts + support)
        total = score + (1.0 - score) * c
        reasons = [*reasons, "consensus-conflict"]
    return GuardVerdict(quarantine=score > 0 and total >= threshold, score=round(total, 6),
                        reasons=reasons)
