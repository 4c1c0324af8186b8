"""Load primitives (nearest-rank percentiles, Poisson arrivals) and closed- and open-loop drivers for
anything with ``submit(request) -> Future``; ``xgr load`` (serving/loadgen.py) drives HTTP with the same
primitives."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

__all__ = ["closed_loop", "open_loop", "percentile", "percentiles", "poisson_arrivals"]

Submit = Callable[[object], Future]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100]); nan when empty."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(1, math.ceil(q / 100 * len(sorted_values))) - 1]


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    """P50, P99 and mean, in milliseconds."""
    xs = sorted(latencies_s)
    mean = sum(xs) / len(xs) * 1e3 if xs else float("nan")
    return {"p50_ms": percentile(xs, 50) * 1e3, "p99_ms": percentile(xs, 99) * 1e3, "mean_ms": mean}


def poisson_arrivals(rate: float, seconds: float, limit: int, rng: random.Random) -> Iterator[float]:
    """Arrival offsets in seconds from the start: exponential gaps of mean 1/rate, before ``seconds``, at
    most ``limit`` of them."""
    t = 0.0
    for _ in range(limit):
        t += rng.expovariate(rate)
        if t >= seconds:
            return
        yield t


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
    """Poisson arrivals at ``rate_rps`` for ``duration_s``; latency counts from each arrival time.

    ``arrival_rps`` is the arrivals of the window over its length: where the P99 holds, the rate served.
    ``achieved_rps`` divides by the time until the last answer instead (the window plus the drain)."""
    latencies, futures = [], []
    start = time.perf_counter()
    for offset in poisson_arrivals(rate_rps, duration_s, 10**9, random.Random(seed)):
        arrival = start + offset
        delay = arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        f = submit(requests[len(futures) % len(requests)])
        f.add_done_callback(lambda _f, t0=arrival: latencies.append(time.perf_counter() - t0))
        futures.append(f)
    for f in futures:
        f.result(timeout=60)
    elapsed = time.perf_counter() - start
    return {"rate_rps": rate_rps, "requests": len(futures), "arrival_rps": len(futures) / duration_s,
            "achieved_rps": len(futures) / elapsed,
            **percentiles(latencies)}
