"""Size a per-layer MoE expert cache from a routing trace.

A trace holds, for every token and MoE layer, the `top_k` experts the router picked. Each layer
keeps its own cache of C experts (C = 1..experts). Within a token the k experts are requested
one after another in trace order (demand paging: a missing expert is loaded into the cache,
evicting one if it is full), so cache sizes below top_k still make sense.

Hit rates count every request: ``hit_rate = hits / requests``. A layer's first request of an
expert is a *compulsory* miss - no cache of any size avoids it - and ``warm_hit_rate`` leaves
those out: ``hits / (requests - compulsory)``; a cache that holds every expert reaches a warm
hit rate of exactly 1.

Policies: ``lru`` (evict the least recently used), ``lfu`` (the least often used so far,
counting every request since the trace began; ties go to the least recent) and ``belady``
(Belady's MIN: the one whose next request is farthest away, or never comes - the offline
optimum for demand paging). All three rank experts by a priority that does not depend on C,
so each is a stack algorithm (Mattson et al., 1970): one pass over the trace with a priority
stack per layer yields the hits of every cache size at once. The pass runs over tokens and
slots and is vectorised across layers and policies.

`segment_cache_hit_rate` (SCH) and `segment_routing_performance` (SRP) are the local routing
consistency metrics of Liang et al., "Not All Models Suit Expert Offloading: On Local Routing
Consistency of Mixture-of-Expert Models" (2025), as computed by their code (github.com/ljcleo/
moe-lrc, src/40_sch_calc.py and src/30_srp_calc.py): over every window of m consecutive tokens,
SCH(m, C) is the share of the window's requests that the best fixed set of C experts for that
window would serve (the C most requested in it), averaged over windows; SRP(m) is the best F1,
over thresholds c, of predicting "the experts requested at least c times in the window" as the
window's experts for all of its m tokens. (A later revision of the paper redefines SCH as the
hit rate of a cache that evicts by the number of requests in the next m tokens; the segment
form is the one implemented here.)
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memstack.core.errors import ConfigError, InputError

POLICIES = ("lru", "lfu", "belady")
_PHANTOM = -(1 << 62)  # priority of an expert a layer has not requested yet: an empty slot
_NEVER = 1 << 40  # "next request" of an expert that is not requested again
_CHUNK = 4096  # steps whose keys are built at once (bounds the memory of long traces)


# ---- loading -------------------------------------------------------------------------------------
def _check_shape_args(experts: int, top_k: int) -> None:
    if experts < 1 or top_k < 1 or top_k > experts:
        raise ConfigError(f"need 1 <= top_k <= experts (got top_k={top_k}, experts={experts})")


def _read_array(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            f.seek(0)
            if magic.startswith(b"PK"):
                with np.load(f, allow_pickle=False) as z:
                    if len(z.files) != 1:
                        raise InputError(path, "header", f"an .npz trace holds one array, this "
                                                         f"one holds {len(z.files)}")
                    return z[z.files[0]]
            return np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "header", "no such file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise InputError(path, "header", f"not a readable .npy/.npz array ({e})") from None


def load_trace(path: str | Path, experts: int, top_k: int) -> np.ndarray:
    """A routing trace as an int array (tokens, layers, top_k) of expert ids.

    Accepts .npy or single-array .npz holding ints (tokens, layers, top_k) or (tokens, top_k),
    or router logits as floats (tokens, layers, experts) or (tokens, experts), of which the
    top_k largest per token and layer are taken (highest first). Anything else is an
    InputError naming the file and "header" or the first bad "token T layer L".
    """
    _check_shape_args(experts, top_k)
    src = str(path)
    arr = _read_array(src)
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise InputError(src, "header", f"dtype {arr.dtype} is neither integer ids nor float "
                                        "router logits")
    if arr.ndim not in (2, 3):
        raise InputError(src, "header", f"expected (tokens, [layers,] k) but the array has "
                                        f"{arr.ndim} dimensions {arr.shape}")
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(src, "header", f"empty trace {arr.shape}")
    if arr.dtype.kind == "f":
        return _top_k_of_logits(src, arr, experts, top_k)
    if arr.shape[2] != top_k:
        raise InputError(src, "header", f"the last dimension is {arr.shape[2]}, not top_k="
                                        f"{top_k}")
    bad = ((arr < 0) | (arr >= experts)).any(axis=2)
    if bad.any():
        t, layer = np.argwhere(bad)[0]
        v = arr[t, layer]
        raise InputError(src, f"token {t} layer {layer}",
                         f"expert ids {v.tolist()} outside 0..{experts - 1}")
    ids = np.sort(arr, axis=2)
    dup = (ids[:, :, 1:] == ids[:, :, :-1]).any(axis=2)
    if dup.any():
        t, layer = np.argwhere(dup)[0]
        raise InputError(src, f"token {t} layer {layer}",
                         f"expert {arr[t, layer].tolist()} picked twice in one top-k")
    return np.ascontiguousarray(arr, dtype=_id_dtype(experts))


def _top_k_of_logits(src: str, arr: np.ndarray, experts: int, top_k: int) -> np.ndarray:
    if arr.shape[2] != experts:
        raise InputError(src, "header", f"router logits have {arr.shape[2]} experts, not "
                                        f"{experts}")
    bad = ~np.isfinite(arr).all(axis=2)
    if bad.any():
        t, layer = np.argwhere(bad)[0]
        raise InputError(src, f"token {t} layer {layer}", "router logits are not finite")
    part = np.argpartition(-arr, top_k - 1, axis=2)[:, :, :top_k]
    order = np.argsort(-np.take_along_axis(arr, part, axis=2), axis=2, kind="stable")
    return np.ascontiguousarray(np.take_along_axis(part, order, axis=2),
                                dtype=_id_dtype(experts))


def _id_dtype(experts: int) -> type:
    return np.int16 if experts <= np.iinfo(np.int16).max else np.int32


def _as_trace(trace: np.ndarray, experts: int) -> np.ndarray:
    """Accept (tokens, top_k) as one layer; reject ids a cache of `experts` cannot hold."""
    tr = np.asarray(trace)
    if tr.ndim == 2:
        tr = tr[:, None, :]
    if tr.ndim != 3 or tr.size == 0 or tr.dtype.kind not in "iu":
        raise ConfigError(f"a trace is a non-empty int array (tokens, layers, top_k), got "
                          f"{tr.dtype} {tr.shape}")
    if experts < 1 or tr.min() < 0 or tr.max() >= experts:
        raise ConfigError(f"expert ids must lie in 0..{experts - 1}")
    return tr


# ---- cache simulation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheCurve:
    """Hits of one policy for cache sizes 1..experts, per layer."""

    policy: str
    hits: np.ndarray  # (layers, experts): column C-1 = hits of a C-expert cache
    requests: np.ndarray  # (layers,)
    compulsory: np.ndarray  # (layers,) first requests of each expert

    @property
    def sizes(self) -> list[int]:
        return list(range(1, self.hits.shape[1] + 1))

    @property
    def hit_rate(self) -> np.ndarray:
        return self.hits / self.requests[:, None]

    @property
    def warm_hit_rate(self) -> np.ndarray:
        return self.hits / np.maximum(self.requests - self.compulsory, 1)[:, None]

    @property
    def overall(self) -> np.ndarray:
        return self.hits.sum(axis=0) / self.requests.sum()

    @property
    def overall_warm(self) -> np.ndarray:
        return self.hits.sum(axis=0) / max(int((self.requests - self.compulsory).sum()), 1)


def _groups(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests of a flattened trace (steps, layers) sorted by (layer, expert, step): the order,
    their steps and whether each continues the group of the one before."""
    steps, layers = seq.shape
    flat_layer = np.broadcast_to(np.arange(layers), seq.shape).ravel()
    flat_step = np.broadcast_to(np.arange(steps)[:, None], seq.shape).ravel()
    ids = seq.ravel().astype(np.int64)
    order = np.lexsort((flat_step, ids, flat_layer))
    same = np.zeros(len(order), bool)
    same[1:] = (ids[order[1:]] == ids[order[:-1]]) & \
        (flat_layer[order[1:]] == flat_layer[order[:-1]])
    return order, flat_step[order], same


