"""Building semantic IDs: k-means, residual k-means, TIGER's de-dup level, PPMI embeddings, `xgr sid`."""

from __future__ import annotations

import json

import pytest
import torch

from xgr_toolkit.cli import main
from xgr_toolkit.data import (
    DataError,
    build_collaborative_sids,
    deduplicate,
    kmeans,
    leave_one_out,
    load_item_embeddings,
    load_item_text,
    load_sid_json,
    rq_kmeans,
    save_item_embeddings,
    sid_report,
    text_embeddings,
)
from xgr_toolkit.data.embeddings import cooccurrence_matrix, ppmi_embeddings
from xgr_toolkit.data.rq_kmeans import collision_groups


def _blobs(k: int = 4, per: int = 30, dim: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    labels = torch.arange(k).repeat_interleave(per)
    return centres[labels] + 0.1 * torch.randn(k * per, dim, generator=g), labels


def test_kmeans_recovers_planted_clusters_and_is_seeded():
    x, labels = _blobs()
    centroids, assign = kmeans(x, 4, seed=1)
    # a perfect clustering up to renaming: each planted blob maps to exactly one code
    pairs = set(zip(labels.tolist(), assign.tolist(), strict=True))
    assert len(pairs) == 4 and len({a for _, a in pairs}) == 4
    assert centroids.shape == (4, 3)
    assert torch.equal(kmeans(x, 4, seed=1)[1], assign)


def test_kmeans_with_fewer_distinct_points_than_k():
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    _, assign = kmeans(x, 4)
    assert len(set(assign[:5].tolist())) == 1 and len(set(assign[5:].tolist())) == 1


def test_rq_kmeans_levels_refine_the_residual():
    x, labels = _blobs(k=4, per=16)
    fine = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))  # structure left after level 0
    codes = rq_kmeans(x + fine, levels=2, codes=4, progress=False)
    assert codes.shape == (64, 2) and codes.dtype == torch.int64 and int(codes.max()) < 4
    pairs = set(zip(labels.tolist(), codes[:, 0].tolist(), strict=True))
    assert len(pairs) == 4  # level 0 finds the blobs
    assert sid_report(codes).distinct_sids > 4  # level 1 splits them further
    assert torch.equal(rq_kmeans(x + fine, 2, 4, progress=False), codes)


def test_deduplicate_appends_tigers_extra_level():
    codes = torch.tensor([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    assert collision_groups(codes).tolist() == [0, 0, 1, 2, 0]
    out = deduplicate(codes, num_codes=4)
    assert out.tolist() == [[1, 2, 0], [0, 0, 0], [1, 2, 1], [1, 2, 2], [0, 1, 0]]
    report = sid_report(codes)
    assert (report.distinct_sids, report.colliding_items, report.largest_group) == (3, 2, 3)
    assert sid_report(out).colliding_items == 0
    with pytest.raises(ValueError, match="3 items share one SID"):
        deduplicate(codes, num_codes=2)


def test_ppmi_embeddings_bring_co_occurring_items_together():
    # items 1-4 always appear together, items 5-8 together; 9 never appears
    sequences = [[1, 2, 3, 4], [2, 1, 4, 3], [5, 6, 7, 8], [8, 7, 6, 5], [3, 4, 1, 2], [6, 5, 8, 7]]
    counts = cooccurrence_matrix(sequences, num_items=9, window=2).to_dense()
    assert counts[1, 2] == counts[2, 1] > 0 and counts[1, 5] == 0 and counts.diagonal().sum() == 0
    emb = ppmi_embeddings(sequences, num_items=9, dim=2)
    assert emb.shape == (10, 2) and emb[9].abs().sum() == 0 and emb[0].abs().sum() == 0
    cos = emb @ emb.T
    assert cos[1, 3] > 0.9 and cos[5, 7] > 0.9 and cos[1, 5] < 0.5


def test_build_collaborative_sids_uses_training_parts_only():
    sequences = {u: [(u + k) % 12 + 1 for k in range(6)] for u in range(40)}
    split = leave_one_out(sequences)
    built = build_collaborative_sids(split.train, list(range(1, 13)), levels=2, codes=4, dim=4, progress=False)
    assert built.catalog.levels == 3 and len(built.catalog) == 12 and built.catalog.num_sids == 12
    assert built.after.colliding_items == 0 and built.before_dedup.codes_used[0] <= 4
    no_dedup = build_collaborative_sids(split.train, list(range(1, 13)), 2, 4, dim=4, dedup=False, progress=False)
    assert no_dedup.catalog.levels == 2 and torch.equal(no_dedup.catalog.codes, built.catalog.codes[:, :2])


def test_xgr_sid_build_and_report(tmp_path, capsys):
    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} {' '.join(str((u * 3 + k) % 30 + 1) for k in range(8))}\n" for u in range(1, 80)))
    out = tmp_path / "out" / "sids.json"
    assert main(["sid", "build", "--data", str(data), "--out", str(out), "--levels", "2", "--codes", "8",
                 "--dim", "8"]) == 0
    printed = capsys.readouterr().out
    assert "collisions" in printed and "codes used: level 0:" in printed and "with the de-dup level" in printed
    table = json.loads(out.read_text())
    assert sorted(map(int, table)) == list(range(30)) and all(len(v) == 3 for v in table.values())
    catalog = load_sid_json(out, 8)
    assert catalog.num_sids == 30  # de-duplicated
    csv_out = tmp_path / "sids.csv"
    assert main(["sid", "build", "--data", str(data), "--out", str(csv_out), "--levels", "2", "--codes", "8",
                 "--dim", "8", "--no-dedup"]) == 0
    assert csv_out.read_text().splitlines()[0] == "item_id,code_0,code_1"
    assert main(["sid", "report", str(out)]) == 0
    assert "distinct SIDs 30" in capsys.readouterr().out


# ---- text embeddings (optional path; a tiny local encoder made here, nothing downloaded) ---------------
def test_load_item_text(tmp_path):
    (tmp_path / "item_text.txt").write_text("B01 red lipstick matte\nB02 foot scrubber\n")
    (tmp_path / "datamaps.json").write_text(json.dumps({"id2item": {"1": "B02", "2": "B01", "3": "B09"}}))
    assert load_item_text(tmp_path / "item_text.txt", tmp_path / "datamaps.json") == {
        1: "foot scrubber", 2: "red lipstick matte", 3: ""}
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(DataError, match="id2item"):
        load_item_text(tmp_path / "item_text.txt", tmp_path / "bad.json")


def _tiny_encoder(tmp_path, words: list[str]):
    """A 1-layer BERT with a vocabulary of ``words``, saved as a local Hugging Face folder."""
    transformers = pytest.importorskip("transformers")
    model_dir = tmp_path / "encoder"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizer(str(model_dir / "vocab.txt")).save_pretrained(str(model_dir))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)
    transformers.BertModel(config).save_pretrained(str(model_dir))
    return model_dir


