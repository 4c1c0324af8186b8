"""The returning-users benchmark on the CPU: its trace, its measured point, its table and plot."""

import dataclasses
import json

import pytest
import torch

from xgr_toolkit.bench import returning
from xgr_toolkit.bench.report import markdown_table, plot_returning, write_markdown
from xgr_toolkit.bench.returning import EXTENSION_ITEMS, returning_trace, reuse_block, reuse_distance, trace_point
from xgr_toolkit.bench.workloads import WORKLOADS, warm_engine, workload_model
from xgr_toolkit.cli import main
from xgr_toolkit.engine import GREngine
from xgr_toolkit.synthetic import random_catalog, random_decoder

from engine_cases import assert_same_items

TINY = WORKLOADS["tiny"]


@pytest.fixture(scope="module")
def tiny():
    cfg = TINY.model_config()
    return cfg, random_catalog(TINY.catalog_items, cfg.levels, cfg.codes, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9])
def test_the_trace_returns_the_asked_fraction_and_every_prompt_fits(tiny, fraction):
    cfg, catalog = tiny
    trace = returning_trace(TINY, catalog, cfg, fraction, requests=1000, active_users=8)
    returns = sum(k != "first" for k in trace.kinds)
    assert returns == round(fraction * 1000) and trace.kinds[0] == "first"
    assert sum(k == "first" for k in trace.kinds) == len(set(trace.users))  # one first visit a user
    assert all(len(r.prompt) <= TINY.prompt_tokens for r in trace.requests)
    base = (TINY.prompt_tokens // cfg.levels - EXTENSION_ITEMS[1]) * cfg.levels
    lengths = {len(r.prompt) - base for r in trace.requests}
    assert lengths <= {0, cfg.levels, 2 * cfg.levels, 3 * cfg.levels}
    if fraction:
        assert {"same", "extended"} <= set(trace.kinds) and lengths == {0, 3, 6, 9}


def test_returns_keep_the_users_prefix_and_draw_new_exclusions(tiny):
    cfg, catalog = tiny
    trace = returning_trace(TINY, catalog, cfg, 0.9, requests=300, active_users=4)
    first = {}
    for r, user, kind in zip(trace.requests, trace.users, trace.kinds):
        if kind == "first":
            first[user] = r
            continue
        base = first[user].prompt
        assert r.prompt[:len(base)] == base  # the store's blocks of the base history hit
        assert (r.prompt == base) == (kind == "same")
    visits = [r.exclude_items for r, u in zip(trace.requests, trace.users) if u == trace.users[-1]]
    assert len(visits) > 2 and len(set(visits)) > len(visits) // 2  # drawn anew each visit
    other_users = {r.prompt[:12] for r, k in zip(trace.requests, trace.kinds) if k == "first"}
    assert len(other_users) == len(first)  # users' histories differ from the first block on


def test_the_trace_is_deterministic_by_seed(tiny):
    cfg, catalog = tiny
    a, b = (returning_trace(TINY, catalog, cfg, 0.5, requests=100, seed=3) for _ in range(2))
    c = returning_trace(TINY, catalog, cfg, 0.5, requests=100, seed=4)
    assert a == b and a.requests != c.requests


def test_the_trace_rejects_what_it_cannot_make(tiny):
    cfg, catalog = tiny
    with pytest.raises(ValueError, match="returning fraction"):
        returning_trace(TINY, catalog, cfg, 1.0)
    with pytest.raises(ValueError, match="no history"):
        returning_trace(dataclasses.replace(TINY, prompt_tokens=9), catalog, cfg, 0.5)


def test_reuse_distance_on_a_hand_made_trace():
    # user 0 at 0, 2, 5; user 1 at 1, 6; user 2 once: gaps 2, 3, 5
    d = reuse_distance([0, 1, 0, 2, 3, 0, 1])
    assert d == {"returns": 3, "mean": 10 / 3, "median": 3.0}
    assert reuse_distance([0, 1, 2])["returns"] == 0
    assert reuse_block(5000) == 40 and reuse_block(512) == 32 and reuse_block(96) == 32 and reuse_block(2465) == 29


def test_a_point_with_the_store_hits_and_answers_as_without(tiny):
    """A 90% returning trace through the engine's scheduler (open loop, CPU): the store's hit ratio over the
    point is measured and > 0, it holds blocks, and every answer equals the engine's without the store."""
    cfg, catalog = tiny
    model = workload_model(TINY, random_decoder(cfg, seed=0), catalog, cfg, device="cpu", dtype="float32",
                           compile=False, cuda_graphs=False, max_batch=2)
    trace = returning_trace(TINY, catalog, cfg, 0.9, requests=40, active_users=2)
    reuse = dataclasses.replace(model.config.serve, prefix_cache_bytes=1 << 24, prefix_cache_block=8,
                                prefix_cache_suffixes=[16, 32])
    engine, _ = warm_engine(model, reuse)
    point = trace_point(engine, trace.requests, rate=200.0, seconds=0.2)
    assert point["requests"] > 0 and point["hit_ratio"] > 0 and point["bytes_held"] > 0
    assert point["replayed_past_trace_end"] == max(0, point["requests"] - 40)
    again = trace_point(engine, trace.requests, rate=200.0, seconds=0.2)  # from an empty store again
    assert 0 < again["hit_ratio"] < 1
    engine.close()
    hits = engine.prefix_cache_stats()["hit_tokens"]
    assert_same_items(GREngine(model).recommend(trace.requests), engine.recommend(trace.requests))
    assert engine.prefix_cache_stats()["hit_tokens"] > hits  # the answers compared include hits
    without = GREngine(model)
    assert "hit_ratio" not in trace_point(without, trace.requests, rate=200.0, seconds=0.05)
    without.close()


def test_the_runner_builds_both_engines_and_fills_every_row(tiny, monkeypatch):
    """bench_returning's wiring on the CPU: the tiny engine with and without the store over three short traces,
    the rate search replaced by one measured point (it needs captured graphs' replay times)."""
    cfg, catalog = tiny
    model = workload_model(TINY, random_decoder(cfg, seed=0), catalog, cfg, device="cpu", dtype="float32",
                           compile=False, cuda_graphs=False, max_batch=2)
    built = []
    monkeypatch.setattr(returning, "build_workload", lambda w, cfg: built.append(cfg) or model)
    monkeypatch.setattr(returning.torch.cuda, "mem_get_info", lambda: (1 << 25, 1 << 26))
    monkeypatch.setattr(returning, "TRACE_REQUESTS", 30)
    monkeypatch.setattr(returning, "ACTIVE_USERS", 2)
    stores = []

    def one_point(engine, requests, seconds, measure):
        stores.append(engine.store)
        point = measure(300.0, seconds)
        return {"max_rps_at_p99_limit": point["arrival_rps"], "confirmed": point, "sweep": [point]}

    monkeypatch.setattr(returning, "throughput_at_limit", one_point)
    out = returning.bench_returning(TINY, seconds=0.1)
    json.dumps(out)  # goes into bench.json
    assert [c.max_prompt_tokens for c in built] == [TINY.prompt_tokens]  # one prompt bucket: the block divides it
    assert [s is not None for s in stores] == [True] * 3 + [False] * 3
    assert out["serve"] == {"prefix_cache_bytes": 1 << 24, "prefix_cache_block": 32, "prefix_cache_suffixes": [64]}
    rows = out["points"]
    assert [r["fraction"] for r in rows] == [0.0, 0.5, 0.9] and [r["kinds"]["first"] for r in rows] == [30, 15, 3]
    assert rows[0]["reuse"]["confirmed"]["hit_ratio"] == 0.0 < rows[2]["reuse"]["confirmed"]["hit_ratio"]
    assert "hit_ratio" not in rows[2]["no_reuse"]["confirmed"]
    assert all(r["speedup"] == r["reuse"]["max_rps_at_p99_limit"] / r["no_reuse"]["max_rps_at_p99_limit"]
               for r in rows)


META = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.9", "command": "xgr bench long --returning"}


def _row(fraction, hit, with_, without, meta=META):
    point = {"arrival_rps": with_, "requests": 1100, "p99_ms": 150.0, "hit_ratio": hit, "bytes_held": 3 * 2**30}
    return {"fraction": fraction, "reuse_distance": {"returns": 10, "mean": 35.5, "median": 30.0},
            "reuse": {"max_rps_at_p99_limit": with_, "confirmed": point if with_ else None},
            "no_reuse": {"max_rps_at_p99_limit": without, "confirmed": None},
            "speedup": with_ / without if without else None, "meta": meta}


def test_the_returning_table_and_plot_from_a_synthetic_json(tmp_path):
    other = {**META, "command": "xgr bench long --returning --fractions 0.9"}
    results = {"workloads": {"long": {"returning": {"serve": {"prefix_cache_block": 40},
                                                    "points": [_row(0.0, 0.0, 22.0, 22.5),
                                                               _row(0.9, 0.83, 70.0, 22.0, other),
                                                               _row(0.5, 0.4, 0.0, 22.0)]}}}}
    table = markdown_table(results)  # no other figures of `long`: only the returning users' table
    assert "Returning users" in table and "| workload | system |" not in table
    assert ("- long: NVIDIA H100 80GB HBM3, torch 2.9, `xgr bench long --returning`; NVIDIA H100 80GB HBM3, torch "
            "2.9, `xgr bench long --returning --fractions 0.9`; serve prefix_cache_block: 40") in table
    assert "| long | 90% | 35.5 / 30 | 83.0% | 70.0 | 22.0 | 3.18x | 3.00 |" in table
    assert "| long | 50% | 35.5 / 30 | — | 0.0 | 22.0 | 0.00x | — |" in table
    results["workloads"]["long"]["returning"]["points"][0]["reuse_distance"] = reuse_distance([0, 1])
    assert "| long | 0% | — | 0.0% | 22.0 | 22.5 | 0.98x | 3.00 |" in markdown_table(results)
    (tmp_path / "bench.json").write_text(json.dumps(results))
    write_markdown(tmp_path / "bench.json", tmp_path / "benchmarks.md")
    assert "3.18x" in (tmp_path / "benchmarks.md").read_text()
    assert plot_returning(results, tmp_path / "returning.png") and (tmp_path / "returning.png").stat().st_size > 0
    assert not plot_returning({"workloads": {}}, tmp_path / "none.png")
    assert "Returning users (`xgr bench WORKLOAD --returning`): not measured yet." in markdown_table({"workloads": {}})


def test_xgr_bench_returning_keeps_other_fractions_and_other_figures(tmp_path, monkeypatch):
    """The CLI with --returning --fractions 0.9 --append: the 0.9 row replaced, the 0.0 row and the workload's
    other figures kept, the table written (the measurement itself faked: it needs a GPU)."""
    out = tmp_path / "b"
    out.mkdir()
    old = {"workloads": {"long": {"other": 1, "returning": {"serve": {}, "points": [_row(0.0, 0.0, 22.0, 22.5),
                                                                                   _row(0.9, 0.5, 30.0, 22.0)]}}}}
    (out / "bench.json").write_text(json.dumps(old))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "fake GPU")
    asked = []

    def fake(w, seconds, fractions):
        asked.append((w.name, seconds, fractions))
        return {"serve": {"prefix_cache_block": 40}, "points": [dict(_row(0.9, 0.8, 70.0, 22.0), meta=None)]}

    monkeypatch.setattr(returning, "bench_returning", fake)
    assert main(["bench", "long", "--returning", "--seconds", "2", "--append", "--out", str(out),
                 "--fractions", "0.9"]) == 0
    assert asked == [("long", 2.0, (0.9,))]
    entry = json.loads((out / "bench.json").read_text())["workloads"]["long"]
    assert entry["other"] == 1 and [r["fraction"] for r in entry["returning"]["points"]] == [0.0, 0.9]
    assert entry["returning"]["points"][1]["reuse"]["max_rps_at_p99_limit"] == 70.0
    assert entry["returning"]["points"][1]["meta"]["gpu"] == "fake GPU"
    assert "| long | 90% | 35.5 / 30 | 80.0% | 70.0 | 22.0 | 3.18x | 3.00 |" in (tmp_path / "benchmarks.md").read_text()
    assert (out / "returning.png").exists() and not (out / "bench.png").exists()
