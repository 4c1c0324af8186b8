"""The prompt-KV store: its bookkeeping (hash chain, LRU, pins, budget, config errors), and the engine with
reuse on answering exactly what the reference answers, over returning users of every kind."""

import dataclasses
import random

import pytest
import torch

from xgr_toolkit import ConfigError, ServeConfig, build_request
from xgr_toolkit.engine import BeamKVCache, GREngine, PromptStore
from xgr_toolkit.engines import ReferenceEngine
from xgr_toolkit.request import RecRequest

from engine_cases import assert_same_items, random_case

LAYERS, KV_HEADS, HEAD_DIM, BLOCK = 2, 1, 2, 4
BLOCK_BYTES = LAYERS * 2 * BLOCK * KV_HEADS * HEAD_DIM * 4  # float32


def _store(blocks: int, block: int = BLOCK, buckets=(8, 16)) -> PromptStore:
    """A store of ``blocks`` usable blocks (plus scratch) of a 2-layer, 1-kv-head, D = 2 model."""
    return PromptStore((blocks + 1) * BLOCK_BYTES, block, list(buckets), LAYERS, KV_HEADS, HEAD_DIM,
                       torch.float32, "cpu")


def _plan(store: PromptStore, *prompts, P: int = 16):
    suffix, plan, lease = store.plan(list(prompts), len(prompts), P, [b for b in (8, 16) if b <= P])
    return suffix, plan, lease


def _read_blocks(plan, row: int, store: PromptStore) -> int:
    return int((plan.read[row] != store.scratch).sum())


# ---- the store alone ---------------------------------------------------------------------------
def test_keys_chain_every_token_up_to_the_block_end():
    store = _store(8)
    a = tuple(range(10))
    keys = store.keys(a)
    assert len(keys) == 2  # the partial third block is not keyed
    assert store.keys(a + (99, 98, 97))[:2] == keys  # an extension keeps the prefix's keys
    assert store.keys((0, 1, 2, 3, 4, 5, 6, 77, 8, 9))[0] == keys[0]  # diverging inside block 1
    assert store.keys((0, 1, 2, 3, 4, 5, 6, 77, 8, 9))[1] != keys[1]
    assert store.keys((5, 1, 2, 3, 4, 5, 6, 7))[1] != keys[1]  # same block tokens, other parent


def test_lookup_finds_the_longest_stored_prefix_and_leaves_the_last_token_to_compute():
    store = _store(8)
    a = tuple(range(12))  # three full blocks
    suffix, plan, lease = _plan(store, a)
    assert suffix == 16 and int(plan.start[0]) == 0 and _read_blocks(plan, 0, store) == 0
    assert (plan.write[0, :3] != store.scratch).all() and (plan.write[0, 3:] == store.scratch).all()
    store.release(lease)
    suffix, plan, lease = _plan(store, a)  # the same prompt: its last block is recomputed for the last token
    assert _read_blocks(plan, 0, store) == 2 and suffix == 8 and int(plan.start[0]) == 8
    assert (plan.write[0] == store.scratch).all()  # nothing new to store
    store.release(lease)
    suffix, plan, lease = _plan(store, a + (50, 51, 52))  # extended: three blocks read
    assert _read_blocks(plan, 0, store) == 3 and suffix == 8 and int(plan.start[0]) == 8  # min(12, P - S)
    store.release(lease)
    _, plan, lease = _plan(store, a[:6] + (70,) * 6)  # diverges inside block 1: only block 0 read
    assert _read_blocks(plan, 0, store) == 1
    store.release(lease)


def test_lru_evicts_the_least_recently_used_block():
    store = _store(3)
    users = [tuple(range(u * 10, u * 10 + 4)) + (1,) for u in range(4)]  # one full block each
    for u in users[:3]:
        store.release(_plan(store, u)[2])
    store.release(_plan(store, users[0])[2])  # user 0 is used again: user 1 is now the oldest
    store.release(_plan(store, users[3])[2])
    assert store.stats()["evictions"] == 1
    hits = {u: _read_blocks(_plan(store, users[u])[1], 0, store) for u in (0, 2, 3)}
    assert hits == {0: 1, 2: 1, 3: 1}
    assert store.keys(users[1])[0] not in store._slots


