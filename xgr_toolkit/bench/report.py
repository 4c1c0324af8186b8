"""Benchmark JSON -> a latency/throughput plot and the table of docs/benchmarks.md (never typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["markdown_table", "plot", "plot_returning", "plot_sweeps", "write_markdown"]


def _fmt(x, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _measured(results: dict) -> dict:
    """The workloads with the main figures (a workload measured only with ``--returning`` has none)."""
    return {name: w for name, w in results["workloads"].items() if "xgr" in w}


def markdown_table(results: dict) -> str:
    returning = _returning_table(results)
    results = {**results, "workloads": _measured(results)}
    if not results["workloads"]:
        return "\n".join(returning).strip()
    lines = [f"- {name}: {w['meta']['gpu']}, torch {w['meta']['torch']}, "
             f"commit {w['meta'].get('commit', 'not recorded')}, `{w['meta']['command']}`"
             for name, w in results["workloads"].items()]
    lines += ["", "| workload | system | P50 c=1 (ms) | P99 c=1 (ms) | P50 c=4 (ms) | P99 c=4 (ms) | req/s c=4 "
             "| req/s at P99<=200ms | note |", "|---|---|---|---|---|---|---|---|---|"]
    for name, w in results["workloads"].items():
        systems = {"xgr (fast engine)": w["xgr"], **({"xgr, float8 linear layers": w["fp8"]} if "fp8" in w else {}),
                   **w.get("ablations", {})}
        for system, s in systems.items():
            if "error" in s:
                lines.append(f"| {name} | {system} | | | | | | | {s['error']} |")
                continue
            confirmed = s.get("confirmed")
            note = (f"open loop: {confirmed['requests']:,} requests, P99 {_fmt(confirmed['p99_ms'])} ms"
                    if confirmed else "")
            lines.append(f"| {name} | {system} | {_fmt(s['c1']['p50_ms'])} | {_fmt(s['c1']['p99_ms'])} | "
                         f"{_fmt(s['c4']['p50_ms'])} | {_fmt(s['c4']['p99_ms'])} | {_fmt(s['c4']['throughput_rps'])} "
                         f"| {_fmt(s.get('max_rps_at_p99_limit'))} | {note}".rstrip() + " |")
        hf = w.get("hf")
        if hf:
            c1 = hf.get("c1", {})
            note = hf.get("error", "") + (f" best batch rate {_fmt(hf.get('best_rps'), 2)} req/s" if hf.get("best_rps")
                                          else "")
            lines.append(f"| {name} | HF transformers generate | {_fmt(c1.get('p50_ms'))} | {_fmt(c1.get('p99_ms'))} "
                         f"| | | | | {note} |")
    lines += ["", "| workload | speed-up vs HF | MFU | floor (ms) | c=1 P50 / floor | decode floor (ms) "
              "| decode / its floor | GPU ms a batch (graph replay) | bf16 top-K agreement | peak memory (GiB) "
              "| warm-up (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, w in results["workloads"].items():
        gpu = ", ".join(f"{k}: {v:.2f}" for k, v in w["xgr"].get("gpu_ms_per_batch", {}).items())
        lines.append(f"| {name} | {_fmt(w.get('speedup_vs_hf'))}x | {_fmt(100 * w['mfu'])}% | "
                     f"{_fmt(w['floor_ms'], 2)} | {_fmt(w['c1_p50_over_floor'])} | {_fmt(w['decode_floor_ms'], 2)} "
                     f"| {_fmt(w.get('decode_over_floor'), 2)} | {gpu} | {_fmt(100 * w['bf16_top_k_agreement'])}% "
                     f"| {_fmt(w['xgr']['peak_memory_gib'], 2)} | {_fmt(w['warmup_s'])} |")
    return "\n".join(lines + _fp8_table(results) + _time_split(results) + _sweep_table(results) + returning)


def _returning_table(results: dict) -> list[str]:
    """Returning users: each fraction's open-loop rate with the prompt store and without it, from one run; the hit
    ratio and the store's bytes measured over the confirmed point with the store."""
    runs = {name: w["returning"] for name, w in results["workloads"].items() if "returning" in w}
    lines = ["", "### Returning users (prompt-KV store on and off, same run, same trace)", ""]
    for name, r in runs.items():  # the fractions may come from several runs (xgr bench --fractions)
        runs_of = dict.fromkeys(f"{m['gpu']}, torch {m['torch']}, `{m['command']}`" for m in _metas(r))
        lines.append(f"- {name}: {'; '.join(runs_of)}; serve {', '.join(f'{k}: {v}' for k, v in r['serve'].items())}")
    lines += ["", "| workload | returning fraction | reuse distance mean / median (requests) | hit ratio "
              "| req/s at P99<=200ms with reuse | without | speed-up | cache (GiB) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        for row in r["points"]:
            confirmed = row["reuse"]["confirmed"] or {}
            hit, held = confirmed.get("hit_ratio"), confirmed.get("bytes_held")
            d, rps = row["reuse_distance"], [row[s]["max_rps_at_p99_limit"] for s in ("reuse", "no_reuse")]
            dist = f"{_fmt(d['mean'])} / {d['median']:g}" if d["returns"] else "—"  # no returns: no distance
            lines.append(f"| {name} | {100 * row['fraction']:.0f}% | {dist} "
                         f"| {_fmt(None if hit is None else 100 * hit)}{'' if hit is None else '%'} "
                         f"| {_fmt(rps[0])} | {_fmt(rps[1])} "
                         f"| {_fmt(row['speedup'], 2)}{'' if row['speedup'] is None else 'x'} "
                         f"| {_fmt(None if held is None else held / 2**30, 2)} |")
    return lines if runs else ["", "Returning users (`xgr bench WORKLOAD --returning`): not measured yet."]


def _metas(returning: dict) -> list[dict]:
    return [row["meta"] for row in returning["points"]]


def plot_returning(results: dict, path: Path) -> bool:
    """Requests/s at P99 <= 200 ms against the measured hit ratio, one colour per workload: with the store (solid)
    and without it over the same traces (dashed, at the store's hit ratio). False: no returning-users run."""
    runs = {name: w["returning"] for name, w in results["workloads"].items() if "returning" in w}
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in runs.items():
        rows = sorted((row for row in r["points"] if row["reuse"]["confirmed"]),
                      key=lambda row: row["reuse"]["confirmed"]["hit_ratio"])
        hits = [row["reuse"]["confirmed"]["hit_ratio"] for row in rows]
        (line,) = ax.plot(hits, [row["reuse"]["max_rps_at_p99_limit"] for row in rows], marker="o",
                          label=f"{name}, reuse")
        ax.plot(hits, [row["no_reuse"]["max_rps_at_p99_limit"] for row in rows], marker="s", linestyle="--",
                color=line.get_color(), label=f"{name}, no reuse (same traces)")
    ax.set_xlabel("hit ratio (prompt tokens not prefilled, measured)")
    ax.set_ylabel("requests/s at P99 <= 200 ms")
    ax.set_ylim(bottom=0)
    gpus = sorted({m["gpu"] for r in runs.values() for m in _metas(r)})
    ax.set_title(f"Returning users on {', '.join(gpus)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def _fp8_table(results: dict) -> list[str]:
    """The float8 engine beside bf16, from the same run: the numerics gate and the speed-ups."""
    lines = ["", "### Float8 linear layers beside bf16 (same run, same weights)", "",
             "| workload | top-K agreement with float32: bf16, float8 | req/s c=4: bf16, float8 (ratio) "
             "| req/s at P99<=200ms: bf16, float8 (ratio) | MFU of float8: of the bf16 rate, of the fp8 rate "
             "| matrix rate (TFLOP/s): bf16, fp8 | GPU ms a batch (largest): bf16, float8 | layers in float8 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, w in results["workloads"].items():
        fp8, bf16 = w.get("fp8"), w["xgr"]
        if fp8 is None:
            continue
        c4 = bf16["c4"]["throughput_rps"], fp8["c4"]["throughput_rps"]
        held = bf16.get("max_rps_at_p99_limit"), fp8.get("max_rps_at_p99_limit")
        held_ratio = f"{held[1] / held[0]:.2f}x" if held[0] and held[1] is not None else "—"
        R = max(fp8.get("gpu_ms_per_batch", {}), key=lambda k: int(k[1:]), default="R?")  # the largest batch
        ms = bf16.get("gpu_ms_per_batch", {}).get(R), fp8.get("gpu_ms_per_batch", {}).get(R)
        lines.append(f"| {name} | {_fmt(100 * w['bf16_top_k_agreement'])}%, {_fmt(100 * fp8['top_k_agreement'])}% "
                     f"| {_fmt(c4[0])}, {_fmt(c4[1])} ({c4[1] / c4[0]:.2f}x) | {_fmt(held[0])}, {_fmt(held[1])} "
                     f"({held_ratio}) | {_fmt(100 * fp8['mfu']['vs_bf16_rate'])}%, "
                     f"{_fmt(100 * fp8['mfu']['vs_fp8_rate'])}% | {_fmt(w['peaks']['bf16_tflops'], 0)}, "
                     f"{_fmt(w['peaks'].get('fp8_tflops'), 0)} | {R}: {_fmt(ms[0], 2)}, {_fmt(ms[1], 2)} "
                     f"| {fp8['float8_layers']} |")
    return lines if len(lines) > 5 else []


def _time_split(results: dict) -> list[str]:
    """Where a batch's GPU time goes: phases (each its own graph) and the kernel profile by kind."""
    lines = ["", "### Where a batch's GPU time goes", "",
             "| workload | batch | phases (ms) | kernels a batch | kernel ms by kind |", "|---|---|---|---|---|"]
    for name, w in results["workloads"].items():
        for R, phases in w.get("phases_ms", {}).items():
            profile = w.get("profile", {}).get(R, {})
            split = ", ".join(f"{k} {v:.2f}" for k, v in phases.items() if k != "decode")
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in profile.get("ms_by_kind", {}).items())
            lines.append(f"| {name} | {R[1:]} | {split} | {_fmt(profile.get('kernels_per_replay'), 0)} | {kinds} |")
    return lines if len(lines) > 5 else []


def _sweep_table(results: dict) -> list[str]:
    """GPU ms of one request alone as one workload parameter changes."""
    lines = ["", "### Scaling: GPU ms of one request alone (batch 1), one parameter changed at a time", "",
             "| workload | parameter | value | GPU ms | of which decode |", "|---|---|---|---|---|"]
    for name, w in results["workloads"].items():
        for axis, points in w.get("sweeps", {}).items():
            for p in points:
                ms = p.get("error") or f"{p['gpu_ms']:.2f}"
                decode = f"{p['phases_ms']['decode']:.2f}" if "phases_ms" in p else ""
                lines.append(f"| {name} | {axis} | {p['value']:,} | {ms} | {decode} |")
    return lines if len(lines) > 5 else []


def plot_sweeps(results: dict, path: Path) -> bool:
    """One panel per sweep axis: GPU ms of one request against the parameter (log x). False: no sweeps."""
    swept = {name: w["sweeps"] for name, w in results["workloads"].items() if w.get("sweeps")}
    if not swept:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axes_names = list(dict.fromkeys(axis for sweeps in swept.values() for axis in sweeps))
    fig, axes = plt.subplots(1, len(axes_names), figsize=(4 * len(axes_names), 3.6), squeeze=False)
    for ax, axis in zip(axes[0], axes_names):
        for name, sweeps in swept.items():
            points = [p for p in sweeps.get(axis, []) if "gpu_ms" in p]
            ax.plot([p["value"] for p in points], [p["gpu_ms"] for p in points], marker="o", label=f"{name} total")
            ax.plot([p["value"] for p in points], [p["phases_ms"]["decode"] for p in points], marker=".",
                    linestyle="--", label=f"{name} decode")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
        ax.set_xlabel(axis.replace("_", " "))
        ax.set_ylabel("GPU ms, one request")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def plot(results: dict, path: Path) -> None:
    """P99 latency against arrival rate, one line per workload (the fast engine's open-loop points, by rate), and
    a dashed one for its float8 engine where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, w in _measured(results).items():
        sweep = sorted(w["xgr"].get("sweep", []), key=lambda p: p["arrival_rps"])  # searched out of order
        (line,) = ax.plot([p["arrival_rps"] for p in sweep], [p["p99_ms"] for p in sweep], marker="o",
                          label=f"xgr {name}")
        if "fp8" in w:
            sweep = sorted(w["fp8"].get("sweep", []), key=lambda p: p["arrival_rps"])
            ax.plot([p["arrival_rps"] for p in sweep], [p["p99_ms"] for p in sweep], marker="s", linestyle="--",
                    color=line.get_color(), label=f"xgr {name}, float8")
        hf = w.get("hf", {}).get("c1")
        if hf:
            ax.scatter([hf["throughput_rps"]], [hf["p99_ms"]], marker="x", s=60, color=line.get_color(),
                       label=f"HF {name} (c=1)")
    ax.axhline(200, color="grey", linestyle="--", linewidth=1, label="P99 limit 200 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("P99 latency (ms)")
    gpus = sorted({w["meta"]["gpu"] for w in _measured(results).values()})
    ax.set_title(f"xgr_toolkit on {', '.join(gpus)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_markdown(json_path: Path, md_path: Path) -> None:
    results = json.loads(Path(json_path).read_text())
    md_path.write_text("# Benchmarks\n\nGenerated from " f"`{json_path.name}` by `xgr bench --report`; do not edit.\n\n"
                       + markdown_table(results) + "\n")
