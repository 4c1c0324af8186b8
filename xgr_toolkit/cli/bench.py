"""Benchmark the engine against its ablations and HF transformers on a GPU; writes JSON, PNG, markdown."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ..bench.workloads import DEFAULT_WORKLOADS, WORKLOADS
from .options import number, out_dir


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("workloads", nargs="*", default=list(DEFAULT_WORKLOADS),
                   help=f"the workloads to run, of {list(WORKLOADS)} (default: {list(DEFAULT_WORKLOADS)}, those "
                        "measured on a GPU; the others only when named)")
    p.add_argument("--out", type=out_dir, default="docs/benchmarks", help="folder for bench.json and bench.png")
    p.add_argument("--seconds", type=number("> 0", lambda x: x > 0), default=3.0, help="seconds a measurement point")
    p.add_argument("--no-ablations", action="store_true",
                   help="skip the ablations (each xGR technique switched off in turn); only the full engine")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face transformers baseline")
    p.add_argument("--sweeps", action="store_true", help="also the scaling sweeps (beam width, prompt, catalog)")
    p.add_argument("--fp8", action="store_true",
                   help="also the float8 engine (serve.linear_precision: float8; needs torchao and a GPU of compute "
                        "capability >= 8.9), beside bf16: closed and open loop, top-K agreement with float32, MFU")
    p.add_argument("--returning", action="store_true",
                   help="instead of the other figures, the returning-users benchmark (docs/engine.md): the open-loop "
                        "rate at P99 <= 200 ms with the prompt-KV store and without it, returning fractions 0, 0.5, "
                        "0.9; kept beside the workload's other figures in bench.json (with --append), plotted in "
                        "returning.png")
    p.add_argument("--fractions", nargs="+", type=number("in [0, 1)", lambda x: 0 <= x < 1), default=[0.0, 0.5, 0.9],
                   help="with --returning: the returning fractions to measure (a long workload may need one call "
                        "for 0.9 and one for 0 0.5); with --append, rows of other fractions are kept")
    p.add_argument("--report", action="store_true", help="only regenerate docs/benchmarks.md from the JSON")
    p.add_argument("--append", action="store_true", help="add to (or replace in) an existing bench.json")


def _source_commit() -> str:
    """The commit measured: $XGR_COMMIT (a device machine's copy of the tree has no .git), else git's HEAD."""
    if os.environ.get("XGR_COMMIT"):
        return os.environ["XGR_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.report import markdown_table, plot, plot_returning, plot_sweeps, write_markdown
    from ..bench.returning import bench_returning
    from ..bench.run import bench_workload
    from ..engine.precision import check_float8_device

    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"workload(s) {unknown}: unknown; allowed {list(WORKLOADS)}")
    if args.returning and (args.fp8 or args.sweeps):
        raise ValueError("--returning measures only the returning users: run --fp8 and --sweeps without it")
    out = Path(args.out)
    if args.report:
        write_markdown(out / "bench.json", out.parent / "benchmarks.md")
        return 0
    if not torch.cuda.is_available():
        raise ValueError("xgr bench needs a CUDA GPU")
    if args.fp8:  # before the bf16 half of every workload is measured
        check_float8_device(torch.device("cuda", torch.cuda.current_device()), torch.bfloat16)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": _source_commit(),
            "command": "xgr bench " + " ".join(sys.argv[2:])}
    existing = out / "bench.json"
    results = json.loads(existing.read_text()) if args.append and existing.exists() else {"workloads": {}}
    out.mkdir(parents=True, exist_ok=True)
    for name in args.workloads:
        if args.returning:  # beside the workload's other figures, which keep their own meta
            entry = results["workloads"].setdefault(name, {})
            returning = bench_returning(WORKLOADS[name], args.seconds, tuple(args.fractions))
            kept = [r for r in entry.get("returning", {}).get("points", []) if r["fraction"] not in args.fractions]
            returning["points"] = sorted(kept + [{**r, "meta": meta} for r in returning["points"]],
                                         key=lambda r: r["fraction"])
            entry["returning"] = returning
        else:
            partial = out / "partial" / f"{name}.json"  # the figures so far, should the run be cut short
            partial.parent.mkdir(exist_ok=True)
            result = bench_workload(WORKLOADS[name], args.seconds, not args.no_ablations, not args.no_hf,
                                    args.sweeps, args.fp8,
                                    progress=lambda r, path=partial: path.write_text(json.dumps({"meta": meta, **r},
                                                                                                indent=1)))
            partial.unlink()
            if not any(partial.parent.iterdir()):
                partial.parent.rmdir()
            kept = {"returning": results["workloads"][name]["returning"]} \
                if "returning" in results["workloads"].get(name, {}) else {}
            results["workloads"][name] = {"meta": meta, **result, **kept}
        (out / "bench.json").write_text(json.dumps(results, indent=1))  # keep what is done
    if any("xgr" in w for w in results["workloads"].values()):
        plot(results, out / "bench.png")
    plot_returning(results, out / "returning.png")
    plot_sweeps(results, out / "sweeps.png")
    write_markdown(out / "bench.json", out.parent / "benchmarks.md")
    print(markdown_table(results))
    return 0
