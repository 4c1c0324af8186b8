"""Training: teacher-forced batches, the loss, a user's own loop (docs/training.md), the reference loop."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from xgr_toolkit import ItemCatalog, ModelConfig, load_model_dir
from xgr_toolkit.cli import main
from xgr_toolkit.data import leave_one_out, save_sid_json
from xgr_toolkit.modules import IGNORE_INDEX, GRDecoder
from xgr_toolkit.request import sid_tokens
from xgr_toolkit.synthetic import random_catalog
from xgr_toolkit.training import (
    PAD_TOKEN,
    TRAINING_FILE,
    SampleTable,
    TrainConfig,
    batch_from_codes,
    batch_from_items,
    next_sid_loss,
    train_decoder,
    warmup_cosine,
)

NUM_ITEMS = 24


def _catalog(levels: int = 3, codes: int = 8) -> ItemCatalog:
    """Items 1..NUM_ITEMS with distinct random SIDs."""
    return ItemCatalog(torch.arange(1, NUM_ITEMS + 1), random_catalog(NUM_ITEMS, levels, codes, seed=3).codes, codes)


def _cycle_sequences(users: int = 60, length: int = 7) -> dict[int, list[int]]:
    """Planted structure: each user walks the cycle 1 -> 2 -> ... -> NUM_ITEMS -> 1 from its own start."""
    return {u: [(u * 5 + k) % NUM_ITEMS + 1 for k in range(length)] for u in range(1, users + 1)}


def _cfg(catalog: ItemCatalog) -> ModelConfig:
    return ModelConfig(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64,
                       sid_offset=4, levels=catalog.levels, codes=catalog.num_codes,
                       max_prompt_tokens=6 * catalog.levels)


def test_batch_layout_labels_only_the_target_tokens():
    catalog = _catalog()
    cfg = _cfg(catalog)
    tokens, labels = batch_from_items(cfg, catalog, [[1, 2], [5]], [3, 6])
    L = cfg.levels
    full0 = sid_tokens(cfg, catalog.sids_of_items(torch.tensor([1, 2, 3]))).flatten()
    full1 = sid_tokens(cfg, catalog.sids_of_items(torch.tensor([5, 6]))).flatten()
    assert tokens.shape == labels.shape == (2, 3 * L - 1)
    assert tokens[0].tolist() == full0[:-1].tolist()
    assert labels[0].tolist() == [IGNORE_INDEX] * (2 * L - 1) + full0[-L:].tolist()
    # the shorter sample is padded on the right, and padding is never labelled
    assert tokens[1].tolist() == full1[:-1].tolist() + [PAD_TOKEN] * L
    assert labels[1].tolist() == [IGNORE_INDEX] * (L - 1) + full1[-L:].tolist() + [IGNORE_INDEX] * L


def test_batch_from_codes_matches_batch_from_items():
    catalog = _catalog()
    cfg = _cfg(catalog)
    histories, targets = [[4, 5, 6], [7], [8, 9]], [7, 8, 10]
    tokens, labels = batch_from_items(cfg, catalog, histories, targets)
    items = torch.tensor([[4, 5, 6, 7], [7, 8, 1, 1], [8, 9, 10, 1]])  # entries past num_items are ignored
    codes = catalog.sids_of_items(items.flatten()).view(3, 4, cfg.levels)
    t2, l2 = batch_from_codes(cfg, codes, torch.tensor([4, 2, 3]))
    assert torch.equal(tokens, t2) and torch.equal(labels, l2)


def test_next_sid_loss_equals_decoder_loss():
    catalog = _catalog()
    cfg = _cfg(catalog)
    torch.manual_seed(0)
    decoder = GRDecoder(cfg)
    tokens, labels = batch_from_items(cfg, catalog, [[1, 2, 3], [9], [4, 5]], [4, 10, 6])
    assert torch.allclose(next_sid_loss(decoder, tokens, labels), decoder.loss(tokens, labels), atol=1e-6)


def test_label_smoothing_mixes_in_the_mean_over_the_vocabulary():
    """(1 - e) x cross-entropy + e x the mean negative log-probability over all V tokens, at labelled positions."""
    catalog = _catalog()
    cfg = _cfg(catalog)
    torch.manual_seed(0)
    decoder = GRDecoder(cfg)
    tokens, labels = batch_from_items(cfg, catalog, [[1, 2, 3], [9]], [4, 10])
    log_probs = decoder(tokens).float().log_softmax(-1)[labels != IGNORE_INDEX]  # [M, V]
    expected = 0.8 * decoder.loss(tokens, labels) + 0.2 * -log_probs.mean()
    assert torch.allclose(next_sid_loss(decoder, tokens, labels, 0.2), expected, atol=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_custom_training_loop_from_the_docs_lowers_the_loss():
    """The loop of docs/training.md, on synthetic data with a planted next-item rule."""
    split = leave_one_out(_cycle_sequences())
    catalog = _catalog()
    cfg = _cfg(catalog)
    torch.manual_seed(0)
    decoder = GRDecoder(cfg)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3, weight_decay=0.1)

    def encode(history: list[int], target: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = sid_tokens(cfg, catalog.sids_of_items(torch.tensor(history + [target]))).flatten()
        labels = torch.full((len(tokens) - 1,), IGNORE_INDEX)
        labels[-cfg.levels:] = tokens[-cfg.levels:]
        return tokens[:-1], labels

    samples = split.training_samples(max_history=6)
    losses = []
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        for batch in torch.randperm(len(samples), generator=g).split(32):
            inputs, labels = zip(*(encode(*samples[i]) for i in batch.tolist()), strict=True)
            tokens = pad_sequence(inputs, batch_first=True, padding_value=0)
            labels = pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
            loss = decoder.loss(tokens, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 2.0  # about log(8): nothing learnt yet
    assert last < 0.5 * first, (first, last)


def test_train_decoder_learns_the_planted_rule():
    split = leave_one_out(_cycle_sequences())
    catalog = _catalog()
    cfg = _cfg(catalog)
    decoder = GRDecoder(cfg)
    result = train_decoder(decoder, catalog, SampleTable.from_samples(split.training_samples(6)),
                           TrainConfig(epochs=12, batch_size=32, lr=5e-3, warmup_steps=10, progress=False))
    assert result.steps == len(result.losses) == 12 * -(-len(split.training_samples(6)) // 32)
    assert result.epoch_losses[-1] < 0.3 * result.epoch_losses[0]
    # the trained model puts the planted next item first
    tokens, _ = batch_from_items(cfg, catalog, [[3, 4, 5]], [6])
    with torch.no_grad():
        logits = decoder(tokens[:, :3 * cfg.levels])[0, -1, cfg.sid_offset:cfg.sid_offset + cfg.codes]
    assert int(logits.argmax()) == int(catalog.sids_of_items(torch.tensor([6]))[0, 0])


def test_keep_best_restores_the_epoch_with_the_lowest_validation_loss():
    split = leave_one_out(_cycle_sequences())
    catalog = _catalog()
    samples = SampleTable.from_samples(split.training_samples(6))
    valid = SampleTable.from_samples([(c.history, c.target) for c in split.cases("valid", 6)])
    cfg = TrainConfig(epochs=4, batch_size=32, lr=5e-3, warmup_steps=5, progress=False)
    torch.manual_seed(0)
    decoder = GRDecoder(_cfg(catalog))
    result = train_decoder(decoder, catalog, samples, cfg, valid)
    assert len(result.valid_losses) == 4 and result.valid_losses[-1] < result.valid_losses[0]
    best = min(range(4), key=lambda e: result.valid_losses[e])
    assert result.best_epoch == best + 1
    cases = split.cases("valid", 6)
    tokens, labels = batch_from_items(_cfg(catalog), catalog, [c.history for c in cases], [c.target for c in cases])
    with torch.no_grad():  # the decoder ends with the best epoch's weights
        assert float(decoder.loss(tokens, labels)) == pytest.approx(result.valid_losses[best], rel=1e-4)


def test_patience_stops_after_epochs_without_a_lower_validation_loss(monkeypatch):
    split = leave_one_out(_cycle_sequences())
    catalog = _catalog()
    samples = SampleTable.from_samples(split.training_samples(6))
    valid = SampleTable.from_samples([(c.history, c.target) for c in split.cases("valid", 6)])
    scripted = iter([3.0, 2.0, 2.5, 2.0, 2.9, 1.0])  # lowest at epoch 2, not beaten by epochs 3 and 4
    monkeypatch.setattr("xgr_toolkit.training.trainer._mean_loss", lambda *a: next(scripted))
    cfg = TrainConfig(epochs=6, batch_size=32, lr=5e-3, warmup_steps=5, patience=2, progress=False)
    result = train_decoder(GRDecoder(_cfg(catalog)), catalog, samples, cfg, valid)
    assert result.valid_losses == [3.0, 2.0, 2.5, 2.0] and result.best_epoch == 2
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=-1)


def test_train_config_rejects_bf16_on_cpu():
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(bf16=True, device="cpu")


def test_train_rejects_items_without_sid():
    catalog = _catalog()
    samples = SampleTable.from_samples([([1, 2], 99)])
    with pytest.raises(ValueError, match="99"):
        train_decoder(GRDecoder(_cfg(catalog)), catalog, samples, TrainConfig(max_steps=1, progress=False))


def test_xgr_train_mlp_follows_hidden(tmp_path, capsys):
    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} {' '.join(map(str, items))}\n" for u, items in _cycle_sequences(30).items()))
    sids = save_sid_json(_catalog(), tmp_path / "sids.json")
    assert main(["train", "--data", str(data), "--sids", str(sids), "--codes", "8", "--out", str(tmp_path / "m"),
                 "--layers", "1", "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--max-steps", "1"]) == 0
    assert load_model_dir(tmp_path / "m").config.model.intermediate_size == 3 * 32  # Qwen3's ratio
    assert "MLP 96" in capsys.readouterr().out


def test_xgr_train_writes_a_loadable_model_dir(tmp_path, capsys):
    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} {' '.join(map(str, items))}\n" for u, items in _cycle_sequences(30).items()))
    sids = save_sid_json(_catalog(), tmp_path / "sids.json")
    out = tmp_path / "model"
    assert main(["train", "--data", str(data), "--sids", str(sids), "--codes", "8", "--out", str(out),
                 "--layers", "1", "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--mlp", "64",
                 "--epochs", "1", "--batch-size", "16", "--max-history", "5"]) == 0
    model = load_model_dir(out)
    assert model.config.model.levels == 3 and model.config.model.codes == 8
    assert model.config.model.max_prompt_tokens == 15 and model.config.model.sid_offset == 4
    assert len(model.catalog) == NUM_ITEMS
    record = json.loads((out / TRAINING_FILE).read_text())
    assert record["samples"] == 30 * 4 and len(record["epoch_losses"]) == len(record["valid_losses"]) == 1
    assert record["best_epoch"] == 1
    assert "trained" in capsys.readouterr().out


def test_xgr_train_truncation_cuts_the_samples_and_is_kept_in_the_model_config(tmp_path):
    """--truncation stable: training samples cut as the served model will cut requests (model.truncation in
    config.yaml, which xgr eval and the server then use); training.json records it."""
    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} {' '.join(map(str, items))}\n"
                            for u, items in _cycle_sequences(10, length=14).items()))
    sids = save_sid_json(_catalog(), tmp_path / "sids.json")
    for policy in ("sliding", "stable"):
        out = tmp_path / policy
        assert main(["train", "--data", str(data), "--sids", str(sids), "--codes", "8", "--out", str(out),
                     "--layers", "1", "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--max-steps", "1",
                     "--max-history", "8", "--truncation", policy]) == 0
        assert load_model_dir(out).config.model.truncation == policy
        assert json.loads((out / TRAINING_FILE).read_text())["truncation"] == policy
    split = leave_one_out(_cycle_sequences(10, length=14))  # training parts of 12 items: 11 samples a user
    lengths = [len(h) for h, _ in split.training_samples(8, "stable")[:11]]
    assert lengths == [1, 2, 3, 4, 5, 6, 7, 8, 7, 8, 7]  # limit 8, step 2: 9 and 10 items drop 2, 11 drop 4
