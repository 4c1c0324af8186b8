"""Evaluations of the same users compared user by user (tools/paired_eval.py)."""

import json
import math
import sys
from pathlib import Path

import pytest

from xgr_toolkit.evaluation import ranking_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import paired_eval  # noqa: E402
from paired_eval import paired_difference  # noqa: E402


def test_the_difference_is_the_metrics_difference_and_its_interval_the_users_spread():
    a = [0, 3, -1, 7, -1, 2] * 50  # 300 users
    b = [0, 1, -1, 7, 4, -1] * 50  # user 2 of every 6 moved up, user 5 found at rank 4, user 6 lost
    d = paired_difference(a, b)
    assert d["users"] == 300 and d["users_changed"] == 150
    for metric, value in ranking_metrics(b).items():  # the means agree with the plain metrics
        assert d[metric]["b"] == pytest.approx(value) and d[metric]["a"] == pytest.approx(ranking_metrics(a)[metric])
        assert d[metric]["difference"] == pytest.approx(value - ranking_metrics(a)[metric])
    assert d["recall@5"]["difference"] == pytest.approx(0.0)  # one found, one lost: the interval straddles 0
    low, high = d["recall@5"]["ci95"]
    assert low < 0 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(1 / 3 * 300 / 299) / math.sqrt(300))
    assert d["ndcg@10"]["ci95"][0] < d["ndcg@10"]["difference"] < d["ndcg@10"]["ci95"][1]
    same = paired_difference(a, a)
    assert same["users_changed"] == 0 and same["ndcg@10"]["ci95"] == [0.0, 0.0]


def test_a_difference_every_user_shares_excludes_zero():
    d = paired_difference([5] * 40 + [-1] * 10, [0] * 40 + [-1] * 10)  # 40 users from rank 6 to rank 1
    assert d["recall@5"]["difference"] == pytest.approx(0.8) and d["recall@5"]["ci95"][0] > 0
    assert d["recall@10"]["difference"] == 0.0 and d["ndcg@10"]["ci95"][0] > 0


def test_other_users_are_refused():
    with pytest.raises(ValueError, match="same users"):
        paired_difference([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="at least two"):
        paired_difference([0], [1])


def _eval_file(path: Path, splits: dict[str, list[int]], data: str = "d/sequences.txt") -> Path:
    path.write_text(json.dumps({"model": "m", "data": data, "device": "cpu",
                                "results": [{"split": s, "users": len(r), "ranks": r} for s, r in splits.items()]}))
    return path


def test_the_tool_compares_each_file_with_the_first_on_the_splits_both_hold(tmp_path, capsys):
    a = _eval_file(tmp_path / "a.json", {"valid": [0, 1, -1, 3], "test": [0, -1, -1, 2]})
    b = _eval_file(tmp_path / "b.json", {"test": [0, 0, -1, 2]})
    c = _eval_file(tmp_path / "c.json", {"valid": [0, 1, -1, 3], "test": [-1, -1, -1, 2]})
    assert paired_eval.main([str(a), str(b), str(c), "--json", str(tmp_path / "out.json"),
                             "--plot", str(tmp_path / "out.png")]) == 0
    printed = capsys.readouterr().out
    assert f"| {b} | test | recall@5 | 0.5000 | 0.7500 | +0.25000 |" in printed and f"| {b} | valid |" not in printed
    assert f"| {c} | valid | recall@5 | 0.7500 | 0.7500 | +0.00000 | [+0.00000, +0.00000] | 0 of 4 |" in printed
    assert f"| {c} | test | recall@5 | 0.5000 | 0.2500 | -0.25000 |" in printed and "| 1 of 4 |" in printed
    written = json.loads((tmp_path / "out.json").read_text())["compared"]
    assert list(written[str(b)]) == ["test"] and written[str(b)]["test"]["recall@5"]["difference"] == 0.25
    assert (tmp_path / "out.png").stat().st_size > 0


@pytest.mark.parametrize("b_splits, data, message", [
    ({"valid": [0, 1, 2, 3]}, "d/sequences.txt", "share no split"),
    ({"test": [0, 1, 2, 3]}, "other/sequences.txt", "different data"),
    ({"test": [0, 1, 2]}, "d/sequences.txt", "same users"),
])
def test_the_tool_names_what_does_not_match(tmp_path, capsys, b_splits, data, message):
    a = _eval_file(tmp_path / "a.json", {"test": [0, -1, -1, 2]})
    b = _eval_file(tmp_path / "b.json", b_splits, data)
    with pytest.raises(SystemExit) as exit_:
        paired_eval.main([str(a), str(b)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_tool_asks_for_ranks(tmp_path, capsys):
    a = _eval_file(tmp_path / "a.json", {"test": [0, -1]})
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"data": "d/sequences.txt", "results": [{"split": "test", "recall@5": 0.5}]}))
    with pytest.raises(SystemExit):
        paired_eval.main([str(a), str(old)])
    assert "no per-user ranks" in capsys.readouterr().err