def _next_use(seq: np.ndarray) -> np.ndarray:
    """For a flattened trace (steps, layers): the step of each request's next request of the same
    expert in the same layer, or _NEVER."""
    order, steps, same = _groups(seq)
    nxt = np.full(seq.size, _NEVER, np.int64)
    nxt[order[:-1][same[1:]]] = steps[1:][same[1:]]
    return nxt.reshape(seq.shape)


def _request_count(seq: np.ndarray) -> np.ndarray:
    """(steps, layers): how many requests of its expert its layer has seen, this one included."""
    order, _, same = _groups(seq)
    start = np.flatnonzero(~same)
    run = np.arange(len(order)) - np.repeat(start, np.diff(np.append(start, len(order))))
    out = np.empty(seq.size, np.int64)
    out[order] = run + 1
    return out.reshape(seq.shape)


def _key_sources(seq: np.ndarray, policies: Sequence[str]) -> list[np.ndarray | None]:
    """Per policy, what its priorities are built from: nothing (lru: recency), the request
    counts (lfu) or the next request steps, -1 for never (belady)."""
    out: list[np.ndarray | None] = []
    for name in policies:
        if name == "lru":
            out.append(None)
        elif name == "lfu":
            out.append(_request_count(seq).astype(np.int32))
        else:
            nxt = _next_use(seq)
            out.append(np.where(nxt == _NEVER, -1, nxt).astype(np.int32))
    return out


