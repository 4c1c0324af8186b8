"""Recall@K and NDCG@K with one held-out target a user (leave-one-out).

With a single relevant item, Recall@K is 1 when the target is among the first K recommendations,
and NDCG@K is ``1 / log2(rank + 2)`` for its 0-based rank ``< K`` (the ideal DCG is 1); both 0
otherwise. Reported figures are means over users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["DEFAULT_KS", "hit_rank", "ranking_metrics"]

DEFAULT_KS = (5, 10)


def hit_rank(recommended: Sequence[int], target: int) -> int:
    """0-based position of ``target`` in ``recommended``, or -1."""
    for rank, item in enumerate(recommended):
        if item == target:
            return rank
    return -1


def ranking_metrics(ranks: Sequence[int], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """ranks: one 0-based rank a user (-1: not recommended) -> {"recall@K": ..., "ndcg@K": ...}."""
    if not ranks:
        raise ValueError("no users to average over")
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = sum(1 for r in ranks if 0 <= r < k) / len(ranks)
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if 0 <= r < k) / len(ranks)
    return out
