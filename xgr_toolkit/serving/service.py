"""What one serving worker does with a batch of JSON request bodies, independent of TorchServe.

:class:`RecService` parses every body on its own (a bad one gets its 400 and error body), runs the
good ones through the engine in one call, and formats each answer. The TorchServe handler is a thin
shell around it, so the batch semantics are tested here without a server.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..engines import ENGINES, build_engine
from ..model_dir import GRModel
from ..request import RecRequest, RequestError, build_request
from .archive import load_checked_model_dir
from .item_names import load_item_names
from .protocol import decode_body, error_body, parse_body, request_id_of, request_ids, response_body

__all__ = ["BatchStats", "RecService", "Reply"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """One request's answer: an HTTP status and a JSON-able body."""

    status: int
    body: dict


@dataclass
class BatchStats:
    """What the metrics report about one batch."""

    batch_size: int = 0
    rejected: int = 0  # requests answered 4xx
    failed: int = 0  # requests answered 5xx (engine errors)
    parse_ms: float = 0.0
    engine_ms: float = 0.0
    format_ms: float = 0.0
    beam_widths: list[int] = field(default_factory=list)  # of the accepted requests
    # the engine's prompt store (empty where it has none): hit_tokens, prompt_tokens and evictions of this
    # batch, bytes_held and hit_ratio (since start) after it
    prefix_cache: dict[str, float] = field(default_factory=dict)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1e3


def _decoded(body) -> dict | None:
    """The body as a dict (free when TorchServe already parsed it), or None when it is not one."""
    try:
        return decode_body(body)
    except Exception:
        return None


