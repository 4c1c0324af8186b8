"""Load for a served model over HTTP: open loop (Poisson arrivals at a rate) or closed loop (N requests in
flight), bounded in request count and in time, to loopback addresses only.

Every request carries a fresh ``request_id`` that the server echoes (docs/serving.md), so the report can say
whether every request sent was answered exactly once. Where a case has its expected items (computed with
the library, or read from a file), each answer is checked against them: the same items and SIDs in the same
order, scores within a tolerance. The report gives throughput, latency percentiles and errors by HTTP status.

Open-loop latency runs from a request's scheduled arrival, not from when a thread got round to sending it,
so a server that falls behind shows it (no coordinated omission). Arrivals stop at the time bound; one
still queued in the client a timeout after it is not sent, and counted as ``not_sent``.
"""

from __future__ import annotations

import http.client
import ipaddress
import itertools
import json
import math
import random
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..bench.load import percentile, poisson_arrivals

__all__ = ["LoadCase", "LoadError", "LoadOptions", "LoadReport", "Outcome", "Target", "check_loopback",
           "compare_items", "make_cases", "poisson_arrivals", "read_cases", "run_load", "write_cases"]

MODES = ("closed", "open")
MAX_REQUESTS = 100_000_000
MAX_SECONDS = 24 * 3600.0
MAX_CONCURRENCY = 1024


class LoadError(ValueError):
    """A target that is not loopback, or load options out of range."""


@dataclass(frozen=True)
class Target:
    """Where requests go: a loopback address, a port and the path (``/predictions/NAME``)."""

    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"


def check_loopback(url: str) -> Target:
    """``http://127.0.0.1:8080/predictions/NAME`` -> its Target; anything but a loopback address is refused.

    ``localhost`` is taken as 127.0.0.1 (not resolved: a hosts file could point it elsewhere).

    Raises:
        LoadError: the scheme is not http, or the host is not a loopback address (127.0.0.0/8, ::1).
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http":
        raise LoadError(f"{url}: only http:// URLs to a loopback address are allowed, e.g. "
                        "http://127.0.0.1:8080/predictions/NAME")
    host = parsed.hostname
    if not host:
        raise LoadError(f"{url}: no host; allowed a loopback address, e.g. http://127.0.0.1:8080/predictions/NAME")
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise LoadError(f"{url}: {parsed.hostname!r} is not a loopback address; the load tool only sends to "
                        "127.0.0.0/8, ::1 or localhost, never to another host")
    try:
        port = parsed.port or 80
    except ValueError as err:
        raise LoadError(f"{url}: {err}") from None
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    return Target(str(address), port, path)


# ---- cases: request bodies and their expected answers -----------------------------------------------
@dataclass
class LoadCase:
    """A request body and, optionally, the items it must be answered with: ``[{"item_id", "score", "sid"}]``
    (items, SIDs and scores checked) or ``[item ids]`` (items checked)."""

    body: dict
    expected: list | None = None


def compare_items(served, expected: list, score_tol: float = 1e-4) -> str | None:
    """None when ``served`` (an answer's ``items``) matches ``expected``; else what differs, briefly."""
    if not isinstance(served, list) or not all(isinstance(i, dict) and "item_id" in i for i in served):
        return "the answer has no list of items"
    got = [i["item_id"] for i in served]
    want = [e["item_id"] if isinstance(e, dict) else e for e in expected]
    if got != want:
        first = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        return f"items differ from rank {first}: got {got[first:first + 3]}, expected {want[first:first + 3]}"
    for rank, (s, e) in enumerate(zip(served, expected)):
        if not isinstance(e, dict):
            continue
        if "sid" in e and list(s.get("sid", ())) != list(e["sid"]):
            return f"rank {rank}: sid {s.get('sid')}, expected {e['sid']}"
        if "score" in e and not (isinstance(s.get("score"), (int, float))
                                 and abs(s["score"] - e["score"]) <= score_tol):
            return f"rank {rank}: score {s.get('score')}, expected {e['score']} (tolerance {score_tol})"
    return None


def read_cases(path: str | Path) -> list[LoadCase]:
    """JSON lines ``{"request": {...}, "expected": [...]}`` (``expected`` optional) -> cases."""
    path = Path(path)
    cases = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise LoadError(f"{path}:{line_no}: not JSON ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get("request"), dict):
                raise LoadError(f'{path}:{line_no}: expected {{"request": {{...}}, "expected": [...]}}')
            expected = row.get("expected")
            if expected is not None and not isinstance(expected, list):
                raise LoadError(f"{path}:{line_no}: expected must be a list of items or item ids")
            cases.append(LoadCase(row["request"], expected))
    if not cases:
        raise LoadError(f"{path}: no cases")
    return cases


def write_cases(path: str | Path, cases: list[LoadCase]) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps({"request": c.body, "expected": c.expected}) + "\n" for c in cases))
    return path


