"""ItemCatalog: the valid items, their semantic IDs, and the per-level structures beam search walks.

An item's SID is ``L`` codes, each in ``[0, C)``. Several items may share a SID (a collision); the
catalog keeps them all. SIDs are ordered lexicographically everywhere, and a SID (or a prefix of
one) is identified by its key ``sum_j code_j * C**(depth-1-j)``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["CatalogError", "ItemCatalog", "LevelChildren"]


class CatalogError(ValueError):
    """The catalog's item ids or codes are not acceptable."""


@dataclass(frozen=True)
class LevelChildren:
    """Allowed codes at one level, for every valid prefix of the level's depth, in CSR form.

    prefix_keys: [Np] sorted keys of the valid prefixes of length ``level`` (one key 0 at level 0)
    offsets:     [Np + 1] children of prefix i are ``codes[offsets[i]:offsets[i+1]]``
    codes:       [Nc] sorted within each prefix
    """

    prefix_keys: torch.Tensor
    offsets: torch.Tensor
    codes: torch.Tensor


def _prefix_keys(codes: torch.Tensor, depth: int, num_codes: int) -> torch.Tensor:
    """codes: [N, L] -> keys of the first ``depth`` codes, [N] int64."""
    keys = torch.zeros(codes.shape[0], dtype=torch.int64)
    for j in range(depth):
        keys = keys * num_codes + codes[:, j]
    return keys


