"""Random catalogs and models from a seed: for tests, the demo and the benchmark."""

from __future__ import annotations

from pathlib import Path

import torch

from .catalog import ItemCatalog
from .config import BeamConfig, ModelConfig, ServeConfig, XGRConfig
from .model_dir import save_model_dir
from .modules import GRDecoder

__all__ = ["random_catalog", "random_decoder", "random_model_dir"]


def random_catalog(num_items: int, levels: int, codes: int, seed: int = 0, collisions: int = 0) -> ItemCatalog:
    """``num_items`` items with random SIDs; ``collisions`` of them reuse another item's SID.

    Item ids are a shuffled range starting at 1,000, so that no code may confuse ids with rows.
    """
    g = torch.Generator().manual_seed(seed)
    distinct = num_items - collisions
    space = codes ** levels
    if distinct > space:
        raise ValueError(f"{distinct} distinct SIDs do not fit {levels} levels of {codes} codes")
    if space <= 4 * distinct or space < 2**24:
        keys = torch.randperm(space, generator=g)[:distinct]
    else:  # sparse: draw with replacement, keep the distinct ones in drawn order
        keys = torch.randint(0, space, (distinct + distinct // 8 + 16,), generator=g)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        first = torch.full_like(uniq, keys.numel()).scatter_reduce(0, inverse, torch.arange(keys.numel()), "amin")
        keys = keys[first.sort().values[:distinct]]
    keys = torch.cat((keys, keys[torch.randint(0, distinct, (collisions,), generator=g)]))
    sids = torch.stack([(keys // codes ** (levels - 1 - j)) % codes for j in range(levels)], dim=1)
    item_ids = 1000 + torch.randperm(num_items, generator=g)
    return ItemCatalog(item_ids, sids, codes)


def random_decoder(cfg: ModelConfig, seed: int = 0, std: float = 0.5, device: str = "cpu") -> GRDecoder:
    """A decoder with random weights large enough to make its distributions far from uniform."""
    torch.manual_seed(seed)
    with torch.device(device):
        decoder = GRDecoder(cfg)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, std / p.shape[-1] ** 0.5 if p.ndim > 1 and "embed" not in name else std)
    return decoder.eval()


def random_model_dir(path: str | Path, cfg: ModelConfig, num_items: int, seed: int = 0, collisions: int = 0,
                     beam: BeamConfig | None = None, serve: ServeConfig | None = None) -> Path:
    """Write a model directory with random weights and a random catalog."""
    catalog = random_catalog(num_items, cfg.levels, cfg.codes, seed, collisions)
    config = XGRConfig(model=cfg, beam=beam or BeamConfig(), serve=serve or ServeConfig())
    return save_model_dir(path, config, random_decoder(cfg, seed), catalog)
