"""The batch service behind the handler, and the handler itself under a stand-in for TorchServe's context.

No server: the handler module is loaded as TorchServe loads it (one class, found by TorchServe's own
helper), initialized from an extracted .mar, and fed batches.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from xgr_toolkit import ModelConfig, ServeConfig, build_request, load_model_dir, preset
from xgr_toolkit.engines import ENGINES, build_engine
from xgr_toolkit.request import RequestError
from xgr_toolkit.serving import ITEM_NAMES_FILE, RecService, package_model, save_item_names
from xgr_toolkit.serving.packaging import HANDLER_FILE, MODEL_CONFIG_FILE, PackageOptions
from xgr_toolkit.serving.service import BatchStats
from xgr_toolkit.synthetic import random_model_dir

MAX_W = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = random_model_dir(tmp_path_factory.mktemp("serving-service") / "model", preset("tiny"), num_items=200,
                            seed=5)
    ids = load_model_dir(path).catalog.item_ids.tolist()
    save_item_names(path, {i: f"item-{i}" for i in ids[:100]})  # half of them have names
    return path


@pytest.fixture(scope="module")
def service(model_dir):
    return RecService.from_model_dir(model_dir, name="svc", max_beam_width=MAX_W)


@pytest.fixture(scope="module")
def items(service):
    return service.model.catalog.item_ids.tolist()


def library_answer(service, history, k, beam_width=MAX_W, **kw):
    model = service.model
    request = build_request(model.config.model, model.catalog, history_items=history, beam_width=beam_width,
                            top_k=k, max_beam_width=MAX_W, **kw)
    [items] = build_engine(model, service.engine_name).recommend([request])
    return [item.to_json() for item in items]


def same_items(served, expected):
    """The same items and SIDs in the same order; scores within 1e-5 (batches of other shapes round differently)."""
    served = without_names(served)
    return [(i["item_id"], i["sid"]) for i in served] == [(i["item_id"], i["sid"]) for i in expected] and all(
        abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(served, expected))


def without_names(items):
    return [{k: v for k, v in item.items() if k != "name"} for item in items]


class CountingEngine:
    """Wraps an engine: counts calls, and fails on requests whose top_k is in ``fail_k``."""

    def __init__(self, engine, fail_k=(), wrong_count=False):
        self.engine, self.fail_k, self.wrong_count, self.calls = engine, set(fail_k), wrong_count, []

    def recommend(self, requests):
        self.calls.append(len(requests))
        if any(r.top_k in self.fail_k for r in requests):
            raise RuntimeError("engine failure")
        out = self.engine.recommend(requests)
        return out[:-1] if self.wrong_count and len(out) > 1 else out


# ---- RecService -----------------------------------------------------------------------------------
def test_a_batch_with_bad_requests_answers_the_good_ones_in_one_engine_call(model_dir, items):
    service = RecService.from_model_dir(model_dir, name="svc", max_beam_width=MAX_W)
    service.engine = engine = CountingEngine(service.engine)
    bodies = [{"history": items[:3], "k": 3}, b'{"history": [', json.dumps({"history": items[3:5], "k": 2,
                                                                          "beam_width": 4}).encode(),
              {"history": items[:1], "k": 1, "oops": 1}, {"history": [10**9], "k": 1}]
    replies, stats = service.handle(bodies)
    assert [r.status for r in replies] == [200, 400, 200, 400, 400]
    assert engine.calls == [2]
    assert [replies[i].body["field"] for i in (1, 3, 4)] == ["body", "oops", "history"]
    assert same_items(replies[0].body["items"], library_answer(service, items[:3], 3))
    assert same_items(replies[2].body["items"], library_answer(service, items[3:5], 2, beam_width=4))
    assert replies[0].body["model"] == "svc" and replies[0].body["batch_size"] == 5
    assert set(replies[0].body["timing_ms"]) == {"parse", "engine", "total"}
    assert (stats.batch_size, stats.rejected, stats.failed, stats.beam_widths) == (5, 3, 0, [MAX_W, 4])
    assert stats.engine_ms > 0
    json.dumps([r.body for r in replies])


def test_kserve_instances_share_the_engine_call_with_plain_requests(model_dir, items):
    service = RecService.from_model_dir(model_dir, name="svc", max_beam_width=MAX_W)
    service.engine = engine = CountingEngine(service.engine)
    instances = [{"history": items[:2], "k": 2}, {"history": items[5:7], "k": 3, "beam_width": 4}]
    replies, stats = service.handle([{"instances": instances}, {"history": items[9:10], "k": 1},
                                     {"instances": [instances[0], {"history": items[:1], "k": 0}]}])
    assert [r.status for r in replies] == [200, 200, 400] and engine.calls == [3]
    predictions = replies[0].body["predictions"]
    expected = [library_answer(service, items[:2], 2), library_answer(service, items[5:7], 3, beam_width=4)]
    assert len(predictions) == 2 and all(same_items(p["items"], e) for p, e in zip(predictions, expected))
    assert replies[2].body["field"] == "instances[1].k" and stats.beam_widths == [MAX_W, 4, MAX_W]


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_registered_engine_serves_the_reference_answers(model_dir, items, engine):
    """The handler picks an engine by name only: whatever ENGINES holds must answer as the reference."""
    service = RecService.from_model_dir(model_dir, name="svc", engine=engine, max_beam_width=MAX_W)
    service.warm_up()
    bodies = [{"history": items[:3], "k": 4}, {"history": items[5:8], "k": 2, "beam_width": 3},
              {"history": items[9:10], "k": 1, "beam_width": 1},
              {"history": items[:2], "k": 3, "exclude": items[2:6], "exclude_history": True, "normalize": "level"}]
    replies, _ = service.handle(bodies)
    assert [r.status for r in replies] == [200] * 4
    for body, reply in zip(bodies, replies, strict=True):
        expected = library_answer(service, body["history"], body["k"], body.get("beam_width", MAX_W),
                                  exclude_items=body.get("exclude", ()),
                                  exclude_history=body.get("exclude_history", False),
                                  normalize=body.get("normalize", "vocab"))
        served = without_names(reply.body["items"])
        assert [(i["item_id"], i["sid"]) for i in served] == [(i["item_id"], i["sid"]) for i in expected]
        assert [i["score"] for i in served] == pytest.approx([i["score"] for i in expected], abs=1e-5)


def test_a_limit_only_the_engine_knows_is_a_400_for_that_request(model_dir, items):
    class Picky:
        def recommend(self, requests):
            if any(r.top_k == 7 for r in requests):
                raise RequestError("exclude", "too many for this engine")
            return [[] for _ in requests]

    service = RecService.from_model_dir(model_dir, name="svc", max_beam_width=MAX_W)
    service.engine = Picky()
    replies, stats = service.handle([{"history": items[:2], "k": 7}, {"history": items[:2], "k": 2}])
    assert [r.status for r in replies] == [400, 200] and replies[0].body["field"] == "exclude"
    assert stats.rejected == 1 and stats.failed == 0


def test_names_are_added_where_the_model_has_them(service, items):
    [reply], _ = service.handle([{"history": items[:2], "k": MAX_W}])
    named = {item["item_id"]: item.get("name") for item in reply.body["items"]}
    assert named and all(name == (f"item-{i}" if i in items[:100] else None) for i, name in named.items())


def test_an_all_bad_batch_never_reaches_the_engine(model_dir):
    service = RecService.from_model_dir(model_dir, name="svc", max_beam_width=MAX_W)
    service.engine = engine = CountingEngine(service.engine)
    replies, stats = service.handle([b"{", {"k": 1}])
    assert [r.status for r in replies] == [400, 400] and engine.calls == [] and stats.rejected == 2


@pytest.mark.parametrize("wrong_count", [False, True])
def test_an_engine_failure_fails_only_the_request_that_causes_it(model_dir, items, wrong_count):
    service = RecService.from_model_dir(model_dir, name="svc", max_beam_width=MAX_W)
    service.engine = engine = CountingEngine(service.engine, fail_k=() if wrong_count else {7},
                                             wrong_count=wrong_count)
    replies, stats = service.handle([{"history": items[:2], "k": 2}, {"history": items[:2], "k": 7},
                                     {"history": items[2:4], "k": 3}])
    if wrong_count:  # a batch answered with the wrong number of lists: retried one by one, all fine then
        assert [r.status for r in replies] == [200, 200, 200] and engine.calls == [3, 1, 1, 1]
    else:
        assert [r.status for r in replies] == [200, 500, 200] and stats.failed == 1
        assert replies[1].body["field"] is None and "engine" in replies[1].body["error"]
        assert same_items(replies[2].body["items"], library_answer(service, items[2:4], 3))


def test_an_unexpected_parsing_error_fails_only_its_request(model_dir, items, monkeypatch):
    service = RecService.from_model_dir(model_dir, name="svc", max_beam_width=MAX_W)
    parse = service.parse
    monkeypatch.setattr(service, "parse", lambda body: (_ for _ in ()).throw(KeyError("bug")) if body == "boom"
                        else parse(body))
    replies, stats = service.handle(["boom", {"history": items[:2], "k": 2}])
    assert [r.status for r in replies] == [500, 200] and stats.failed == 1


def test_prompt_store_counters_reach_the_batch_stats(model_dir, items):
    """A returning user's batch reports the tokens it did not prefill; the answers stay the library's."""
    model = load_model_dir(model_dir)
    serve = dataclasses.replace(model.config.serve, prefix_cache_bytes=1 << 22, prefix_cache_block=16)
    model = dataclasses.replace(model, config=dataclasses.replace(model.config, serve=serve))
    service = RecService(model, name="svc", engine="fast", max_beam_width=MAX_W)
    body = {"history": items[:20], "k": 3}  # 60 tokens: three blocks of 16 are stored, two can be read
    first, stats = service.handle([body])
    assert stats.prefix_cache["hit_tokens"] == 0 and stats.prefix_cache["prompt_tokens"] == 60
    assert stats.prefix_cache["bytes_held"] > 0
    again, stats = service.handle([body])
    assert stats.prefix_cache["hit_tokens"] > 0 and stats.prefix_cache["prompt_tokens"] == 60
    assert 0 < stats.prefix_cache["hit_ratio"] < 1 and stats.prefix_cache["evictions"] == 0
    assert same_items(again[0].body["items"], first[0].body["items"])
    assert service.handle([body])[1].prefix_cache.keys() == stats.prefix_cache.keys()
    _, plain = RecService(load_model_dir(model_dir), name="svc", engine="fast", max_beam_width=MAX_W).handle([body])
    assert plain.prefix_cache == {}  # the store is off by default


def test_service_settings_are_validated(service):
    with pytest.raises(ValueError, match="engine 'nope'"):
        RecService(service.model, name="x", engine="nope")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_beam_width"):
            RecService(service.model, name="x", max_beam_width=bad)


def test_warm_up_runs_the_widest_beam(service):
    assert service.warm_up() > 0


# ---- the handler, loaded and run as TorchServe does ---------------------------------------------
class Context:
    """The parts of ts.context.Context the handler uses, with TorchServe's real metrics cache."""

    def __init__(self, model_dir: Path, model_yaml_config: dict, name: str = "m"):
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

        self.model_name, self.model_yaml_config = name, model_yaml_config
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 4}
        metrics_yaml = Path(importlib.util.find_spec("ts").origin).parent / "configs" / "metrics.yaml"
        self.metrics = MetricsCacheYamlImpl(config_file_path=str(metrics_yaml))
        self.metrics.initialize_cache()
        self.metrics.model_name = name
        self.status, self.content_type = {}, {}

    def set_response_content_type(self, idx, value):
        self.content_type[idx] = value

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = (code, phrase)


