"""What the ``xgr`` subcommands' options share: a help that shows every default, one-line errors, value
types that refuse a bad value before any work starts (naming the option as typed and what it allows),
and the beam options a one-shot command takes from the model's ``config.yaml``.

Counts mean one thing everywhere: a count is an integer >= 1, 0 and negative numbers are refused, and
an option left out means what its help says ("all users", "no limit", "the model's ..."). The few
options where 0 has a meaning of its own (``train --patience 0``: no early stop) say so in their help.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import NORMALIZATIONS, XGRConfig
from ..engines import ENGINES
from ..model_dir import check_model_files

__all__ = ["Alias", "Beam", "HelpFormatter", "Parser", "add_beam_options", "beam_of", "count", "device",
           "input_file", "ints", "model_dir", "number", "out_dir", "typed"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that appends ``(default: X)``, except where the help already says what the
    default is (an option left out: ``default: ...`` in its text) or there is none to say (a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is x for x in (None, False, argparse.SUPPRESS)) or "default" in text \
                or text == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose error is one line (``xgr recommend: error: ...``) and which shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Alias(argparse.Action):
    """An old spelling of an option, accepted and hidden; remembers that it was the one typed, for errors."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.typed = {**getattr(namespace, "typed", {}), self.dest: option_string}


def typed(args: argparse.Namespace, dest: str, option: str) -> str:
    """How the user spelled the option that sets ``dest``: ``option``, or the old spelling given."""
    return getattr(args, "typed", {}).get(dest, option)


# ---- value types: argparse prefixes their errors with "argument --OPTION: " -------------------------------
def count(low: int = 1, high: int | None = None):
    """An integer >= ``low`` (and <= ``high``)."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer {allowed}; got {text!r}")
        return value
    return parse


def number(allowed: str, ok):
    """A finite number for which ``ok(value)`` holds; ``allowed`` says which, e.g. ``"> 0"``, ``"in [0, 1)"``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected a number {allowed}; got {text!r}")
        return value
    return parse


def ints(text: str) -> list[int]:
    """Integers separated by spaces or commas."""
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by spaces; got {text!r}") from None


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, and there."""
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if text != "cpu" and not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; allowed cpu, cuda or cuda:N")
    if match:
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine's torch sees no CUDA GPU "
                                             f"(torch {torch.__version__}); use --device cpu")
        gpus = torch.cuda.device_count()
        if match[1] is not None and int(match[1]) >= gpus:
            raise argparse.ArgumentTypeError(f"{text!r}: there is no GPU {match[1]}; this machine has {gpus} "
                                             f"(cuda:0..cuda:{gpus - 1})")
    return text


def input_file(text: str) -> str:
    """An existing, readable file."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: a directory, not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable (permissions)")
    return text


def out_dir(text: str) -> str:
    """A directory to write: new, or an existing directory (never an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: an existing file, not a directory; give a new or existing "
                                         "directory")
    return text


def model_dir(text: str) -> str:
    """A model directory holding its three files."""
    try:
        check_model_files(text)
    except FileNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


# ---- the beam a one-shot command runs: options, else the model's config.yaml --------------------------------
def add_beam_options(p: argparse.ArgumentParser) -> None:
    """``--beam-width``, ``--k``, ``--normalize`` and ``--engine``, each defaulting to the model's config.yaml."""
    p.add_argument("--beam-width", type=count(), default=None,
                   help="beams W; the fast engine is built for it (default: the model's beam.beam_width)")
    p.add_argument("--k", type=count(), default=None, help="items returned, <= --beam-width "
                                                           "(default: the model's beam.top_k)")
    p.add_argument("--top-k", dest="k", type=count(), action=Alias)
    p.add_argument("--normalize", choices=NORMALIZATIONS, default=None,
                   help="vocab: log-softmax over the vocabulary; level: over the level's codes "
                        "(default: the model's beam.normalize, as the server)")
    p.add_argument("--engine", choices=sorted(ENGINES), default=None,
                   help="fast: the batched engine the server runs; reference: the slow definition, same answers "
                        "(default: the model's serve.engine, as the server)")


@dataclass(frozen=True)
class Beam:
    beam_width: int  # W
    k: int  # <= W
    normalize: str
    engine: str


def beam_of(args: argparse.Namespace, config: XGRConfig, min_k: int = 1) -> Beam:
    """The beam the options ask for, the model's ``config.yaml`` filling what they leave out. ``min_k``: the
    fewest items the command needs (eval's metrics). Errors name the option, or the config key it fell back to."""
    beam, serve = config.beam, config.serve
    width = args.beam_width or beam.beam_width
    k = args.k or min(beam.top_k, width)
    width_name = "--beam-width" if args.beam_width else "the model's beam.beam_width"
    k_name = typed(args, "k", "--k") if args.k else width_name if beam.top_k > width else "the model's beam.top_k"
    if k < min_k:
        raise ValueError(f"{k_name} = {k}: allowed >= {min_k} here (the top {min_k} items are scored); give "
                         f"--k and --beam-width of {min_k} or more")
    if k > width:
        raise ValueError(f"{k_name} = {k} is more than {width_name} = {width}: allowed 1..{width}; give a smaller "
                         f"--k or a larger --beam-width")
    return Beam(width, k, args.normalize or beam.normalize, args.engine or serve.engine)

