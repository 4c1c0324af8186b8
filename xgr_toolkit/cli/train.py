"""Train a GR decoder on next-SID prediction (leave-one-out training parts); writes a model directory."""

from __future__ import annotations

import argparse

from ..data import DEFAULT_MAX_HISTORY, check_items_have_sids, leave_one_out, load_interactions, load_sids
from ..training import (
    DEFAULT_DROPOUT,
    DEFAULT_SIZE,
    MLP_RATIO,
    RECIPE,
    SIZES,
    TrainConfig,
    gr_model_config,
    train_model_dir,
)
from ..truncation import TRUNCATIONS
from .options import count, device, input_file, number, out_dir


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=input_file,
                   help="sequences.txt (user item item ...) or a RecBole .inter file")
    p.add_argument("--sids", required=True, type=input_file,
                   help="SID file: .json (keys item_id-1, '<a_12>' tokens) or .csv")
    p.add_argument("--codes", type=count(), default=None, help="codes a level C (default: largest code + 1)")
    p.add_argument("--out", required=True, type=out_dir,
                   help="model directory to write (e.g. build/models/beauty-letter)")
    p.add_argument("--limit-users", type=count(), default=None,
                   help="train on the first N users only, a slice (default: all users)")
    p.add_argument("--max-history", type=count(), default=DEFAULT_MAX_HISTORY, help="most recent items a prompt holds")
    p.add_argument("--truncation", choices=TRUNCATIONS, default="sliding",
                   help="how a longer history is cut, in training samples and then in evaluation and serving "
                        "(model.truncation): sliding (its last items) or stable (a quarter of --max-history at "
                        "once, so a returning user's prompt keeps its start)")
    model = p.add_argument_group("model shape (each option overrides --size's value)")
    model.add_argument("--size", choices=sorted(SIZES), default=DEFAULT_SIZE,
                       help="; ".join(f"{k}: {v.layers} layers, hidden {v.hidden}, {v.heads} heads ({v.kv_heads} kv)"
                                      for k, v in SIZES.items()))
    model.add_argument("--layers", type=count(), default=None, help="decoder layers (default: --size's)")
    model.add_argument("--hidden", type=count(), default=None,
                       help="hidden size, a multiple of --heads (default: --size's)")
    model.add_argument("--heads", type=count(), default=None, help="attention heads; --hidden / --heads is the head "
                                                                   "dimension, even (rotary pairs) (default: --size's)")
    model.add_argument("--kv-heads", type=count(), default=None,
                       help="key/value heads, a divisor of --heads (default: --size's)")
    model.add_argument("--mlp", type=count(), default=None,
                       help=f"SwiGLU intermediate size (default: {MLP_RATIO} x --hidden, Qwen3's ratio)")
    model.add_argument("--dropout", type=number("in [0, 1)", lambda x: 0 <= x < 1), default=DEFAULT_DROPOUT,
                       help="on embeddings and residual branches (training)")
    opt = p.add_argument_group("optimisation (defaults: the recipe of docs/training.md)")
    d = RECIPE
    opt.add_argument("--epochs", type=number("> 0", lambda x: x > 0), default=d.epochs,
                     help="passes over the training samples (a fraction allowed)")
    opt.add_argument("--batch-size", type=count(), default=d.batch_size, help="samples a step")
    opt.add_argument("--lr", type=number("> 0", lambda x: x > 0), default=d.lr, help="peak AdamW learning rate")
    opt.add_argument("--weight-decay", type=number(">= 0", lambda x: x >= 0), default=d.weight_decay,
                     help="AdamW weight decay")
    opt.add_argument("--warmup-steps", type=count(0), default=d.warmup_steps,
                     help="linear warm-up steps before the cosine decay")
    opt.add_argument("--max-steps", type=count(), default=None,
                     help="stop after this many steps whatever --epochs says (default: no limit)")
    opt.add_argument("--label-smoothing", type=number("in [0, 1)", lambda x: 0 <= x < 1), default=d.label_smoothing,
                     help="of the training loss (validation losses stay plain cross-entropy)")
    opt.add_argument("--seed", type=int, default=0, help="initial weights and sample order")
    opt.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    opt.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    opt.add_argument("--patience", type=count(0), default=d.patience,
                     help="stop after this many epochs without a lower validation loss (0: no early stop)")
    opt.add_argument("--keep-last", action="store_true",
                     help="end with the last weights, not those of the lowest validation loss")


def _check_shape(args: argparse.Namespace) -> None:
    if args.hidden % args.heads:
        raise ValueError(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")
    if (args.hidden // args.heads) % 2:
        raise ValueError(f"--hidden {args.hidden} / --heads {args.heads} = {args.hidden // args.heads}: the head "
                         "dimension must be even (rotary pairs)")
    if args.heads % args.kv_heads:
        raise ValueError(f"--kv-heads {args.kv_heads} does not divide --heads {args.heads}")


def _shape_from_size(args: argparse.Namespace) -> None:
    """The shape options left out take --size's values (the MLP follows --hidden: gr_model_config)."""
    size = SIZES[args.size]
    for key in ("layers", "hidden", "heads", "kv_heads"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(size, key))


def run(args: argparse.Namespace) -> int:
    _shape_from_size(args)
    _check_shape(args)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                            label_smoothing=args.label_smoothing, seed=args.seed,
                            device=args.device, bf16=args.bf16, max_steps=args.max_steps or 0,
                            keep_best=not args.keep_last, patience=args.patience)
    catalog = load_sids(args.sids, args.codes)
    data = load_interactions(args.data)
    check_items_have_sids(data, args.data, catalog, f"the SID file {args.sids}")
    split = leave_one_out(data)
    if args.limit_users:
        split = split.slice(args.limit_users)
    model_cfg = gr_model_config(catalog, args.layers, args.hidden, args.heads, args.kv_heads, args.mlp,
                                args.max_history, name=f"gr-{args.size}", dropout=args.dropout,
                                truncation=args.truncation)
    print(f"data: {len(split)} users; SIDs: {len(catalog)} items, {catalog.levels} levels x {catalog.num_codes} codes; "
          f"model: {args.layers} layers, hidden {args.hidden}, MLP {model_cfg.intermediate_size}, "
          f"vocabulary {model_cfg.vocab_size}")
    path, result = train_model_dir(args.out, split, catalog, model_cfg, train_cfg, args.max_history,
                                   extra={"data": str(args.data), "sids": str(args.sids), "size": args.size})
    losses = ", ".join(f"{x:.3f}" for x in result.epoch_losses)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; epoch losses {losses}")
    if result.best_epoch:
        print(f"kept the weights of epoch {result.best_epoch} (validation loss "
              f"{result.valid_losses[result.best_epoch - 1]:.4f})")
    print(f"wrote {path}")
    return 0
