"""Staged attention as one fused Triton kernel (definition: ``staged_attention_reference``).

One program owns BLOCK_M query rows of one (request r, kv head) pair. A row is a (beam w, group
head g) pair, row = w * G + g, so all W beams x G heads that read kv head ``hkv`` form one query
matrix [W*G, D]. Two stages continue one online softmax (base 2), so the log-sum-exp merge happens
in registers and only the final output is written:

* beam stage: for each of the ``beam_len`` positions, the keys of the BW beams that the block's
  rows belong to (each read from the slot ``beam_src`` names) form one [BW, D] tile; a matrix
  product gives [BM, BW] scores of which each row keeps only its own beam's column. Some products
  are wasted (BW columns for 1), but the tile stays in the tensor-core layout of the prompt loop: a
  per-row gather would keep several more [BM, D] float32 tiles live and spill registers.
* shared stage: a flash-attention pass of the block's rows over r's prompt keys, a loop bounded by
  ``prompt_len[r]`` (read from the device): each prompt tile is read once for all beams of the
  block, never copied per beam.

The launch is wrapped as the custom op ``xgr_toolkit::staged_attention`` with a fake
implementation, so it can sit inside ``torch.compile(fullgraph=True)`` and CUDA graphs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["launch_staged_attention", "triton_staged_attention"]

_LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(q, kt, v, keep, m_i, l_i, acc, qk_scale, IEEE: tl.constexpr):
    """One online-softmax step over a key tile: q [BM, BD], kt [BD, BN], v [BN, BD], keep [BM, BN] bool.

    Every row must keep at least one key over the whole pass (its first step may keep none only if
    m_i is already finite); m_i = -inf before the first key makes alpha = 0.
    """
    if IEEE:
        s = tl.dot(q, kt, input_precision="ieee")
    else:
        s = tl.dot(q, kt)
    s = tl.where(keep, s * qk_scale, float("-inf"))  # [BM, BN] log2-scaled
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    acc = acc * alpha[:, None]
    if IEEE:
        acc = tl.dot(p, v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return m_new, l_i * alpha + tl.sum(p, 1), acc


@triton.jit
def _staged_attention_kernel(
    q_ptr, pk_ptr, pv_ptr, plen_ptr, bk_ptr, bv_ptr, blen_ptr, src_ptr, out_ptr,
    W, P, L, qk_scale,
    sq_r, sq_w, sq_h, sq_d,
    spk_r, spk_h, spk_p, spk_d,
    spv_r, spv_h, spv_p, spv_d,
    sbk_r, sbk_w, sbk_h, sbk_l, sbk_d,
    sbv_r, sbv_w, sbv_h, sbv_l, sbv_d,
    ssrc_r, ssrc_w, ssrc_l,
    so_r, so_w, so_h, so_d,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m, hkv, r = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r64 = r.to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] row = w * G + g
    w, head = rows // G, hkv * G + rows % G
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    q_offs = r64 * sq_r + w[:, None] * sq_w + head[:, None] * sq_h + d[None, :] * sq_d  # [BM, BD]
    q = tl.load(q_ptr + q_offs, mask=(w < W)[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Beam stage first: beam_len >= 1 keeps every row's running max finite from here on.
    wb = (pid_m * BLOCK_M) // G + tl.arange(0, BLOCK_W)  # [BW] the block's beams
    wb_ok = wb < W
    blen = tl.minimum(tl.load(blen_ptr), L)  # as the reference: positions past L do not exist
    for pos in range(0, blen):
        src = tl.load(src_ptr + r64 * ssrc_r + wb * ssrc_w + pos * ssrc_l, mask=wb_ok, other=0)  # [BW] slots
        kt = tl.load(bk_ptr + r64 * sbk_r + hkv * sbk_h + pos * sbk_l + src[None, :] * sbk_w + d[:, None] * sbk_d,
                     mask=wb_ok[None, :] & d_ok[:, None], other=0.0)  # [BD, BW]
        v = tl.load(bv_ptr + r64 * sbv_r + hkv * sbv_h + pos * sbv_l + src[:, None] * sbv_w + d[None, :] * sbv_d,
                    mask=wb_ok[:, None] & d_ok[None, :], other=0.0)  # [BW, BD]
        own = w[:, None] == wb[None, :]  # [BM, BW] each row keeps its own beam's key
        m_i, l_i, acc = _attend_tile(q, kt, v, own, m_i, l_i, acc, qk_scale, IEEE)

    # Shared stage: the block's rows against the request's valid prompt keys.
    plen = tl.minimum(tl.load(plen_ptr + r), P)
    pk_base = pk_ptr + r64 * spk_r + hkv * spk_h
    pv_base = pv_ptr + r64 * spv_r + hkv * spv_h
    for start in range(0, plen, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < plen
        kt = tl.load(pk_base + n[None, :] * spk_p + d[:, None] * spk_d,
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # [BD, BN]
        v = tl.load(pv_base + n[:, None] * spv_p + d[None, :] * spv_d,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # [BN, BD]
        m_i, l_i, acc = _attend_tile(q, kt, v, n_ok[None, :], m_i, l_i, acc, qk_scale, IEEE)

    out = acc / l_i[:, None]  # l_i >= 1: the running max's own key contributes 1
    tl.store(out_ptr + r64 * so_r + w[:, None] * so_w + head[:, None] * so_h + d[None, :] * so_d,
             out.to(out_ptr.dtype.element_ty), mask=(w < W)[:, None] & d_ok[None, :])


def launch_staged_attention(q: torch.Tensor, prompt_k: torch.Tensor, prompt_v: torch.Tensor,
                            prompt_len: torch.Tensor, beam_k: torch.Tensor, beam_v: torch.Tensor,
                            beam_len: torch.Tensor, beam_src: torch.Tensor, block_m: int | None = None,
                            block_n: int | None = None) -> torch.Tensor:
    """Launch the kernel (arguments as in ``staged_attention``); block sizes are for tests.

    Tiles (compiled for sm_90, checked free of register spills): bf16/fp16 64 x 64 with 4 warps;
    float32 (exact "ieee" products, for tests) 32 x 32.
    """
    R, W, H, D = q.shape
    Hkv = prompt_k.shape[1]
    if H % Hkv:
        raise ValueError(f"heads H={H} must be a multiple of kv heads Hkv={Hkv}")
    G = H // Hkv
    ieee = q.dtype == torch.float32
    block_m = block_m or (32 if ieee else 64)
    block_n = block_n or (32 if ieee else 64)
    block_beams = block_m // G if block_m % G == 0 else block_m // G + 2  # beams a row block touches
    out = torch.empty_like(q)
    _staged_attention_kernel[(triton.cdiv(W * G, block_m), Hkv, R)](
        q, prompt_k, prompt_v, prompt_len, beam_k, beam_v, beam_len, beam_src, out,
        W, prompt_k.shape[2], beam_k.shape[3], _LOG2E / math.sqrt(D),
        *q.stride(), *prompt_k.stride(), *prompt_v.stride(), *beam_k.stride(), *beam_v.stride(), *beam_src.stride(),
        *out.stride(),
        G=G, D=D, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_W=max(16, triton.next_power_of_2(block_beams)),
        BLOCK_D=max(16, triton.next_power_of_2(D)), IEEE=ieee, num_warps=4, num_stages=2 if ieee else 3,
    )
    return out


@torch.library.custom_op("xgr_toolkit::staged_attention", mutates_args=())
def triton_staged_attention(q: torch.Tensor, prompt_k: torch.Tensor, prompt_v: torch.Tensor,
                            prompt_len: torch.Tensor, beam_k: torch.Tensor, beam_v: torch.Tensor,
                            beam_len: torch.Tensor, beam_src: torch.Tensor) -> torch.Tensor:
    """Fused staged attention (see ``staged_attention``): [R, W, H, D] in q's dtype."""
    return launch_staged_attention(q, prompt_k, prompt_v, prompt_len, beam_k, beam_v, beam_len, beam_src)


@triton_staged_attention.register_fake
def _(q, prompt_k, prompt_v, prompt_len, beam_k, beam_v, beam_len, beam_src):
    return torch.empty_like(q)
