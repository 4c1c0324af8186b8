"""Evaluation: Recall/NDCG, the popularity floor, the serving engine (== reference), `xgr eval`."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from xgr_toolkit import BeamConfig, ItemCatalog, ModelConfig, ServeConfig, XGRConfig, build_request, load_model_dir
from xgr_toolkit.cli import main
from xgr_toolkit.data import leave_one_out
from xgr_toolkit.engines import build_engine
from xgr_toolkit.evaluation import (
    evaluate_model,
    evaluate_popularity,
    hit_rank,
    popularity_ranking,
    ranking_metrics,
)
from xgr_toolkit.model_dir import GRModel, save_model_dir
from xgr_toolkit.modules import GRDecoder
from xgr_toolkit.reference import reference_beam_search
from xgr_toolkit.request import RecRequest
from xgr_toolkit.synthetic import random_catalog, random_decoder
from xgr_toolkit.training import SampleTable, TrainConfig, train_decoder


def test_ranking_metrics_by_hand():
    ranks = [0, 3, 7, -1]  # hits at positions 1, 4 and 8; one miss
    m = ranking_metrics(ranks)
    assert m["recall@5"] == pytest.approx(2 / 4) and m["recall@10"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(9)) / 4)
    assert hit_rank([4, 5, 6], 6) == 2 and hit_rank([4, 5], 9) == -1
    with pytest.raises(ValueError):
        ranking_metrics([])


def test_popularity_counts_training_parts_only():
    # item 9 is popular only as a held-out target; it must not enter the ranking
    split = leave_one_out({1: [1, 2, 9, 9], 2: [2, 3, 9, 9], 3: [2, 1, 4, 9, 9]})
    assert popularity_ranking(split, 3) == [2, 1, 3]  # counts 3, 2, 1 (ties: smaller id)
    result = evaluate_popularity(split, "test")
    assert result.users == 3 and result.metrics["recall@10"] == 0
    split2 = leave_one_out({1: [1, 2, 2, 1], 2: [2, 3, 4, 2]})
    assert evaluate_popularity(split2, "test").ranks == [1, 0]


# ---- the serving engine reproduces the reference on evaluation-like requests ------------------------
def _random_model(seed: int, levels: int = 3, codes: int = 6, items: int = 120, collisions: int = 8) -> GRModel:
    cfg = ModelConfig(levels=levels, codes=codes, sid_offset=4, max_prompt_tokens=8 * levels, num_layers=2,
                      hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64)
    config = XGRConfig(model=cfg, beam=BeamConfig(beam_width=64, top_k=12), serve=ServeConfig(prompt_buckets=[24]))
    return GRModel(config, random_decoder(cfg, seed), random_catalog(items, levels, codes, seed, collisions))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_engine_equals_reference_on_eval_requests(seed):
    model = _random_model(seed)
    cfg, catalog = model.config.model, model.catalog
    g = torch.Generator().manual_seed(seed)
    ids = catalog.item_ids.tolist()
    requests = []
    for i in range(24):
        history = [ids[j] for j in torch.randint(len(ids), (1 + i % 4,), generator=g).tolist()]
        exclude = [ids[j] for j in torch.randint(len(ids), (i % 5 * 7,), generator=g).tolist()]
        width = (3, 10, 40)[i % 3]
        requests.append(build_request(cfg, catalog, history_items=history, beam_width=width, top_k=min(width, 12),
                                      max_beam_width=64, exclude_items=exclude, exclude_history=i % 2 == 0,
                                      normalize=("vocab", "level")[i % 2]))
    # a request whose catalog is almost all excluded: fewer valid items than the beam is wide
    requests.append(build_request(cfg, catalog, history_items=ids[:2], beam_width=16, top_k=16, max_beam_width=16,
                                  exclude_items=ids[3:]))
    requests.append(RecRequest(tuple(requests[0].prompt), 8, 8, "vocab", frozenset(ids)))  # nothing valid
    got = build_engine(model, "fast").recommend(requests)
    for request, items in zip(requests, got, strict=True):
        expected = reference_beam_search(model.decoder, catalog, request)
        assert [(x.item_id, x.sid) for x in items] == [(x.item_id, x.sid) for x in expected]
        assert [x.score for x in items] == pytest.approx([x.score for x in expected], abs=1e-5)
    assert sorted(x.item_id for x in got[-2]) == sorted(ids[:3])  # only the 3 valid items, not 16
    assert got[-1] == []


# ---- evaluate_model on data with a planted next-item rule -------------------------------------------
def _planted(tmp_path):
    n = 20
    sequences = {u: [(u * 3 + k) % n + 1 for k in range(7)] for u in range(1, 61)}
    catalog = ItemCatalog(torch.arange(1, n + 1), random_catalog(n, 3, 6, seed=4).codes, 6)
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64,
                      sid_offset=4, levels=3, codes=6, max_prompt_tokens=15)
    split = leave_one_out(sequences)
    torch.manual_seed(0)
    decoder = GRDecoder(cfg)
    train_decoder(decoder, catalog, SampleTable.from_samples(split.training_samples(5)),
                  TrainConfig(epochs=15, batch_size=32, lr=5e-3, warmup_steps=10, progress=False))
    path = save_model_dir(tmp_path / "model", XGRConfig(model=cfg), decoder, catalog)
    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in sequences.items()))
    return split, path, data, catalog


def test_evaluate_model_finds_the_planted_next_item(tmp_path):
    split, path, _, _ = _planted(tmp_path)
    model = load_model_dir(path)
    result = evaluate_model(model, split, "test", beam_width=10, top_k=10, max_history=5, progress=False)
    assert result.users == 60 and result.metrics["recall@5"] > 0.9 and result.metrics["ndcg@10"] > 0.8
    assert result.metrics["recall@10"] > evaluate_popularity(split, "test").metrics["recall@10"]
    ref = evaluate_model(model, split, "test", engine="reference", beam_width=10, max_history=5, limit_users=12,
                         progress=False)
    assert ref.ranks == result.ranks[:12]  # the serving engine's reference gives the same ranks
    # excluding history items can only remove history items from the lists
    excl = evaluate_model(model, split, "valid", beam_width=10, max_history=5, exclude_history=True, progress=False)
    assert excl.users == 60 and excl.settings["exclude_history"] is True
    with pytest.raises(ValueError, match="top_k"):
        evaluate_model(model, split, top_k=5)


def test_xgr_eval_command(tmp_path, capsys):
    _, path, data, _ = _planted(tmp_path)
    out = tmp_path / "metrics.json"
    assert main(["eval", str(path), "--data", str(data), "--split", "both", "--beam-width", "10",
                 "--limit-users", "20", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "valid: 20 users" in printed and "test: 20 users" in printed
    record = json.loads(out.read_text())
    assert [r["split"] for r in record["results"]] == ["valid", "test"]
    assert record["results"][1]["recall@10"] > 0.9 and record["results"][1]["engine"] == "fast"
    assert "ranks" not in record["results"][1]  # only with --ranks
    same = tmp_path / "dtype.json"  # the linear layers in the weights' dtype, said explicitly: the same figures
    assert main(["eval", str(path), "--data", str(data), "--split", "both", "--beam-width", "10",
                 "--limit-users", "20", "--linear-precision", "dtype", "--json", str(same)]) == 0
    ranked = tmp_path / "ranks.json"
    assert main(["eval", str(path), "--data", str(data), "--split", "both", "--beam-width", "10",
                 "--limit-users", "20", "--json", str(ranked), "--ranks"]) == 0
    with_ranks = json.loads(ranked.read_text())["results"][1]
    assert len(with_ranks["ranks"]) == 20 and sum(0 <= r < 10 for r in with_ranks["ranks"]) / 20 == \
        with_ranks["recall@10"]  # each user's rank, for tools/paired_eval.py
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in record["results"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(same.read_text())["results"]] == strip
    assert main(["eval", "--popularity", "--data", str(data)]) == 0
    assert "test: 60 users" in capsys.readouterr().out
    assert main(["eval", "--data", str(data)]) == 2  # neither a model nor --popularity
    assert main(["eval", str(path), "--data", str(data), "--engine", "nope"]) == 2


def test_evaluate_model_cuts_histories_by_the_model_policy_or_the_one_given(tmp_path, capsys):
    """The same model evaluated under "sliding" (its config's) and "stable" (the override): each user's
    ranks are those of the reference on the history cut by that policy, as the server would cut it."""
    cfg = ModelConfig(num_layers=1, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64,
                      sid_offset=4, levels=3, codes=6, max_prompt_tokens=8 * 3)
    catalog = ItemCatalog(torch.arange(1, 21), random_catalog(20, 3, 6, seed=4).codes, 6)
    model = GRModel(XGRConfig(model=cfg), random_decoder(cfg, 2), catalog)
    gen = torch.Generator().manual_seed(0)
    sequences = {u: (torch.randint(1, 21, (12 + u % 5,), generator=gen)).tolist() for u in range(1, 25)}
    split = leave_one_out(sequences)
    prompts = {}
    for policy in ("sliding", "stable"):
        result = evaluate_model(model, split, "test", beam_width=10, top_k=10, max_history=8, progress=False,
                                truncation=None if policy == "sliding" else policy)
        assert result.settings["truncation"] == policy
        policy_cfg = dataclasses.replace(cfg, truncation=policy)
        requests = [build_request(policy_cfg, catalog, history_items=sequences[u][:-1], beam_width=10, top_k=10,
                                  max_beam_width=10) for u in split.users]  # the whole history, cut by the request
        prompts[policy] = [r.prompt for r in requests]
        expected = [hit_rank([i.item_id for i in items], target) for items, target
                    in zip(build_engine(model, "reference").recommend(requests), split.test, strict=True)]
        assert result.ranks == expected
    assert prompts["sliding"] != prompts["stable"]  # an odd number of items past 8: stable drops one more
    path = save_model_dir(tmp_path / "model", XGRConfig(model=cfg), model.decoder, catalog)
    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in sequences.items()))
    for option, policy in (([], "sliding"), (["--truncation", "stable"], "stable")):
        out = tmp_path / f"{policy}.json"
        assert main(["eval", str(path), "--data", str(data), "--beam-width", "10", "--json", str(out), *option]) == 0
        assert json.loads(out.read_text())["results"][0]["truncation"] == policy
    assert main(["eval", str(path), "--data", str(data), "--truncation", "fifo"]) == 2
    assert "argument --truncation: invalid choice: 'fifo'" in capsys.readouterr().err