def make_cases(model, n: int, *, beam_width: int, k: int, seed: int = 0, max_history: int = 10) -> list[LoadCase]:
    """``n`` random valid requests over ``model``'s catalog (a GRModel or a model directory) with the
    library's answers (the reference engine): histories of 1 to ``max_history`` items, a quarter of them
    excluding their history. ``beam_width`` is sent explicitly, so the answer does not depend on the
    archive's widest beam."""
    import torch  # only here: the load loop itself needs no torch

    from ..engines import build_engine
    from ..model_dir import load_model_dir
    from ..request import build_request

    if not isinstance(n, int) or n < 1:
        raise LoadError(f"cases = {n!r}: allowed an integer >= 1")
    if isinstance(model, (str, Path)):
        model = load_model_dir(model)
    items = model.catalog.item_ids.tolist()
    engine = build_engine(model, "reference")
    rng = random.Random(seed)
    cases = []
    with torch.inference_mode():
        for _ in range(n):
            history = rng.sample(items, rng.randint(1, min(max_history, len(items))))
            body = {"history": history, "k": k, "beam_width": beam_width}
            if rng.random() < 0.25:
                body["exclude_history"] = True
            request = build_request(model.config.model, model.catalog, history_items=history, beam_width=beam_width,
                                    top_k=k, max_beam_width=beam_width,
                                    exclude_history=body.get("exclude_history", False),
                                    normalize=model.config.beam.normalize)
            [answer] = engine.recommend([request])
            cases.append(LoadCase(body, [item.to_json() for item in answer]))
    return cases


