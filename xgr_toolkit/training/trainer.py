"""The reference training loop: next-SID cross-entropy on :class:`~xgr_toolkit.modules.GRDecoder`.

AdamW, linear warm-up then cosine decay, right-padded batches gathered on the device from a sample
table (no DataLoader: the whole table of item ids fits the device), optional bf16 autocast on CUDA,
tqdm progress. The loop is deliberately plain: docs/training.md shows the same modules in a loop
of your own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..catalog import ItemCatalog
from ..modules import GRDecoder
from .batches import batch_from_codes, code_table, next_sid_loss

__all__ = ["SampleTable", "TrainConfig", "TrainResult", "train_decoder", "warmup_cosine"]


@dataclass
class TrainConfig:
    epochs: float = 20.0
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 200
    min_lr_ratio: float = 0.02  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    label_smoothing: float = 0.0  # of the training loss only; validation losses are plain cross-entropy
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False  # autocast to bfloat16 (CUDA only)
    max_steps: int = 0  # > 0: stop after this many steps whatever ``epochs`` says
    keep_best: bool = True  # with validation samples: end with the weights of the best validation loss
    patience: int = 0  # > 0, with validation samples: stop after this many epochs without a lower validation loss
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError(f"epochs, batch_size and lr must be > 0 and warmup_steps >= 0; got {self}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 epochs (0: no early stop); got {self.patience}")
        if self.bf16 and not self.device.startswith("cuda"):
            raise ValueError("bf16 autocast is for CUDA devices; use --device cuda or drop --bf16")


@dataclass
class SampleTable:
    """Training samples as one tensor: ``items[s]`` = history (left-aligned) then target, 0-padded.

    items: [S, H + 1] int64 item ids; num_items: [S] history length + 1.
    """

    items: torch.Tensor
    num_items: torch.Tensor

    @classmethod
    def from_samples(cls, samples: list[tuple[list[int], int]]) -> SampleTable:
        if not samples:
            raise ValueError("no training samples (every user's training part has a single item?)")
        width = max(len(h) for h, _ in samples) + 1
        items = torch.zeros(len(samples), width, dtype=torch.int64)
        for s, (history, target) in enumerate(samples):
            items[s, :len(history) + 1] = torch.tensor(history + [target])
        return cls(items, torch.tensor([len(h) + 1 for h, _ in samples]))

    def __len__(self) -> int:
        return self.items.shape[0]

    def to(self, device: str | torch.device) -> SampleTable:
        return SampleTable(self.items.to(device), self.num_items.to(device))


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # one a step
    epoch_losses: list[float]  # mean a (possibly partial) epoch
    seconds: float
    valid_losses: list[float] = field(default_factory=list)  # after each epoch, when validation samples are given
    best_epoch: int = 0  # 1-based epoch whose weights the decoder ends with (0: the last step's)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(decoder: GRDecoder, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (the usual AdamW convention)."""
    decay, rest = [], []
    for name, p in decoder.named_parameters():
        (rest if p.ndim < 2 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _check_items(samples: SampleTable, catalog: ItemCatalog) -> None:
    used = samples.items[samples.items > 0].unique()
    unknown = used[~torch.isin(used, catalog.item_ids)]
    if unknown.numel():
        raise ValueError(f"samples use item ids without a SID: {unknown[:10].tolist()}")


def _batch(decoder: GRDecoder, table: SampleTable, idx: torch.Tensor, codes: torch.Tensor, width: int):
    """Rows ``idx`` of the table -> (tokens, labels) [B, T], trimmed to ``width`` items, the longest of those
    rows' samples: the caller reads it from a host copy, so that no step waits for the device."""
    return batch_from_codes(decoder.config, codes[table.items[idx, :width]], table.num_items[idx])


@torch.no_grad()
def _mean_loss(decoder: GRDecoder, table: SampleTable, host_num_items: torch.Tensor, codes: torch.Tensor,
               cfg: TrainConfig) -> float:
    """Mean next-SID loss over the table (a sample's L tokens weigh the same everywhere)."""
    decoder.eval()
    total = torch.zeros((), device=table.items.device)
    for start in range(0, len(table), cfg.batch_size):
        idx = torch.arange(start, min(start + cfg.batch_size, len(table)), device=table.items.device)
        width = int(host_num_items[start:start + cfg.batch_size].max())
        with torch.autocast(table.items.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            total += next_sid_loss(decoder, *_batch(decoder, table, idx, codes, width)).float() * len(idx)
    decoder.train()
    return float(total) / len(table)


def train_decoder(decoder: GRDecoder, catalog: ItemCatalog, samples: SampleTable, cfg: TrainConfig,
                  valid: SampleTable | None = None) -> TrainResult:
    """Train ``decoder`` in place on ``samples`` (every item id must be in ``catalog``).

    With ``valid`` samples, their loss is measured after every epoch, and with ``cfg.keep_best`` the
    decoder ends with the weights of the epoch where it was lowest (no dropout in the decoder: this
    is what stops over-fitting).
    """
    device = torch.device(cfg.device)
    decoder.to(device).train()
    codes = code_table(catalog, device)  # [max_id + 1, L]
    _check_items(samples, catalog)
    table, host_num_items = samples.to(device), samples.num_items.cpu()
    valid_table = valid_num_items = None
    if valid is not None:
        _check_items(valid, catalog)
        valid_table, valid_num_items = valid.to(device), valid.num_items.cpu()
    steps_per_epoch = math.ceil(len(table) / cfg.batch_size)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(_param_groups(decoder, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), fused=fused)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, min(cfg.warmup_steps, total // 2), total, cfg.min_lr_ratio))
    g = torch.Generator().manual_seed(cfg.seed)  # the sample order depends on the seed alone
    losses: list[float] = []
    epoch_losses: list[float] = []
    valid_losses: list[float] = []
    best, lowest_epoch, best_epoch = float("inf"), 0, 0  # lowest validation loss, its epoch, the epoch kept
    best_state: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    step = 0
    bar = tqdm(total=total, desc="train", unit="step", disable=not cfg.progress, dynamic_ncols=True)
    while step < total:
        host_order = torch.randperm(len(table), generator=g)  # batch widths are read from host copies
        order = host_order.to(device)
        epoch_sum = torch.zeros((), device=device)
        epoch_steps = 0
        for b in range(steps_per_epoch):
            if step >= total:
                break
            rows = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            width = int(host_num_items[host_order[rows]].max())
            tokens, labels = _batch(decoder, table, order[rows], codes, width)  # [B, T] each
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = next_sid_loss(decoder, tokens, labels, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            epoch_sum += loss.detach()
            epoch_steps += 1
            step += 1
            if step % 50 == 0 or step == total:  # the bar's loss: no extra host sync on other steps
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
            losses.append(loss.detach())
            bar.update(1)
        epoch_losses.append(float(epoch_sum) / max(1, epoch_steps))
        if valid_table is not None:
            valid_losses.append(_mean_loss(decoder, valid_table, valid_num_items, codes, cfg))
            if cfg.progress:
                bar.write(f"epoch {len(epoch_losses)}: train loss {epoch_losses[-1]:.4f}, "
                          f"valid loss {valid_losses[-1]:.4f}")
            if valid_losses[-1] < best:
                best, lowest_epoch = valid_losses[-1], len(valid_losses)
                if cfg.keep_best:
                    best_epoch = lowest_epoch
                    best_state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
            if cfg.patience and len(valid_losses) - lowest_epoch >= cfg.patience:
                if cfg.progress:
                    bar.write(f"early stop: no lower validation loss in {cfg.patience} epochs (lowest: epoch "
                              f"{lowest_epoch})")
                break
    bar.close()
    if best_state:
        decoder.load_state_dict(best_state)
    decoder.eval()
    step_losses = torch.stack(losses).tolist() if losses else []
    return TrainResult(step, step_losses, epoch_losses, time.perf_counter() - start, valid_losses, best_epoch)
