"""`xgr export`: the compile artifact, `xgr package --compile-cache` with it, and a worker that starts from it.

The exporting and the loading process are fresh Python processes, as in production: inductor keeps in-memory
caches and dynamo its compiled code, so a test process would measure itself. On the CPU, one small model of
two compiled shapes (a batch bucket of 1, one prompt bucket) keeps the export at about 20 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
import yaml

from xgr_toolkit import BeamConfig, ModelConfig, ServeConfig, load_model_dir
from xgr_toolkit.cli import main
from xgr_toolkit.compile_cache import (
    MANIFEST_FILE,
    CompileCacheError,
    compiled_shapes,
    read_manifest,
    use_compile_cache,
)
from xgr_toolkit.config import load_config
from xgr_toolkit.engines import build_engine
from xgr_toolkit.request import RecRequest
from xgr_toolkit.serving import PackageOptions, package_model
from xgr_toolkit.serving.archive import check_archive
from xgr_toolkit.synthetic import random_model_dir

W = 4  # the archive's --beam-width, and so the export's
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the export's and the worker's thread count must agree on the CPU

# A TorchServe worker in a fresh process: the archive extracted, the handler's initialize and one batch; prints
# the answer and dynamo's counters. No TorchServe: the handler is all a worker runs of ours.
WORKER = textwrap.dedent("""
    import importlib.util, json, sys, tempfile, zipfile
    from pathlib import Path
    import yaml
    root = Path(tempfile.mkdtemp())
    zipfile.ZipFile(sys.argv[1]).extractall(root)
    spec = importlib.util.spec_from_file_location("xgr_handler", root / "xgr_handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    class Context:
        model_name, metrics, request_ids = "m", None, None
        system_properties = {"model_dir": str(root), "gpu_id": None}
        model_yaml_config = yaml.safe_load((root / "model-config.yaml").read_text())
        def set_response_content_type(self, i, v): pass
        def set_response_status(self, *a, **k): pass
    handler = module.XGRHandler()
    handler.initialize(Context())
    out = handler.handle([{"body": {"history_tokens": [5, 9, 6], "k": 3}}], Context())
    from torch._dynamo.utils import counters
    print(json.dumps({"answer": json.loads(out[0]), "inductor": dict(counters["inductor"])}))
""")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """As import-hf and train write one (serve.compile false: export and the archive compile anyway), one batch
    bucket and one prompt bucket: two shapes, four regions."""
    cfg = ModelConfig(name="small", num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1, head_dim=8,
                      intermediate_size=32, max_prompt_tokens=16, sid_offset=4, levels=2, codes=4, vocab_size=14)
    return random_model_dir(tmp_path_factory.mktemp("export") / "model", cfg, num_items=12, seed=3,
                            beam=BeamConfig(beam_width=W, top_k=W),
                            serve=ServeConfig(compile=False, max_batch=1, prompt_buckets=[16]))


@pytest.fixture(scope="module")
def artifact(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact") / "compile-cache"
    done = subprocess.run([sys.executable, "-m", "xgr_toolkit", "export", str(model_dir), "--out", str(out),
                           "--device", "cpu", "--beam-width", str(W), "--threads", "1"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"--compile-cache {out}" in done.stdout  # says what to run next
    return out


@pytest.fixture(scope="module")
def archive(model_dir, artifact, tmp_path_factory):
    pytest.importorskip("model_archiver", reason="torch-model-archiver is not installed")
    options = PackageOptions(max_beam_width=W, engine="fast", device_type="cpu")
    return package_model(model_dir, "small", tmp_path_factory.mktemp("store"), options, compile_cache=artifact)


def exported_shapes(model_dir) -> dict:
    """What `xgr export` compiles for ``model_dir``: its config with serve.compile on."""
    config = load_config(model_dir / "config.yaml")
    config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, compile=True))
    return json.loads(json.dumps(compiled_shapes(config, W)))


def fake_artifact(path, model_dir, **manifest):
    """An artifact's files without compiling: a manifest as `xgr export` writes it, and an empty inductor/."""
    (path / "inductor").mkdir(parents=True)
    (path / MANIFEST_FILE).write_text(json.dumps({
        "format": 1, "method": "cache-dir", "torch": "0", "threads": 1, "device": "cpu", "engine": "fast",
        "max_beam_width": W, "shapes": exported_shapes(model_dir), **manifest}))
    return path


@pytest.mark.slow
def test_export_writes_an_artifact_of_what_the_warm_up_compiled(artifact, model_dir):
    manifest = read_manifest(artifact)
    assert manifest["method"] == "cache-dir" and manifest["device"] == "cpu" and manifest["threads"] == 1
    assert manifest["max_beam_width"] == W and manifest["engine"] == "fast"
    assert load_config(model_dir / "config.yaml").serve.compile is False  # export compiled it all the same
    assert manifest["shapes"] == exported_shapes(model_dir)
    assert manifest["graphs_compiled"] >= 4  # prefill and decode, before and after attention
    assert any((artifact / "inductor").rglob("*.so"))  # inductor's compiled C++ kernels travel with it


@pytest.mark.slow
def test_a_worker_starts_from_the_archive_without_compiling(archive, artifact, model_dir):
    check_archive(archive)  # the compile cache is the archive's one trusted directory
    with zipfile.ZipFile(archive) as mar:
        names = mar.namelist()
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert f"compile_cache/{MANIFEST_FILE}" in names and any(n.startswith("compile_cache/inductor/") for n in names)
    assert config["handler"]["compile_cache"] == "compile_cache" and config["handler"]["compile"] is True
    done = subprocess.run([sys.executable, "-c", WORKER, str(archive)], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compile cache not used" not in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Every compiled region came from the artifact: nothing was compiled again.
    assert result["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert result["inductor"]["fxgraph_cache_hit"] == read_manifest(artifact)["graphs_compiled"]
    model = load_model_dir(model_dir)
    [want] = build_engine(model, "reference").recommend([RecRequest((5, 9, 6), W, 3)])
    got = result["answer"]["items"]
    assert [i["item_id"] for i in got] == [i.item_id for i in want]
    assert [i["score"] for i in got] == pytest.approx([i.score for i in want], abs=1e-5)


def bad_artifact(path, kind: str):
    if kind == "file":
        path.write_bytes(b"not a directory")
    elif kind != "missing":
        path.mkdir()
        text = "{" if kind == "broken manifest" else '{"format": 1, "method": "mega-cache"}'  # and no bytes
        (path / MANIFEST_FILE).write_text(text)
    return path


@pytest.mark.parametrize("kind, message", [("missing", "not found"), ("file", "a file, not a directory"),
                                           ("broken manifest", "not a compile-cache manifest"),
                                           ("incomplete", "no mega-cache.bin")])
def test_a_bad_compile_cache_is_refused_naming_the_option(model_dir, tmp_path, capsys, kind, message):
    path = bad_artifact(tmp_path / "art", kind)
    code = main(["package", str(model_dir), "--name", "small", "--out", str(tmp_path / "store"), "--beam-width",
                 str(W), "--compile-cache", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and f"--compile-cache {path}" in err and message in err
    assert not (tmp_path / "store" / "small.mar").exists()


@pytest.mark.parametrize("args, manifest, message", [
    (["--engine", "fast"], {"max_beam_width": 8}, "exported for --beam-width 8, the archive has --beam-width 4"),
    (["--engine", "reference"], {}, "compiles nothing"),
    (["--engine", "fast", "--device-type", "gpu"], {}, "exported for the cpu"),
    (["--engine", "fast"], {"shapes": {}}, "another model or serve config"),
])
def test_package_refuses_an_artifact_that_does_not_fit(model_dir, tmp_path, capsys, args, manifest, message):
    path = fake_artifact(tmp_path / "art", model_dir, **manifest)
    code = main(["package", str(model_dir), "--name", "small", "--out", str(tmp_path / "store"), "--beam-width",
                 str(W), *args, "--compile-cache", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "--compile-cache" in err and message in err


def test_a_compile_cache_for_another_linear_precision_is_refused(model_dir, tmp_path, capsys, monkeypatch):
    float8 = {**compiled_shapes(load_config(model_dir / "config.yaml"), W), "linear_precision": "float8"}
    path = fake_artifact(tmp_path / "art", model_dir, shapes=float8)
    code = main(["package", str(model_dir), "--name", "small", "--out", str(tmp_path / "store"), "--beam-width",
                 str(W), "--engine", "fast", "--compile-cache", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "compiled for serve.linear_precision 'float8', config.yaml has 'dtype'" in err
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "before")
    with pytest.raises(CompileCacheError, match="compiled for serve.linear_precision 'float8', the archive serves "
                                                "'dtype'"):
        use_compile_cache(path, "cpu", "dtype")  # the handler, with the archive's recorded precision
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "before"  # refused before anything points at it
    assert use_compile_cache(path, "cpu", "float8")["method"] == "cache-dir"


def test_a_plain_inductor_cache_directory_is_still_shipped(model_dir, tmp_path, monkeypatch):
    pytest.importorskip("model_archiver", reason="torch-model-archiver is not installed")
    plain = tmp_path / "inductor-cache"
    (plain / "fxgraph").mkdir(parents=True)
    (plain / "fxgraph" / "entry").write_bytes(b"inductor's own")
    mar = package_model(model_dir, "small", tmp_path / "store", PackageOptions(max_beam_width=W), compile_cache=plain)
    with zipfile.ZipFile(mar) as z:
        assert "compile_cache/fxgraph/entry" in z.namelist()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "elsewhere")
    assert use_compile_cache(plain)["method"] == "inductor-dir"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(plain.resolve())


def test_loading_warns_what_will_make_the_cache_miss(model_dir, tmp_path, monkeypatch):
    import torch

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # restored after the test
        monkeypatch.setenv(name, str(tmp_path / "before"))
    path = fake_artifact(tmp_path / "art", model_dir, threads=torch.get_num_threads() + 1)
    used = use_compile_cache(path, "cpu")
    assert any("torch 0" in w for w in used["warnings"]) and any("CPU threads" in w for w in used["warnings"])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((path / "inductor").resolve())
    assert os.environ["TRITON_CACHE_DIR"] == str((path / "triton").resolve())


def test_export_refuses_what_compiles_nothing(tiny_model_dir, tmp_path, capsys):
    code = main(["export", str(tiny_model_dir), "--out", str(tmp_path / "art"), "--device", "cpu", "--engine",
                 "reference"])
    err = capsys.readouterr().err
    assert code == 2 and "argument --engine: invalid choice: 'reference'" in err and not (tmp_path / "art").exists()
