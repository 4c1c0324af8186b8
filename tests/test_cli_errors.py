"""Every ``xgr`` subcommand on bad input: exit status 2, one line that names the option as typed (and what it
allows, or the likely cause), no traceback. In-process through ``main(argv)``; a few end to end in a subprocess.
Also: every option has a help text and every ``--help`` shows every default."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xgr_toolkit import ModelConfig, load_model_dir
from xgr_toolkit.cli import build_parser, main
from xgr_toolkit.cli.options import HelpFormatter
from xgr_toolkit.data import DataError, save_sids
from xgr_toolkit.synthetic import random_model_dir

URL = "http://127.0.0.1:9/predictions/m"


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    """A model (beam 16, top-k 16, items 1000..1299), data that fits it and data that does not, its SIDs, a file."""
    root = tmp_path_factory.mktemp("cli-errors")
    model = random_model_dir(root / "model", ModelConfig(), num_items=300, seed=0)
    rows = {u: [1000 + (7 * u + j) % 300 for j in range(5)] for u in range(1, 21)}
    (root / "data").mkdir()
    (root / "data" / "sequences.txt").write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in rows.items()))
    rows[3][2] = 99999
    (root / "other.txt").write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in rows.items()))
    # 30 users whose last item (the test target) is theirs alone: 30 cold items, one zero embedding.
    (root / "cold.txt").write_text("".join(f"{u} {1 + u % 6} {1 + (u + 1) % 6} {1 + (u + 2) % 6} {100 + u}\n"
                                           for u in range(1, 31)))
    save_sids(load_model_dir(model).catalog, root / "sids.csv")
    (root / "a-file").write_text("not a directory\n")
    return {"M": model, "D": root / "data" / "sequences.txt", "OTHER": root / "other.txt", "COLD": root / "cold.txt",
            "S": root / "sids.csv", "FILE": root / "a-file", "T": root}


def _argv(template: list[str], paths: dict[str, Path]) -> list[str]:
    return [str(paths[a]) if a in paths else a.format(**paths) for a in template]


def _xgr(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)  # never raises: argparse's exits and input errors are both an exit status
    out, err = capsys.readouterr()
    return code, out, err


# (name, argv with M/D/OTHER/COLD/S/FILE/T for the fixture's paths, what the one error line must hold)
CASES = [
    # values out of range, refused before any work starts
    ("eval beam narrower than the metrics", ["eval", "M", "--data", "D", "--beam-width", "5"],
     "--beam-width = 5: allowed >= 10"),
    ("eval negative history", ["eval", "M", "--data", "D", "--max-history", "-1"],
     "argument --max-history: expected an integer >= 1; got '-1'"),
    ("eval zero history", ["eval", "M", "--data", "D", "--max-history", "0"],
     "argument --max-history: expected an integer >= 1; got '0'"),
    ("eval zero users", ["eval", "M", "--data", "D", "--limit-users", "0"],
     "argument --limit-users: expected an integer >= 1; got '0'"),
    ("eval float8 on the CPU", ["eval", "M", "--data", "D", "--linear-precision", "float8"],
     "--linear-precision float8 needs --device cuda and --dtype bfloat16"),
    ("eval float8 layers kept without float8", ["eval", "M", "--data", "D", "--float8-skip", "lm_head"],
     "--float8-skip needs --linear-precision float8"),
    ("popularity zero users", ["eval", "--popularity", "--data", "D", "--limit-users", "0"],
     "argument --limit-users: expected an integer >= 1; got '0'"),
    ("train zero users", ["train", "--data", "D", "--sids", "S", "--out", "{T}/m1", "--limit-users", "0"],
     "argument --limit-users: expected an integer >= 1; got '0'"),
    ("recommend old top-k over the model's beam", ["recommend", "M", "--history", "1000", "--top-k", "20"],
     "--top-k = 20 is more than the model's beam.beam_width = 16: allowed 1..16"),
    ("recommend k over the beam", ["recommend", "M", "--history", "1000", "--beam-width", "4", "--k", "5"],
     "--k = 5 is more than --beam-width = 4: allowed 1..4"),
    ("recommend zero k", ["recommend", "M", "--history", "1000", "--k", "0"],
     "argument --k: expected an integer >= 1; got '0'"),
    ("recommend unknown old-spelled history", ["recommend", "M", "--history-items", "1000 5"],
     "--history-items: unknown item id(s): [5]"),
    ("sid build zero codes", ["sid", "build", "--data", "D", "--codes", "0"],
     "argument --codes: expected an integer >= 1; got '0'"),
    ("package zero workers", ["package", "M", "--name", "m", "--out", "{T}/store", "--workers", "0"],
     "argument --workers: expected an integer >= 1; got '0'"),
    ("train zero epochs", ["train", "--data", "D", "--sids", "S", "--out", "{T}/m1", "--epochs", "0"],
     "argument --epochs: expected a number > 0; got '0'"),
    ("train heads that do not divide hidden", ["train", "--data", "D", "--sids", "S", "--out", "{T}/m1",
                                               "--hidden", "30", "--heads", "4"],
     "--hidden 30 is not a multiple of --heads 4"),
    ("train bf16 on the CPU", ["train", "--data", "D", "--sids", "S", "--out", "{T}/m1", "--bf16"],
     "--device cuda or drop --bf16"),
    ("export zero threads", ["export", "M", "--out", "{T}/art", "--device", "cpu", "--threads", "0"],
     "argument --threads: expected an integer >= 1; got '0'"),
    ("load zero concurrency", ["load", URL, "--body", "{{}}", "--concurrency", "0"],
     "argument --concurrency: expected an integer in [1, 1024]; got '0'"),
    ("load open loop without a rate", ["load", URL, "--body", '{{"history": [1], "k": 1}}', "--mode", "open"],
     "--mode open needs --rate"),
    ("bench zero seconds", ["bench", "--seconds", "0"], "argument --seconds: expected a number > 0; got '0'"),
    ("bench returning with fp8", ["bench", "long", "--returning", "--fp8"],
     "--returning measures only the returning users: run --fp8 and --sweeps without it"),
    ("import-hf zero levels", ["import-hf", "T", "{T}/gr", "--catalog", "S", "--sid-offset", "8", "--levels", "0",
                               "--codes", "8"], "argument --levels: expected an integer >= 1; got '0'"),
    # devices that are not there, or not devices
    ("eval gpu", ["eval", "M", "--data", "D", "--device", "gpu"],
     "argument --device: 'gpu' is not a device; allowed cpu, cuda or cuda:N"),
    # files: an existing file where a directory goes, missing inputs
    ("train out is a file", ["train", "--data", "D", "--sids", "S", "--out", "FILE"],
     "argument --out: {FILE}: an existing file, not a directory"),
    ("import-hf out is a file", ["import-hf", "T", "FILE", "--catalog", "S", "--sid-offset", "8", "--levels", "3",
                                 "--codes", "8"], "argument out: {FILE}: an existing file, not a directory"),
    ("package out is a file", ["package", "M", "--name", "m", "--out", "FILE"],
     "argument --out: {FILE}: an existing file, not a directory"),
    ("export out is a file", ["export", "M", "--out", "FILE", "--device", "cpu"],
     "argument --out: {FILE}: an existing file, not a directory"),
    ("recommend model is a file", ["recommend", "FILE", "--history", "1000"],
     "argument model_dir: {FILE}: a file; a model directory holds config.yaml"),
    ("eval data missing", ["eval", "M", "--data", "{T}/none.txt"], "argument --data: {T}/none.txt: no such file"),
    ("train sids missing", ["train", "--data", "D", "--sids", "{T}/none.csv", "--out", "{T}/m1"],
     "argument --sids: {T}/none.csv: no such file"),
    ("sid report missing", ["sid", "report", "{T}/none.json"], "argument path: {T}/none.json: no such file"),
    # data: not the model's, without the text an option needs, cold items
    ("eval data of another catalog", ["eval", "M", "--data", "OTHER"],
     "{OTHER}:3: user 3 has item 99999, which {M}'s catalog does not hold"),
    ("train data of another SID file", ["train", "--data", "OTHER", "--sids", "S", "--out", "{T}/m1"],
     "{OTHER}:3: user 3 has item 99999, which the SID file {S} does not hold (1 of the data's"),
    ("sid build text without text", ["sid", "build", "--data", "D", "--embeddings", "text"],
     "--embeddings text needs item text, and this data set has none: {T}/data has no item_text.txt; give --item-text"),
    ("sid embed-text without text", ["sid", "embed-text", "--data", "D", "--out", "{T}/e.safetensors"],
     "has no item_text.txt; give --item-text"),
    ("sid build cold items", ["sid", "build", "--data", "COLD", "--levels", "1", "--codes", "4", "--dim", "4",
                              "--iters", "2", "--out", "{T}/cold.json"],
     "cold items (in no training part: one zero collaborative embedding) cannot be told apart"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_option(paths, capsys, argv, message):
    code, out, err = _xgr(capsys, _argv(argv, paths))
    assert code == 2 and "Traceback" not in out + err
    if argv[:2] != ["sid", "build"] or "COLD" not in argv:  # a collision shows after k-means; the rest before any work
        assert out == "" and err.count("\n") == 1, err
    line = err.rstrip("\n").split("\n")[-1]  # one line, the last
    assert line.startswith(f"xgr {argv[0]}") and message.format(**paths) in line


@pytest.mark.parametrize("command", [["recommend", "M", "--history", "1000"], ["eval", "M", "--data", "D"],
                                     ["train", "--data", "D", "--sids", "S", "--out", "{T}/m1"],
                                     ["sid", "build", "--data", "D"]])
@pytest.mark.parametrize("gpus, device, message", [
    (0, "cuda", "argument --device: 'cuda': this machine's torch sees no CUDA GPU"),
    (1, "cuda:3", "argument --device: 'cuda:3': there is no GPU 3; this machine has 1 (cuda:0..cuda:0)"),
])
def test_a_device_that_is_not_there_is_named(paths, capsys, monkeypatch, command, gpus, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    code, out, err = _xgr(capsys, _argv([*command, "--device", device], paths))
    assert (code, out) == (2, "") and message in err and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_input_is_named(paths, capsys, tmp_path):
    locked = tmp_path / "locked.txt"
    locked.write_text(paths["D"].read_text())
    locked.chmod(0)
    code, _, err = _xgr(capsys, ["eval", str(paths["M"]), "--data", str(locked)])
    assert code == 2 and f"argument --data: {locked}: not readable" in err


@pytest.mark.parametrize("argv, message", [
    (["recommend", "M", "--history", "1000", "--device", "cuda"], "argument --device: 'cuda'"),
    (["train", "--data", "D", "--sids", "S", "--out", "FILE"], "argument --out"),
    (["eval", "M", "--data", "OTHER"], "which {M}'s catalog does not hold"),
])
def test_no_traceback_end_to_end(paths, argv, message):
    done = subprocess.run([sys.executable, "-m", "xgr_toolkit", *_argv(argv, paths)], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message.format(**paths) in done.stderr


def test_debug_shows_the_traceback(paths, capsys, monkeypatch):
    argv = _argv(["eval", "M", "--data", "OTHER"], paths)
    with pytest.raises(DataError, match="99999"):
        main(["--debug", *argv])
    monkeypatch.setenv("XGR_DEBUG", "1")
    with pytest.raises(DataError, match="99999"):
        main(argv)


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_option_has_help_and_every_help_shows_its_default():
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 10  # xgr, its 9 subcommands, sid's 3
    for parser in parsers:
        assert parser.format_help()  # argparse expands every help text's %-fields here
        one_of = [a for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions]
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or \
                    action.help == argparse.SUPPRESS:
                continue
            name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{name}: no help text"
            if not action.option_strings or action.required or action in one_of or action.nargs == 0:
                continue  # positional, required, one of a required choice, or a flag: nothing to default
            shown = HelpFormatter(parser.prog)._get_help_string(action)
            assert "default" in shown, f"{name}: the help does not say its default"
