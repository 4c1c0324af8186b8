"""The benchmark workloads of ../shared/BENCHMARKS.md, their requests, and a warmed-up engine for them."""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass

import torch

from ..catalog import ItemCatalog
from ..config import ModelConfig, ServeConfig, preset
from ..engine import GREngine
from ..model_dir import GRModel
from ..request import RecRequest, sid_tokens

__all__ = ["WORKLOADS", "Workload", "warm_engine", "workload_requests"]


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # preset name
    prompt_tokens: int  # P
    beam_width: int  # W
    top_k: int  # items returned
    catalog_items: int  # N
    max_batch: int  # the largest batch bucket

    def model_config(self) -> ModelConfig:
        cfg = preset(self.model)
        cfg.max_prompt_tokens = max(cfg.max_prompt_tokens, self.prompt_tokens)
        return cfg


WORKLOADS = {w.name: w for w in (
    Workload("tiny", "tiny", 96, 16, 16, 5_000, 8),
    Workload("hf-comparable", "qwen3-0.6b-gr", 512, 128, 128, 1_000_000, 32),
    Workload("wide", "qwen3-0.6b-gr", 1024, 512, 512, 1_000_000, 8),
    Workload("long", "qwen3-1.7b-gr", 5000, 256, 256, 1_000_000, 4),
)}


def workload_requests(w: Workload, catalog: ItemCatalog, cfg: ModelConfig, count: int = 64) -> list[RecRequest]:
    """Histories of random catalog items, written as exactly P prompt tokens."""
    rng = random.Random(0)
    items = catalog.codes[torch.tensor([rng.randrange(len(catalog)) for _ in range(count * w.prompt_tokens)])]
    tokens = sid_tokens(cfg, items).flatten().view(count, -1)[:, :w.prompt_tokens]
    return [RecRequest(tuple(t.tolist()), w.beam_width, w.top_k) for t in tokens]


def warm_engine(model: GRModel, serve: ServeConfig) -> tuple[GREngine, float]:
    """The engine for ``model`` under ``serve``, warmed up (compiled, captured); and the seconds it took."""
    start = time.perf_counter()
    engine = GREngine(dataclasses.replace(model, config=dataclasses.replace(model.config, serve=serve)))
    engine.warmup()
    return engine, time.perf_counter() - start
