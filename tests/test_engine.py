"""The fast engine (shared prompt KV, staged attention, masked sorter, catalog masks) == the reference."""

import dataclasses
import gc
import json
import weakref
from contextlib import closing

import pytest
import torch
from torch._dynamo.utils import counters

from xgr_toolkit import ServeConfig, build_request
from xgr_toolkit.cli import main
from xgr_toolkit.engine import BeamKVCache, GREngine
from xgr_toolkit.engine.batch import make_batch
from xgr_toolkit.engines import ReferenceEngine

from engine_cases import assert_same_items, random_case


@pytest.mark.parametrize("seed", range(8))
def test_fast_engine_equals_reference(seed):
    model, requests = random_case(seed)
    assert_same_items(ReferenceEngine(model).recommend(requests), GREngine(model).recommend(requests))


@pytest.mark.parametrize("seed", range(3))
def test_fast_engine_equals_reference_under_stable_truncation(seed):
    """model.truncation: stable, histories growing one item at a time past the limit: both engines get
    the same truncated prompt from build_request, and answer the same."""
    model, requests = random_case(seed)
    cfg = dataclasses.replace(model.config.model, truncation="stable")
    model = dataclasses.replace(model, config=dataclasses.replace(model.config, model=cfg))
    ids, limit = model.catalog.item_ids.tolist(), cfg.max_prompt_tokens // cfg.levels
    history = ids[seed:seed + limit + 6]
    growing = [build_request(cfg, model.catalog, history_items=history[:n], beam_width=r.beam_width, top_k=r.top_k,
                             max_beam_width=16, exclude_items=sorted(r.exclude_items), normalize=r.normalize)
               for n, r in zip(range(limit - 1, limit + 6), requests, strict=True)]
    assert [r.truncated > 0 for r in growing] == [False, False] + [True] * 5
    assert all(len(r.prompt) <= cfg.max_prompt_tokens for r in growing)
    assert_same_items(ReferenceEngine(model).recommend(growing), GREngine(model).recommend(growing))


@pytest.mark.parametrize("ablation", ["shared_prompt_kv", "masked_sorter"])
def test_each_ablation_still_equals_reference(ablation):
    model, requests = random_case(1, ServeConfig(prompt_buckets=[40], max_batch=4, **{ablation: False}))
    assert_same_items(ReferenceEngine(model).recommend(requests), GREngine(model).recommend(requests))


def test_compiled_engine_equals_reference_on_the_cpu():
    """torch.compile'd layers and head (the GPU's code path minus CUDA graphs), every bucket warmed up."""
    model, requests = random_case(3, ServeConfig(prompt_buckets=[40], max_batch=2, compile=True))
    with closing(GREngine(model)) as engine:  # closed: warm-up's frozen collector thawed for later tests
        engine.warmup()
        assert_same_items(ReferenceEngine(model).recommend(requests), engine.recommend(requests))


def test_a_compiled_engine_without_graphs_compiles_nothing_after_warm_up():
    """Batches are padded to the warmed-up buckets also without CUDA graphs (the "no CUDA graphs"
    ablation compiles): a batch of 3 must not compile a shape of its own."""
    model, requests = random_case(3, ServeConfig(prompt_buckets=[8, 40], max_batch=4, compile=True))
    with closing(GREngine(model)) as engine:
        engine.warmup()
        graphs = counters["stats"]["unique_graphs"]
        for size in (1, 2, 3, 4):
            assert_same_items(ReferenceEngine(model).recommend(requests[:size]), engine.recommend(requests[:size]))
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("buckets", [dict(prompt_buckets=[8, 40]),
                                     dict(prompt_buckets=[40], prefix_cache_suffixes=[12])],
                         ids=["suffixes-are-prompt-buckets", "suffixes-of-their-own"])
