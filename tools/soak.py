"""`make soak`: the tiny model through a real TorchServe on loopback, 10 minutes at 80% of its measured
maximum throughput, on the CPU.

1. Build ``build/soak-model`` (random tiny model, 2,000 items) and ``build/soak-store/soak.mar`` (2 workers,
   batchSize 8, maxBatchDelay 5 ms, widest beam 16); start TorchServe on 127.0.0.1 with OMP_NUM_THREADS=1.
2. 128 distinct requests with the library's answers (``xgr load --model-dir``'s cases).
3. Warm up (closed loop), then measure the maximum throughput: closed loops at 8, 16 and 32 in flight;
   the best exact answers per second is the maximum.
4. Read the workers' resident memory (their pids from the management API, RSS from /proc).
5. Open loop, Poisson arrivals at 80% of the maximum, for ``--seconds`` (600); memory sampled every 30 s.
6. Pass when: zero errors, every answer exact, every request answered exactly once (request ids), no
   request left unsent, the same workers at the end (none restarted), and each worker's memory grew at
   most 5% from after the warm-up to the end.

Prints the report and writes it as JSON (default ``docs/reliability/soak.json``). Everything is bounded:
the probes by time, the soak by ``--seconds`` and a request count, and TorchServe is always stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

from xgr_toolkit import preset
from xgr_toolkit.serving import PackageOptions, TorchServe, TorchServeError, package_model
from xgr_toolkit.serving.loadgen import LoadOptions, make_cases, run_load
from xgr_toolkit.synthetic import random_model_dir

NAME = "soak"
BUILD = Path("build")
MAX_GROWTH = 0.05


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (``VmRSS`` in /proc), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_memory(server: TorchServe) -> dict[int, float | None]:
    return {w["pid"]: rss_mb(w["pid"]) for w in server.workers(NAME)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0, help="soak duration (default 600)")
    p.add_argument("--fraction", type=float, default=0.8, help="of the measured maximum (default 0.8)")
    p.add_argument("--probe-seconds", type=float, default=15.0, help="each maximum-throughput probe (default 15)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="docs/reliability/soak.json")
    given = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(given)
    if not 0 < args.fraction <= 1 or not 0 < args.seconds <= 3 * 3600 or not 1 <= args.workers <= 8:
        p.error("--fraction in (0, 1], --seconds in (0, 10800], --workers in [1, 8]")
    torch.set_num_threads(1)
    started = time.monotonic()
    model_dir = random_model_dir(BUILD / "soak-model", preset("tiny"), num_items=2000, seed=0)
    options = PackageOptions(max_beam_width=16, batch_size=8, max_batch_delay_ms=5, min_workers=args.workers,
                             max_workers=args.workers, response_timeout_s=120)
    mar = package_model(model_dir, NAME, BUILD / "soak-store", options)
    cases = make_cases(model_dir, 128, beam_width=16, k=5, seed=0)
    shutil.rmtree(BUILD / "soak-torchserve", ignore_errors=True)
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(["python tools/soak.py", *given]) if given else "make soak",
                    "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                                "python": platform.python_version(), "torch": torch.__version__},
                    "model": {"preset": "tiny", "items": 2000, "engine": "reference", "max_beam_width": 16,
                              "request": "history of 1..10 items, k 5, beam_width 16"},
                    "archive": {"workers": args.workers, "batch_size": 8, "max_batch_delay_ms": 5,
                                "OMP_NUM_THREADS": 1}}
    try:
        with TorchServe(mar.parent, {NAME: mar.name}, workdir=BUILD / "soak-torchserve", start_timeout=180,
                        env={"OMP_NUM_THREADS": "1"}, properties={"disable_system_metrics": "true"}) as server:
            url = f"{server.inference_url}/predictions/{NAME}"
            print(f"TorchServe ready in {time.monotonic() - started:.1f} s at {url}", flush=True)
            warm = run_load(url, cases, LoadOptions(concurrency=16, requests=10**6, seconds=10))
            print(f"warm-up: {warm.summary()['throughput_ok_per_s']:.0f}/s, passed {warm.passed}", flush=True)
            probes = {}
            for concurrency in (8, 16, 32):
                probe = run_load(url, cases, LoadOptions(concurrency=concurrency, requests=10**6,
                                                         seconds=args.probe_seconds))
                probes[concurrency] = probe.summary()
                print(f"closed loop, {concurrency} in flight: {probes[concurrency]['throughput_ok_per_s']:.1f} "
                      f"exact answers/s, p99 {probes[concurrency]['latency_ms']['p99']:.1f} ms, passed "
                      f"{probe.passed}", flush=True)
            best = max(probes, key=lambda c: probes[c]["throughput_ok_per_s"])
            maximum = probes[best]["throughput_ok_per_s"]
            rate = round(args.fraction * maximum, 1)
            result["maximum"] = {"throughput_ok_per_s": maximum, "concurrency": best,
                                 "probes": {str(c): {k: probes[c][k] for k in ("throughput_ok_per_s", "latency_ms",
                                                                                "errors", "wrong", "passed")}
                                            for c in probes}}
            pids_before = sorted(w["pid"] for w in server.workers(NAME))
            memory_start = worker_memory(server)
            java_start = rss_mb(server.java_pid) if server.java_pid else None
            print(f"soak: Poisson arrivals at {rate}/s ({args.fraction:.0%} of {maximum:.1f}/s) for "
                  f"{args.seconds:.0f} s; worker RSS at start {memory_start} MiB", flush=True)
            samples = [{"t_s": 0.0, "workers_mb": memory_start}]
            stop = threading.Event()
            soak_start = time.monotonic()

            def sample() -> None:
                while not stop.wait(30.0):
                    samples.append({"t_s": round(time.monotonic() - soak_start, 1),
                                    "workers_mb": worker_memory(server)})

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            soak = run_load(url, cases, LoadOptions(mode="open", rate=rate, concurrency=64, seconds=args.seconds,
                                                    requests=int(rate * args.seconds * 2) + 100, timeout=60.0,
                                                    seed=1),
                            progress=lambda s: print(f"  {s['elapsed_s']:.0f} s: {s['answered']} answered, "
                                                     f"{s['errors']} errors", flush=True), progress_every=60.0)
            stop.set()
            sampler.join(5)
            memory_end = worker_memory(server)
            pids_after = sorted(w["pid"] for w in server.workers(NAME))
            java_end = rss_mb(server.java_pid) if server.java_pid else None
            samples.append({"t_s": round(time.monotonic() - soak_start, 1), "workers_mb": memory_end})
            print(soak.text(), flush=True)
    except TorchServeError as err:
        print(f"TorchServe failed: {err}", file=sys.stderr)
        return 1
    growth = {str(pid): (round(memory_end[pid] / memory_start[pid] - 1, 4)
                         if memory_start.get(pid) and memory_end.get(pid) else None) for pid in memory_start}
    checks = {
        "zero errors": not soak.errors,
        "every answer exact": soak.wrong == 0 and soak.checked == soak.sent,
        "every request answered exactly once": soak.exactly_once,
        "every request sent": soak.not_sent == 0,
        "no worker restarted": pids_before == pids_after,
        f"worker memory growth <= {MAX_GROWTH:.0%}": all(g is not None and g <= MAX_GROWTH for g in growth.values()),
    }
    result.update({
        "soak": {"rate_per_s": rate, "fraction_of_maximum": args.fraction, **soak.summary()},
        "memory": {"workers_start_mb": {str(k): v for k, v in memory_start.items()},
                   "workers_end_mb": {str(k): v for k, v in memory_end.items()}, "growth": growth,
                   "frontend_start_mb": java_start, "frontend_end_mb": java_end,
                   "samples": [{"t_s": s["t_s"], "workers_mb": {str(k): v for k, v in s["workers_mb"].items()}}
                               for s in samples]},
        "checks": checks, "passed": all(checks.values()),
        "load_average_at_end": os.getloadavg(), "wall_s": round(time.monotonic() - started, 1)})
    result["machine"]["load_average_at_end"] = result.pop("load_average_at_end")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nmaximum {maximum:.1f} exact answers/s (closed loop, {best} in flight); soak at {rate}/s for "
          f"{args.seconds:.0f} s: {soak.sent} requests, {soak.ok} exact, errors {soak.errors or 'none'}")
    print(f"worker RSS MiB start {memory_start} -> end {memory_end}; growth {growth}")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    print(f"{'PASS' if result['passed'] else 'FAIL'}; report written to {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
