"""Grouped-query self-attention with optional per-head q/k RMSNorm (Qwen3).

The module owns the projections, norms and RoPE; *how* queries meet keys is a strategy passed in
(:data:`AttendFn`), so the same weights serve training (causal attention over the sequence) and the
beam engine (a shared prompt cache plus per-beam caches).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .fused_linear import fused_linear
from .rms_norm import RMSNorm
from .rotary import apply_rotary

__all__ = ["AttendFn", "GroupedQueryAttention", "KVOut", "attend_last", "causal_attend", "causal_attend_at",
           "kv_out_of"]

# attend(layer, q [B, H, T, D], k [B, Hkv, T, D], v [B, Hkv, T, D]) -> out [B, H, T, D]. A strategy with a KV
# cache also has kv_out(layer) -> (k, v) views [B, Hkv, T, D] of the cache: the projections write the new k
# and v there themselves (compiled, the kernel that computes them stores them; no copy kernels).
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
KVOut = tuple[torch.Tensor, torch.Tensor] | None


def kv_out_of(attend: AttendFn, layer: int) -> KVOut:
    """The cache slots of ``attend`` for ``layer``'s new k and v; None for a strategy without a cache."""
    return attend.kv_out(layer) if hasattr(attend, "kv_out") else None


def causal_attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal attention over the tokens passed in (training, full recompute)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def causal_attend_at(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Causal attention of queries at given positions: q [B, H, T, D]; k, v [B, Hkv, K, D] at positions
    0..K-1; position [B, T] (or [B] where T = 1) -> [B, H, T, D], query t of row b seeing keys 0..position[b, t].

    The H // Hkv query heads of a kv head meet the same keys under the same mask, so they go in as that
    kv head's query rows: no key is repeated, and without ``enable_gqa`` SDPA's fused kernels take a mask."""
    B, H, T, D = q.shape
    Hkv, K = k.shape[1], k.shape[2]
    G = H // Hkv
    keep = torch.arange(K, device=k.device) <= position.reshape(B, T, 1)  # [B, T, K]
    # query rows of a kv head: (head in group, t), so the mask repeats over the group
    mask = keep[:, None] if T == 1 else keep.repeat(1, G, 1)[:, None]  # [B, 1, 1 or G*T, K]
    out = F.scaled_dot_product_attention(q.reshape(B, Hkv, G * T, D), k, v, attn_mask=mask)
    return out.reshape(B, H, T, D)  # SDPA on CUDA hands back [B, G*T, Hkv, D] in memory: no view


def attend_last(attend: AttendFn, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                last: torch.Tensor) -> torch.Tensor:
    """The final layer's one query a row, at ``last`` [B] of the tokens passed (``GRDecoder.hidden_states``):
    q [B, H, 1, D]; k, v [B, Hkv, T, D] -> [B, H, 1, D]. Causal over k and v, or the strategy's own
    ``attend_last(layer, q, k, v, last)`` where it has one (its keys are more than the tokens passed)."""
    if hasattr(attend, "attend_last"):
        return attend.attend_last(layer, q, k, v, last)
    return causal_attend_at(q, k, v, last)


class GroupedQueryAttention(nn.Module):
    def __init__(self, layer: int, hidden_size: int, num_heads: int, num_kv_heads: int,
                 head_dim: int, qk_norm: bool, qkv_bias: bool, eps: float):
        super().__init__()
        self.layer, self.num_heads, self.num_kv_heads, self.head_dim = layer, num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.q_norm = RMSNorm(head_dim, eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, eps) if qk_norm else nn.Identity()
        self.qkv_proj: nn.Linear | None = None  # q, k and v as one product: set by fuse_projections()

    def fuse_projections(self) -> None:
        """Serving: compute q, k and v with one product (new weights); the three separate maps are dropped."""
        self.qkv_proj = fused_linear(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_out: KVOut = None) -> tuple[torch.Tensor, ...]:
        """x: [B, T, hidden]; cos, sin: [B, T, 1, D] -> q [B, H, T, D], k, v [B, Hkv, T, D] (normed, rotated;
        transposed views of token-major tensors), k and v also written into ``kv_out`` when given."""
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.qkv_proj(x).split((H * D, Hkv * D, Hkv * D), dim=-1)
        # rotated token-major and transposed last: k and v stay token-major in memory, as the cache stores them
        q = apply_rotary(self.q_norm(q.view(B, T, H, D)), cos, sin).transpose(1, 2)
        k = apply_rotary(self.k_norm(k.view(B, T, Hkv, D)), cos, sin).transpose(1, 2)
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        if kv_out is not None:
            kv_out[0].copy_(k)
            kv_out[1].copy_(v)
        return q, k, v

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """out: [B, H, T, D] -> [B, T, hidden]."""
        B, _, T, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        """x: [B, T, hidden]; cos, sin: [B, T, 1, D] -> [B, T, hidden]."""
        return self.output(attend(self.layer, *self.project(x, cos, sin, kv_out_of(attend, self.layer))))
