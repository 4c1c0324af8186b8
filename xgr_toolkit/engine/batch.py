"""Host side of the fast engine: requests -> padded device tensors, and device results -> items."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..catalog import ItemCatalog
from ..request import RecRequest, RequestError, ScoredItem
from .catalog_index import exclusion_pairs

__all__ = ["BeamBatch", "make_batch", "to_items"]


@dataclass
class BeamBatch:
    """One batch of R requests, padded to a prompt bucket P, as the device sees it."""

    tokens: torch.Tensor  # [R, P] int64, right-padded with token 0
    prompt_len: torch.Tensor  # [R] int64
    width: torch.Tensor  # [R] int64, each request's beam width (<= the engine's W)
    level_norm: torch.Tensor  # [R] bool, True where the request normalises over the level's codes
    forbidden_keys: torch.Tensor  # [L, R, E] int64 prefix keys, padding -1
    forbidden_codes: torch.Tensor  # [L, R, E] int64 codes, padding C

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BeamBatch:
        return BeamBatch(*(t.to(device, non_blocking=non_blocking) for t in vars(self).values()))


def make_batch(requests: list[RecRequest], catalog: ItemCatalog, prompt_bucket: int, max_exclusions: int,
               slots: int | None = None) -> BeamBatch:
    """Pad ``requests`` into ``slots`` (default: as many as requests) rows; empty rows get a 1-token prompt."""
    R, L, C = slots or len(requests), catalog.levels, catalog.num_codes
    tokens = torch.zeros(R, prompt_bucket, dtype=torch.int64)
    prompt_len = torch.ones(R, dtype=torch.int64)
    width = torch.ones(R, dtype=torch.int64)
    level_norm = torch.zeros(R, dtype=torch.bool)
    forbidden_keys = torch.full((L, R, max_exclusions), -1, dtype=torch.int64)
    forbidden_codes = torch.full((L, R, max_exclusions), C, dtype=torch.int64)
    for r, req in enumerate(requests):
        tokens[r, :len(req.prompt)] = torch.tensor(req.prompt)
        prompt_len[r], width[r], level_norm[r] = len(req.prompt), req.beam_width, req.normalize == "level"
        for level, pairs in enumerate(exclusion_pairs(catalog, req.exclude_items)):
            if len(pairs) > max_exclusions:
                raise RequestError("exclude", f"at most {max_exclusions} excluded items are allowed")
            if pairs:
                forbidden_keys[level, r, :len(pairs)], forbidden_codes[level, r, :len(pairs)] = \
                    torch.tensor(pairs).T
    return BeamBatch(tokens, prompt_len, width, level_norm, forbidden_keys, forbidden_codes)


def to_items(requests: list[RecRequest], catalog: ItemCatalog, scores: torch.Tensor,
             sid_index: torch.Tensor) -> list[list[ScoredItem]]:
    """scores, sid_index: [R, W] on the host, best first per row (-inf: no beam) -> items per request.

    Every surviving SID holds at least one item the request did not exclude, so its first top_k SIDs
    give at least top_k items.
    """
    results = []
    for r, req in enumerate(requests):
        n = min(req.top_k, int(torch.isfinite(scores[r]).sum()))
        sids = sid_index[r, :n]
        rows, owner = catalog.item_rows_of_sids(sids)  # [M] catalog rows, [M] position in sids
        items = zip(catalog.item_ids[rows].tolist(), scores[r, owner].tolist(),
                    map(tuple, catalog.sid_codes[sids][owner].tolist()))
        results.append([ScoredItem(i, score, sid) for i, score, sid in items if i not in req.exclude_items]
                       [:req.top_k])
    return results
