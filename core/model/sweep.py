"""Sweep grids: 'batch=1,8,64;ctx=2k,8k;weights=bf16,q4_0' priced in one vectorised pass.

Numeric axes are flattened into one array per field and format axes into category codes, so a
grid of a million configurations costs one `simulate` call per (model, target) pair; records
stream out in grid order (the last axis varies fastest, like nested loops written in order).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError
from memstack.core.model.simulate import BOUNDS, Cat, Workload, simulate

NUMERIC = ("batch", "ctx", "gen", "prefix")
NAMED = ("weights", "kv", "act")
OUTER = ("model", "target")
AXES = OUTER + NUMERIC + NAMED
MAX_CONFIGS = 50_000_000
_SUFFIX = {"": 1, "k": 1024, "m": 1024 * 1024}
_NUM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_count(text: str, axis: str) -> int:
    """'2k' -> 2048 (token counts are powers-of-two thousands by convention), '64' -> 64."""
    m = _NUM.match(text)
    if not m:
        raise ConfigError(f"--sweep: {axis}={text!r} is not a count like 64, 2k or 1m")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value != int(value) or value > 1 << 40:
        raise ConfigError(f"--sweep: {axis}={text!r} is not a whole count below 2^40")
    return int(value)


def parse_grid(text: str) -> dict[str, list[Any]]:
    """Axes in the order given; each axis once; values deduplicated in order."""
    axes: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, eq, values = part.partition("=")
        name = name.strip().lower()
        name = {"prompt": "ctx", "w": "weights", "b": "batch"}.get(name, name)
        if not eq or name not in AXES:
            raise ConfigError(f"--sweep: {part!r} is not AXIS=V1,V2,… with AXIS one of "
                              + ", ".join(AXES))
        if name in axes:
            raise ConfigError(f"--sweep: axis {name} is given twice")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise ConfigError(f"--sweep: axis {name} has no values")
        vals = [parse_count(v, name) for v in items] if name in NUMERIC else items
        axes[name] = list(dict.fromkeys(vals))
    if not axes:
        raise ConfigError("--sweep: empty grid; give e.g. 'batch=1,8;ctx=2k,8k'")
    size = int(np.prod([len(v) for v in axes.values()], dtype=np.float64))
    if size > MAX_CONFIGS:
        raise ConfigError(f"--sweep: {size:,} configurations is more than {MAX_CONFIGS:,}")
    return axes


def inner_workload(axes: dict[str, list[Any]], base: dict[str, Any]) -> tuple[Workload, int]:
    """The grid of numeric and format axes as flat arrays (row-major over axes in order)."""
    inner = [a for a in axes if a not in OUTER]
    shape = [len(axes[a]) for a in inner]
    n = int(np.prod(shape)) if shape else 1
    idx = np.indices(shape).reshape(len(shape), -1) if shape else np.zeros((0, 1), int)
    fields: dict[str, Any] = {}
    for j, a in enumerate(inner):
        if a in NUMERIC:
            fields[a] = np.asarray(axes[a], dtype=np.float64)[idx[j]]
        else:
            fields[a] = Cat(tuple(axes[a]), idx[j])
    work = Workload(
        batch=fields.get("batch", base["batch"]), prompt=fields.get("ctx", base["ctx"]),
        gen=fields.get("gen", base["gen"]), weights=fields.get("weights", base["weights"]),
        kv=fields.get("kv", base["kv"]), act=fields.get("act", base["act"]),
        prefix=fields.get("prefix", base.get("prefix", 0)))
    return work, n


def run_sweep(axes: dict[str, list[Any]], base: dict[str, Any],
              load_model: Callable[[str], Any], load_target: Callable[[str], Any],
              chunk: int = 65536) -> Iterator[dict[str, Any]]:
    """`sim` records for every grid point; models and targets are the outer loops."""
    for block in run_sweep_chunks(axes, base, load_model, load_target, chunk):
        yield from block


def run_sweep_chunks(axes: dict[str, list[Any]], base: dict[str, Any],
                     load_model: Callable[[str], Any], load_target: Callable[[str], Any],
                     chunk: int = 65536) -> Iterator[list[dict[str, Any]]]:
    """The same records in lists of up to `chunk`, for writers that take many at once."""
    models = axes.get("model", [base["model"]])
    targets = axes.get("target", [base["target"]])
    order = [a for a in axes if a in OUTER]
    pairs = itertools.product(*(axes[a] for a in order)) if order else [()]
    work, n = inner_workload(axes, base)
    specs = {m: load_model(m) for m in models}  # bad names fail before any output
    tgts = {t: load_target(t) for t in targets}
    for combo in pairs:
        pick = dict(zip(order, combo, strict=True))
        spec = specs[pick.get("model", models[0])]
        target = tgts[pick.get("target", targets[0])]
        for lo in range(0, n, chunk):
            yield _records(spec, target, _slice(work, lo, min(n, lo + chunk)))


def _slice(work: Workload, lo: int, hi: int) -> Workload:
    def cut(x: Any) -> Any:
        if isinstance(x, Cat):
            return Cat(x.names, x.codes[lo:hi])
        a = np.asarray(x)
        return a[lo:hi] if a.ndim else x

    return Workload(*(cut(getattr(work, f)) for f in
                      ("batch", "prompt", "gen", "weights", "kv", "act", "prefix")))


def _column(x: Any, n: int, conv: Callable[[Any], Any]) -> list[Any]:
    if isinstance(x, Cat):
        return [x.names[c] for c in x.codes.tolist()]
    a = np.asarray(x)
    return [conv(v) for v in a.tolist()] if a.ndim else [conv(a.item())] * n


def _records(spec: Any, target: Any, work: Workload) -> list[dict[str, Any]]:
    """The records of one chunk, built column-wise (dict per row from zipped lists)."""
    res = simulate(spec, target, work)
    t = res.totals
    n = int(np.size(t["tpot_s"]))
    const = itertools.repeat
    cols: dict[str, Any] = {
        "v": const(1), "kind": const("sim"), "model": const(spec.name),
        "target": const(target.name),
        "batch": _column(work.batch, n, int), "ctx": _column(work.prompt, n, int),
        "gen": _column(work.gen, n, int), "weights": _column(work.weights, n, str),
        "kv": _column(work.kv, n, str), "act": _column(work.act, n, str),
    }
    for k in ("ttft_s", "prefill_tok_s", "tpot_s", "decode_tok_s", "e2e_s", "mem_weights",
              "mem_kv", "mem_act", "mem_total"):
        cols[k] = np.broadcast_to(t[k], (n,)).astype(float).tolist()
    cols["capacity"] = const(float(t["capacity"]))
    cols["fits"] = np.broadcast_to(t["fits"], (n,)).tolist()
    cols["decode_bound"] = [BOUNDS[b] for b in np.broadcast_to(t["decode_bound"], (n,)).tolist()]
    keys = list(cols)
    return [dict(zip(keys, row, strict=False)) for row in zip(*cols.values(), strict=False)]
