"""The served JSON protocol: every class of bad input names its field; good input becomes the right request.

Fast, no server: xgr_toolkit.serving.protocol is what the TorchServe handler calls.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from xgr_toolkit import ScoredItem, build_request, load_model_dir, preset
from xgr_toolkit.request import RecRequest, RequestError
from xgr_toolkit.serving.protocol import decode_body, error_body, parse_body, parse_request, response_body
from xgr_toolkit.synthetic import random_model_dir

MAX_W = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = random_model_dir(tmp_path_factory.mktemp("serving-protocol") / "model", preset("tiny"), num_items=300,
                            seed=3)
    return load_model_dir(path)


@pytest.fixture(scope="module")
def items(model):
    return model.catalog.item_ids.tolist()


def parse(model, body, **kw):
    return parse_request(body, model.config.model, model.catalog, max_beam_width=MAX_W, **kw)


def field_of(model, body) -> str:
    with pytest.raises(RequestError) as info:
        parse(model, body)
    assert info.value.message  # says what is allowed
    return info.value.field


# ---- bad input, one class at a time -----------------------------------------------------------
@pytest.mark.parametrize("raw", [b'{"history": [1000,', b"", b"not json", "{'history': [1]}", b"\xff\xfe{}"])
def test_malformed_or_undecodable_json_names_the_body(model, raw):
    assert field_of(model, raw) == "body"


@pytest.mark.parametrize("raw", [b"[1, 2]", b"42", b'"history"', b"null", [1, 2], None])
def test_a_body_that_is_not_an_object_names_the_body(model, raw):
    assert field_of(model, raw) == "body"


def test_unknown_field_is_named(model, items):
    assert field_of(model, {"history": items[:2], "k": 3, "top_k": 3}) == "top_k"
    assert field_of(model, {"history": items[:2], "k": 3, "Exclude": []}) == "Exclude"


@pytest.mark.parametrize("body, field", [
    ({"k": 3}, "history"),
    ({"history": [1000]}, "k"),
    ({}, "history"),
])
def test_missing_fields_are_named(model, body, field):
    assert field_of(model, body) == field


def test_history_and_history_tokens_together_are_rejected(model, items):
    assert field_of(model, {"history": items[:1], "history_tokens": [64], "k": 1}) == "history"


@pytest.mark.parametrize("change, field", [
    ({"k": "3"}, "k"),
    ({"k": 3.0}, "k"),
    ({"k": True}, "k"),
    ({"k": None}, "k"),
    ({"beam_width": "8"}, "beam_width"),
    ({"beam_width": 8.5}, "beam_width"),
    ({"history": "1000,1001"}, "history"),
    ({"history": {"a": 1}}, "history"),
    ({"history": [1000.0]}, "history"),
    ({"history": [True]}, "history"),
    ({"history": [2**70]}, "history"),
    ({"exclude": 1000}, "exclude"),
    ({"exclude": ["1000"]}, "exclude"),
    ({"exclude_history": "yes"}, "exclude_history"),
    ({"exclude_history": 1}, "exclude_history"),
    ({"normalize": "softmax"}, "normalize"),
    ({"normalize": ["vocab"]}, "normalize"),
])
def test_wrong_types_are_named(model, items, change, field):
    body = {"history": items[:2], "k": 3, **change}
    assert field_of(model, body) == field


def test_history_tokens_of_the_wrong_type_or_range_are_named(model):
    assert field_of(model, {"history_tokens": "64 65", "k": 1}) == "history_tokens"
    assert field_of(model, {"history_tokens": [64, 256], "k": 1}) == "history_tokens"  # vocab is 256
    assert field_of(model, {"history_tokens": [-1], "k": 1}) == "history_tokens"


def test_unknown_item_ids_are_named(model, items):
    unknown = max(items) + 1
    with pytest.raises(RequestError) as info:
        parse(model, {"history": [items[0], unknown], "k": 3})
    assert info.value.field == "history" and str(unknown) in info.value.message
    assert field_of(model, {"history": items[:1], "k": 3, "exclude": [unknown]}) == "exclude"


def test_empty_history_is_rejected(model):
    assert field_of(model, {"history": [], "k": 3}) == "history"
    assert field_of(model, {"history_tokens": [], "k": 3}) == "history_tokens"


@pytest.mark.parametrize("change, field", [
    ({"k": 0}, "k"),
    ({"k": -1}, "k"),
    ({"k": MAX_W + 1}, "k"),  # k <= the default beam, the widest one
    ({"k": 9, "beam_width": 8}, "k"),  # k <= the request's beam
    ({"beam_width": 0}, "beam_width"),
    ({"beam_width": MAX_W + 1}, "beam_width"),
])
def test_k_and_beam_width_out_of_range_are_named(model, items, change, field):
    body = {"history": items[:2], "k": 3, **change}
    with pytest.raises(RequestError) as info:
        parse(model, body)
    assert info.value.field == field
    assert "[1, " in info.value.message  # the allowed range


def test_too_many_exclusions_are_named(model, items):
    body = {"history": items[:2], "k": 1, "exclude": items[2:5]}
    assert len(parse(model, body, max_exclusions=3).exclude_items) == 3
    with pytest.raises(RequestError) as info:
        parse(model, body, max_exclusions=2)
    assert info.value.field == "exclude" and "at most 2" in info.value.message
    with pytest.raises(RequestError):  # the history counts too, with exclude_history
        parse(model, {**body, "exclude_history": True}, max_exclusions=4)


# ---- good input ---------------------------------------------------------------------------------
def test_defaults_beam_is_the_packaged_max_and_normalize_the_models(model, items):
    request = parse(model, {"history": items[:2], "k": 4}, normalize="level")
    assert request.beam_width == MAX_W and request.top_k == 4 and request.normalize == "level"
    assert request.exclude_items == frozenset() and request.truncated == 0


def test_parsed_request_equals_build_request(model, items):
    body = {"history": items[:3], "k": 5, "beam_width": 8, "exclude": items[5:7], "exclude_history": True,
            "normalize": "level"}
    expected = build_request(model.config.model, model.catalog, history_items=items[:3], beam_width=8, top_k=5,
                             max_beam_width=MAX_W, exclude_items=items[5:7], exclude_history=True,
                             normalize="level")
    assert parse(model, body) == expected
    assert expected.exclude_items == frozenset(items[:3] + items[5:7])


@pytest.mark.parametrize("wrap", [lambda b: b, json.dumps, lambda b: json.dumps(b).encode(),
                                  lambda b: bytearray(json.dumps(b).encode())])
def test_body_as_object_text_or_bytes_parses_the_same(model, items, wrap):
    body = {"history_tokens": [64, 130, 200], "k": 2}
    assert decode_body(wrap(body)) == body
    assert parse(model, wrap(body)).prompt == (64, 130, 200)


def test_history_too_long_keeps_the_most_recent_whole_items(model, items):
    cfg = model.config.model
    keep = cfg.max_prompt_tokens // cfg.levels  # 32 items of 3 tokens
    history = items[:keep + 5]
    request = parse(model, {"history": history, "k": 3})
    assert request.truncated == 5 * cfg.levels
    assert request.prompt == parse(model, {"history": history[-keep:], "k": 3}).prompt
    tokens = list(range(64, 64 + cfg.max_prompt_tokens + 7))
    request = parse(model, {"history_tokens": tokens, "k": 3})
    assert request.truncated == 7 and request.prompt == tuple(tokens[-cfg.max_prompt_tokens:])


def test_stable_truncation_drops_a_quarter_of_the_items_at_once_and_the_answer_says_so(model, items):
    """model.truncation: stable (the model's config.yaml): past the limit of 32 items, whole chunks of 8 go."""
    cfg = dataclasses.replace(model.config.model, truncation="stable")
    stable = dataclasses.replace(model, config=dataclasses.replace(model.config, model=cfg))
    keep = cfg.max_prompt_tokens // cfg.levels
    for extra, dropped in ((1, 8), (8, 8), (9, 16)):
        request = parse(stable, {"history": items[:keep + extra], "k": 3})
        assert request.truncated == dropped * cfg.levels
        assert request.prompt == parse(stable, {"history": items[dropped:keep + extra], "k": 3}).prompt
        body = response_body([], request, model="m", batch_size=1, timing_ms={})
        assert body["truncated"] == dropped * cfg.levels


# ---- KServe v1: {"instances": [...]} ------------------------------------------------------------
def test_kserve_instances_parse_each_request(model, items):
    body = {"instances": [{"history": items[:2], "k": 2}, {"history_tokens": [64, 130], "k": 1, "beam_width": 4}]}
    requests, instances = parse_body(body, model.config.model, model.catalog, max_beam_width=MAX_W)
    assert instances and [r.top_k for r in requests] == [2, 1] and requests[1].beam_width == 4
    plain, instances = parse_body({"history": items[:2], "k": 2}, model.config.model, model.catalog,
                                  max_beam_width=MAX_W)
    assert not instances and plain == requests[:1]


@pytest.mark.parametrize("body, field", [
    ({"instances": []}, "instances"),
    ({"instances": {"history": [1000], "k": 1}}, "instances"),
    ({"instances": [[1000]]}, "instances[0]"),
    ({"instances": [{"history_tokens": [64], "k": 1}, {"history_tokens": [64], "k": 0}]}, "instances[1].k"),
    ({"instances": [{"history_tokens": [64], "k": 1}], "k": 1}, "k"),
])
def test_bad_kserve_instances_are_named(model, body, field):
    with pytest.raises(RequestError) as info:
        parse_body(body, model.config.model, model.catalog, max_beam_width=MAX_W)
    assert info.value.field == field


# ---- response and error bodies --------------------------------------------------------------
def test_response_body_schema_with_names_and_truncation():
    items = [ScoredItem(1001, -1.5, (1, 2, 3)), ScoredItem(1002, -2.0, (1, 2, 4))]
    request = RecRequest(prompt=(64,), beam_width=4, top_k=2, truncated=6)
    body = response_body(items, request, model="m", batch_size=3, timing_ms={"engine": 1.23456},
                         names={1001: "kettle"})
    assert body == {"items": [{"item_id": 1001, "score": -1.5, "sid": [1, 2, 3], "name": "kettle"},
                              {"item_id": 1002, "score": -2.0, "sid": [1, 2, 4]}],
                    "model": "m", "batch_size": 3, "timing_ms": {"engine": 1.235}, "truncated": 6}
    plain = response_body(items, RecRequest(prompt=(64,), beam_width=4, top_k=2), model="m", batch_size=1,
                          timing_ms={})
    assert "truncated" not in plain and all("name" not in i for i in plain["items"])
    json.dumps(body)


def test_error_body_names_the_field():
    assert error_body(RequestError("k", "must be an integer in [1, 8]; got 0")) == {
        "error": "must be an integer in [1, 8]; got 0", "field": "k"}
