"""Collaborative item embeddings from training interactions: truncated SVD of a PPMI matrix.

Items that occur near each other in users' training sequences (within ``window`` positions, weighted
``1/distance``) co-occur; positive pointwise mutual information (PPMI) of those counts, factorised
by a randomized truncated SVD (``torch.svd_lowrank``), gives each item a ``dim``-vector. Items that
never occur in a training part get a zero vector.
"""

from __future__ import annotations

import torch

__all__ = ["cooccurrence_matrix", "ppmi_embeddings"]


def cooccurrence_matrix(sequences: list[list[int]], num_items: int, window: int = 5) -> torch.Tensor:
    """Symmetric co-occurrence counts, sparse COO ``[num_items + 1, num_items + 1]`` float32 (row = item id)."""
    rows, cols, weights = [], [], []
    for items in sequences:
        for d in range(1, window + 1):
            rows += items[:-d]
            cols += items[d:]
            weights += [1.0 / d] * max(0, len(items) - d)
    r, c = torch.tensor(rows, dtype=torch.int64), torch.tensor(cols, dtype=torch.int64)
    w = torch.tensor(weights, dtype=torch.float32)
    keep = r != c
    r, c, w = r[keep], c[keep], w[keep]
    index = torch.stack((torch.cat((r, c)), torch.cat((c, r))))
    size = num_items + 1
    return torch.sparse_coo_tensor(index, torch.cat((w, w)), (size, size), check_invariants=True).coalesce()


def ppmi_embeddings(sequences: list[list[int]], num_items: int, dim: int = 64, window: int = 5,
                    seed: int = 0) -> torch.Tensor:
    """Item embeddings ``[num_items + 1, dim]`` float32, row ``i`` for item id ``i`` (row 0 unused, zero).

    ``U * sqrt(S)`` of the rank-``dim`` SVD of the PPMI matrix, rows L2-normalised.
    """
    counts = cooccurrence_matrix(sequences, num_items, window)
    index, values = counts.indices(), counts.values()
    row_sum = torch.zeros(num_items + 1).index_add_(0, index[0], values)  # [N + 1]
    total = values.sum()
    pmi = torch.log(values * total / (row_sum[index[0]] * row_sum[index[1]]))
    keep = pmi > 0
    ppmi = torch.sparse_coo_tensor(index[:, keep], pmi[keep], counts.shape, check_invariants=True).coalesce()
    torch.manual_seed(seed)  # svd_lowrank draws its random projection from the global generator
    u, s, _ = torch.svd_lowrank(ppmi, q=dim, niter=4)
    emb = u * s.sqrt()  # [N + 1, dim]
    seen = torch.zeros(num_items + 1, dtype=torch.bool)
    seen[ppmi.indices()[0]] = True  # rows without any PPMI entry are numerically ~0: make them exactly 0
    emb = torch.where(seen[:, None], emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12), 0.0)
    return emb
