"""Compile a model directory's engine once and save the compile cache, for `xgr package --compile-cache`."""

from __future__ import annotations

import argparse
import json

from ..compile_cache import DEFAULT_METHOD, METHODS, export_compile_cache
from ..serving.packaging import PackageOptions
from .options import count, device, model_dir, out_dir


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=model_dir,
                   help="config.yaml + model.safetensors + catalog.safetensors, as import-hf or train wrote it "
                        "(compiled whatever serve.compile says: compiling is what export is for)")
    p.add_argument("--out", required=True, type=out_dir, help="the artifact directory to write (replaced if it is one)")
    p.add_argument("--device", type=device, default=None,
                   help="cpu, cuda or cuda:N: where the workers run (default: cuda where there is a GPU, else cpu)")
    p.add_argument("--engine", choices=("fast",), default="fast", help="the archive's engine (only 'fast' compiles)")
    p.add_argument("--beam-width", type=count(), default=PackageOptions().max_beam_width,
                   help="the archive's `xgr package --beam-width`: the engine is compiled for it (as xgr package)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help=f"what to save (default per device type: {DEFAULT_METHOD}; docs/cold_start.md)")
    p.add_argument("--threads", type=count(), default=None,
                   help="CPU threads while compiling: the workers' count (the handler gives each cores / workers, "
                        "or OMP_NUM_THREADS); inductor's C++ kernels are keyed by it (default: torch's)")


def run(args: argparse.Namespace) -> int:
    manifest = export_compile_cache(args.model_dir, args.out, device=args.device, engine=args.engine,
                                    beam_width=args.beam_width, method=args.method, threads=args.threads)
    summary = {k: manifest[k] for k in ("method", "device", "max_beam_width", "graphs_compiled", "warmup_s", "bytes")}
    print(json.dumps({"artifact": str(args.out), **summary}))
    print(f"next: xgr package {args.model_dir} --name NAME --engine {args.engine} --beam-width {args.beam_width} "
          f"--compile-cache {args.out}")
    return 0