@pytest.fixture(scope="module")
def archive(model_dir, tmp_path_factory):
    pytest.importorskip("model_archiver")
    out = tmp_path_factory.mktemp("mar")
    options = PackageOptions(max_beam_width=MAX_W, batch_size=4, max_batch_delay_ms=20, min_workers=2, max_workers=2)
    return package_model(model_dir, "unit", out, options)


@pytest.fixture(scope="module")
def handler(archive, tmp_path_factory):
    ts_util = pytest.importorskip("ts.utils.util")
    extracted = tmp_path_factory.mktemp("extracted")
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(extracted)
    spec = importlib.util.spec_from_file_location("xgr_handler", extracted / "xgr_handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [handler_class] = ts_util.list_classes_from_module(module)  # TorchServe's rule: exactly one class
    assert not hasattr(module, "handle")  # else TorchServe would take a module-level function instead
    yaml_config = yaml.safe_load((extracted / MODEL_CONFIG_FILE).read_text())
    instance = handler_class()
    threads = torch.get_num_threads()
    try:
        instance.initialize(Context(extracted, yaml_config, name="unit"))
    finally:  # initialize shares the cores among the workers: leave this process as it was
        torch.set_num_threads(threads)
    assert instance.initialized
    return instance, extracted, yaml_config


def test_archive_holds_handler_model_names_and_settings(archive, handler):
    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert {"xgr_handler.py", "config.yaml", "model.safetensors", "catalog.safetensors", ITEM_NAMES_FILE,
            MODEL_CONFIG_FILE} <= names
    assert manifest["model"]["handler"] == "xgr_handler.py" and manifest["model"]["modelName"] == "unit"
    _, _, config = handler
    assert config["handler"] == {"engine": "fast", "max_beam_width": MAX_W, "linear_precision": "dtype"}
    assert (config["batchSize"], config["maxBatchDelay"], config["minWorkers"], config["maxWorkers"]) == (4, 20, 2, 2)
    assert config["responseTimeout"] >= 1 and config["startupTimeout"] >= 1


def test_handler_answers_a_batch_with_statuses_content_types_and_metrics(handler, items, caplog):
    instance, extracted, config = handler
    context = Context(extracted, config, name="unit")
    good = {"history": items[:3], "k": 3}
    data = [{"body": good}, {"body": b'{"k": '}, {"body": json.dumps(good).encode()},
            {"data": bytearray(json.dumps({"history_tokens": [64], "k": 9}).encode())}, {"other": 1}]
    with caplog.at_level(logging.INFO):
        out = instance.handle(data, context)
    assert len(out) == 5 and all(isinstance(o, str) for o in out)
    bodies = [json.loads(o) for o in out]
    assert context.content_type == dict.fromkeys(range(5), "application/json")
    assert context.status == {1: (400, "Bad Request"), 3: (400, "Bad Request"), 4: (400, "Bad Request")}
    assert bodies[0]["items"] == bodies[2]["items"]
    assert same_items(bodies[0]["items"], library_answer(instance.service, items[:3], 3))
    assert [bodies[i]["field"] for i in (1, 3, 4)] == ["body", "k", "other"]
    logged = caplog.text
    for metric in ("xgr_parse_seconds", "xgr_engine_seconds", "xgr_format_seconds", "xgr_batch_size.Count:5",
                   "xgr_beam_width.Count:8", "xgr_rejected_requests_total.Count:3", "xgr_batches_total"):
        assert f"[METRICS]{metric}" in logged
    assert "Failed to update metric" not in logged and "could not report metrics" not in logged


def test_handler_publishes_the_prompt_store_metrics(handler, caplog):
    instance, extracted, config = handler
    stats = BatchStats(batch_size=1, prefix_cache={"hit_tokens": 48, "prompt_tokens": 60, "evictions": 2,
                                                     "bytes_held": 4096, "hit_ratio": 0.5})
    with caplog.at_level(logging.INFO):
        instance._report(Context(extracted, config, name="unit"), stats)
    for metric in ("xgr_prefix_cache_hit_tokens_total.Count:48", "xgr_prefix_cache_prompt_tokens_total.Count:60",
                   "xgr_prefix_cache_evictions_total.Count:2", "xgr_prefix_cache_bytes_held.Bytes:4096",
                   "xgr_prefix_cache_hit_ratio"):
        assert f"[METRICS]{metric}" in caplog.text
    assert "Failed to update metric" not in caplog.text


# ---- packaging errors and the command line --------------------------------------------------------
def test_package_command_writes_the_archive(model_dir, tmp_path, capsys):
    pytest.importorskip("model_archiver")
    from xgr_toolkit.cli import main

    assert main(["package", str(model_dir), "--name", "cli-model", "--out", str(tmp_path), "--beam-width", "4"]) == 0
    mar = tmp_path / "cli-model.mar"
    assert capsys.readouterr().out.strip() == str(mar)
    with zipfile.ZipFile(mar) as z:
        assert yaml.safe_load(z.read(MODEL_CONFIG_FILE))["handler"]["max_beam_width"] == 4


@pytest.mark.parametrize("args, message", [
    (["--beam-width", "0"], "argument --beam-width: expected an integer >= 1; got '0'"),
    (["--engine", "nope"], "argument --engine: invalid choice: 'nope'"),
    (["--workers", "0"], "argument --workers: expected an integer >= 1; got '0'"),
    (["--name", "bad name"], "--name"),
])
def test_package_command_rejects_bad_settings(model_dir, tmp_path, capsys, args, message):
    from xgr_toolkit.cli import main

    argv = ["package", str(model_dir), "--name", "ok", "--out", str(tmp_path), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.mar"))


def test_unset_package_options_come_from_the_model_dirs_serve_config(model_dir, tmp_path):
    pytest.importorskip("model_archiver")
    serve = load_model_dir(model_dir).config.serve
    mar = package_model(model_dir, "defaults", tmp_path, PackageOptions())
    with zipfile.ZipFile(mar) as z:
        config = yaml.safe_load(z.read(MODEL_CONFIG_FILE))
    assert config["batchSize"] == serve.max_batch and config["maxBatchDelay"] == round(serve.max_wait_ms)
    assert config["handler"] == {"engine": "fast", "max_beam_width": 128, "linear_precision": "dtype"}


def test_the_archive_records_the_linear_precision_it_was_built_for(tmp_path):
    pytest.importorskip("model_archiver")
    serve = ServeConfig(device="cuda", dtype="bfloat16", linear_precision="float8")  # loads on any machine
    model_dir = random_model_dir(tmp_path / "fp8", ModelConfig(), num_items=50, serve=serve)
    with zipfile.ZipFile(package_model(model_dir, "fp8", tmp_path / "store", PackageOptions())) as z:
        assert yaml.safe_load(z.read(MODEL_CONFIG_FILE))["handler"]["linear_precision"] == "float8"


def test_package_rejects_an_incomplete_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "config.yaml").write_text("{}")
        package_model(tmp_path, "x", tmp_path / "out")


def test_the_handler_ships_from_the_source_tree():
    assert HANDLER_FILE.is_file() and HANDLER_FILE.name == "xgr_handler.py"


# ---- config.properties: the production template and the harness's own -----------------------------
def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_production_template_binds_loopback_with_token_auth_and_prometheus():
    import xgr_toolkit.serving

    props = _properties((Path(xgr_toolkit.serving.__file__).parent / "config.properties").read_text())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["metrics_mode"] == "prometheus" and props["model_metrics_auto_detect"] == "true"
    assert int(props["max_request_size"]) > 0 and int(props["max_response_size"]) > 0


def test_the_local_server_config_is_loopback_on_free_ports(tmp_path):
    from xgr_toolkit.serving.server import TorchServe, free_ports

    ports = free_ports(5)
    assert len(set(ports)) == 5
    server = TorchServe(tmp_path, {"m": "m.mar"}, token_auth=False, properties={"job_queue_size": "7"})
    server.ports = dict(zip(("inference", "management", "metrics", "grpc_inference", "grpc_management"), ports,
                            strict=True))
    props = server.config_properties()
    assert props["grpc_inference_port"] == str(ports[3]) and props["grpc_management_address"] == "127.0.0.1"
    assert props["inference_address"] == f"http://127.0.0.1:{ports[0]}"
    assert props["metrics_address"] == f"http://127.0.0.1:{ports[2]}"
    assert props["disable_token_authorization"] == "true" and props["job_queue_size"] == "7"
    secured = TorchServe(tmp_path, {}, token_auth=True)
    secured.ports = server.ports
    assert secured.config_properties()["disable_token_authorization"] == "false"
    server.stop()  # never started: nothing to do, no error
