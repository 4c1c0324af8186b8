"""Benchmark JSON -> a latency/throughput plot and the table of docs/benchmarks.md (never typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["markdown_table", "plot", "write_markdown"]


def _fmt(x, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def markdown_table(results: dict) -> str:
    lines = [f"- {name}: {w['meta']['gpu']}, torch {w['meta']['torch']}, `{w['meta']['command']}`"
             for name, w in results["workloads"].items()]
    lines += ["", "| workload | system | P50 c=1 (ms) | P99 c=1 (ms) | P50 c=4 (ms) | P99 c=4 (ms) | req/s c=4 "
             "| req/s at P99<=200ms | note |", "|---|---|---|---|---|---|---|---|---|"]
    for name, w in results["workloads"].items():
        systems = {"xgr (fast engine)": w["xgr"], **w.get("ablations", {})}
        for system, s in systems.items():
            if "error" in s:
                lines.append(f"| {name} | {system} | | | | | | | {s['error']} |")
                continue
            lines.append(f"| {name} | {system} | {_fmt(s['c1']['p50_ms'])} | {_fmt(s['c1']['p99_ms'])} | "
                         f"{_fmt(s['c4']['p50_ms'])} | {_fmt(s['c4']['p99_ms'])} | {_fmt(s['c4']['throughput_rps'])} "
                         f"| {_fmt(s.get('max_rps_at_p99_limit'))} | |")
        hf = w.get("hf")
        if hf:
            c1 = hf.get("c1", {})
            note = hf.get("error", "") + (f" best batch rate {_fmt(hf.get('best_rps'), 2)} req/s" if hf.get("best_rps")
                                          else "")
            lines.append(f"| {name} | HF transformers generate | {_fmt(c1.get('p50_ms'))} | {_fmt(c1.get('p99_ms'))} "
                         f"| | | | | {note} |")
    lines += ["", "| workload | speed-up vs HF | MFU | floor (ms) | c=1 P50 / floor | decode floor (ms) "
              "| GPU ms a batch (graph replay) | bf16 top-K agreement | peak memory (GiB) | warm-up (s) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, w in results["workloads"].items():
        gpu = ", ".join(f"{k}: {v:.2f}" for k, v in w["xgr"].get("gpu_ms_per_batch", {}).items())
        lines.append(f"| {name} | {_fmt(w.get('speedup_vs_hf'))}x | {_fmt(100 * w['mfu'])}% | "
                     f"{_fmt(w['floor_ms'], 2)} | {_fmt(w['c1_p50_over_floor'])} | {_fmt(w['decode_floor_ms'], 2)} "
                     f"| {gpu} | {_fmt(100 * w['bf16_top_k_agreement'])}% | {_fmt(w['xgr']['peak_memory_gib'], 2)} "
                     f"| {_fmt(w['warmup_s'])} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """P99 latency against offered rate, one line per workload (the fast engine's sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, w in results["workloads"].items():
        sweep = w["xgr"].get("sweep", [])
        ax.plot([p["achieved_rps"] for p in sweep], [p["p99_ms"] for p in sweep], marker="o", label=f"xgr {name}")
        hf = w.get("hf", {}).get("c1")
        if hf:
            ax.scatter([hf["throughput_rps"]], [hf["p99_ms"]], marker="x", s=60, label=f"HF {name} (c=1)")
    ax.axhline(200, color="grey", linestyle="--", linewidth=1, label="P99 limit 200 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("P99 latency (ms)")
    gpus = sorted({w["meta"]["gpu"] for w in results["workloads"].values()})
    ax.set_title(f"xgr_toolkit on {', '.join(gpus)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_markdown(json_path: Path, md_path: Path) -> None:
    results = json.loads(Path(json_path).read_text())
    md_path.write_text("# Benchmarks\n\nGenerated from " f"`{json_path.name}` by `xgr bench --report`; do not edit.\n\n"
                       + markdown_table(results) + "\n")
