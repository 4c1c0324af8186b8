"""Staged attention for one decode step of beam search over a shared prompt.

Each of the W beams of request r has one new query token. It attends to r's prompt keys (shared by
all beams, stored once) and to its own <= L beam keys. The two stages are computed apart and merged
by log-sum-exp (natural log), which equals one softmax over the concatenated keys:

* shared stage: all W beams x G group heads of request r are the queries of one non-causal pass
  over r's prompt KV of kv head h, masked to ``prompt_len[r]``: a [W*G, P] score matrix per
  (request, kv head), never a copy of the prompt per beam;
* beam stage: each beam over its own first ``beam_len`` keys, position l read from the slot of beam
  ``beam_src[r, w, l]`` (the beam that decoded it: a beam search never moves decoded keys, it
  records which beam each surviving beam descends from);
* merge: ``merge_attention_states``.

``staged_attention_reference`` is the plain-PyTorch definition (float32 inside); ``staged_attention``
dispatches to the fused Triton kernel (``triton_staged_attention``) on CUDA or when asked. No host
syncs and no data-dependent shapes: both paths can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["merge_attention_states", "staged_attention", "staged_attention_reference"]

Backend = Literal["auto", "torch", "triton"]


def merge_attention_states(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor,
                           lse2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attentions over disjoint key sets into the attention over their union.

    Args:
        o1, o2: [..., D] softmax-weighted values of each key set.
        lse1, lse2: [...] natural-log log-sum-exp of each set's scaled scores; -inf for an empty set
            (its ``o`` is then ignored).

    Returns:
        (o [..., D], lse [...]): o is -inf-safe (0 where both sets are empty).
    """
    lse = torch.logaddexp(lse1, lse2)
    base = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # both empty: weights exp(-inf) = 0
    w1, w2 = torch.exp(lse1 - base)[..., None], torch.exp(lse2 - base)[..., None]
    zero = torch.zeros_like(o1)
    return torch.where(w1 > 0, o1 * w1, zero) + torch.where(w2 > 0, o2 * w2, zero), lse


