"""Counted work of one request: FLOPs and the fewest bytes, for utilisation and floors."""

from __future__ import annotations

from ..config import ModelConfig

__all__ = ["request_flops", "weight_bytes"]


def _linear_params(cfg: ModelConfig) -> int:
    """Weights a token multiplies through, per layer."""
    attn = cfg.hidden_size * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim + cfg.num_heads * cfg.head_dim \
        * cfg.hidden_size
    return attn + 3 * cfg.hidden_size * cfg.intermediate_size


def request_flops(cfg: ModelConfig, prompt: int, beam_width: int) -> dict[str, float]:
    """FLOPs of one request: prefill and decode (L-1 steps of W beam tokens attending to the prompt and
    their own tokens, a head row each).

    Prefill is what the answer needs: P tokens through every layer but the last, causal attention; in
    the last only the keys and values of all P, the rest (its attention, MLP, the head) for the last
    token alone, since the beams need nothing else of the prompt."""
    layers, hd, head = cfg.num_layers, cfg.num_heads * cfg.head_dim, 2 * cfg.hidden_size * cfg.vocab_size
    linear = 2 * _linear_params(cfg) * layers
    kv = 2 * cfg.hidden_size * 2 * cfg.num_kv_heads * cfg.head_dim  # a token's k and v products, one layer
    last_layer = prompt * kv + (linear // layers - kv) + 4 * prompt * hd
    prefill = prompt * linear // layers * (layers - 1) + 2 * prompt * prompt * hd * (layers - 1) + last_layer + head
    steps = cfg.levels - 1
    decode = steps * beam_width * (linear + 4 * (prompt + cfg.levels) * hd * layers + head)
    return {"prefill": float(prefill), "decode": float(decode), "total": float(prefill + decode)}


def weight_bytes(cfg: ModelConfig, bytes_per_value: int = 2) -> float:
    """Bytes of the weights a forward pass reads once (embedding rows excluded: few are read)."""
    return float((_linear_params(cfg) * cfg.num_layers + cfg.hidden_size * cfg.vocab_size) * bytes_per_value)
