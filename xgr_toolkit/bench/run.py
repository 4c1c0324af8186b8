"""One workload, every system, one process: the fast engine, its ablations, the eager path and HF."""

from __future__ import annotations

import copy
import dataclasses
import gc
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from ..config import ServeConfig
from ..engine import GREngine
from ..model_dir import GRModel
from .flops import request_flops, weight_bytes
from .hf_baseline import HFConstrainedGenerate
from .load import closed_loop, open_loop, percentiles
from .phases import kernel_profile, phase_ms, replay_ms
from .sweeps import scaling_sweeps
from .workloads import Workload, build_workload, warm_engine, workload_requests

__all__ = ["ABLATIONS", "LATENCY_LIMIT_MS", "bench_workload", "device_peaks", "throughput_at_limit"]

LATENCY_LIMIT_MS = 200.0
CONFIRM_REQUESTS, CONFIRM_TRIES = 1000, 3  # the headline rate's own point: enough requests for a P99
# The fast engine with one technique off at a time, and the eager path with all of them off.
ABLATIONS = {
    "no shared prompt KV": {"shared_prompt_kv": False},
    "no masked sorter": {"masked_sorter": False},
    "no CUDA graphs": {"cuda_graphs": False},
    "no compile": {"compile": False},
    "no overlap": {"overlap": False},
    "eager reference path": {"shared_prompt_kv": False, "masked_sorter": False, "cuda_graphs": False,
                             "compile": False, "overlap": False},
}


