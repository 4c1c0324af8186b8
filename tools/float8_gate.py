"""The float8 numerics gate on a trained model: Recall@10 and NDCG@10 of the fast engine with its linear
layers in float8 (serve.linear_precision: float8) against the same engine in bf16, same model, same
users, same run. The gate holds where each is within 1% (relative) of bf16's.

    python tools/float8_gate.py --device cuda --data ../shared/data/amazon-beauty            # trains first
    python tools/float8_gate.py --device cuda --data ../shared/data/amazon-beauty --model DIR

Without --model it trains docs/results.md's best row into --work first (LETTER's SIDs, `xgr train`'s recipe,
SwiGLU 1024): 3 minutes on an H100. Writes float8_gate.json to --out (default $OUT, else --work).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgr_toolkit.cli import main as xgr  # noqa: E402  (after the path set-up, to run from a checkout)
from xgr_toolkit.config import ServeConfig  # noqa: E402

GATED = ("recall@10", "ndcg@10")
TOLERANCE = 0.01  # relative
# the layers kept in bf16, try by try (fnmatch patterns of the engine's module names): none, then the default
# (serve.float8_skip: the vocabulary head), then the down and the attention output products too, whose inputs
# have the widest range
DEFAULT_KEPT = ServeConfig().float8_skip
KEEP_BF16 = ([], DEFAULT_KEPT, [*DEFAULT_KEPT, "*.down_proj"], [*DEFAULT_KEPT, "*.down_proj", "*.o_proj"])


def gate(bf16: dict[str, float], float8: dict[str, float], tolerance: float = TOLERANCE) -> dict:
    """Each gated metric's relative change from bf16 to float8, and whether all stay within ``tolerance``."""
    change = {m: (float8[m] - bf16[m]) / bf16[m] for m in GATED}
    return {"relative_change": change, "tolerance": tolerance,
            "holds": all(abs(c) <= tolerance for c in change.values())}


def gate_tries(bf16: dict[str, float], float8: Callable[[int, list[str]], dict[str, float]]) -> list[dict]:
    """Float8 (``float8(i, kept_in_bf16)``'s metrics) against ``bf16``, keeping more layers in bf16 each try
    (:data:`KEEP_BF16`): every layer in float8 and the default always, then more while the gate fails."""
    tries = []
    for i, keep in enumerate(KEEP_BF16):
        metrics = float8(i, keep)
        tries.append({"kept_in_bf16": keep, "metrics": metrics, **gate(bf16, metrics)})
        if keep and tries[-1]["holds"]:
            break
    return tries


def _run(argv: list[str]) -> float:
    print(f"$ xgr {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    if code := xgr(argv):
        raise SystemExit(f"xgr {argv[0]} failed with exit code {code}")
    return time.perf_counter() - start


def _figures(m: dict) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with sequences.txt and semantic_ids.letter.json")
    p.add_argument("--model", default=None, help="a trained model directory (default: train one into --work)")
    p.add_argument("--work", default="build/float8_gate", help="where the trained model goes (git-ignored)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="where float8_gate.json goes (default $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--split", default="test", choices=("test", "valid"))
    p.add_argument("--limit-users", default=None, help="evaluate the first N users only (a quick check)")
    args = p.parse_args()

    data, work = Path(args.data), Path(args.work)
    out = Path(args.out) if args.out else work
    seq = str(data / "sequences.txt")
    seconds = {}
    model = args.model or str(work / "model")
    if args.model is None:
        seconds["train"] = _run(["train", "--data", seq, "--sids", str(data / "semantic_ids.letter.json"),
                                 "--codes", "256", "--mlp", "1024", "--out", model, "--device", args.device,
                                 "--bf16"])
    limit = ["--limit-users", args.limit_users] if args.limit_users else []

    def evaluate(name: str, precision: list[str]) -> dict:
        path = work / f"eval_{name}.json"
        seconds[f"eval {name}"] = _run(["eval", model, "--data", seq, "--split", args.split, "--device", args.device,
                                        "--dtype", "bfloat16", *precision, *limit, "--json", str(path)])
        return json.loads(path.read_text())["results"][0]

    bf16 = evaluate("bf16", ["--linear-precision", "dtype"])
    tries = gate_tries(bf16, lambda i, keep: evaluate(f"float8_{i}", ["--linear-precision", "float8",
                                                                      "--float8-skip", *keep]))
    default = tries[1]  # KEEP_BF16[1]: what serving with float8 keeps in bf16 unless told otherwise
    result = {"model": model, "data": str(data), "split": args.split, "bf16": bf16, "tries": tries,
              "seconds": seconds, "holds": default["holds"], "relative_change": default["relative_change"],
              "holding_with_bf16": next((t["kept_in_bf16"] for t in tries if t["holds"]), None)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "float8_gate.json").write_text(json.dumps(result, indent=1))
    print(f"bf16 {_figures(bf16)}")
    for t in tries:
        print(f"float8, kept in bf16: {', '.join(t['kept_in_bf16']) or 'none'}: {_figures(t['metrics'])}; gate "
              f"({TOLERANCE:.0%} relative on {', '.join(GATED)}) {'holds' if t['holds'] else 'fails'}: "
              + ", ".join(f"{k} {v:+.2%}" for k, v in t["relative_change"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
