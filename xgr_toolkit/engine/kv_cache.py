"""BeamKVCache: the prompt's KV stored once per request, and a few decoded tokens per beam.

Buffers are allocated once by :meth:`BeamKVCache.setup`; every later call only writes into them,
so each decode step sees the same shapes (compile- and CUDA-graph-friendly). The shared prompt
cache is written only by prefill: beams never copy, fork or gather it. ``reorder`` rewrites only
the per-beam cache's lineage: decoded keys stay where their step wrote them, and each beam finds its
earlier ones through ``lineage`` (staged attention's ``beam_src``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BeamKVCache"]


class BeamKVCache(nn.Module):
    """Per layer: a shared prompt cache [R, Hkv, P, D] and a per-beam cache [R, W, Hkv, L, D].

    The prompt cache is stored token-major ([R, P, Hkv, D] in memory), as the projections leave k and v,
    and handed out as transposed views, so a write never transposes. The projections write into the
    views of :meth:`prompt_slots` and :meth:`beam_slots` themselves (inside their compiled region)."""

    def setup(self, num_layers: int, requests: int, prompt_len: int, beam_width: int, levels: int,
              num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
        """Allocate for R = ``requests`` slots, prompts up to P = ``prompt_len``, W beams, L levels."""
        prompt = (num_layers, requests, prompt_len, num_kv_heads, head_dim)
        beam = (num_layers, requests, beam_width, num_kv_heads, levels, head_dim)
        for name, shape in (("prompt_k", prompt), ("prompt_v", prompt), ("beam_k", beam), ("beam_v", beam)):
            self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        # lineage[r, w, l]: the beam whose slot holds beam w's position l (written by reorder)
        self.register_buffer("lineage", torch.zeros(requests, beam_width, levels, dtype=torch.int64, device=device),
                             persistent=False)

    def prompt_slots(self, layer: int, requests: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where prefill's k and v go: views [R', Hkv, T, D] of the first R' requests and T positions."""
        return (self.prompt_k[layer, :requests, :tokens].transpose(1, 2),
                self.prompt_v[layer, :requests, :tokens].transpose(1, 2))

    def write_prompt(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [R', Hkv, T, D] -> the first R' requests' prompt cache at positions [R', T] (distinct within a row)."""
        rows = torch.arange(positions.shape[0], device=positions.device)[:, None]
        self.prompt_k[layer].index_put_((rows, positions), k.transpose(1, 2))
        self.prompt_v[layer].index_put_((rows, positions), v.transpose(1, 2))

    def beam_slots(self, layer: int, requests: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where a decode step's k and v go: views [R'*W, Hkv, 1, D], beam position ``slot`` of every beam."""
        R, W, Hkv, D = requests, self.beam_k.shape[2], self.beam_k.shape[3], self.beam_k.shape[5]
        return (self.beam_k[layer, :R, :, :, slot].view(R * W, Hkv, 1, D),
                self.beam_v[layer, :R, :, :, slot].view(R * W, Hkv, 1, D))

    def reorder(self, parent: torch.Tensor, filled: int) -> None:
        """Before a decode step writes position ``filled``: beam w now continues beam ``parent[r, w]``
        (parent: [R', W] int64) of the step before, whose first ``filled`` positions it takes over; its
        position ``filled`` will be its own slot's.

        No key or value moves (W x filled tokens a request and layer would): only the lineage, [R', W, L].
        """
        R, W = parent.shape
        lineage = self.lineage[:R]
        if filled:
            lineage[:, :, :filled] = lineage[:, :, :filled].gather(1, parent[..., None].expand(R, W, filled))
        lineage[:, :, filled] = torch.arange(W, device=parent.device)

    def prompt(self, layer: int, requests: int, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views [R', Hkv, P', D] of the shared prompt cache (strided: token-major storage)."""
        return (self.prompt_k[layer, :requests, :prompt_len].transpose(1, 2),
                self.prompt_v[layer, :requests, :prompt_len].transpose(1, 2))

    def beams(self, layer: int, requests: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views [R', W, Hkv, L, D] of the per-beam cache, and the lineage [R', W, L] that reads it."""
        return self.beam_k[layer, :requests], self.beam_v[layer, :requests], self.lineage[:requests]
