"""Every attention path with the attention kernels handing back non-contiguous outputs (the
``noncontiguous_attention`` fixture): CUDA's SDPA does where the CPU's does not, so a ``.view`` where a
``.reshape`` is needed crashed every eager prefill on a GPU while CI passed. Each test asserts its path
really went through a wrapped kernel and gives the values it gives with contiguous outputs."""

import dataclasses

import pytest
import torch

from xgr_toolkit import ServeConfig
from xgr_toolkit.engine import GREngine
from xgr_toolkit.engines import ReferenceEngine
from xgr_toolkit.modules import IGNORE_INDEX
from xgr_toolkit.ops import staged_attention_reference
from xgr_toolkit.synthetic import random_decoder

from engine_cases import assert_same_items, random_case


@pytest.fixture
def deep_cfg(small_cfg):
    """Three layers (the first, a handoff, the last) and grouped query heads."""
    cfg = dataclasses.replace(small_cfg, num_layers=3, num_heads=4, num_kv_heads=2)
    return cfg


def _tokens(cfg, rows=3, length=9, seed=4):
    return torch.randint(0, cfg.vocab_size, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_prefill_last_position_shortcut(deep_cfg, noncontiguous_attention):
    """Prefill's last layer for each row's last token (``causal_attend_at``): the path that crashed on CUDA."""
    decoder, tokens, last = random_decoder(deep_cfg, seed=4), _tokens(deep_cfg), torch.tensor([8, 0, 4])
    with torch.no_grad():
        want = decoder.hidden_states(tokens, last=last)
        calls = noncontiguous_attention()
        got = decoder.hidden_states(tokens, last=last)
    assert calls["sdpa"] == deep_cfg.num_layers
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_training_forward_and_its_gradients(deep_cfg, noncontiguous_attention):
    """The training forward (causal attention over the whole sequence), its loss and gradients."""
    decoder, tokens = random_decoder(deep_cfg, seed=5), _tokens(deep_cfg, seed=5)
    labels = tokens.roll(-1, dims=1)
    labels[:, :3] = IGNORE_INDEX

    def loss_and_grads():
        decoder.zero_grad()
        loss = decoder.loss(tokens, labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in decoder.parameters() if p.grad is not None]
    want_loss, want_grads = loss_and_grads()
    calls = noncontiguous_attention()
    got_loss, got_grads = loss_and_grads()
    assert calls["sdpa"] == deep_cfg.num_layers
    torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=0)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_staged_attention_reference(noncontiguous_attention):
    """The staged-attention definition: both stages' softmax-times-values products non-contiguous."""
    g = torch.Generator().manual_seed(6)
    R, W, Hkv, G, D, P, L = 2, 5, 2, 3, 8, 11, 3
    args = (torch.randn(R, W, Hkv * G, D, generator=g), torch.randn(R, Hkv, P, D, generator=g),
            torch.randn(R, Hkv, P, D, generator=g), torch.tensor([11, 4]), torch.randn(R, W, Hkv, L, D, generator=g),
            torch.randn(R, W, Hkv, L, D, generator=g), torch.tensor(2), torch.randint(W, (R, W, L), generator=g))
    want = staged_attention_reference(*args)
    calls = noncontiguous_attention()
    got = staged_attention_reference(*args)
    assert calls["reference"] == 2
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("serve", [
    ServeConfig(prompt_buckets=[8, 40], max_batch=4),  # prefill, the shortcut, staged decode steps
    ServeConfig(prompt_buckets=[8, 40], max_batch=4, shared_prompt_kv=False),  # decode steps through SDPA
    ServeConfig(prompt_buckets=[40], max_batch=2, compile=True),  # compiled regions between the attentions
], ids=["eager", "duplicated-prompt-kv", "compiled"])
def test_engine_end_to_end(serve, noncontiguous_attention):
    """The fast engine, eager and compiled, equals the reference with every attention output non-contiguous."""
    model, requests = random_case(2, serve)
    calls = noncontiguous_attention()
    engine = GREngine(model)
    if serve.compile:
        engine.warmup()
    try:
        got = engine.recommend(requests)
    finally:
        engine.close()
    decode_kernel = "staged" if serve.shared_prompt_kv else "sdpa"
    assert calls["sdpa"] > 0 and calls[decode_kernel] > 0
    assert_same_items(ReferenceEngine(model).recommend(requests), got)


def test_engine_with_prompt_reuse(noncontiguous_attention):
    """Returning users' suffix prefill (SDPA over the cached prompt with an explicit mask, T queries a row)."""
    serve = ServeConfig(prompt_buckets=[8, 16, 24, 40], max_batch=4, prefix_cache_bytes=1 << 20,
                        prefix_cache_block=8)
    model, requests = random_case(2, serve)
    calls = noncontiguous_attention()
    engine = GREngine(model)
    try:
        got = [engine.recommend(requests) for _ in range(2)]
        assert engine.prefix_cache_stats()["hit_tokens"] > 0
    finally:
        engine.close()
    assert calls["sdpa"] > 0
    expected = ReferenceEngine(model).recommend(requests)
    for answers in got:
        assert_same_items(expected, answers)
