"""The benchmark's arithmetic and its report, on the CPU (the measurements themselves need a GPU)."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from xgr_toolkit import ModelConfig
from xgr_toolkit.bench import run as bench_run
from xgr_toolkit.bench.flops import request_flops, weight_bytes
from xgr_toolkit.bench.load import percentiles
from xgr_toolkit.bench.report import markdown_table, plot, plot_sweeps, write_markdown
from xgr_toolkit.bench.workloads import DEFAULT_WORKLOADS, WORKLOADS, warm_engine, workload_model, workload_requests
from xgr_toolkit.cli import build_parser
from xgr_toolkit.cli import main as xgr
from xgr_toolkit.engines import ReferenceEngine
from xgr_toolkit.synthetic import random_catalog, random_decoder

from engine_cases import assert_same_items


def test_request_flops_count_by_hand():
    cfg = ModelConfig(num_layers=1, hidden_size=4, num_heads=2, num_kv_heads=1, head_dim=2, intermediate_size=8,
                      sid_offset=2, levels=2, codes=3)  # V = 8
    linear = 4 * (2 + 2) * 2 + 2 * 2 * 4 + 3 * 4 * 8  # q, k, v; o; gate, up, down
    head = 2 * 4 * 8
    kv = 2 * 4 * 2 * 2  # k and v: hidden 4 -> 2 values each
    flops = request_flops(cfg, prompt=5, beam_width=3)
    # one layer, so the last: k and v of 5 tokens, the rest and the attention of the last one over 5 keys
    assert flops["prefill"] == 5 * kv + (2 * linear - kv) + 4 * 5 * 4 + head
    two_layers = dataclasses.replace(cfg, num_layers=2)  # the first takes all 5 tokens, causal attention
    assert request_flops(two_layers, 5, 3)["prefill"] == flops["prefill"] + 5 * 2 * linear + 2 * 25 * 4
    assert flops["decode"] == 1 * 3 * (2 * linear + 4 * (5 + 2) * 4 + head)
    assert flops["total"] == flops["prefill"] + flops["decode"]
    assert weight_bytes(cfg) == (linear + 4 * 8) * 2


@pytest.mark.parametrize("holds_up_to", [300.0, 1000.0, 2_000.0])
@pytest.mark.parametrize("long_points_hold", [1.0, 0.93], ids=["long-points-hold", "long-points-need-10pc-less"])
def test_throughput_search_finds_the_highest_rate_that_holds(monkeypatch, holds_up_to, long_points_hold):
    """A simulated server whose P99 holds up to ``holds_up_to`` req/s in short points, and up to
    ``long_points_hold`` of that in points of 1,000 requests or more; the GPU's capacity 1,000 req/s."""
    rates = []

    def open_loop(submit, requests, rate, seconds):
        rates.append(rate)
        count = int(rate * seconds)
        limit = holds_up_to * (long_points_hold if count >= 1000 else 1.0)
        return {"arrival_rps": rate, "requests": count, "p99_ms": 50.0 if rate <= limit else 900.0}

    monkeypatch.setattr(bench_run, "open_loop", open_loop)
    engine = SimpleNamespace(capacity_rps=lambda prompt_len: 1000.0, submit=None)
    found = bench_run.throughput_at_limit(engine, [SimpleNamespace(prompt=(1, 2))], 0.5, points=8)  # short
    searched = 1 if holds_up_to >= 1000 else 8  # the capacity holds: one point, nothing to search
    held = max(r for r in rates[:searched] if r <= holds_up_to)
    if holds_up_to < 1000:
        assert holds_up_to * (1 - 2**-6) <= held
    confirming = rates[searched:]  # held, then 5% less each time a long point fails
    assert confirming == pytest.approx([held * 0.95**k for k in range(len(confirming))])
    assert confirming[-1] <= holds_up_to * long_points_hold and all(
        r > holds_up_to * long_points_hold for r in confirming[:-1])
    assert found["max_rps_at_p99_limit"] == confirming[-1] == found["confirmed"]["arrival_rps"]
    assert found["confirmed"]["requests"] >= bench_run.CONFIRM_REQUESTS


def test_throughput_search_reports_no_rate_where_even_confirmation_fails(monkeypatch):
    monkeypatch.setattr(bench_run, "open_loop", lambda submit, requests, rate, seconds: {
        "arrival_rps": rate, "requests": int(rate * seconds), "p99_ms": 50.0 if rate * seconds < 1000 else 900.0})
    engine = SimpleNamespace(capacity_rps=lambda prompt_len: 100.0, submit=None)
    found = bench_run.throughput_at_limit(engine, [SimpleNamespace(prompt=(1, 2))], 1.0)
    assert found["max_rps_at_p99_limit"] == 0.0 and found["confirmed"] is None
    assert len(found["sweep"]) == 1 + bench_run.CONFIRM_TRIES