def _masked_softmax_attend(scores: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores: [..., Q, N] (-inf = masked), v: [..., N, D] -> (out [..., Q, D], lse [..., Q])."""
    lse = torch.logsumexp(scores, dim=-1)
    base = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # all masked: p = 0, out = 0
    return torch.exp(scores - base[..., None]) @ v, lse


def _shared_stage(q: torch.Tensor, prompt_k: torch.Tensor, prompt_v: torch.Tensor,
                  prompt_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [R, W, H, D] float32; prompt_k, prompt_v: [R, Hkv, P, D] -> (out [R, W, H, D], lse [R, W, H])."""
    R, W, H, D = q.shape
    Hkv, P = prompt_k.shape[1], prompt_k.shape[2]
    G = H // Hkv
    queries = q.reshape(R, W, Hkv, G, D).permute(0, 2, 1, 3, 4).reshape(R, Hkv, W * G, D)
    scores = queries @ prompt_k.float().transpose(-1, -2) / math.sqrt(D)  # [R, Hkv, W*G, P]
    keep = torch.arange(P, device=q.device) < prompt_len[:, None]  # [R, P]
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    values = prompt_v.float().masked_fill(~keep[:, None, :, None], 0.0)  # padding may hold anything, NaN too
    out, lse = _masked_softmax_attend(scores, values)  # [R, Hkv, W*G, D], [R, Hkv, W*G]
    out = out.view(R, Hkv, W, G, D).permute(0, 2, 1, 3, 4).reshape(R, W, H, D)
    return out, lse.view(R, Hkv, W, G).permute(0, 2, 1, 3).reshape(R, W, H)


def _beam_stage(q: torch.Tensor, beam_k: torch.Tensor, beam_v: torch.Tensor, beam_len: torch.Tensor,
                beam_src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [R, W, H, D] float32; beam_k, beam_v: [R, W, Hkv, L, D]; beam_src: [R, W, L]
    -> (out [R, W, H, D], lse [R, W, H])."""
    R, W, H, D = q.shape
    Hkv, L = beam_k.shape[2], beam_k.shape[3]
    src = beam_src[:, :, None, :, None].expand(R, W, Hkv, L, D)  # each beam's own keys, wherever they lie
    beam_k, beam_v = beam_k.gather(1, src), beam_v.gather(1, src)
    queries = q.reshape(R, W, Hkv, H // Hkv, D)
    scores = queries @ beam_k.float().transpose(-1, -2) / math.sqrt(D)  # [R, W, Hkv, G, L]
    keep = torch.arange(L, device=q.device) < beam_len  # [L]
    values = beam_v.float().masked_fill(~keep[:, None], 0.0)
    out, lse = _masked_softmax_attend(scores.masked_fill(~keep, float("-inf")), values)
    return out.reshape(R, W, H, D), lse.reshape(R, W, H)


def staged_attention_reference(q: torch.Tensor, prompt_k: torch.Tensor, prompt_v: torch.Tensor,
                               prompt_len: torch.Tensor, beam_k: torch.Tensor, beam_v: torch.Tensor,
                               beam_len: torch.Tensor, beam_src: torch.Tensor) -> torch.Tensor:
    """The definition of staged attention, in float32 PyTorch. Arguments as in ``staged_attention``."""
    qf = q.float()
    shared_out, shared_lse = _shared_stage(qf, prompt_k, prompt_v, prompt_len)
    beam_out, beam_lse = _beam_stage(qf, beam_k, beam_v, beam_len, beam_src)
    out, _ = merge_attention_states(shared_out, shared_lse, beam_out, beam_lse)
    return out.to(q.dtype)


def staged_attention(q: torch.Tensor, prompt_k: torch.Tensor, prompt_v: torch.Tensor, prompt_len: torch.Tensor,
                     beam_k: torch.Tensor, beam_v: torch.Tensor, beam_len: torch.Tensor, beam_src: torch.Tensor,
                     backend: Backend = "auto") -> torch.Tensor:
    """Attention of each beam's new token over its request's valid prompt keys and its own beam keys.

    Args:
        q: [R, W, H, D] one query token per beam.
        prompt_k, prompt_v: [R, Hkv, P, D] shared prompt cache; positions ``>= prompt_len[r]`` are
            padding, never read into the result, whatever they hold (``prompt_len[r] == 0`` is
            allowed: an empty slot).
        prompt_len: [R] int64 device tensor.
        beam_k, beam_v: [R, W, Hkv, L, D] per-beam cache, the current token's k/v already written:
            ``beam_k[r, w, :, l]`` is position l as decoded by beam w of that step.
        beam_len: 0-d int64 device tensor, ``1 <= beam_len <= L``: valid positions of every beam.
        beam_src: [R, W, L] int64, values in [0, W): beam w's position l lies in beam ``beam_src[r, w, l]``'s
            slot (its ancestor at that step; ``arange(W)`` everywhere for a cache that was reordered).
        backend: ``"auto"`` (Triton on CUDA, else PyTorch), ``"torch"`` or ``"triton"`` (also on the
            CPU under ``TRITON_INTERPRET=1``).

    Returns:
        [R, W, H, D] in q's dtype. Head h reads kv head ``h // (H // Hkv)``; scale ``1/sqrt(D)``.
    """
    if backend == "auto":
        backend = "triton" if q.is_cuda else "torch"
    if backend == "torch":
        return staged_attention_reference(q, prompt_k, prompt_v, prompt_len, beam_k, beam_v, beam_len, beam_src)
    if backend != "triton":
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton'; got {backend!r}")
    # Imported here: Triton decides at import whether its kernels are interpreted (TRITON_INTERPRET).
    from .triton_staged_attention import triton_staged_attention
    return triton_staged_attention(q, prompt_k, prompt_v, prompt_len, beam_k, beam_v, beam_len, beam_src)
