"""Place model units (weights, KV, experts, activations) across memory tiers to minimise step time.

The inputs are abstract: each `Unit` carries its bytes and, per tier, the seconds it costs on the
critical path of one step if used in place there (`exec_s`) or streamed over the link to the main
tier (`fetch_s`); whoever turns a model spec and a hardware target into units owns those numbers.

A unit is placed in a tier with a mode:

* ``resident`` - on the main tier, the accelerator computes it there;
* ``host``     - off the main tier and computed where it lives (the CPU computes a DRAM unit);
* ``stream``   - off the main tier and copied to the main tier every step, then computed there.

Per layer L and step (FlexGen's model when `overlap` is on: the transfers of a layer run under
the accelerator compute of the step; host work is serial to both)::

    overlap:    T_L = max(sum accel compute of resident+streamed, sum transfers) + sum host
    no overlap: T_L = sum accel compute + sum transfers + sum host

The step time is the sum over layers. Streaming needs a staging buffer on the main tier: it is
modelled as the bytes of the largest streamed unit (FlexGen and accelerate both keep room for one
layer in flight). A fractional placement (the LP) reserves ``max_i bytes_i * stream_fraction_i``,
which is the exact value for integral placements and a valid relaxation otherwise.

Planners: `plan_greedy` (fast), `plan_lp` (FlexGen-style LP: a lower bound plus a rounding),
`plan_exact` (small problems: brute force or a MILP) and `plan_accelerate` (the baseline that
HF accelerate's ``infer_auto_device_map`` would produce, evaluated without overlap).

`Unit.prob` is informational: `exec_s`/`fetch_s` already carry the expectation over a step.
Capacities hold to a relative slack of 1e-6 (float sums and HiGHS tolerances).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError

KINDS = ("weights", "kv", "expert", "act")
MODES = ("resident", "host", "stream")
GIB = float(1 << 30)
_EPS = 1e-12  # seconds: moves that save less are noise
_ROUND = 1e-6  # relative slack on capacities (floating sums, solver tolerances)
_SMALL = 48  # units: up to this many the greedy adds the knapsack DP and the LNS
_LNS_MAX = 600  # units: up to this many the finish includes the LNS (~0.1-0.3 s at 250)
_DP_GRID = {1: 4096, 2: 240, 3: 36}  # cells per bounded tier, by the number of bounded tiers
# Tier names accelerate treats as host RAM ("cpu") or as its unbounded "disk" device.
HOST_NAMES = frozenset({"dram", "cpu", "ram", "host", "unified", "sysmem"})
DISK_NAMES = frozenset({"disk", "flash", "ssd", "nvme", "storage"})


# ---- inputs and outputs ------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One placeable piece of the model; costs are seconds per step, inf where not allowed."""

    name: str
    layer: int
    kind: str
    bytes: float
    exec_s: Mapping[str, float]
    fetch_s: Mapping[str, float]
    prob: float = 1.0


@dataclass(frozen=True)
class Problem:
    units: tuple[Unit, ...]
    tiers: tuple[str, ...]  # fastest (main) first
    budget: Mapping[str, float]  # bytes per tier; inf = unbounded
    main: str
    overlap: bool = True
    objective: str = "latency"

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", tuple(self.units))
        object.__setattr__(self, "tiers", tuple(self.tiers))


@dataclass(frozen=True)
class Part:
    tier: str
    mode: str
    fraction: float = 1.0


@dataclass(frozen=True)
class Placement:
    """Per unit (in `Problem.units` order) the parts it is split into; integral plans have one.

    `staging` overrides the staging reserve on the main tier (bytes; None: the largest streamed
    unit) and `overlap` the problem's overlap flag (None: the problem's) - the accelerate baseline
    sets both, since its hooks move a whole layer at a time and do not overlap.
    """

    parts: tuple[tuple[Part, ...], ...]
    staging: float | None = None
    overlap: bool | None = None

    @classmethod
    def integral(cls, choices: Sequence[tuple[str, str]], **kw: Any) -> Placement:
        return cls(tuple((Part(t, m),) for t, m in choices), **kw)

    def choice(self, i: int) -> tuple[str, str]:
        """The (tier, mode) holding the largest fraction of unit i."""
        p = max(self.parts[i], key=lambda q: q.fraction)
        return p.tier, p.mode


@dataclass(frozen=True)
class LayerTime:
    layer: int
    compute_s: float  # accelerator compute of resident and streamed units
    transfer_s: float  # streamed transfers
    host_s: float  # units computed where they live
    time_s: float


@dataclass(frozen=True)
class Breakdown:
    step_s: float
    layers: tuple[LayerTime, ...]
    bytes: dict[str, float]  # per tier; the main tier includes the staging buffer
    staging: float
    feasible: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class LPResult:
    bound: float  # the LP optimum: no placement is faster
    fractional: Placement
    placement: Placement  # integral: the rounding, or the greedy plan where that is faster
    step_s: float  # of `placement`
    rounded_by: str  # "lp" (the rounding won) or "greedy"


# ---- validation and the compiled arrays ----------------------------------------------------------
def _check(problem: Problem) -> None:
    """Reject malformed problems and budgets nothing can fit in (ConfigError)."""
    if problem.objective != "latency":
        raise ConfigError(f"objective {problem.objective!r} is not supported (only 'latency')")
    if not problem.tiers or problem.tiers[0] != problem.main:
        raise ConfigError(f"the main tier {problem.main!r} must come first in tiers")
    if len(set(problem.tiers)) != len(problem.tiers):
        raise ConfigError("tier names repeat")
    for t in problem.tiers:
        b = problem.budget.get(t)
        if b is None or not (b >= 0):
            raise ConfigError(f"tier {t!r} needs a budget >= 0 bytes")
    if not problem.units:
        raise ConfigError("nothing to place: no units")
    for u in problem.units:
        if u.kind not in KINDS:
            raise ConfigError(f"unit {u.name!r}: kind {u.kind!r} is not one of {', '.join(KINDS)}")
        if not (u.bytes >= 0) or math.isinf(u.bytes):
            raise ConfigError(f"unit {u.name!r}: bytes must be finite and >= 0")
        if not (0.0 <= u.prob <= 1.0):
            raise ConfigError(f"unit {u.name!r}: prob must lie in [0, 1]")
        for d in (u.exec_s, u.fetch_s):
            if any(not (v >= 0) for v in d.values()):
                raise ConfigError(f"unit {u.name!r}: costs must be >= 0 (inf = not allowed)")
    need = sum(u.bytes for u in problem.units)
    have = sum(problem.budget[t] for t in problem.tiers)
    if need > have * (1 + _ROUND):
        raise ConfigError(f"the model needs at least {need / GIB:.2f} GiB across all tiers; the "
                          f"budgets total {have / GIB:.2f} GiB")


@dataclass
class _Net:
    """Dense arrays of a problem. Option o: 0 resident; 2t-1 host on tier t; 2t stream from t."""

    b: np.ndarray  # (n,) bytes
    li: np.ndarray  # (n,) dense layer index
    layer_ids: list[int]
    c: np.ndarray  # (n, O) accelerator compute (0 where invalid)
    x: np.ndarray  # (n, O) transfer
    h: np.ndarray  # (n, O) host compute
    valid: np.ndarray  # (n, O)
    cap: np.ndarray  # (T,)
    overlap: bool

    @property
    def n(self) -> int:
        return len(self.b)

    @property
    def T(self) -> int:
        return len(self.cap)

    @property
    def O(self) -> int:  # noqa: E743 - the option count
        return 2 * len(self.cap) - 1


