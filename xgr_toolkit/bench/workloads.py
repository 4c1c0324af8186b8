"""The benchmark workloads of ../shared/BENCHMARKS.md."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig, preset

__all__ = ["WORKLOADS", "Workload"]


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
    Workload("hf-comparable", "qwen3-0.6b-gr", 512, 128, 128, 1_000_000, 8),
    Workload("wide", "qwen3-0.6b-gr", 1024, 512, 512, 1_000_000, 4),
    Workload("long", "qwen3-1.7b-gr", 5000, 256, 256, 1_000_000, 4),
)}
