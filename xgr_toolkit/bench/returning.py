"""Returning users (issue 15, item 6): a seeded trace of users who come back, and the open-loop rate at
P99 <= 200 ms of the engine with the prompt-KV store against the same engine without it, in one run.

The trace: every request is either a user's first visit or, with probability ``fraction``, a return of
one of the ``active_users`` most recently arrived users. A return sends the same history with new
exclusions or the history with 1 to 3 new items appended (``levels`` SID tokens an item). The workloads
have one prompt bucket P, so an extended prompt must still fit P: base histories are ``P // L - 3``
whole items (at most P - 3L tokens) and an extension appends to the base history, not to the previous
extension. Dropping the front of the history instead would change every block key and defeat reuse.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import random
import statistics
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..catalog import ItemCatalog
from ..config import ModelConfig
from ..engine import GREngine
from ..request import RecRequest, sid_tokens
from .load import open_loop
from .run import throughput_at_limit
from .workloads import Workload, build_workload, warm_engine, workload_requests

__all__ = ["FRACTIONS", "Trace", "bench_returning", "returning_trace", "reuse_block", "reuse_distance",
           "trace_point"]

FRACTIONS = (0.0, 0.5, 0.9)  # the share of requests that are a return of an earlier user
# Longer than any open-loop point replays (the confirmation is >= 1,000 requests): each point replays
# the trace from its start, in order, once (``replayed_past_trace_end`` says if not).
TRACE_REQUESTS = 2000
ACTIVE_USERS = 32  # the users a return is drawn from: `long`'s working set 32 x ~560 MB of prompt KV
SUFFIXES = (64, 256, 1024)  # serve.prefix_cache_suffixes, those below P
MAX_BLOCK = 40  # serve.prefix_cache_block: P's largest divisor up to this (host planning is per block)
EXTENSION_ITEMS = (1, 3)  # items appended on an extended return, inclusive
EXCLUSIONS = (1, 4)  # items a visit excludes, inclusive, drawn anew each visit


@dataclass
class Trace:
    """R requests in arrival order, each with its user and what kind of visit it is."""

    requests: list[RecRequest]  # [R]
    users: list[int]  # [R] user ids, 0.. in order of first visit
    kinds: list[str]  # [R] "first", "same" (same history, new exclusions) or "extended"


def reuse_distance(users: list[int]) -> dict[str, float]:
    """Requests between a user's consecutive visits (position j - position i; 1: the very next request),
    over every return: their count, mean and median (nan without returns)."""
    last: dict[int, int] = {}
    gaps = []
    for j, u in enumerate(users):
        if u in last:
            gaps.append(j - last[u])
        last[u] = j
    nan = float("nan")
    return {"returns": len(gaps), "mean": statistics.fmean(gaps) if gaps else nan,
            "median": float(statistics.median(gaps)) if gaps else nan}


def reuse_block(prompt_tokens: int) -> int:
    """The store's block for a workload of one prompt bucket P: P's largest divisor <= ``MAX_BLOCK``."""
    return max(b for b in range(1, MAX_BLOCK + 1) if prompt_tokens % b == 0)


def _base_items(prompt_tokens: int, levels: int) -> int:
    """Items of a base history: the longest extension still fits the prompt bucket P."""
    return prompt_tokens // levels - EXTENSION_ITEMS[1]


def returning_trace(w: Workload, catalog: ItemCatalog, cfg: ModelConfig, fraction: float,
                    requests: int = TRACE_REQUESTS, active_users: int = ACTIVE_USERS, seed: int = 0) -> Trace:
    """The returning-users trace of ``w`` (module docstring): exactly ``round(fraction * requests)`` returns,
    the first request a first visit; every prompt at most P tokens; the same ``seed``, the same trace."""
    if not 0 <= fraction < 1:
        raise ValueError(f"returning fraction {fraction}: must be in [0, 1) (the first request is a first visit)")
    if requests < 1 or active_users < 1:
        raise ValueError(f"requests {requests} and active_users {active_users}: both must be >= 1")
    L = cfg.levels
    items = _base_items(w.prompt_tokens, L)
    if items < 1:
        raise ValueError(f"workload {w.name}: P = {w.prompt_tokens} leaves no history below {EXTENSION_ITEMS[1]} "
                         f"appended items of {L} tokens")
    rng = random.Random(seed)
    returns = set(rng.sample(range(1, requests), round(fraction * requests)))
    bases = workload_requests(w, catalog, cfg, count=requests - len(returns), prompt_tokens=items * L, seed=seed)

    def random_items(count: int) -> list[int]:
        return [rng.randrange(len(catalog)) for _ in range(count)]

    out = Trace([], [], [])
    active: list[int] = []  # user ids, oldest arrival first
    users = 0
    for j in range(requests):
        if j in returns:
            user = rng.choice(active)
            kind = rng.choice(("same", "extended"))
        else:
            user, kind, users = users, "first", users + 1
            active = (active + [user])[-active_users:]
        prompt = bases[user].prompt
        if kind == "extended":
            appended = catalog.codes[random_items(rng.randint(*EXTENSION_ITEMS))]  # [n, L]
            prompt += tuple(sid_tokens(cfg, appended).flatten().tolist())
        exclude = frozenset(catalog.item_ids[random_items(rng.randint(*EXCLUSIONS))].tolist())
        out.requests.append(dataclasses.replace(bases[user], prompt=prompt, exclude_items=exclude))
        out.users.append(user)
        out.kinds.append(kind)
    return out


def trace_point(engine: GREngine, requests: list[RecRequest], rate: float, seconds: float) -> dict:
    """One open-loop point over the trace from its start, the store emptied first (an earlier point's
    users would otherwise all hit); with the store on, its hit ratio over this point (the counters' delta),
    the bytes it holds at the end and its evictions."""
    if engine.store is not None:
        engine.store.clear()
    before = engine.prefix_cache_stats()
    point = open_loop(engine.submit, requests, rate, seconds)
    point["replayed_past_trace_end"] = max(0, point["requests"] - len(requests))
    after = engine.prefix_cache_stats()
    if after:
        tokens = after["prompt_tokens"] - before["prompt_tokens"]
        point["hit_ratio"] = (after["hit_tokens"] - before["hit_tokens"]) / tokens if tokens else 0.0
        point["bytes_held"] = after["bytes_held"]
        point["evictions"] = after["evictions"] - before["evictions"]
    return point


def bench_returning(w: Workload, seconds: float = 3.0, fractions: tuple[float, ...] = FRACTIONS,
                    cache_fraction: float = 0.5) -> dict:
    """For each returning fraction, requests/s at P99 <= 200 ms with the store (``cache_fraction`` of the GPU's
    free memory before the engine is built, blocks of :func:`reuse_block`, suffixes of ``SUFFIXES`` below P)
    and without it, both engines built in this run over the same weights and traces."""
    P = w.prompt_tokens
    # one prompt bucket, P (the presets' max_prompt_tokens would be a second, one the block must divide too)
    cfg = dataclasses.replace(w.model_config(), max_prompt_tokens=P)
    model = build_workload(w, cfg)
    traces = {f: returning_trace(w, model.catalog, cfg, f, TRACE_REQUESTS, ACTIVE_USERS) for f in fractions}
    reuse = {"prefix_cache_bytes": int(cache_fraction * torch.cuda.mem_get_info()[0]),
             "prefix_cache_block": reuse_block(P), "prefix_cache_suffixes": [s for s in SUFFIXES if s < P]}
    rows = [{"fraction": f, "reuse_distance": reuse_distance(t.users),
             "kinds": {k: t.kinds.count(k) for k in ("first", "same", "extended")}} for f, t in traces.items()]
    steps = tqdm(total=2 * len(fractions), desc=f"{w.name} returning users")
    for system, change in (("reuse", reuse), ("no_reuse", {})):
        engine, warmup_s = warm_engine(model, dataclasses.replace(model.config.serve, **change))
        for row, trace in zip(rows, traces.values()):
            measure = functools.partial(trace_point, engine, trace.requests)
            row[system] = {"warmup_s": warmup_s,
                           **throughput_at_limit(engine, trace.requests, seconds, measure=measure)}
            steps.update()
        engine.close()
        del engine, measure  # the next engine needs its memory (the store's pool: half the GPU)
        gc.collect()
        torch.cuda.empty_cache()
    steps.close()
    for row in rows:
        with_, without = row["reuse"]["max_rps_at_p99_limit"], row["no_reuse"]["max_rps_at_p99_limit"]
        row["speedup"] = with_ / without if without else None
    return {"trace": {"requests": TRACE_REQUESTS, "active_users": ACTIVE_USERS, "base_history_tokens":
                      _base_items(P, cfg.levels) * cfg.levels, "extension_items": EXTENSION_ITEMS},
            "serve": reuse, "points": rows}
