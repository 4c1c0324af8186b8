"""Faults through a real TorchServe on loopback: a worker killed under load, and broken archives at load time.

One server for the module (stopped even on failure), serving the tiny model with one worker, so that a
killed worker always has a batch in flight. ``enable_model_api`` is on (loopback, tests only) so that broken
archives can be registered next to the good model without another server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import save as safetensors_bytes

from xgr_toolkit import preset
from xgr_toolkit.serving import PackageOptions, TorchServe, TorchServeError
from xgr_toolkit.serving.archive import ArchiveError, check_archive
from xgr_toolkit.serving.loadgen import LoadOptions, make_cases, run_load
from xgr_toolkit.serving.server import http_request
from xgr_toolkit.synthetic import random_catalog, random_model_dir

pytestmark = pytest.mark.serve

NAME, MAX_W = "faults", 16
RESPONSE_TIMEOUT_S = 5  # the archive's responseTimeout: no request may take much longer, whatever happens
RECOVERY_S = 60  # full service back within this after a worker is killed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("faults") / "model", preset("tiny"), num_items=500, seed=21)


@pytest.fixture(scope="module")
def cases(model_dir):
    return make_cases(model_dir, 32, beam_width=MAX_W, k=5, seed=5)


@pytest.fixture(scope="module")
def server(model_dir, serve_model):
    options = PackageOptions(max_beam_width=MAX_W, batch_size=4, max_batch_delay_ms=10, min_workers=1, max_workers=1,
                             response_timeout_s=RESPONSE_TIMEOUT_S, startup_timeout_s=60)
    with serve_model(model_dir, NAME, options, enable_model_api="true") as ts:
        yield ts


def worker_pid(server) -> int:
    [worker] = server.workers(NAME)
    assert worker["status"] == "READY"
    return worker["pid"]


def test_a_worker_killed_under_load_fails_only_its_batch_fast_and_service_returns_exact(server, cases):
    warm = run_load(server.url, cases, LoadOptions(concurrency=4, requests=40, seconds=30))
    assert warm.passed, warm.text()
    pid = worker_pid(server)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"model_service_worker" in cmdline  # ours: a worker of the TorchServe this module started
    result = {}
    load = threading.Thread(target=lambda: result.update(report=run_load(
        server.url, cases, LoadOptions(concurrency=8, requests=100_000, seconds=8, timeout=RESPONSE_TIMEOUT_S + 20))))
    load.start()
    time.sleep(1.5)  # the worker is busy: 8 requests in flight for a batch size of 4
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    back_at = None
    while back_at is None and time.monotonic() - killed_at < RECOVERY_S:
        workers = server.workers(NAME)
        if any(w["status"] == "READY" and w["pid"] != pid for w in workers):
            back_at = time.monotonic()
        time.sleep(0.05)
    load.join(60)
    assert not load.is_alive()
    report = result["report"]
    print(report.text())
    assert back_at is not None, f"no worker READY {RECOVERY_S} s after the kill\n{server.log_tail()}"
    # The batch in flight failed fast with a 5xx (TorchServe: 507 "Worker died."); nothing else failed.
    failed = [o for o in report.outcomes if o.status != 200]
    assert failed, "the kill found no request in flight"
    assert all(isinstance(o.status, int) and 500 <= o.status < 600 for o in failed), report.errors
    assert len(failed) <= 8 and all(o.latency_s < 5.0 for o in failed)
    assert all("Worker died" in (o.error or "") for o in failed)
    # Nothing hung: every request was answered within twice the configured timeout. TorchServe's timeout
    # counts from when a worker takes a batch: one queued behind the restart also waits for the new worker's
    # start (5.2 s end to end was seen once in a full CPU run of the suite, 2026-12-07).
    assert max(o.latency_s for o in report.outcomes) < 2 * RESPONSE_TIMEOUT_S
    # Every answer, before, during and after the restart, was exact; and service resumed in full.
    assert report.wrong == 0 and report.checked == report.sent - len(failed)
    after = [o for o in report.outcomes if o.due > back_at]
    assert len(after) > 20 and all(o.status == 200 and o.wrong is None for o in after)
    assert back_at - killed_at < RECOVERY_S
    print(f"worker back {back_at - killed_at:.1f} s after SIGKILL; {len(failed)} requests in flight failed with "
          f"{sorted({o.status for o in failed})} in at most {max(o.latency_s for o in failed):.2f} s")
    again = run_load(server.url, cases, LoadOptions(concurrency=4, requests=60, seconds=30))
    assert again.passed, again.text()


def test_a_frozen_worker_is_killed_at_the_response_timeout_and_nothing_hangs(server, cases):
    """SIGSTOP: the worker neither answers nor dies. TorchServe must give up on its batch at responseTimeout,
    answer it with a 5xx, and start another worker; no request may wait much past the timeout."""
    pid = worker_pid(server)
    assert b"model_service_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    result = {}
    load = threading.Thread(target=lambda: result.update(report=run_load(
        server.url, cases, LoadOptions(concurrency=8, requests=100_000, seconds=3 * RESPONSE_TIMEOUT_S,
                                       timeout=RESPONSE_TIMEOUT_S + 30))))
    load.start()
    time.sleep(1.0)
    frozen_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        back_at = None
        while back_at is None and time.monotonic() - frozen_at < RECOVERY_S:
            if any(w["status"] == "READY" and w["pid"] != pid for w in server.workers(NAME)):
                back_at = time.monotonic()
            time.sleep(0.05)
        load.join(90)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)  # if TorchServe left it stopped, let the stop at the end end it
        except ProcessLookupError:
            pass
    report = result["report"]
    print(report.text())
    assert back_at is not None, server.log_tail()
    failed = [o for o in report.outcomes if o.status != 200]
    assert failed and all(isinstance(o.status, int) and 500 <= o.status < 600 for o in failed), report.errors
    grace = 3.0  # TorchServe's own bookkeeping past the timeout
    assert max(o.latency_s for o in report.outcomes) < RESPONSE_TIMEOUT_S + grace + (back_at - frozen_at)
    assert max(o.latency_s for o in failed) < RESPONSE_TIMEOUT_S + grace
    assert report.wrong == 0
    after = [o for o in report.outcomes if o.due > back_at]
    assert after and all(o.status == 200 and o.wrong is None for o in after)
    print(f"frozen worker replaced {back_at - frozen_at:.1f} s after SIGSTOP; {len(failed)} requests failed with "
          f"{sorted({o.status for o in failed})} after at most {max(o.latency_s for o in failed):.1f} s")


# ---- broken archives at load time ---------------------------------------------------------------------
def rewrite_mar(good: Path, out: Path, replace: dict | None = None, add: dict | None = None) -> Path:
    """A copy of the archive ``good`` with members replaced (name -> function of the old bytes) or added."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if replace and info.filename in replace:
                data = replace[info.filename](data)
            dst.writestr(info, data)
        for name, data in (add or {}).items():
            dst.writestr(name, data)
    return out


