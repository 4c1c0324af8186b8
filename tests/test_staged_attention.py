"""Staged attention: the PyTorch reference against a dense oracle, the merge, the dispatcher.

The oracle is what a naive engine does: copy the prompt KV into every beam, and each beam's decoded
keys out of the slots its lineage names, and run SDPA with a mask.
"""


import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from xgr_toolkit.ops import merge_attention_states, staged_attention, staged_attention_reference


def dense_attention(q, prompt_k, prompt_v, prompt_len, beam_k, beam_v, beam_len, beam_src):
    """Prompt KV duplicated per beam ++ each beam's own decoded KV, one masked SDPA call in float32 -> [R, W, H, D]."""
    R, W, H, D = q.shape
    Hkv, P, L = prompt_k.shape[1], prompt_k.shape[2], beam_k.shape[3]

    def per_beam(prompt, beam):  # [R, Hkv, P, D], [R, W, Hkv, L, D] -> [R*W, Hkv, P+L, D]
        copies = prompt[:, None].expand(R, W, Hkv, P, D)
        own = torch.stack([torch.stack([torch.stack([beam[r, beam_src[r, w, pos], :, pos] for pos in range(L)], dim=1)
                                        for w in range(W)]) for r in range(R)])  # [R, W, Hkv, L, D]
        return torch.cat((copies, own), dim=3).reshape(R * W, Hkv, P + L, D).float()
    keep = torch.cat((torch.arange(P)[None, :] < prompt_len[:, None],  # [R, P]
                      (torch.arange(L) < beam_len).expand(R, L)), dim=1)  # [R, P+L]
    mask = keep[:, None].expand(R, W, P + L).reshape(R * W, 1, 1, P + L)
    out = F.scaled_dot_product_attention(q.reshape(R * W, H, 1, D).float(), per_beam(prompt_k, beam_k),
                                         per_beam(prompt_v, beam_v), attn_mask=mask, enable_gqa=True)
    return out.reshape(R, W, H, D).to(q.dtype)


@st.composite
def attention_inputs(draw, dtype=torch.float32):
    R, W, Hkv, G = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    D, P, L = draw(st.sampled_from([4, 8, 16])), draw(st.integers(1, 20)), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))  # 4.0: peaked softmax, large exponents

    def rand(*shape):
        return (scale * torch.randn(*shape, generator=g)).to(dtype)
    prompt_len = torch.tensor(draw(st.lists(st.integers(0, P), min_size=R, max_size=R)))
    return (rand(R, W, Hkv * G, D), rand(R, Hkv, P, D), rand(R, Hkv, P, D), prompt_len,
            rand(R, W, Hkv, L, D), rand(R, W, Hkv, L, D), torch.tensor(draw(st.integers(1, L))),
            torch.randint(W, (R, W, L), generator=g))


@settings(max_examples=150, deadline=None)
@given(inputs=attention_inputs())
def test_reference_equals_dense_oracle(inputs):
    torch.testing.assert_close(staged_attention_reference(*inputs), dense_attention(*inputs), atol=1e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(inputs=attention_inputs(dtype=torch.bfloat16))
def test_reference_in_bfloat16_is_the_float32_result_rounded(inputs):
    out = staged_attention_reference(*inputs)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, dense_attention(*inputs), atol=1e-5, rtol=2**-7)  # one bfloat16 step


def fixed_inputs(seed=0):
    """R=2, W=3, H=4, Hkv=2, D=8, P=10 (request 1 empty), L=4 with 3 valid, a random lineage."""
    g = torch.Generator().manual_seed(seed)
    q, pk, pv = (torch.randn(*shape, generator=g) for shape in ((2, 3, 4, 8), (2, 2, 10, 8), (2, 2, 10, 8)))
    bk, bv = torch.randn(2, 3, 2, 4, 8, generator=g), torch.randn(2, 3, 2, 4, 8, generator=g)
    return q, pk, pv, torch.tensor([6, 0]), bk, bv, torch.tensor(3), torch.randint(3, (2, 3, 4), generator=g)


def test_padding_is_never_read():
    q, pk, pv, prompt_len, bk, bv, beam_len, lineage = fixed_inputs()
    clean = staged_attention_reference(q, pk, pv, prompt_len, bk, bv, beam_len, lineage)
    for cache in (pk, pv):
        cache[0, :, 6:], cache[1] = float("nan"), float("inf")
    for cache in (bk, bv):
        cache[..., 3:, :] = float("nan")
    out = staged_attention_reference(q, pk, pv, prompt_len, bk, bv, beam_len, lineage)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean, atol=0, rtol=0)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 12), split=st.data(), seed=st.integers(0, 2**31 - 1))
def test_merge_of_two_key_sets_is_attention_over_their_union(n, split, seed):
    g = torch.Generator().manual_seed(seed)
    scores, v = 3 * torch.randn(5, n, generator=g), torch.randn(5, n, 7, generator=g)  # 5 queries, n keys
    first = torch.tensor(split.draw(st.lists(st.booleans(), min_size=n, max_size=n)))

    def attend(keep):  # (out [5, 7], lse [5]) over the kept keys; an empty set gives lse -inf
        s = scores.masked_fill(~keep, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0)[:, None])
        return torch.einsum("qn,qnd->qd", p, v), lse
    out, lse = merge_attention_states(*attend(first), *attend(~first))
    full_out, full_lse = attend(torch.ones(n, dtype=torch.bool))
    torch.testing.assert_close(out, full_out)
    torch.testing.assert_close(lse, full_lse)


def test_merge_of_two_empty_sets_is_empty():
    o, ninf = torch.full((2, 3), float("nan")), torch.full((2,), float("-inf"))
    out, lse = merge_attention_states(o, ninf, o, ninf)
    assert torch.equal(out, torch.zeros(2, 3)) and torch.equal(lse, ninf)


def test_dispatcher_uses_the_reference_on_cpu_and_compiles_without_graph_breaks():
    inputs = fixed_inputs()
    expected = staged_attention_reference(*inputs)
    assert torch.equal(staged_attention(*inputs), expected)
    compiled = torch.compile(staged_attention, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs), expected)
    with pytest.raises(ValueError, match="backend"):
        staged_attention(*inputs, backend="flash")


def test_triton_kernel_under_the_interpreter(run_triton_interpreted):
    """tests/test_ops_triton.py's staged-attention tests, interpreted on the CPU in a fresh process."""
    run_triton_interpreted("staged_attention")