def _tier_of(o: int) -> int:
    return (o + 1) // 2


def _is_stream(o: int) -> bool:
    return o > 0 and o % 2 == 0


def _mode_of(o: int) -> str:
    return "resident" if o == 0 else ("host" if o % 2 else "stream")


def _option(t: int, mode: str) -> int:
    if mode == "resident":
        if t != 0:
            raise ValueError("resident units live on the main tier")
        return 0
    if t == 0:
        raise ValueError(f"mode {mode} needs a tier off the main one")
    return 2 * t - 1 if mode == "host" else 2 * t


def _compile(problem: Problem, overlap: bool | None = None) -> _Net:
    tiers = problem.tiers
    n, T = len(problem.units), len(tiers)
    E = np.array([[u.exec_s.get(t, math.inf) for t in tiers] for u in problem.units], float)
    F = np.array([[u.fetch_s.get(t, math.inf) for t in tiers] for u in problem.units], float)
    E, F = E.reshape(n, T), F.reshape(n, T)
    nopt = 2 * T - 1
    c, x, h = np.zeros((n, nopt)), np.zeros((n, nopt)), np.zeros((n, nopt))
    valid = np.zeros((n, nopt), bool)
    main_ok = np.isfinite(E[:, 0])
    valid[:, 0], c[:, 0] = main_ok, np.where(main_ok, E[:, 0], 0.0)
    for t in range(1, T):
        ok = np.isfinite(E[:, t])
        valid[:, 2 * t - 1], h[:, 2 * t - 1] = ok, np.where(ok, E[:, t], 0.0)
        ok = main_ok & np.isfinite(F[:, t])
        valid[:, 2 * t] = ok
        c[:, 2 * t] = np.where(ok, E[:, 0], 0.0)
        x[:, 2 * t] = np.where(ok, F[:, t], 0.0)
    layer_ids = sorted({u.layer for u in problem.units})
    pos = {v: k for k, v in enumerate(layer_ids)}
    net = _Net(b=np.array([u.bytes for u in problem.units], float),
               li=np.array([pos[u.layer] for u in problem.units], np.int64), layer_ids=layer_ids,
               c=c, x=x, h=h, valid=valid,
               cap=np.array([problem.budget[t] for t in tiers], float),
               overlap=problem.overlap if overlap is None else overlap)
    bad = np.flatnonzero(~valid.any(axis=1))
    if len(bad):
        raise ConfigError(f"unit {problem.units[bad[0]].name!r} cannot be placed in any tier "
                          "(every cost is inf)")
    return net


# ---- cost -------------------------------------------------------------------------------------
def _layer_time(C: float, X: float, H: float, overlap: bool) -> float:
    return (max(C, X) if overlap else C + X) + H


def cost(problem: Problem, placement: Placement) -> Breakdown:
    """Per-layer and total step time, bytes per tier and whether the placement fits and is legal."""
    tiers, main = problem.tiers, problem.main
    tix = {t: k for k, t in enumerate(tiers)}
    overlap = problem.overlap if placement.overlap is None else placement.overlap
    if len(placement.parts) != len(problem.units):
        raise ConfigError(f"the placement covers {len(placement.parts)} units, the problem has "
                          f"{len(problem.units)}")
    layers: dict[int, list[float]] = {u.layer: [0.0, 0.0, 0.0] for u in problem.units}
    used = dict.fromkeys(tiers, 0.0)
    stage, issues = 0.0, []
    for u, parts in zip(problem.units, placement.parts, strict=True):
        acc, total_f, streamed = layers[u.layer], 0.0, 0.0
        for p in parts:
            total_f += p.fraction
            legal = p.tier in tix and p.mode in MODES
            if not legal or (p.mode == "resident") != (p.tier == main):
                issues.append(f"unit {u.name!r}: {p.mode} on {p.tier!r} is not a placement")
                continue
            used[p.tier] += p.fraction * u.bytes
            if p.mode == "resident":
                acc[0] += p.fraction * u.exec_s.get(main, math.inf)
            elif p.mode == "host":
                acc[2] += p.fraction * u.exec_s.get(p.tier, math.inf)
            else:
                acc[0] += p.fraction * u.exec_s.get(main, math.inf)
                acc[1] += p.fraction * u.fetch_s.get(p.tier, math.inf)
                streamed += p.fraction
        if abs(total_f - 1.0) > 1e-6:
            issues.append(f"unit {u.name!r}: fractions sum to {total_f:g}, not 1")
        stage = max(stage, streamed * u.bytes)
    if placement.staging is not None:
        stage = placement.staging
    used[main] += stage
    rows = tuple(LayerTime(k, C, X, H, _layer_time(C, X, H, overlap))
                 for k, (C, X, H) in sorted(layers.items()))
    step = sum(r.time_s for r in rows)
    if not math.isfinite(step):
        issues.append("a unit is placed where its cost is inf (not allowed there)")
    for t in tiers:
        if used[t] > problem.budget[t] * (1 + _ROUND) + 1e-6:
            extra = " (staging buffer included)" if t == main and stage else ""
            issues.append(f"tier {t!r} holds {used[t] / GIB:.3f} GiB{extra}, over its budget of "
                          f"{problem.budget[t] / GIB:.3f} GiB")
    return Breakdown(step, rows, used, stage, not issues, tuple(issues))