def _new_keys(seq: np.ndarray, policies: Sequence[str], sources: list[np.ndarray | None],
              lo: int, hi: int) -> np.ndarray:
    """(hi-lo, policies*layers): the priority each request gives its expert (higher = kept):
    lru its step; lfu its request count, then its step; belady minus its next request step
    (never: below every real one, by expert id)."""
    step = np.arange(lo, hi, dtype=np.int64)[:, None]
    out = []
    for name, src in zip(policies, sources, strict=True):
        if src is None:
            out.append(np.broadcast_to(step, (hi - lo, seq.shape[1])))
        elif name == "lfu":
            out.append((src[lo:hi].astype(np.int64) << 32) | step)
        else:
            nxt = src[lo:hi].astype(np.int64)
            out.append(np.where(nxt < 0, -(_NEVER + seq[lo:hi].astype(np.int64)), -nxt))
    return np.concatenate(out, axis=1)


def simulate(trace: np.ndarray, experts: int,
             policies: Sequence[str] = POLICIES) -> dict[str, CacheCurve]:
    """Hits of every policy and cache size 1..experts, per layer.

    LRU has a closed form (a request's depth is the number of distinct experts since its
    previous request) and needs no pass. LFU and Belady share one pass over the requests,
    vectorised across (policy, layer) lanes: each lane keeps a priority stack where position d
    holds the expert that a cache of d+1 experts holds but one of d does not. A request at
    depth d hits every cache larger than d; the expert moves to the top and, down to its old
    depth, the chain of prefix-minimum priorities shifts one link down (Mattson's update for
    priority algorithms). Experts not yet requested sit in the stack as empty slots with the
    lowest priorities. About 50 us per request step on a slow core, so 100k tokens x top-2
    take ~10 s whatever the number of layers.
    """
    tr = _as_trace(trace, experts)
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        raise ConfigError(f"unknown cache policy {bad}; choose from {', '.join(POLICIES)}")
    T, L, k = tr.shape
    seq = np.ascontiguousarray(tr.transpose(0, 2, 1).reshape(T * k, L))  # step = token*k + slot
    first = _first_requests(seq)
    out = {"lru": _lru(seq, first, experts)} if "lru" in policies else {}
    rest = [p for p in policies if p != "lru"]
    if rest:
        out.update(_stack_pass(seq, first, experts, rest))
    return {p: out[p] for p in policies}


