"""A cheap check of item embeddings before any SID or model: next-item recall of the nearest items.

Every user gets the ``max(ks)`` items most cosine-similar to the last item of its history (the item
itself left out), and the validation or test target is looked for among them, as for a model
(:mod:`.metrics`). It needs no training beyond the embeddings, so it tells in seconds whether
embeddings carry the sequences' structure (compare it with :func:`.evaluate_popularity`).
"""

from __future__ import annotations

import time

import torch

from ..data import LeaveOneOut
from .evaluate import EvalResult
from .metrics import DEFAULT_KS, hit_rank, ranking_metrics

__all__ = ["evaluate_item_neighbours"]


@torch.no_grad()
def evaluate_item_neighbours(embeddings: torch.Tensor, item_ids: list[int], split: LeaveOneOut, which: str = "valid",
                             ks=DEFAULT_KS, chunk: int = 4096) -> EvalResult:
    """embeddings: [N, D], row r for ``sorted(item_ids)[r]`` -> Recall/NDCG@ks of the nearest-item lists."""
    start = time.perf_counter()
    ids = torch.tensor(sorted(item_ids), dtype=torch.int64)  # [N]
    e = torch.nn.functional.normalize(embeddings.float(), dim=1)
    cases = split.cases(which, max_history=1)  # the last item of the history is all that is used
    last = torch.searchsorted(ids, torch.tensor([c.history[-1] for c in cases]))  # [U] rows
    ranks = []
    for begin in range(0, len(cases), chunk):
        rows = last[begin:begin + chunk]
        sims = e[rows] @ e.T  # [u, N]
        sims[torch.arange(len(rows)), rows] = -2.0  # never the item itself
        top = ids[sims.topk(min(max(ks), len(ids) - 1), dim=1).indices].tolist()  # [u, K]
        ranks += [hit_rank(t, c.target) for t, c in zip(top, cases[begin:begin + chunk], strict=True)]
    return EvalResult(which, len(cases), ranking_metrics(ranks, ks), time.perf_counter() - start,
                      {"model": "item neighbours"}, ranks)