# ---- incremental state for the greedy and the local search --------------------------------------
class _State:
    """An integral assignment with per-layer sums and per-tier bytes, updated move by move.

    `stage_cap` fixes the staging reserve (streams larger than it are not offered); None
    tracks the true reserve, the largest streamed unit.
    """

    def __init__(self, net: _Net, assign: Sequence[int], stage_cap: float | None):
        self.net, self.stage_cap = net, stage_cap
        self.a = [int(o) for o in assign]
        self.b = net.b.tolist()
        self.li = net.li.tolist()
        self.c, self.x, self.h = net.c.tolist(), net.x.tolist(), net.h.tolist()
        self.cap = net.cap.tolist()
        self.ov = net.overlap
        nl = len(net.layer_ids)
        self.C, self.X, self.H = [0.0] * nl, [0.0] * nl, [0.0] * nl
        self.used = [0.0] * net.T
        self.streams: Counter[float] = Counter()
        for i, o in enumerate(self.a):
            self._add(i, o, 1.0)

    def _add(self, i: int, o: int, s: float) -> None:
        L = self.li[i]
        self.C[L] += s * self.c[i][o]
        self.X[L] += s * self.x[i][o]
        self.H[L] += s * self.h[i][o]
        self.used[_tier_of(o)] += s * self.b[i]
        if _is_stream(o):
            self.streams[self.b[i]] += 1 if s > 0 else -1
            if self.streams[self.b[i]] <= 0:
                del self.streams[self.b[i]]

    def apply(self, i: int, o: int) -> None:
        self._add(i, self.a[i], -1.0)
        self.a[i] = o
        self._add(i, o, 1.0)

    def layer_time(self, L: int) -> float:
        return _layer_time(self.C[L], self.X[L], self.H[L], self.ov)

    def total(self) -> float:
        return sum(self.layer_time(L) for L in range(len(self.C)))

    def staging(self) -> float:
        if self.stage_cap is not None:
            return self.stage_cap
        return max(self.streams) if self.streams else 0.0

    def delta(self, i: int, o: int) -> float:
        """Change of the step time if unit i took option o."""
        L, p = self.li[i], self.a[i]
        ci, xi, hi = self.c[i], self.x[i], self.h[i]
        C = self.C[L] - ci[p] + ci[o]
        X = self.X[L] - xi[p] + xi[o]
        H = self.H[L] - hi[p] + hi[o]
        return _layer_time(C, X, H, self.ov) - self.layer_time(L)

    def _stage_after(self, i: int, o: int) -> float:
        if self.stage_cap is not None:
            return self.stage_cap
        b, was, now = self.b[i], _is_stream(self.a[i]), _is_stream(o)
        cur = max(self.streams) if self.streams else 0.0
        if now:
            return max(cur, b)
        if was and b >= cur and self.streams[b] == 1:
            rest = [s for s in self.streams if s != b]
            return max(rest) if rest else 0.0
        return cur

    def fits(self, i: int, o: int) -> bool:
        """Whether the capacities hold after unit i takes option o (given they hold now or the
        move leaves the source tier)."""
        p, b = self.a[i], self.b[i]
        tp, to = _tier_of(p), _tier_of(o)
        main = self.used[0] + (b if to == 0 else 0.0) - (b if tp == 0 else 0.0)
        if main + self._stage_after(i, o) > self.cap[0] * (1 + _ROUND) + 1e-6:
            return False
        if to != 0 and to != tp:
            return self.used[to] + b <= self.cap[to] * (1 + _ROUND) + 1e-6
        return True

    def over(self) -> list[int]:
        """Tiers over capacity (main includes the staging reserve)."""
        extra = [self.staging()] + [0.0] * (len(self.used) - 1)
        return [t for t, (u, e, c) in enumerate(zip(self.used, extra, self.cap, strict=True))
                if u + e > c * (1 + _ROUND) + 1e-6]


def _option_mask(net: _Net, stage_cap: float | None) -> np.ndarray:
    """(n, O) valid options; streams bigger than a fixed staging reserve are left out."""
    ok = net.valid.copy()
    if stage_cap is not None and net.T > 1:
        ok[:, 2::2] &= (net.b <= stage_cap * (1 + _ROUND))[:, None]
    return ok


def _options(net: _Net, stage_cap: float | None) -> list[list[int]]:
    """Valid options per unit as lists (see `_option_mask`)."""
    return [[o for o, v in enumerate(row) if v] for row in _option_mask(net, stage_cap).tolist()]


def _all_deltas(st: _State, ok: np.ndarray) -> np.ndarray:
    """(n, O) change of the step time for every single move from the current state (inf where
    the option is not allowed)."""
    net = st.net
    a = np.array(st.a)
    rows = np.arange(net.n)
    L = net.li
    C, X, H = np.array(st.C)[L], np.array(st.X)[L], np.array(st.H)[L]
    Cn = (C - net.c[rows, a])[:, None] + net.c
    Xn = (X - net.x[rows, a])[:, None] + net.x
    Hn = (H - net.h[rows, a])[:, None] + net.h
    if net.overlap:
        now, new = np.maximum(C, X) + H, np.maximum(Cn, Xn) + Hn
    else:
        now, new = C + X + H, Cn + Xn + Hn
    return np.where(ok, new - now[:, None], np.inf)


def _room(st: _State) -> np.ndarray:
    free = np.array(st.cap) - np.array(st.used)
    free[0] -= st.staging()
    return free


def _standalone(net: _Net, i: int, o: int) -> float:
    c, x, h = net.c[i, o], net.x[i, o], net.h[i, o]
    return (max(c, x) if net.overlap else c + x) + h


def _slowest_start(net: _Net, opts: list[list[int]]) -> list[int] | None:
    """Each unit in the slowest tier it may live in, in its cheapest mode there."""
    start = []
    for i, os_ in enumerate(opts):
        if not os_:
            return None
        t = max(_tier_of(o) for o in os_)
        here = [o for o in os_ if _tier_of(o) == t]
        start.append(min(here, key=lambda o: _standalone(net, i, o)))
    return start


def _repair(st: _State, opts: list[list[int]]) -> bool:
    """Move units out of over-full tiers, least time lost per byte first; False if stuck."""
    for _ in range(4 * len(st.cap)):
        over = st.over()
        if not over:
            return True
        t = over[-1]
        cands = []
        for i, o in enumerate(st.a):
            if _tier_of(o) != t and not (t == 0 and _is_stream(o)):
                continue
            d = min((st.delta(i, q) for q in opts[i] if q != o), default=None)
            if d is not None:
                cands.append((d / max(st.b[i], 1.0), i))
        cands.sort()
        for _, i in cands:
            if t not in st.over():
                break
            for _, q in sorted((st.delta(i, q), q) for q in opts[i] if q != st.a[i]):
                if _repair_ok(st, i, q, t):
                    st.apply(i, q)
                    break
    return not st.over()


def _loads(st: _State, i: int, q: int) -> list[float]:
    """Bytes per tier (main with its staging reserve) after unit i takes option q."""
    used = list(st.used)
    used[_tier_of(st.a[i])] -= st.b[i]
    used[_tier_of(q)] += st.b[i]
    used[0] += st._stage_after(i, q)
    return used


def _repair_ok(st: _State, i: int, q: int, t: int) -> bool:
    """A repair move must shrink tier t's load and push no other tier over (or further over)."""
    before = list(st.used)
    before[0] += st.staging()
    after = _loads(st, i, q)
    for k, (u0, u1, cap) in enumerate(zip(before, after, st.cap, strict=True)):
        limit = cap * (1 + _ROUND) + 1e-6
        if k == t:
            if u1 >= u0:
                return False
        elif u1 > limit and u1 > u0:
            return False
    return True


def _best_move(st: _State, i: int, opts: list[int]) -> tuple[float, float, int] | None:
    """The upward (or same-tier) move of unit i with the best time saved per byte that fits."""
    p = st.a[i]
    tp = _tier_of(p)
    best = None
    for o in opts:
        to = _tier_of(o)
        if o == p or to > tp:
            continue
        gain = -st.delta(i, o)
        if gain <= _EPS or not st.fits(i, o):
            continue
        prio = math.inf if to == tp else gain / max(st.b[i], 1.0)
        if best is None or (prio, gain) > (best[0], best[1]):
            best = (prio, gain, o)
    return best


