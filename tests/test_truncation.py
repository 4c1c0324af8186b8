"""The truncation policy (model.truncation): the pure rule, and the same rule in requests, evaluation
cases and training samples. "sliding" is the old behaviour; "stable" keeps a returning user's prompt start."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xgr_toolkit import ConfigError, ModelConfig, build_request
from xgr_toolkit.data import cap_history, leave_one_out
from xgr_toolkit.synthetic import random_catalog
from xgr_toolkit.truncation import STABLE_CHUNKS, TRUNCATIONS, kept_start, truncate

lengths = st.integers(0, 600)
limits = st.integers(1, 200)


@given(lengths, limits, st.sampled_from(TRUNCATIONS))
def test_the_kept_history_always_fits(length, limit, policy):
    start = kept_start(length, limit, policy)
    assert 0 <= start <= length and length - start <= limit
    assert start == 0 if length <= limit else length - start >= 1  # something is always kept


@given(st.lists(st.integers(), max_size=300), limits)
def test_sliding_is_the_last_limit_units(units, limit):
    assert list(truncate(units, limit, "sliding")) == units[-limit:]
    assert kept_start(len(units), limit) == max(0, len(units) - limit)  # the default


@given(lengths, limits)
def test_stable_drops_whole_quarters_and_keeps_more_than_limit_minus_a_quarter(length, limit):
    step = max(1, limit // STABLE_CHUNKS)
    start = kept_start(length, limit, "stable")
    assert start % step == 0
    if length > limit:
        assert limit - step < length - start <= limit  # the fewest quarters that make it fit


@given(st.integers(0, 400), st.integers(16, 200), st.integers(4, 60))
def test_stable_keeps_the_prefix_in_at_least_3_of_4_appends(length, limit, appends):
    """A user's history grows one item at a time: under "stable" the kept history starts at the same item
    (the old kept history is a prefix of the new one) in every window of 4 appends but at most one; under
    "sliding" every append past the limit moves the start."""
    history = list(range(length + appends))
    for policy in TRUNCATIONS:
        kept = [list(truncate(history[:n], limit, policy)) for n in range(length, length + appends + 1)]
        moved = [old != new[:len(old)] for old, new in zip(kept, kept[1:])]
        if policy == "stable":
            assert all(sum(moved[i:i + 4]) <= 1 for i in range(len(moved)))
            assert sum(moved) <= -(-appends // max(1, limit // STABLE_CHUNKS))
        else:
            assert moved == [n >= limit for n in range(length, length + appends)]


def test_stable_by_hand():
    # limit 8, step 2: 9 or 10 items drop 2, 11 or 12 drop 4
    assert [kept_start(n, 8, "stable") for n in range(7, 13)] == [0, 0, 2, 2, 4, 4]
    assert [kept_start(n, 3, "stable") for n in range(2, 7)] == [0, 0, 1, 2, 3]  # step 1: as sliding
    assert cap_history(list(range(11)), 8, "stable") == list(range(4, 11))


def test_a_bad_policy_or_limit_is_refused():
    with pytest.raises(ValueError, match=r"one of \['sliding', 'stable'\]; got 'fifo'"):
        kept_start(10, 4, "fifo")
    with pytest.raises(ValueError, match="limit must be >= 1"):
        kept_start(10, 0, "stable")
    with pytest.raises(ConfigError, match=r"'model.truncation' = 'fifo' is invalid: allowed one of \['sliding'"):
        ModelConfig(truncation="fifo")
    assert ModelConfig().truncation == "sliding"


# ---- in requests ---------------------------------------------------------------------------------------
CFG = ModelConfig(num_layers=1, levels=3, codes=16, sid_offset=4, max_prompt_tokens=16 * 3, truncation="stable")


@pytest.fixture(scope="module")
def catalog():
    return random_catalog(200, CFG.levels, CFG.codes, seed=5)


def _request(cfg, catalog, **history):
    return build_request(cfg, catalog, beam_width=4, top_k=2, max_beam_width=4, **history)


@pytest.mark.parametrize("policy", TRUNCATIONS)
def test_a_request_keeps_whole_items_by_the_policy_and_reports_the_tokens_dropped(catalog, policy):
    cfg = dataclasses.replace(CFG, truncation=policy)
    ids = catalog.item_ids.tolist()
    for n in (1, 16, 17, 20, 21, 40):
        history = ids[:n]
        request = _request(cfg, catalog, history_items=history)
        start = kept_start(n, 16, policy)
        assert request.truncated == start * cfg.levels and len(request.prompt) <= cfg.max_prompt_tokens
        assert request.prompt == _request(cfg, catalog, history_items=history[start:]).prompt
        tokens = [i % cfg.vocab_size for i in range(3 * n)]
        request = _request(cfg, catalog, history_tokens=tokens)
        dropped = kept_start(len(tokens), cfg.max_prompt_tokens, policy)
        assert request.truncated == dropped and request.prompt == tuple(tokens[dropped:])
    if policy == "stable":  # 17 items: a quarter (4 items) dropped, not 1
        assert _request(cfg, catalog, history_items=ids[:17]).truncated == 4 * cfg.levels


def test_a_growing_history_keeps_its_prompt_start_in_3_of_4_requests(catalog):
    ids = catalog.item_ids.tolist()
    for policy, kept in (("stable", 19 - 5), ("sliding", 0)):
        cfg = dataclasses.replace(CFG, truncation=policy)
        prompts = [_request(cfg, catalog, history_items=ids[:n]).prompt for n in range(16, 36)]
        assert sum(new[:len(old)] == old for old, new in zip(prompts, prompts[1:])) == kept
        # stable: 19 appends past 16 items of limit 16 (step 4) move the start 5 times (17, 21, 25, 29, 33)


# ---- evaluation cases and training samples ---------------------------------------------------------------
def test_cases_and_training_samples_cap_by_the_policy():
    split = leave_one_out({1: list(range(1, 13))})  # train 1..10, valid 11, test 12
    assert split.cases("test", 8, truncation="stable")[0].history == list(range(5, 12))  # 11 items: 4 dropped
    assert split.cases("test", 8)[0].history == list(range(4, 12))
    assert split.cases("valid", 8, truncation="stable")[0].history == list(range(3, 11))  # 10 items: 2 dropped
    samples = split.training_samples(8, "stable")
    assert [len(h) for h, _ in samples] == [1, 2, 3, 4, 5, 6, 7, 8, 7]  # the 9-item history drops 2
    assert samples[-1] == (list(range(3, 10)), 10)
    assert [len(h) for h, _ in split.training_samples(8)] == [1, 2, 3, 4, 5, 6, 7, 8, 8]  # sliding: the last 8
    assert split.training_samples(8)[-1] == (list(range(2, 10)), 10)
