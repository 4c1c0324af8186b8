"""PromptStore: prompts' KV kept across requests, so a returning user's cached prefix is not prefilled again.

Blocks of ``block`` tokens, each keyed by a hash chain, key_i = H(key_{i-1}, tokens of block i): a key
names every token up to its block's end, so a lookup walks a prompt's keys until the first miss and
finds the longest cached block-aligned prefix. The pool, ``[blocks + 1, layers, 2, block, Hkv, D]`` on
the engine's device, is allocated once, so its memory is known at start; its last block is scratch,
where the fixed-shape copies of a batch read and write whatever has no block of its own. The rest is
host bookkeeping: a dict key -> pool block, an OrderedDict of the unpinned blocks in LRU order, a
refcount per pinned block.

:meth:`PromptStore.plan` pins every block a batch reads or writes until :meth:`PromptStore.release`:
the blocks of a batch in flight are never evicted. A block the batch writes is entered when the batch
is planned, before the device writes it; a later batch reads it only after that write, by stream
order (the engine runs on one stream), and a request never reads a block its own batch writes.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import ConfigError
from .kv_cache import BeamKVCache

__all__ = ["BlockPlan", "Lease", "PromptStore"]


@dataclass
class BlockPlan:
    """Where one batch's prompt KV comes from and goes to; NB = P // block blocks of the prompt bucket P."""

    start: torch.Tensor  # [R] int64: the first position prefill computes; the KV before it is read from the store
    read: torch.Tensor  # [R, NB] int64: the pool block copied into prompt block j before prefill (scratch: none)
    write: torch.Tensor  # [R, NB] int64: the pool block prompt block j is copied to after prefill (scratch: none)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BlockPlan:
        return BlockPlan(*(t.to(device, non_blocking=non_blocking) for t in vars(self).values()))

    def pin_memory(self) -> BlockPlan:
        return BlockPlan(*(t.pin_memory() for t in vars(self).values()))


