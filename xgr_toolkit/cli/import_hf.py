"""Convert a Hugging Face Llama/Qwen2/Qwen3 checkpoint and an item catalog CSV into a model directory."""

from __future__ import annotations

import argparse

from ..hf_import import import_hf
from .options import count, input_file, out_dir


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="Hugging Face checkpoint directory (config.json + *.safetensors)")
    p.add_argument("out", type=out_dir, help="model directory to write (docs/bring_your_model.md)")
    p.add_argument("--catalog", required=True, type=input_file,
                   help="CSV with header item_id,code_0,...,code_{L-1}, one item a row")
    p.add_argument("--sid-offset", type=count(0), required=True,
                   help="token id of code 0 at level 0: code c at level j is token sid-offset + j*codes + c")
    p.add_argument("--levels", type=count(), required=True, help="SID levels L")
    p.add_argument("--codes", type=count(), required=True, help="codes a level C")


def run(args: argparse.Namespace) -> int:
    out = import_hf(args.src, args.out, args.catalog, args.sid_offset, args.levels, args.codes)
    print(f"wrote {out}")
    return 0
