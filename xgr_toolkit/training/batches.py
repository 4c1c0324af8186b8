"""Teacher-forced batches for next-SID training.

A sample is a history of items and a target item. Written as tokens, the decoder reads the history's
SID tokens followed by the target's, and each of the target's L tokens is predicted from everything
before it::

    tokens: h0 h1 h2 h3 | t0 t1 t2        (the target's last token is never an input)
    labels: -  -  -  t0 | t1 t2 t3        (IGNORE_INDEX on history positions and padding)

Batches are padded on the right with :data:`PAD_TOKEN`, so every sequence keeps positions 0..T-1,
as the serving prompt does (the prompt is the history's SID tokens, nothing before them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..catalog import ItemCatalog
from ..config import ModelConfig
from ..modules import IGNORE_INDEX, GRDecoder
from ..request import sid_tokens

__all__ = ["PAD_TOKEN", "batch_from_codes", "batch_from_items", "code_table", "next_sid_loss"]

PAD_TOKEN = 0  # a context token (the vocabulary's first sid_offset ids are context tokens)


def batch_from_codes(cfg: ModelConfig, codes: torch.Tensor,
                     num_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs and labels.

    Args:
        codes: [B, N, L] SID codes of each sample's items, history first and target last, left-aligned
            (entries past a sample's ``num_items`` are ignored).
        num_items: [B] history length + 1 (the target), each >= 2.

    Returns:
        tokens [B, T], labels [B, T] with ``T = max(num_items) * L - 1``.
    """
    B, N, L = codes.shape
    if cfg.sid_offset <= PAD_TOKEN:
        raise ValueError(f"model.sid_offset must be > {PAD_TOKEN} so that the pad token is a context token")
    n = int(num_items.max())
    full = sid_tokens(cfg, codes[:, :n]).reshape(B, n * L)  # [B, n*L]
    pos = torch.arange(n * L, device=codes.device)  # [n*L]
    end = (num_items * L)[:, None]  # [B, 1] one past the target's last token
    full = torch.where(pos < end, full, PAD_TOKEN)
    # input position t predicts token t + 1; only the target's tokens (end - L <= t + 1 < end) count
    target = (pos[1:] >= end - L) & (pos[1:] < end)  # [B, n*L - 1]
    labels = torch.where(target, full[:, 1:], IGNORE_INDEX)
    tokens = torch.where(pos[:-1] < end - 1, full[:, :-1], PAD_TOKEN)  # the target's last token is no input
    return tokens, labels


def code_table(catalog: ItemCatalog, device: str | torch.device = "cpu") -> torch.Tensor:
    """[max_item_id + 1, L] codes indexed by item id (rows of ids not in the catalog are zero)."""
    table = torch.zeros(int(catalog.item_ids.max()) + 1, catalog.levels, dtype=torch.int64)
    table[catalog.item_ids] = catalog.codes
    return table.to(device)


def batch_from_items(cfg: ModelConfig, catalog: ItemCatalog, histories: list[list[int]],
                     targets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of item ids -> ``batch_from_codes``; unknown item ids raise CatalogError."""
    if len(histories) != len(targets) or not targets:
        raise ValueError(f"need as many histories as targets, at least one; got {len(histories)} and {len(targets)}")
    if any(not h for h in histories):
        raise ValueError("every history needs at least one item")
    n = max(len(h) for h in histories) + 1
    # each row: history, target, then filler (any known item; batch_from_codes never reads it)
    rows = [h + [t] + [h[0]] * (n - len(h) - 1) for h, t in zip(histories, targets, strict=True)]
    flat = catalog.sids_of_items(torch.tensor(rows).flatten())  # [B*n, L]
    num_items = torch.tensor([len(h) + 1 for h in histories])
    return batch_from_codes(cfg, flat.view(len(rows), n, catalog.levels), num_items)


def next_sid_loss(decoder: GRDecoder, tokens: torch.Tensor, labels: torch.Tensor,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """The value of ``decoder.loss(tokens, labels)``, with the vocabulary projection computed only at
    the labelled positions (L of a sample's T: most of the work of the full loss is saved);
    ``label_smoothing`` as in ``F.cross_entropy`` (0: the plain loss)."""
    hidden = decoder.hidden_states(tokens)  # [B, T, hidden]
    labelled = labels != IGNORE_INDEX  # [B, T]
    logits = decoder.lm_head(hidden[labelled])  # [M, V]
    return F.cross_entropy(logits.float(), labels[labelled], label_smoothing=label_smoothing)
