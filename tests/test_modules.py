"""The decoder's building blocks, its training forward, and the model directory round trip."""

import dataclasses

import pytest
import torch

from xgr_toolkit import GRDecoder, load_model_dir, save_model_dir
from xgr_toolkit.config import XGRConfig
from xgr_toolkit.modules import IGNORE_INDEX, RMSNorm, RotaryEmbedding, apply_rotary
from xgr_toolkit.synthetic import random_catalog, random_decoder


def test_rms_norm_matches_formula_and_keeps_dtype():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 8)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    assert norm.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


def test_rotary_preserves_norm_and_depends_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=8, theta=10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def rotated(x, position):
        cos, sin = rope(torch.tensor([[position]]), torch.float32)
        return apply_rotary(x, cos, sin)

    torch.testing.assert_close(rotated(q, 5).norm(), q.norm())
    dot = (rotated(q, 7) * rotated(k, 3)).sum()
    torch.testing.assert_close(dot, (rotated(q, 14) * rotated(k, 10)).sum())
    assert not torch.allclose(dot, (rotated(q, 7) * rotated(k, 4)).sum())


def test_decoder_is_causal(small_cfg):
    decoder = random_decoder(small_cfg, seed=0)
    tokens = torch.randint(0, small_cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % small_cfg.vocab_size
    with torch.no_grad():
        before, after = decoder(tokens), decoder(changed)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_last_position_state_is_that_of_the_full_forward(small_cfg):
    """Prefill's shortcut: only each row's ``last`` position through the final layer's attention and MLP."""
    cfg = dataclasses.replace(small_cfg, num_layers=3)  # a first layer, a handoff, then the last
    assert cfg.num_heads > cfg.num_kv_heads  # the grouped heads go in as query rows
    decoder = random_decoder(cfg, seed=4)
    tokens = torch.randint(0, cfg.vocab_size, (3, 9), generator=torch.Generator().manual_seed(4))
    last = torch.tensor([8, 0, 4])  # a full row, a one-token row and a right-padded one
    with torch.no_grad():
        full, shortcut = decoder.hidden_states(tokens), decoder.hidden_states(tokens, last=last)
    assert shortcut.shape == (3, 1, cfg.hidden_size)
    torch.testing.assert_close(shortcut[:, 0], full[torch.arange(3), last], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shortcut[:, 0], full[:, -1], rtol=1e-3, atol=1e-3)  # each row's own position


def test_loss_is_cross_entropy_over_labelled_positions(small_cfg):
    decoder = random_decoder(small_cfg, seed=1)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, small_cfg.vocab_size, (2, 7), generator=g)
    labels = torch.randint(0, small_cfg.vocab_size, (2, 7), generator=g)
    labels[0, :4] = IGNORE_INDEX  # history positions
    labels[1, 5:] = IGNORE_INDEX  # padding
    log_probs = decoder(tokens).log_softmax(-1)  # [B, T, V]
    labelled = [(b, t) for b in range(2) for t in range(7) if labels[b, t] != IGNORE_INDEX]
    expected = -sum(log_probs[b, t, labels[b, t]] for b, t in labelled) / len(labelled)
    loss = decoder.loss(tokens, labels)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert decoder.lm_head.weight.grad.abs().sum() > 0
    relabelled = labels.where(labels != IGNORE_INDEX, 0)
    assert not torch.isclose(decoder.loss(tokens, relabelled), expected)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_fused_projections_compute_the_same_and_leave_the_original_untouched(small_cfg, qkv_bias):
    small_cfg.qkv_bias = qkv_bias
    decoder = random_decoder(small_cfg, seed=3)
    if qkv_bias:
        with torch.no_grad():
            for layer in decoder.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_()
    before = {name: t.clone() for name, t in decoder.state_dict().items()}
    fused = decoder.sharing_weights()
    fused.fuse_projections()
    tokens = torch.randint(0, small_cfg.vocab_size, (3, 9), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fused(tokens), decoder(tokens), rtol=1e-5, atol=1e-5)
    assert not hasattr(fused.layers[0].self_attn, "q_proj") and not hasattr(fused.layers[0].mlp, "up_proj")
    assert decoder.state_dict().keys() == before.keys()  # HF names kept, values unchanged
    assert all(torch.equal(t, before[name]) for name, t in decoder.state_dict().items())


def test_tied_head_shares_the_embedding(small_cfg):
    untied = sum(p.numel() for p in GRDecoder(small_cfg).parameters())
    small_cfg.tie_embeddings = True
    decoder = GRDecoder(small_cfg)
    assert decoder.lm_head.weight is decoder.embed_tokens.weight
    assert sum(p.numel() for p in decoder.parameters()) == untied - small_cfg.vocab_size * small_cfg.hidden_size


@pytest.mark.parametrize("tie", [False, True])
def test_model_dir_round_trip(tmp_path, small_cfg, tie):
    small_cfg.tie_embeddings = tie
    decoder = random_decoder(small_cfg, seed=2)
    catalog = random_catalog(10, small_cfg.levels, small_cfg.codes, seed=2)
    save_model_dir(tmp_path, XGRConfig(model=small_cfg), decoder, catalog)
    loaded = load_model_dir(tmp_path)
    assert loaded.config.model == small_cfg
    assert (loaded.decoder.lm_head.weight is loaded.decoder.embed_tokens.weight) == tie
    assert loaded.catalog.codes.equal(catalog.codes) and loaded.catalog.item_ids.equal(catalog.item_ids)
    tokens = torch.arange(small_cfg.vocab_size)[None]
    with torch.no_grad():
        assert loaded.decoder(tokens).equal(decoder(tokens))
    assert not any(f.suffix in (".pt", ".bin", ".pkl") for f in tmp_path.iterdir())


def test_model_dir_rejects_catalog_of_another_layout(tmp_path, small_cfg):
    catalog = random_catalog(10, levels=3, codes=4, seed=0)
    save_model_dir(tmp_path, XGRConfig(model=small_cfg), random_decoder(small_cfg), catalog)
    with pytest.raises(ValueError, match="3 levels of 4 codes, but config.yaml says 2 levels of 4 codes"):
        load_model_dir(tmp_path)

