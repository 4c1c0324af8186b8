"""Cold start: the time from process start to the first answer, with and without a saved compile cache.

For each workload of xgr_toolkit/bench/workloads.py, fresh Python processes each build the benchmark's model
(random weights, xgr_toolkit.synthetic), the fast engine (regional compile; CUDA graphs on a GPU), run
``warmup()`` and answer one request, as a TorchServe worker does at start:

* ``cold``: empty TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR; after its answer this process saves one
  artifact per method, exactly as ``xgr export`` does (xgr_toolkit.compile_cache.save_compile_cache);
* ``cache-dir`` / ``mega-cache``: empty caches, then the artifact of that method loaded as the handler
  loads it (``use_compile_cache`` on a copy, as TorchServe works on an extracted copy of the archive);
* ``eager``: no compilation at all (serve.compile false): the floor a compile cache could reach.

Each run is broken down: interpreter start, imports, cache load, device init, model build, engine build
(torch.compile wrappers: dynamo and inductor are imported here), warm-up, first answer. A first unmeasured
process loads torch once, so that every measured one finds the libraries in the page cache. Writes
docs/benchmarks/cold_start.json (cold_start_cpu.json on the CPU: every figure, the device, the versions, the
command) and the PNG of the same name, and prints the table.

    OMP_NUM_THREADS=1 python3 tools/cold_start.py --device cpu --workloads tiny --repeats 3   # about 5 min
    python3 tools/cold_start.py --device cuda --workloads tiny hf-comparable          # about 5.5 min on an H100
    python3 tools/cold_start.py --device cuda --workloads wide long --append          # about 5 min on an H100
    python3 tools/cold_start.py --device cuda --report                                # the PNG and table again
"""

from __future__ import annotations

import time

_T0 = time.time()  # a child's first moment, before any import worth timing

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD_NAMES = ("tiny", "hf-comparable", "wide", "long")  # xgr_toolkit/bench/workloads.py, not imported here
PHASES = ("startup", "imports", "cache", "device", "model", "engine", "warmup", "answer")
MODES = ("cold", "cache-dir", "mega-cache", "eager")


