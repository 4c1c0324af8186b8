"""Security: nothing unpickles, the shipped TorchServe config is locked down, archives are checked before use.

- No pickle anywhere in the package or the handler: an AST scan for the modules and calls that unpickle,
  and a load with every unpickler replaced by one that fails the test.
- ``xgr_toolkit/serving/config.properties`` (the production template): every address on loopback, token
  authorization on, the model API off, request and response size limits set.
- A packaged archive holds only the expected files, none pickled.
"""

from __future__ import annotations

import ast
import pickle
import re
import zipfile
from pathlib import Path

import pytest

from xgr_toolkit import preset
from xgr_toolkit.serving import PackageOptions, RecService, TorchServe, package_model
from xgr_toolkit.serving.archive import check_model_dir
from xgr_toolkit.synthetic import random_model_dir

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "xgr_toolkit").rglob("*.py")) + sorted((ROOT / "handlers").glob("*.py"))
TEMPLATE = ROOT / "xgr_toolkit" / "serving" / "config.properties"
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "marshal", "shelve",
                      "pickletools"}
UNPICKLING_CALLS = {"torch.load", "torch.jit.load", "torch.serialization.load", "np.load", "numpy.load", "yaml.load",
                    "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "pd.read_pickle", "pandas.read_pickle"}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def unpickling_uses(source: str, name: str) -> list[str]:
    """Imports of unpickling modules, calls that unpickle, and ``weights_only=False`` / ``allow_pickle=True``."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "numpy", "yaml") \
                and any(a.name in ("load", "unsafe_load", "full_load") for a in node.names):
            found.append(f"{where}: from {node.module} import load")
        elif isinstance(node, ast.Call):
            call = _dotted(node.func)
            if call in UNPICKLING_CALLS:
                found.append(f"{where}: {call}(...)")
            for kw in node.keywords:
                if (kw.arg, getattr(kw.value, "value", None)) in (("weights_only", False), ("allow_pickle", True)):
                    found.append(f"{where}: {kw.arg}={kw.value.value}")
    return sorted(found, key=lambda f: int(f.split(":")[1]))


def test_the_scan_finds_what_it_looks_for():
    probe = ("import pickle\nfrom dill import loads\nimport torch, numpy as np, yaml\n"
             "torch.load('w.pt')\nnp.load('a.npy', allow_pickle=True)\nyaml.load(open('c'))\n"
             "torch.load('w.pt', weights_only=True)\nfrom torch import load\nimport joblib.numpy_pickle\n"
             "x = torch.jit.load('m.pt')\nsafe = yaml.safe_load('a: 1')  # fine\n")
    found = unpickling_uses(probe, "probe.py")
    assert [f.split(":")[1] for f in found] == ["1", "2", "4", "5", "5", "6", "7", "8", "9", "10"], found


def test_no_pickle_anywhere_in_the_package_or_the_handler():
    assert len(SOURCES) > 20 and any(p.name == "xgr_handler.py" for p in SOURCES)
    found = [use for path in SOURCES for use in unpickling_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "unpickling in the package or the handler:\n" + "\n".join(found)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("security") / "model", preset("tiny"), num_items=100, seed=4)


def test_a_packaged_archive_is_loaded_without_any_unpickler(model_dir, tmp_path, monkeypatch):
    """The whole served load path (extract the .mar, check it, load weights, catalog and config, answer)
    with every unpickler replaced by one that fails."""
    mar = package_model(model_dir, "safe", tmp_path / "store", PackageOptions(max_beam_width=4))
    with zipfile.ZipFile(mar) as z:
        names = sorted(z.namelist())
        z.extractall(tmp_path / "extracted")
    assert names == ["MAR-INF/MANIFEST.json", "catalog.safetensors", "config.yaml", "model-config.yaml",
                     "model.safetensors", "xgr_handler.py"]

    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled on the load path")

    for target in ("pickle.load", "pickle.loads", "pickle.Unpickler", "torch.load", "torch.serialization.load"):
        monkeypatch.setattr(target, refuse)
    check_model_dir(tmp_path / "extracted")
    service = RecService.from_model_dir(tmp_path / "extracted", name="safe", max_beam_width=4)
    items = service.model.catalog.item_ids.tolist()
    [reply], _ = service.handle([{"history": items[:2], "k": 2}])
    assert reply.status == 200 and len(reply.body["items"]) == 2


def test_the_unpickler_guard_would_catch_a_pickle_load(monkeypatch):
    monkeypatch.setattr("pickle.loads", lambda *a, **k: (_ for _ in ()).throw(AssertionError("unpickled")))
    with pytest.raises(AssertionError, match="unpickled"):
        pickle.loads(b"\x80\x04K\x01.")


# ---- the shipped config.properties --------------------------------------------------------------------
def properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_the_template_binds_every_api_to_loopback():
    props = properties(TEMPLATE)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), (key, props[key])
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert props[key] == "127.0.0.1", (key, props[key])
    assert "0.0.0.0" not in "".join(props.values())


def test_the_template_has_token_authorization_on_and_the_model_api_off():
    props = properties(TEMPLATE)
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"


def test_the_template_limits_request_and_response_sizes():
    props = properties(TEMPLATE)
    for key in ("max_request_size", "max_response_size"):
        assert 0 < int(props[key]) <= 16 << 20, (key, props[key])


def test_the_kserve_config_keeps_torchserve_on_loopback_inside_the_pod():
    """docs/kserve/config.properties: KServe's wrapper is the pod's only listener; TorchServe stays on loopback.
    Its token authorization is off on purpose (the wrapper sends no token): the file must say so."""
    path = ROOT / "docs" / "kserve" / "config.properties"
    if not path.is_file():
        pytest.skip("no KServe config")
    props = properties(path)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), (key, props[key])
    for key in ("grpc_inference_address", "grpc_management_address"):  # TorchServe 0.12's default: 127.0.0.1
        assert props.get(key, "127.0.0.1") == "127.0.0.1", (key, props[key])
    assert props["enable_model_api"] == "false" and 0 < int(props["max_request_size"]) <= 16 << 20
    if props.get("disable_token_authorization") == "true":
        assert "authenticate at the ingress" in path.read_text()


def test_private_servers_for_demo_and_tests_are_loopback_and_limited(tmp_path):
    ts = TorchServe(tmp_path, {"m": "m.mar"})
    ts.ports = dict.fromkeys(("inference", "management", "metrics", "grpc_inference", "grpc_management"), 1)
    props = ts.config_properties()
    assert all(props[k].startswith("http://127.0.0.1:") for k in ("inference_address", "management_address",
                                                                  "metrics_address"))
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert int(props["max_request_size"]) == int(properties(TEMPLATE)["max_request_size"])
    assert props["disable_token_authorization"] == "true"  # the demo's and the tests' choice, said out loud
    ts.token_auth = True
    assert ts.config_properties()["disable_token_authorization"] == "false"


def test_the_handler_defines_one_class_and_checks_the_archive():
    tree = ast.parse((ROOT / "handlers" / "xgr_handler.py").read_text())
    assert sum(isinstance(n, ast.ClassDef) for n in tree.body) == 1  # TorchServe's rule
    from xgr_toolkit.serving import service

    source = Path(service.__file__).read_text()  # the handler loads through RecService.from_model_dir
    assert "load_checked_model_dir(" in source and not re.search(r"(?<!checked_)load_model_dir\(", source)
