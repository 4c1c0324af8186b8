"""Hugging Face transformers' constrained beam search on the same weights: the baseline to beat."""

from __future__ import annotations

import time

import torch

from ..catalog import ItemCatalog
from ..modules import GRDecoder
from ..request import RecRequest, sid_tokens

__all__ = ["HFConstrainedGenerate"]


class HFConstrainedGenerate:
    """``generate(num_beams=W, num_return_sequences=W, max_new_tokens=L, length_penalty=0,
    prefix_allowed_tokens_fn=<catalog trie>)`` in the decoder's dtype, SDPA attention."""

    def __init__(self, decoder: GRDecoder, catalog: ItemCatalog):
        from transformers import Qwen3Config, Qwen3ForCausalLM

        cfg = decoder.config
        hf_config = Qwen3Config(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
            max_position_embeddings=cfg.max_prompt_tokens + cfg.levels, tie_word_embeddings=cfg.tie_embeddings,
            pad_token_id=0, eos_token_id=1, bos_token_id=0, attn_implementation="sdpa")
        param = next(decoder.parameters())
        with torch.device(param.device):
            self.model = Qwen3ForCausalLM(hf_config).to(param.dtype).eval()
        self.model.model.load_state_dict({k: v for k, v in decoder.state_dict().items() if not k.startswith("lm_head")},
                                         strict=False)
        self.model.lm_head.weight.data.copy_(decoder.lm_head.weight)
        self.levels, self.device = cfg.levels, param.device
        tokens = sid_tokens(cfg, catalog.codes).tolist()  # [N, L]
        trie: dict[tuple[int, ...], set[int]] = {}
        for row in tokens:
            for depth in range(cfg.levels):
                trie.setdefault(tuple(row[:depth]), set()).add(row[depth])
        self.allowed = {prefix: sorted(children) for prefix, children in trie.items()}

    @torch.no_grad()
    def generate(self, requests: list[RecRequest]) -> float:
        """One batched generate over equal-length prompts; returns seconds."""
        prompt = len(requests[0].prompt)
        input_ids = torch.tensor([r.prompt for r in requests], device=self.device)

        def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
            return self.allowed.get(tuple(ids[prompt:].tolist()), [0])

        torch.cuda.synchronize()
        start = time.perf_counter()
        self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), num_beams=requests[0].beam_width,
                            num_return_sequences=requests[0].beam_width, max_new_tokens=self.levels,
                            do_sample=False, length_penalty=0.0, prefix_allowed_tokens_fn=allowed)
        torch.cuda.synchronize()
        return time.perf_counter() - start