def test_pinned_blocks_are_never_evicted_and_the_budget_is_never_exceeded():
    store = _store(3)
    a, b = tuple(range(12)) + (0,), tuple(range(100, 112)) + (0,)
    _, plan_a, lease_a = _plan(store, a)  # in flight: three blocks pinned, the store full
    _, plan_b, lease_b = _plan(store, b)
    assert (plan_b.write == store.scratch).all(), "b could only be stored by evicting a batch in flight"
    assert store.stats()["evictions"] == 0 and store.stats()["pinned_blocks"] == 3
    store.release(lease_b)
    store.release(lease_a)
    _, plan_b, lease_b = _plan(store, b)  # a's blocks are free to go now
    assert (plan_b.write[0, :3] != store.scratch).all() and store.stats()["evictions"] == 3
    store.release(lease_b)


def test_clear_empties_the_store_between_batches_only():
    store = _store(3)
    a = tuple(range(12)) + (0,)
    _, _, lease = _plan(store, a)
    with pytest.raises(RuntimeError, match="3 blocks are pinned"):
        store.clear()
    store.release(lease)
    _, plan, lease = _plan(store, a)
    assert (plan.start == 8).all()  # stored: a hit (12 cached, the suffix of 8 starts at P - 8)
    store.release(lease)
    store.clear()
    _, plan, lease = _plan(store, a)
    assert (plan.start == 0).all() and store.stats()["blocks_held"] == 3 and store.stats()["evictions"] == 0
    store.release(lease)


@pytest.mark.parametrize("seed", range(3))
def test_random_traffic_keeps_the_budget_and_the_refcounts(seed):
    rng = random.Random(seed)
    store = _store(6)
    users = [tuple(rng.randrange(50) for _ in range(rng.randint(1, 16))) for _ in range(10)]
    leases = []
    for _ in range(200):
        if leases and rng.random() < 0.5:
            store.release(leases.pop(rng.randrange(len(leases))), written=rng.random() < 0.9)
        else:
            prompts = rng.sample(users, rng.randint(1, 3))
            suffix, plan, lease = _plan(store, *prompts)
            for r, p in enumerate(prompts):  # S positions from start cover every prompt's end
                assert int(plan.start[r]) + suffix >= len(p) and int(plan.start[r]) <= len(p) - 1
            written = plan.write[plan.write != store.scratch]
            assert written.unique().numel() == written.numel(), "two blocks of one batch written to one slot"
            leases.append(lease)
        stats = store.stats()
        assert stats["blocks_held"] <= store.capacity and stats["bytes_held"] <= stats["bytes_budget"]
        assert store.pool.nbytes <= 7 * BLOCK_BYTES
        assert len(store._slots) == len(store._lru) + len(store._refs)
    for lease in leases:
        store.release(lease)
    assert store.stats()["pinned_blocks"] == 0


def test_a_failed_batch_leaves_no_block_behind():
    store = _store(4)
    _, _, lease = _plan(store, tuple(range(9)))
    store.release(lease, written=False)
    assert store.stats()["blocks_held"] == 0 and len(store._free) == 4


def test_load_and_save_move_whole_blocks_between_pool_and_prompt_slots():
    store = _store(4)
    cache = BeamKVCache()
    cache.setup(LAYERS, 2, 16, 4, 3, KV_HEADS, HEAD_DIM, torch.float32, "cpu")
    cache.prompt_k.normal_()
    cache.prompt_v.normal_()
    write = torch.full((2, 2), store.scratch)
    write[1, 1] = 2  # slot 1's positions 4..7 -> pool block 2
    store.save(cache, write)
    assert torch.equal(store.pool[2, :, 0], cache.prompt_k[:, 1, 4:8]) and torch.equal(store.pool[2, :, 1],
                                                                                       cache.prompt_v[:, 1, 4:8])
    saved_k, saved_v = cache.prompt_k[:, 1, 4:8].clone(), cache.prompt_v[:, 1, 4:8].clone()
    read = torch.full((2, 2), store.scratch)
    read[0, 0] = 2  # pool block 2 -> slot 0's positions 0..3 (the rest reads scratch)
    store.load(cache, read)
    assert torch.equal(cache.prompt_k[:, 0, :4], saved_k) and torch.equal(cache.prompt_v[:, 0, :4], saved_v)


