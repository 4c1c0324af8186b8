"""Where one batch's GPU time goes: each search phase captured as its own CUDA graph and timed, and a
kernel profile of the whole search's graph replay."""

from __future__ import annotations

from collections import defaultdict

import torch

from ..engine import GREngine
from ..engine.batch import make_batch

__all__ = ["kernel_profile", "phase_ms", "replay_ms"]

KERNEL_KINDS = {  # substring of a kernel's name -> what it does (first match wins)
    "gemm": "matrix product", "nvjet": "matrix product", "cutlass": "matrix product", "xmma": "matrix product",
    "flash": "prompt attention", "fmha": "prompt attention", "staged": "beam attention",
    "radix": "beam sorter", "sort": "sorting", "topk": "sorting", "triton_": "fused elementwise (inductor)",
}


def replay_ms(graphs: list[torch.cuda.CUDAGraph], reps: int = 10) -> list[float]:
    """Median GPU milliseconds of each graph (CUDA events), the graphs replayed in order ``reps`` times."""
    times: list[list[float]] = [[] for _ in graphs]
    for _ in range(reps):
        for graph, out in zip(graphs, times):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
    return [sorted(t)[len(t) // 2] for t in times]


@torch.no_grad()
def phase_ms(engine: GREngine, requests: list, batch_size: int) -> dict[str, float]:
    """GPU milliseconds of each phase of one batch (prefill with the first level's choice, each decode
    step, the final ordering); each phase is its own graph, replayed in sequence on the outputs of the
    one before. Needs a warmed-up engine (nothing compiles here)."""
    R, P = engine.bucket(batch_size, max(len(r.prompt) for r in requests[:batch_size]))
    batch = make_batch(requests[:batch_size], engine.model.catalog, P, engine.serve.max_exclusions, slots=R)
    batch = batch.to(engine.device)
    search, levels = engine.search, engine.model.config.model.levels
    phases = [("prefill + level 0", lambda _: search.first_step(search.prefill(batch), batch))]
    phases += [(f"decode level {t}", lambda state, t=t: search.decode_step(t, state, batch)) for t in range(1, levels)]
    phases.append(("final ordering", search.finish))
    graphs, state, pool = [], None, torch.cuda.graph_pool_handle()
    for _, phase in phases:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            state = phase(state)
        graphs.append(graph)
    times = dict(zip((name for name, _ in phases), replay_ms(graphs)))
    times["decode"] = sum(v for k, v in times.items() if k.startswith("decode level"))
    return times


def kernel_profile(engine: GREngine, requests: list, batch_size: int, reps: int = 5) -> dict:
    """Kernels of one whole-search graph replay (torch.profiler): count, GPU milliseconds by kind, and
    the most expensive kernels by name."""
    R, P = engine.bucket(batch_size, max(len(r.prompt) for r in requests[:batch_size]))
    graph = engine._graphs[R, P, P].graph  # the whole-prompt prefill's
    graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_kind: dict[str, float] = defaultdict(float)
    for e in kernels:
        kind = next((k for s, k in KERNEL_KINDS.items() if s in e.key.lower()), "other")
        by_kind[kind] += e.device_time_total / 1e3 / reps
    top = sorted(kernels, key=lambda e: e.device_time_total, reverse=True)[:20]
    return {"batch": R, "kernels_per_replay": sum(e.count for e in kernels) / reps,
            "gpu_ms_per_replay": sum(e.device_time_total for e in kernels) / 1e3 / reps,
            "ms_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": e.key[:120], "calls": e.count / reps, "ms": e.device_time_total / 1e3 / reps}
                            for e in top]}
