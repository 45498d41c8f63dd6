"""Human renderings of hits: a terminal table, plain text, and a prompt-ready context block."""

from __future__ import annotations

import shutil
import textwrap


def when(rec: dict) -> str:
    t = rec.get("t_event") or ""
    return t[:16].replace("T", " ") if t else ""


def speaker(rec: dict) -> str:
    return (rec.get("source") or {}).get("speaker") or ""


def prompt_line(rec: dict) -> str:
    """One memory as a context line: '- [2023-05-08 13:56] Caroline: text'."""
    parts = []
    w = when(rec)
    if w:
        parts.append(f"[{w}]")
    sp = speaker(rec)
    text = " ".join(rec.get("text", "").split())
    parts.append(f"{sp}: {text}" if sp else text)
    return "- " + " ".join(parts)


def prompt_header(query: str) -> str:
    return f"## Memories relevant to: {query}"


def table(rows: list[dict], explain: bool = False) -> str:
    """A fixed-width table sized to the terminal."""
    width = shutil.get_terminal_size((120, 24)).columns
    out = []
    head = f"{'#':>3} {'score':>7} {'when':16} {'speaker':12} text"
    out.append(head)
    for row in rows:
        rec = row["memory"]
        fixed = 3 + 1 + 7 + 1 + 16 + 1 + 12 + 1
        text = textwrap.shorten(" ".join(rec.get("text", "").split()), max(20, width - fixed),
                                placeholder="…")
        out.append(f"{row['rank']:>3} {row['score']:>7.3f} {when(rec):16} "
                   f"{speaker(rec)[:12]:12} {text}")
        if explain and row.get("explain"):
            ex = row["explain"]
            bits = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in ex.items() if k != "terms"]
            out.append(" " * 12 + "  ".join(bits))
    return "\n".join(out)