@pytest.mark.parametrize("kwargs, key", [
    (dict(budget_bytes=10 * BLOCK_BYTES, block=3), "serve.prefix_cache_block"),  # 3 does not divide 8
    (dict(budget_bytes=BLOCK_BYTES, block=BLOCK), "serve.prefix_cache_bytes"),  # no room beside scratch
    (dict(budget_bytes=1 << 62, block=BLOCK), "serve.prefix_cache_bytes"),  # more than free memory
])
def test_bad_store_config_is_a_config_error_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        PromptStore(prompt_buckets=[8, 16], num_layers=LAYERS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                    dtype=torch.float32, device="cpu", **kwargs)


@pytest.mark.parametrize("kwargs, key", [
    (dict(prefix_cache_bytes=-1), "serve.prefix_cache_bytes"),
    (dict(prefix_cache_block=0), "serve.prefix_cache_block"),
    (dict(prefix_cache_bytes=1 << 20, prefix_cache_block=16, prompt_buckets=[16, 40]), "serve.prefix_cache_block"),
    (dict(prefix_cache_suffixes=[8, 4]), "serve.prefix_cache_suffixes"),
    (dict(prefix_cache_suffixes=[0, 4]), "serve.prefix_cache_suffixes"),
])
def test_bad_serve_config_is_a_config_error_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        ServeConfig(**kwargs)


def test_the_store_is_off_by_default_and_the_engine_checks_its_own_buckets():
    assert ServeConfig().prefix_cache_bytes == 0
    model, _ = random_case(0)
    assert GREngine(model).prefix_cache_stats() == {}
    # the serve buckets [16, 32] take blocks of 16, the engine's added bucket (max_prompt_tokens = 40) does not
    model, _ = random_case(0, ServeConfig(prompt_buckets=[16, 32], prefix_cache_bytes=1 << 20, prefix_cache_block=16))
    with pytest.raises(ConfigError, match="'serve.prefix_cache_block'.*40"):
        GREngine(model)


# ---- the engine with reuse == the reference --------------------------------------------------------
def _serve(budget: int = 1 << 20, block: int = 4, **kwargs) -> ServeConfig:
    return ServeConfig(prompt_buckets=[8, 16, 24, 40], max_batch=4, prefix_cache_bytes=budget,
                       prefix_cache_block=block, **kwargs)


def _random_prompt(rng: random.Random, vocab: int, length: int) -> tuple[int, ...]:
    return tuple(rng.randrange(vocab) for _ in range(length))


def _like(request: RecRequest, prompt: tuple[int, ...], **changes) -> RecRequest:
    return dataclasses.replace(request, prompt=prompt[-40:], **changes)


def _rounds_equal_reference(model, rounds, engine=None) -> GREngine:
    """Each round of requests through one engine with reuse: every answer the reference's."""
    engine = engine or GREngine(model)
    reference = ReferenceEngine(model)
    for requests in rounds:
        assert_same_items(reference.recommend(requests), engine.recommend(requests))
    return engine