def test_a_compiled_engine_with_prompt_reuse_compiles_nothing_after_warm_up(buckets):
    """With the prompt store, warm-up also compiles each suffix bucket (a returning user's prefill of the
    uncached rest only): new users, returning ones and extended histories compile nothing of their own."""
    serve = ServeConfig(max_batch=4, compile=True, prefix_cache_bytes=1 << 20, prefix_cache_block=8, **buckets)
    model, requests = random_case(3, serve)
    extended = [dataclasses.replace(r, prompt=(r.prompt + (1, 2, 3))[-40:]) for r in requests]
    with closing(GREngine(model)) as engine:
        engine.warmup()
        graphs = counters["stats"]["unique_graphs"]
        reference = ReferenceEngine(model)
        for size in (1, 2, 3, 4):
            for batch in (requests[:size], requests[:size], extended[:size]):  # new, returning, extended
                assert_same_items(reference.recommend(batch), engine.recommend(batch))
        assert engine.prefix_cache_stats()["hit_tokens"] > 0
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_closed_engine_is_freed_although_warm_up_froze_the_collector():
    """Warm-up ends with gc.freeze(); an engine in a reference cycle must still be freed once closed and
    dropped (else each benchmark engine kept its device memory and the HF baseline ran out of it)."""
    model, _ = random_case(4, ServeConfig(prompt_buckets=[40], max_batch=2))
    engine = GREngine(model)
    engine.itself = engine  # a reference cycle: only the collector can free it
    engine.warmup()
    alive = weakref.ref(engine)
    engine.close()
    del engine
    gc.collect()
    assert alive() is None


def test_submit_batches_in_the_background_and_answers_each_request():
    model, requests = random_case(2, ServeConfig(prompt_buckets=[40], max_batch=3, max_wait_ms=20))
    with closing(GREngine(model)) as engine:
        got = [f.result(timeout=60) for f in [engine.submit(r) for r in requests]]
    assert_same_items(ReferenceEngine(model).recommend(requests), got)


def test_prompt_cache_is_written_once_and_its_memory_does_not_depend_on_beam_width():
    model, requests = random_case(4)
    search = GREngine(model).search
    cache = search.cache
    batch = make_batch(requests[:2], model.catalog, 40, 256)
    state = search.first_step(search.prefill(batch), batch)
    prompt_ptr, prompt_before = cache.prompt_k.data_ptr(), cache.prompt_k.clone()
    beams_before = cache.beam_k.clone()
    for t in range(1, model.config.model.levels):
        state = search.decode_step(t, state, batch)
    assert cache.prompt_k.data_ptr() == prompt_ptr and torch.equal(cache.prompt_k, prompt_before)
    assert not torch.equal(cache.beam_k, beams_before)  # the per-beam cache did move

    def prompt_bytes(width):
        c = BeamKVCache()
        c.setup(2, 4, 40, width, 3, 2, 16, torch.float32, "cpu")
        return c.prompt_k.nbytes + c.prompt_v.nbytes
    assert prompt_bytes(16) == prompt_bytes(1024)


def test_reorder_moves_no_keys_and_traces_each_beams_ancestors():
    """Three decode steps: beam w's position l must be read from the slot of its ancestor at step l,
    whatever an earlier search left in the lineage, and no key or value moves."""
    cache = BeamKVCache()
    cache.setup(1, 2, 5, 4, 3, 1, 2, torch.float32, "cpu")
    cache.beam_k.normal_()
    cache.prompt_k.normal_()
    cache.lineage.fill_(3)  # left over from an earlier search
    prompt, beams = cache.prompt_k.clone(), cache.beam_k.clone()
    parents = [torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0]]),  # step 1 continues the root
               torch.tensor([[0, 0, 2, 3], [1, 1, 1, 3]]), torch.tensor([[1, 1, 2, 3], [0, 1, 2, 2]])]
    for filled, parent in enumerate(parents):
        cache.reorder(parent, filled)
    for r in range(2):
        for w in range(4):
            ancestors = [int(parents[1][r, parents[2][r, w]]), int(parents[2][r, w]), w]  # the slot of each position
            assert cache.lineage[r, w].tolist() == ancestors
    assert torch.equal(cache.prompt_k, prompt) and torch.equal(cache.beam_k, beams)


def test_cli_fast_engine_prints_what_the_reference_prints(tiny_model_dir, capsys):
    args = [str(tiny_model_dir), "--history", "1000 1001 1002", "--beam-width", "16", "--k", "10",
            "--exclude", "1003 1004", "--normalize", "level"]
    outputs = []
    for engine in ("reference", "fast"):
        assert main(["recommend", *args, "--engine", engine]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert [i["item_id"] for i in outputs[0]["items"]] == [i["item_id"] for i in outputs[1]["items"]]
    assert len(outputs[0]["items"]) == 10