def _lru(seq: np.ndarray, first: np.ndarray, experts: int) -> CacheCurve:
    """LRU without a pass: a request's stack depth is the number of distinct experts its layer
    requested since its previous request of the same expert."""
    N, L = seq.shape
    hist = np.zeros((L, experts + 1), np.int64)
    steps = np.arange(N)
    for layer in range(L):
        s = seq[:, layer].astype(np.int64)
        prev = np.full(N, -1)
        order = np.lexsort((steps, s))
        same = s[order[1:]] == s[order[:-1]]
        prev[order[1:][same]] = order[:-1][same]
        depth = np.zeros(N, np.int64)
        for e in range(experts):  # first request of e at or after each step
            nxt = np.minimum.accumulate(np.where(s == e, steps, N)[::-1])[::-1]
            nxt = np.append(nxt, N)
            depth += nxt[prev + 1] < steps
        depth[first[:, layer]] = experts
        hist[layer] = np.bincount(depth, minlength=experts + 1)
    return _curves(hist, ["lru"], L, experts, N)["lru"]


def _stack_pass(seq: np.ndarray, first: np.ndarray, experts: int,
                policies: Sequence[str]) -> dict[str, CacheCurve]:
    """The priority-stack pass for the policies whose depth has no closed form."""
    N, L = seq.shape
    P, E = len(policies), experts
    B = P * L
    sources = _key_sources(seq, policies)
    ar = np.arange(E)
    off = (np.arange(B) * E)[:, None]  # flat indices: lane b, column j -> b*E + j
    arf = ar + off  # positions, flat
    stack = arf.copy()  # experts by stack position, as flat indices into key/inv
    inv = np.tile(ar, (B, 1))  # stack position of each expert
    key = np.tile(_PHANTOM + ar, (B, 1)).astype(np.int64)
    big = np.iinfo(np.int64).max
    pm_prev = np.full((B, E), big, np.int64)
    last_prev = off - 1 + np.zeros((B, E), np.int64)
    negf = off - 1 + np.zeros((B, E), np.int64)
    hist = np.zeros((B, E + 1), np.int64)
    for lo in range(0, N, _CHUNK):
        hi = min(N, lo + _CHUNK)
        new_key = _new_keys(seq, policies, sources, lo, hi)
        lanes_x = np.tile(seq[lo:hi].astype(np.int64), (1, P)) + off[:, 0]
        depth = np.empty((hi - lo, B), np.int64)
        for s in range(hi - lo):
            xf = lanes_x[s]  # the requested expert in each lane, flat
            pos = inv.take(xf)
            depth[s] = pos
            key.put(xf, -big)  # its own slot closes the chain of prefix minima
            masked = np.where(ar <= pos[:, None], key.take(stack), big)
            np.minimum.accumulate(masked[:, :-1], axis=1, out=pm_prev[:, 1:])
            rec = masked < pm_prev  # strict new prefix minima down to the old depth
            np.maximum.accumulate(np.where(rec, arf, negf)[:, :-1], axis=1, out=last_prev[:, 1:])
            stack = stack.take(np.where(rec, last_prev, arf))
            stack[:, 0] = xf
            inv.put(stack, ar)
            key.put(xf, new_key[s])
        depth[np.tile(first[lo:hi], (1, P))] = E  # compulsory misses
        hist += np.bincount((depth + (E + 1) * np.arange(B)).ravel(),
                            minlength=B * (E + 1)).reshape(B, E + 1)
    return _curves(hist, policies, L, E, N)


