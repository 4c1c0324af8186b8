"""GPU microbenchmark of the xGR core ops, each fast path checked against its reference in the same run.

* Staged attention (one decode step, Qwen3-0.6B heads: H=16, Hkv=8, D=128, bf16) for the Triton
  kernel and the PyTorch reference, against what a naive engine does: SDPA over the prompt KV
  copied into every beam (the copy is built beforehand and not timed; it has exactly the valid
  length, so SDPA needs no mask: the baseline at its best).
* MaskedBeamSorter (C = 8192 codes a beam, k = W) for the Triton and PyTorch paths, against
  ``torch.topk`` over the flattened W x C masked scores plus the reordering by flat index that the
  in-place cache reorder needs.

Each function is captured in a CUDA graph (as the engine runs it) and its replays timed with CUDA
events, the L2 cache flushed before each, median of ``--reps``. A configuration that runs out of
memory is recorded as such. Writes docs/benchmarks/core_microbench.json (every figure, the GPU, the
versions, the command) and core_microbench.md, and prints the table.

    python tools/bench_core.py                 # on an H100 / H200, a few minutes
    python tools/bench_core.py --cpu-smoke     # the script's logic on the CPU, tiny sizes, Triton interpreted
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

TARGETS = {"attention": dict(W=512, P=1024, R=1, speedup=5.0), "sorter": dict(W=512, C=8192, R=1, speedup=2.0)}
ATTENTION_TOL = 2e-2  # max abs error of a bf16 fast path against the float32 reference (outputs are O(0.1))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, Triton interpreted")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--prompts", type=int, nargs="+", default=[1024, 5000])
    p.add_argument("--requests", type=int, nargs="+", default=[1, 4])
    p.add_argument("--codes", type=int, default=8192)
    p.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.015],
                   help="fraction of valid candidates (1.0: every code; 0.015: a level-1 catalog mask)")
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="configurations not started within this many seconds are recorded as skipped")
    p.add_argument("--out-dir", type=Path, help="default docs/benchmarks (build/bench_core_smoke for --cpu-smoke)")
    args = p.parse_args(argv)
    args.targets = TARGETS
    if args.cpu_smoke:
        args.widths, args.prompts, args.requests, args.codes, args.reps = [4, 8], [16, 40], [2], 64, 1
        args.targets = {"attention": dict(W=8, P=40, R=2, speedup=5.0), "sorter": dict(W=8, C=64, R=2, speedup=2.0)}
    args.out_dir = args.out_dir or ROOT / ("build/bench_core_smoke" if args.cpu_smoke else "docs/benchmarks")
    return args


class Timer:
    """Median milliseconds of a function: CUDA graph replays with a cold L2 on the GPU, wall clock on the CPU."""

    def __init__(self, device: torch.device, reps: int):
        self.device, self.reps = device, reps
        self.flush = torch.empty(256 << 20, dtype=torch.int8, device=device) if device.type == "cuda" else None

    def __call__(self, fn) -> float:
        if self.device.type != "cuda":
            fn()
            times = []
            for _ in range(self.reps):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile, autotune and allocate outside the capture
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(self.reps)]
        graph.replay()
        for start, end in events:
            self.flush.zero_()
            start.record()
            graph.replay()
            end.record()
        torch.cuda.synchronize()
        del graph
        return statistics.median(start.elapsed_time(end) for start, end in events)


def attempt(fn, *args):
    """fn(*args) -> (value, status): 'ok', 'oom' or the error, so that one failure never ends the run."""
    try:
        return fn(*args), "ok"
    except torch.OutOfMemoryError:
        return None, "oom"
    except Exception as e:  # noqa: BLE001  recorded in the results, the run goes on
        return None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure(row: dict, name: str, fn, timer: Timer):
    """Run fn once (its output, for the checks) and time it; statuses and times go into row."""
    out, row["status"][name] = attempt(fn)
    if out is not None:
        row["ms"][name], status = attempt(timer, fn)
        if status != "ok":
            row["status"][name] = f"timing: {status}"
    return out


# ---- staged attention ---------------------------------------------------------------------------------

def attention_inputs(R, W, P, H, Hkv, D, L, beam_len, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)
    return (rand(R, W, H, D), rand(R, Hkv, P, D), rand(R, Hkv, P, D), torch.full((R,), P, device=device),
            rand(R, W, Hkv, L, D), rand(R, W, Hkv, L, D), torch.tensor(beam_len, device=device),
            torch.arange(W, device=device)[None, :, None].expand(R, W, L))  # each beam reads its own slots


def duplicated_kv(prompt, beam, beam_len):
    """[R, Hkv, P, D], [R, W, Hkv, L, D] -> [R*W, Hkv, P + beam_len, D]: the prompt copied into every beam."""
    R, W, Hkv, _, D = beam.shape
    copies = prompt[:, None].expand(R, W, *prompt.shape[1:])
    return torch.cat((copies, beam[:, :, :, :beam_len]), dim=3).reshape(R * W, Hkv, -1, D)


def attention_row(R, W, P, args, timer, device, staged_attention, staged_attention_reference) -> dict:
    H, Hkv, D, L, beam_len = (4, 2, 16, 3, 2) if args.cpu_smoke else (16, 8, 128, 3, 2)
    dtype = torch.float32 if args.cpu_smoke else torch.bfloat16
    row = dict(R=R, W=W, P=P, H=H, Hkv=Hkv, D=D, beam_len=beam_len, dtype=str(dtype).removeprefix("torch."),
               ms={}, status={}, max_abs_err={}, correct={})
    if time.time() > args.deadline:
        row["status"]["run"] = "skipped: over --budget-s"
        return row
    inputs, row["status"]["inputs"] = attempt(attention_inputs, R, W, P, H, Hkv, D, L, beam_len, dtype, device)
    if inputs is None:
        return row
    ref = measure(row, "reference", lambda: staged_attention_reference(*inputs), timer)
    outs = {"triton": measure(row, "triton", lambda: staged_attention(*inputs, backend="triton"), timer)}
    q, pk, pv, _, bk, bv, _, _ = inputs
    dense, row["status"]["sdpa_dup"] = attempt(lambda: (duplicated_kv(pk, bk, beam_len),
                                                         duplicated_kv(pv, bv, beam_len)))
    if dense is not None:
        outs["sdpa_dup"] = measure(
            row, "sdpa_dup",
            lambda: F.scaled_dot_product_attention(q.reshape(R * W, H, 1, D), *dense, enable_gqa=True).view(R, W, H, D),
            timer)
    for name, out in outs.items():
        if ref is not None and out is not None:
            row["max_abs_err"][name] = float((out.float() - ref.float()).abs().max())
            row["correct"][name] = row["max_abs_err"][name] <= ATTENTION_TOL
    return row


def bench_attention(R, args, timer, device, staged_attention, staged_attention_reference) -> list[dict]:
    rows = []
    for P in args.prompts:
        for W in args.widths:
            rows.append(attention_row(R, W, P, args, timer, device, staged_attention, staged_attention_reference))
            print(f"attention R={R} P={P} W={W}: {fmt_ms(rows[-1]['ms'])}", flush=True)
    return rows


# ---- beam sorter --------------------------------------------------------------------------------------

def sorter_inputs(R, W, C, density, device, seed=0):
    """Realistic scores: sorted beam scores, log-softmax of random logits (bf16), a random validity mask."""
    g = torch.Generator(device=device).manual_seed(seed)
    beam = -torch.sort(8 * torch.rand(R, W, generator=g, device=device), dim=1).values
    logits = 2 * torch.randn(R, W, C, generator=g, device=device)
    log_probs = torch.log_softmax(logits, dim=-1).to(torch.bfloat16)
    return beam, log_probs, torch.rand(R, W, C, generator=g, device=device) < density


def topk_baseline(beam_scores, log_probs, valid, k):
    """Flattened torch.topk, then the selection put in flat-index order (parents non-decreasing)."""
    C = log_probs.shape[2]
    scores = torch.where(valid, beam_scores[:, :, None] + log_probs.float(), float("-inf")).flatten(1)
    values, flat = scores.topk(k, dim=1)
    flat, order = flat.sort(dim=1)
    return values.gather(1, order), flat // C, flat % C


def sorter_row(R, W, density, args, timer, device, sorters, beam_sort_reference) -> dict:
    C, k = args.codes, W
    row = dict(R=R, W=W, C=C, k=k, density=density, log_probs="bfloat16", ms={}, status={}, exact={})
    if time.time() > args.deadline:
        row["status"]["run"] = "skipped: over --budget-s"
        return row
    inputs, row["status"]["inputs"] = attempt(sorter_inputs, R, W, C, density, device)
    if inputs is None:
        return row
    ref, row["status"]["reference"] = attempt(beam_sort_reference, *inputs, k)
    for name, fn in (("topk", topk_baseline), *sorters.items()):
        got = measure(row, name, lambda fn=fn: fn(*inputs, k), timer)
        if got is not None and ref is not None:
            # torch.topk breaks ties its own way: for it, the same multiset of scores is all there is to check.
            row["exact"][name] = (torch.equal(got[0].sort().values, ref[0].sort().values) if name == "topk"
                                  else all(torch.equal(a, b) for a, b in zip(got, ref, strict=True)))
    return row


def bench_sorter(R, args, timer, device, MaskedBeamSorter, beam_sort_reference) -> list[dict]:
    sorters = {"torch": MaskedBeamSorter(backend="torch"), "triton": MaskedBeamSorter(backend="triton")}
    rows = []
    for density in args.densities:
        for W in args.widths:
            rows.append(sorter_row(R, W, density, args, timer, device, sorters, beam_sort_reference))
            print(f"sorter R={R} density={density} W={W}: {fmt_ms(rows[-1]['ms'])} exact={rows[-1]['exact']}",
                  flush=True)
    return rows


# ---- report -------------------------------------------------------------------------------------------

def fmt_ms(ms: dict) -> str:
    return " ".join(f"{k}={v:.4f}ms" if v is not None else f"{k}=-" for k, v in ms.items())


def ratio(ms: dict, baseline: str, fast: str):
    b, f = ms.get(baseline), ms.get(fast)
    return b / f if b and f else None


def cell(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def check_targets(targets: dict, attention: list[dict], sorter: list[dict]) -> list[dict]:
    out = []
    for kind, rows, baseline in (("attention", attention, "sdpa_dup"), ("sorter", sorter, "topk")):
        t = targets[kind]
        match = [r for r in rows if all(r[key] == t[key] for key in t if key != "speedup")]
        if kind == "sorter":
            match = [r for r in match if r["density"] == 1.0]
        speedup = ratio(match[0]["ms"], baseline, "triton") if match else None
        fast_paths = ("torch", "triton") if kind == "sorter" else ("triton",)
        checks = match[0]["exact" if kind == "sorter" else "correct"] if match else {}
        correct = all(checks[name] for name in fast_paths) if all(name in checks for name in fast_paths) else None
        out.append(dict(kind=kind, config={k: v for k, v in t.items() if k != "speedup"}, baseline=baseline,
                        needed=t["speedup"], speedup=speedup, correct=correct,
                        met=bool(speedup is not None and speedup >= t["speedup"] and correct)))
    return out


def markdown(result: dict) -> str:
    lines = [f"# Core microbenchmark: {result['gpu']}", "",
             f"torch {result['torch']}, triton {result['triton']}; `{result['command']}`; {result['timing']}.", "",
             "## Staged attention (one decode step), ms", "",
             "| R | P | W | SDPA, KV per beam | reference | Triton | Triton vs SDPA | max abs err (Triton) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["attention"]:
        ms = r["ms"]
        sdpa = cell(ms.get("sdpa_dup")) if ms.get("sdpa_dup") is not None else r["status"].get("sdpa_dup", "-")[:12]
        lines.append(f"| {r['R']} | {r['P']} | {r['W']} | {sdpa} | {cell(ms.get('reference'))} | "
                     f"{cell(ms.get('triton'))} | {cell(ratio(ms, 'sdpa_dup', 'triton'), '.1f')}x | "
                     f"{cell(r['max_abs_err'].get('triton'), '.2e')}"
                     f"{'' if r['correct'].get('triton', True) else ' WRONG'} |")
    lines += ["", f"## MaskedBeamSorter (C = {result['sorter'][0]['C'] if result['sorter'] else '-'}, k = W), ms", "",
              "| R | valid | W | topk + reorder | PyTorch | Triton | Triton vs topk | exact (PyTorch, Triton) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["sorter"]:
        ms, ex = r["ms"], r["exact"]
        lines.append(f"| {r['R']} | {r['density']:g} | {r['W']} | {cell(ms.get('topk'))} | "
                     f"{cell(ms.get('torch'))} | {cell(ms.get('triton'))} | "
                     f"{cell(ratio(ms, 'topk', 'triton'), '.1f')}x | {ex.get('torch', '-')}, {ex.get('triton', '-')} |")
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        check = {True: "correct", False: "WRONG", None: "unchecked"}[t["correct"]]
        lines.append(f"- {t['kind']} at {t['config']}: Triton {cell(t['speedup'], '.1f')}x vs {t['baseline']} "
                     f"(needed {t['needed']}x), {check}: **{'met' if t['met'] else 'NOT met'}**")
    problems = [f"{kind} R={r['R']} {'P' if 'P' in r else 'valid'}={r.get('P', r.get('density'))} W={r['W']} "
                f"{name}: {status}" for kind in ("attention", "sorter") for r in result[kind]
                for name, status in r["status"].items() if status != "ok"]
    if problems:
        lines += ["", "## Not measured", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the Triton kernels are first imported
    elif not torch.cuda.is_available():
        sys.exit("bench_core needs a CUDA GPU (or --cpu-smoke)")
    import triton

    from xgr_toolkit.ops import MaskedBeamSorter, beam_sort_reference, staged_attention, staged_attention_reference

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    timer = Timer(device, args.reps)
    started = time.time()
    args.deadline = started + args.budget_s
    attention, sorter = [], []
    with torch.inference_mode():
        for R in args.requests:  # R = 1 first: the targets are measured before any time runs out
            attention += bench_attention(R, args, timer, device, staged_attention, staged_attention_reference)
            sorter += bench_sorter(R, args, timer, device, MaskedBeamSorter, beam_sort_reference)
    props = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    result = dict(
        gpu=props.name if props else "CPU (smoke run, Triton interpreted)",
        gpu_sms=props.multi_processor_count if props else None,
        gpu_memory_gib=round(props.total_memory / 2**30, 1) if props else None,
        torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
        command=" ".join(["python", *sys.argv]) if argv is None else " ".join(["python tools/bench_core.py", *argv]),
        timing=("CUDA graph replay, L2 flushed before each, median of " if device.type == "cuda" else
                "wall clock, median of ") + f"{args.reps}",
        seconds=round(time.time() - started, 1), attention=attention, sorter=sorter,
        targets=check_targets(args.targets, attention, sorter))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "core_microbench.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (args.out_dir / "core_microbench.md").write_text(table)
    print(table)
    print(f"wrote {args.out_dir / 'core_microbench.json'} and .md in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
