"""Build a catalog of semantic IDs: item embeddings (collaborative, text, or both), then RQ-KMeans."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..catalog import ItemCatalog
from .collaborative_embeddings import cold_mask
from .embeddings import ppmi_embeddings
from .rq_kmeans import SidReport, collision_groups, deduplicate, rq_kmeans, sid_report

__all__ = ["SidBuild", "build_collaborative_sids", "build_sids", "collaborative_embeddings", "combine_embeddings"]


@dataclass(frozen=True)
class SidBuild:
    catalog: ItemCatalog
    before_dedup: SidReport  # the L RQ-KMeans levels alone
    after: SidReport  # the catalog's SIDs (with the extra level when deduplicated)
    cold_items: int = 0  # items absent from every training part (zero collaborative embedding)


def build_sids(embeddings: torch.Tensor, item_ids: list[int], levels: int = 3, codes: int = 256, iters: int = 50,
               seed: int = 0, dedup: bool = True, device: str = "cpu", progress: bool = True,
               cold_items: int = 0) -> SidBuild:
    """RQ-KMeans over ``embeddings`` [N, D] (row i for ``sorted(item_ids)[i]``); a catalog of ``levels``
    (+1 with ``dedup``: TIGER's extra level numbering the items that share a SID) levels of ``codes``."""
    item_ids_t = torch.tensor(sorted(item_ids), dtype=torch.int64)
    if embeddings.shape[0] != item_ids_t.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings for {item_ids_t.shape[0]} items")
    sids = rq_kmeans(embeddings.to(device), levels, codes, iters, seed, progress)  # [N, L]
    before = sid_report(sids)
    if dedup:
        try:
            sids = deduplicate(sids, codes)
        except ValueError as err:
            _explain_zero_embeddings(err, embeddings, sids)
            raise
    return SidBuild(ItemCatalog(item_ids_t, sids, codes), before, sid_report(sids), cold_items)


def _explain_zero_embeddings(err: ValueError, embeddings: torch.Tensor, sids: torch.Tensor) -> None:
    """When most of the largest group sharing one SID [N, L] have an all-zero embedding [N, D] (items in no
    training part get one), raise the cause and what to do in place of ``err``: more codes would not help."""
    group = (sids == sids[collision_groups(sids).argmax()]).all(dim=1)  # [N]
    zero = group & (embeddings.abs().sum(dim=1) == 0).to(group.device)
    if 2 * int(zero.sum()) <= int(group.sum()):
        return
    raise ValueError(f"{int(group.sum())} items share one SID, {int(zero.sum())} of them with an all-zero embedding: "
                     "cold items (in no training part: one zero collaborative embedding) cannot be told apart, and "
                     "more levels or codes would not help. Drop them from the data, give them text (--embeddings "
                     "both with item text, or --embeddings-file), or keep their SIDs colliding with --no-dedup "
                     "(the de-dup level numbers at most --codes items a SID)") from err


def collaborative_embeddings(train_sequences: list[list[int]], item_ids: list[int], dim: int = 64,
                             window: int = 5, seed: int = 0) -> torch.Tensor:
    """[N, dim] PPMI-SVD embeddings of ``sorted(item_ids)`` from the training parts."""
    ids = torch.tensor(sorted(item_ids), dtype=torch.int64)
    return ppmi_embeddings(train_sequences, int(ids.max()), dim, window, seed)[ids]


def combine_embeddings(*parts: torch.Tensor) -> torch.Tensor:
    """Concatenate L2-normalised parts, each weighted 1/sqrt(#parts) (so every part counts the same)."""
    return torch.cat([torch.nn.functional.normalize(p.float(), dim=1) for p in parts], dim=1) / len(parts) ** 0.5


def build_collaborative_sids(train_sequences: list[list[int]], item_ids: list[int], levels: int = 3,
                             codes: int = 256, dim: int = 64, window: int = 5, iters: int = 50,
                             seed: int = 0, dedup: bool = True, device: str = "cpu",
                             progress: bool = True) -> SidBuild:
    """SIDs for ``item_ids`` from the training parts only (the validation and test targets never leak in)."""
    emb = collaborative_embeddings(train_sequences, item_ids, dim, window, seed)
    return build_sids(emb, item_ids, levels, codes, iters, seed, dedup, device, progress,
                      int(cold_mask(train_sequences, item_ids).sum()))