def test_percentiles_are_nearest_rank():
    p = percentiles([i / 1000 for i in range(100, 0, -1)])  # 1..100 ms, unsorted
    assert p["p50_ms"] == 50 and p["p99_ms"] == 99 and abs(p["mean_ms"] - 50.5) < 1e-9
    assert percentiles([0.007])["p99_ms"] == 7 and percentiles([])["p50_ms"] != percentiles([])["p50_ms"]  # nan


def _system(p50, rps):
    return {"c1": {"p50_ms": p50, "p99_ms": p50 * 1.1}, "c4": {"p50_ms": p50 * 2, "p99_ms": p50 * 3,
                                                              "throughput_rps": rps}, "peak_memory_gib": 1.0}


def _measured_workload() -> dict:
    """What bench_workload returns for one workload, every kind of row in it."""
    return {"xgr": {**_system(3.0, 500.0), "max_rps_at_p99_limit": 450.0,
                                       "confirmed": {"requests": 1234, "p99_ms": 150.0},
                                       "gpu_ms_per_batch": {"R1": 0.5}},
                "ablations": {"no compile": _system(4.0, 400.0), "no shared prompt KV": {"error": "out of memory"}},
                "hf": {"c1": {"p50_ms": 20.0, "p99_ms": 22.0, "throughput_rps": 48.0}, "best_rps": 50.0},
                "speedup_vs_hf": 10.0,
                "mfu": 0.25, "floor_ms": 0.1, "c1_p50_over_floor": 30.0, "decode_floor_ms": 0.05,
                "bf16_top_k_agreement": 0.99, "warmup_s": 12.0, "decode_over_floor": 2.5,
                "phases_ms": {"R1": {"prefill + level 0": 1.0, "decode level 1": 0.25, "decode": 0.25}},
                "profile": {"R1": {"kernels_per_replay": 99.0, "ms_by_kind": {"matrix product": 0.75}}},
                "sweeps": {"beam_width": [{"value": 64, "gpu_ms": 1.0, "phases_ms": {"decode": 0.5}},
                                          {"value": 1024, "error": "out of memory"}]}}


def test_markdown_table_is_generated_from_the_json(tmp_path):
    meta = {"gpu": "GPU-X", "torch": "9.9", "command": "xgr bench tiny"}
    results = {"workloads": {"tiny": {"meta": meta, **_measured_workload()}}}
    table = markdown_table(results)
    assert "| 450.0 | open loop: 1,234 requests, P99 150.0 ms |" in table
    assert "GPU-X" in table and "| tiny | no shared prompt KV |" in table and "out of memory" in table
    assert "| tiny | 10.0x | 25.0% |" in table and "R1: 0.50" in table and "99.0%" in table and "| 2.50 |" in table
    assert "| tiny | 1 | prefill + level 0 1.00, decode level 1 0.25 | 99 | matrix product 0.75 |" in table
    assert "| tiny | beam_width | 64 | 1.00 | 0.50 |" in table
    assert "| tiny | beam_width | 1,024 | out of memory |" in table
    assert plot_sweeps(results, tmp_path / "sweeps.png") and (tmp_path / "sweeps.png").stat().st_size > 0
    (tmp_path / "bench.json").write_text(json.dumps(results))
    write_markdown(tmp_path / "bench.json", tmp_path / "benchmarks.md")
    assert table in (tmp_path / "benchmarks.md").read_text()


def test_published_anchor_workloads_have_their_shapes():
    onerec, beams = WORKLOADS["onerec"].model_config(), WORKLOADS["beams-5k"].model_config()
    assert (onerec.levels, onerec.codes, onerec.vocab_size, onerec.hidden_size) == (4, 8192, 1024 + 4 * 8192, 2048)
    assert onerec.max_prompt_tokens >= 2465 and WORKLOADS["onerec"].catalog_items == 1_500_000
    assert (beams.levels, beams.vocab_size, beams.hidden_size, WORKLOADS["beams-5k"].beam_width) == (
        3, 1024 + 3 * 8192, 1024, 5000)
