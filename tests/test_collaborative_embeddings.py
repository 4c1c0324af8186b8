"""SASRec-style collaborative item embeddings (`xgr sid build --embeddings sasrec`) and `xgr sid report`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from xgr_toolkit.cli import main
from xgr_toolkit.data import (
    SasRecConfig,
    cold_fallback,
    cold_mask,
    deduplicate,
    is_dedup_level,
    leave_one_out,
    load_sid_json,
    sasrec_embeddings,
    sid_report,
)
from xgr_toolkit.evaluation import evaluate_item_neighbours, evaluate_popularity

GROUPS, PER_GROUP = 8, 5  # items 1..40: item i belongs to group (i - 1) // 5
ITEMS = list(range(1, GROUPS * PER_GROUP + 1))
TINY = SasRecConfig(dim=16, layers=1, heads=2, dropout=0.0, epochs=25, batch_size=32, lr=1e-2, progress=False)


def _group_sequences(users: int = 160, length: int = 6, seed: int = 0) -> dict[int, list[int]]:
    """Planted structure: every user browses one group's items in a random order; groups equally popular."""
    rng = random.Random(seed)
    out = {}
    for u in range(1, users + 1):
        g = u % GROUPS
        out[u] = [g * PER_GROUP + rng.randrange(PER_GROUP) + 1 for _ in range(length)]
    return out


def _nearest(emb: torch.Tensor, k: int) -> torch.Tensor:
    """emb: [N, D] -> the k most cosine-similar other rows of each row, [N, k]."""
    e = torch.nn.functional.normalize(emb, dim=1)
    sims = e @ e.T
    sims.fill_diagonal_(-2)
    return sims.topk(k, dim=1).indices


def test_sasrec_embeddings_learn_the_planted_groups_and_beat_popularity():
    split = leave_one_out(_group_sequences())
    emb, losses = sasrec_embeddings(split.train, ITEMS, TINY)
    assert emb.shape == (len(ITEMS), TINY.dim) and losses[-1] < losses[0] - 0.5
    nearest = _nearest(emb, PER_GROUP - 1)  # [40, 4] row indices = item - 1
    same_group = (nearest // PER_GROUP == torch.arange(len(ITEMS))[:, None] // PER_GROUP).float().mean()
    assert same_group > 0.8  # chance: 4/39
    # next-item recall of "the items nearest the last one" against the popularity floor, validation targets
    ours = evaluate_item_neighbours(emb, ITEMS, split, "valid").metrics
    floor = evaluate_popularity(split, "valid").metrics
    assert ours["recall@10"] > 2 * floor["recall@10"] and ours["ndcg@10"] > 2 * floor["ndcg@10"]


def test_item_neighbours_reference():
    """Two users; item 1's nearest are 2 then 3, item 3's nearest is 1 (itself never counted)."""
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [-0.2, 1.0]])  # items 1..4
    split = leave_one_out({1: [4, 1, 2, 9], 2: [2, 3, 1, 9]})  # validation targets 2 (after 1) and 1 (after 3)
    result = evaluate_item_neighbours(emb, [1, 2, 3, 4], split, "valid", ks=(1, 2))
    # user 1: neighbours of 1 are [2, 3, 4] -> rank 0; user 2: of 3 are [2, 1, 4] (cos 0.78, 0.71, 0.55) -> rank 1
    assert result.ranks == [0, 1]
    assert result.metrics["recall@1"] == 0.5 and result.metrics["recall@2"] == 1.0


def test_sampled_softmax_learns_too():
    split = leave_one_out(_group_sequences())
    emb, losses = sasrec_embeddings(split.train, ITEMS, SasRecConfig(**{**TINY.__dict__, "negatives": 8}))
    nearest = _nearest(emb, PER_GROUP - 1)
    assert (nearest // PER_GROUP == torch.arange(len(ITEMS))[:, None] // PER_GROUP).float().mean() > 0.6
    assert losses[-1] < losses[0]


def test_sasrec_reads_the_training_parts_only():
    """Other validation and test targets (items 41, 42 appear nowhere else) give the same embeddings."""
    sequences = _group_sequences(users=40)
    other = {u: items[:-2] + [41, 42] for u, items in sequences.items()}
    cfg = SasRecConfig(**{**TINY.__dict__, "epochs": 2})
    a, _ = sasrec_embeddings(leave_one_out(sequences).train, ITEMS + [41, 42], cfg)
    b, _ = sasrec_embeddings(leave_one_out(other).train, ITEMS + [41, 42], cfg)
    assert torch.equal(a, b)
    assert cold_mask(leave_one_out(other).train, ITEMS + [41, 42]).tolist() == [False] * len(ITEMS) + [True, True]


def test_cold_fallback_spreads_cold_items_deterministically():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 4, generator=g)
    cold = torch.tensor([False, False, False, False, True, True])
    out = cold_fallback(emb, cold, seed=3)
    assert torch.equal(out[:4], emb[:4]) and not torch.allclose(out[4], out[5])
    assert torch.equal(out, cold_fallback(emb, cold, seed=3))
    assert torch.allclose(out[4:].norm(dim=1), emb[:4].norm(dim=1).mean().expand(2))
    # with text: the mean of the nearest warm items by text
    text = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9], [1.0, 0.05], [0.05, 1.0]])
    out = cold_fallback(emb, cold, text, neighbours=2)
    assert torch.allclose(out[4], emb[:2].mean(0)) and torch.allclose(out[5], emb[2:4].mean(0))
    with pytest.raises(ValueError, match="every item is cold"):
        cold_fallback(emb, torch.ones(6, dtype=torch.bool))