@dataclass
class Lease:
    """A planned batch's hold on the store, given back by :meth:`PromptStore.release`."""

    pinned: list[bytes] = field(default_factory=list)  # every block the batch reads or writes, chain order
    new: list[bytes] = field(default_factory=list)  # the blocks it writes


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class PromptStore:
    """Prompt KV blocks under a byte budget, LRU-evicted.

    Args:
        budget_bytes: ``serve.prefix_cache_bytes``, the pool's size, scratch block included.
        block: ``serve.prefix_cache_block``, tokens a block; divides every prompt bucket.
        prompt_buckets: the engine's prompt buckets.
        num_layers, num_kv_heads, head_dim, dtype, device: those of the engine's :class:`BeamKVCache`.
    """

    def __init__(self, budget_bytes: int, block: int, prompt_buckets: list[int], num_layers: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str):
        device = torch.device(device)
        if any(b % block for b in prompt_buckets):
            raise ConfigError("serve.prefix_cache_block", block,
                              f"a divisor of every prompt bucket of the engine {prompt_buckets} "
                              "(model.max_prompt_tokens is one)")
        shape = (num_layers, 2, block, num_kv_heads, head_dim)  # one block: every layer's k and v
        self.block_bytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        if budget_bytes < 2 * self.block_bytes:
            raise ConfigError("serve.prefix_cache_bytes", budget_bytes,
                              f"0 (off) or at least two blocks' bytes, {2 * self.block_bytes} (one is scratch)")
        free = _free_bytes(device)
        if budget_bytes > free:
            raise ConfigError("serve.prefix_cache_bytes", budget_bytes,
                              f"at most the free memory of {device} after the engine's caches, {free} bytes")
        self.block, self.capacity = block, budget_bytes // self.block_bytes - 1
        self.scratch = self.capacity  # the pool's last block
        self.pool = torch.zeros((self.capacity + 1, *shape), dtype=dtype, device=device)
        self._slots: dict[bytes, int] = {}  # key -> pool block
        self._lru: OrderedDict[bytes, None] = OrderedDict()  # unpinned keys, least recently used first
        self._refs: dict[bytes, int] = {}  # pinned keys -> batches holding them
        self._free = list(range(self.capacity - 1, -1, -1))
        self.hit_tokens = self.prompt_tokens = self.evictions = 0

    # ---- host: lookup, planning, pins ----------------------------------------------------------
    def keys(self, prompt: tuple[int, ...]) -> list[bytes]:
        """The hash chain of the prompt's full blocks: key i names tokens 0 .. (i+1)*block - 1."""
        step = self.block * 8
        tokens = np.fromiter(prompt, np.int64, len(prompt)).tobytes()
        out, key = [], b""
        for i in range(len(prompt) // self.block):
            key = hashlib.blake2b(key + tokens[i * step:(i + 1) * step], digest_size=16).digest()
            out.append(key)
        return out

    def plan(self, prompts: list[tuple[int, ...]], slots: int, prompt_bucket: int,
             suffix_buckets: list[int]) -> tuple[int, BlockPlan, Lease]:
        """Plan one batch of ``prompts`` padded to ``slots`` rows and ``prompt_bucket`` positions.

        Each prompt reads its longest stored prefix (leaving its last token to compute: its state starts
        the search) and writes its full blocks the store lacks, as far as unpinned blocks can be evicted.
        Prefill then computes S positions a row, S the smallest of ``suffix_buckets`` (sorted, the last
        is ``prompt_bucket``) that covers every row's uncached rest, from start = min(cached, P - S).
        -> (S, the plan, the lease to release once the device has finished the batch).
        """
        P = prompt_bucket
        read = np.full((slots, P // self.block), self.scratch, dtype=np.int64)  # numpy: element writes cost ~0.1 us
        write = read.copy()
        lease, written, cached = Lease(), set(), []
        for r, prompt in enumerate(prompts):
            hits, reusable = 0, (len(prompt) - 1) // self.block
            for i, key in enumerate(self.keys(prompt)):
                slot = self._slots.get(key)
                if slot is None:
                    slot = self._take_slot()
                    if slot is None:  # every block pinned: the rest of this prompt is not stored
                        break
                    self._slots[key] = write[r, i] = slot
                    written.add(key)
                    lease.new.append(key)
                elif key in written:  # an earlier request of this batch writes it: not readable yet
                    continue
                elif i == hits and i < reusable:
                    read[r, i] = slot
                    hits += 1
                self._pin(key)
                lease.pinned.append(key)
            cached.append(hits * self.block)
        need = max((len(p) - c for p, c in zip(prompts, cached)), default=1)
        suffix = next(s for s in suffix_buckets if s >= need)
        start = np.zeros(slots, dtype=np.int64)
        start[:len(prompts)] = np.minimum(cached, P - suffix)
        self.hit_tokens += int(start.sum())
        self.prompt_tokens += sum(len(p) for p in prompts)
        return suffix, BlockPlan(*map(torch.from_numpy, (start, read, write))), lease

    def empty_plan(self, slots: int, prompt_bucket: int) -> BlockPlan:
        """A plan that reads and writes only scratch (warm-up)."""
        read = torch.full((slots, prompt_bucket // self.block), self.scratch, dtype=torch.int64)
        return BlockPlan(torch.zeros(slots, dtype=torch.int64), read, read.clone())

    def release(self, lease: Lease, written: bool = True) -> None:
        """The device has finished the leased batch; ``written=False``: it failed, so its new blocks hold
        nothing and are dropped. Blocks are unpinned deepest first, so a chain's tail is evicted before its head."""
        for key in reversed(lease.pinned):
            self._unpin(key)
        if not written:
            for key in lease.new:
                if key in self._lru:
                    del self._lru[key]
                    self._free.append(self._slots.pop(key))

    def clear(self) -> None:
        """Drop every block (the counters stay): a benchmark point starts from an empty store. Between
        batches only: a pinned block is a batch in flight."""
        if self._refs:
            raise RuntimeError(f"{len(self._refs)} blocks are pinned by batches in flight; clear between batches")
        self._slots.clear()
        self._lru.clear()
        self._free = list(range(self.capacity - 1, -1, -1))

    def _pin(self, key: bytes) -> None:
        refs = self._refs.get(key, 0)
        if not refs:
            self._lru.pop(key, None)
        self._refs[key] = refs + 1

    def _unpin(self, key: bytes) -> None:
        refs = self._refs.pop(key) - 1
        if refs:
            self._refs[key] = refs
        else:
            self._lru[key] = None  # most recently used

    def _take_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        if not self._lru:
            return None
        key, _ = self._lru.popitem(last=False)
        self.evictions += 1
        return self._slots.pop(key)

    def stats(self) -> dict[str, float]:
        """Counters since start: prompt tokens seen, tokens not prefilled thanks to the store, their ratio,
        blocks and bytes held, the pool's bytes, evictions."""
        held = len(self._slots)
        return {"hit_tokens": self.hit_tokens, "prompt_tokens": self.prompt_tokens,
                "hit_ratio": self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
                "blocks_held": held, "bytes_held": held * self.block_bytes, "bytes_budget": self.pool.nbytes,
                "pinned_blocks": len(self._refs), "evictions": self.evictions}

    # ---- device: copies between the pool and the batch's prompt slots --------------------------
    def load(self, cache: BeamKVCache, read: torch.Tensor) -> None:
        """read: [R, NB] -> the blocks' k and v into the first NB * block positions of the R prompt slots."""
        R, NB = read.shape
        for layer in range(self.pool.shape[1]):
            blocks = self.pool[read, layer]  # [R, NB, 2, block, Hkv, D]
            for i, prompt in enumerate((cache.prompt_k, cache.prompt_v)):
                prompt[layer, :R, :NB * self.block].unflatten(1, (NB, self.block)).copy_(blocks[:, :, i])

    def save(self, cache: BeamKVCache, write: torch.Tensor) -> None:
        """write: [R, NB] -> prompt block j of slot r into pool block write[r, j] (scratch: discarded)."""
        R, NB = write.shape
        for layer in range(self.pool.shape[1]):
            for i, prompt in enumerate((cache.prompt_k, cache.prompt_v)):
                self.pool[:, layer, i].index_put_(
                    (write,), prompt[layer, :R, :NB * self.block].unflatten(1, (NB, self.block)))
