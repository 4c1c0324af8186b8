"""Recommend items for one history with a model directory; prints JSON."""

from __future__ import annotations

import argparse
import json

from ..engines import ENGINES, build_engine
from ..model_dir import load_model_dir
from ..request import build_request


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by spaces; got {text!r}") from None


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}")
    return int(text)


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir")
    history = p.add_mutually_exclusive_group(required=True)
    history.add_argument("--history-tokens", type=_ints, help='token ids, e.g. "70 135 200"')
    history.add_argument("--history-items", type=_ints, help='item ids, written as their SID tokens')
    p.add_argument("--beam-width", type=_positive, required=True)
    p.add_argument("--top-k", type=int, required=True)
    p.add_argument("--exclude-items", type=_ints, default=[])
    p.add_argument("--exclude-history", action="store_true", help="also exclude the history's items")
    p.add_argument("--normalize", choices=("vocab", "level"), default="vocab")
    p.add_argument("--engine", default="reference", help=f"one of {sorted(ENGINES)}")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")


def run(args: argparse.Namespace) -> int:
    if args.engine not in ENGINES:
        raise ValueError(f"--engine {args.engine}: not available; allowed {sorted(ENGINES)}")
    model = load_model_dir(args.model_dir, args.device, args.dtype)
    request = build_request(model.config.model, model.catalog, history_items=args.history_items,
                            history_tokens=args.history_tokens, beam_width=args.beam_width, top_k=args.top_k,
                            max_beam_width=args.beam_width, exclude_items=args.exclude_items,
                            exclude_history=args.exclude_history, normalize=args.normalize)
    [items] = build_engine(model, args.engine).recommend([request])
    print(json.dumps({"items": [item.to_json() for item in items]}))
    return 0