def _improve(st: _State, opts: list[list[int]]) -> None:
    """Lazy greedy: repeatedly take the move with the best time saved per byte of faster tier.

    Entries go stale when their layer changes (overlap couples a layer's units); a stale entry
    is re-evaluated when it surfaces. Under overlap a sweep then re-offers the units of the
    layers that changed, until nothing moves.
    """
    n = len(st.a)
    lver = [0] * len(st.C)
    uver = [0] * n
    heap: list[tuple[float, float, int, int, int, int]] = []
    members: dict[int, list[int]] = {}
    for i, L in enumerate(st.li):
        members.setdefault(L, []).append(i)

    def push(i: int) -> None:
        m = _best_move(st, i, opts[i])
        if m is not None:
            heapq.heappush(heap, (-m[0], -m[1], i, m[2], uver[i], lver[st.li[i]]))

    todo: Sequence[int] = range(n)
    if st.stage_cap is not None and n > 64:
        heap = _first_moves(st, _option_mask(st.net, st.stage_cap))
        todo = []
    for _ in range(50):
        for i in todo:
            if st.a[i] != 0 or len(opts[i]) > 1:
                push(i)
        if not heap:
            return
        touched = set()
        while heap:
            _, _, i, o, uv, lv = heapq.heappop(heap)
            if uv != uver[i]:
                continue
            if lv != lver[st.li[i]] or not st.fits(i, o) or -st.delta(i, o) <= _EPS:
                push(i)
                continue
            st.apply(i, o)
            uver[i] += 1
            lver[st.li[i]] += 1
            touched.add(st.li[i])
            push(i)
        if not st.ov:  # without overlap a move never changes what another unit gains
            return
        todo = [i for L in sorted(touched) for i in members[L]]


def _first_moves(st: _State, ok: np.ndarray) -> list[tuple[float, float, int, int, int, int]]:
    """The heap of `_improve` for every unit at once (vectorised `_best_move`, fixed staging:
    a mode switch on the same tier then never changes the reserve)."""
    net = st.net
    a = np.array(st.a)
    tier = (np.arange(net.O) + 1) // 2
    tp = tier[a]
    gain = -_all_deltas(st, ok)
    room = _room(st)
    same = tier[None, :] == tp[:, None]
    fits = same | (net.b[:, None] <= room[tier][None, :] * (1 + _ROUND) + 1e-6)
    good = (tier[None, :] <= tp[:, None]) & (np.arange(net.O)[None, :] != a[:, None]) & fits \
        & (gain > _EPS)
    prio = np.where(same, np.inf, gain / np.maximum(net.b, 1.0)[:, None])
    prio = np.where(good, prio, -np.inf)
    o = prio.argmax(axis=1)
    rows = np.flatnonzero(good.any(axis=1))
    heap = [(-p, -g, i, oo, 0, 0) for p, g, i, oo in zip(
        prio[rows, o[rows]].tolist(), gain[rows, o[rows]].tolist(), rows.tolist(),
        o[rows].tolist(), strict=True)]
    heapq.heapify(heap)
    return heap


def _fill_start(net: _Net, stage_cap: float, top_down: bool) -> list[int] | None:
    """Vectorised start under a fixed staging reserve, each unit in its cheapest mode per tier.

    Bottom-up: every unit in the slowest tier it may use; where a tier overflows, the units
    gaining most per byte from a faster tier move up one tier. Top-down: the fastest tier
    takes the units gaining most per byte over their best slower tier, as many as fit, and so
    on down. None if it cannot fit everything.
    """
    stand = np.where(_option_mask(net, stage_cap),
                     (np.maximum(net.c, net.x) if net.overlap else net.c + net.x) + net.h, np.inf)
    tier = (np.arange(net.O) + 1) // 2
    per_tier = np.stack([np.where(tier == t, stand, np.inf) for t in range(net.T)], axis=1)
    best_o, best_c = per_tier.argmin(axis=2), per_tier.min(axis=2)  # (n, T)
    allowed = np.isfinite(best_c)
    if not allowed.any(axis=1).all():
        return None
    room = net.cap.astype(float).copy()
    room[0] -= stage_cap
    span = np.arange(net.T)
    per_byte = np.maximum(net.b, 1.0)
    if top_down:
        cur = np.full(net.n, -1)
        for t in range(net.T):
            here = np.flatnonzero((cur < 0) & allowed[:, t])
            slower = np.where(allowed[here, t + 1:], best_c[here, t + 1:], np.inf).min(axis=1) \
                if t + 1 < net.T else np.full(len(here), np.inf)
            order = here[np.argsort(-(slower - best_c[here, t]) / per_byte[here], kind="stable")]
            take = order[np.cumsum(net.b[order]) <= room[t] * (1 + _ROUND)]
            cur[take] = t
        if (cur < 0).any():
            return None
        return best_o[np.arange(net.n), cur].tolist()
    cur = np.where(allowed, span, -1).max(axis=1)
    for t in range(net.T - 1, -1, -1):
        here = np.flatnonzero(cur == t)
        if net.b[here].sum() <= room[t] * (1 + _ROUND):
            room[t] -= net.b[here].sum()
            continue
        faster = np.where(allowed[here, :t], best_c[here, :t], np.inf).min(axis=1) if t else \
            np.full(len(here), np.inf)
        gain = np.where(np.isfinite(faster), best_c[here, t] - faster, -np.inf)
        order = here[np.argsort(gain / per_byte[here], kind="stable")]
        keep = np.cumsum(net.b[order]) <= room[t] * (1 + _ROUND)
        up = order[~keep]
        if t == 0 or not allowed[up, :t].any(axis=1).all():
            return None
        room[t] -= net.b[order[keep]].sum()
        cur[up] = np.where(allowed[up, :t], span[:t], -1).max(axis=1)
    return best_o[np.arange(net.n), cur].tolist()


def _local_search(st: _State, opts: list[list[int]], sweeps: int = 20) -> None:
    """First-improvement single moves in any direction (the true staging reserve applies)."""
    n = len(st.a)
    for _ in range(sweeps):
        moved = False
        for i in range(n):
            best, bo = -_EPS, -1
            for o in opts[i]:
                if o != st.a[i]:
                    d = st.delta(i, o)
                    if d < best and st.fits(i, o):
                        best, bo = d, o
            if bo >= 0:
                st.apply(i, bo)
                moved = True
        if not moved:
            return


def _combos(choices: Sequence[Sequence[int]], start: int = 0, stop: int | None = None
            ) -> np.ndarray:
    """Rows start..stop of the cartesian product of `choices` (mixed radix, last varies last)."""
    radix = [len(c) for c in choices]
    k = np.arange(start, math.prod(radix) if stop is None else stop)
    out = np.empty((len(k), len(choices)), np.int64)
    for j, c in enumerate(choices):
        k, d = np.divmod(k, radix[j])
        out[:, j] = np.asarray(c, np.int64)[d]
    return out


def _vector_search(st: _State, rounds: int = 3) -> None:
    """Single-move local search for big problems: every move is scored at once, then the
    improving ones are applied best first, each re-checked against the current state."""
    ok = _option_mask(st.net, None)
    for _ in range(rounds):
        d = _all_deltas(st, ok)
        d[np.arange(st.net.n), st.a] = np.inf
        i_s, o_s = np.nonzero(d < -_EPS)
        if len(i_s) == 0:
            return
        moved = False
        for k in np.argsort(d[i_s, o_s], kind="stable").tolist():
            i, o = int(i_s[k]), int(o_s[k])
            if st.a[i] != o and st.delta(i, o) < -_EPS and st.fits(i, o):
                st.apply(i, o)
                moved = True
        if not moved:
            return