def device_peaks(fp8: bool = False) -> dict[str, float]:
    """The bf16 matrix-product rate, the device-to-device copy bandwidth and with ``fp8`` the e4m3 product's
    rate (``torch._scaled_mm`` with row-wise scales and bf16 out, as the float8 engine calls it), measured now."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    src = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)

    def timed(fn, reps: int) -> float:
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps

    mm = timed(lambda: a @ b, 20)
    copy = timed(lambda: dst.copy_(src), 20)
    peaks = {"bf16_tflops": 2 * 8192**3 / mm / 1e12, "copy_gbps": 2 * src.nbytes / copy / 1e9}
    if fp8:
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()  # the second column-major
        row, col = torch.ones(8192, 1, device="cuda"), torch.ones(1, 8192, device="cuda")
        mm8 = timed(lambda: torch._scaled_mm(a8, b8, scale_a=row, scale_b=col, out_dtype=torch.bfloat16,
                                             use_fast_accum=True), 20)
        peaks["fp8_tflops"] = 2 * 8192**3 / mm8 / 1e12
    return peaks


def throughput_at_limit(engine: GREngine, requests, seconds: float, points: int = 8,
                         measure: Callable[[float, float], dict] | None = None) -> dict:
    """The highest Poisson arrival rate whose P99 stays within the limit: the GPU's capacity (full batches
    back to back, from the graphs' replay times) first, then bisection between the highest rate that held
    and the lowest that failed (host-bound workloads such as ``tiny`` hold far below the capacity).

    Points of ``seconds`` are searched; the rate found is then confirmed by one point of at least
    ``CONFIRM_REQUESTS`` requests (a P99 of 40 is their maximum, not a percentile), 5% lower each time
    it fails, ``confirmed`` the point that held (None if none did). ``measure(rate, seconds)`` runs one point
    (default: :func:`open_loop` over ``requests``; the returning-users benchmark adds the store's figures)."""
    if measure is None:
        def measure(rate: float, duration: float) -> dict:
            return open_loop(engine.submit, requests, rate, duration)
    capacity = engine.capacity_rps(len(requests[0].prompt))
    held, failed, sweep = 0.0, capacity, []
    rate = capacity
    for _ in range(points):
        point = measure(rate, seconds)
        sweep.append(point)
        if point["p99_ms"] <= LATENCY_LIMIT_MS:
            held = rate
            if rate == capacity:
                break
        else:
            failed = rate
        rate = (held + failed) / 2
    confirmed, rate = None, held
    for _ in range(CONFIRM_TRIES if held else 0):
        point = measure(rate, max(seconds, 1.1 * CONFIRM_REQUESTS / rate))
        sweep.append(point)
        if point["p99_ms"] <= LATENCY_LIMIT_MS and point["requests"] >= CONFIRM_REQUESTS:
            confirmed = point
            break
        rate *= 0.95
    return {"capacity_rps": capacity, "max_rps_at_p99_limit": confirmed["arrival_rps"] if confirmed else 0.0,
            "confirmed": confirmed, "sweep": sweep}


def _gpu_ms(engine: GREngine, requests) -> dict:
    """Device time of one batch per batch bucket (graph replay, no host work), median of 10."""
    out = {}
    for R in engine.batch_buckets:
        launched = [engine.launch(requests[:R]) for _ in range(3)]
        for batch in launched:  # each collected: a prompt store's blocks are held until then
            batch.result()
        P = engine.bucket(R, len(requests[0].prompt))[1]
        graph = engine._graphs.get((R, P, P))  # the whole-prompt prefill's
        if graph is not None:
            out[f"R{R}"] = replay_ms([graph.graph])[0]
    return out


def _eager(model: GRModel) -> ServeConfig:
    return dataclasses.replace(model.config.serve, compile=False, cuda_graphs=False, max_batch=1)


def _float32_top_k(model: GRModel, requests, count: int = 4) -> list:
    """What the first ``count`` requests get from float32 (an eager engine over a float32 copy of the weights)."""
    f32 = dataclasses.replace(model, decoder=copy.deepcopy(model.decoder).float())
    return GREngine(f32, _eager(model)).recommend(requests[:count])


def _top_k_agreement(want: list, got: list) -> float:
    """Share of the float32 top-K items (``want``) that another precision also returns, averaged over requests."""
    shared = [len({i.item_id for i in a} & {i.item_id for i in b}) / max(1, len(a)) for a, b in zip(want, got)]
    return sum(shared) / len(shared)


def _measure(engine: GREngine, requests, seconds: float, sweep: bool) -> dict:
    out = {f"c{c}": closed_loop(engine.submit, requests, c, seconds, 10_000) for c in (1, 4)}
    if sweep:
        out.update(throughput_at_limit(engine, requests, seconds))
    torch.cuda.reset_peak_memory_stats()
    closed_loop(engine.submit, requests, 4, min(seconds, 1.0), 64)
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    engine.close()
    if engine.serve.cuda_graphs:
        out["gpu_ms_per_batch"] = _gpu_ms(engine, requests)
    return out


def _hf(decoder, catalog, requests, seconds: float) -> dict:
    try:
        hf = HFConstrainedGenerate(decoder, catalog)
    except torch.OutOfMemoryError:
        return {"error": "out of memory loading the model"}
    result: dict = {"memory_in_use_gib": torch.cuda.memory_allocated() / 2**30}  # what else holds the GPU
    try:
        hf.generate(requests[:1])  # warm-up
        lat, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds and len(lat) < 20:
            lat.append(hf.generate(requests[len(lat) % len(requests):][:1]))
        result["c1"] = {"requests": len(lat), "throughput_rps": len(lat) / sum(lat), **percentiles(lat)}
        for batch in (2, 4, 8, 16):
            seconds_batch = hf.generate(requests[:batch])
            result[f"batch{batch}_rps"] = batch / seconds_batch
    except torch.OutOfMemoryError as err:
        result["error"] = f"out of memory ({str(err).splitlines()[0][:120]})"
    finally:
        del hf
        gc.collect()
        torch.cuda.empty_cache()
    best = [v for k, v in result.items() if k.endswith("_rps")] + [result.get("c1", {}).get("throughput_rps", 0.0)]
    result["best_rps"] = max(best)
    return result


def _fp8(model: GRModel, requests, seconds: float, want: list, flops: float, peaks: dict) -> dict:
    """The float8 engine (serve.linear_precision: float8) measured as the bf16 one is: closed and open loop, its
    kernels at the largest batch, its top-K agreement with float32, and its MFU against both measured rates."""
    engine, warmup_s = warm_engine(model, dataclasses.replace(model.config.serve, linear_precision="float8"))
    out = {"warmup_s": warmup_s, "float8_layers": len(engine.float8_layers),
           **_measure(engine, requests, seconds, sweep=True)}
    R = engine.batch_buckets[-1]
    out["profile"] = {f"R{R}": kernel_profile(engine, requests, R)}
    out["top_k_agreement"] = _top_k_agreement(want, engine.recommend(requests[:len(want)]))  # compiled, as served
    rps = max(out["max_rps_at_p99_limit"], out["c4"]["throughput_rps"])
    out["mfu"] = {"vs_bf16_rate": flops * rps / (peaks["bf16_tflops"] * 1e12),
                  "vs_fp8_rate": flops * rps / (peaks["fp8_tflops"] * 1e12)}
    return out


def bench_workload(w: Workload, seconds: float = 3.0, ablations: bool = True, hf: bool = True,
                   sweeps: bool = False, fp8: bool = False, progress: Callable[[dict], None] | None = None) -> dict:
    """Every figure of one workload; see ../shared/BENCHMARKS.md for what each means. ``fp8``: the float8
    engine too, beside bf16 (``result["fp8"]``). ``progress(result)`` is called with the figures so far after
    each step (a run cut short keeps them)."""
    cfg = w.model_config()
    bar = tqdm(total=4 + fp8 + (len(ABLATIONS) if ablations else 0) + hf + sweeps, desc=w.name)

    def step() -> None:
        bar.update()
        if progress is not None:
            progress(result)

    model = build_workload(w, cfg)
    decoder, catalog = model.decoder, model.catalog
    requests = workload_requests(w, catalog, cfg)
    serve = model.config.serve
    result: dict = {"workload": dataclasses.asdict(w), "peaks": device_peaks(fp8)}
    step()
    engine, result["warmup_s"] = warm_engine(model, serve)
    result["xgr"] = _measure(engine, requests, seconds, sweep=True)
    sizes = sorted({1, w.max_batch})
    result["phases_ms"] = {f"R{R}": phase_ms(engine, requests, R) for R in sizes}
    result["profile"] = {f"R{R}": kernel_profile(engine, requests, R) for R in sizes}
    step()
    flops = request_flops(cfg, w.prompt_tokens, w.beam_width)
    peak = result["peaks"]["bf16_tflops"] * 1e12
    rps = max(result["xgr"]["max_rps_at_p99_limit"], result["xgr"]["c4"]["throughput_rps"])
    c1 = result["xgr"]["c1"]["p50_ms"] / 1e3
    result["flops"] = flops
    result["mfu"] = flops["total"] * rps / peak
    floor_compute = flops["total"] / peak
    floor_bytes = weight_bytes(cfg) / w.max_batch / (result["peaks"]["copy_gbps"] * 1e9)
    result["floor_ms"] = max(floor_compute, floor_bytes) * 1e3
    result["decode_floor_ms"] = flops["decode"] / peak * 1e3
    decode_ms = result["phases_ms"][f"R{w.max_batch}"]["decode"] / w.max_batch  # a request's share of a full batch
    result["decode_over_floor"] = decode_ms / result["decode_floor_ms"]
    result["c1_p50_over_floor"] = c1 * 1e3 / result["floor_ms"]
    step()
    want = _float32_top_k(model, requests)
    bf16 = GREngine(model, _eager(model)).recommend(requests[:len(want)])
    result["bf16_top_k_agreement"] = _top_k_agreement(want, bf16)
    step()
    if fp8:
        result["fp8"] = _fp8(model, requests, seconds, want, flops["total"], result["peaks"])
        gc.collect()
        torch.cuda.empty_cache()
        step()
    if ablations:
        result["ablations"] = {}
        for name, change in ABLATIONS.items():
            try:
                ablated, warm = warm_engine(model, dataclasses.replace(serve, **change))
                result["ablations"][name] = {"warmup_s": warm, **_measure(ablated, requests, seconds, sweep=False)}
                del ablated
            except torch.OutOfMemoryError as err:
                result["ablations"][name] = {"error": f"out of memory ({str(err).splitlines()[0][:120]})"}
            gc.collect()
            torch.cuda.empty_cache()
            step()
    del engine  # the sweeps and HF need its memory
    gc.collect()
    torch.cuda.empty_cache()
    if sweeps:
        result["sweeps"] = scaling_sweeps(w, decoder, catalog)
        step()
    if hf:
        result["hf"] = _hf(decoder, catalog, requests, seconds)
        if result["hf"].get("best_rps"):
            result["speedup_vs_hf"] = rps / result["hf"]["best_rps"]
        step()
    bar.close()
    return result
