"""Collaborative item embeddings learned from the sequences: a SASRec-style next-item model.

The toolkit's own :class:`~xgr_toolkit.modules.GRDecoder` reads items as tokens (one "level" whose
codes are the items: token ``1 + r`` for the r-th item id in ascending order, 0 pads) and is trained,
causally at every position, to predict each next item of every user's **training part** with a full
softmax over all items, its output layer tied to the input embeddings (as SASRec). Only the training
parts are read, so the validation and test targets never leak into the SIDs built from these embeddings.

Items in no training part (cold items) get no gradient as inputs and only the softmax's push-down
as outputs, so their rows mean nothing. :func:`cold_fallback` replaces them deterministically: the
mean embedding of their nearest warm items by text when text embeddings are given, else a seeded
random direction per item, so cold items spread over the codes instead of sharing one SID.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ModelConfig
from ..modules import IGNORE_INDEX, GRDecoder

__all__ = ["SasRecConfig", "cold_fallback", "cold_mask", "sasrec_embeddings"]

PAD = 0  # token 0 pads; item i is token 1 + i


@dataclass(frozen=True)
class SasRecConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50  # most recent items of a training part read
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-2  # on Beauty (CPU, 4 epochs): item-NN recall@10 0.0192 at 1e-2 / dropout 0.1, 0.0038 at 2e-3 / 0.3
    weight_decay: float = 0.01
    negatives: int = 0  # 0: full softmax over all items; > 0: sampled softmax over this many shared negatives
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.dim < 2 or self.dim % (2 * self.heads):
            raise ValueError(f"dim ({self.dim}) must be a multiple of 2 x heads ({self.heads}) (rotary pairs)")
        if self.epochs < 1 or self.max_len < 2 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be > 0 and max_len >= 2; got {self}")


def _sequences_table(train_sequences: list[list[int]], ids: torch.Tensor,
                     max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training parts with >= 2 items, their last ``max_len`` items as tokens ``1 + row of the item in
    ids`` (a compact vocabulary), right-padded: -> (tokens [U, T] int64, lengths [U]), longest first."""
    parts = sorted((items[-max_len:] for items in train_sequences if len(items) >= 2), key=len, reverse=True)
    if not parts:
        raise ValueError("no training part has the 2 items a next-item model needs")
    table = torch.full((len(parts), len(parts[0])), PAD, dtype=torch.int64)
    for u, items in enumerate(parts):
        table[u, :len(items)] = torch.searchsorted(ids, torch.tensor(items)) + 1
    return table, torch.tensor([len(p) for p in parts])


def _model(cfg: SasRecConfig, num_items: int) -> GRDecoder:
    model_cfg = ModelConfig(name="sasrec", num_layers=cfg.layers, hidden_size=cfg.dim, num_heads=cfg.heads,
                            num_kv_heads=cfg.heads, head_dim=cfg.dim // cfg.heads, intermediate_size=4 * cfg.dim,
                            tie_embeddings=True, dropout=cfg.dropout, max_prompt_tokens=cfg.max_len,
                            sid_offset=1, levels=1, codes=num_items)
    decoder = GRDecoder(model_cfg)
    # N(0, 1) rows (nn.Embedding's default) tied to the output give logits of std ~sqrt(dim): start small
    torch.nn.init.normal_(decoder.embed_tokens.weight, std=cfg.dim ** -0.5)
    return decoder


