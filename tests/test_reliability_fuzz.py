"""Fuzzing a real TorchServe on loopback with generated malformed requests (hypothesis).

More than 1,000 malformed bodies: wrong types, huge values, unicode, deep nesting, missing and extra
fields, not JSON at all, bad KServe instances, and bodies over ``max_request_size``. Each must get a 4xx
(400 from the handler, with a JSON ``{"error", "field"}``; 413 from TorchServe's frontend, before the
handler, for a body over the size limit), and be invalid by construction (the library's own parser
agrees). Every example sends 8 of them concurrently with one valid request, whose answer must stay exact;
at the end the worker that started is still the one serving, healthy and exact.
"""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xgr_toolkit import preset
from xgr_toolkit.request import RequestError
from xgr_toolkit.serving import PackageOptions, RecService
from xgr_toolkit.serving.loadgen import LoadOptions, compare_items, make_cases, run_load
from xgr_toolkit.serving.server import http_request
from xgr_toolkit.synthetic import random_model_dir

pytestmark = pytest.mark.serve

NAME, MAX_W = "fuzz", 16
MAX_REQUEST = 1 << 20  # the server's max_request_size
PER_EXAMPLE, EXAMPLES, WANTED = 8, 135, 1000
FIELDS = ("history", "history_tokens", "k", "beam_width", "exclude", "exclude_history", "normalize", "request_id")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("fuzz") / "model", preset("tiny"), num_items=300, seed=31)


@pytest.fixture(scope="module")
def service(model_dir):
    """The library's own parser, to confirm that every generated body is indeed invalid."""
    return RecService.from_model_dir(model_dir, name=NAME, max_beam_width=MAX_W)


@pytest.fixture(scope="module")
def server(model_dir, serve_model):
    options = PackageOptions(max_beam_width=MAX_W, batch_size=8, max_batch_delay_ms=5, response_timeout_s=30)
    with serve_model(model_dir, NAME, options, max_request_size=str(MAX_REQUEST)) as ts:
        ts.first_pid = ts.workers(NAME)[0]["pid"]
        yield ts