# ---- the child: one measured process -----------------------------------------------------------------------------
def child(spec: dict) -> None:
    stamps = {"start": _T0}
    import torch

    from xgr_toolkit.bench.workloads import WORKLOADS, workload_model, workload_requests
    from xgr_toolkit.compile_cache import artifact_info, point_caches_at, save_compile_cache, use_compile_cache
    from xgr_toolkit.engine import GREngine
    from xgr_toolkit.synthetic import random_catalog, random_decoder
    stamps["imports"] = time.time()
    if spec.get("prime"):  # load the libraries once; say what this machine is
        cuda = spec["device"] == "cuda"
        if cuda:
            torch.zeros(1, device="cuda").sum().item()
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        meta = {"device": spec["device"], "device_name": torch.cuda.get_device_name() if cuda else "cpu",
                "torch": torch.__version__, "triton": triton_version, "python": sys.version.split()[0],
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
        Path(spec["result"]).write_text(json.dumps(meta))
        return
    mode, device = spec["mode"], torch.device(spec["device"])
    cuda = device.type == "cuda"
    used = None
    if mode in ("cold", "eager"):
        point_caches_at(spec["caches"])  # fresh, empty
    else:
        used = use_compile_cache(spec["artifact"], device)
    stamps["cache"] = time.time()
    if cuda:
        torch.zeros(1, device=device).sum().item()
    stamps["device"] = time.time()
    w = WORKLOADS[spec["workload"]]
    cfg = w.model_config()
    dtype = torch.bfloat16 if cuda else torch.float32
    decoder = random_decoder(cfg, seed=0, device=str(device)).to(dtype)
    catalog = random_catalog(w.catalog_items, cfg.levels, cfg.codes, seed=0)
    model = workload_model(w, decoder, catalog, cfg, device=str(device), dtype="bfloat16" if cuda else "float32",
                           compile=mode != "eager", cuda_graphs=cuda)
    [request] = workload_requests(w, catalog, cfg, count=1)
    if cuda:
        torch.cuda.synchronize(device)
    stamps["model"] = time.time()
    engine = GREngine(model)
    stamps["engine"] = time.time()
    engine.warmup()
    stamps["warmup"] = time.time()
    [answer] = engine.recommend([request])
    stamps["answer"] = time.time()
    from torch._dynamo.utils import counters
    result = {"stamps": stamps, "workload": dataclasses.asdict(w), "items": [i.item_id for i in answer[:5]],
              "cache_used": used,
              "counters": {k: dict(counters[k]) for k in ("inductor", "aot_autograd") if counters[k]},
              "threads": torch.get_num_threads()}
    if mode == "cold" and spec.get("export"):
        result["saved"] = {}
        info = {**artifact_info(model.config, device, "fast", w.beam_width, stamps["warmup"] - stamps["model"]),
                "workload": w.name}
        for method in spec["methods"]:
            start = time.time()
            manifest = save_compile_cache(Path(spec["export"]) / method, method, spec["caches"], info)
            result["saved"][method] = {"bytes": manifest["bytes"], "save_s": time.time() - start}
    Path(spec["result"]).write_text(json.dumps(result))


# ---- the parent: runs, table, JSON, plot --------------------------------------------------------------------------
def _spawn(spec: dict, work: Path, timeout: float) -> dict:
    """Run one child with empty inductor and Triton caches of its own; -> its phases in seconds."""
    fresh = Path(tempfile.mkdtemp(prefix="env-", dir=work))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(fresh / "inductor"), "TRITON_CACHE_DIR": str(fresh / "triton"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    spec = {**spec, "result": str(fresh / "result.json")}
    log = fresh / "child.log"
    spawned = time.time()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0 or not Path(spec["result"]).is_file():
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{spec.get('workload')} {spec.get('mode')}: child failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(Path(spec["result"]).read_text())
    if spec.get("prime"):
        return result
    stamps = result.pop("stamps")
    marks = [spawned] + [stamps[k] for k in ("start", "imports", "cache", "device", "model", "engine", "warmup",
                                              "answer")]
    result["phases"] = {p: round(b - a, 3) for p, a, b in zip(PHASES, marks, marks[1:])}
    result["total_s"] = round(stamps["answer"] - spawned, 3)
    return result


def measure(workload: str, device: str, methods: list[str], eager: bool, repeats: int, timeout: float,
            work: Path) -> dict:
    base = {"workload": workload, "device": device, "methods": methods}
    artifacts = work / workload / "artifacts"
    runs: dict[str, list] = {}
    modes = ["cold", *methods] + (["eager"] if eager else [])
    steps, done = len(modes) * repeats, 0
    for mode in modes:
        for r in range(repeats):
            spec = {**base, "mode": mode, "caches": str(Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work)))}
            if mode == "cold" and r == 0:
                spec["export"] = str(artifacts)
            elif mode in methods:  # a copy, as TorchServe extracts the archive: the run writes into it
                copy = Path(tempfile.mkdtemp(prefix=f"{mode}-artifact-", dir=work)) / "compile_cache"
                shutil.copytree(artifacts / mode, copy)
                spec["artifact"] = str(copy)
            print(f"[{workload}] {done + 1}/{steps} {mode} ...", end=" ", flush=True)
            result = _spawn(spec, work, timeout)
            runs.setdefault(mode, []).append(result)
            done += 1
            print(f"{result['total_s']:.1f} s to the first answer (warm-up {result['phases']['warmup']:.1f} s)",
                  flush=True)
    out = {"runs": runs, "median_total_s": {m: statistics.median(r["total_s"] for r in rs) for m, rs in runs.items()}}
    out["artifacts"] = runs["cold"][0].get("saved", {})
    out["workload"] = runs["cold"][0]["workload"]
    cached = {m: out["median_total_s"][m] for m in methods}
    out["winner"] = min(cached, key=cached.get) if cached else None
    return out