def _subsolve(st: _State, opts: list[list[int]], free: Sequence[int]) -> bool:
    """Re-place the `free` units optimally with every other unit fixed (vectorised brute force
    over their option combinations); True if the step time fell."""
    net, free = st.net, list(free)
    layers = sorted({st.li[i] for i in free})
    col = {L: k for k, L in enumerate(layers)}
    C = np.array([st.C[L] for L in layers])
    X, H = np.array([st.X[L] for L in layers]), np.array([st.H[L] for L in layers])
    used = np.array(st.used)
    streams = Counter(st.streams)
    for i in free:
        o = st.a[i]
        C[col[st.li[i]]] -= st.c[i][o]
        X[col[st.li[i]]] -= st.x[i][o]
        H[col[st.li[i]]] -= st.h[i][o]
        used[_tier_of(o)] -= st.b[i]
        if _is_stream(o):
            streams[st.b[i]] -= 1
    fixed_stage = max((b for b, k in streams.items() if k > 0), default=0.0)
    sel = _combos([opts[i] for i in free])
    cols = np.array([col[st.li[i]] for i in free])
    onehot = np.zeros((len(free), len(layers)))
    onehot[np.arange(len(free)), cols] = 1.0
    rows = np.array(free)
    Cn = C + net.c[rows, sel] @ onehot
    Xn = X + net.x[rows, sel] @ onehot
    Hn = H + net.h[rows, sel] @ onehot
    t = ((np.maximum(Cn, Xn) if net.overlap else Cn + Xn) + Hn).sum(axis=1)
    bf = net.b[rows]
    stage = np.maximum((bf * ((sel > 0) & (sel % 2 == 0))).max(axis=1), fixed_stage)
    tier = (sel + 1) // 2
    ok = np.ones(len(sel), bool)
    for k in range(net.T):
        load = used[k] + (bf * (tier == k)).sum(axis=1) + (stage if k == 0 else 0.0)
        ok &= load <= net.cap[k] * (1 + _ROUND) + 1e-6
    t = np.where(ok, t, np.inf)
    j = int(np.argmin(t))
    if not t[j] < sum(st.layer_time(L) for L in layers) - _EPS:
        return False
    for i, o in zip(free, sel[j].tolist(), strict=True):
        st.apply(i, o)
    return True


