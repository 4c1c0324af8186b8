"""Leave-one-out Recall@5/10 and NDCG@5/10 of a model directory (or the popularity floor)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data import leave_one_out, load_interactions
from ..engines import ENGINES
from ..evaluation import evaluate_model, evaluate_popularity
from ..model_dir import load_model_dir


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", nargs="?", help="a model directory (omit with --popularity)")
    p.add_argument("--popularity", action="store_true", help="evaluate the popularity floor instead of a model")
    p.add_argument("--data", required=True, help="sequences.txt (user item item ...) or a RecBole .inter file")
    p.add_argument("--split", choices=("test", "valid", "both"), default="test")
    p.add_argument("--engine", default="fast", help=f"engine name (registered: {sorted(ENGINES)})")
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--max-history", type=int, default=None, help="default: what the model's prompt holds")
    p.add_argument("--exclude-history", action="store_true", help="never recommend a history item (off: as TIGER)")
    p.add_argument("--limit-users", type=int, default=None, help="evaluate the first N users only")
    p.add_argument("--normalize", choices=("vocab", "level"), default="vocab")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    if args.popularity == (args.model_dir is not None):
        raise ValueError("give exactly one of MODEL_DIR and --popularity")
    if args.engine not in ENGINES:
        raise ValueError(f"--engine {args.engine}: not available; allowed {sorted(ENGINES)}")
    split = leave_one_out(load_interactions(args.data))
    splits = ("valid", "test") if args.split == "both" else (args.split,)
    if args.popularity:
        results = [evaluate_popularity(split, which, args.limit_users) for which in splits]
    else:
        model = load_model_dir(args.model_dir, args.device, args.dtype)
        cfg = model.config.model
        max_history = args.max_history or cfg.max_prompt_tokens // cfg.levels
        results = [evaluate_model(model, split, which, args.engine, args.beam_width, args.top_k, max_history,
                                  args.exclude_history, args.limit_users, normalize=args.normalize)
                   for which in splits]
    for result in results:
        print(result.line())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        source = "popularity" if args.popularity else str(args.model_dir)
        Path(args.json).write_text(json.dumps({"model": source, "data": str(args.data), "device": args.device,
                                               "results": [r.to_json() for r in results]}, indent=1))
    return 0