# ---- what is generated ----------------------------------------------------------------------------------
class Body(bytes):
    """A body with a short repr: hypothesis prints failing examples, and some bodies are a megabyte."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {bytes(self[:100])!r}{'...' if len(self) > 100 else ''}>"


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                      max_size=3), max_leaves=6)
huge_ints = st.integers(min_value=2**63, max_value=2**300) | st.integers(min_value=-2**300, max_value=-2**63 - 1)
unicode_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)


def malformed(items: list[int], vocab: int):
    """(kind, body bytes) strategies, each body invalid by construction."""
    catalog = set(items)
    base = st.builds(lambda h, k: {"history": h, "k": k}, st.lists(st.sampled_from(items), min_size=1, max_size=4),
                     st.integers(1, 4))

    def valid_for(name, v) -> bool:  # could this value of this field be part of a valid request?
        if name in ("k", "beam_width"):
            return is_int(v) and 1 <= v <= MAX_W
        if name in ("history", "exclude"):
            return isinstance(v, list) and all(is_int(x) and x in catalog for x in v) and (bool(v) or name == "exclude")
        if name == "history_tokens":
            return isinstance(v, list) and bool(v) and all(is_int(x) and 0 <= x < vocab for x in v)
        if name == "exclude_history":
            return isinstance(v, bool)
        if name == "normalize":
            return v in ("vocab", "level")
        return isinstance(v, str) and 1 <= len(v) <= 128  # request_id

    def put(body, name, value):
        body = dict(body)
        if name == "history_tokens":
            body.pop("history")
        body[name] = value
        return body

    def dumps(obj, ascii_only=True) -> bytes:
        return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8")

    field = st.sampled_from(FIELDS)
    wrong_type = st.tuples(base, field, json_values | huge_ints).filter(lambda t: not valid_for(t[1], t[2])).map(
        lambda t: ("wrong type", dumps(put(*t))))
    huge = st.tuples(base, field, st.one_of(
        huge_ints, st.lists(huge_ints, min_size=1, max_size=3), st.floats(min_value=1e300),
        st.integers(10_000, 120_000).map(lambda n: "x" * n),  # long strings
        st.integers(40, 80_000).map(lambda n: [10**9 + 7] * n),  # long arrays of unknown ids, under 1 MB
    )).filter(lambda t: not valid_for(t[1], t[2])).map(lambda t: ("huge", dumps(put(*t))))
    unicode = st.one_of(
        st.tuples(base, unicode_text.filter(lambda s: s not in FIELDS), json_values).map(
            lambda t: ("unicode key", dumps({**t[0], t[1]: t[2]}, ascii_only=False))),
        st.tuples(base, st.sampled_from(("normalize", "history", "k")), unicode_text).filter(
            lambda t: not valid_for(t[1], t[2])).map(lambda t: ("unicode value", dumps(put(*t), ascii_only=False))),
        base.map(lambda b: ("lone surrogate", dumps(b)[:-1] + b', "normalize": "\\ud800"}')),
        base.map(lambda b: ("invalid utf-8", dumps(b)[:-1] + b', "normalize": "\xff\xfe"}')),
    )
    nesting = st.tuples(st.integers(50, 150_000), st.sampled_from(("body", "history", "k", "exclude"))).map(
        lambda t: ("nesting", (b"[" * t[0] + b"]" * t[0]) if t[1] == "body" else
                   b'{"history": [1], "k": 1, "' + t[1].encode() + b'": ' + b"[" * t[0] + b"]" * t[0] + b"}"))
    missing = st.one_of(
        base.map(lambda b: ("missing k", dumps({"history": b["history"]}))),
        base.map(lambda b: ("missing history", dumps({"k": b["k"]}))),
        st.just(("empty object", b"{}")),
        base.map(lambda b: ("both histories", dumps({**b, "history_tokens": [64]}))))
    extra = st.tuples(base, st.text(max_size=20).filter(lambda s: s not in FIELDS), json_values).map(
        lambda t: ("extra field", dumps({**t[0], t[1]: t[2]})))
    not_an_object = json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: ("not an object", dumps(v)))
    not_json = st.one_of(
        st.binary(max_size=200).map(lambda b: ("bytes", b)),
        st.just(("empty body", b"")),
        st.tuples(base, st.floats(0.0, 0.99)).map(lambda t: ("truncated JSON", dumps(t[0])[:int(len(dumps(t[0])) *
                                                                                             t[1])])),
        st.integers(4301, 20_000).map(lambda n: ("huge number", b'{"history": [1], "k": ' + b"9" * n + b"}")),
    )
    kserve = st.one_of(
        json_values.filter(lambda v: not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))).map(
            lambda v: ("bad instances", dumps({"instances": v}))),
        st.tuples(base, base, field, json_values).filter(lambda t: not valid_for(t[2], t[3])).map(
            lambda t: ("bad instance", dumps({"instances": [t[0], put(t[1], t[2], t[3])]}))))
    oversize = st.integers(MAX_REQUEST + 1, MAX_REQUEST + 400_000).map(
        lambda n: ("oversize", b'{"history": [1], "k": 1, "normalize": "' + b"v" * (n - 40) + b'"}'))
    # Whatever its kind, a body over the limit is refused by TorchServe's frontend before the handler.
    return st.one_of(wrong_type, huge, unicode, nesting, missing, extra, not_an_object, not_json, kserve,
                     oversize).map(lambda t: ("oversize" if len(t[1]) > MAX_REQUEST else t[0], Body(t[1])))


# ---- the test -----------------------------------------------------------------------------------------
def post(server, body: bytes, content_type: str = "application/json"):
    status, headers, data = http_request(server.url, body, method="POST", headers={"Content-Type": content_type},
                                         timeout=30)
    return status, {k.lower(): v for k, v in headers.items()}, data


def post_expecting_continue(server, body: bytes, content_type: str = "application/json"):
    """POST with ``Expect: 100-continue``: the body goes only after a 100, so a body over the limit is answered
    413 before it is sent. (A client that sends it blindly may instead see TorchServe reset the connection
    mid-upload: test_serving_e2e.py.)"""
    with socket.create_connection(("127.0.0.1", server.ports["inference"]), timeout=30) as sock:
        sock.sendall(f"POST /predictions/{NAME} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    status_line, *lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines if ": " in line)
    return int(status_line.split()[1]), headers, head.split(b"\r\n\r\n", 1)[1]


def test_a_thousand_malformed_requests_each_get_a_clear_4xx_and_valid_ones_stay_exact(server, service, model_dir):
    model = service.model
    items, vocab = model.catalog.item_ids.tolist(), model.config.model.vocab_size
    valid = make_cases(model_dir, 16, beam_width=MAX_W, k=4, seed=9)
    seen: dict[str, int] = {}
    lock = threading.Lock()
    pool = ThreadPoolExecutor(PER_EXAMPLE + 1)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(bodies=st.lists(malformed(items, vocab), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE),
           good=st.sampled_from(valid), content_type=st.sampled_from(["application/json", "text/plain"]))
    def check(bodies, good, content_type):
        for kind, body in bodies:  # invalid by construction: the library's parser agrees
            if kind != "oversize":
                with pytest.raises(RequestError):
                    service.parse(body)
        rid = f"good-{len(seen)}"
        futures = [pool.submit(post_expecting_continue if kind == "oversize" else post, server, body, content_type)
                   for kind, body in bodies]
        answer = pool.submit(post, server, json.dumps({**good.body, "request_id": rid}).encode())
        for (kind, body), future in zip(bodies, futures, strict=True):
            status, headers, data = future.result()
            with lock:
                seen[kind] = seen.get(kind, 0) + 1
            if kind == "oversize":  # TorchServe's frontend, before the handler: "413 Request Entity Too Large"
                assert status == 413 and int(headers.get("content-length", 0)) == 0, (len(body), status, headers)
                continue
            assert status == 400, (kind, body[:200], status, data[:300])
            assert headers.get("content-type") == "application/json"
            error = json.loads(data)
            assert isinstance(error["error"], str) and error["error"], error
            assert isinstance(error["field"], str), error  # "" for a field named ""
            assert len(data) < 2000  # clipped: a huge bad value is never echoed whole
        status, _, data = answer.result()
        assert status == 200, data[:300]
        reply = json.loads(data)
        assert reply["request_id"] == rid and compare_items(reply["items"], good.expected, 1e-5) is None, reply

    try:
        check()
    finally:
        pool.shutdown()
    total = sum(seen.values())
    print(f"{total} malformed requests: {dict(sorted(seen.items()))}")
    assert total >= WANTED and len(seen) >= 15, seen
    # Still healthy, still the same worker (no crash, no restart), still exact.
    status, _, data = http_request(f"{server.inference_url}/ping", timeout=10)
    assert status == 200 and json.loads(data)["status"] == "Healthy"
    [worker] = server.workers(NAME)
    assert worker["status"] == "READY" and worker["pid"] == server.first_pid
    report = run_load(server.url, valid, LoadOptions(concurrency=4, requests=64, seconds=30))
    assert report.passed, report.text()
