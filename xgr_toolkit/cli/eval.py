"""Leave-one-out Recall@5/10 and NDCG@5/10 of a model directory (or the popularity floor)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..config import LINEAR_PRECISIONS, load_config
from ..data import check_items_have_sids, leave_one_out, load_interactions
from ..evaluation import evaluate_model, evaluate_popularity
from ..evaluation.metrics import DEFAULT_KS
from ..model_dir import CONFIG_FILE, GRModel, load_model_dir
from ..truncation import TRUNCATIONS
from .options import add_beam_options, beam_of, count, device, input_file, model_dir


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", nargs="?", type=model_dir, help="a model directory (omit with --popularity)")
    p.add_argument("--popularity", action="store_true", help="evaluate the popularity floor instead of a model")
    p.add_argument("--data", required=True, type=input_file,
                   help="sequences.txt (user item item ...) or a RecBole .inter file: the data the model was "
                        "trained on")
    p.add_argument("--split", choices=("test", "valid", "both"), default="test", help="which held-out items")
    add_beam_options(p)
    p.add_argument("--max-history", type=count(), default=None,
                   help="most recent items a prompt holds (default: what the model's prompt holds)")
    p.add_argument("--truncation", choices=TRUNCATIONS, default=None,
                   help="how a longer history is cut: sliding (its last items) or stable (a quarter of the limit "
                        "at once, docs/serving.md) (default: the model's model.truncation)")
    p.add_argument("--exclude-history", action="store_true", help="never recommend a history item (off: as TIGER)")
    p.add_argument("--limit-users", type=count(), default=None, help="evaluate the first N users only "
                                                                      "(default: all users)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the weights' precision")
    p.add_argument("--linear-precision", choices=LINEAR_PRECISIONS, default=None,
                   help="the fast engine's linear layers: dtype (--dtype's) or float8 (e4m3, docs/serving.md; needs "
                        "--device cuda on compute capability >= 8.9 and --dtype bfloat16) (default: the model's "
                        "serve.linear_precision)")
    p.add_argument("--float8-skip", nargs="*", default=None, metavar="PATTERN",
                   help="with --linear-precision float8: the linear layers kept in --dtype, fnmatch patterns of the "
                        "engine's module names, e.g. lm_head '*.down_proj'; none given: every layer in float8 "
                        "(default: the model's serve.float8_skip)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file (default: none)")
    p.add_argument("--ranks", action="store_true",
                   help="with --json: also each user's rank (0-based, -1: not in the list), which "
                        "tools/paired_eval.py compares user by user")


def _with_linear_precision(model: GRModel, precision: str | None, device: str, dtype: str,
                           float8_skip: list[str] | None) -> GRModel:
    """``model`` served with ``precision`` on ``device`` in ``dtype``, keeping ``float8_skip`` in ``dtype`` under
    float8 (None: as it is)."""
    if float8_skip is not None and precision != "float8":
        raise ValueError("--float8-skip needs --linear-precision float8 (it names the layers float8 leaves out)")
    if precision is None:
        return model
    if precision == "float8" and not (device.startswith("cuda") and dtype == "bfloat16"):
        raise ValueError(f"--linear-precision float8 needs --device cuda and --dtype bfloat16 (a GPU of compute "
                         f"capability >= 8.9), not --device {device} --dtype {dtype}")
    skip = model.config.serve.float8_skip if float8_skip is None else float8_skip
    serve = dataclasses.replace(model.config.serve, device=device, dtype=dtype, linear_precision=precision,
                                float8_skip=skip,
                                cuda_graphs=model.config.serve.cuda_graphs and device.startswith("cuda"))
    return dataclasses.replace(model, config=dataclasses.replace(model.config, serve=serve))


def run(args: argparse.Namespace) -> int:
    if args.popularity == (args.model_dir is not None):
        raise ValueError("give exactly one of MODEL_DIR and --popularity")
    splits = ("valid", "test") if args.split == "both" else (args.split,)
    if args.popularity:
        split = leave_one_out(load_interactions(args.data))
        results = [evaluate_popularity(split, which, args.limit_users) for which in splits]
    else:
        beam = beam_of(args, load_config(Path(args.model_dir) / CONFIG_FILE), min_k=max(DEFAULT_KS))
        data = load_interactions(args.data)
        model = _with_linear_precision(load_model_dir(args.model_dir, args.device, args.dtype),
                                       args.linear_precision, args.device, args.dtype, args.float8_skip)
        check_items_have_sids(data, args.data, model.catalog, f"{args.model_dir}'s catalog")
        split = leave_one_out(data)
        cfg = model.config.model
        max_history = args.max_history or cfg.max_prompt_tokens // cfg.levels
        results = [evaluate_model(model, split, which, beam.engine, beam.beam_width, beam.k, max_history,
                                  args.exclude_history, args.limit_users, normalize=beam.normalize,
                                  truncation=args.truncation)
                   for which in splits]
    for result in results:
        print(result.line())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        source = "popularity" if args.popularity else str(args.model_dir)
        Path(args.json).write_text(json.dumps({"model": source, "data": str(args.data), "device": args.device,
                                               "results": [{**r.to_json(), **({"ranks": r.ranks} if args.ranks
                                                                                 else {})} for r in results]},
                                              indent=1))
    return 0
