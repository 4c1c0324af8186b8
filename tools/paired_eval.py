"""`xgr eval --json` files of the same users compared user by user with the first: each metric's difference and
its 95% interval (:func:`paired_difference`). Each file from `xgr eval ... --json FILE --ranks`.

    python tools/paired_eval.py build/beauty/trunc-sliding.json build/beauty/trunc-sliding-as-stable.json \\
        build/beauty/trunc-stable.json --plot build/beauty/trunc-paired.png

Prints, for every later file B and every split that A and B hold, A's and B's Recall/NDCG@5/10, B - A, its
interval and how many users' ranks changed; ``--json`` also writes them, ``--plot`` draws the differences
with their intervals. The files must hold the same data and users (the same ``--data`` and ``--limit-users``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgr_toolkit.evaluation import DEFAULT_KS, ranking_metrics  # noqa: E402  (after the path set-up)


def paired_difference(ranks_a: list[int], ranks_b: list[int], ks=DEFAULT_KS) -> dict:
    """B against A over the same users in the same order -> {"users", "users_changed", and per metric
    ("recall@K", "ndcg@K"): {"a", "b", "difference" (b - a), "ci95" [low, high]}}. A change that alters few
    users' answers (a truncation policy, a precision) moves a metric by less than the spread between training
    seeds; paired over users, the difference is the mean of each user's difference, its noise only that of
    the users whose answers changed, and the interval the normal one of that mean (1.96 sd / sqrt(users))."""
    if len(ranks_a) != len(ranks_b) or len(ranks_a) < 2:
        raise ValueError(f"need the same users in both evaluations, at least two; got {len(ranks_a)} and "
                         f"{len(ranks_b)} ranks")
    n = len(ranks_a)
    users_a, users_b = ([ranking_metrics([r], ks) for r in ranks] for ranks in (ranks_a, ranks_b))  # each user's
    out: dict = {"users": n, "users_changed": sum(a != b for a, b in zip(ranks_a, ranks_b))}
    for metric in users_a[0]:
        a, b = [u[metric] for u in users_a], [u[metric] for u in users_b]
        diffs = [y - x for x, y in zip(a, b)]
        mean, half = statistics.fmean(diffs), 1.96 * statistics.stdev(diffs) / math.sqrt(n)
        out[metric] = {"a": statistics.fmean(a), "b": statistics.fmean(b), "difference": mean,
                       "ci95": [mean - half, mean + half]}
    return out


def compare(a: dict, b: dict) -> dict[str, dict]:
    """split -> paired_difference of B's ranks against A's, for the splits both files hold."""
    if a["data"] != b["data"]:
        raise ValueError(f"the files evaluate different data: {a['data']} and {b['data']}")
    if any("ranks" not in r for r in a["results"] + b["results"]):
        raise ValueError("a file has no per-user ranks: evaluate again with `xgr eval ... --json FILE --ranks`")
    runs_b = {r["split"]: r for r in b["results"]}
    out = {r["split"]: paired_difference(r["ranks"], runs_b[r["split"]]["ranks"])
           for r in a["results"] if r["split"] in runs_b}
    if not out:
        raise ValueError("the files share no split")
    return out


def _metrics(split: dict) -> list[str]:
    """A split's compared metrics ("recall@5", ...), in paired_difference's order."""
    return [k for k in split if "@" in k]


def table(name_a: str, compared: dict[str, dict[str, dict]]) -> str:
    lines = [f"A = {name_a}", "", "| B | split | metric | A | B | B - A | 95% interval | users changed |",
             "|---|---|---|---|---|---|---|---|"]
    for name_b, splits in compared.items():
        for split, d in splits.items():
            for metric in _metrics(d):
                m = d[metric]
                lines.append(f"| {name_b} | {split} | {metric} | {m['a']:.4f} | {m['b']:.4f} | {m['difference']:+.5f} "
                             f"| [{m['ci95'][0]:+.5f}, {m['ci95'][1]:+.5f}] | {d['users_changed']} of {d['users']} |")
    return "\n".join(lines)


def plot(name_a: str, compared: dict[str, dict[str, dict]], path: Path) -> None:
    """One panel per split: each B's difference from A per metric, with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(s for d in compared.values() for s in d))
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.6), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits):
        for i, (name_b, d) in enumerate((n, d[split]) for n, d in compared.items() if split in d):
            metrics = _metrics(d)
            x = [j + 0.8 * (i + 0.5) / len(compared) - 0.4 for j in range(len(metrics))]
            diff = [d[m]["difference"] for m in metrics]
            err = [[v - d[m]["ci95"][0] for v, m in zip(diff, metrics)],
                   [d[m]["ci95"][1] - v for v, m in zip(diff, metrics)]]
            ax.errorbar(x, diff, yerr=err, fmt="o", capsize=3, label=Path(name_b).stem)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(metrics)), metrics)
        ax.set_title(f"{split}: B - A, 95% interval")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"difference from {Path(name_a).stem}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="the `xgr eval --json` file the others are compared against (A)")
    p.add_argument("b", type=Path, nargs="+", help="the other files (each a B)")
    p.add_argument("--json", type=Path, default=None, help="also write the comparisons here (default: none)")
    p.add_argument("--plot", type=Path, default=None, help="also draw them to this PNG (default: none)")
    args = p.parse_args(argv)
    try:
        a = json.loads(args.a.read_text())
        compared = {str(b): compare(a, json.loads(b.read_text())) for b in args.b}
    except (OSError, ValueError) as err:
        p.error(f"{type(err).__name__}: {err}")
    print(table(str(args.a), compared))
    if args.json:
        args.json.write_text(json.dumps({"a": str(args.a), "compared": compared}, indent=1))
    if args.plot:
        plot(str(args.a), compared, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