# ---- options, outcomes, report ------------------------------------------------------------------------
@dataclass
class LoadOptions:
    """How much load, and how it arrives.

    ``closed``: ``concurrency`` requests in flight, each thread sending its next as soon as it has an
    answer. ``open``: arrivals at ``rate`` per second on average (exponential gaps), sent by at most
    ``concurrency`` threads. Both stop after ``requests`` requests or ``seconds`` seconds, whichever comes
    first; then they wait at most ``timeout`` for the answers still in flight.
    """

    mode: str = "closed"
    concurrency: int = 8
    rate: float | None = None
    requests: int = 1000
    seconds: float = 60.0
    timeout: float = 30.0
    score_tol: float = 1e-4
    seed: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    id_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LoadError(f"mode = {self.mode!r}: allowed one of {list(MODES)}")
        for key, low, high in (("concurrency", 1, MAX_CONCURRENCY), ("requests", 1, MAX_REQUESTS)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise LoadError(f"{key} = {value!r}: allowed an integer in [{low}, {high}]")
        for key, high in (("seconds", MAX_SECONDS), ("timeout", 3600.0)):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 < value <= high:
                raise LoadError(f"{key} = {value!r}: allowed a number of seconds in (0, {high:g}]")
        if self.mode == "open" and (self.rate is None or not 0 < self.rate <= 1e6 or math.isnan(self.rate)):
            raise LoadError(f"rate = {self.rate!r}: the open loop needs a rate in (0, 1e6] requests per second")


@dataclass(slots=True)  # a soak keeps hundreds of thousands
class Outcome:
    """One request: its id, when it was due, how long its answer took, and what the answer was."""

    index: int
    request_id: str
    due: float  # time.monotonic() at which it was scheduled (open loop) or sent (closed loop)
    latency_s: float  # from ``due`` to the whole answer read, or to the failure
    status: int | str  # the HTTP status, or "timeout" / "connection" when no answer came
    echoed: str | None = None  # the answer's request_id
    wrong: str | None = None  # how the answer differs from the expected items; None when it matches or unchecked
    checked: bool = False
    error: str | None = None  # the answer's error message (4xx/5xx JSON) or the exception


@dataclass
class LoadReport:
    """What a run measured; ``summary()`` is its JSON, ``text()`` its human form, ``passed`` its verdict."""

    url: str
    options: LoadOptions
    elapsed_s: float
    outcomes: list[Outcome]
    not_sent: int = 0  # open loop: due after the time bound had passed, while the client was behind

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        return sum(o.status == 200 and o.echoed == o.request_id and o.wrong is None for o in self.outcomes)

    @property
    def errors(self) -> dict[str, int]:
        """Requests without a 200, by HTTP status (or "timeout" / "connection")."""
        return dict(sorted(Counter(str(o.status) for o in self.outcomes if o.status != 200).items()))

    @property
    def wrong(self) -> int:
        return sum(o.wrong is not None for o in self.outcomes)

    @property
    def checked(self) -> int:
        return sum(o.checked for o in self.outcomes)

    def ids(self) -> dict[str, int]:
        """Exactly-once accounting over request ids."""
        sent = {o.request_id for o in self.outcomes}
        answered = Counter(o.echoed for o in self.outcomes if o.echoed is not None)
        return {"sent": len(sent), "answered_once": sum(answered[i] == 1 for i in sent),
                "unanswered": sum(answered[i] == 0 for i in sent), "duplicated": sum(answered[i] > 1 for i in sent),
                "unknown": sum(n for i, n in answered.items() if i not in sent),
                "mismatched": sum(o.echoed is not None and o.echoed != o.request_id for o in self.outcomes)}

    @property
    def exactly_once(self) -> bool:
        ids = self.ids()
        return ids["answered_once"] == ids["sent"] == self.sent and ids["unknown"] == ids["mismatched"] == 0

    @property
    def passed(self) -> bool:
        return not self.errors and self.wrong == 0 and self.exactly_once and self.not_sent == 0

    def latency_ms(self) -> dict[str, float]:
        """Percentiles over the requests that got an HTTP answer (any status)."""
        values = sorted(o.latency_s * 1e3 for o in self.outcomes if isinstance(o.status, int))
        if not values:
            return {"count": 0}
        return {"count": len(values), "mean": round(sum(values) / len(values), 3),
                **{f"p{q:g}": round(percentile(values, q), 3) for q in (50, 90, 99, 99.9)},
                "max": round(values[-1], 3)}

    def summary(self) -> dict:
        opts = asdict(self.options)
        opts.pop("headers")  # may hold a token
        elapsed = max(self.elapsed_s, 1e-9)
        return {"url": self.url, "options": opts, "elapsed_s": round(self.elapsed_s, 3), "sent": self.sent,
                "not_sent": self.not_sent, "ok": self.ok, "throughput_ok_per_s": round(self.ok / elapsed, 2),
                "offered_per_s": round(self.sent / elapsed, 2), "latency_ms": self.latency_ms(),
                "errors": self.errors, "checked": self.checked, "wrong": self.wrong,
                "wrong_examples": [o.wrong for o in self.outcomes if o.wrong][:5],
                "error_examples": sorted({f"{o.status}: {o.error}" for o in self.outcomes if o.error})[:5],
                "ids": self.ids(), "exactly_once": self.exactly_once, "passed": self.passed}

    def text(self) -> str:
        s, o = self.summary(), self.options
        how = (f"{o.concurrency} in flight" if o.mode == "closed"
               else f"Poisson arrivals at {o.rate:g}/s, at most {o.concurrency} in flight")
        lat = s["latency_ms"]
        lines = [f"{o.mode} loop, {how}, {self.url}",
                 f"  sent {s['sent']} in {s['elapsed_s']:.1f} s: {s['throughput_ok_per_s']:.1f} OK answers/s "
                 f"(offered {s['offered_per_s']:.1f}/s)" + (f"; {self.not_sent} due too late, not sent"
                                                            if self.not_sent else "")]
        if lat["count"]:
            lines.append(f"  latency ms: p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  "
                         f"max {lat['max']:.1f}  ({lat['count']} answered)")
        errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "none"
        lines.append(f"  errors by status: {errors}")
        lines += [f"    e.g. {e}" for e in s["error_examples"][:3]]
        if s["checked"]:
            lines.append(f"  answers checked against the expected items: {s['checked']}, wrong {s['wrong']}")
            lines += [f"    e.g. {w}" for w in s["wrong_examples"][:3]]
        ids = s["ids"]
        lines.append("  request ids: every request answered exactly once" if self.exactly_once else
                     f"  request ids: {ids['answered_once']} of {ids['sent']} answered exactly once; "
                     f"{ids['unanswered']} unanswered, {ids['duplicated']} duplicated, {ids['unknown']} unknown, "
                     f"{ids['mismatched']} mismatched")
        lines.append(f"  verdict: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


# ---- the load loops ----------------------------------------------------------------------------------------
class _Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, target: Target, timeout: float, headers: dict[str, str]):
        self.target, self.timeout = target, timeout
        self.headers = {"Content-Type": "application/json", **headers}
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, body: bytes) -> tuple[int, bytes]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.target.host, self.target.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        try:
            conn.request("POST", self.target.path, body, self.headers)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            conn.close()  # never reuse a connection in an unknown state
            self._local.conn = None
            raise
        if resp.will_close:
            conn.close()
            self._local.conn = None
        return resp.status, data

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()


