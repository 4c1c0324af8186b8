"""tools/float8_gate.py's verdict: within 1% (relative) of bf16 on Recall@10 and NDCG@10, or not."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from float8_gate import gate  # noqa: E402

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
