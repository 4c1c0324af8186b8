"""The benchmark workloads of ../shared/BENCHMARKS.md: their models, requests, and a warmed-up engine."""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass

import torch

from ..catalog import ItemCatalog
from ..config import BeamConfig, ModelConfig, ServeConfig, XGRConfig, preset
from ..engine import GREngine
from ..model_dir import GRModel
from ..request import RecRequest, sid_tokens
from ..synthetic import random_catalog, random_decoder

__all__ = ["DEFAULT_WORKLOADS", "WORKLOADS", "Workload", "build_workload", "warm_engine", "workload_model",
           "workload_requests"]


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # preset name
    prompt_tokens: int  # P
    beam_width: int  # W
    top_k: int  # items returned
    catalog_items: int  # N
    max_batch: int  # the largest batch bucket
    levels: int = 3  # L, SID levels (the preset's 3 unless the workload says otherwise)

    def model_config(self) -> ModelConfig:
        cfg = preset(self.model)
        if self.levels != cfg.levels:  # vocab_size 0: derived again for the new number of levels
            cfg = dataclasses.replace(cfg, levels=self.levels, vocab_size=0)
        cfg.max_prompt_tokens = max(cfg.max_prompt_tokens, self.prompt_tokens)
        return cfg


WORKLOADS = {w.name: w for w in (
    Workload("tiny", "tiny", 96, 16, 16, 5_000, 8),
    Workload("hf-comparable", "qwen3-0.6b-gr", 512, 128, 128, 1_000_000, 32),
    Workload("wide", "qwen3-0.6b-gr", 1024, 512, 512, 1_000_000, 8),
    Workload("long", "qwen3-1.7b-gr", 5000, 256, 256, 1_000_000, 4),
    Workload("onerec", "qwen3-1.7b-gr", 2465, 1000, 1000, 1_500_000, 4, levels=4),
    Workload("beams-5k", "qwen3-0.6b-gr", 512, 5000, 5000, 1_000_000, 4),
)}
# What `xgr bench` runs when no workload is named: those measured on a GPU. onerec and beams-5k have not run
# on one yet (docs/engine.md), so they run only when named.
DEFAULT_WORKLOADS = ("tiny", "hf-comparable", "wide", "long")


def workload_model(w: Workload, decoder: torch.nn.Module, catalog: ItemCatalog, cfg: ModelConfig | None = None,
                   **serve) -> GRModel:
    """The benchmark's model of ``w`` over ``decoder`` and ``catalog``: the workload's beam and a serve config
    (GPU, bf16, compiled, CUDA graphs, batches up to ``w.max_batch``, one prompt bucket), ``serve`` changing it."""
    default = ServeConfig(device="cuda", dtype="bfloat16", max_batch=w.max_batch, prompt_buckets=[w.prompt_tokens],
                          max_wait_ms=2.0, compile=True, cuda_graphs=True)
    return GRModel(XGRConfig(model=cfg or w.model_config(), beam=BeamConfig(beam_width=w.beam_width, top_k=w.top_k),
                             serve=dataclasses.replace(default, **serve)), decoder, catalog)


def build_workload(w: Workload, cfg: ModelConfig | None = None, **serve) -> GRModel:
    """The benchmark's model of ``w`` (``cfg`` instead of its own) on the GPU: random bf16 weights and a random
    catalog, both of seed 0."""
    cfg = cfg or w.model_config()
    decoder = random_decoder(cfg, seed=0, device="cuda").to(torch.bfloat16)
    return workload_model(w, decoder, random_catalog(w.catalog_items, cfg.levels, cfg.codes, seed=0), cfg, **serve)


def workload_requests(w: Workload, catalog: ItemCatalog, cfg: ModelConfig, count: int = 64,
                      prompt_tokens: int | None = None, seed: int = 0) -> list[RecRequest]:
    """Histories of random catalog items, written as exactly ``prompt_tokens`` tokens (default P)."""
    tokens = prompt_tokens or w.prompt_tokens
    rng = random.Random(seed)
    items = catalog.codes[torch.tensor([rng.randrange(len(catalog)) for _ in range(count * tokens)])]
    rows = sid_tokens(cfg, items).flatten().view(count, -1)[:, :tokens]  # [count, tokens]
    return [RecRequest(tuple(t.tolist()), w.beam_width, w.top_k) for t in rows]


def warm_engine(model: GRModel, serve: ServeConfig) -> tuple[GREngine, float]:
    """The engine for ``model`` under ``serve``, warmed up (compiled, captured); and the seconds it took."""
    start = time.perf_counter()
    engine = GREngine(dataclasses.replace(model, config=dataclasses.replace(model.config, serve=serve)))
    engine.warmup()
    return engine, time.perf_counter() - start