class ItemCatalog:
    """Items and their SIDs, validated once; lookups in both directions.

    Args:
        item_ids: [N] distinct int64 item ids.
        codes: [N, L] SID codes, each in ``[0, num_codes)``.
        num_codes: C, codes a level.
    """

    def __init__(self, item_ids: torch.Tensor, codes: torch.Tensor, num_codes: int):
        item_ids, codes = torch.as_tensor(item_ids, dtype=torch.int64), torch.as_tensor(codes, dtype=torch.int64)
        if codes.ndim != 2 or item_ids.ndim != 1 or codes.shape[0] != item_ids.shape[0]:
            raise CatalogError(f"item_ids must be [N] and codes [N, L]; got {tuple(item_ids.shape)} "
                               f"and {tuple(codes.shape)}")
        if item_ids.numel() == 0:
            raise CatalogError("the catalog has no items")
        if not 1 <= codes.shape[1] or num_codes < 1 or num_codes ** codes.shape[1] >= 2**62:
            raise CatalogError(f"{codes.shape[1]} levels of {num_codes} codes do not fit int64 keys")
        bad = (codes < 0) | (codes >= num_codes)
        if bad.any():
            row, level = bad.nonzero()[0].tolist()
            raise CatalogError(f"item {int(item_ids[row])}: code {int(codes[row, level])} at level {level} "
                               f"is out of range; allowed 0..{num_codes - 1}")
        sorted_ids, order = item_ids.sort()
        dup = sorted_ids[1:] == sorted_ids[:-1]
        if dup.any():
            raise CatalogError(f"duplicate item id {int(sorted_ids[1:][dup][0])}; item ids must be unique")
        self.num_codes = num_codes
        self.levels = codes.shape[1]
        self.item_ids = item_ids  # [N]
        self.codes = codes  # [N, L]
        self._sorted_ids, self._id_order = sorted_ids, order
        # SID -> items: items sorted by SID key (then id), grouped into unique SIDs.
        keys = _prefix_keys(codes, self.levels, num_codes)
        by_sid = order[torch.argsort(keys[order], stable=True)]
        self._items_by_sid = by_sid  # [N] item rows in SID order, ids ascending within a SID
        self.sid_keys, counts = torch.unique_consecutive(keys[by_sid], return_counts=True)  # [S]
        self._sid_offsets = torch.cat((torch.zeros(1, dtype=torch.int64), counts.cumsum(0)))  # [S + 1]
        self.children = [self._level_children(j) for j in range(self.levels)]
        self.sid_codes = codes[by_sid[self._sid_offsets[:-1]]]  # [S, L] codes of each unique SID

    def _level_children(self, level: int) -> LevelChildren:
        child_keys = torch.unique(_prefix_keys(self.codes, level + 1, self.num_codes))  # sorted
        prefix_keys, per_prefix = torch.unique_consecutive(child_keys // self.num_codes, return_counts=True)
        offsets = torch.cat((torch.zeros(1, dtype=torch.int64), per_prefix.cumsum(0)))
        return LevelChildren(prefix_keys, offsets, child_keys % self.num_codes)

    # ---- construction and persistence -------------------------------------------------------
    @classmethod
    def from_csv(cls, path: str | Path, num_codes: int, levels: int | None = None) -> ItemCatalog:
        """Reads ``item_id,code_0,...,code_{L-1}`` with that header."""
        path = Path(path)
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or header[0] != "item_id" or header[1:] != [f"code_{j}" for j in range(len(header) - 1)] \
                    or len(header) < 2:
                raise CatalogError(f"{path}: header must be item_id,code_0,...,code_{{L-1}}; got {header}")
            if levels is not None and len(header) - 1 != levels:
                raise CatalogError(f"{path}: {len(header) - 1} code columns, but the model has {levels} levels")
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    rows.append([int(v) for v in row])
                except ValueError:
                    raise CatalogError(f"{path}:{line}: values must be integers; got {row}") from None
                if len(row) != len(header):
                    raise CatalogError(f"{path}:{line}: {len(row)} values, expected {len(header)}")
        if not rows:
            raise CatalogError(f"{path}: no items")
        table = torch.tensor(rows, dtype=torch.int64)
        try:
            return cls(table[:, 0], table[:, 1:], num_codes)
        except CatalogError as err:  # a code out of range, a duplicate id: say which file
            raise CatalogError(f"{path}: {err}") from None

    def save(self, path: str | Path) -> None:
        # Fresh contiguous copies: safetensors refuses views that share storage (a CSV table's columns do).
        tensors = {"item_ids": self.item_ids, "codes": self.codes}
        save_file({name: t.clone(memory_format=torch.contiguous_format) for name, t in tensors.items()}, str(path),
                  metadata={"num_codes": str(self.num_codes)})

    @classmethod
    def load(cls, path: str | Path) -> ItemCatalog:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            num_codes = int(f.metadata()["num_codes"])
        tensors = load_file(str(path))
        return cls(tensors["item_ids"], tensors["codes"], num_codes)

    # ---- lookups --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.item_ids.shape[0]

    @property
    def num_sids(self) -> int:
        return self.sid_keys.shape[0]

    @property
    def items_per_sid(self) -> torch.Tensor:
        """[S] items holding each unique SID."""
        return self._sid_offsets.diff()

    def collisions(self) -> dict[tuple[int, ...], list[int]]:
        """Every SID held by more than one item -> those item ids (ascending)."""
        counts = self.items_per_sid
        return {self.sid_of_key(int(self.sid_keys[s])): self.items_of_sid_index(s)
                for s in (counts > 1).nonzero().flatten().tolist()}

    def rows_of_items(self, item_ids: torch.Tensor) -> torch.Tensor:
        """[M] item ids -> [M] catalog rows; an unknown id raises CatalogError naming it."""
        item_ids = torch.as_tensor(item_ids, dtype=torch.int64)
        pos = torch.searchsorted(self._sorted_ids, item_ids).clamp(max=len(self) - 1)
        unknown = self._sorted_ids[pos] != item_ids
        if unknown.any():
            raise CatalogError(f"unknown item id(s): {item_ids[unknown][:10].tolist()}")
        return self._id_order[pos]

    def sids_of_items(self, item_ids: torch.Tensor) -> torch.Tensor:
        """[M] item ids -> [M, L] codes."""
        return self.codes[self.rows_of_items(item_ids)]

    def sid_of_key(self, key: int) -> tuple[int, ...]:
        codes = []
        for _ in range(self.levels):
            key, c = divmod(key, self.num_codes)
            codes.append(c)
        return tuple(reversed(codes))

    def sid_index(self, sid: tuple[int, ...] | list[int]) -> int:
        """Index of a full SID among the catalog's unique SIDs, or -1 if no item has it."""
        key = 0
        for c in sid:
            key = key * self.num_codes + int(c)
        i = int(torch.searchsorted(self.sid_keys, torch.tensor(key)))
        return i if i < self.num_sids and int(self.sid_keys[i]) == key else -1

    def item_rows_of_sids(self, sids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n] unique-SID indices -> (catalog rows of their items [M], which of the n each row holds [M]);
        SID by SID in the given order, item ids ascending within a SID."""
        starts = self._sid_offsets[sids]
        counts = self._sid_offsets[sids + 1] - starts  # not items_per_sid[sids]: that diffs the whole catalog
        owner = torch.repeat_interleave(torch.arange(sids.numel()), counts)
        within = torch.arange(owner.numel()) - (counts.cumsum(0) - counts)[owner]
        return self._items_by_sid[starts[owner] + within], owner

    def items_of_sid_index(self, s: int) -> list[int]:
        rows = self._items_by_sid[self._sid_offsets[s]:self._sid_offsets[s + 1]]
        return self.item_ids[rows].tolist()

    def items_of_sid(self, sid: tuple[int, ...] | list[int]) -> list[int]:
        """Item ids holding this SID, ascending; [] when none."""
        s = self.sid_index(sid)
        return [] if s < 0 else self.items_of_sid_index(s)
