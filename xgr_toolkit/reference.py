"""The reference constrained beam search: slow, obviously correct, and the definition of the result.

Semantics (every engine must reproduce them; ../docs/semantics.md explains them):

* A candidate is a beam's SID prefix extended by one code. Its score is the beam's score plus the
  code's log-probability: ``vocab`` normalisation takes the log-softmax over the whole vocabulary
  (what Hugging Face's constrained ``generate`` does), ``level`` over the level's C codes only.
* Only prefixes of valid SIDs are candidates; a SID is valid when at least one of its items is
  not excluded by the request.
* The W best candidates survive; ties go to the lexicographically smaller SID prefix. Fewer valid
  candidates than W leave fewer beams: nothing invalid is ever padded in.
* After L levels, the surviving SIDs (score descending, ties by SID) are written as their items
  (a SID shared by several items yields each of them, ids ascending), and the first K are returned.

Each step re-runs the whole model over ``prompt + prefix`` for every beam: no cache, no tricks.
"""

from __future__ import annotations

import torch

from .catalog import ItemCatalog
from .modules import GRDecoder
from .request import RecRequest, ScoredItem, sid_tokens

__all__ = ["code_log_probs", "reference_beam_search"]


def code_log_probs(logits: torch.Tensor, sid_offset: int, codes: int, level: int, normalize: str) -> torch.Tensor:
    """logits: [B, V] -> float32 log-probabilities of level ``level``'s codes, [B, C]."""
    start = sid_offset + level * codes
    logits = logits.float()
    if normalize == "vocab":
        return torch.log_softmax(logits, dim=-1)[:, start:start + codes]
    return torch.log_softmax(logits[:, start:start + codes], dim=-1)


def _allowed_children(catalog: ItemCatalog, exclude: frozenset[int]) -> dict[tuple[int, ...], list[int]]:
    """Trie of the valid SIDs: prefix -> codes that extend it towards a non-excluded item."""
    children: dict[tuple[int, ...], set[int]] = {}
    for item, sid in zip(catalog.item_ids.tolist(), catalog.codes.tolist()):
        if item in exclude:
            continue
        for depth in range(len(sid)):
            children.setdefault(tuple(sid[:depth]), set()).add(sid[depth])
    return {prefix: sorted(codes) for prefix, codes in children.items()}


@torch.no_grad()
def reference_beam_search(model: GRDecoder, catalog: ItemCatalog, request: RecRequest) -> list[ScoredItem]:
    """The top ``request.top_k`` items for ``request.prompt``, best first."""
    cfg = model.config
    device = next(model.parameters()).device
    children = _allowed_children(catalog, request.exclude_items)
    beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]  # (score, SID prefix)
    for level in range(cfg.levels):
        if not beams:
            break
        prefixes = torch.tensor([p for _, p in beams], dtype=torch.int64).view(len(beams), level)
        tokens = torch.cat((torch.tensor(request.prompt).expand(len(beams), -1),
                            sid_tokens(cfg, prefixes)), dim=1).to(device)  # [B, P + level]
        log_probs = code_log_probs(model(tokens)[:, -1], cfg.sid_offset, cfg.codes, level, request.normalize)
        scores = torch.tensor([s for s, _ in beams], dtype=torch.float32, device=device)[:, None] + log_probs
        scores = scores.cpu()  # [B, C] float32, as every engine adds them
        candidates = [(float(scores[b, c]), prefix + (c,))
                      for b, (_, prefix) in enumerate(beams) for c in children.get(prefix, ())]
        candidates.sort(key=lambda cand: (-cand[0], cand[1]))
        beams = candidates[:request.beam_width]
    items = [ScoredItem(item, score, sid) for score, sid in beams
             for item in catalog.items_of_sid(sid) if item not in request.exclude_items]
    return items[:request.top_k]
