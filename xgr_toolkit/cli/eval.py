"""Leave-one-out Recall@5/10 and NDCG@5/10 of a model directory (or the popularity floor)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..catalog import ItemCatalog
from ..config import load_config
from ..data import DataError, SequenceData, leave_one_out, load_interactions
from ..evaluation import evaluate_model, evaluate_popularity
from ..evaluation.metrics import DEFAULT_KS
from ..model_dir import CONFIG_FILE, load_model_dir
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
    p.add_argument("--exclude-history", action="store_true", help="never recommend a history item (off: as TIGER)")
    p.add_argument("--limit-users", type=count(), default=None, help="evaluate the first N users only "
                                                                      "(default: all users)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the weights' precision")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file (default: none)")


def _line_of(path: Path, *tokens: str) -> int | None:
    """The first line of ``path`` whose fields hold every one of ``tokens``."""
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if all(t in fields for t in tokens):
                return number
    return None


def check_catalog(data: SequenceData, path: str, catalog: ItemCatalog, model: str) -> None:
    """Every item of ``data`` must be one of the model's: name the first that is not, its line, and the likely cause."""
    known = set(catalog.item_ids.tolist())
    unknown = {i for items in data.sequences.values() for i in items} - known
    if not unknown:
        return
    tokens = {v: k for k, v in data.item_index.items()}
    users = {v: k for k, v in data.user_index.items()}
    user, item = next((u, i) for u, items in data.sequences.items() for i in items if i in unknown)
    user_token, item_token = users.get(user, str(user)), tokens.get(item, str(item))
    line = _line_of(Path(path), user_token, item_token)
    raise DataError(f"{path}:{line or '?'}: user {user_token} has item {item_token}, which {model}'s catalog does not "
                    f"hold ({len(unknown)} of the data's {len(data.item_ids)} items are not in it): the data is not "
                    f"the set the model was trained on, or the model's SIDs were built for another one")


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
        model = load_model_dir(args.model_dir, args.device, args.dtype)
        check_catalog(data, args.data, model.catalog, args.model_dir)
        split = leave_one_out(data)
        cfg = model.config.model
        max_history = args.max_history or cfg.max_prompt_tokens // cfg.levels
        results = [evaluate_model(model, split, which, beam.engine, beam.beam_width, beam.k, max_history,
                                  args.exclude_history, args.limit_users, normalize=beam.normalize)
                   for which in splits]
    for result in results:
        print(result.line())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        source = "popularity" if args.popularity else str(args.model_dir)
        Path(args.json).write_text(json.dumps({"model": source, "data": str(args.data), "device": args.device,
                                               "results": [r.to_json() for r in results]}, indent=1))
    return 0