def _text_data(tmp_path, words: list[str]):
    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} {' '.join(str((u * 3 + k) % 12 + 1) for k in range(6))}\n" for u in range(1, 40)))
    (tmp_path / "item_text.txt").write_text("".join(f"A{i} {words[i % 8]} {words[(i * 3) % 8]}\n" for i in range(12)))
    (tmp_path / "datamaps.json").write_text(json.dumps({"id2item": {str(i + 1): f"A{i}" for i in range(12)}}))
    return data


WORDS = ["red", "blue", "lipstick", "scrubber", "foot", "matte", "cream", "soap"]


def test_xgr_sid_build_with_text_embeddings(tmp_path, capsys):
    model_dir = _tiny_encoder(tmp_path, WORDS)
    texts = ["red lipstick", "blue lipstick", "foot scrubber", "red lipstick"]
    emb = text_embeddings(texts, model_dir, progress=False)
    assert emb.shape == (4, 16) and torch.allclose(emb.norm(dim=1), torch.ones(4))
    assert torch.allclose(emb[0], emb[3], atol=1e-6) and not torch.allclose(emb[0], emb[2])

    data = _text_data(tmp_path, WORDS)
    out = tmp_path / "sids.json"
    assert main(["sid", "build", "--data", str(data), "--out", str(out), "--embeddings", "both", "--text-model",
                 str(model_dir), "--levels", "2", "--codes", "4", "--dim", "4"]) == 0
    assert "item text: 12 of 12 items have text" in capsys.readouterr().out
    assert load_sid_json(out).num_sids == 12


def test_embed_text_file_gives_the_same_sids_as_the_encoder(tmp_path, capsys):
    """embed-text on one machine + build --embeddings-file on another == build with the encoder in place."""
    model_dir = _tiny_encoder(tmp_path, WORDS)
    data = _text_data(tmp_path, WORDS)
    emb_file = tmp_path / "emb" / "item_text.safetensors"
    assert main(["sid", "embed-text", "--data", str(data), "--out", str(emb_file), "--text-model", str(model_dir)]) == 0
    assert "12 items x 16 dims, float32" in capsys.readouterr().out
    texts = load_item_text(tmp_path / "item_text.txt", tmp_path / "datamaps.json")
    expected = text_embeddings([texts[i] for i in range(1, 13)], model_dir, progress=False)
    assert torch.equal(load_item_embeddings(emb_file, list(range(12, 0, -1))), expected)  # rows: ascending ids
    common = ["--data", str(data), "--levels", "2", "--codes", "4", "--dim", "4"]
    for mode in ("text", "both"):
        encoder, from_file = tmp_path / f"{mode}.encoder.json", tmp_path / f"{mode}.file.json"
        assert main(["sid", "build", *common, "--out", str(encoder), "--embeddings", mode,
                     "--text-model", str(model_dir)]) == 0
        assert main(["sid", "build", *common, "--out", str(from_file), "--embeddings", mode,
                     "--embeddings-file", str(emb_file)]) == 0
        assert json.loads(from_file.read_text()) == json.loads(encoder.read_text())
        assert f"embeddings file {emb_file}: 16 dims for all 12 items" in capsys.readouterr().out
    half = tmp_path / "half.safetensors"
    assert main(["sid", "embed-text", "--data", str(data), "--out", str(half), "--text-model", str(model_dir),
                 "--dtype", "float16"]) == 0
    assert half.stat().st_size < emb_file.stat().st_size
    assert torch.allclose(load_item_embeddings(half, range(1, 13)), expected, atol=1e-3)


