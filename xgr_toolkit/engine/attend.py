"""Attention strategies the decoder calls (see :data:`xgr_toolkit.modules.AttendFn`) during serving."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modules import causal_attend
from ..ops import staged_attention
from .kv_cache import BeamKVCache

__all__ = ["DecodeAttend", "PrefillAttend", "duplicated_kv_attention"]


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