def _first_requests(seq: np.ndarray) -> np.ndarray:
    """(steps, layers): whether a request is its layer's first of that expert."""
    order, _, same = _groups(seq)
    first = np.zeros(seq.size, bool)
    first[order[~same]] = True
    return first.reshape(seq.shape)


def _curves(hist: np.ndarray, policies: Sequence[str], L: int, E: int,
            requests: int) -> dict[str, CacheCurve]:
    """Curves from per-lane histograms of request depth (column E: compulsory misses)."""
    hits = np.cumsum(hist[:, :E], axis=1)  # a hit at depth d counts for every C > d
    req = np.full(L, requests, np.int64)
    return {name: CacheCurve(name, hits[p * L:(p + 1) * L], req, hist[p * L:(p + 1) * L, E])
            for p, name in enumerate(policies)}


# ---- local routing consistency (Liang et al., 2025) ---------------------------------------------
def _window_counts(tr: np.ndarray, experts: int, layer: int, segment: int) -> np.ndarray:
    """(windows, experts): requests of each expert in every window of `segment` tokens."""
    T, _, k = tr.shape
    onehot = np.zeros((T + 1, experts), np.int32)
    np.add.at(onehot, (np.repeat(np.arange(1, T + 1), k), tr[:, layer, :].ravel()), 1)
    cum = np.cumsum(onehot, axis=0)
    return cum[segment:] - cum[:-segment]


def segment_cache_hit_rate(trace: np.ndarray, experts: int, segment: int) -> np.ndarray:
    """SCH(m, C) per layer, (layers, experts) for C = 1..experts: over every window of `segment`
    tokens, the share of its requests that its C most requested experts serve."""
    tr = _as_trace(trace, experts)
    T, L, k = tr.shape
    if not 1 <= segment <= T:
        raise ConfigError(f"segment must lie in 1..{T} tokens (got {segment})")
    out = np.empty((L, experts))
    for layer in range(L):
        counts = -np.sort(-_window_counts(tr, experts, layer, segment), axis=1)
        out[layer] = counts.sum(axis=0).cumsum() / (counts.shape[0] * k * segment)
    return out


def segment_routing_performance(trace: np.ndarray, experts: int, segment: int) -> dict[str, Any]:
    """SRP(m): per layer and over all layers, the best F1 over thresholds c of predicting the
    experts requested >= c times in a window as active for all of its tokens."""
    tr = _as_trace(trace, experts)
    T, L, k = tr.shape
    if not 1 <= segment <= T:
        raise ConfigError(f"segment must lie in 1..{T} tokens (got {segment})")
    hists = np.stack([np.bincount(_window_counts(tr, experts, layer, segment).ravel(),
                                  minlength=segment + 1)[:segment + 1] for layer in range(L)])
    per_layer = [_best_f1(h, segment) for h in hists]
    total = _best_f1(hists.sum(axis=0), segment)
    return {"segment": segment, "srp": total[0], "threshold": total[1],
            "layers": [f for f, _ in per_layer]}


def _best_f1(hist: np.ndarray, segment: int) -> tuple[float, int]:
    """(best F1, its threshold) from a histogram of per-window expert request counts."""
    v = np.arange(len(hist))
    matches = np.cumsum((v * hist)[::-1])[::-1]  # requests of experts with count >= c
    preds = np.cumsum(hist[::-1])[::-1] * segment
    f1 = 2 * matches / np.maximum(preds + matches[0], 1)
    c = int(np.argmax(f1))
    return float(f1[c]), c