def test_float8_rows_stand_beside_bf16_in_the_table_and_the_plot(tmp_path):
    meta = {"gpu": "GPU-X", "torch": "9.9", "command": "xgr bench tiny --fp8"}
    sweep = [{"arrival_rps": 100.0, "p99_ms": 50.0}, {"arrival_rps": 200.0, "p99_ms": 300.0}]
    bf16 = {**_system(3.0, 500.0), "max_rps_at_p99_limit": 400.0, "gpu_ms_per_batch": {"R1": 0.5, "R8": 2.0},
            "sweep": sweep}
    fp8 = {**_system(2.0, 750.0), "max_rps_at_p99_limit": 600.0, "gpu_ms_per_batch": {"R1": 0.4, "R8": 1.25},
           "sweep": sweep, "top_k_agreement": 0.955, "float8_layers": 8,
           "mfu": {"vs_bf16_rate": 0.3, "vs_fp8_rate": 0.15}}
    workload = {"meta": meta, "xgr": bf16, "fp8": fp8, "peaks": {"bf16_tflops": 800.0, "fp8_tflops": 1600.0},
                "mfu": 0.2, "floor_ms": 0.1, "c1_p50_over_floor": 30.0, "decode_floor_ms": 0.05,
                "bf16_top_k_agreement": 0.99, "warmup_s": 12.0}
    table = markdown_table({"workloads": {"tiny": workload}})
    assert "| tiny | xgr, float8 linear layers | 2.0 | 2.2 | 4.0 | 6.0 | 750.0 | 600.0 | |" in table
    assert ("| tiny | 99.0%, 95.5% | 500.0, 750.0 (1.50x) | 400.0, 600.0 (1.50x) | 30.0%, 15.0% | 800, 1,600 "
            "| R8: 2.00, 1.25 | 8 |") in table
    plot({"workloads": {"tiny": workload}}, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0
    without = {k: v for k, v in workload.items() if k != "fp8"}  # a run without --fp8
    assert "float8" not in markdown_table({"workloads": {"tiny": without}})


def test_workloads_not_yet_run_on_a_gpu_run_only_when_named():
    assert build_parser().parse_args(["bench"]).workloads == list(DEFAULT_WORKLOADS)
    assert {"onerec", "beams-5k"} <= set(WORKLOADS) - set(DEFAULT_WORKLOADS)
    assert build_parser().parse_args(["bench", "onerec"]).workloads == ["onerec"]


def test_the_benchmark_workload_set_up_answers_as_the_reference_on_the_cpu():
    w = WORKLOADS["tiny"]
    cfg = w.model_config()
    catalog = random_catalog(w.catalog_items, cfg.levels, cfg.codes, seed=0)
    model = workload_model(w, random_decoder(cfg, seed=0), catalog, cfg, device="cpu", dtype="float32",
                           compile=False, cuda_graphs=False)
    requests = workload_requests(w, catalog, cfg, count=2)
    assert [len(r.prompt) for r in requests] == [w.prompt_tokens] * 2 and model.config.serve.max_batch == w.max_batch
    engine, seconds = warm_engine(model, model.config.serve)
    assert seconds >= 0
    assert_same_items(ReferenceEngine(model).recommend(requests), engine.recommend(requests))


@pytest.mark.parametrize("cut_short", [True, False])
def test_a_run_cut_short_keeps_the_figures_measured_so_far(tmp_path, monkeypatch, cut_short):
    def measure(w, *args, progress, **kwargs):
        progress({"workload": {"name": w.name}, "xgr": {"max_rps_at_p99_limit": 21.5}})
        if cut_short:
            raise TimeoutError("the device call's limit")
        return _measured_workload()

    monkeypatch.setenv("XGR_COMMIT", "abc1234")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "GPU-X")
    monkeypatch.setattr(bench_run, "bench_workload", measure)
    code = xgr(["bench", "long", "--out", str(tmp_path / "b")])
    if cut_short:  # the figures so far, no bench.json
        kept = json.loads((tmp_path / "b" / "partial" / "long.json").read_text())
        assert code != 0 and kept["xgr"]["max_rps_at_p99_limit"] == 21.5 and kept["meta"]["gpu"] == "GPU-X"
        assert not (tmp_path / "b" / "bench.json").exists()
    else:  # bench.json with the commit measured, the partial file gone
        assert code == 0 and not (tmp_path / "b" / "partial").exists()
        written = json.loads((tmp_path / "b" / "bench.json").read_text())["workloads"]["long"]
        assert written["meta"]["commit"] == "abc1234"
        assert "commit abc1234" in (tmp_path / "benchmarks.md").read_text()
