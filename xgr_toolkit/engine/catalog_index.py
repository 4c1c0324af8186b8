"""CatalogIndex: the catalog's validity structures on the device, built once at load.

For every level j and every beam (identified by the key of its SID prefix), the mask of codes that
keep the prefix on the way to a valid item. Level 0's mask is one cached row; deeper levels read a
dense bitmap where it fits and otherwise the CSR children, padded to the level's widest fan-out so
every step has fixed shapes. Per-request exclusions arrive as (prefix key, code) pairs to forbid.
"""

from __future__ import annotations

import torch
from torch import nn

from ..catalog import ItemCatalog

__all__ = ["CatalogIndex", "exclusion_pairs"]

DENSE_LIMIT = 1 << 26  # prefixes x codes of a level kept as a dense bitmap (64 MiB of bools)


class CatalogIndex(nn.Module):
    def __init__(self, catalog: ItemCatalog, device: torch.device | str = "cpu"):
        super().__init__()
        self.levels, self.num_codes = catalog.levels, catalog.num_codes
        C = self.num_codes
        self.register_buffer("sid_keys", catalog.sid_keys.to(device))  # [S] sorted full-SID keys
        self.dense: list[bool] = []
        for j, level in enumerate(catalog.children):
            counts = level.offsets.diff()  # [Np] children per prefix
            rows = torch.repeat_interleave(torch.arange(counts.numel()), counts)  # [Nc]
            if counts.numel() * C <= DENSE_LIMIT:
                table = torch.zeros(counts.numel(), C, dtype=torch.bool)
                table[rows, level.codes] = True  # [Np, C] bitmap
            else:
                rank = torch.arange(rows.numel()) - level.offsets[rows]
                table = torch.full((counts.numel(), int(counts.max())), C, dtype=torch.int64)
                table[rows, rank] = level.codes  # [Np, max fan-out] codes, padded with C (a sink)
            self.dense.append(table.dtype == torch.bool)
            self.register_buffer(f"prefix_keys_{j}", level.prefix_keys.to(device))  # [Np]
            self.register_buffer(f"children_{j}", table.to(device))

    def valid(self, level: int, keys: torch.Tensor) -> torch.Tensor:
        """keys: [R, W] prefix keys of depth ``level`` -> [R, W, C] bool mask of allowed codes."""
        prefix_keys, table = getattr(self, f"prefix_keys_{level}"), getattr(self, f"children_{level}")
        node = torch.searchsorted(prefix_keys, keys).clamp(max=prefix_keys.numel() - 1)  # [R, W]
        found = (prefix_keys[node] == keys)[..., None]  # dead beams carry keys of no prefix
        if self.dense[level]:
            return table[node] & found
        codes = torch.where(found, table[node], self.num_codes)  # [R, W, fan-out]
        mask = torch.zeros(*keys.shape, self.num_codes + 1, dtype=torch.bool, device=keys.device)
        return mask.scatter_(2, codes, True)[..., :-1]

    def forbid(self, mask: torch.Tensor, keys: torch.Tensor, forbidden_keys: torch.Tensor,
               forbidden_codes: torch.Tensor) -> torch.Tensor:
        """Clear the request's forbidden (prefix, code) pairs of this level.

        mask: [R, W, C]; keys: [R, W]; forbidden_keys, forbidden_codes: [R, E] (padding: key -1,
        code C) -> [R, W, C].
        """
        hit = keys[:, :, None] == forbidden_keys[:, None, :]  # [R, W, E]
        codes = torch.where(hit, forbidden_codes[:, None, :], self.num_codes)
        sink = torch.zeros(*mask.shape[:2], 1, dtype=torch.bool, device=mask.device)
        return torch.cat((mask, sink), dim=2).scatter_(2, codes, False)[..., :-1]


def exclusion_pairs(catalog: ItemCatalog, exclude_items: frozenset[int]) -> list[list[tuple[int, int]]]:
    """Per level, the (prefix key, code) pairs that excluding these items forbids.

    A SID dies when every item holding it is excluded; a prefix dies when all its children die.
    Returns ``pairs[j]`` = [(key of the depth-j prefix, code at level j), ...].
    """
    C, L = catalog.num_codes, catalog.levels
    pairs: list[list[tuple[int, int]]] = [[] for _ in range(L)]
    if not exclude_items:
        return pairs
    rows = catalog.rows_of_items(torch.tensor(sorted(exclude_items)))
    keys = torch.zeros(rows.numel(), dtype=torch.int64)
    for j in range(L):
        keys = keys * C + catalog.codes[rows, j]
    dead, excluded_per_sid = torch.unique(keys, return_counts=True)
    sid = torch.searchsorted(catalog.sid_keys, dead)
    dead = dead[excluded_per_sid == catalog.items_per_sid[sid]]  # [n] keys of dead depth-L nodes
    for depth in range(L, 0, -1):
        level = depth - 1
        pairs[level] = list(zip((dead // C).tolist(), (dead % C).tolist()))
        if level == 0:
            break
        parents, dead_children = torch.unique(dead // C, return_counts=True)
        children = catalog.children[level]
        node = torch.searchsorted(children.prefix_keys, parents)
        dead = parents[dead_children == children.offsets[node + 1] - children.offsets[node]]
    return pairs
