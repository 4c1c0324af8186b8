"""The reference constrained beam search by hand on tiny cases, and request validation."""

import math

import pytest
import torch

from xgr_toolkit import ItemCatalog, RequestError, build_request
from xgr_toolkit.reference import reference_beam_search
from xgr_toolkit.request import RecRequest, sid_tokens
from xgr_toolkit.synthetic import random_catalog, random_decoder

PROMPT = (1, 6, 11, 2)

# small_cfg: 2 levels of 4 codes. Items 10 and 11 share the SID (0, 1).
COLLIDED = ItemCatalog(torch.tensor([10, 11, 12, 13, 14]),
                       torch.tensor([[0, 1], [0, 1], [1, 2], [2, 0], [2, 3]]), num_codes=4)


@pytest.fixture
def decoder(small_cfg):
    return random_decoder(small_cfg, seed=0, std=2.0)


def _search(decoder, catalog, beam_width, top_k=None, normalize="vocab", exclude=()):
    request = RecRequest(PROMPT, beam_width, top_k or beam_width, normalize, frozenset(exclude))
    return reference_beam_search(decoder, catalog, request)


def _hand_score(decoder, sid, normalize):
    """Sum over levels of the code's log-probability given the prompt and the SID's earlier codes."""
    cfg = decoder.config
    tokens = torch.tensor([PROMPT + tuple(sid_tokens(cfg, torch.tensor(sid)).tolist())])
    with torch.no_grad():
        logits = decoder(tokens)[0, len(PROMPT) - 1:-1]  # [L, V]: row j predicts level j
    total = 0.0
    for level, code in enumerate(sid):
        start = cfg.sid_offset + level * cfg.codes
        if normalize == "vocab":
            total += float(logits[level].log_softmax(-1)[start + code])
        else:
            total += float(logits[level, start:start + cfg.codes].log_softmax(-1)[code])
    return total


@pytest.mark.parametrize("normalize", ["vocab", "level"])
def test_exhaustive_beam_ranks_every_sid_by_its_hand_score(decoder, normalize):
    catalog = random_catalog(12, levels=2, codes=4, seed=1)
    got = _search(decoder, catalog, beam_width=16, normalize=normalize)  # 16 >= every prefix: nothing pruned
    expected = sorted(((_hand_score(decoder, sid, normalize), tuple(sid)) for sid in catalog.codes.tolist()),
                      key=lambda pair: (-pair[0], pair[1]))
    assert [item.sid for item in got] == [sid for _, sid in expected]
    assert [item.score for item in got] == pytest.approx([score for score, _ in expected], abs=1e-5)


def test_level_normalisation_scores_above_vocab(decoder):
    catalog = random_catalog(12, levels=2, codes=4, seed=1)
    vocab = {item.item_id: item.score for item in _search(decoder, catalog, beam_width=16)}
    level = {item.item_id: item.score for item in _search(decoder, catalog, beam_width=16, normalize="level")}
    assert vocab.keys() == level.keys()
    assert all(level[i] > vocab[i] + 0.1 for i in vocab)  # the level's codes hold far from all the mass


def test_width_one_is_greedy_over_valid_codes(decoder, small_cfg):
    catalog = random_catalog(6, levels=2, codes=4, seed=2)
    sids = [tuple(sid) for sid in catalog.codes.tolist()]
    prefix: tuple[int, ...] = ()
    for level in range(2):
        valid = sorted({sid[level] for sid in sids if sid[:level] == prefix})
        tokens = torch.tensor([PROMPT + tuple(sid_tokens(small_cfg, torch.tensor(prefix, dtype=torch.int64))
                                              .tolist())])
        with torch.no_grad():
            logits = decoder(tokens)[0, -1]
        start = small_cfg.sid_offset + level * small_cfg.codes
        prefix += (max(valid, key=lambda c: logits[start + c]),)
    [item] = _search(decoder, catalog, beam_width=1)
    assert item.sid == prefix and item.item_id == catalog.items_of_sid(prefix)[0]


def test_collided_sid_yields_each_item_ids_ascending(decoder):
    got = _search(decoder, COLLIDED, beam_width=8)
    assert sorted(item.item_id for item in got) == [10, 11, 12, 13, 14]
    first = [item.item_id for item in got].index(10)
    assert got[first + 1].item_id == 11
    assert got[first].sid == got[first + 1].sid == (0, 1) and got[first].score == got[first + 1].score


def test_top_k_counts_items_not_sids(decoder):
    all_items = [item.item_id for item in _search(decoder, COLLIDED, beam_width=8)]
    assert [item.item_id for item in _search(decoder, COLLIDED, beam_width=8, top_k=3)] == all_items[:3]