def _loss(decoder: GRDecoder, tokens: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """tokens: [B, T] right-padded -> mean next-item cross-entropy over every non-pad target.

    negatives: [K] item tokens shared by the batch -> a sampled softmax over each target and those K
    (a negative equal to the target is masked out); None: the full softmax over all items.
    """
    inputs, labels = tokens[:, :-1], tokens[:, 1:].masked_fill(tokens[:, 1:] == PAD, IGNORE_INDEX)  # [B, T-1]
    hidden = decoder.hidden_states(inputs)  # [B, T-1, dim]
    labelled = labels != IGNORE_INDEX
    h, target = hidden[labelled], labels[labelled]  # [M, dim], [M]
    if negatives is None:
        return F.cross_entropy(decoder.lm_head(h).float(), target)  # logits [M, V]
    weight = decoder.lm_head.weight  # [V, dim]
    positive = (h * weight[target]).sum(1, keepdim=True)  # [M, 1]
    sampled = (h @ weight[negatives].T).masked_fill(negatives[None, :] == target[:, None], float("-inf"))  # [M, K]
    logits = torch.cat((positive, sampled), dim=1).float()  # [M, 1 + K], the target in column 0
    return F.cross_entropy(logits, torch.zeros_like(target))


def sasrec_embeddings(train_sequences: list[list[int]], item_ids: list[int],
                      cfg: SasRecConfig = SasRecConfig()) -> tuple[torch.Tensor, list[float]]:
    """Train on the training parts; -> ([N, dim] float32 embeddings of ``sorted(item_ids)``, loss an epoch).

    Rows of cold items are the model's untrained rows: pass them through :func:`cold_fallback`.
    """
    ids = torch.tensor(sorted(item_ids), dtype=torch.int64)
    torch.manual_seed(cfg.seed)
    decoder = _model(cfg, len(ids)).to(cfg.device).train()
    table, lengths = _sequences_table(train_sequences, ids, cfg.max_len)
    table = table.to(cfg.device)
    # batches of neighbouring lengths (the table is sorted), visited in a seeded random order each epoch:
    # little padding, and the width of each batch is known on the host
    batches = torch.arange(len(table)).split(cfg.batch_size)
    decay = [p for n, p in decoder.named_parameters() if p.ndim >= 2 and "norm" not in n]
    rest = [p for n, p in decoder.named_parameters() if p.ndim < 2 or "norm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=cfg.epochs * len(batches),
                                                   pct_start=0.05)
    g = torch.Generator().manual_seed(cfg.seed)
    epoch_losses = []
    for _ in tqdm(range(cfg.epochs), desc="sasrec embeddings", unit="epoch", disable=not cfg.progress):
        total = torch.zeros((), device=cfg.device)
        for b in torch.randperm(len(batches), generator=g).tolist():
            rows = batches[b]
            width = int(lengths[rows[0]])  # the batch's longest (host copy: no device sync a step)
            negatives = None if cfg.negatives == 0 else \
                torch.randint(1, len(ids) + 1, (cfg.negatives,), generator=g).to(cfg.device)  # [K]
            loss = _loss(decoder, table[rows.to(cfg.device), :width], negatives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.detach() * len(rows)
        epoch_losses.append(float(total) / len(table))
    weight = decoder.embed_tokens.weight.detach().float().cpu()  # [1 + N, dim]
    return weight[1:], epoch_losses


def cold_mask(train_sequences: list[list[int]], item_ids: list[int]) -> torch.Tensor:
    """[N] bool over ``sorted(item_ids)``: True for items in no training part."""
    seen = {i for items in train_sequences for i in items}
    return torch.tensor([i not in seen for i in sorted(item_ids)], dtype=torch.bool)


def cold_fallback(embeddings: torch.Tensor, cold: torch.Tensor, text: torch.Tensor | None = None,
                  neighbours: int = 10, seed: int = 0) -> torch.Tensor:
    """Replace the rows of cold items (``cold`` [N] bool) of ``embeddings`` [N, D].

    With ``text`` [N, Dt]: the mean of the ``neighbours`` warm items most similar by text (cosine).
    Without: a random direction per cold item (seeded, so the same items get the same rows), at the
    warm rows' mean norm. -> [N, D] float32.
    """
    out = embeddings.float().clone()
    if not cold.any():
        return out
    warm = (~cold).nonzero().squeeze(1)  # [Nw]
    if warm.numel() == 0:
        raise ValueError("every item is cold: no training part holds any item")
    if text is not None:
        t = F.normalize(text.float(), dim=1)
        similar = t[cold] @ t[warm].T  # [Nc, Nw]
        nearest = similar.topk(min(neighbours, warm.numel()), dim=1).indices  # [Nc, k]
        out[cold] = out[warm][nearest].mean(1)
        return out
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(int(cold.sum()), out.shape[1], generator=g)  # [Nc, D]
    out[cold] = F.normalize(noise, dim=1) * out[warm].norm(dim=1).mean()
    return out
