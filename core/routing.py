"""Granularity routing (MemGAS): which level of memory should answer a query.

A store with session summaries and topic clusters holds the same conversation at three
granularities. A query about one detail is answered by a turn; a question about a whole
episode or a recurring topic is better matched by a summary or a cluster. MemGAS picks the
granularity whose retrieval scores are most *decisive*: the softmax over a level's top scores
has low entropy when a few candidates stand out, and is flat when nothing in that level fits
better than anything else. The alternative, `fuse`, keeps every level and merges their
rankings by reciprocal-rank fusion. `boost` keeps the base ranking and only lifts the members
of the sessions whose summaries match the query (session context, as the neighbour share is
turn context). Pure functions; recall.py supplies the scores.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

ROUTES = ("off", "entropy", "fuse", "boost")
TOP = 10  # scores per level in the entropy: recall's default k
TEMPERATURE = 1.0  # recall's fused scores are z-scores: one unit = one spread of the level
RRF_K = 60  # Cormack et al.'s constant: flattens the head so no single ranking dominates
# boost: a member gains BOOST x its summary's z-score. LoCoMo recall@10 rises on a plateau
# from 0.15 to 0.5 (benchmarks/bench_routing.py); 0.25 sits inside it, not at its peak.
BOOST = 0.25


def normalised_entropy(scores: np.ndarray, *, top: int = TOP,
                       temperature: float = TEMPERATURE) -> float:
    """Entropy of softmax(top scores / temperature) divided by log(count), in [0, 1]:
    0 when one score dominates, 1 when the top scores are all equal. NaN with fewer than
    two finite scores (nothing to decide between)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 2:
        return math.nan
    m = min(top, len(s))
    s = np.partition(s, len(s) - m)[len(s) - m:] if m < len(s) else s
    z = (s - s.max()) / max(temperature, 1e-9)
    p = np.exp(z)
    p /= p.sum()
    h = -float(np.sum(p * np.log(np.where(p > 0, p, 1.0))))
    return h / math.log(m)


def pick_level(level_scores: dict[str, np.ndarray], *, top: int = TOP,
               temperature: float = TEMPERATURE) -> tuple[str, dict[str, float]]:
    """The level with the lowest normalised entropy, and every level's entropy.

    Levels that cannot be judged (fewer than two scores) are skipped; ties go to the level
    named first (put the base level first so it wins ties). With no level judged, the first
    is returned."""
    ent = {lv: normalised_entropy(s, top=top, temperature=temperature)
           for lv, s in level_scores.items()}
    judged = [lv for lv in level_scores if not math.isnan(ent[lv])]
    if not judged:
        return next(iter(level_scores)), ent
    best = min(judged, key=lambda lv: (ent[lv], judged.index(lv)))
    return best, ent


def rrf(rankings: Sequence[Sequence[Hashable]], *, k: int = RRF_K,
        weights: Sequence[float] | None = None) -> list[tuple[Hashable, float]]:
    """Reciprocal-rank fusion: score(x) = sum over rankings of w / (k + rank of x), ranks
    from 1; an item absent from a ranking gains nothing from it. Best first; ties keep the
    order in which items were first seen (rankings in the order given)."""
    score: dict[Hashable, float] = {}
    for r, ranking in enumerate(rankings):
        w = 1.0 if weights is None else float(weights[r])
        for rank, item in enumerate(ranking, start=1):
            score[item] = score.get(item, 0.0) + w / (k + rank)
    order = {item: i for i, item in enumerate(score)}
    return sorted(score.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def expand_groups(group_hits: Sequence[tuple[Sequence[Hashable], float]],
                  member_score: dict[Hashable, float], *,
                  per_group: int | None = None) -> list[tuple[Hashable, float]]:
    """Members of ranked groups (summaries, clusters) as a ranking of memories.

    Each member scores its group's score plus its own score (the best over the groups that
    hold it), so a member of a strong group that also matches the query leads; members
    without a score of their own (filtered out) are dropped. `per_group` keeps only each
    group's best members. Best first; ties by first appearance."""
    best: dict[Hashable, float] = {}
    for members, gscore in group_hits:
        own = sorted(((member_score[m], i, m) for i, m in enumerate(members)
                      if m in member_score), key=lambda t: (-t[0], t[1]))
        if per_group is not None:
            own = own[:per_group]
        for s, _, m in own:
            v = float(gscore) + float(s)
            if m not in best or v > best[m]:
                best[m] = v
    order = {m: i for i, m in enumerate(best)}
    return sorted(best.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def group_boost(group_hits: Sequence[tuple[Sequence[Hashable], float]], *,
                weight: float = BOOST) -> dict[Hashable, float]:
    """What each member of the ranked groups gains: weight x the best (positive) score of a
    group that holds it. Groups scoring below the level's mean lift nothing."""
    out: dict[Hashable, float] = {}
    for members, gscore in group_hits:
        gain = float(weight) * max(float(gscore), 0.0)
        for m in members:
            if gain > out.get(m, 0.0):
                out[m] = gain
    return out
