"""BeamSearch: the device side of the xGR engine, one method a phase.

prefill writes the prompt's KV once into the shared cache (or only its positions a prompt store did not
hold) and returns the last position's state;
``first_step`` picks each request's W best valid level-0 codes; ``decode_step(t)`` runs the W beam
tokens of every request through the decoder with staged attention and picks the W best valid
(beam, code) pairs; ``finish`` orders the final SIDs best first. No host syncs, no data-dependent
shapes: each phase can be compiled and captured in a CUDA graph per (R, P) bucket.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modules import GRDecoder
from ..ops import MaskedBeamSorter
from ..reference import code_log_probs
from .attend import DecodeAttend, PrefillAttend, SuffixPrefillAttend
from .batch import BeamBatch
from .catalog_index import CatalogIndex
from .kv_cache import BeamKVCache

__all__ = ["BeamSearch", "BeamState"]

BeamState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(scores [R, W] float32, keys [R, W] int64 SID-prefix keys, codes [R, W] int64 last codes,
parent [R, W] int64): beams in SID order, dead beams scored -inf."""


def keep_widths(scores: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Kill every beam of request r past its own width: scores [R, W], width [R] -> [R, W].

    The W survivors are the best by (score desc, SID asc); the best width[r] of them are exactly the
    top width[r], since a narrower beam's survivors are a prefix of the wider ranking.
    """
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                                            .expand_as(order))
    return scores.masked_fill(rank >= width[:, None], float("-inf"))


class BeamSearch(nn.Module):
    def __init__(self, decoder: GRDecoder, index: CatalogIndex, cache: BeamKVCache, beam_width: int,
                 shared_prompt_kv: bool = True, masked_sorter: bool = True, compile: bool = False):
        super().__init__()
        self.decoder, self.index, self.cache, self.W = decoder, index, cache, beam_width
        self.shared_prompt_kv = shared_prompt_kv
        # the ablation: torch.topk over all W x C candidates, no early termination
        self.sorter = MaskedBeamSorter("auto" if masked_sorter else "torch")
        cfg = decoder.config
        self.sid_offset, self.C, self.L = cfg.sid_offset, cfg.codes, cfg.levels
        # beam_len of decode step t lives on the device so that steps need no host copies
        self.register_buffer("beam_lens", torch.arange(cfg.levels + 1, device=cache.beam_k.device), persistent=False)
        if compile:  # the head's product, then both normalisations fused: a few passes over [N, V], not seven
            self._log_probs = torch.compile(self._log_probs, fullgraph=True, dynamic=False)

    def _log_probs(self, hidden: torch.Tensor, level: int, level_norm: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] final-normed states; level_norm: [N] bool -> [N, C] float32 log-probabilities
        of the level's codes, normalised over the vocabulary or, where level_norm, over the level's codes."""
        logits = self.decoder.lm_head(hidden)  # [N, V]
        vocab = code_log_probs(logits, self.sid_offset, self.C, level, "vocab")
        return torch.where(level_norm[:, None], code_log_probs(logits, self.sid_offset, self.C, level, "level"), vocab)

    def _select(self, level: int, scores: torch.Tensor, keys: torch.Tensor, log_probs: torch.Tensor,
                batch: BeamBatch) -> BeamState:
        """scores, keys: [R, Wi]; log_probs: [R, Wi, C] -> the W best valid candidates."""
        valid = self.index.valid(level, keys)  # [R, Wi, C]
        valid = self.index.forbid(valid, keys, batch.forbidden_keys[level], batch.forbidden_codes[level])
        scores, parent, code = self.sorter(scores, log_probs, valid, self.W)  # [R, W] each
        keys = keys.gather(1, parent) * self.C + code
        return keep_widths(scores, batch.width), keys, code, parent

    def prefill(self, batch: BeamBatch, start: torch.Tensor | None = None, suffix: int = 0) -> torch.Tensor:
        """Prompt KV -> shared cache; returns the final-normed state after each prompt's last token, [R, hidden].

        start: [R], where a prompt store already copied each row's positions before ``start[r]`` into the
        cache: prefill then computes only ``suffix`` = S positions a row from there (start + S <= P)."""
        R, P = batch.tokens.shape
        # only the last position's state is wanted: the final layer attends and runs its MLP for it alone
        if start is None:
            positions = torch.arange(P, device=batch.tokens.device).expand(R, P)
            hidden = self.decoder.hidden_states(batch.tokens, positions, PrefillAttend(self.cache, R, P),
                                                last=batch.prompt_len - 1)  # [R, 1, hidden]
        else:
            positions = start[:, None] + torch.arange(suffix, device=start.device)  # [R, S]
            hidden = self.decoder.hidden_states(batch.tokens.gather(1, positions), positions,
                                                SuffixPrefillAttend(self.cache, R, P, positions),
                                                last=batch.prompt_len - 1 - start)  # [R, 1, hidden]
        return hidden[:, 0]

    def first_step(self, last: torch.Tensor, batch: BeamBatch) -> BeamState:
        """last: [R, hidden] from prefill. One live root beam, plus dead ones where W > C so that W candidates
        exist to choose from."""
        R, roots = last.shape[0], -(-self.W // self.C)
        log_probs = self._log_probs(last, 0, batch.level_norm)[:, None].expand(R, roots, self.C)
        keys = torch.zeros(R, roots, dtype=torch.int64, device=last.device)
        scores = torch.full((R, roots), float("-inf"), device=last.device)
        scores[:, 0] = 0.0
        return self._select(0, scores, keys, log_probs, batch)

    def decode_step(self, t: int, state: BeamState, batch: BeamBatch) -> BeamState:
        """Feed the level t-1 codes, choose level t's: t in 1..L-1."""
        scores, keys, codes, parent = state
        R, P = batch.tokens.shape
        self.cache.reorder(parent, filled=t - 1)  # beams continue their parents' decoded positions 0..t-2
        tokens = self.sid_offset + (t - 1) * self.C + codes  # [R, W]
        positions = batch.prompt_len[:, None] + (t - 1)  # [R, 1] -> the same for every beam
        attend = DecodeAttend(self.cache, t - 1, self.beam_lens[t], batch.prompt_len, R, self.W, P,
                              self.shared_prompt_kv)
        hidden = self.decoder.hidden_states(tokens.reshape(R * self.W, 1),
                                            positions.expand(R, self.W).reshape(R * self.W, 1), attend)
        level_norm = batch.level_norm.repeat_interleave(self.W)
        log_probs = self._log_probs(hidden[:, 0], t, level_norm).view(R, self.W, self.C)
        return self._select(t, scores, keys, log_probs, batch)

    def finish(self, state: BeamState) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (scores [R, W] best first, ties by SID; index of each SID in the catalog's SIDs [R, W])."""
        scores, keys = state[0], state[1]
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        keys = keys.gather(1, order)
        sid_index = torch.searchsorted(self.index.sid_keys, keys).clamp(max=self.index.sid_keys.numel() - 1)
        return scores.gather(1, order), sid_index
