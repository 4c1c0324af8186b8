"""Attention strategies the decoder calls (see :data:`xgr_toolkit.modules.AttendFn`) during serving."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modules import causal_attend
from ..modules.attention import causal_attend_at
from ..ops import staged_attention
from .kv_cache import BeamKVCache

__all__ = ["DecodeAttend", "PrefillAttend", "SuffixPrefillAttend", "duplicated_kv_attention"]


class PrefillAttend:
    """Prefill: the prompt's KV goes once into the shared cache; causal attention over the prompt.

    Prompts are right-padded, so causal attention keeps every real position blind to the padding.
    """

    def __init__(self, cache: BeamKVCache, requests: int, prompt_bucket: int):
        self.cache, self.R, self.P = cache, requests, prompt_bucket

    def kv_out(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the layer's projections write k and v: the shared prompt cache."""
        return self.cache.prompt_slots(layer, self.R, self.P)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [R, H, P, D]; k, v: [R, Hkv, P, D] (already in the cache) -> [R, H, P, D]."""
        return causal_attend(layer, q, k, v)


class SuffixPrefillAttend:
    """Prefill of the positions a prompt store did not hold: row r computes positions [R, S], ``start[r]``
    onwards, and its positions before them already hold the stored prefix's KV (``PromptStore.load``).

    The new k and v go into the shared cache at their positions (an indexed write outside the compiled
    regions, since a row's window starts where its stored prefix ends), then the queries attend causally
    over the cached prompt bucket. Positions past a prompt's end hold anything; no real query sees them.
    """

    def __init__(self, cache: BeamKVCache, requests: int, prompt_bucket: int, positions: torch.Tensor):
        self.cache, self.R, self.P, self.positions = cache, requests, prompt_bucket, positions

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        self.cache.write_prompt(layer, self.positions, k, v)
        keys, values = self.cache.prompt(layer, self.R, self.P)  # [R, Hkv, P, D]
        return causal_attend_at(q, keys, values, positions)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [R, H, S, D]; k, v: [R, Hkv, S, D] -> [R, H, S, D]."""
        return self._attend(layer, q, k, v, self.positions)

    def attend_last(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    last: torch.Tensor) -> torch.Tensor:
        """The final layer: q [R, H, 1, D] of the tokens ``last`` [R] (indices into the S computed)."""
        return self._attend(layer, q, k, v, self.positions.gather(1, last[:, None]))


class DecodeAttend:
    """One decode step: each beam's new token attends to its request's shared prompt KV and its own
    decoded tokens (staged attention); the new token's KV goes into beam position ``slot``."""

    def __init__(self, cache: BeamKVCache, slot: int, beam_len: torch.Tensor, prompt_len: torch.Tensor,
                 requests: int, beam_width: int, prompt_bucket: int, shared_prompt_kv: bool = True):
        self.cache, self.slot, self.beam_len, self.prompt_len = cache, slot, beam_len, prompt_len
        self.R, self.W, self.P = requests, beam_width, prompt_bucket
        self.attention = staged_attention if shared_prompt_kv else duplicated_kv_attention

    def kv_out(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the layer's projections write k and v: beam position ``slot`` of the per-beam cache."""
        return self.cache.beam_slots(layer, self.R, self.slot)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [R*W, H, 1, D]; k, v: [R*W, Hkv, 1, D] (already in the cache) -> [R*W, H, 1, D]."""
        R, W = self.R, self.W
        prompt_k, prompt_v = self.cache.prompt(layer, R, self.P)
        beam_k, beam_v, lineage = self.cache.beams(layer, R)
        out = self.attention(q.reshape(R, W, q.shape[1], -1), prompt_k, prompt_v, self.prompt_len,
                               beam_k, beam_v, self.beam_len, lineage)  # [R, W, H, D]
        return out.reshape(R * W, -1, 1, out.shape[-1])


def duplicated_kv_attention(q: torch.Tensor, prompt_k: torch.Tensor, prompt_v: torch.Tensor, prompt_len: torch.Tensor,
                            beam_k: torch.Tensor, beam_v: torch.Tensor, beam_len: torch.Tensor,
                            beam_src: torch.Tensor) -> torch.Tensor:
    """What a plain engine does (the ablation of the shared prompt KV): copy the prompt KV to every beam,
    then one masked SDPA per beam. Arguments and result as in :func:`~xgr_toolkit.ops.staged_attention`."""
    R, W, H, D = q.shape
    Hkv, P, L = prompt_k.shape[1], prompt_k.shape[2], beam_k.shape[3]
    src = beam_src[:, :, None, :, None].expand(R, W, Hkv, L, D)
    beam_k, beam_v = beam_k.gather(1, src), beam_v.gather(1, src)
    k = torch.cat((prompt_k[:, None].expand(R, W, Hkv, P, D), beam_k), dim=3).reshape(R * W, Hkv, P + L, D)
    v = torch.cat((prompt_v[:, None].expand(R, W, Hkv, P, D), beam_v), dim=3).reshape(R * W, Hkv, P + L, D)
    position = torch.arange(P + L, device=q.device)
    keep = torch.where(position < P, position[None] < prompt_len[:, None], position[None] - P < beam_len)  # [R, P+L]
    mask = keep.repeat_interleave(W, dim=0)[:, None, None, :]  # [R*W, 1, 1, P+L]
    # heads repeated as HF's repeat_kv does: SDPA's fused kernels take a mask only without enable_gqa
    k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    out = F.scaled_dot_product_attention(q.reshape(R * W, H, 1, D), k, v, attn_mask=mask)
    return out.reshape(R, W, H, D)
