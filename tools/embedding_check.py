"""Item embeddings checked in minutes, before SIDs or a model: next-item recall of the nearest items.

    python tools/embedding_check.py --data ../shared/data/amazon-beauty --embeddings sasrec --epochs 12 \\
        --negatives 256 --device cpu

Trains the collaborative embeddings of `xgr sid build --embeddings sasrec` (or computes the PPMI-SVD ones of
`cooc`) on the training parts, then prints the Recall/NDCG@5/10 of "the items nearest the history's last
item" (xgr_toolkit.evaluation.evaluate_item_neighbours) beside the popularity floor, on the validation
targets (selection never looks at test).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgr_toolkit.data import (  # noqa: E402  (after the path set-up, to run from a checkout)
    SasRecConfig,
    cold_fallback,
    cold_mask,
    collaborative_embeddings,
    leave_one_out,
    load_interactions,
    sasrec_embeddings,
    save_item_embeddings,
)
from xgr_toolkit.evaluation import evaluate_item_neighbours, evaluate_popularity  # noqa: E402


def main() -> int:
    d = SasRecConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder with sequences.txt, or the file itself")
    p.add_argument("--embeddings", choices=("sasrec", "cooc"), default="sasrec")
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--negatives", type=int, default=d.negatives, help="0: full softmax")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save", default=None, metavar="PATH", help="also write the embeddings as an embeddings file "
                   "(xgr sid build --embeddings text --embeddings-file PATH makes SIDs of them)")
    args = p.parse_args()

    path = Path(args.data)
    data = load_interactions(path / "sequences.txt" if path.is_dir() else path)
    split, items = leave_one_out(data), data.item_ids
    start = time.perf_counter()
    if args.embeddings == "sasrec":
        cfg = replace(d, dim=args.dim, epochs=args.epochs, negatives=args.negatives, lr=args.lr, dropout=args.dropout,
                      seed=args.seed, device=args.device)
        emb, losses = sasrec_embeddings(split.train, items, cfg)
        emb = cold_fallback(emb, cold_mask(split.train, items), seed=args.seed)
        print(f"sasrec {cfg}\ntraining loss an epoch: {', '.join(f'{x:.3f}' for x in losses)}")
    else:
        emb = collaborative_embeddings(split.train, items, args.dim, seed=args.seed)
    print(f"{args.embeddings} embeddings of {len(items)} items: {time.perf_counter() - start:.1f} s")
    if args.save:
        save_item_embeddings(args.save, items, emb, metadata={"source": f"tools/embedding_check.py {args.embeddings}"})
        print(f"wrote {args.save}")
    print(f"item neighbours  {evaluate_item_neighbours(emb, items, split, 'valid').line()}")
    print(f"popularity       {evaluate_popularity(split, 'valid').line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