def table(results: dict) -> str:
    head = "| workload | run | " + " | ".join(PHASES) + " | total s | vs cold |"
    lines = [head, "|" + "---|" * (len(PHASES) + 4)]
    for name, res in results["workloads"].items():
        cold = res["median_total_s"]["cold"]
        for mode, runs in res["runs"].items():
            run = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]
            phases = " | ".join(f"{run['phases'][p]:.2f}" for p in PHASES)
            lines.append(f"| {name} | {mode} | {phases} | {run['total_s']:.1f} | {cold / run['total_s']:.1f}x |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, mode, sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2])
            for name, res in results["workloads"].items() for mode, runs in res["runs"].items()]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
    colors = plt.get_cmap("tab10").colors
    for y, (_, _, run) in enumerate(rows):
        left = 0.0
        for i, phase in enumerate(PHASES):
            ax.barh(y, run["phases"][phase], left=left, color=colors[i], label=phase if y == 0 else None)
            left += run["phases"][phase]
        ax.text(left, y, f" {run['total_s']:.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{n}: {m}" for n, m, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12 * max(run["total_s"] for _, _, run in rows))
    ax.set_xlabel("seconds from process start to the first answer")
    meta = results["meta"]
    ax.set_title(f"Cold start, {meta['device_name']} (torch {meta['torch']})", fontsize=10)
    ax.legend(ncol=4, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--workloads", nargs="+", choices=WORKLOAD_NAMES, default=None,
                   help="default: all four on cuda, tiny on the cpu")
    p.add_argument("--methods", nargs="+", choices=("cache-dir", "mega-cache"), default=["cache-dir", "mega-cache"])
    p.add_argument("--no-eager", action="store_true", help="skip the run without compilation")
    p.add_argument("--repeats", type=int, default=1, help="runs of each kind (the median is reported)")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds a process may take")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"), help="folder for NAME.json and NAME.png")
    p.add_argument("--name", default=None, help="file name without suffix (default: cold_start, cold_start_cpu)")
    p.add_argument("--append", action="store_true", help="add to (or replace in) an existing NAME.json")
    p.add_argument("--report", action="store_true", help="only the PNG and the table again, from NAME.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return 0
    workloads = args.workloads or (list(WORKLOAD_NAMES) if args.device == "cuda" else ["tiny"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or ("cold_start" if args.device == "cuda" else "cold_start_cpu")
    path, png = out / f"{name}.json", out / f"{name}.png"
    if args.report:
        results = json.loads(path.read_text())
        plot(results, png)
        print(table(results))
        return 0
    results = json.loads(path.read_text()) if args.append and path.is_file() else {"workloads": {}}
    with tempfile.TemporaryDirectory(prefix="xgr-cold-start-") as tmp:
        work = Path(tmp)
        print("loading torch once (not measured) ...", flush=True)
        meta = _spawn({"prime": True, "device": args.device}, work, args.timeout)
        meta["command"] = "python3 tools/cold_start.py " + " ".join(sys.argv[1:])
        meta["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ}
        try:  # the working tree may hold more than this commit
            meta["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True).stdout.strip() or None
        except OSError:
            meta["git"] = None
        results["meta"] = meta
        for name in workloads:
            start = time.time()
            res = measure(name, args.device, args.methods, not args.no_eager, args.repeats, args.timeout, work)
            res["meta"], res["seconds"] = meta, round(time.time() - start, 1)
            results["workloads"][name] = res
            path.write_text(json.dumps(results, indent=1))  # keep what is done
    plot(results, png)
    print(table(results))
    winners = {n: r["winner"] for n, r in results["workloads"].items()}
    print(f"fastest artifact per workload: {winners}\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
