"""PNG plots of a simulation: the roofline with each op placed on it, and sweep curves.

matplotlib is an optional extra (`pip install 'memstack[plot]'`); it is imported only here,
with the non-interactive Agg backend, so plotting works on a headless cron host.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError

MAX_LINES = 12


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'memstack[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> None:
    """Write to a temporary name and rename, so a failed plot leaves no half file."""
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"--plot: cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def roofline_plot(res: Any, path: str) -> None:
    """Attained FLOP/s against arithmetic intensity for every op of both phases."""
    plt = _pyplot()
    target = res.target
    bw = target.main.effective_bandwidth()
    peaks = sorted({(d, v * target.compute_efficiency) for d, v in target.compute.items()},
                   key=lambda p: p[1])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = np.logspace(-2, 4, 200)
    for dtype, peak in peaks:
        ax.plot(xs, np.minimum(xs * bw, peak), lw=1, alpha=0.6, label=f"roof {dtype}")
    for phase, ops, marker in (("prefill", res.prefill_ops, "s"), ("decode", res.decode_ops, "o")):
        for op in ops:
            flops = float(np.asarray(op.flops))
            moved = float(np.asarray(op.bytes))
            t = float(np.asarray(op.time))
            if flops <= 0 or moved <= 0 or t <= 0:
                continue
            ax.scatter(flops / moved, flops / t, marker=marker, s=30)
            ax.annotate(f"{phase[:3]}:{op.name}", (flops / moved, flops / t), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attained FLOP/s")
    w = res.work
    ax.set_title(f"{res.model.name} on {target.name} (batch {w.batch}, ctx {w.prompt}, "
                 f"weights {w.weights})")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.2)
    _save(fig, path)
    plt.close(fig)


def sweep_plot(records: list[dict[str, Any]], axes: dict[str, list[Any]], path: str) -> None:
    """Decode tok/s and TTFT against the first numeric axis, one line per other combination."""
    plt = _pyplot()
    numeric = [a for a in axes if a in ("batch", "ctx", "gen", "prefix")]
    x_axis = numeric[0] if numeric else next(iter(axes))
    key_x = "ctx" if x_axis == "ctx" else x_axis
    others = [a for a in axes if a != x_axis]
    lines: dict[tuple, list[tuple[Any, float, float]]] = {}
    for rec in records:
        key = tuple(rec["ctx" if a == "ctx" else a] for a in others)
        if key in lines or len(lines) < MAX_LINES:
            lines.setdefault(key, []).append((rec[key_x], rec["decode_tok_s"], rec["ttft_s"]))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for key, pts in lines.items():
        label = ", ".join(f"{a}={v}" for a, v in zip(others, key, strict=True)) or "all"
        xs = list(range(len(pts))) if not numeric else [p[0] for p in pts]
        a1.plot(xs, [p[1] for p in pts], marker="o", label=label)
        a2.plot(xs, [p[2] for p in pts], marker="o", label=label)
    for ax, ylab in ((a1, "decode tokens/s (batch)"), (a2, "TTFT (s)")):
        if numeric:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(x_axis)
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.2)
    a1.legend(fontsize=7)
    if len(lines) >= MAX_LINES:
        fig.suptitle(f"first {MAX_LINES} combinations shown", fontsize=8)
    _save(fig, path)
    plt.close(fig)
