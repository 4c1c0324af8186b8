"""Load a served model on loopback (open or closed loop), check every answer, report throughput and P50/P99."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..serving import loadgen

EXAMPLE = "http://127.0.0.1:8080/predictions/NAME"


def add_parser(p: argparse.ArgumentParser) -> None:
    d = loadgen.LoadOptions()
    p.add_argument("url", help=f"the model's predictions URL on a loopback address, e.g. {EXAMPLE}")
    cases = p.add_mutually_exclusive_group(required=True)
    cases.add_argument("--model-dir", help="generate --cases random requests over this model's catalog and "
                                           "compute their expected answers with the library")
    cases.add_argument("--expect", metavar="FILE", help='JSON lines {"request": {...}, "expected": [items]} '
                                                        '("expected" optional: then only the status is checked)')
    cases.add_argument("--body", help="one JSON request body, sent over and over, answers not checked")
    p.add_argument("--cases", type=int, default=64, help="with --model-dir: distinct requests (default 64)")
    p.add_argument("--beam-width", type=int, default=16, help="with --model-dir: each request's beam_width, at "
                                                              "most the archive's (default 16)")
    p.add_argument("--k", type=int, default=5, help="with --model-dir: items a request asks for (default 5)")
    p.add_argument("--write-expect", metavar="FILE", help="write the cases as JSON lines, for --expect later")
    p.add_argument("--mode", choices=("closed", "open"), default=d.mode,
                   help="closed: --concurrency requests in flight; open: Poisson arrivals at --rate")
    p.add_argument("--concurrency", type=int, default=d.concurrency,
                   help=f"requests in flight (closed), or most in flight (open) (default {d.concurrency})")
    p.add_argument("--rate", type=float, default=None, help="open loop: mean arrivals per second")
    p.add_argument("--requests", type=int, default=d.requests, help=f"send at most this many (default {d.requests})")
    p.add_argument("--seconds", type=float, default=d.seconds, help=f"send for at most this long (default "
                                                                     f"{d.seconds:g})")
    p.add_argument("--timeout", type=float, default=d.timeout, help=f"seconds a request may take (default "
                                                                     f"{d.timeout:g})")
    p.add_argument("--score-tol", type=float, default=d.score_tol, help=f"score tolerance (default {d.score_tol:g})")
    p.add_argument("--seed", type=int, default=d.seed)
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token-file", help="TorchServe's key_file.json: send its inference key")
    auth.add_argument("--token", help="send 'Authorization: Bearer TOKEN'")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")


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