def test_xgr_sid_build_from_an_embeddings_file(tmp_path, capsys):
    """A user's own embeddings (no text encoder needed): planted clusters become level-0 codes."""
    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} {' '.join(str((u * 3 + k) % 30 + 1) for k in range(8))}\n" for u in range(1, 80)))
    x, labels = _blobs(k=4, per=10, dim=6)  # 40 rows: the data has items 1..30, the 10 others are ignored
    ids = torch.arange(40).view(10, 4).T.flatten() + 1  # rows in no id order: blob c holds the items = c+1 mod 4
    emb_file = save_item_embeddings(tmp_path / "mine.safetensors", ids, x)
    out = tmp_path / "sids.json"
    assert main(["sid", "build", "--data", str(data), "--out", str(out), "--embeddings", "text",
                 "--embeddings-file", str(emb_file), "--levels", "1", "--codes", "4", "--no-dedup"]) == 0
    level0 = load_sid_json(out, 4).codes[:, 0]  # rows for items 1..30
    planted = labels[ids.argsort()][:30]  # the blob of items 1..30
    pairs = set(zip(planted.tolist(), level0.tolist(), strict=True))
    assert len(pairs) == 4 and len({code for _, code in pairs}) == 4  # one code a blob
    both = tmp_path / "both.json"
    assert main(["sid", "build", "--data", str(data), "--out", str(both), "--embeddings", "both",
                 "--embeddings-file", str(emb_file), "--levels", "2", "--codes", "8", "--dim", "4"]) == 0
    assert load_sid_json(both, 8).num_sids == 30


def test_embeddings_file_errors_name_the_file_and_the_tensor(tmp_path, capsys):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"item_ids": torch.arange(1, 5), "embeddings": torch.zeros(5, 3)}, str(bad))
    with pytest.raises(DataError, match=r"bad\.safetensors: tensor 'embeddings' is float32 \[5, 3\]; "
                                        r"expected float32 \[N, D\] = \[4, D\]"):
        load_item_embeddings(bad, [1, 2, 3, 4])
    save_file({"item_ids": torch.arange(1, 5).float(), "embeddings": torch.zeros(4, 3)}, str(bad))
    with pytest.raises(DataError, match=r"tensor 'item_ids' is float32 \[4\]; expected int64 \[N\]"):
        load_item_embeddings(bad, [1, 2])
    save_file({"ids": torch.arange(1, 5), "embeddings": torch.zeros(4, 3)}, str(bad))
    with pytest.raises(DataError, match=r"no tensor 'item_ids' \(found \['embeddings', 'ids'\]\)"):
        load_item_embeddings(bad, [1, 2])
    save_file({"item_ids": torch.tensor([1, 2, 2]), "embeddings": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(DataError, match=r"repeats item ids \[2\]"):
        load_item_embeddings(bad, [1, 2])
    save_file({"item_ids": torch.tensor([1, 2]), "embeddings": torch.tensor([[0.0], [float("nan")]])}, str(bad))
    with pytest.raises(DataError, match=r"non-finite values for item ids \[2\]"):
        load_item_embeddings(bad, [1, 2])
    save_file({"item_ids": torch.tensor([3, 1]), "embeddings": torch.ones(2, 3)}, str(bad))
    with pytest.raises(DataError, match=r"no row for 1 of the data's 3 items \(item ids \[2\]\)"):
        load_item_embeddings(bad, [1, 2, 3])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="junk.safetensors: not a readable safetensors file"):
        load_item_embeddings(tmp_path / "junk.safetensors", [1])
    with pytest.raises(FileNotFoundError, match="absent.safetensors: no such embeddings file"):
        load_item_embeddings(tmp_path / "absent.safetensors", [1])

    # through the command: exit code 2 and one line naming the file and the tensor, no traceback
    data = tmp_path / "sequences.txt"
    data.write_text("1 1 2 3 4\n2 2 3 4 1\n")
    save_file({"item_ids": torch.arange(1, 5), "embeddings": torch.zeros(4)}, str(bad))
    assert main(["sid", "build", "--data", str(data), "--embeddings", "text", "--embeddings-file", str(bad),
                 "--out", str(tmp_path / "x.json"), "--levels", "1", "--codes", "2"]) == 2
    err = capsys.readouterr().err
    assert f"xgr sid build: error: {bad}: tensor 'embeddings' is float32 [4]; expected float32 [N, D] = [4, D]" in err
    assert main(["sid", "build", "--data", str(data), "--embeddings-file", str(bad),
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "add --embeddings text" in capsys.readouterr().err