def _lns(st: _State, opts: list[list[int]], size: int = 6, patience: int = 12,
         seed: int = 0) -> None:
    """Large-neighbourhood search: re-place subsets of `size` units exactly until `patience`
    subsets in a row bring nothing. Subsets alternate between (a) the units that lose most
    against their best standalone option (capacity pushed them down) plus random others and
    (b) a random unit with the units closest to it in size - the swaps that repack a full tier."""
    n = len(st.a)
    if n <= size:
        _subsolve(st, opts, range(n))
        return
    rng = np.random.default_rng(seed)
    best_alone = [min(_standalone(st.net, i, o) for o in opts[i]) for i in range(n)]
    by_size = np.argsort(st.net.b, kind="stable")
    rank = np.empty(n, np.int64)
    rank[by_size] = np.arange(n)
    idle, turn = 0, 0
    while idle < patience:
        turn += 1
        if turn % 2:
            regret = np.array([_standalone(st.net, i, st.a[i]) - best_alone[i] for i in range(n)])
            top = np.argsort(-regret, kind="stable")[: size // 2].tolist()
            rest = [i for i in range(n) if i not in top]
            free = top + rng.choice(rest, size - len(top), replace=False).tolist()
        else:
            lo = int(np.clip(rank[rng.integers(n)] - size // 2, 0, n - size))
            free = by_size[lo:lo + size].tolist()
        if _subsolve(st, opts, free):
            _local_search(st, opts)
            idle = 0
        else:
            idle += 1


def _stage_candidates(net: _Net, limit: int) -> list[float]:
    """Staging reserves to try: none, then the distinct sizes of streamable units (thinned to
    `limit` by quantiles)."""
    can = net.valid[:, 2::2].any(axis=1) if net.T > 1 else np.zeros(net.n, bool)
    sizes = np.unique(net.b[can])
    sizes = sizes[sizes > 0]
    if len(sizes) > limit:
        sizes = np.unique(np.quantile(sizes, np.linspace(0, 1, limit), method="nearest"))
    return [0.0] + [float(v) for v in sizes]


def _ffd_state(net: _Net, stage_cap: float) -> _State | None:
    """First-fit decreasing: largest units first, each into its cheapest option that still has
    room - a feasibility fallback for tight budgets where the repair gets stuck."""
    opts = _options(net, stage_cap)
    st = _State(net, _slowest_start(net, opts) or [0] * net.n, stage_cap)
    room = list(net.cap)
    room[0] -= stage_cap
    if room[0] < 0:
        return None
    assign = [-1] * net.n
    for i in np.argsort(-net.b, kind="stable").tolist():
        for o in sorted(opts[i], key=lambda o: _standalone(net, i, o)):
            t = _tier_of(o)
            if net.b[i] <= room[t] * (1 + _ROUND) + 1e-6:
                room[t] -= net.b[i]
                assign[i] = o
                break
        else:
            return None
    st = _State(net, assign, stage_cap)
    if st.over():
        return None
    _improve(st, opts)
    return st


def _greedy_state(net: _Net, stage_cap: float) -> _State | None:
    """The density greedy under a fixed staging reserve (None if it finds nothing that fits)."""
    opts = _options(net, stage_cap)
    start = _fill_start(net, stage_cap, top_down=True) or _fill_start(net, stage_cap, False)
    if start is not None:
        st = _State(net, start, stage_cap)
    else:  # the slower repair loop: only worth it on small problems
        start = _slowest_start(net, opts) if net.n <= _SMALL else None
        if start is None:
            return None
        st = _State(net, start, stage_cap)
        if not _repair(st, opts):
            return None
    if st.over():
        return None
    _improve(st, opts)
    return st


def _dp_pack(net: _Net, stage_cap: float, mu: np.ndarray, ceil: bool) -> list[int] | None:
    """Knapsack DP over the bounded tiers: each unit takes the option minimising a separable
    surrogate of the step time (`mu` per layer weighs compute against transfer under overlap)
    subject to the capacities on a grid of bytes. Exact for separable problems up to the grid."""
    free = net.cap.copy()
    free[0] -= stage_cap
    if free[0] < 0:
        return None
    opts = [[o for o in os_ if net.b[i] <= free[_tier_of(o)] * (1 + _ROUND)]
            for i, os_ in enumerate(_options(net, stage_cap))]
    if not all(opts):
        return None
    used = {_tier_of(o) for os_ in opts for o in os_}
    bounded = [t for t in sorted(used) if free[t] < net.b.sum()]
    grid = _DP_GRID.get(len(bounded), 0)
    m = mu[net.li][:, None]
    cost = (m * net.c + (1 - m) * net.x if net.overlap else net.c + net.x) + net.h
    if not bounded:
        return [min(os_, key=lambda o: cost[i, o]) for i, os_ in enumerate(opts)]
    if not grid:
        return None
    cells = [max(free[t], 1.0) / grid for t in bounded]
    shape = (grid + 1,) * len(bounded)
    dp = np.full(shape, np.inf, np.float32)
    dp[(0,) * len(bounded)] = 0.0
    choice = np.zeros((net.n, *shape), np.int8)
    shifts: list[list[tuple[int, int]]] = []  # per unit, per option: (axis or -1, cells)
    tmp = np.empty(shape, np.float32)
    mask = np.empty(shape, bool)
    for i in range(net.n):
        sh = []
        for o in opts[i]:
            t = _tier_of(o)
            if t in bounded:
                k = bounded.index(t)
                q = net.b[i] / cells[k]
                sh.append((k, int(math.ceil(q - 1e-9)) if ceil else int(round(q))))
            else:
                sh.append((-1, 0))
        shifts.append(sh)
        new = np.full(shape, np.inf, np.float32)
        ch = choice[i]
        for k, ((ax, w), o) in enumerate(zip(sh, opts[i], strict=True)):
            if w > grid:
                continue
            axes = range(len(shape))
            src = tuple(slice(0, grid + 1 - w) if a == ax else slice(None) for a in axes)
            dst = tuple(slice(w, None) if a == ax else slice(None) for a in axes)
            t_, m_ = tmp[dst], mask[dst]
            np.add(dp[src], np.float32(cost[i, o]), out=t_)
            np.less(t_, new[dst], out=m_)
            np.copyto(new[dst], t_, where=m_)
            np.copyto(ch[dst], np.int8(k), where=m_)
        dp = new
    box = [grid] * len(bounded)
    for _ in range(8):  # rounding to the nearest cell can overfill: shrink the box and retry
        view = dp[tuple(slice(0, g + 1) for g in box)]
        if not np.isfinite(view).any():
            return None
        idx = list(np.unravel_index(int(np.argmin(view)), view.shape))
        assign = [0] * net.n
        for i in range(net.n - 1, -1, -1):
            k = int(choice[i][tuple(idx)])
            assign[i] = opts[i][k]
            ax, w = shifts[i][k]
            if ax >= 0:
                idx[ax] -= w
        over = [sum(net.b[i] for i, o in enumerate(assign) if _tier_of(o) == t) - free[t]
                for t in bounded]
        if all(v <= free[t] * _ROUND for v, t in zip(over, bounded, strict=True)):
            return assign
        box = [g - max(0, math.ceil(v / c)) for g, v, c in zip(box, over, cells, strict=True)]
        if min(box) < 0:
            return None
    return assign


def _dp_starts(net: _Net, stage_cap: float, mus: list[np.ndarray]) -> list[_State]:
    """Feasible states from the knapsack DP (both grid roundings, each layer weighting), each
    repaired if the rounding overfilled a tier and polished by single moves."""
    opts = _options(net, None)
    out = []
    for mu in mus:
        for ceil in (True, False):
            a = _dp_pack(net, stage_cap, mu, ceil)
            if a is None:
                continue
            st = _State(net, a, None)
            if st.over() and not _repair(st, opts):
                continue
            _local_search(st, opts)
            if not st.over():
                out.append(st)
    return out


def _finish(net: _Net, assign: Sequence[int], deep: bool) -> _State:
    """Re-evaluate with the true staging reserve and polish: single moves, then on small
    problems (`deep`) the large-neighbourhood search."""
    st = _State(net, assign, None)
    if net.n > 2000:
        _vector_search(st)
        return st
    opts = _options(net, None)
    _local_search(st, opts)
    if deep or net.n <= _LNS_MAX:
        _lns(st, opts, patience=12 if deep else 20)
    return st


def _placement(problem: Problem, assign: Sequence[int]) -> Placement:
    return Placement.integral([(problem.tiers[_tier_of(o)], _mode_of(o)) for o in assign])


# ---- planners ---------------------------------------------------------------------------------
def plan_greedy(problem: Problem, *, local_search: bool = True) -> Placement:
    """Fast plan: slowest tier first, then upward moves by time saved per byte, per staging size.

    For each candidate staging reserve S (0 = no streaming, then sizes of streamable units)
    every unit starts in the slowest tier it may use; over-full tiers are repaired; then the lazy
    greedy moves units to faster tiers (or switches host <-> stream) by seconds saved per byte
    until nothing fits or helps. A local search of single moves polishes the best with the true
    staging reserve. Density greedy can miss by tens of percent when a few large units decide
    what fits, so small problems (<= 48 units) add, per S, a knapsack DP over the bounded tiers
    and finish with a large-neighbourhood search that re-places subsets of 6 units exactly
    (problems up to 600 units get the LNS too). If no heuristic finds any placement that fits,
    the MILP of `plan_lp` is asked (20 s limit) before the budgets are declared infeasible.
    """
    _check(problem)
    net = _compile(problem)
    small = local_search and net.n <= _SMALL
    found: list[tuple[float, list[int]]] = []
    for S in _stage_candidates(net, 8 if small else 4):
        st = _greedy_state(net, S)
        if st is not None:
            found.append((st.total(), st.a))
        ffd = _ffd_state(net, S) if small else None
        if ffd is not None:
            found.append((ffd.total(), ffd.a))
            st = st or ffd
        if small:
            mus = [np.ones(len(net.layer_ids))]
            if net.overlap:
                mus = [np.array([float(C >= X) for C, X in zip(st.C, st.X, strict=True)])
                       if st is not None else np.zeros(len(net.layer_ids)), mus[0]]
            found.extend((d.total(), d.a) for d in _dp_starts(net, S, mus))
    if not found:  # big problems: first-fit decreasing
        found = [(f.total(), f.a) for f in map(lambda S: _ffd_state(net, S),
                 _stage_candidates(net, 4)) if f is not None]
    if not found:  # budgets so tight that only an exact packing fits: ask the MILP
        found = _milp_start(net)
    if not found:
        raise ConfigError("no placement fits the budgets (capacities and the staging buffer); "
                          f"the model needs {sum(u.bytes for u in problem.units) / GIB:.2f} GiB")
    found.sort(key=lambda f: f[0])
    assign = found[0][1]
    if local_search:
        best = None
        starts = list({tuple(a): a for _, a in found}.values())[: 3 if small else 1]
        for a in starts:
            st = _finish(net, a, deep=small)
            if not st.over() and (best is None or st.total() < best.total() - _EPS):
                best = st
        if best is not None:
            assign = best.a
    return _placement(problem, assign)


def _milp_start(net: _Net, time_limit: float = 20.0) -> list[tuple[float, list[int]]]:
    """The MILP's placement when the heuristics found none (tight packing); [] if none."""
    try:
        _, frac = _lp_solve(net, integral=True, time_limit=time_limit)
    except ConfigError:
        return []
    st = _State(net, np.where(net.valid, frac, -1.0).argmax(axis=1).tolist(), None)
    return [] if st.over() else [(st.total(), st.a)]


def _lp_matrices(net: _Net) -> tuple[np.ndarray, Any, np.ndarray, Any, np.ndarray, np.ndarray]:
    """(cost, A_ub, b_ub, A_eq, b_eq, var index) of the FlexGen-style LP over (unit, option)."""
    from scipy import sparse

    n, nopt, T = net.n, net.O, net.T
    var = np.flatnonzero(net.valid.ravel())
    vi, vo = var // nopt, var % nopt
    nv, nl = len(var), len(net.layer_ids)
    nz = nl if net.overlap else 0
    s_col = nv + nz
    ncol = s_col + 1
    cv, xv, hv = (a.ravel()[var] for a in (net.c, net.x, net.h))
    cost_vec = np.zeros(ncol)
    if net.overlap:
        cost_vec[:nv] = hv
        cost_vec[nv:nv + nz] = 1.0
    else:
        cost_vec[:nv] = cv + xv + hv
    rows, cols, vals, rhs = [], [], [], []
    r = 0
    tier = (vo + 1) // 2
    stream = (vo > 0) & (vo % 2 == 0)
    scale = max(float(net.b.max()), 1.0)  # bytes in units of the largest unit: HiGHS likes O(1)
    bv = net.b[vi] / scale
    for t in range(T):  # capacities; the main tier also holds the staging reserve
        if not math.isfinite(net.cap[t]):
            continue
        sel = np.flatnonzero((tier == t) & ~(stream & (t == 0)))
        rows.append(np.full(len(sel), r))
        cols.append(sel)
        vals.append(bv[sel])
        if t == 0:
            rows.append(np.array([r]))
            cols.append(np.array([s_col]))
            vals.append(np.array([1.0]))
        rhs.append(net.cap[t] / scale)
        r += 1
    sv = np.flatnonzero(stream)  # staging >= bytes_i * stream fraction of i
    if len(sv):
        units, first = np.unique(vi[sv], return_inverse=True)
        rows.append(r + first)
        cols.append(sv)
        vals.append(bv[sv])
        rows.append(r + np.arange(len(units)))
        cols.append(np.full(len(units), s_col))
        vals.append(np.full(len(units), -1.0))
        rhs.extend([0.0] * len(units))
        r += len(units)
    if net.overlap:  # epigraph: z_L >= compute_L and z_L >= transfer_L
        L = net.li[vi]
        for coef in (cv, xv):
            rows.append(r + L)
            cols.append(np.arange(nv))
            vals.append(coef)
            rows.append(r + np.arange(nl))
            cols.append(nv + np.arange(nl))
            vals.append(np.full(nl, -1.0))
            rhs.extend([0.0] * nl)
            r += nl
    A_ub = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(r, ncol))
    A_eq = sparse.csr_matrix((np.ones(nv), (vi, np.arange(nv))), shape=(n, ncol))
    return cost_vec, A_ub, np.array(rhs), A_eq, np.ones(n), var


def _lp_solve(net: _Net, integral: bool, time_limit: float = 60.0) -> tuple[float, np.ndarray]:
    """Solve the LP (or the MILP); returns (objective, fractions (n, O))."""
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp

    cost_vec, A_ub, b_ub, A_eq, b_eq, var = _lp_matrices(net)
    # seconds scaled so the step is O(1e3): HiGHS's absolute MIP gap (1e-6) stays negligible
    unit = 1e3 / max(float(np.abs(cost_vec).max()) * max(net.n, 1), 1e-300)
    cost_vec = cost_vec * unit
    ncol = len(cost_vec)
    nv = len(var)
    ub = np.full(ncol, np.inf)
    ub[:nv] = 1.0
    if integral:  # the same slack as `_State`, less HiGHS's feasibility tolerance (1e-7)
        integ = np.zeros(ncol)
        integ[:nv] = 1
        rhs = np.where(b_ub > 0, b_ub * (1 + _ROUND) - 2e-7, b_ub)
        res = milp(cost_vec, integrality=integ, bounds=Bounds(np.zeros(ncol), ub),
                   constraints=[LinearConstraint(A_ub, -np.inf, rhs),
                                LinearConstraint(A_eq, b_eq, b_eq)],
                   options={"time_limit": time_limit, "mip_rel_gap": 1e-9})
    else:
        res = linprog(cost_vec, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq,
                      bounds=np.stack([np.zeros(ncol), ub], axis=1), method="highs")
    ok = res.x is not None and (res.status in (0, 1) if integral else res.status == 0)
    if not ok:
        raise ConfigError(f"no placement fits the budgets (solver: {res.message})")
    frac = np.zeros(net.n * net.O)
    frac[var] = np.clip(res.x[:nv], 0.0, 1.0)
    return float(res.fun) / unit, frac.reshape(net.n, net.O)


def plan_lp(problem: Problem) -> LPResult:
    """The FlexGen-style LP (HiGHS): its fractional optimum bounds every placement from below.

    Variables are the fractions of each unit in each (tier, mode), one epigraph variable per
    layer for the max() under overlap, and the staging reserve. The rounding takes each unit's
    largest fraction, repairs capacities, then runs the greedy moves and the local search; when
    the greedy plan is faster (rounding a fractional max() is weak under overlap) that is
    returned instead, marked ``rounded_by="greedy"``.
    """
    _check(problem)
    net = _compile(problem)
    bound, frac = _lp_solve(net, integral=False)
    tiers = problem.tiers
    fractional = Placement(tuple(
        tuple(Part(tiers[_tier_of(o)], _mode_of(o), float(f)) for o, f in enumerate(row)
              if f > 1e-9) for row in frac))
    greedy = plan_greedy(problem)
    assign = _round(net, frac)
    if assign is None or _State(net, assign, None).total() > cost(problem, greedy).step_s:
        return LPResult(bound, fractional, greedy, cost(problem, greedy).step_s, "greedy")
    placement = _placement(problem, assign)
    return LPResult(bound, fractional, placement, cost(problem, placement).step_s, "lp")


def _round(net: _Net, frac: np.ndarray) -> list[int] | None:
    masked = np.where(net.valid, frac, -1.0)
    st = _State(net, masked.argmax(axis=1).tolist(), None)
    opts = _options(net, None)
    if not _repair(st, opts):
        return None
    _improve(st, opts)
    st = _finish(net, st.a, deep=net.n <= _SMALL)
    return None if st.over() else st.a


def plan_exact(problem: Problem, *, max_combinations: int = 200_000) -> Placement:
    """The optimal integral placement of a small problem (up to ~24 units).

    Brute force over every combination of options when there are at most `max_combinations`,
    else the same model as `plan_lp` solved as a MILP (HiGHS branch and bound), which is exact.
    """
    _check(problem)
    net = _compile(problem)
    if net.n > 24:
        raise ConfigError(f"plan_exact is for small problems (<= 24 units), this has {net.n}")
    opts = _options(net, None)
    combos = math.prod(len(o) for o in opts)
    if combos <= max_combinations:
        assign = _brute_force(net, opts)
    else:
        _, frac = _lp_solve(net, integral=True)
        assign = np.where(net.valid, frac, -1.0).argmax(axis=1).tolist()
    if assign is None or _State(net, assign, None).over():
        raise ConfigError("no placement fits the budgets (capacities and the staging buffer)")
    return _placement(problem, assign)


def _brute_force(net: _Net, opts: list[list[int]], chunk: int = 20_000) -> list[int] | None:
    """Evaluate every combination, vectorised in chunks; None if none fits."""
    n, nl = net.n, len(net.layer_ids)
    onehot = np.zeros((n, nl))
    onehot[np.arange(n), net.li] = 1.0
    total = math.prod(len(o) for o in opts)
    rows = np.arange(n)
    best, best_t = None, math.inf
    for start in range(0, total, chunk):
        sel = _combos(opts, start, min(total, start + chunk))
        C = net.c[rows, sel] @ onehot
        X = net.x[rows, sel] @ onehot
        H = net.h[rows, sel] @ onehot
        t = ((np.maximum(C, X) if net.overlap else C + X) + H).sum(axis=1)
        tier = (sel + 1) // 2
        stream = (sel > 0) & (sel % 2 == 0)
        stage = (net.b * stream).max(axis=1)
        ok = np.ones(len(sel), bool)
        for tt in range(net.T):
            used = (net.b * (tier == tt)).sum(axis=1) + (stage if tt == 0 else 0.0)
            ok &= used <= net.cap[tt] * (1 + _ROUND) + 1e-6
        t = np.where(ok, t, np.inf)
        j = int(np.argmin(t))
        if t[j] < best_t:
            best_t, best = float(t[j]), sel[j].tolist()
    return best


# ---- the accelerate baseline ---------------------------------------------------------------------
def accelerate_roles(problem: Problem) -> tuple[list[str], str | None]:
    """(tiers that keep a largest-layer reserve, the tier filled without a limit).

    accelerate reserves room for the largest remaining layer on its "main devices" - the first
    GPU and the CPU, or the CPU alone on a machine without a GPU - and never limits "disk".
    """
    tiers = problem.tiers
    reserve = [tiers[0]]
    rest = list(tiers[1:])
    if problem.main not in HOST_NAMES and rest and rest[0] not in DISK_NAMES:
        reserve.append(rest.pop(0))
    return reserve, (rest[-1] if rest else None)


def plan_accelerate(problem: Problem) -> Placement:
    """What ``accelerate.infer_auto_device_map(model, max_memory=budget)`` would place.

    Mirrors accelerate/utils/modeling.py (``infer_auto_device_map``): modules are taken in order
    and a decoder layer is never split (``no_split_module_classes``), so a layer's weight/expert
    units move together. A layer goes on the current device if ``used + size <= max_memory -
    reserve`` where, on the main devices, reserve = the largest layer not yet placed
    (``max_layer_size``, recomputed as layers are consumed); otherwise that reserve is charged
    and the walk moves on to the next device for good (no back-filling). The last non-main tier
    plays accelerate's "disk" and is filled without a limit (its real budget is still checked by
    `cost`). KV and activations are not modules: accelerate leaves no room for them; here they
    sit on the main tier and `cost` says whether they still fit. Off-main units are streamed by
    the offload hooks each forward, without overlap; the staging reserve is the largest streamed
    layer. The budgets stand for ``max_memory`` (accelerate's own default keeps 10% of a lone
    GPU free; pass the budget you mean).
    """
    _check(problem)
    tiers, main = problem.tiers, problem.main
    groups: dict[int, list[int]] = {}
    for i, u in enumerate(problem.units):
        if u.kind in ("weights", "expert"):
            groups.setdefault(u.layer, []).append(i)
    order = sorted(groups)
    size = [sum(problem.units[i].bytes for i in groups[L]) for L in order]
    after = np.maximum.accumulate(np.array([0.0] + size[::-1]))[::-1][1:].tolist()
    reserve_tiers, unbounded = accelerate_roles(problem)
    tier_of: dict[int, str] = {}
    dev, used = 0, dict.fromkeys(tiers, 0.0)
    for k, L in enumerate(order):
        while True:
            t = tiers[dev]
            reserve = after[k] if t in reserve_tiers else 0.0  # the largest layer still to place
            last = dev == len(tiers) - 1
            if t == unbounded or last or used[t] + size[k] <= problem.budget[t] - reserve:
                break
            used[t] += reserve
            dev += 1
        used[t] += size[k]
        tier_of[L] = t
    choices, streamed = [], {}
    for u in problem.units:
        t = tier_of.get(u.layer, main) if u.kind in ("weights", "expert") else main
        choices.append((t, "resident" if t == main else "stream"))
        if t != main:
            streamed[u.layer] = streamed.get(u.layer, 0.0) + u.bytes
    return Placement.integral(choices, staging=max(streamed.values(), default=0.0), overlap=False)


# ---- records ----------------------------------------------------------------------------------
def _num(v: float) -> float | None:
    return v if math.isfinite(v) else None


def plan_record(problem: Problem, placement: Placement, method: str) -> dict[str, Any]:
    """A `plan` record: where every unit goes, bytes per tier and the predicted step time."""
    br = cost(problem, placement)
    units = []
    modes: Counter[str] = Counter()
    for u, parts in zip(problem.units, placement.parts, strict=True):
        units.append({"name": u.name, "layer": u.layer, "kind": u.kind, "bytes": u.bytes,
                      "parts": [{"tier": p.tier, "mode": p.mode, "fraction": p.fraction}
                                for p in parts]})
        for p in parts:
            modes[p.mode] += p.fraction
    total = sum(u.bytes for u in problem.units)
    off = sum(p.fraction * u.bytes
              for u, parts in zip(problem.units, placement.parts, strict=True)
              for p in parts if p.tier != problem.main)
    return {
        "v": 1, "kind": "plan", "method": method, "objective": problem.objective,
        "main": problem.main, "tiers": list(problem.tiers),
        "overlap": problem.overlap if placement.overlap is None else placement.overlap,
        "budget": {t: _num(problem.budget[t]) for t in problem.tiers},
        "bytes": dict(br.bytes), "staging": br.staging, "staging_fixed": placement.staging,
        "step_s": _num(br.step_s), "feasible": br.feasible, "problems": list(br.problems),
        "layers": [{"layer": r.layer, "time_s": _num(r.time_s), "compute_s": _num(r.compute_s),
                    "transfer_s": _num(r.transfer_s), "host_s": _num(r.host_s)}
                   for r in br.layers],
        "units": units,
        "totals": {"units": len(problem.units), "bytes": total, "offloaded_bytes": off,
                   "resident": modes["resident"], "host": modes["host"],
                   "stream": modes["stream"]},
    }


def placement_from_record(rec: Mapping[str, Any]) -> Placement:
    """The placement a `plan` record describes (units in record order)."""
    if rec.get("kind") != "plan":
        raise ConfigError(f"expected a plan record, got kind {rec.get('kind')!r}")
    try:
        parts = tuple(tuple(Part(str(p["tier"]), str(p["mode"]), float(p["fraction"]))
                            for p in u["parts"]) for u in rec["units"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"malformed plan record: {e}") from None
    staging = rec.get("staging_fixed")
    return Placement(parts, staging=None if staging is None else float(staging),
                     overlap=rec.get("overlap"))


__all__ = ["Breakdown", "LPResult", "LayerTime", "Part", "Placement", "Problem", "Unit",
           "accelerate_roles", "cost", "placement_from_record", "plan_accelerate", "plan_exact",
           "plan_greedy", "plan_lp", "plan_record"]