@pytest.mark.parametrize("block", [4, 8])
@pytest.mark.parametrize("seed", range(3))
def test_the_same_prompts_again(seed, block):
    model, requests = random_case(seed, _serve(block=block))
    engine = _rounds_equal_reference(model, [requests] * 3)
    assert engine.prefix_cache_stats()["hit_tokens"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_histories_extended_by_one_to_many_items(seed):
    """Each user comes back with 1 to 5 more items' tokens; the old prompt's blocks are read."""
    model, requests = random_case(seed, _serve())
    rng, L, vocab = random.Random(seed), model.config.model.levels, model.config.model.vocab_size
    users = [_like(r, _random_prompt(rng, vocab, rng.randint(4, 20))) for r in requests]
    rounds = [users]
    for _ in range(3):
        users = [_like(u, u.prompt + _random_prompt(rng, vocab, L * rng.randint(1, 5))) for u in users]
        rounds.append(users)
    engine = _rounds_equal_reference(model, rounds)
    assert engine.prefix_cache_stats()["hit_tokens"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_prompts_that_overlap_or_diverge_inside_a_block(seed):
    """Prompts sharing a prefix that ends inside a block (block 8), then diverging; one token apart too."""
    model, requests = random_case(seed, _serve(block=8))
    rng, vocab = random.Random(seed), model.config.model.vocab_size
    base = _random_prompt(rng, vocab, 30)
    rounds = [[_like(requests[0], base)]]
    for _ in range(4):
        cut = rng.choice([k for k in range(3, 30) if k % 8])  # never at a block boundary
        rounds.append([_like(r, base[:cut] + _random_prompt(rng, vocab, rng.randint(1, 10))) for r in requests[:4]])
    rounds.append([_like(requests[1], base[:-1] + ((base[-1] + 1) % vocab,))])  # differs in the last token only
    rounds.append([_like(requests[2], base[:20])])  # a prefix of a stored prompt
    engine = _rounds_equal_reference(model, rounds)
    assert engine.prefix_cache_stats()["hit_tokens"] > 0


@pytest.mark.parametrize("seed", range(3))
def test_the_same_history_with_other_exclusions_widths_and_normalisations(seed):
    model, requests = random_case(seed, _serve())
    rng = random.Random(seed)
    ids = model.catalog.item_ids.tolist()
    user = _like(requests[0], _random_prompt(rng, model.config.model.vocab_size, rng.randint(20, 38)))
    rounds = [[user]]
    for _ in range(4):
        width = rng.choice([1, 4, 8, 16])
        rounds.append([dataclasses.replace(user, beam_width=width, top_k=rng.randint(1, width),
                                           exclude_items=frozenset(rng.sample(ids, rng.randint(0, 30))),
                                           normalize=rng.choice(["vocab", "level"]))])
    engine = _rounds_equal_reference(model, rounds)
    assert engine.prefix_cache_stats()["hit_tokens"] > 0


@pytest.mark.parametrize("seed", range(3))
def test_eviction_under_memory_pressure(seed):
    """A budget of a few blocks for many users coming back in random order: blocks evicted all along."""
    cfg = random_case(seed)[0].config.model
    block_bytes = cfg.num_layers * 2 * 4 * cfg.num_kv_heads * cfg.head_dim * 4  # float32, 4 tokens
    model, requests = random_case(seed, _serve(budget=7 * block_bytes))  # 6 blocks and scratch
    rng = random.Random(seed)
    users = [_like(r, _random_prompt(rng, cfg.vocab_size, rng.randint(5, 30))) for r in requests]
    rounds = [rng.sample(users, rng.randint(1, 4)) for _ in range(8)]
    engine = _rounds_equal_reference(model, rounds)
    stats = engine.prefix_cache_stats()
    assert stats["evictions"] > 0 and stats["blocks_held"] <= 6 and stats["bytes_budget"] <= 7 * block_bytes


@pytest.mark.parametrize("seed", range(3))
def test_several_requests_of_one_batch_share_a_prefix(seed):
    model, requests = random_case(seed, _serve())
    rng, vocab = random.Random(seed), model.config.model.vocab_size
    shared = _random_prompt(rng, vocab, 17)
    batch = [_like(r, shared + _random_prompt(rng, vocab, rng.randint(0, 12))) for r in requests[:4]]
    batch[1] = _like(batch[1], shared)  # the shared prefix itself
    later = [_like(r, r.prompt + _random_prompt(rng, vocab, 3)) for r in batch]
    engine = _rounds_equal_reference(model, [batch, batch, later])
    assert engine.prefix_cache_stats()["hit_tokens"] > 0


def test_a_store_full_of_other_users_blocks():
    model, requests = random_case(1, _serve(budget=1 << 16))
    rng, vocab = random.Random(1), model.config.model.vocab_size
    engine = GREngine(model)
    others = [_like(requests[0], _random_prompt(rng, vocab, 40)) for _ in range(64)]
    for i in range(0, len(others), 4):
        engine.recommend(others[i:i + 4])
    assert engine.prefix_cache_stats()["evictions"] > 0  # full
    users = [_like(r, _random_prompt(rng, vocab, rng.randint(5, 30))) for r in requests]
    _rounds_equal_reference(model, [users, users, [_like(u, u.prompt + (3, 4, 5)) for u in users]], engine)


@pytest.mark.parametrize("seed", range(3))
def test_suffix_lengths_of_their_own_beside_a_single_prompt_bucket(seed):
    """``serve.prefix_cache_suffixes``: one prompt bucket (as the benchmark's workloads have), returning users
    prefilled in 4 or 12 positions (not multiples of the block)."""
    model, requests = random_case(seed, ServeConfig(prompt_buckets=[40], max_batch=4, prefix_cache_bytes=1 << 20,
                                                    prefix_cache_block=8, prefix_cache_suffixes=[4, 12]))
    assert GREngine(model).suffix_buckets(40) == [4, 12, 40]
    rng, vocab = random.Random(seed), model.config.model.vocab_size
    users = [_like(r, _random_prompt(rng, vocab, rng.randint(9, 36))) for r in requests]
    rounds = [users, users, [_like(u, u.prompt + _random_prompt(rng, vocab, 3)) for u in users]]
    assert _rounds_equal_reference(model, rounds).prefix_cache_stats()["hit_tokens"] > 0


@pytest.mark.parametrize("ablation", ["shared_prompt_kv", "masked_sorter"])
def test_reuse_with_each_ablation(ablation):
    model, requests = random_case(2, _serve(**{ablation: False}))
    assert _rounds_equal_reference(model, [requests, requests]).prefix_cache_stats()["hit_tokens"] > 0


def test_bfloat16_reuse_equals_recomputing():
    """bfloat16 on the CPU: with reuse, the items of the same engine without it, scores within bf16 rounding."""
    model, requests = random_case(0, _serve())
    model.decoder.to(torch.bfloat16)
    plain = GREngine(model, dataclasses.replace(model.config.serve, prefix_cache_bytes=0))
    reusing = GREngine(model)
    rng, vocab = random.Random(0), model.config.model.vocab_size
    users = [_like(r, _random_prompt(rng, vocab, rng.randint(5, 30))) for r in requests]
    for round_ in (users, users, [_like(u, u.prompt + (7, 8, 9)) for u in users]):
        assert_same_items(plain.recommend(round_), reusing.recommend(round_), tolerance=0.05)
    assert reusing.prefix_cache_stats()["hit_tokens"] > 0


@pytest.mark.parametrize("seed", range(2))
def test_stable_truncation_lets_users_past_the_limit_reuse_their_prompt(seed):
    """Users whose histories are past the limit come back with one more item each time: under
    model.truncation "stable" the kept history keeps its first item for most visits and the store is read;
    under "sliding" every visit moves every position and nothing is reused. Every answer the reference's."""
    hits = {}
    for policy in ("sliding", "stable"):
        model, requests = random_case(seed, _serve(), requests=4)
        cfg = dataclasses.replace(model.config.model, truncation=policy)
        model = dataclasses.replace(model, config=dataclasses.replace(model.config, model=cfg))
        rng, ids = random.Random(seed), model.catalog.item_ids.tolist()
        limit = cfg.max_prompt_tokens // cfg.levels
        histories = [rng.sample(ids, limit + 8) for _ in requests]
        rounds = [[build_request(cfg, model.catalog, history_items=h[:limit + visit], beam_width=r.beam_width,
                                 top_k=r.top_k, max_beam_width=16, exclude_items=sorted(r.exclude_items))
                   for h, r in zip(histories, requests)] for visit in range(1, 9)]
        assert all(r.truncated for batch in rounds for r in batch)
        hits[policy] = _rounds_equal_reference(model, rounds).prefix_cache_stats()["hit_tokens"]
    assert hits["sliding"] == 0 and hits["stable"] > 0
