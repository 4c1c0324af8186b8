"""Load a served model on loopback (open or closed loop), check every answer, report throughput and P50/P99."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..serving import loadgen
from .options import count, input_file, model_dir, number

EXAMPLE = "http://127.0.0.1:8080/predictions/NAME"


def add_parser(p: argparse.ArgumentParser) -> None:
    d = loadgen.LoadOptions()
    p.add_argument("url", help=f"the model's predictions URL on a loopback address, e.g. {EXAMPLE}")
    cases = p.add_mutually_exclusive_group(required=True)
    cases.add_argument("--model-dir", type=model_dir,
                       help="generate --cases random requests over this model's catalog and compute their expected "
                            "answers with the library")
    cases.add_argument("--expect", metavar="FILE", type=input_file,
                       help='JSON lines {"request": {...}, "expected": [items]} ("expected" optional: then only the '
                            'status is checked)')
    cases.add_argument("--body", help="one JSON request body, sent over and over, answers not checked")
    p.add_argument("--cases", type=count(), default=64, help="with --model-dir: distinct requests")
    p.add_argument("--beam-width", type=count(), default=16,
                   help="with --model-dir: each request's beam_width, at most the archive's (its `xgr package "
                        "--beam-width`)")
    p.add_argument("--k", type=count(), default=5, help="with --model-dir: items a request asks for, <= --beam-width")
    p.add_argument("--write-expect", metavar="FILE", help="write the cases as JSON lines, for --expect later "
                                                          "(default: none)")
    p.add_argument("--mode", choices=("closed", "open"), default=d.mode,
                   help="closed: --concurrency requests in flight; open: Poisson arrivals at --rate")
    p.add_argument("--concurrency", type=count(1, loadgen.MAX_CONCURRENCY), default=d.concurrency,
                   help="requests in flight (closed), or most in flight (open)")
    p.add_argument("--rate", type=number("in (0, 1e6]", lambda x: 0 < x <= 1e6), default=None,
                   help="open loop: mean arrivals per second (required with --mode open; default: none)")
    p.add_argument("--requests", type=count(1, loadgen.MAX_REQUESTS), default=d.requests, help="send at most this many")
    p.add_argument("--seconds", type=number(f"in (0, {loadgen.MAX_SECONDS:g}]", lambda x: 0 < x <= loadgen.MAX_SECONDS),
                   default=d.seconds,
                   help="send for at most this long")
    p.add_argument("--timeout", type=number("in (0, 3600]", lambda x: 0 < x <= 3600), default=d.timeout,
                   help="seconds a request may take")
    p.add_argument("--score-tol", type=number(">= 0", lambda x: x >= 0), default=d.score_tol,
                   help="how far an answer's score may be from the expected one")
    p.add_argument("--seed", type=int, default=d.seed, help="of the generated cases and the open loop's arrivals")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token-file", type=input_file,
                      help="TorchServe's key_file.json: send its inference key (docs/serving.md) (default: none)")
    auth.add_argument("--token", help="send 'Authorization: Bearer TOKEN' (default: none)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON (default: none)")


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return args.token
    if not args.token_file:
        return None
    try:
        return json.loads(Path(args.token_file).read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--token-file {args.token_file}: no inference key ({err!r})") from None


def run(args: argparse.Namespace) -> int:
    loadgen.check_loopback(args.url)  # before anything else is done
    if args.mode == "open" and args.rate is None:
        raise ValueError("--mode open needs --rate (mean arrivals per second)")
    if args.model_dir and args.k > args.beam_width:
        raise ValueError(f"--k {args.k} is more than --beam-width {args.beam_width}: allowed 1..{args.beam_width}")
    token = _token(args)
    options = loadgen.LoadOptions(mode=args.mode, concurrency=args.concurrency, rate=args.rate,
                                  requests=args.requests, seconds=args.seconds, timeout=args.timeout,
                                  score_tol=args.score_tol, seed=args.seed,
                                  headers={"Authorization": f"Bearer {token}"} if token else {})
    if args.model_dir:
        cases = loadgen.make_cases(args.model_dir, args.cases, beam_width=args.beam_width, k=args.k, seed=args.seed)
    elif args.expect:
        cases = loadgen.read_cases(args.expect)
    else:
        try:
            body = json.loads(args.body)
        except ValueError as err:
            raise loadgen.LoadError(f"--body: not JSON ({err})") from None
        if not isinstance(body, dict):
            raise loadgen.LoadError("--body: must be a JSON object")
        cases = [loadgen.LoadCase(body)]
    if args.write_expect:
        loadgen.write_cases(args.write_expect, cases)
    report = loadgen.run_load(args.url, cases, options, progress=lambda p: print(
        f"  ... {p['elapsed_s']:.0f} s: {p['answered']} answered, {p['errors']} errors", file=sys.stderr, flush=True))
    print(report.text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.summary(), indent=2) + "\n")
    return 0 if report.passed else 1
