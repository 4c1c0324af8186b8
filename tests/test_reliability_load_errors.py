"""A broken or hostile model archive fails at load time with an error naming the file and the problem.

Library level: each defect is made in a copy of a good model directory (what TorchServe extracts a .mar
into) and loaded as the handler loads it, through ``RecService.from_model_dir``. The same errors through a
real TorchServe: test_reliability_faults.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

from xgr_toolkit import preset
from xgr_toolkit.serving import RecService
from xgr_toolkit.serving.archive import ArchiveError, check_model_dir, check_safetensors
from xgr_toolkit.synthetic import random_catalog, random_decoder, random_model_dir

CFG = preset("tiny")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = random_model_dir(tmp_path_factory.mktemp("load-errors") / "good", CFG, num_items=200, seed=2)
    check_model_dir(path)
    RecService.from_model_dir(path, max_beam_width=4)  # loads
    return path


def truncate(name, keep=0.5):
    def go(d: Path):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return go


def write(name, data):
    def go(d: Path):
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return go


def remove(name):
    return lambda d: (d / name).unlink()


def edit_config(old, new):
    def go(d: Path):
        text = (d / "config.yaml").read_text()
        assert old in text
        (d / "config.yaml").write_text(text.replace(old, new, 1))
    return go


def other_weights(**changes):
    def go(d: Path):
        save_model(random_decoder(dataclasses.replace(CFG, **changes)), str(d / "model.safetensors"))
    return go


def catalog_tensors(item_ids, codes, metadata):
    def go(d: Path):
        save_file({"item_ids": item_ids, "codes": codes}, str(d / "catalog.safetensors"), metadata=metadata)
    return go


def other_catalog(levels, codes):
    return lambda d: random_catalog(50, levels, codes, seed=1).save(d / "catalog.safetensors")


def torch_save_like_zip(name):
    def go(d: Path):
        with zipfile.ZipFile(d / name, "w") as z:  # what torch.save writes: a zip holding data.pkl
            z.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0]}))
            z.writestr("archive/version", "3\n")
    return go


IDS = torch.arange(1000, 1010)
CODES = torch.zeros(10, CFG.levels, dtype=torch.int64)
DEFECTS = {  # name: (how to break a good directory, the file the error must name, words it must say)
    "weights missing": (remove("model.safetensors"), "model.safetensors", ["missing"]),
    "catalog missing": (remove("catalog.safetensors"), "catalog.safetensors", ["missing"]),
    "config missing": (remove("config.yaml"), "config.yaml", ["missing"]),
    "weights truncated": (truncate("model.safetensors"), "model.safetensors", ["truncated"]),
    "weights cut in the header": (truncate("model.safetensors", 100), "model.safetensors",
                                  ["not a safetensors file"]),
    "weights empty": (truncate("model.safetensors", 0), "model.safetensors", ["not a safetensors file"]),
    "weights are a pickle": (write("model.safetensors", pickle.dumps({"w": list(range(100))})), "model.safetensors",
                             ["pickle stream", "must be safetensors"]),
    "weights are garbage": (write("model.safetensors", os.urandom(4096)), "model.safetensors",
                            ["not a safetensors file"]),
    "weights of a wider model": (other_weights(hidden_size=128, num_heads=8, num_kv_heads=4), "model.safetensors",
                                 ["shape", "config.yaml"]),
    "weights of a shallower model": (other_weights(num_layers=1), "model.safetensors", ["missing tensors", "layers.1"]),
    "config not YAML": (write("config.yaml", "model: [unclosed\n  levels: 3"), "config.yaml", ["valid YAML"]),
    "config unknown key": (edit_config("levels:", "levles:"), "config.yaml", ["levles"]),
    "config out of range": (edit_config("codes: 64", "codes: 0"), "config.yaml", ["model.codes"]),
    "config of another model": (edit_config("num_layers: 2", "num_layers: 3"), "model.safetensors",
                                ["missing tensors", "layers.2"]),
    "catalog with other levels": (other_catalog(2, 64), "catalog.safetensors", ["2 levels", "3 levels"]),
    "catalog with other codes": (other_catalog(3, 32), "catalog.safetensors", ["32 codes", "64 codes"]),
    "catalog codes out of range": (catalog_tensors(IDS, CODES + 64, {"num_codes": "64"}), "catalog.safetensors",
                                   ["out of range"]),
    "catalog duplicate ids": (catalog_tensors(torch.zeros(10, dtype=torch.int64) + 1000, CODES, {"num_codes": "64"}),
                              "catalog.safetensors", ["duplicate item id"]),
    "catalog without num_codes": (catalog_tensors(IDS, CODES, {}), "catalog.safetensors", ["num_codes"]),
    "catalog is the weights": (lambda d: shutil.copy(d / "model.safetensors", d / "catalog.safetensors"),
                               "catalog.safetensors", ["not a catalog", "item_ids"]),
    "catalog truncated": (truncate("catalog.safetensors", 0.9), "catalog.safetensors", ["truncated"]),
    "an extra .pkl": (write("evil.pkl", pickle.dumps([1, 2])), "evil.pkl", ["pickled", "safetensors"]),
    "an extra .bin": (write("pytorch_model.bin", b"\x00" * 16), "pytorch_model.bin", ["pickled"]),
    "an extra .pt in a folder": (lambda d: (d / "sub").mkdir() or (d / "sub" / "w.pt").write_bytes(b"x"),
                                 "sub/w.pt", ["pickled"]),
    "a pickle without a suffix": (write("notes", pickle.dumps("hello")), "notes", ["pickle stream"]),
    "a torch.save zip": (torch_save_like_zip("weights.zip"), "weights.zip", ["zip holding pickles", "data.pkl"]),
    "a symbolic link": (lambda d: (d / "link.yaml").symlink_to("/etc/hostname"), "link.yaml", ["symbolic link"]),
    "item names not JSON": (write("item_names.json", "{oops"), "item_names.json", ["not valid JSON"]),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_broken_archive_fails_at_load_naming_the_file_and_the_problem(good, tmp_path, defect):
    make, file, words = DEFECTS[defect]
    broken = tmp_path / "model"
    shutil.copytree(good, broken)
    make(broken)
    with pytest.raises(ValueError) as info:  # ArchiveError, ConfigError and CatalogError are ValueErrors
        RecService.from_model_dir(broken, max_beam_width=4)
    message = str(info.value)
    assert str(broken / file) in message, message
    for word in words:
        assert word in message, message


def test_nothing_is_deserialized_before_the_check(good, tmp_path, monkeypatch):
    """A pickle beside good files is refused even though the model itself would load."""
    broken = tmp_path / "model"
    shutil.copytree(good, broken)
    (broken / "extra.pth").write_bytes(pickle.dumps(1))
    loaded = []
    monkeypatch.setattr("xgr_toolkit.serving.archive.load_model_dir", lambda *a, **k: loaded.append(a))
    with pytest.raises(ArchiveError, match="extra.pth"):
        RecService.from_model_dir(broken, max_beam_width=4)
    assert loaded == []


def test_an_unexpected_plain_file_is_only_logged_and_the_compile_cache_is_trusted(good, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(good, model)
    (model / "README.txt").write_text("notes")
    (model / "compile_cache" / "fxgraph").mkdir(parents=True)
    (model / "compile_cache" / "fxgraph" / "entry").write_bytes(pickle.dumps("inductor's own"))
    with caplog.at_level(logging.WARNING, logger="xgr_toolkit.serving.archive"):
        check_model_dir(model)
    assert "README.txt: unexpected file" in caplog.text and "compile_cache" not in caplog.text


def test_check_safetensors_returns_the_header(good):
    header = check_safetensors(good / "catalog.safetensors")
    assert header["__metadata__"] == {"num_codes": "64"} and header["codes"]["shape"] == [200, CFG.levels]
    assert json.dumps(header)
