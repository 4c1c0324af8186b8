"""Train a GR decoder on next-SID prediction (leave-one-out training parts); writes a model directory."""

from __future__ import annotations

import argparse

from ..data import DEFAULT_MAX_HISTORY, leave_one_out, load_interactions, load_sids
from ..training import DEFAULT_DROPOUT, DEFAULT_SIZE, RECIPE, SIZES, TrainConfig, gr_model_config, train_model_dir


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="sequences.txt (user item item ...) or a RecBole .inter file")
    p.add_argument("--sids", required=True, help="SID file: .json (keys item_id-1, '<a_12>' tokens) or .csv")
    p.add_argument("--codes", type=int, default=None, help="codes a level C (default: largest code + 1)")
    p.add_argument("--out", required=True, help="model directory to write (e.g. build/models/beauty-letter)")
    p.add_argument("--limit-users", type=int, default=None, help="train on the first N users only (a slice)")
    p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY, help="most recent items a prompt holds")
    model = p.add_argument_group("model shape (each option overrides --size's value)")
    model.add_argument("--size", choices=sorted(SIZES), default=DEFAULT_SIZE,
                       help=", ".join(f"{k}: {v.layers} layers, hidden {v.hidden}, {v.heads} heads ({v.kv_heads} kv), "
                                      f"mlp {v.mlp}" for k, v in SIZES.items()))
    model.add_argument("--layers", type=int, default=None)
    model.add_argument("--hidden", type=int, default=None)
    model.add_argument("--heads", type=int, default=None)
    model.add_argument("--kv-heads", type=int, default=None)
    model.add_argument("--mlp", type=int, default=None, help="SwiGLU intermediate size")
    model.add_argument("--dropout", type=float, default=DEFAULT_DROPOUT,
                       help="on embeddings and residual branches (training)")
    opt = p.add_argument_group("optimisation (defaults: the recipe of docs/training.md)")
    d = RECIPE
    opt.add_argument("--epochs", type=float, default=d.epochs)
    opt.add_argument("--batch-size", type=int, default=d.batch_size)
    opt.add_argument("--lr", type=float, default=d.lr)
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay)
    opt.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    opt.add_argument("--max-steps", type=int, default=0, help="> 0: stop after this many steps")
    opt.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                     help="of the training loss, in [0, 1) (validation losses stay plain cross-entropy)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    opt.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    opt.add_argument("--patience", type=int, default=d.patience,
                     help="stop after this many epochs without a lower validation loss (0: run every epoch)")
    opt.add_argument("--keep-last", action="store_true",
                     help="end with the last weights, not those of the lowest validation loss")


def run(args: argparse.Namespace) -> int:
    split = leave_one_out(load_interactions(args.data))
    if args.limit_users:
        split = split.slice(args.limit_users)
    catalog = load_sids(args.sids, args.codes)
    size = SIZES[args.size]
    for key in ("layers", "hidden", "heads", "kv_heads", "mlp"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(size, key))
    model_cfg = gr_model_config(catalog, args.layers, args.hidden, args.heads, args.kv_heads, args.mlp,
                                args.max_history, dropout=args.dropout)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                            label_smoothing=args.label_smoothing, seed=args.seed,
                            device=args.device, bf16=args.bf16, max_steps=args.max_steps,
                            keep_best=not args.keep_last, patience=args.patience)
    print(f"data: {len(split)} users; SIDs: {len(catalog)} items, {catalog.levels} levels x {catalog.num_codes} codes; "
          f"model: {args.layers} layers, hidden {args.hidden}, vocabulary {model_cfg.vocab_size}")
    path, result = train_model_dir(args.out, split, catalog, model_cfg, train_cfg, args.max_history,
                                   extra={"data": str(args.data), "sids": str(args.sids), "size": args.size})
    losses = ", ".join(f"{x:.3f}" for x in result.epoch_losses)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; epoch losses {losses}")
    if result.best_epoch:
        print(f"kept the weights of epoch {result.best_epoch} (validation loss "
              f"{result.valid_losses[result.best_epoch - 1]:.4f})")
    print(f"wrote {path}")
    return 0
