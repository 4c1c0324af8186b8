"""GRDecoder: a decoder-only transformer over context and semantic-ID tokens."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import AttendFn, GroupedQueryAttention, KVOut, attend_last, causal_attend, kv_out_of
from .mlp import SwiGLU
from .rms_norm import RMSNorm
from .rotary import RotaryEmbedding

__all__ = ["DecoderLayer", "GRDecoder", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # label of positions the loss skips


class DecoderLayer(nn.Module):
    def __init__(self, layer: int, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = GroupedQueryAttention(layer, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                                               cfg.head_dim, cfg.qk_norm, cfg.qkv_bias, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        """x: [B, T, hidden] -> [B, T, hidden]."""
        layer = self.self_attn.layer
        q, k, v = self.attention_inputs(x, cos, sin, kv_out_of(attend, layer))
        return self.attention_output(x, attend(layer, q, k, v))

    def attention_inputs(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         kv_out: KVOut = None) -> tuple[torch.Tensor, ...]:
        """Everything before attention: norm, projections, q/k norm, RoPE; k and v into ``kv_out``."""
        return self.self_attn.project(self.input_layernorm(x), cos, sin, kv_out)

    def attention_output(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: output projection, residual, the MLP block."""
        x = x + self.dropout(self.self_attn.output(attn))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))

    def handoff(self, x: torch.Tensor, attn: torch.Tensor, following: DecoderLayer, cos: torch.Tensor,
                sin: torch.Tensor, kv_out: KVOut = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """This layer's block after attention, then the ``following`` layer's block before its attention:
        one compiled region from one attention to the next, so the residual add that ends this layer and
        the norm that starts the next are one kernel. -> (x [B, T, hidden], the next (q, k, v))."""
        x = self.attention_output(x, attn)
        return x, following.attention_inputs(x, cos, sin, kv_out)


class GRDecoder(nn.Module):
    """Llama/Qwen3-style decoder. Parameter names follow Hugging Face's, minus the ``model.`` prefix.

    ``forward`` with the default ``attend`` is the training forward (causal, teacher forcing);
    the beam engine passes its own ``attend`` that reads and writes its KV cache.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(i, cfg) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def compile_layers(self, **options) -> None:
        """Regional compilation: ``torch.compile`` the blocks between attentions (``handoff``), the first
        layer's block before attention and the last layer's block after it.

        Every layer runs the same code, so each of the three regions compiles once per input shape for
        all layers, and compile time does not grow with depth. Attention stays outside, so any ``attend`` works
        (cache writes, custom kernels); inside a CUDA graph it costs no launch gaps either.
        """
        def compiled(fn):
            return torch.compile(fn, fullgraph=True, **options)
        first, last = self.layers[0], self.layers[-1]
        first.attention_inputs = compiled(first.attention_inputs)
        last.attention_output = compiled(last.attention_output)
        for layer in self.layers[:-1]:
            layer.handoff = compiled(layer.handoff)

    def fuse_projections(self) -> None:
        """Serving: q/k/v and gate/up each as one product (fewer, wider kernels). Adds those weights once
        more (the fused copies); meant for a module tree of :meth:`sharing_weights`, so that the original
        keeps its own, HF-named parameters."""
        for layer in self.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()

    def sharing_weights(self) -> GRDecoder:
        """A new module tree over the same parameters and buffers (to compile without touching this one)."""
        return copy.deepcopy(self, memo={id(t): t for t in (*self.parameters(), *self.buffers())})

    def hidden_states(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                      attend: AttendFn = causal_attend, last: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: [B, T]; positions: [B, T] (default 0..T-1) -> final-normed states [B, T, hidden].

        last: [B], for causal attention (training's, prefill's): the one position of each row, an index into
        the tokens passed, whose state is wanted -> [B, 1, hidden]. The final layer still makes every
        position's keys and values (``attend``'s cache gets them all), but attends (``attend_last``) and runs
        its MLP for that position only.
        """
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        x = self.dropout(self.embed_tokens(tokens))
        cos, sin = self.rotary(positions, x.dtype)
        first = self.layers[0]
        q, k, v = first.attention_inputs(x, cos, sin, kv_out_of(attend, first.self_attn.layer))
        for layer, following in zip(self.layers, [*self.layers[1:], None]):
            if following is None and last is not None:
                rows = torch.arange(x.shape[0], device=x.device)
                x, q = x[rows, last][:, None], q[rows, :, last][:, :, None]  # [B, 1, hidden], [B, H, 1, D]
                attn = attend_last(attend, layer.self_attn.layer, q, k, v, last)
            else:
                attn = attend(layer.self_attn.layer, q, k, v)
            if following is None:
                x = layer.attention_output(x, attn)
            else:
                x, (q, k, v) = layer.handoff(x, attn, following, cos, sin, kv_out_of(attend, following.self_attn.layer))
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                attend: AttendFn = causal_attend) -> torch.Tensor:
        """tokens: [B, T] -> logits [B, T, V]."""
        return self.lm_head(self.hidden_states(tokens, positions, attend))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy with teacher forcing.

        tokens: [B, T] inputs; labels: [B, T], the token each position must predict, or
        ``IGNORE_INDEX`` (history positions, padding). Returns the mean over labelled positions.
        """
        logits = self(tokens)  # [B, T, V]
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
