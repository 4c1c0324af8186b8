"""Residual k-means (RQ-KMeans): semantic IDs from item embeddings.

Level 0 clusters the embeddings into C codes; each next level clusters what the previous levels left
unexplained (the residual ``x - centroid``). Items whose L codes coincide collide; TIGER resolves
that with one extra level whose code numbers the items sharing a SID (0, 1, 2, ... in item-id order),
which :func:`deduplicate` appends. k-means uses k-means++ initialisation and a seeded generator, so
the same inputs give the same codes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

__all__ = ["SidReport", "collision_groups", "deduplicate", "is_dedup_level", "kmeans", "rq_kmeans", "sid_report"]


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x: [N, D], c: [K, D] -> squared distances [N, K]."""
    return (x.square().sum(1, keepdim=True) - 2 * x @ c.T + c.square().sum(1)).clamp_min(0)


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=g, device=x.device))
    centres = [x[first]]
    d2 = _sq_dist(x, x[first:first + 1]).squeeze(1)  # [N]
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: reuse points, the empty clusters stay empty
            pick = int(torch.randint(n, (1,), generator=g, device=x.device))
        else:
            pick = int(torch.multinomial(d2 / total, 1, generator=g))
        centres.append(x[pick])
        d2 = torch.minimum(d2, _sq_dist(x, x[pick:pick + 1]).squeeze(1))
    return torch.stack(centres)


def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means. x: [N, D] float -> (centroids [k, D], assignment [N] int64).

    An empty cluster keeps its previous centroid. Stops early when no assignment changes.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    g = torch.Generator(device=x.device).manual_seed(seed)
    x = x.float()
    centroids = _kmeans_pp(x, k, g)
    assign = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
    for _ in range(iters):
        new = _sq_dist(x, centroids).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids, assign


def rq_kmeans(x: torch.Tensor, levels: int, codes: int, iters: int = 50, seed: int = 0,
              progress: bool = True) -> torch.Tensor:
    """Residual k-means. x: [N, D] -> codes [N, levels] int64 in ``[0, codes)``."""
    residual = x.float().clone()
    out = []
    for level in tqdm(range(levels), desc="rq-kmeans", unit="level", disable=not progress):
        centroids, assign = kmeans(residual, codes, iters, seed + level)
        out.append(assign)
        residual = residual - centroids[assign]
    return torch.stack(out, dim=1).cpu()


def collision_groups(codes: torch.Tensor) -> torch.Tensor:
    """codes: [N, L] -> rank of each item among the items sharing its SID, in row order, [N] int64."""
    _, inverse = torch.unique(codes, dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)  # rows grouped by SID, row order within a group
    sorted_inv = inverse[order]
    starts = torch.ones_like(sorted_inv, dtype=torch.bool)
    starts[1:] = sorted_inv[1:] != sorted_inv[:-1]
    first = torch.cummax(torch.where(starts, torch.arange(len(order)), 0), 0).values
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(len(order)) - first
    return rank


def deduplicate(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Append TIGER's extra level: [N, L] -> [N, L + 1], the new code numbering items within a SID.

    Rows are expected in item-id order (the extra code then follows item ids). Raises when a SID is
    shared by more than ``num_codes`` items (the extra level would not fit a codebook of that size).
    """
    rank = collision_groups(codes)
    if int(rank.max()) >= num_codes:
        raise ValueError(f"{int(rank.max()) + 1} items share one SID, more than the {num_codes} codes of the "
                         "extra level; use more levels or codes")
    return torch.cat((codes, rank[:, None]), dim=1)


@dataclass(frozen=True)
class SidReport:
    items: int
    distinct_sids: int
    colliding_items: int  # items whose SID some other item also has, minus one a SID
    largest_group: int  # most items sharing one SID
    codes_used: list[int]  # distinct codes a level
    perplexity: list[float] = field(default_factory=list)  # 2 ** entropy (bits) of each level's code counts
    largest_bucket: list[int] = field(default_factory=list)  # most items on one code, a level

    def lines(self, num_codes: int) -> list[str]:
        usage = ", ".join(f"level {j}: {u}/{num_codes}" for j, u in enumerate(self.codes_used))
        return [f"items {self.items}, distinct SIDs {self.distinct_sids}, collisions {self.colliding_items} "
                f"(largest group {self.largest_group})", f"codes used: {usage}"]

    def balance_lines(self, num_codes: int) -> list[str]:
        """One line a level: codes used, perplexity (a uniform spread over C codes gives C), largest bucket."""
        return [f"level {j}: {u}/{num_codes} codes used, perplexity {p:.1f} (uniform {num_codes}), entropy "
                f"{math.log2(p):.2f} bits, largest bucket {b} items (uniform {self.items / num_codes:.1f})"
                for j, (u, p, b) in enumerate(zip(self.codes_used, self.perplexity, self.largest_bucket, strict=True))]

    def to_json(self) -> dict:
        return asdict(self)


def _perplexity(codes: torch.Tensor) -> float:
    """codes: [N] -> 2 ** (entropy in bits of the code distribution)."""
    p = torch.unique(codes, return_counts=True)[1].double() / codes.numel()
    return float(2 ** -(p * p.log2()).sum())


def sid_report(codes: torch.Tensor) -> SidReport:
    """codes: [N, L] -> distinct SIDs, collisions, and each level's codes used, perplexity and largest bucket."""
    uniq, counts = torch.unique(codes, dim=0, return_counts=True)
    levels = range(codes.shape[1])
    return SidReport(codes.shape[0], uniq.shape[0], codes.shape[0] - uniq.shape[0], int(counts.max()),
                     [int(torch.unique(codes[:, j]).numel()) for j in levels],
                     [round(_perplexity(codes[:, j]), 3) for j in levels],
                     [int(torch.unique(codes[:, j], return_counts=True)[1].max()) for j in levels])


def is_dedup_level(codes: torch.Tensor) -> bool:
    """codes: [N, L], rows in item-id order -> whether the last level is TIGER's de-dup level, i.e. numbers the
    items sharing the first L - 1 codes 0, 1, 2, ... in row order (what :func:`deduplicate` appends)."""
    return codes.shape[1] > 1 and torch.equal(collision_groups(codes[:, :-1]), codes[:, -1])