# ---- recommendation ------------------------------------------------------------------------------
def knee(sizes: Sequence[float], hit_rates: Sequence[float]) -> float:
    """The cache size at the knee of an increasing hit-rate curve.

    Rule (Kneedle, Satopaa et al. 2011, for a concave increasing curve): scale sizes and hit
    rates to [0, 1] between the first and last point and take the size whose scaled hit rate
    rises furthest above the chord between them (the point farthest from the chord); the
    smallest size if the curve is flat or never rises above the chord.
    """
    x = np.asarray(sizes, float)
    y = np.asarray(hit_rates, float)
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError("knee needs as many hit rates as sizes, at least one")
    if len(x) < 3 or y[-1] <= y[0] or x[-1] <= x[0]:
        return float(x[0])
    gap = (y - y[0]) / (y[-1] - y[0]) - (x - x[0]) / (x[-1] - x[0])
    i = int(np.argmax(gap))
    return float(x[i] if gap[i] > 0 else x[0])


# ---- synthetic traces ----------------------------------------------------------------------------
def synthetic_trace(tokens: int, layers: int, experts: int, top_k: int, locality: float,
                    seed: int = 0, skew: float = 0.8) -> np.ndarray:
    """A routing trace (tokens, layers, top_k) with controllable local routing consistency.

    Each layer draws fresh top-k sets from a Zipf(`skew`) popularity over its experts (a
    different ranking per layer); with probability `locality` a token keeps the previous
    token's set instead, so runs of identical routing have mean length 1 / (1 - locality).
    """
    _check_shape_args(experts, top_k)
    if tokens < 1 or layers < 1 or not 0.0 <= locality < 1.0:
        raise ConfigError("need tokens >= 1, layers >= 1 and 0 <= locality < 1")
    rng = np.random.default_rng(seed)
    out = np.empty((tokens, layers, top_k), _id_dtype(experts))
    logw = -skew * np.log1p(np.arange(experts, dtype=np.float32))
    t = np.arange(tokens)
    for layer in range(layers):
        w = logw[rng.permutation(experts)]
        g = w + rng.gumbel(size=(tokens, experts)).astype(np.float32)  # Gumbel top-k sampling
        fresh = np.argsort(-g, axis=1)[:, :top_k]
        keep = rng.random(tokens) < locality
        keep[0] = False
        src = np.maximum.accumulate(np.where(keep, 0, t))
        out[:, layer, :] = fresh[src]
    return out


# ---- record --------------------------------------------------------------------------------------
def expert_cache_record(trace: np.ndarray, experts: int, *,
                        policies: Sequence[str] = POLICIES,
                        segments: Sequence[int] = (4, 16, 64, 256)) -> dict[str, Any]:
    """An `expert-cache` record: hit rates per policy and size, the knee, SCH and SRP."""
    tr = _as_trace(trace, experts)
    T, L, k = tr.shape
    curves = simulate(tr, experts, policies)
    sizes = list(range(1, experts + 1))
    rec: dict[str, Any] = {"v": 1, "kind": "expert-cache", "tokens": T, "layers": L,
                           "experts": experts, "top_k": k, "sizes": sizes, "policies": {}}
    for name, cv in curves.items():
        rec["policies"][name] = {
            "hit_rate": cv.overall.tolist(), "warm_hit_rate": cv.overall_warm.tolist(),
            "layers": cv.hit_rate.tolist(), "knee": knee(sizes, cv.overall)}
    rec["compulsory"] = int(next(iter(curves.values())).compulsory.sum())
    seg = [m for m in segments if 1 <= m <= T]
    rec["sch"] = {str(m): segment_cache_hit_rate(tr, experts, m).mean(axis=0).tolist()
                  for m in seg}
    rec["srp"] = {str(m): segment_routing_performance(tr, experts, m)["srp"] for m in seg}
    best = "lru" if "lru" in curves else next(iter(curves))
    rec["recommended_size"] = rec["policies"][best]["knee"]
    return rec


__all__ = ["POLICIES", "CacheCurve", "expert_cache_record", "knee", "load_trace",
           "segment_cache_hit_rate", "segment_routing_performance", "simulate",
           "synthetic_trace"]
