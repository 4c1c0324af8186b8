"""The Triton kernels of xgr_toolkit.ops against their PyTorch references.

Runs natively on a CUDA GPU (``pytest -m gpu``), or on the CPU under Triton's interpreter: Triton
reads ``TRITON_INTERPRET`` when a kernel is defined, so the CPU run happens in a subprocess started
by test_staged_attention.py and test_beam_sorter.py. Anywhere else the module skips itself.
"""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not (INTERPRET or torch.cuda.is_available()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set by the subprocess tests)", allow_module_level=True)

import numpy as np  # noqa: E402
import triton.language as tl  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from xgr_toolkit.ops import MaskedBeamSorter, beam_sort_reference, staged_attention  # noqa: E402
from xgr_toolkit.ops.staged_attention import staged_attention_reference  # noqa: E402
from xgr_toolkit.ops.triton_beam_sorter import launch_beam_sort, triton_beam_sort  # noqa: E402
from xgr_toolkit.ops.triton_staged_attention import launch_staged_attention, triton_staged_attention  # noqa: E402

pytestmark = pytest.mark.gpu
DEVICE = "cpu" if INTERPRET else "cuda"
needs_cuda = pytest.mark.skipif(INTERPRET, reason="CUDA only")

if INTERPRET:
    from triton.runtime import interpreter

    _interpreted_dot = interpreter.InterpreterBuilder.create_dot

    def _widen(h):
        # bfloat16 is stored as uint16 in the interpreter, and its dot multiplies those as integers.
        if h.dtype == tl.bfloat16:
            return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return h

    def _dot_bf16_as_float(self, a, b, d, input_precision, max_num_imprecise_acc):
        return _interpreted_dot(self, _widen(a), _widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = _dot_bf16_as_float


# ---- staged attention -------------------------------------------------------------------------------

def attention_inputs(seed, R, W, Hkv, G, D, P, L, prompt_len, beam_len, dtype, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    H = Hkv * G

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)
    return (rand(R, W, H, D), rand(R, Hkv, P, D), rand(R, Hkv, P, D), torch.tensor(prompt_len, device=device),
            rand(R, W, Hkv, L, D), rand(R, W, Hkv, L, D), torch.tensor(beam_len, device=device),
            torch.randint(W, (R, W, L), generator=g).to(device))  # a random lineage


TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


@st.composite
def attention_case(draw):
    R, W, Hkv = draw(st.integers(1, 2)), draw(st.integers(1, 12)), draw(st.integers(1, 2))
    G = draw(st.sampled_from([1, 2, 3]))
    P, L = draw(st.integers(1, 40)), draw(st.integers(1, 4))
    prompt_len = draw(st.lists(st.integers(0, P), min_size=R, max_size=R))
    return dict(seed=draw(st.integers(0, 2**31 - 1)), R=R, W=W, Hkv=Hkv, G=G, D=draw(st.sampled_from([16, 32, 48])),
                P=P, L=L, prompt_len=prompt_len, beam_len=draw(st.integers(1, L)),
                dtype=draw(st.sampled_from([torch.float32, torch.bfloat16])))


@settings(max_examples=12 if INTERPRET else 100, deadline=None)
@given(case=attention_case(), block=st.sampled_from([(16, 16), (32, 16), (None, None)]))
def test_staged_attention_kernel_matches_reference(case, block):
    inputs = attention_inputs(**case)
    out = launch_staged_attention(*inputs, block_m=block[0], block_n=block[1])
    torch.testing.assert_close(out.float(), staged_attention_reference(*inputs).float(), **TOL[case["dtype"]])


def test_staged_attention_kernel_ignores_padding():
    q, pk, pv, plen, bk, bv, blen, src = attention_inputs(0, 2, 5, 2, 2, 16, 24, 4, [17, 0], 2, torch.float32)
    clean = launch_staged_attention(q, pk, pv, plen, bk, bv, blen, src, block_m=16, block_n=16)
    for cache, valid in ((pk, 17), (pv, 17), (bk, 2), (bv, 2)):
        if cache.dim() == 4:
            cache[0, :, valid:] = float("nan")
            cache[1] = float("nan")
        else:
            cache[..., valid:, :] = float("nan")
    torch.testing.assert_close(launch_staged_attention(q, pk, pv, plen, bk, bv, blen, src, block_m=16, block_n=16),
                               clean)


def test_staged_attention_kernel_reads_strided_views():
    q, pk, pv, plen, bk, bv, blen, src = attention_inputs(2, 2, 5, 2, 2, 16, 24, 3, [20, 24], 3, torch.float32)
    # q from a [R, H, W, D] buffer, caches as slices of larger buffers (other layers, more slots).
    q_strided = q.transpose(1, 2).contiguous().transpose(1, 2)
    pk_strided = torch.stack((pk, torch.zeros_like(pk)), dim=2)[:, :, 0]
    bv_strided = torch.cat((bv, bv), dim=-1)[..., :16]
    assert not (q_strided.is_contiguous() or pk_strided.is_contiguous() or bv_strided.is_contiguous())
    expected = staged_attention_reference(q, pk, pv, plen, bk, bv, blen, src)
    out = launch_staged_attention(q_strided, pk_strided, pv, plen, bk, bv_strided, blen, src, block_m=16, block_n=16)
    torch.testing.assert_close(out, expected, **TOL[torch.float32])


def test_staged_attention_custom_op_in_compiled_graph():
    inputs = attention_inputs(1, 2, 3, 2, 2, 16, 20, 3, [20, 9], 3, torch.float32)
    compiled = torch.compile(lambda *a: staged_attention(*a, backend="triton") * 2, fullgraph=True,
                             backend="aot_eager" if INTERPRET else "inductor")
    torch.testing.assert_close(compiled(*inputs), 2 * staged_attention_reference(*inputs), **TOL[torch.float32])
    torch.library.opcheck(triton_staged_attention, inputs, test_utils=("test_schema", "test_faketensor"))


@needs_cuda
@pytest.mark.parametrize("W,P", [(128, 1024), (512, 1000), (1024, 5000)])
def test_staged_attention_kernel_qwen3_shapes(W, P):
    inputs = attention_inputs(2, 2, W, 8, 2, 128, P, 3, [P, P // 2 + 1], 2, torch.bfloat16)
    torch.testing.assert_close(staged_attention(*inputs).float(), staged_attention_reference(*inputs).float(),
                               **TOL[torch.bfloat16])


# ---- beam sorter ------------------------------------------------------------------------------------

@st.composite
def sorter_case(draw, max_wi=5, max_c=40):
    R, Wi, C = draw(st.integers(1, 2)), draw(st.integers(1, max_wi)), draw(st.integers(1, max_c))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):  # few distinct values, exact in bfloat16: many ties, zeros of both signs
        values = torch.tensor([0.0, -0.0, -0.5, -1.0, -1.5, 0.5, 2.0])
        beam = values[torch.randint(len(values), (R, Wi), generator=g)]
        lp = values[torch.randint(len(values), (R, Wi, C), generator=g)]
    else:
        beam = -5 * torch.rand(R, Wi, generator=g)
        lp = torch.randn(R, Wi, C, generator=g)
    beam[torch.rand(R, Wi, generator=g) < draw(st.sampled_from([0.0, 0.3]))] = float("-inf")
    valid = torch.rand(R, Wi, C, generator=g) < draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    lp = lp.to(draw(st.sampled_from([torch.float32, torch.bfloat16])))
    return beam.to(DEVICE), lp.to(DEVICE), valid.to(DEVICE), draw(st.integers(1, Wi * C))


@settings(max_examples=12 if INTERPRET else 200, deadline=None)
@given(case=sorter_case(), tile=st.sampled_from([(16, 4), (32, 8), (None, 64)]))
def test_beam_sorter_kernel_matches_reference(case, tile):
    beam, lp, valid, k = case
    got = launch_beam_sort(beam, lp, valid, k, block_c=tile[0], sub_c=tile[1])
    for a, b in zip(got, beam_sort_reference(beam, lp, valid, k)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["one candidate a sub-chunk", "all equal"])
def test_beam_sorter_kernel_when_the_bound_is_tight(case):
    # Here the k-th largest sub-chunk maximum is the k-th largest key itself: a bound off by one skips winners.
    g = torch.Generator().manual_seed(7)
    beam, lp = torch.zeros(2, 3), -torch.rand(2, 3, 32, generator=g)
    valid = torch.ones(2, 3, 32, dtype=torch.bool)
    if case == "all equal":
        lp = torch.full_like(lp, -1.0)
    else:
        valid[:, :, 1::2] = False
    beam, lp, valid = beam.to(DEVICE), lp.to(DEVICE), valid.to(DEVICE)
    for k in (1, 5, 12, 24):
        got = launch_beam_sort(beam, lp, valid, k, block_c=16, sub_c=2)
        for a, b in zip(got, beam_sort_reference(beam, lp, valid, k)):
            assert torch.equal(a, b)


def test_beam_sorter_custom_op_in_compiled_graph():
    beam, lp, valid = torch.zeros(2, 3), -torch.rand(2, 3, 20), torch.rand(2, 3, 20) < 0.5
    beam, lp, valid = beam.to(DEVICE), lp.to(DEVICE), valid.to(DEVICE)
    sorter = MaskedBeamSorter(backend="triton")
    compiled = torch.compile(lambda *a: sorter(*a, 7), fullgraph=True,
                             backend="aot_eager" if INTERPRET else "inductor")
    for a, b in zip(compiled(beam, lp, valid), beam_sort_reference(beam, lp, valid, 7)):
        assert torch.equal(a, b)
    torch.library.opcheck(triton_beam_sort, (beam, lp, valid, 7), test_utils=("test_schema", "test_faketensor"))


@needs_cuda
@pytest.mark.parametrize("R,Wi,k,density,dtype", [
    (1, 128, 128, 1.0, torch.bfloat16), (1, 512, 512, 1.0, torch.bfloat16), (1, 512, 512, 0.015, torch.bfloat16),
    (4, 1024, 1024, 1.0, torch.bfloat16), (4, 256, 256, 0.015, torch.float32), (2, 1024, 1024, 0.0002, torch.bfloat16),
    (2, 1, 512, 0.5, torch.float32)])
def test_beam_sorter_kernel_wide(R, Wi, k, density, dtype):
    # The shapes and distributions of tools/bench_core.py: sorted beam scores, log-softmax over 8,192 codes.
    g = torch.Generator(device="cuda").manual_seed(Wi + R)
    beam = -torch.sort(8 * torch.rand(R, Wi, generator=g, device="cuda"), dim=1).values
    lp = torch.log_softmax(2 * torch.randn(R, Wi, 8192, generator=g, device="cuda"), dim=-1).to(dtype)
    valid = torch.rand(R, Wi, 8192, generator=g, device="cuda") < density
    got, expected = MaskedBeamSorter()(beam, lp, valid, k), beam_sort_reference(beam, lp, valid, k)
    wrong = [(name, int((a != b).sum())) for name, a, b in zip(("scores", "parent", "code"), got, expected)]
    assert all(n == 0 for _, n in wrong), wrong


@needs_cuda
def test_both_ops_replay_in_a_cuda_graph():
    inputs = attention_inputs(3, 1, 64, 8, 2, 128, 300, 3, [250], 2, torch.bfloat16, device="cuda")
    beam, lp = torch.zeros(1, 64, device="cuda"), torch.randn(1, 64, 8192, device="cuda").to(torch.bfloat16)
    valid = torch.rand(1, 64, 8192, device="cuda") < 0.3
    sorter = MaskedBeamSorter()

    def step():
        return staged_attention(*inputs), sorter(beam, lp, valid, 64)
    torch.cuda.synchronize()
    with torch.cuda.stream(torch.cuda.Stream()):
        step()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, selected = step()
    for t in (*inputs[:3], *inputs[4:6], lp):
        t.copy_(torch.randn_like(t))  # new values in place, as the engine writes its buffers
    inputs[3].fill_(111)
    graph.replay()
    torch.testing.assert_close(out.float(), staged_attention_reference(*inputs).float(), **TOL[torch.bfloat16])
    for a, b in zip(selected, beam_sort_reference(beam, lp, valid, 64)):
        assert torch.equal(a, b)
