"""tools/float8_gate.py's verdict: within 1% (relative) of bf16 on Recall@10 and NDCG@10, or not."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from float8_gate import KEEP_BF16, gate, gate_tries  # noqa: E402

BF16 = {"recall@10": 0.0700, "ndcg@10": 0.0400}


@pytest.mark.parametrize("float8, holds", [
    ({"recall@10": 0.0700, "ndcg@10": 0.0400}, True),
    ({"recall@10": 0.0694, "ndcg@10": 0.0403}, True),  # -0.86%, +0.75%
    ({"recall@10": 0.0692, "ndcg@10": 0.0400}, False),  # -1.14%
    ({"recall@10": 0.0700, "ndcg@10": 0.0405}, False),  # +1.25%: a change either way fails it
])
def test_the_gate_holds_within_one_percent_either_way(float8, holds):
    result = gate(BF16, float8)
    assert result["holds"] is holds
    assert result["relative_change"]["recall@10"] == pytest.approx(float8["recall@10"] / 0.07 - 1)


@pytest.mark.parametrize("holds_when_kept, tried", [
    ([], 2),  # all in float8 holds: the default (head in bf16) is still measured, then no more
    (["lm_head"], 2),
    (["lm_head", "*.down_proj"], 3),
    (["lm_head", "*.down_proj", "*.o_proj"], 4),
    (None, 4),  # never holds: every try measured, the JSON says none held
])
def test_more_layers_stay_bf16_only_while_the_gate_fails(holds_when_kept, tried):
    def float8(i, keep):  # holds once ``keep`` covers ``holds_when_kept``
        ok = holds_when_kept is not None and set(holds_when_kept) <= set(keep)
        return {"recall@10": 0.0700 if ok else 0.0650, "ndcg@10": 0.0400}

    tries = gate_tries(BF16, float8)
    assert [t["kept_in_bf16"] for t in tries] == list(KEEP_BF16[:tried])
    assert [t["holds"] for t in tries][1:] == [False] * (tried - 2) + [holds_when_kept is not None]
