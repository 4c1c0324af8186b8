"""The real data (Amazon Beauty, ../shared/data/amazon-beauty): the published popularity floor, and a
short train-and-evaluate run that must clear it. Skipped where the data is absent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from xgr_toolkit import XGRConfig
from xgr_toolkit.data import leave_one_out, load_sequences, load_sid_json
from xgr_toolkit.evaluation import evaluate_model, evaluate_popularity
from xgr_toolkit.model_dir import GRModel
from xgr_toolkit.modules import GRDecoder
from xgr_toolkit.training import SampleTable, TrainConfig, gr_model_config, train_decoder

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/amazon-beauty"
pytestmark = pytest.mark.skipif(not (DATA / "sequences.txt").is_file(),
                                reason=f"Amazon Beauty data not found at {DATA} (it lives in ../shared, never in "
                                       "the repository: its licence forbids redistribution)")


@pytest.fixture(scope="module")
def split():
    return leave_one_out(load_sequences(DATA / "sequences.txt"))


def test_popularity_reproduces_the_published_floor(split):
    """README: popularity counted on each user's training part, full ranking, every user's test target."""
    result = evaluate_popularity(split, "test")
    assert result.users == 22_363
    got = {k: round(v, 4) for k, v in result.metrics.items()}
    assert got == {"recall@5": 0.0072, "recall@10": 0.0114, "ndcg@5": 0.0040, "ndcg@10": 0.0053}


@pytest.mark.slow
def test_short_training_run_beats_popularity_on_a_slice(split):
    """One epoch of a tiny decoder over the training parts (histories capped at 3 items to stay fast on
    a CPU), LETTER SIDs, then the first 2,000 users' test targets through the serving engine."""
    start = time.perf_counter()
    torch.manual_seed(0)
    catalog = load_sid_json(DATA / "semantic_ids.letter.json", num_codes=256)
    history = 3
    cfg = gr_model_config(catalog, layers=2, hidden=64, heads=4, kv_heads=2, mlp=128, max_history=history)
    decoder = GRDecoder(cfg)
    train_decoder(decoder, catalog, SampleTable.from_samples(split.training_samples(history)),
                  TrainConfig(epochs=1, batch_size=512, lr=1e-2, warmup_steps=20, progress=False))
    model = GRModel(XGRConfig(model=cfg), decoder, catalog)
    users = 2000
    ours = evaluate_model(model, split, "test", beam_width=10, top_k=10, max_history=history, limit_users=users,
                          progress=False)
    floor = evaluate_popularity(split, "test", limit_users=users)
    print(f"slice of {users} users: {ours.line()} vs popularity {floor.line()} "
          f"({time.perf_counter() - start:.0f} s)")
    assert ours.users == floor.users == users
    assert ours.metrics["recall@10"] > floor.metrics["recall@10"]
    assert ours.metrics["ndcg@10"] > floor.metrics["ndcg@10"]
