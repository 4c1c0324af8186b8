"""Our decoder and reference beam search against Hugging Face transformers on the same random weights."""

import pytest
import torch

from xgr_toolkit.reference import reference_beam_search
from xgr_toolkit.request import RecRequest
from xgr_toolkit.synthetic import random_catalog

PADDED = -1e8  # HF pads missing beams with scores around -1e9


@pytest.mark.parametrize("kind, tie", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", False)])
def test_decoder_logits_equal_hf(kind, tie, hf_causal_lm, decoder_from_hf):
    hf = hf_causal_lm(kind, levels=3, codes=8, seed=1, tie=tie)
    decoder = decoder_from_hf(hf, levels=3, codes=8)
    assert decoder.config.tie_embeddings == tie and decoder.config.qk_norm == (kind == "qwen3")
    tokens = torch.randint(0, hf.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = hf(tokens).logits, decoder(tokens)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero logits
    assert (got - expected).abs().max() <= 1e-4


def _prompt(vocab_size: int, seed: int) -> list[int]:
    return torch.randint(2, vocab_size, (12,), generator=torch.Generator().manual_seed(seed)).tolist()


def _reference(decoder, catalog, prompt, beam_width):
    request = RecRequest(tuple(prompt), beam_width, beam_width, "vocab")
    return reference_beam_search(decoder, catalog, request)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
@pytest.mark.parametrize("levels, codes, num_items", [(3, 8, 150), (4, 5, 250)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_beam_search_equals_hf_generate(kind, levels, codes, num_items, seed, hf_causal_lm,
                                                  decoder_from_hf, hf_constrained_generate):
    hf = hf_causal_lm(kind, levels, codes, seed)
    decoder = decoder_from_hf(hf, levels, codes)
    catalog = random_catalog(num_items, levels, codes, seed)  # no collisions: items and SIDs are 1:1
    prompt = _prompt(hf.config.vocab_size, seed)
    expected = hf_constrained_generate(hf, catalog, prompt, beam_width=8)
    got = _reference(decoder, catalog, prompt, beam_width=8)
    assert all(score > PADDED for _, score in expected)  # enough items: HF fills every beam
    assert [item.sid for item in got] == [sid for sid, _ in expected]
    assert [item.item_id for item in got] == [catalog.items_of_sid(sid)[0] for sid, _ in expected]
    assert [item.score for item in got] == pytest.approx([score for _, score in expected], abs=1e-4)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_fewer_items_than_beams_hf_pads_and_reference_does_not(kind, hf_causal_lm, decoder_from_hf,
                                                              hf_constrained_generate):
    hf = hf_causal_lm(kind, levels=3, codes=8, seed=3)
    decoder = decoder_from_hf(hf, levels=3, codes=8)
    catalog = random_catalog(5, levels=3, codes=8, seed=3)
    prompt = _prompt(hf.config.vocab_size, seed=3)
    rows = hf_constrained_generate(hf, catalog, prompt, beam_width=8)
    valid = [(sid, score) for sid, score in rows if score > PADDED]
    assert len(rows) == 8 and len(valid) == 5
    got = _reference(decoder, catalog, prompt, beam_width=8)
    assert [item.sid for item in got] == [sid for sid, _ in valid]
    assert [item.score for item in got] == pytest.approx([score for _, score in valid], abs=1e-4)
