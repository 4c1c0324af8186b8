"""Two `xgr eval --json` files of the same users compared user by user: each metric's difference and its
95% interval (xgr_toolkit.evaluation.paired_difference).

    python tools/paired_eval.py build/beauty/trunc-sliding.json build/beauty/trunc-sliding-as-stable.json

Prints, for every split in both files, A's and B's Recall/NDCG@5/10, B - A, its interval and how many
users' ranks changed; ``--json`` also writes them. The files must hold the same data and users (the same
``--data`` and ``--limit-users``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgr_toolkit.evaluation import paired_difference  # noqa: E402  (after the path set-up, to run from a checkout)


def compare(a: dict, b: dict) -> dict[str, dict]:
    """split -> paired_difference of B's ranks against A's, for the splits both files hold."""
    if a["data"] != b["data"]:
        raise ValueError(f"the files evaluate different data: {a['data']} and {b['data']}")
    if any("ranks" not in r for r in a["results"] + b["results"]):
        raise ValueError("a file has no per-user ranks (written by an older `xgr eval`): evaluate again")
    runs_b = {r["split"]: r for r in b["results"]}
    out = {r["split"]: paired_difference(r["ranks"], runs_b[r["split"]]["ranks"])
           for r in a["results"] if r["split"] in runs_b}
    if not out:
        raise ValueError("the files share no split")
    return out


def table(name_a: str, name_b: str, compared: dict[str, dict]) -> str:
    lines = [f"A = {name_a}, B = {name_b}", "", "| split | metric | A | B | B - A | 95% interval | users changed |",
             "|---|---|---|---|---|---|---|"]
    for split, d in compared.items():
        for metric in (k for k in d if "@" in k):
            m = d[metric]
            lines.append(f"| {split} | {metric} | {m['a']:.4f} | {m['b']:.4f} | {m['difference']:+.5f} "
                         f"| [{m['ci95'][0]:+.5f}, {m['ci95'][1]:+.5f}] | {d['users_changed']} of {d['users']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="the `xgr eval --json` file compared against (A)")
    p.add_argument("b", type=Path, help="the other file (B)")
    p.add_argument("--json", type=Path, default=None, help="also write the comparison here (default: none)")
    args = p.parse_args(argv)
    try:
        compared = compare(*(json.loads(path.read_text()) for path in (args.a, args.b)))
    except (OSError, ValueError) as err:
        p.error(f"{type(err).__name__}: {err}")
    print(table(str(args.a), str(args.b), compared))
    if args.json:
        args.json.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "splits": compared}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
