"""Package a model directory as a TorchServe archive: NAME.mar with handler, weights, catalog and settings."""

from __future__ import annotations

import argparse

from ..engines import ENGINES
from ..serving.packaging import PackageOptions, package_model
from .options import count, input_file, model_dir, out_dir


def add_parser(p: argparse.ArgumentParser) -> None:
    d = PackageOptions()
    p.add_argument("model_dir", type=model_dir,
                   help="config.yaml + model.safetensors + catalog.safetensors [+ item_names.json]")
    p.add_argument("--name", required=True, help="the model's name in TorchServe (and NAME.mar)")
    p.add_argument("--out", type=out_dir, default="model_store", help="where NAME.mar goes")
    p.add_argument("--beam-width", type=count(), default=d.max_beam_width,
                   help="widest beam a request may ask for, and the beam of one that names none; the archive's "
                        "engine is built for it")
    p.add_argument("--engine", choices=sorted(ENGINES), default=None,
                   help="the archive's engine (default: config.yaml's serve.engine)")
    p.add_argument("--batch-size", type=count(), default=None,
                   help="TorchServe batchSize: requests one engine call serves (default: serve.max_batch)")
    p.add_argument("--max-batch-delay", type=count(0), default=None,
                   help="TorchServe maxBatchDelay in ms: how long a request waits for others "
                        "(default: serve.max_wait_ms)")
    p.add_argument("--workers", type=count(), default=d.min_workers, help="minWorkers = maxWorkers, per model")
    p.add_argument("--response-timeout", type=count(), default=d.response_timeout_s,
                   help="seconds a batch may take before TorchServe kills the worker")
    p.add_argument("--startup-timeout", type=count(), default=d.startup_timeout_s,
                   help="seconds a worker may take to load, compile and warm up")
    p.add_argument("--device-type", choices=("cpu", "gpu"), default=None,
                   help="pin the device type (default: TorchServe's choice, a GPU where there is one)")
    p.add_argument("--compile-cache", default=None, metavar="ARTIFACT",
                   help="the directory `xgr export` wrote (same --engine and --beam-width), shipped so that workers "
                        "start without compiling (the archive then compiles, whatever serve.compile says); a plain "
                        "TORCHINDUCTOR_CACHE_DIR is taken too (default: none)")
    p.add_argument("--handler", type=input_file, default=None, help="handler file (default: handlers/xgr_handler.py)")


def run(args: argparse.Namespace) -> int:
    options = PackageOptions(max_beam_width=args.beam_width, engine=args.engine, batch_size=args.batch_size,
                             max_batch_delay_ms=args.max_batch_delay, min_workers=args.workers,
                             max_workers=args.workers, response_timeout_s=args.response_timeout,
                             startup_timeout_s=args.startup_timeout, device_type=args.device_type)
    mar = package_model(args.model_dir, args.name, args.out, options, compile_cache=args.compile_cache,
                        handler=args.handler)
    print(mar)
    return 0
