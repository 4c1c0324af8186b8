"""tools/quality_experiment.py end to end on a tiny CPU data folder: SIDs -> training -> validation-chosen
beam -> test once, two seeds, two SID sets, the summary JSON, table and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools/quality_experiment.py"


def _folder(tmp_path: Path) -> Path:
    """A data folder as the shared ones: sequences.txt and a LETTER-style semantic_ids.letter.json, no text."""
    data = tmp_path / "toy"
    data.mkdir()
    lines = [f"{u} {' '.join(str((u * 7 + k) % 30 + 1) for k in range(6))}" for u in range(1, 61)]
    (data / "sequences.txt").write_text("\n".join(lines) + "\n")
    letter = {str(i): [f"<a_{i % 16}>", f"<b_{i // 16}>", "<c_0>", "<d_0>"] for i in range(30)}
    (data / "semantic_ids.letter.json").write_text(json.dumps(letter))
    return data


@pytest.mark.slow
def test_quality_experiment_runs_end_to_end_on_a_tiny_slice(tmp_path):
    data, work, out = _folder(tmp_path), tmp_path / "work", tmp_path / "out"
    argv = [sys.executable, str(SCRIPT), "--data", str(data), "--work", str(work), "--out", str(out), "--device", "cpu",
            "--limit-users", "50", "--size", "tiny", "--levels", "2", "--codes", "8", "--epochs", "1",
            "--sasrec-epochs", "2", "--beams", "10", "12", "--seeds", "0", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "quality_results.json").read_text())
    assert results["users"] == 50 and results["sid_embeddings"] == "sasrec (no item text)"
    assert sorted((r["sids"], r["seed"]) for r in results["runs"]) == [("letter", 0), ("letter", 1), ("ours", 0),
                                                                        ("ours", 1)]
    for run in results["runs"]:
        valid = {int(w): v["ndcg@10"] for w, v in run["valid_by_beam"].items()}
        assert set(valid) == {10, 12} and run["beam_width"] == max(valid, key=lambda w: (valid[w], -w))
        assert run["test"]["users"] == 50 and run["test"]["beam_width"] == run["beam_width"]
    tests = [ph["phase"] for ph in results["phases"] if "TEST" in ph["phase"]]
    assert len(tests) == 4  # the test split once a run
    ours = [r for r in results["runs"] if r["sids"] == "ours"]
    assert all(r["sid_report"]["sids"]["colliding_items"] == 0 and r["sid_report"]["dedup_level"] for r in ours)
    row = results["summary"]["ours"]
    values = [r["test"]["ndcg@10"] for r in ours]
    assert row["seeds"] == [0, 1] and row["test ndcg@10"]["mean"] == pytest.approx(sum(values) / 2)
    assert row["test ndcg@10"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    table = (out / "quality_results.md").read_text()
    assert "| popularity |" in table and "| LETTER | 0, 1 |" in table
    assert "ours: sasrec (no item text) | 0, 1 |" in table
    assert (out / "quality_results.png").stat().st_size > 1000
    # a later call with another seed adds to the runs recorded in --work
    again = subprocess.run([*argv[:-2], "2", "--sid-sets", "ours"], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "quality_results.json").read_text())["summary"]["ours"]["seeds"] == [0, 1, 2]
