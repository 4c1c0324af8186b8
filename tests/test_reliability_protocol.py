"""The protocol's parts that reliability leans on, without a server: ``request_id`` echoed in every answer
and error, and bodies that once made the worker answer 500 (deep nesting, huge numbers) now a clear 400."""

from __future__ import annotations

import json

import pytest

from xgr_toolkit import preset
from xgr_toolkit.request import RequestError
from xgr_toolkit.serving import RecService
from xgr_toolkit.serving.protocol import MAX_REQUEST_ID, decode_body, error_body, request_id_of
from xgr_toolkit.synthetic import random_model_dir

MAX_W = 8


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = random_model_dir(tmp_path_factory.mktemp("protocol") / "model", preset("tiny"), num_items=100, seed=8)
    return RecService.from_model_dir(path, name="p", max_beam_width=MAX_W)


@pytest.fixture(scope="module")
def items(service):
    return service.model.catalog.item_ids.tolist()


def test_request_ids_are_echoed_in_answers_errors_and_predictions(service, items):
    bodies = [{"history": items[:2], "k": 2, "request_id": "a-1"},
              {"history": [1], "k": 2, "request_id": "a-2"},  # unknown item: 400, still with its id
              json.dumps({"history": items[:1], "k": 1, "request_id": "a-3"}).encode(),
              {"history": items[:1], "k": 1},  # no id: none in the answer
              {"instances": [{"history": items[:1], "k": 1, "request_id": "i-0"}, {"history": items[:2], "k": 1}]},
              b'{"history": [1], "k": 1, "request_id": "a-6"',  # not JSON: no id can be read
              {"history": items[:1], "k": 0, "request_id": ""}]  # an invalid id: not echoed
    replies, _ = service.handle(bodies)
    assert [r.status for r in replies] == [200, 400, 200, 200, 200, 400, 400]
    assert [r.body.get("request_id") for r in replies] == ["a-1", "a-2", "a-3", None, None, None, None]
    assert [p.get("request_id") for p in replies[4].body["predictions"]] == ["i-0", None]
    assert replies[1].body["field"] == "history"


@pytest.mark.parametrize("value, why", [("", "0 characters"), ("x" * (MAX_REQUEST_ID + 1), "129 characters"),
                                        (7, "integer"), (["a"], "array"), (None, "null")])
def test_a_bad_request_id_is_a_400_naming_it(service, items, value, why):
    [reply], _ = service.handle([{"history": items[:1], "k": 1, "request_id": value}])
    assert reply.status == 400 and reply.body["field"] == "request_id" and why in reply.body["error"]
    assert request_id_of({"request_id": value}) is None


def test_unicode_request_ids_are_fine(service, items):
    [reply], _ = service.handle([{"history": items[:1], "k": 1, "request_id": "żółw-🐢-1"}])
    assert reply.status == 200 and reply.body["request_id"] == "żółw-🐢-1"


@pytest.mark.parametrize("body, words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"history": ' + b"[" * 50_000 + b"]" * 50_000 + b', "k": 1}', "nested too deeply"),
    (b'{"history": [1], "k": ' + b"9" * 5000 + b"}", "unreadable JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_bodies_that_break_the_json_parser_are_a_400(service, body, words):
    with pytest.raises(RequestError, match=words):
        decode_body(body)
    [reply], stats = service.handle([body])
    assert reply.status == 400 and reply.body["field"] == "body" and words in reply.body["error"]
    assert stats.failed == 0


def test_error_bodies_never_echo_a_huge_value_whole(service, items):
    [reply], _ = service.handle([{"history": items[:1], "k": "x" * 500_000}])
    assert reply.status == 400 and reply.body["field"] == "k"
    assert len(json.dumps(reply.body)) < 1000 and "500" in reply.body["error"]  # "... (500 0NN characters)"
    [reply], _ = service.handle([{"history": items[:1], "k": 1, "é" * 100_000: 1}])
    assert reply.status == 400 and len(json.dumps(reply.body)) < 2000
    body = error_body(RequestError("f" * 1000, "m" * 10_000))
    assert len(body["field"]) < 200 and len(body["error"]) < 600
