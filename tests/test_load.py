"""The load tool (`xgr load`, xgr_toolkit.serving.loadgen) against a small fake model server on loopback.

The fake answers ``{"history": [n], ...}`` with items made from n and echoes ``request_id``; a plan can make it
answer some requests with a 503, wrong items, another request's id, or late. So every count the report gives
is checked against what the fake was told to do. The real server is loaded in test_reliability_faults.py.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from xgr_toolkit.cli import main
from xgr_toolkit.serving import loadgen
from xgr_toolkit.serving.loadgen import LoadCase, LoadError, LoadOptions, check_loopback, compare_items, run_load


def answer_items(n: int) -> list[dict]:
    return [{"item_id": 10 * n + j, "score": -0.5 * j, "sid": [j, n % 7, 1]} for j in range(3)]


def cases(count: int = 8) -> list[LoadCase]:
    return [LoadCase({"history": [n], "k": 3}, answer_items(n)) for n in range(count)]


class Fake(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, plan=None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.plan = plan or (lambda index: "ok")  # index of the request (from its id) -> what to do
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.received = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/predictions/fake"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TorchServe
    disable_nagle_algorithm = True  # headers and body are written apart: no delayed-ACK stalls

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        server: Fake = self.server
        with server.lock:
            server.in_flight += 1
            server.received += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rid = body.get("request_id")
            action = server.plan(int(rid.rsplit("-", 1)[1]))
            status, out = 200, {"items": answer_items(body["history"][0]), "request_id": rid}
            if action == "slow":
                time.sleep(1.0)
            elif action == "pause":
                time.sleep(0.03)
            elif action == "error":
                status, out = 503, {"error": "overloaded", "field": None}
            elif action == "wrong":
                out["items"] = list(reversed(out["items"]))
            elif action == "other-id":
                out["request_id"] = rid + "x"
            elif action == "slightly-off":
                out["items"][0]["score"] += 1e-6
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture
def fake():
    servers = []

    def start(plan=None) -> Fake:
        server = Fake(plan)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ---- loopback only ------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, host", [("http://127.0.0.1:8080/predictions/m", "127.0.0.1"),
                                       ("http://127.0.0.9:80/p", "127.0.0.9"), ("http://localhost:8080/p", "127.0.0.1"),
                                       ("http://[::1]:8080/predictions/m", "::1")])
def test_loopback_targets_are_accepted(url, host):
    assert check_loopback(url).host == host


@pytest.mark.parametrize("url", ["http://10.0.0.1:8080/predictions/m", "http://0.0.0.0:8080/p", "http://8.8.8.8/p",
                                 "http://example.com/p", "http://127.0.0.1.example.com/p", "https://127.0.0.1/p",
                                 "http:///p", "ftp://127.0.0.1/p", "http://[::ffff:10.0.0.1]:80/p"])
def test_other_targets_are_refused(url):
    with pytest.raises(LoadError, match="loopback"):
        check_loopback(url)


def test_the_cli_refuses_another_host_before_connecting(monkeypatch, capsys):
    def no_connect(*args, **kwargs):
        raise AssertionError("the load tool tried to connect")

    monkeypatch.setattr(socket, "create_connection", no_connect)
    assert main(["load", "http://192.0.2.10:8080/predictions/m", "--body", '{"history": [1], "k": 1}']) == 2
    assert "is not a loopback address" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [({"mode": "burst"}, "mode"), ({"concurrency": 0}, "concurrency"),
                                           ({"requests": 0}, "requests"), ({"seconds": 0}, "seconds"),
                                           ({"seconds": 10**9}, "seconds"), ({"mode": "open"}, "rate"),
                                           ({"mode": "open", "rate": -1.0}, "rate"), ({"timeout": 0}, "timeout")])
def test_options_are_bounded(kwargs, match):
    with pytest.raises(LoadError, match=match):
        LoadOptions(**kwargs)


# ---- the loops --------------------------------------------------------------------------------------
def test_closed_loop_keeps_n_in_flight_and_checks_every_answer(fake):
    server = fake(lambda i: "pause")
    report = run_load(server.url, cases(), LoadOptions(concurrency=4, requests=80, seconds=30))
    assert report.sent == report.ok == report.checked == server.received == 80
    assert report.passed and report.exactly_once and report.errors == {} and report.wrong == 0
    assert server.max_in_flight == 4
    lat = report.latency_ms()
    assert lat["count"] == 80 and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert report.summary()["throughput_ok_per_s"] > 0


def test_errors_wrong_answers_and_mixed_up_ids_are_each_counted(fake):
    def plan(i):
        return {0: "error", 1: "wrong", 2: "other-id", 3: "slightly-off"}.get(i % 10, "ok")

    server = fake(plan)
    report = run_load(server.url, cases(), LoadOptions(concurrency=3, requests=100, seconds=30, score_tol=1e-4))
    assert report.sent == 100
    assert report.errors == {"503": 10}
    assert report.wrong == 10  # the reversed lists; a score 1e-6 off is within the tolerance
    ids = report.ids()
    assert (ids["mismatched"], ids["unknown"], ids["unanswered"], ids["answered_once"]) == (10, 10, 20, 80)
    assert report.ok == 70 and not report.exactly_once and not report.passed
    assert any("overloaded" in e for e in report.summary()["error_examples"])
    assert "FAIL" in report.text() and "503: 10" in report.text()


def test_open_loop_sends_poisson_arrivals_at_the_rate(fake):
    server = fake()
    report = run_load(server.url, cases(), LoadOptions(mode="open", rate=200.0, seconds=1.5, requests=10**6,
                                                       concurrency=8, seed=3))
    assert report.passed and report.not_sent == 0
    assert abs(report.sent - 300) < 4 * 300 ** 0.5  # Poisson: sd = sqrt(mean)
    assert report.elapsed_s < 3.0


def test_poisson_arrivals_have_exponential_gaps():
    offsets = list(loadgen.poisson_arrivals(100.0, 1e9, 20_000, random.Random(0)))
    gaps = [b - a for a, b in zip([0.0] + offsets, offsets)]
    mean = sum(gaps) / len(gaps)
    sd = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
    assert len(gaps) == 20_000 and mean == pytest.approx(0.01, rel=0.03) and sd / mean == pytest.approx(1.0, abs=0.05)
    assert all(t < 2.0 for t in loadgen.poisson_arrivals(100.0, 2.0, 10**6, random.Random(1)))


def test_runs_stop_at_the_request_count_and_at_the_time_bound(fake):
    server = fake()
    assert run_load(server.url, cases(), LoadOptions(concurrency=5, requests=37, seconds=60)).sent == 37
    start = time.monotonic()
    report = run_load(server.url, cases(), LoadOptions(concurrency=2, requests=10**8, seconds=0.5))
    assert time.monotonic() - start < 2.0 and 0 < report.sent < 10**8 and report.passed


def test_a_request_past_its_timeout_is_an_error_and_the_run_still_ends(fake):
    server = fake(lambda i: "slow" if i % 4 == 0 else "ok")
    start = time.monotonic()
    report = run_load(server.url, cases(), LoadOptions(concurrency=4, requests=12, seconds=30, timeout=0.3))
    assert time.monotonic() - start < 3.0
    assert report.errors == {"timeout": 3} and report.ok == 9 and not report.passed


def test_an_unreachable_server_is_a_connection_error():
    port = loadgen_free_port()
    report = run_load(f"http://127.0.0.1:{port}/predictions/m", cases(), LoadOptions(concurrency=2, requests=6))
    assert report.errors == {"connection": 6} and not report.passed


def loadgen_free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- expected answers -----------------------------------------------------------------------------------
def test_compare_items():
    items = answer_items(4)
    assert compare_items(items, items) is None
    assert compare_items(items, [i["item_id"] for i in items]) is None  # ids only
    assert "rank 1" in compare_items(items, [items[0], items[2], items[1]])
    assert "score" in compare_items(items, [items[0], {**items[1], "score": -0.4}, items[2]], 1e-4)
    assert "sid" in compare_items(items, [items[0], {**items[1], "sid": [9, 9, 9]}, items[2]])
    assert compare_items(items[:2], items) is not None and compare_items(None, items) is not None


def test_make_cases_answers_as_the_library(tiny_model_dir):
    from xgr_toolkit import load_model_dir
    from xgr_toolkit.serving import RecService

    made = loadgen.make_cases(tiny_model_dir, 6, beam_width=8, k=4, seed=1)
    assert len(made) == 6 and all(len(c.expected) == 4 for c in made)
    service = RecService(load_model_dir(tiny_model_dir), name="m", max_beam_width=8)
    replies, _ = service.handle([c.body for c in made])
    for case, reply in zip(made, replies, strict=True):
        assert reply.status == 200 and compare_items(reply.body["items"], case.expected, 1e-5) is None
    assert loadgen.make_cases(tiny_model_dir, 6, beam_width=8, k=4, seed=1)[3].body == made[3].body


def test_the_cli_with_an_expect_file_writes_its_report(fake, tmp_path, capsys):
    server = fake()
    expect = loadgen.write_cases(tmp_path / "cases.jsonl", cases(5))
    assert len(loadgen.read_cases(expect)) == 5
    out = tmp_path / "report.json"
    assert main(["load", server.url, "--expect", str(expect), "--requests", "40", "--concurrency", "2",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["passed"] and report["sent"] == report["ok"] == report["checked"] == 40
    assert report["ids"]["answered_once"] == 40 and "latency_ms" in report and "headers" not in report["options"]
    assert "every request answered exactly once" in capsys.readouterr().out
    server.plan = lambda i: "wrong" if i == 3 else "ok"
    assert main(["load", server.url, "--expect", str(expect), "--requests", "10"]) == 1


def test_bad_expect_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request": {"k": 1}}\n[1, 2]\n')
    with pytest.raises(LoadError, match="bad.jsonl:2"):
        loadgen.read_cases(bad)