def test_xgr_sid_build_sasrec_is_collision_free_and_reports_cold_items(tmp_path, capsys):
    data = tmp_path / "sequences.txt"
    sequences = _group_sequences(users=80)
    for u in (1, 2, 3):  # three items seen only as a validation or test target: cold
        sequences[u] = sequences[u][:-1] + [40 + u]
    data.write_text("".join(f"{u} {' '.join(map(str, items))}\n" for u, items in sequences.items()))
    out = tmp_path / "sids.json"
    argv = ["sid", "build", "--data", str(data), "--out", str(out), "--levels", "2", "--codes", "8", "--dim", "8",
            "--embeddings", "sasrec", "--sasrec-epochs", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "cold items (in no training part): 3; their collaborative part: a seeded random direction each" in printed
    catalog = load_sid_json(out, 8)
    assert len(catalog) == 43 and catalog.num_sids == 43 and catalog.levels == 3  # de-dup level: no collisions
    cold_codes = catalog.codes[catalog.item_ids >= 41, :2]
    assert torch.unique(cold_codes, dim=0).shape[0] > 1  # the cold items do not share one SID
    assert main(argv) == 0 and load_sid_json(out, 8).codes.equal(catalog.codes)  # seeded: the same SIDs
    assert main(["sid", "build", "--data", str(data), "--embeddings", "sasrec+cooc"]) == 2  # a usage error


def test_sid_report_balance_values():
    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 0], [2, 0], [3, 0], [0, 0], [0, 0]])  # [8, 2]
    report = sid_report(codes)
    # level 0: counts 4, 2, 1, 1 -> entropy 1.75 bits; level 1: 7, 1 -> 0.5436 bits
    assert report.codes_used == [4, 2] and report.largest_bucket == [4, 7]
    assert report.perplexity[0] == pytest.approx(2 ** 1.75, abs=1e-3)
    assert report.perplexity[1] == pytest.approx(2 ** 0.5436, abs=1e-3)
    assert (report.distinct_sids, report.colliding_items, report.largest_group) == (5, 3, 3)
    assert is_dedup_level(deduplicate(codes, 4)) and not is_dedup_level(codes)


def test_xgr_sid_report_output(tmp_path, capsys):
    data = tmp_path / "sequences.txt"
    data.write_text("1 1 2 3 4\n2 2 3 1 5\n3 3 1 2 6\n")  # items 4, 5, 6: validation or test targets only
    codes = deduplicate(torch.tensor([[0, 1], [0, 1], [1, 0], [2, 3], [0, 1], [3, 3]]), 4)
    table = {str(i): [f"<{chr(97 + j)}_{c}>" for j, c in enumerate(row)] for i, row in enumerate(codes.tolist())}
    sids = tmp_path / "sids.json"
    sids.write_text(json.dumps(table))
    out = tmp_path / "report.json"
    assert main(["sid", "report", str(sids), "--codes", "4", "--data", str(data), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the last level is a de-dup level" in printed
    assert "before the de-dup level (2 levels): items 6, distinct SIDs 4, collisions 2 (largest group 3)" in printed
    assert "items 6, distinct SIDs 6, collisions 0 (largest group 1)" in printed
    assert "6 items, 3 cold (in no training part), 0 without a SID" in printed
    assert "level 0: 4/4 codes used, perplexity" in printed
    record = json.loads(out.read_text())
    assert record["dedup_level"] and record["cold_items"] == 3 and record["before_dedup"]["colliding_items"] == 2
    assert record["sids"]["largest_bucket"] == [3, 3, 4]  # the de-dup level: ranks 0, 1, 0, 0, 2, 0


INSTRUMENTS = Path(__file__).resolve().parents[1].parent / "shared/data/amazon-instruments"


@pytest.mark.skipif(not (INSTRUMENTS / "sequences.txt").is_file(),
                    reason=f"Amazon Instruments data not found at {INSTRUMENTS} (it lives in ../shared, never in the "
                           "repository: its licence forbids redistribution)")
def test_sasrec_sids_on_a_real_slice_are_collision_free_and_report_cold_items(tmp_path, capsys):
    """The first 1,500 users of Amazon Instruments (no item text): `--embeddings sasrec`, 3 x 64 codes."""
    lines = (INSTRUMENTS / "sequences.txt").read_text().splitlines()[:1500]
    data = tmp_path / "sequences.txt"  # a slice under pytest's tmp_path, never in the repository
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sids.json"
    assert main(["sid", "build", "--data", str(data), "--out", str(out), "--levels", "3", "--codes", "64",
                 "--embeddings", "sasrec", "--sasrec-epochs", "2", "--sasrec-negatives", "64", "--iters", "20"]) == 0
    split = leave_one_out({int(f[0]): [int(i) for i in f[1:]] for f in (line.split() for line in lines)})
    items = sorted({i for line in lines for i in map(int, line.split()[1:])})
    cold = int(cold_mask(split.train, items).sum())
    assert cold > 0 and f"cold items (in no training part): {cold};" in capsys.readouterr().out
    catalog = load_sid_json(out, 64)
    assert len(catalog) == len(items) and catalog.num_sids == len(items)  # collision-free with the de-dup level
    assert main(["sid", "report", str(out), "--codes", "64", "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "the last level is a de-dup level" in printed and f"{cold} cold (in no training part)" in printed
    report = sid_report(catalog.codes[catalog.item_ids.argsort()][:, :3])
    assert report.codes_used[0] == 64 and report.perplexity[0] > 32  # the first level spread over its codes
