"""tools/bench_core.py's logic, on the CPU at tiny sizes (its --cpu-smoke mode, Triton interpreted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "bench_core.py"


def test_bench_core_smoke_writes_checked_results(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out-dir", str(tmp_path)],
                            env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "core_microbench.json").read_text())
    assert {(r["R"], r["P"], r["W"]) for r in data["attention"]} == {(2, p, w) for p in (16, 40) for w in (4, 8)}
    for row in data["attention"]:
        assert set(row["ms"]) == {"reference", "triton", "sdpa_dup"} and all(row["correct"].values())
    for row in data["sorter"]:
        assert set(row["ms"]) == {"topk", "torch", "triton"} and all(row["exact"].values())
    assert [t["correct"] for t in data["targets"]] == [True, True]
    table = (tmp_path / "core_microbench.md").read_text()
    assert "## Targets" in table and table in result.stdout
