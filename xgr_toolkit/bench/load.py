"""Closed- and open-loop load against anything with ``submit(request) -> Future``."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["closed_loop", "open_loop", "percentiles"]

Submit = Callable[[object], Future]


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    """P50, P99 and mean, in milliseconds."""
    if not latencies_s:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    xs = sorted(latencies_s)
    at = lambda q: xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1e3  # noqa: E731
    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "mean_ms": sum(xs) / len(xs) * 1e3}


def closed_loop(submit: Submit, requests: list, concurrency: int, duration_s: float, max_requests: int) -> dict:
    """``concurrency`` clients, each sending its next request when the last is answered."""
    latencies: list[float] = []
    lock, stop_at, sent = threading.Lock(), time.perf_counter() + duration_s, [0]

    def client(k: int) -> None:
        while time.perf_counter() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    return
                i = sent[0]
                sent[0] += 1
            start = time.perf_counter()
            submit(requests[(i + k) % len(requests)]).result()
            with lock:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(latencies), "throughput_rps": len(latencies) / elapsed,
            **percentiles(latencies)}


def open_loop(submit: Submit, requests: list, rate_rps: float, duration_s: float, seed: int = 0) -> dict:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``; latency counts from each arrival time."""
    rng, latencies, futures = random.Random(seed), [], []
    start = time.perf_counter()
    arrival = start
    while arrival < start + duration_s:
        arrival += rng.expovariate(rate_rps)
        delay = arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        f = submit(requests[len(futures) % len(requests)])
        f.add_done_callback(lambda _f, t0=arrival: latencies.append(time.perf_counter() - t0))
        futures.append(f)
    for f in futures:
        f.result(timeout=60)
    elapsed = time.perf_counter() - start
    return {"rate_rps": rate_rps, "requests": len(futures), "achieved_rps": len(futures) / elapsed,
            **percentiles(latencies)}
