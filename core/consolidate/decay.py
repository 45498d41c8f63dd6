"""Importance, decay and tiers (MemoryBank's forgetting curve, MemOS's hot/warm/cold tiers).

Everything here is optional and inspectable: consolidate writes `importance` and `tier` columns
and an `archive` decision with the numbers behind it; nothing is forgotten unless the user asks
(`--forget BELOW`), and forgetting only archives (status 1), it never deletes.

    strength = importance * 2 ** (-age / HALF_LIFE[tier])

Importance says how much a memory is worth keeping; the tier says how fast that worth fades.
"""

from __future__ import annotations

import numpy as np

from memstack.core.store import STATUS_ACTIVE, TIER_CODE

DAY = 86400.0
# Half-life per tier code. short: a day, the span of one conversation's working context (the
# MemoryBank curve starts at a strength of one day); mid: a month, the span of a project or a
# trip; long: a year, for facts about the person that change on that scale (job, home, family);
# pinned: never. Each tier is ~12-30x the one below so a memory that earns a promotion visibly
# outlives its peers.
HALF_LIFE: dict[int, float] = {
    TIER_CODE["short"]: 1 * DAY,
    TIER_CODE["mid"]: 30 * DAY,
    TIER_CODE["long"]: 365 * DAY,
    TIER_CODE["pinned"]: float("inf"),
}
NO_TIER = 0  # not consolidated yet: no importance or tier known

# importance = sum of WEIGHTS[k] * term_k, each term in [0, 1], weights sum to 1.
# Use (access) weighs most: what recall keeps returning is what the user needs (MemoryBank).
# Recency, novelty and links share the rest: a fresh, non-redundant, connected memory is worth
# keeping even before anyone has recalled it.
WEIGHTS = {"recency": 0.25, "access": 0.35, "novelty": 0.20, "links": 0.20}
RECENCY_S = 7 * DAY  # e-folding time of the recency term: last week's memories are "hot"
ACCESS_SATURATION = 20  # recalls at which the access term reaches 1 (log1p scale)
LINK_SATURATION = 10  # link degree at which the link term reaches 1 (log1p scale)

# Tier thresholds. A fresh (age 0), fully novel memory nobody has used scores
# 0.25 + 0.20 = 0.45 -> mid; a fresh near-duplicate with no use scores ~0.25-0.35 -> short;
# long needs real use (about 3 recalls and a link on top of novelty) or LONG_ACCESS recalls.
LONG_IMPORTANCE = 0.65
MID_IMPORTANCE = 0.40
LONG_ACCESS = 8  # recalled this often: long whatever the other terms say
MID_ACCESS = 2


def _saturating_log(x: np.ndarray, at: float) -> np.ndarray:
    x = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0), 0, None)
    return np.minimum(np.log1p(x) / np.log1p(at), 1.0)


def importance(*, age_s: np.ndarray, access_count: np.ndarray, novelty: np.ndarray,
               links: np.ndarray, pinned: np.ndarray) -> np.ndarray:
    """Importance in [0, 1] (float32): the WEIGHTS-weighted sum of
    recency = exp(-age_s / RECENCY_S), access = log1p(count) / log1p(ACCESS_SATURATION) capped
    at 1, novelty = 1 - max cosine to earlier memories (given; NaN = unknown = 1, clipped to
    [0, 1]) and links = log1p(degree) / log1p(LINK_SATURATION) capped at 1. Pinned -> 1.

    Pass age_s = 0 when the result feeds decay_term(), which applies age itself: otherwise age
    is counted twice. Negative or NaN ages (clock skew, unknown time) count as 0.
    """
    age = np.clip(np.nan_to_num(np.asarray(age_s, dtype=np.float64), nan=0.0), 0, None)
    nov = np.clip(np.nan_to_num(np.asarray(novelty, dtype=np.float64), nan=1.0), 0, 1)
    imp = (WEIGHTS["recency"] * np.exp(-age / RECENCY_S)
           + WEIGHTS["access"] * _saturating_log(access_count, ACCESS_SATURATION)
           + WEIGHTS["novelty"] * nov
           + WEIGHTS["links"] * _saturating_log(links, LINK_SATURATION))
    imp = np.where(np.asarray(pinned, dtype=bool), 1.0, np.clip(imp, 0.0, 1.0))
    return imp.astype(np.float32)


def assign_tier(importance: np.ndarray, access_count: np.ndarray,
                pinned: np.ndarray) -> np.ndarray:
    """Tier codes (uint8, TIER_CODE): pinned -> pinned; importance >= LONG_IMPORTANCE or
    access >= LONG_ACCESS -> long; importance >= MID_IMPORTANCE or access >= MID_ACCESS -> mid;
    else short."""
    imp = np.nan_to_num(np.asarray(importance, dtype=np.float64), nan=0.0)
    acc = np.nan_to_num(np.asarray(access_count, dtype=np.float64), nan=0.0)
    imp, acc, pin = np.broadcast_arrays(imp, acc, np.asarray(pinned, dtype=bool))
    tier = np.full(imp.shape, TIER_CODE["short"], dtype=np.uint8)
    tier[(imp >= MID_IMPORTANCE) | (acc >= MID_ACCESS)] = TIER_CODE["mid"]
    tier[(imp >= LONG_IMPORTANCE) | (acc >= LONG_ACCESS)] = TIER_CODE["long"]
    tier[pin] = TIER_CODE["pinned"]
    return tier


def decay_term(importance: np.ndarray, tier: np.ndarray, age_s: np.ndarray) -> np.ndarray:
    """Strength = importance * 2 ** (-age / HALF_LIFE[tier]) (float32, in [0, importance] for
    importance in [0, 1]).

    Pinned (tier 4) never decays: strength = importance. Tier 0 (or an unknown code) means
    consolidate has not scored the memory yet, so there is no decay information: strength is
    1.0, which no `--forget BELOW` threshold <= 1 archives. Negative or NaN ages count as 0.
    """
    imp = np.clip(np.nan_to_num(np.asarray(importance, dtype=np.float64), nan=0.0), 0, 1)
    age = np.clip(np.nan_to_num(np.asarray(age_s, dtype=np.float64), nan=0.0), 0, None)
    imp, tier, age = np.broadcast_arrays(imp, np.asarray(tier, dtype=np.int64), age)
    half = np.full(tier.shape, np.nan)
    for code, h in HALF_LIFE.items():
        half[tier == code] = h
    known = ~np.isnan(half)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(np.isinf(half), 1.0, np.exp2(-age / np.where(known, half, 1.0)))
    return np.where(known, imp * factor, 1.0).astype(np.float32)


def forget_mask(strength: np.ndarray, below: float, pinned: np.ndarray,
                status: np.ndarray) -> np.ndarray:
    """Which memories to archive: strength < below, not pinned, and still active (archived,
    merged or quarantined ones are never selected again). NaN strength is never selected."""
    s = np.asarray(strength, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        weak = s < below
    return weak & ~np.asarray(pinned, dtype=bool) & (np.asarray(status) == STATUS_ACTIVE)


def access_counts(log_docnos: np.ndarray, n: int) -> np.ndarray:
    """Recall hits per docno (int64, length n) from the store's access log; docnos outside
    [0, n) (written after the snapshot, or corrupt) are ignored."""
    d = np.asarray(log_docnos, dtype=np.int64).ravel()
    d = d[(d >= 0) & (d < n)]
    return np.bincount(d, minlength=n)[:n].astype(np.int64)
