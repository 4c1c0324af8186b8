"""Two evaluations of the same users, compared user by user.

A change that alters few users' answers (a truncation policy, a precision) moves Recall or NDCG by less
than the spread between training seeds, so two means side by side cannot tell it from noise. Paired over
users, the difference of a metric is the mean of each user's difference, and its noise comes only from
the users whose answers changed: the 95% interval below is the normal one of that mean
(``1.96 * sd / sqrt(users)``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from .metrics import DEFAULT_KS

__all__ = ["paired_difference"]


def _gain(rank: int, metric: str, k: int) -> float:
    """One user's Recall@k or NDCG@k (metrics.py) from the target's 0-based rank (-1: not recommended)."""
    if not 0 <= rank < k:
        return 0.0
    return 1.0 if metric == "recall" else 1 / math.log2(rank + 2)


def paired_difference(ranks_a: Sequence[int], ranks_b: Sequence[int], ks: Sequence[int] = DEFAULT_KS) -> dict:
    """B against A over the same users in the same order -> {"users", "users_changed", and per metric
    ("recall@K", "ndcg@K"): {"a", "b", "difference" (b - a), "ci95" [low, high]}}."""
    if len(ranks_a) != len(ranks_b) or len(ranks_a) < 2:
        raise ValueError(f"need the same users in both evaluations, at least two; got {len(ranks_a)} and "
                         f"{len(ranks_b)} ranks")
    n = len(ranks_a)
    out: dict = {"users": n, "users_changed": sum(a != b for a, b in zip(ranks_a, ranks_b))}
    for k in ks:
        for metric in ("recall", "ndcg"):
            a = [_gain(r, metric, k) for r in ranks_a]
            b = [_gain(r, metric, k) for r in ranks_b]
            diffs = [y - x for x, y in zip(a, b)]
            mean, half = statistics.fmean(diffs), 1.96 * statistics.stdev(diffs) / math.sqrt(n)
            out[f"{metric}@{k}"] = {"a": statistics.fmean(a), "b": statistics.fmean(b), "difference": mean,
                                    "ci95": [mean - half, mean + half]}
    return out