def other_catalog(_: bytes) -> bytes:
    catalog = random_catalog(50, 2, 64, seed=1)  # 2 levels, where the model has 3
    return safetensors_bytes({"item_ids": catalog.item_ids.clone(), "codes": catalog.codes.clone()},
                             metadata={"num_codes": "64"})


BROKEN = {  # name: (how the archive differs, the member the error names, what it says)
    "truncated": ({"model.safetensors": lambda d: d[:len(d) // 2]}, {}, "model.safetensors", "truncated"),
    "pickled": ({}, {"evil.pkl": b"\x80\x04K\x01."}, "evil.pkl", "pickled checkpoint"),
    "badconfig": ({"config.yaml": lambda d: d.replace(b"levels: 3", b"levels: three")}, {}, "config.yaml",
                  "model.levels"),
    "mismatch": ({"catalog.safetensors": other_catalog}, {}, "catalog.safetensors", "2 levels of 64 codes, but"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_archive_is_refused_at_registration_with_the_file_and_problem_in_the_log(server, kind):
    replace, add, member, words = BROKEN[kind]
    name = f"broken-{kind}"
    rewrite_mar(server.model_store / f"{NAME}.mar", server.model_store / f"{name}.mar", replace, add)
    with pytest.raises(ArchiveError, match=re.escape(f"{name}.mar!{member}") + ".*" + re.escape(words)):
        check_archive(server.model_store / f"{name}.mar")  # before deploying
    start = time.monotonic()
    status, _, body = http_request(f"{server.management_url}/models?url={name}.mar&model_name={name}"
                                   "&initial_workers=1&synchronous=true", method="POST", timeout=120)
    assert status == 500 and b"Failed to start workers" in body  # all TorchServe's answer says
    assert time.monotonic() - start < 30
    pattern = re.compile(rf"xgr model {name}: cannot load the archive: \w+: \S*/{re.escape(member)}: .*"
                         + re.escape(words))
    deadline, log = time.monotonic() + 10, ""
    while time.monotonic() < deadline and not pattern.search(log):  # the worker's log reaches the file
        log = (server.log_dir / "model_log.log").read_text(errors="replace")
        time.sleep(0.1)
    assert pattern.search(log), log[-3000:]
    status, _, _ = http_request(f"{server.management_url}/models/{name}", timeout=10)
    assert status == 404  # not left registered, crash-looping


def test_a_corrupt_zip_is_named_before_torchserve_starts(server, tmp_path):
    good = server.model_store / f"{NAME}.mar"
    (tmp_path / "half.mar").write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    data = bytearray(good.read_bytes())
    offset = data.index(b"model.safetensors") + 200  # inside the first member's compressed bytes
    data[offset:offset + 8] = bytes(b ^ 0xFF for b in data[offset:offset + 8])
    (tmp_path / "flipped.mar").write_bytes(bytes(data))
    shutil.copy(good, tmp_path / "good.mar")
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "nomanifest.mar", "w") as dst:
        for info in src.infolist():
            if info.filename != "MAR-INF/MANIFEST.json":
                dst.writestr(info, src.read(info))
    for mar, words in (("half.mar", "not a zip file"), ("flipped.mar", "corrupt"),
                       ("nomanifest.mar", "no MAR-INF/MANIFEST.json")):
        start = time.monotonic()
        refused = TorchServe(tmp_path, {"x": mar})
        with pytest.raises(TorchServeError, match=re.escape(mar) + ".*" + words):
            refused.start()
        assert time.monotonic() - start < 10
        assert refused.workdir is None and refused.java_pid is None  # nothing was started
    check_archive(tmp_path / "good.mar")


def test_the_good_model_served_exactly_throughout(server, cases):
    report = run_load(server.url, cases, LoadOptions(concurrency=4, requests=64, seconds=30))
    assert report.passed, report.text()
    status, _, body = http_request(f"{server.management_url}/models", timeout=10)
    assert status == 200 and b"broken-" not in body
