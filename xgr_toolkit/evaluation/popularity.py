"""The popularity floor: every user gets the items most often seen in the training parts."""

from __future__ import annotations

from collections import Counter

from ..data import LeaveOneOut

__all__ = ["popularity_ranking"]


def popularity_ranking(split: LeaveOneOut, top_k: int = 10) -> list[int]:
    """The ``top_k`` items by count over all users' training parts (ties: smaller item id first)."""
    counts = Counter(item for items in split.train for item in items)
    return [item for item, _ in sorted(counts.items(), key=lambda ic: (-ic[1], ic[0]))[:top_k]]
