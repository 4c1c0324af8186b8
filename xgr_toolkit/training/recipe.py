"""From a leave-one-out split and a SID catalog to a trained model directory."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..catalog import ItemCatalog
from ..config import BeamConfig, ModelConfig, XGRConfig
from ..data import DEFAULT_MAX_HISTORY, LeaveOneOut
from ..model_dir import save_model_dir
from ..modules import GRDecoder
from .trainer import SampleTable, TrainConfig, TrainResult, train_decoder

__all__ = ["CONTEXT_TOKENS", "MLP_RATIO", "TRAINING_FILE", "gr_model_config", "train_model_dir"]

CONTEXT_TOKENS = 4  # pad and a few spare context ids before the SID codes
MLP_RATIO = 3  # SwiGLU intermediate size / hidden size when none is given: Qwen3's (0.6B: 3072 / 1024)
TRAINING_FILE = "training.json"  # beside the model directory's three files: how it was trained


def gr_model_config(catalog: ItemCatalog, layers: int = 4, hidden: int = 256, heads: int = 4,
                    kv_heads: int = 4, mlp: int | None = None, max_history: int = DEFAULT_MAX_HISTORY,
                    name: str = "gr-small", dropout: float = 0.0, truncation: str = "sliding") -> ModelConfig:
    """A small decoder whose vocabulary is CONTEXT_TOKENS + L x C codes and whose prompt holds
    ``max_history`` items, a longer history cut by ``truncation``; the MLP is ``MLP_RATIO * hidden`` wide
    unless ``mlp`` is given."""
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    return ModelConfig(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
                       head_dim=hidden // heads, intermediate_size=mlp or MLP_RATIO * hidden, qk_norm=True,
                       tie_embeddings=False,
                       max_prompt_tokens=max_history * catalog.levels, sid_offset=CONTEXT_TOKENS,
                       levels=catalog.levels, codes=catalog.num_codes, dropout=dropout,
                       truncation=truncation)


def train_model_dir(out: str | Path, split: LeaveOneOut, catalog: ItemCatalog, model_cfg: ModelConfig,
                    train_cfg: TrainConfig, max_history: int = DEFAULT_MAX_HISTORY,
                    beam: BeamConfig | None = None, extra: dict | None = None) -> tuple[Path, TrainResult]:
    """Train on every prefix of every training part, keeping the weights of the epoch with the lowest
    loss on the validation targets (with ``train_cfg.keep_best``); write ``out`` (config, safetensors
    weights, catalog, and training.json with the settings and per-epoch losses). Histories are capped at
    ``max_history`` items by ``model_cfg.truncation``, as the served model caps them when ``max_history``
    is its prompt's (``model_cfg.max_prompt_tokens // levels``, what ``gr_model_config`` builds)."""
    cut = model_cfg.truncation
    samples = SampleTable.from_samples(split.training_samples(max_history, cut))
    valid = SampleTable.from_samples([(c.history, c.target)
                                      for c in split.cases("valid", max_history, truncation=cut)])
    torch.manual_seed(train_cfg.seed)  # the initial weights too depend on the seed alone
    decoder = GRDecoder(model_cfg)
    result = train_decoder(decoder, catalog, samples, train_cfg, valid)
    config = XGRConfig(model=model_cfg, beam=beam or BeamConfig(beam_width=20, top_k=10))
    path = save_model_dir(out, config, decoder.float().cpu(), catalog)
    record = {"train": asdict(train_cfg), "samples": len(samples), "users": len(split), "max_history": max_history,
              "truncation": cut, "steps": result.steps, "seconds": round(result.seconds, 2),
              "epoch_losses": result.epoch_losses,
              "valid_losses": result.valid_losses, "best_epoch": result.best_epoch,
              **(extra or {})}
    (path / TRAINING_FILE).write_text(json.dumps(record, indent=1))
    return path, result
