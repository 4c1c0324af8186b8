"""Scaling sweeps: GPU time of one request as the beam width, the prompt and the catalog grow."""

from __future__ import annotations

import dataclasses
import gc

import torch
from tqdm import tqdm

from ..synthetic import random_catalog
from .phases import phase_ms
from .workloads import Workload, warm_engine, workload_model, workload_requests

__all__ = ["SWEEPS", "scaling_sweeps"]

# ../shared/BENCHMARKS.md: W 64 -> 1024, prompt 256 -> 8,192, catalog 10,000 -> 10,000,000
SWEEPS = {
    "beam_width": (64, 128, 256, 512, 1024),
    "prompt_tokens": (256, 512, 1024, 2048, 4096, 8192),
    "catalog_items": (10_000, 100_000, 1_000_000, 10_000_000),
}


def _point(w: Workload, decoder, catalog) -> dict:
    """One request alone (batch 1): GPU milliseconds of each phase of a warmed-up, graph-captured engine."""
    cfg = dataclasses.replace(w.model_config(), max_prompt_tokens=w.prompt_tokens)
    model = workload_model(w, decoder, catalog, cfg, max_batch=1)
    engine, warmup_s = warm_engine(model, model.config.serve)
    requests = workload_requests(w, catalog, cfg, count=1)
    phases = phase_ms(engine, requests, 1)
    total = phases["prefill + level 0"] + phases["decode"] + phases["final ordering"]
    engine.close()
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return {"gpu_ms": total, "phases_ms": phases, "warmup_s": warmup_s}


def scaling_sweeps(w: Workload, decoder, catalog) -> dict[str, list[dict]]:
    """For each axis of :data:`SWEEPS`, the workload with that one value changed; -> axis -> points."""
    out: dict[str, list[dict]] = {}
    steps = tqdm(total=sum(map(len, SWEEPS.values())), desc=f"{w.name} sweeps")
    for axis, values in SWEEPS.items():
        out[axis] = []
        for value in values:
            point = dataclasses.replace(w, **{axis: value})
            if axis == "beam_width":
                point = dataclasses.replace(point, top_k=value)
            sized = random_catalog(value, catalog.levels, catalog.num_codes, seed=0) if axis == "catalog_items" \
                else catalog
            torch._dynamo.reset()  # each point compiles its own shapes; earlier points' code is not reused
            try:
                result = _point(point, decoder, sized)
            except torch.OutOfMemoryError as err:
                result = {"error": f"out of memory ({str(err).splitlines()[0][:120]})"}
            out[axis].append({"value": value, **result})
            steps.update()
    steps.close()
    return out