class RecService:
    """A loaded model, its engine and the request protocol.

    Args:
        model: the loaded model directory.
        name: the model's name in responses.
        engine: a name in :data:`xgr_toolkit.engines.ENGINES`.
        max_beam_width: the widest beam a request may ask for, and the beam of one that names none.
        item_names: optional item id -> name, added to the answers.
    """

    def __init__(self, model: GRModel, *, name: str, engine: str = "reference", max_beam_width: int = 128,
                 item_names: dict[int, str] | None = None):
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not available; allowed {sorted(ENGINES)}")
        if not isinstance(max_beam_width, int) or isinstance(max_beam_width, bool) or max_beam_width < 1:
            raise ValueError(f"max_beam_width = {max_beam_width!r}: allowed an integer >= 1")
        beam = model.config.beam  # the engine is built for the widest beam a request may ask for
        beam = dataclasses.replace(beam, beam_width=max_beam_width, top_k=min(beam.top_k, max_beam_width))
        model = dataclasses.replace(model, config=dataclasses.replace(model.config, beam=beam))
        self.model, self.name, self.engine_name = model, name, engine
        self.max_beam_width, self.item_names = max_beam_width, item_names
        self.max_exclusions = getattr(model.config.serve, "max_exclusions", None)
        self.engine = build_engine(model, engine)
        self._cache_totals: dict[str, float] = {}  # the prompt store's counters after the last batch

    @classmethod
    def from_model_dir(cls, path: str | Path, *, name: str | None = None, engine: str = "reference",
                       max_beam_width: int = 128, device: str | None = None, dtype: str | None = None,
                       compile: bool | None = None) -> RecService:
        """Load a model directory (and its ``item_names.json`` where there is one); ``compile`` overrides its
        ``serve.compile`` (an archive with a compile cache compiles)."""
        path = Path(path)
        # Its files checked first (no pickles, complete safetensors, shapes that fit the config), then loaded
        # on the directory's own device and dtype unless given.
        model = load_checked_model_dir(path, device, dtype)
        if compile is not None:
            serve = dataclasses.replace(model.config.serve, compile=compile)
            model = dataclasses.replace(model, config=dataclasses.replace(model.config, serve=serve))
        return cls(model, name=name or model.config.model.name, engine=engine, max_beam_width=max_beam_width,
                   item_names=load_item_names(path))

    def warm_up(self) -> float:
        """The engine's own warm-up (compiling its buckets), then one request at the widest beam; returns
        the milliseconds it all took."""
        catalog = self.model.catalog
        request = build_request(self.model.config.model, catalog, history_items=[int(catalog.item_ids[0])],
                                beam_width=self.max_beam_width, top_k=1, max_beam_width=self.max_beam_width)
        start = time.perf_counter()
        self.engine.warmup()
        self.engine.recommend([request])
        return _ms(start)

    def parse(self, body) -> tuple[list[RecRequest], bool]:
        """A body's requests, and whether it came as KServe's ``{"instances": [...]}``."""
        return parse_body(body, self.model.config.model, self.model.catalog, max_beam_width=self.max_beam_width,
                          normalize=self.model.config.beam.normalize, max_exclusions=self.max_exclusions)

    def handle(self, bodies: list) -> tuple[list[Reply], BatchStats]:
        """One reply per body, in order; every accepted request goes through the engine in one call."""
        start = time.perf_counter()
        stats = BatchStats(batch_size=len(bodies))
        replies: list[Reply | None] = [None] * len(bodies)
        # (body, its requests, their request ids, instances?, ms)
        accepted: list[tuple[int, list[RecRequest], list[str | None], bool, float]] = []
        for i, body in enumerate(bodies):
            t = time.perf_counter()
            try:
                requests, instances = self.parse(body)
            except RequestError as err:
                replies[i] = Reply(400, error_body(err, request_id_of(_decoded(body))))
                stats.rejected += 1
                continue
            except Exception:  # a bug in parsing must not take the rest of the batch down
                log.exception("request %d: unexpected error while parsing", i)
                replies[i] = Reply(500, {"error": "internal error while parsing the request", "field": None})
                stats.failed += 1
                continue
            accepted.append((i, requests, request_ids(_decoded(body), instances), instances, _ms(t)))
            stats.beam_widths.extend(r.beam_width for r in requests)
        stats.parse_ms = _ms(start)
        if not accepted:
            return replies, stats
        t = time.perf_counter()
        results = iter(self._recommend([r for _, requests, _, _, _ in accepted for r in requests]))
        stats.engine_ms = _ms(t)
        stats.prefix_cache = self._prefix_cache()
        t = time.perf_counter()
        for i, requests, ids, instances, parse_ms in accepted:
            answers = [next(results) for _ in requests]
            request_id = None if instances else ids[0]  # an error answers the whole body
            refused = next((a for a in answers if isinstance(a, RequestError)), None)
            if refused is not None:  # a limit only the engine knows about
                replies[i] = Reply(400, error_body(refused, request_id))
                stats.rejected += 1
                continue
            if any(a is None for a in answers):
                failed = {"error": "the engine failed on this request", "field": None}
                replies[i] = Reply(500, failed if request_id is None else {**failed, "request_id": request_id})
                stats.failed += 1
                continue
            timing = {"parse": parse_ms, "engine": stats.engine_ms, "total": _ms(start)}
            bodies_out = [response_body(a, r, model=self.name, batch_size=len(bodies), timing_ms=timing,
                                        names=self.item_names, request_id=rid)
                          for a, r, rid in zip(answers, requests, ids, strict=True)]
            replies[i] = Reply(200, {"predictions": bodies_out} if instances else bodies_out[0])
        stats.format_ms = _ms(t)
        return replies, stats

    def _prefix_cache(self) -> dict[str, float]:
        """The prompt store's counters since the last batch, its bytes held and its hit ratio since start."""
        totals = getattr(self.engine, "prefix_cache_stats", dict)()
        if not totals:
            return {}
        batch = {k: totals[k] - self._cache_totals.get(k, 0) for k in ("hit_tokens", "prompt_tokens", "evictions")}
        self._cache_totals = totals
        return {**batch, "bytes_held": totals["bytes_held"], "hit_ratio": totals["hit_ratio"]}

    def _recommend(self, requests: list[RecRequest]) -> list:
        """The engine's answers; if the batch fails, each request alone, so one bad apple fails alone: its
        answer is then the engine's RequestError (a 400), or None (a 500)."""
        try:
            results = self.engine.recommend(requests)
            if len(results) != len(requests):
                raise RuntimeError(f"{len(results)} answers for {len(requests)} requests")
            return results
        except Exception as err:
            if len(requests) == 1:
                if isinstance(err, RequestError):
                    return [err]
                log.exception("engine %s failed on a request", self.engine_name)
                return [None]
            log.exception("engine %s failed on a batch of %d; retrying one by one", self.engine_name, len(requests))
        return [self._recommend([request])[0] for request in requests]