def test_exclusion_of_one_collided_item_keeps_the_sid(decoder):
    got = _search(decoder, COLLIDED, beam_width=8, exclude={10})
    assert [item.item_id for item in got if item.sid == (0, 1)] == [11]


def test_exclusion_of_every_item_of_a_sid_removes_it(decoder):
    full = _search(decoder, COLLIDED, beam_width=8)
    got = _search(decoder, COLLIDED, beam_width=8, exclude={10, 11, 13})
    assert [item.item_id for item in got] == [item.item_id for item in full if item.item_id in (12, 14)]


def test_exclusion_masks_during_the_search_not_after(decoder):
    full = _search(decoder, COLLIDED, beam_width=8)
    worst = full[-1].item_id  # with width 1 and no exclusions, another item wins
    assert _search(decoder, COLLIDED, beam_width=1)[0].item_id != worst
    got = _search(decoder, COLLIDED, beam_width=1, exclude={10, 11, 12, 13, 14} - {worst})
    assert [item.item_id for item in got] == [worst]


def test_fewer_valid_items_than_beams_returns_only_those(decoder):
    got = _search(decoder, COLLIDED, beam_width=16, exclude={12})
    assert sorted(item.item_id for item in got) == [10, 11, 13, 14]
    assert all(math.isfinite(item.score) for item in got)


def test_ties_go_to_the_lexicographically_smaller_sid(small_cfg):
    decoder = random_decoder(small_cfg, seed=0)
    with torch.no_grad():
        decoder.lm_head.weight.zero_()  # every code of every level ties
    catalog = random_catalog(10, levels=2, codes=4, seed=3)
    sids = sorted(tuple(sid) for sid in catalog.codes.tolist())
    for normalize, per_level in (("vocab", small_cfg.vocab_size), ("level", small_cfg.codes)):
        got = _search(decoder, catalog, beam_width=3, normalize=normalize)
        assert [item.sid for item in got] == sids[:3]
        assert [item.score for item in got] == pytest.approx([-2 * math.log(per_level)] * 3, abs=1e-6)


# ---- request validation and the history rule -------------------------------------------------------------


def _request(cfg, catalog, **kwargs):
    return build_request(cfg, catalog, **{"beam_width": 4, "top_k": 2, "max_beam_width": 8, **kwargs})


def test_item_history_keeps_the_most_recent_whole_items(small_cfg):
    catalog = random_catalog(12, levels=2, codes=4, seed=0)
    history = catalog.item_ids.tolist()[:10]  # 20 tokens; the model takes 16: the last 8 items
    request = _request(small_cfg, catalog, history_items=history)
    expected = sid_tokens(small_cfg, catalog.sids_of_items(torch.tensor(history[2:]))).flatten().tolist()
    assert request.prompt == tuple(expected) and request.truncated == 4


def test_token_history_keeps_the_most_recent_tokens(small_cfg):
    catalog = random_catalog(12, levels=2, codes=4, seed=0)
    tokens = [t % small_cfg.vocab_size for t in range(20)]
    request = _request(small_cfg, catalog, history_tokens=tokens)
    assert request.prompt == tuple(tokens[4:]) and request.truncated == 4


def test_exclude_history_adds_the_history_items(small_cfg):
    catalog = random_catalog(12, levels=2, codes=4, seed=0)
    ids = catalog.item_ids.tolist()
    request = _request(small_cfg, catalog, history_items=ids[:2], exclude_items=[ids[5]], exclude_history=True)
    assert request.exclude_items == {ids[0], ids[1], ids[5]}


@pytest.mark.parametrize("kwargs, field, message", [
    ({}, "history", "exactly one of"),
    ({"history_items": [1000], "history_tokens": [1]}, "history", "exactly one of"),
    ({"history_items": []}, "history", "at least one item"),
    ({"history_items": [999999]}, "history", "unknown item id(s): [999999]"),
    ({"history_items": ["1000"]}, "history", "list of integers"),
    ({"history_tokens": [3, 14]}, "history_tokens", "tokens must be in [0, 14); got [14]"),
    ({"history_tokens": [3], "exclude_items": [5]}, "exclude", "unknown item id(s): [5]"),
    ({"history_tokens": [3], "top_k": 5}, "k", "must be an integer in [1, 4]; got 5"),
    ({"history_tokens": [3], "beam_width": 9}, "beam_width", "must be an integer in [1, 8]; got 9"),
    ({"history_tokens": [3], "normalize": "softmax"}, "normalize", "one of ['vocab', 'level']"),
])
def test_bad_requests_name_the_field(small_cfg, kwargs, field, message):
    catalog = random_catalog(12, levels=2, codes=4, seed=0)
    with pytest.raises(RequestError) as err:
        _request(small_cfg, catalog, **kwargs)
    assert err.value.field == field and message in str(err.value)