def _judge(outcome: Outcome, data: bytes, case: LoadCase, score_tol: float) -> None:
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        answer = None
    if isinstance(answer, dict):
        echoed = answer.get("request_id")
        outcome.echoed = echoed if isinstance(echoed, str) else None
        if outcome.status != 200:
            message = answer.get("error", answer.get("message"))
            outcome.error = str(message)[:200] if message is not None else None
    elif outcome.status != 200:
        outcome.error = data[:200].decode("utf-8", "replace") or None
    if outcome.status == 200 and case.expected is not None:
        outcome.checked = True
        outcome.wrong = compare_items(answer.get("items") if isinstance(answer, dict) else None, case.expected,
                                      score_tol)
        if outcome.wrong:
            outcome.wrong = f"{outcome.request_id}: {outcome.wrong}"


def run_load(url: str, cases: list[LoadCase], options: LoadOptions | None = None, *,
             progress: Callable[[dict], None] | None = None, progress_every: float = 10.0) -> LoadReport:
    """Send load to ``url`` (a loopback predictions URL) and report; request i sends ``cases[i % len(cases)]``
    with ``request_id`` ``<prefix>-<i>``. ``progress``, where given, gets a small dict of counts every
    ``progress_every`` seconds.

    Raises:
        LoadError: the URL is not loopback, no cases, or bad options.
    """
    target = check_loopback(url)
    options = options or LoadOptions()
    if not cases:
        raise LoadError("no cases to send")
    prefix = options.id_prefix or secrets.token_hex(4)
    client = _Client(target, options.timeout, options.headers)
    bodies = [json.dumps(c.body) for c in cases]  # the id goes in by string splicing: no re-encoding per request
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()
    start = time.monotonic()
    send_until = start + options.seconds
    # Open loop: a request due before the time bound is still sent while the client catches up, for at most
    # one more timeout; then it is given up (not_sent), so that a run never outlasts seconds + 2 timeouts.
    late_until = send_until + (options.timeout if options.mode == "open" else 0.0)
    not_sent = 0

    def send(i: int, due: float) -> None:
        nonlocal not_sent
        if stop.is_set() or time.monotonic() >= late_until:
            with lock:
                not_sent += 1
            return
        rid = f"{prefix}-{i}"
        case = cases[i % len(cases)]
        base = bodies[i % len(cases)]
        body = (base[:-1] + ("" if base == "{}" else ", ") + f'"request_id": {json.dumps(rid)}}}'
                if "request_id" not in case.body else json.dumps({**case.body, "request_id": rid}))
        outcome = Outcome(i, rid, due, 0.0, "connection")
        try:
            outcome.status, data = client.post(body.encode("utf-8"))
        except TimeoutError:  # socket.timeout too
            outcome.status, data, outcome.error = "timeout", b"", f"no answer within {options.timeout:g} s"
        except (OSError, http.client.HTTPException) as err:
            outcome.status, data, outcome.error = "connection", b"", f"{type(err).__name__}: {err}"[:200]
        outcome.latency_s = time.monotonic() - due
        _judge(outcome, data, case, options.score_tol)
        with lock:
            outcomes.append(outcome)

    reporter = None
    if progress is not None:
        def report_progress() -> None:
            while not stop.wait(progress_every):
                with lock:
                    done = list(outcomes)
                progress({"elapsed_s": round(time.monotonic() - start, 1), "answered": len(done),
                          "ok": sum(o.status == 200 and o.wrong is None for o in done),
                          "errors": sum(o.status != 200 for o in done)})
        reporter = threading.Thread(target=report_progress, name="xgr-load-progress", daemon=True)
        reporter.start()
    try:
        if options.mode == "closed":
            counter = itertools.count()

            def worker() -> None:
                while not stop.is_set():
                    with lock:
                        i = next(counter)
                    if i >= options.requests or time.monotonic() >= send_until:
                        return
                    send(i, time.monotonic())

            threads = [threading.Thread(target=worker, name=f"xgr-load-{j}", daemon=True)
                       for j in range(options.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():  # join in slices, so that Ctrl-C reaches the main thread
                    t.join(0.5)
        else:
            rng = random.Random(options.seed)
            with ThreadPoolExecutor(options.concurrency, thread_name_prefix="xgr-load") as pool:
                try:
                    for i, offset in enumerate(poisson_arrivals(options.rate, options.seconds, options.requests,
                                                                rng)):
                        due = start + offset
                        wait = due - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        pool.submit(send, i, due)
                except BaseException:  # Ctrl-C: what is queued is not sent; the pool only waits for what is in flight
                    stop.set()
                    raise
    finally:
        stop.set()
        client.close()
        if reporter is not None:
            reporter.join(1.0)
    elapsed = max((o.due + o.latency_s for o in outcomes), default=time.monotonic()) - start
    outcomes.sort(key=lambda o: o.index)
    return LoadReport(target.url, options, elapsed, outcomes, not_sent)
