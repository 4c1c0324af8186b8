"""End to end through a real TorchServe on loopback: one server for the module, stopped even on failure.

The archive is built by `xgr package`'s library code with two workers (minWorkers = maxWorkers = 2),
batchSize 4 and a batch delay long enough for concurrent requests to share a batch.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from xgr_toolkit import build_request, load_model_dir, preset
from xgr_toolkit.engines import build_engine
from xgr_toolkit.serving import PackageOptions, TorchServe, TorchServeError, package_model, save_item_names
from xgr_toolkit.serving.server import http_request
from xgr_toolkit.synthetic import random_model_dir

pytestmark = pytest.mark.serve

NAME, MAX_W, WORKERS = "e2e", 16, 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = random_model_dir(tmp_path_factory.mktemp("serving-e2e") / "model", preset("tiny"), num_items=500, seed=11)
    save_item_names(path, {i: f"item-{i}" for i in load_model_dir(path).catalog.item_ids.tolist()})
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model_dir(model_dir)


@pytest.fixture(scope="module")
def items(model):
    return model.catalog.item_ids.tolist()


@pytest.fixture(scope="module")
def server(model_dir, serve_model):
    options = PackageOptions(max_beam_width=MAX_W, batch_size=4, max_batch_delay_ms=150, min_workers=WORKERS,
                             max_workers=WORKERS, response_timeout_s=60)
    with serve_model(model_dir, NAME, options) as ts:
        ts.initial_pids = sorted(w["pid"] for w in ts.workers(NAME))
        yield ts


def library(model, body: dict) -> list[dict]:
    """What the library answers for a request body."""
    history = {"history_items": body["history"]} if "history" in body else {"history_tokens": body["history_tokens"]}
    request = build_request(model.config.model, model.catalog, **history, beam_width=body.get("beam_width", MAX_W),
                            top_k=body["k"], max_beam_width=MAX_W, exclude_items=body.get("exclude", ()),
                            exclude_history=body.get("exclude_history", False),
                            normalize=body.get("normalize", model.config.beam.normalize))
    [answer] = build_engine(model, "reference").recommend([request])
    return [item.to_json() for item in answer]


def assert_same_items(served: list[dict], expected: list[dict]) -> None:
    """Identical items and SIDs, in order; scores to 1e-5 (the worker may use another thread count)."""
    assert [(i["item_id"], i["sid"]) for i in served] == [(i["item_id"], i["sid"]) for i in expected]
    assert [i["score"] for i in served] == pytest.approx([i["score"] for i in expected], abs=1e-5)


def test_two_workers_are_ready(server):
    workers = server.workers(NAME)
    assert [w["status"] for w in workers] == ["READY"] * WORKERS
    assert len(set(server.initial_pids)) == WORKERS


@pytest.mark.parametrize("make_body", [
    lambda it: {"history": it[:3], "k": 5},
    lambda it: {"history": it[10:14], "k": 3, "beam_width": 4, "exclude": it[20:30], "exclude_history": True},
    lambda it: {"history_tokens": [64, 130, 200, 70, 140, 210], "k": 4, "beam_width": 8, "normalize": "level"},
], ids=["items", "exclusions", "tokens"])
def test_answers_equal_the_library(server, model, items, make_body):
    body = make_body(items)
    status, answer, headers = server.predict(NAME, body)
    assert status == 200, answer
    assert headers.get("content-type", headers.get("Content-Type")) == "application/json"
    assert_same_items(answer["items"], library(model, body))
    assert answer["model"] == NAME and set(answer["timing_ms"]) == {"parse", "engine", "total"}
    assert all(item["name"] == f"item-{item['item_id']}" for item in answer["items"])


def test_answer_equals_xgr_recommend(server, model_dir, items, capsys):
    from xgr_toolkit.cli import main

    history = items[40:45]
    assert main(["recommend", str(model_dir), "--history-items", " ".join(map(str, history)), "--beam-width", "12",
                 "--top-k", "6", "--exclude-history"]) == 0
    expected = json.loads(capsys.readouterr().out)["items"]
    status, answer, _ = server.predict(NAME, {"history": history, "k": 6, "beam_width": 12, "exclude_history": True})
    assert status == 200, answer
    assert_same_items(answer["items"], expected)


def test_a_body_without_the_json_content_type_is_parsed_too(server, model, items):
    body = {"history": items[:2], "k": 2}
    status, answer, _ = server.predict(NAME, json.dumps(body), content_type="text/plain")
    assert status == 200, answer
    assert_same_items(answer["items"], library(model, body))


def test_a_history_too_long_is_truncated_and_says_so(server, model, items):
    cfg = model.config.model
    keep = cfg.max_prompt_tokens // cfg.levels
    status, answer, _ = server.predict(NAME, {"history": items[:keep + 4], "k": 3})
    assert status == 200, answer
    assert answer["truncated"] == 4 * cfg.levels
    assert_same_items(answer["items"], library(model, {"history": items[4:keep + 4], "k": 3}))


def test_kserve_v1_instances_are_answered_as_predictions(server, model, items):
    instances = [{"history": items[:2], "k": 2}, {"history": items[3:6], "k": 3, "beam_width": 8}]
    status, answer, _ = server.predict(NAME, {"instances": instances})
    assert status == 200, answer
    assert len(answer["predictions"]) == 2
    for prediction, instance in zip(answer["predictions"], instances, strict=True):
        assert_same_items(prediction["items"], library(model, instance))
    status, answer, _ = server.predict(NAME, {"instances": [instances[0], {"history": items[:2]}]})
    assert status == 400 and answer["field"] == "instances[1].k"


BAD = [  # (body, field): one of each class of bad input
    (b'{"history": [1000,', "body"),
    (b"[1, 2, 3]", "body"),
    ({"k": 3}, "history"),
    ({"history": "ITEMS", "": 0}, ""),  # unknown field (named "")
    ({"history": "ITEMS"}, "k"),
    ({"history": "ITEMS", "k": 3, "beam": 8}, "beam"),
    ({"history": "ITEMS", "k": "3"}, "k"),
    ({"history": "1000 1001", "k": 3}, "history"),
    ({"history": "ITEMS", "k": 3, "exclude_history": "yes"}, "exclude_history"),
    ({"history": [1, 2], "k": 3}, "history"),  # unknown item ids
    ({"history": "ITEMS", "k": 3, "exclude": [7]}, "exclude"),
    ({"history": [], "k": 3}, "history"),
    ({"history": "ITEMS", "k": 0}, "k"),
    ({"history": "ITEMS", "k": 9, "beam_width": 8}, "k"),
    ({"history": "ITEMS", "k": 3, "beam_width": MAX_W + 1}, "beam_width"),
    ({"history_tokens": [64, 100000], "k": 3}, "history_tokens"),
]


@pytest.mark.parametrize("body, field", BAD, ids=[f"{i}-{f or 'unknown'}" for i, (_, f) in enumerate(BAD)])
def test_bad_input_gets_400_with_a_json_body_naming_the_field(server, items, body, field):
    if isinstance(body, dict) and body.get("history") == "ITEMS":
        body = {**body, "history": items[:2]}
    status, answer, headers = server.predict(NAME, body)
    assert status == 400
    assert headers.get("content-type", headers.get("Content-Type")) == "application/json"
    assert answer["field"] == field and isinstance(answer["error"], str) and answer["error"]


def test_a_body_over_the_size_limit_is_refused_before_the_handler(server, items):
    body = json.dumps({"history": items[:1] * 200_000, "k": 1})  # about 1 MB over max_request_size (1 MiB)
    assert len(body) > 1 << 20
    try:
        status, _, _ = server.predict(NAME, body)
    except (ConnectionError, urllib.error.URLError) as err:  # it may close the connection mid-upload
        assert isinstance(err, ConnectionError) or isinstance(getattr(err, "reason", None), ConnectionError)
        return
    assert status == 413


def test_a_batch_with_bad_requests_answers_the_good_ones(server, model, items):
    bodies = [{"history": [10**6 + i], "k": 2} if i % 4 == 1 else {"history": items[i:i + 3], "k": 3}
              for i in range(16)]  # every fourth one names an unknown item
    with ThreadPoolExecutor(len(bodies)) as pool:  # concurrent, so that they share batches
        answers = list(pool.map(lambda b: server.predict(NAME, b), bodies))
    for i, (body, (status, answer, _)) in enumerate(zip(bodies, answers, strict=True)):
        if i % 4 == 1:
            assert status == 400 and answer["field"] == "history", answer
        else:
            assert status == 200, answer
            assert_same_items(answer["items"], library(model, body))
    assert max(a["batch_size"] for s, a, _ in answers if s == 200) > 1  # requests did share a batch
    served_by = set()
    deadline = time.monotonic() + 10
    while len(served_by) < WORKERS and time.monotonic() < deadline:  # the frontend's log, per worker thread
        log = (server.log_dir / "ts_log.log").read_text(errors="replace")
        served_by = set(re.findall(rf"W-(\d+)-{NAME}_[\d.]+ \S+ - Backend response time", log))
        time.sleep(0.2)
    assert len(served_by) == WORKERS, f"only workers {served_by} answered"


def test_metrics_endpoint_shows_the_custom_metrics(server):
    wanted = ("xgr_parse_seconds_count", "xgr_engine_seconds_count", "xgr_format_seconds_count", "xgr_batch_size",
              "xgr_beam_width", "xgr_requests_total", "xgr_rejected_requests_total", "xgr_batches_total")
    deadline, values = time.monotonic() + 15, {}
    while time.monotonic() < deadline:  # backend metrics reach the frontend through the workers' logs
        values = {m.group(1): float(m.group(2)) for m in re.finditer(
            rf'^(xgr_\w+){{ModelName="{NAME}"[^}}]*}} (\S+)$', server.metrics(), re.M)}
        if all(w in values for w in wanted) and values["xgr_rejected_requests_total"] >= len(BAD):
            break
        time.sleep(0.5)
    assert all(w in values for w in wanted), sorted(values)
    assert values["xgr_rejected_requests_total"] >= len(BAD)
    assert values["xgr_requests_total"] > values["xgr_batches_total"] >= values["xgr_engine_seconds_count"] > 0
    assert 1 <= values["xgr_beam_width"] <= MAX_W


def test_a_broken_archive_fails_fast_and_leaves_nothing_running(server, model_dir, tmp_path):
    handler = tmp_path / "two_classes.py"  # TorchServe's rule: one class a handler file
    handler.write_text("class A:\n    def initialize(self, context): pass\n    def handle(self, data, context): "
                       "return data\n\n\nclass B:\n    pass\n")
    package_model(model_dir, "broken", tmp_path, PackageOptions(max_beam_width=4), handler=handler)
    broken = TorchServe(tmp_path, {"broken": "broken.mar"}, start_timeout=60)
    start = time.monotonic()
    with pytest.raises(TorchServeError, match="failed to load") as info:
        broken.start()
    assert time.monotonic() - start < 60
    assert "Expected only one class" in str(info.value)  # the worker's traceback comes with the error
    assert broken.java_pid is not None and not _running(broken.java_pid)
    assert not broken.workdir.exists()  # stopped and cleaned up by start itself


def test_token_authorization_when_on(server, model_dir, items, tmp_path):
    package_model(model_dir, "secured", tmp_path, PackageOptions(max_beam_width=4))
    with TorchServe(tmp_path, {"secured": "secured.mar"}, token_auth=True, start_timeout=120) as secured:
        body = {"history": items[:2], "k": 2}
        status, _, _ = http_request(f"{secured.inference_url}/predictions/secured", body, method="POST")
        assert status == 400  # no key: TorchServe's InvalidKeyException
        status, answer, _ = secured.predict("secured", body)  # with the inference key from key_file.json
        assert status == 200 and len(answer["items"]) == 2
        # The readiness check of docs/serving.md: /ping needs the inference key too.
        assert http_request(f"{secured.inference_url}/ping")[0] == 400
        status, _, ping = http_request(f"{secured.inference_url}/ping", headers=secured.auth("inference"))
        assert status == 200 and json.loads(ping)["status"] == "Healthy"


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def test_the_server_is_healthy_afterwards(server, model, items):
    status, _, body = http_request(f"{server.inference_url}/ping")
    assert status == 200 and json.loads(body)["status"] == "Healthy"
    workers = server.workers(NAME)
    assert [w["status"] for w in workers] == ["READY"] * WORKERS
    assert sorted(w["pid"] for w in workers) == server.initial_pids  # no worker died on the bad input
    status, answer, _ = server.predict(NAME, {"history": items[:3], "k": 5})
    assert status == 200
    assert_same_items(answer["items"], library(model, {"history": items[:3], "k": 5}))
