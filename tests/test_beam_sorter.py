"""MaskedBeamSorter against a full stable sort of every candidate."""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xgr_toolkit.ops import MaskedBeamSorter, beam_sort_reference

NEG_INF = float("-inf")


def full_sort(beam_scores, log_probs, valid, k):
    """Sort all Wi*C candidates by (score desc, flat index asc) in Python, keep k finite, reorder by index."""
    R, Wi, C = log_probs.shape
    scores = (beam_scores[:, :, None] + log_probs.float()).masked_fill(~valid, NEG_INF).view(R, -1).tolist()
    out_scores, out_flat = [], []
    for row in scores:
        best = sorted(range(Wi * C), key=lambda i: (-row[i], i))[:k]
        kept = sorted(i for i in best if row[i] > NEG_INF)
        out_scores.append([row[i] for i in kept] + [NEG_INF] * (k - len(kept)))
        out_flat.append(kept + [(Wi - 1) * C] * (k - len(kept)))
    flat = torch.tensor(out_flat, dtype=torch.int64).view(R, k)
    return torch.tensor(out_scores, dtype=torch.float32).view(R, k), flat // C, flat % C


@st.composite
def candidates(draw, max_wi=8, max_c=24):
    """(beam_scores [R, Wi], log_probs [R, Wi, C], valid [R, Wi, C], k): ties, -inf, dead beams, masks."""
    R, Wi, C = draw(st.integers(1, 3)), draw(st.integers(1, max_wi)), draw(st.integers(1, max_c))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):  # few distinct values, exact in bfloat16: many exact ties, zeros of both signs
        values = torch.tensor([0.0, -0.0, -0.25, -1.0, -1.25, 0.75, 3.0])
        beam_scores = values[torch.randint(len(values), (R, Wi), generator=g)]
        log_probs = values[torch.randint(len(values), (R, Wi, C), generator=g)]
    else:  # log-probabilities of any sign
        beam_scores = -10 * torch.rand(R, Wi, generator=g)
        log_probs = draw(st.sampled_from([1.0, 30.0])) * torch.randn(R, Wi, C, generator=g)
    beam_scores[torch.rand(R, Wi, generator=g) < draw(st.sampled_from([0.0, 0.5, 1.0]))] = NEG_INF
    valid = torch.rand(R, Wi, C, generator=g) < draw(st.sampled_from([0.0, 0.1, 0.6, 1.0]))
    log_probs = log_probs.to(draw(st.sampled_from([torch.float32, torch.bfloat16])))
    return beam_scores, log_probs, valid, draw(st.integers(1, Wi * C))


@settings(max_examples=300, deadline=None)
@given(case=candidates())
def test_reference_equals_full_stable_sort(case):
    got, expected = beam_sort_reference(*case), full_sort(*case)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@settings(max_examples=100, deadline=None)
@given(case=candidates())
def test_output_contract(case):
    beam_scores, log_probs, valid, k = case
    scores, parent, code = MaskedBeamSorter()(*case)
    R, Wi, C = log_probs.shape
    assert scores.shape == parent.shape == code.shape == (R, k)
    assert scores.dtype == torch.float32 and parent.dtype == code.dtype == torch.int64
    finite = torch.isfinite(scores)
    n_finite = (valid & (beam_scores[:, :, None] > NEG_INF)).flatten(1).sum(1, keepdim=True)
    assert torch.equal(finite.sum(1, keepdim=True), n_finite.clamp(max=k))
    assert (finite[:, :-1] >= finite[:, 1:]).all()  # padding only at the end
    assert (parent[:, 1:] >= parent[:, :-1]).all()  # the new beams stay in SID order
    flat = parent * C + code
    assert ((flat[:, 1:] > flat[:, :-1]) | ~finite[:, 1:]).all()  # distinct, ascending
    assert torch.equal(flat[~finite], torch.full_like(flat[~finite], (Wi - 1) * C))
    assert valid.flatten(1).gather(1, flat)[finite].all()


def test_everything_masked_gives_only_padding():
    nothing = torch.zeros(2, 3, 5, dtype=torch.bool)
    scores, parent, code = MaskedBeamSorter()(torch.zeros(2, 3), torch.zeros(2, 3, 5), nothing, 4)
    assert torch.equal(scores, torch.full((2, 4), NEG_INF))
    assert torch.equal(parent, torch.full((2, 4), 2)) and torch.equal(code, torch.zeros(2, 4, dtype=torch.int64))


def test_ties_go_to_the_lowest_flat_index():
    beam_scores = torch.tensor([[-1.0, 0.0]])
    log_probs = torch.tensor([[[0.0, -1.0, 0.0], [-1.0, -1.0, -2.0]]])  # -1 appears at flat 0, 2, 3, 4
    scores, parent, code = MaskedBeamSorter()(beam_scores, log_probs, torch.ones(1, 2, 3, dtype=torch.bool), 3)
    assert scores.tolist() == [[-1.0, -1.0, -1.0]] and (parent * 3 + code).tolist() == [[0, 2, 3]]


def test_module_has_no_parameters_rejects_bad_k_and_compiles_without_graph_breaks():
    sorter = MaskedBeamSorter()
    assert not list(sorter.parameters()) and not list(sorter.buffers())
    beam_scores, log_probs, valid = torch.zeros(1, 2), torch.randn(1, 2, 3), torch.ones(1, 2, 3, dtype=torch.bool)
    for k in (0, 7):
        with pytest.raises(ValueError, match="k must be"):
            sorter(beam_scores, log_probs, valid, k)
    with pytest.raises(ValueError, match="backend"):
        MaskedBeamSorter(backend="cub")
    compiled = torch.compile(lambda *a: sorter(*a, 4), fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(beam_scores, log_probs, valid), full_sort(beam_scores, log_probs, valid, 4)):
        assert torch.equal(a, b)


def test_triton_kernel_under_the_interpreter(run_triton_interpreted):
    """tests/test_ops_triton.py's sorter tests, interpreted on the CPU in a fresh process."""
    run_triton_interpreted("beam_sorter")
