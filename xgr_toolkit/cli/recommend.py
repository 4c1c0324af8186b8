"""Recommend items for one history with a model directory; prints JSON as the server answers.

The options are the server's request fields (``history``, ``history_tokens``, ``k``, ``exclude``,
``exclude_history``, ``beam_width``, ``normalize``: docs/serving.md); what is left out comes from the
model's config.yaml, as the server takes it.
"""

from __future__ import annotations

import argparse
import json

from ..config import load_config
from ..engines import build_engine
from ..model_dir import CONFIG_FILE, load_model_dir
from ..request import RequestError, build_request
from .options import Alias, add_beam_options, beam_of, device, ints, model_dir, typed

# A request field -> the option that sets it, for errors.
OPTIONS = {"history": "--history", "history_tokens": "--history-tokens", "k": "--k", "beam_width": "--beam-width",
           "exclude": "--exclude", "normalize": "--normalize"}


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=model_dir, help="config.yaml + model.safetensors + catalog.safetensors")
    history = p.add_mutually_exclusive_group(required=True)
    history.add_argument("--history", type=ints, help='item ids, oldest first, e.g. "1000 1001"; written as their '
                                                      'SID tokens (the server\'s "history")')
    history.add_argument("--history-items", dest="history", type=ints, action=Alias)
    history.add_argument("--history-tokens", type=ints, help='token ids, e.g. "70 135 200" (the server\'s '
                                                             '"history_tokens")')
    add_beam_options(p)
    p.add_argument("--exclude", type=ints, default=[], help="item ids never to recommend (default: none)")
    p.add_argument("--exclude-items", dest="exclude", type=ints, action=Alias)
    p.add_argument("--exclude-history", action="store_true", help="also exclude the history's items")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the weights' precision")


def run(args: argparse.Namespace) -> int:
    beam = beam_of(args, load_config(f"{args.model_dir}/{CONFIG_FILE}"))
    model = load_model_dir(args.model_dir, args.device, args.dtype)
    try:
        request = build_request(model.config.model, model.catalog, history_items=args.history,
                                history_tokens=args.history_tokens, beam_width=beam.beam_width, top_k=beam.k,
                                max_beam_width=beam.beam_width, exclude_items=args.exclude,
                                exclude_history=args.exclude_history, normalize=beam.normalize)
    except RequestError as err:
        option = OPTIONS.get(err.field, err.field)
        raise ValueError(f"{typed(args, err.field, option)}: {err.message}") from None
    engine = build_engine(model, beam.engine, beam_width=beam.beam_width)  # sized to this request
    try:
        [items] = engine.recommend([request])
    finally:
        engine.close()
    answer = {"items": [item.to_json() for item in items]}
    if request.truncated:  # as the server's answer: history tokens dropped from the front
        answer["truncated"] = request.truncated
    print(json.dumps(answer))
    return 0
