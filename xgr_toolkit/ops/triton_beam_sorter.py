"""MaskedBeamSorter's Triton path: exact top-k by a pruned radix select (definition: ``beam_sort_reference``).

Every candidate score maps to a 32-bit key whose unsigned order is the float order. The k-th
largest key t is found digit by digit, 8 bits a pass, each pass a histogram of the keys that share
t's digits found so far. Early termination: the codes of each beam are cut into sub-chunks of SUB
codes, and the first launch stores every sub-chunk's best key. The k-th largest of those maxima,
T0, is a lower bound of t (each maximum is a candidate), found to 16 bits by two cheap passes over
the maxima alone. Every later launch skips, without loading it, each sub-chunk whose best key is
below that bound or below t's digits found so far: nothing in it can reach the k-th best. The bound
is the sub-chunk's own maximum, so nothing is assumed about the sign of the log-probabilities.
Then one launch counts, per beam, the keys above t and those equal to it, and the last writes the
winners straight into their output slots, in flat order (ties at t to the lowest flat indices).
docs/beam_sorter.md states the algorithm and why it is exact.

Eight launches and a memset, grid (Wi, R), one program a beam, tiles of [CH, SUB] codes; no host
sync, no data-dependent shape. The whole is the custom op ``xgr_toolkit::beam_sort`` (usable
inside ``torch.compile(fullgraph=True)``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["launch_beam_sort", "triton_beam_sort"]

PASSES: tl.constexpr = tl.constexpr(4)  # 8-bit digits of a 32-bit key
BINS: tl.constexpr = tl.constexpr(256)
NEG_INF_KEY: tl.constexpr = tl.constexpr(0x7FFFFF)  # key of -inf; lanes past C get key 0, below it
# Histogram rows of a request: 0-1 the top two digits of T0 (k-th largest sub-chunk maximum), 2-5 those of t.
T0_ROWS: tl.constexpr = tl.constexpr(2)


@triton.jit
def _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, c_ok, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c):
    """Scores (float32; -inf invalid, zero unsigned) of candidates (r, b, c) and their int64 keys, shaped as c."""
    beam = tl.load(bs_ptr + r * s_bs_r + b * s_bs_b)
    lp = tl.load(lp_ptr + r * s_lp_r + b * s_lp_b + c * s_lp_c, mask=c_ok, other=0.0).to(tl.float32)
    ok = tl.load(ok_ptr + r * s_ok_r + b * s_ok_b + c * s_ok_c, mask=c_ok, other=0) != 0
    s = beam + lp
    s = tl.where(ok, tl.where(s == 0.0, 0.0, s), float("-inf"))
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64) + 2147483648  # unsigned float order
    return s, tl.where(c_ok, key, 0)


@triton.jit
def _narrow(hist_ptr, k, DONE: tl.constexpr):
    """After DONE passes: lo, the least key whose top 8 * DONE bits match the k-th largest key's, and that
    key's rank among the keys sharing those bits (after 4 passes, lo is the k-th largest key itself).

    hist_ptr: [DONE, BINS] int32, row p the histogram of digit p of the keys matching the digits before.
    """
    bins = tl.arange(0, BINS)
    lo = tl.full([], 0, tl.int64)
    rank = k
    for p in tl.static_range(DONE):
        h = tl.load(hist_ptr + p * BINS + bins)
        at_or_above = tl.cumsum(h, 0, reverse=True)  # keys with digit >= d
        d = tl.max(tl.where(at_or_above >= rank, bins, -1), 0)
        rank -= tl.sum(tl.where(bins > d, h, 0), 0)
        lo += d.to(tl.int64) << (24 - 8 * p)
    return lo, rank


@triton.jit
def _tile(j, CH: tl.constexpr, SUB: tl.constexpr):
    """Tile j of a beam: sub-chunk indices [CH] and their codes [CH, SUB] (row-major = flat order)."""
    rows = j * CH + tl.arange(0, CH)
    return rows, rows[:, None] * SUB + tl.arange(0, SUB)[None, :]


@triton.jit
def _maxima_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, Wi, C, NS, NT, k,
                   s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c,
                   T0: tl.constexpr, CH: tl.constexpr, SUB: tl.constexpr):
    """The one full read: every sub-chunk's best key, and the histogram of their top digits."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    smax_b = smax_ptr + (r * Wi + b) * NS
    counts = tl.zeros([BINS], tl.int32)
    for j in range(0, NT):
        rows, c = _tile(j, CH, SUB)
        key = _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, c < C, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c,
                    s_ok_r, s_ok_b, s_ok_c)[1]
        best = tl.max(key, 1)  # [CH]
        tl.store(smax_b + rows, best, mask=rows < NS)
        if T0:
            counts += tl.histogram((best >> 24).to(tl.int32), BINS, mask=rows < NS)
    if T0:
        tl.atomic_add(hist_ptr + r * (T0_ROWS + PASSES) * BINS + tl.arange(0, BINS), counts, mask=counts > 0,
                      sem="relaxed")


@triton.jit
def _maxima_pass_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, Wi, C, NS, NT, k,
                        s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c, NS_BLOCK: tl.constexpr):
    """Second digit of T0: histogram of the maxima whose top digit is T0's."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    hist_r = hist_ptr + r * (T0_ROWS + PASSES) * BINS
    lo = _narrow(hist_r, k, 1)[0]
    s = tl.arange(0, NS_BLOCK)
    best = tl.load(smax_ptr + (r * Wi + b) * NS + s, mask=s < NS, other=0)
    inside = (s < NS) & ((best >> 24) == (lo >> 24))
    counts = tl.histogram(((best >> 16) & 255).to(tl.int32), BINS, mask=inside)
    tl.atomic_add(hist_r + BINS + tl.arange(0, BINS), counts, mask=counts > 0, sem="relaxed")


@triton.jit
def _radix_pass_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, Wi, C, NS, NT, k,
                       s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c,
                       PASS: tl.constexpr, T0: tl.constexpr, CH: tl.constexpr, SUB: tl.constexpr):
    """Digit PASS of t: histogram of the keys matching t's digits so far, in sub-chunks that can reach t."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    hist_r = hist_ptr + r * (T0_ROWS + PASSES) * BINS
    lo = _narrow(hist_r + T0_ROWS * BINS, k, PASS)[0]
    bound = lo
    if T0:
        bound = tl.maximum(lo, _narrow(hist_r, k, 2)[0])  # T0's top 16 bits, T0 <= t
    smax_b = smax_ptr + (r * Wi + b) * NS
    counts = tl.zeros([BINS], tl.int32)
    for j in range(0, NT):
        rows, c = _tile(j, CH, SUB)
        live = tl.load(smax_b + rows, mask=rows < NS, other=0) >= bound  # [CH] can hold a key >= t
        if tl.max(live.to(tl.int32), 0) > 0:
            c_ok = (c < C) & live[:, None]
            key = _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, c_ok, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c,
                        s_ok_r, s_ok_b, s_ok_c)[1]
            inside = c_ok & ((key >> (32 - 8 * PASS)) == (lo >> (32 - 8 * PASS)))  # t's digits so far
            digit = ((key >> (24 - 8 * PASS)) & 255).to(tl.int32)
            counts += tl.histogram(tl.reshape(digit, [CH * SUB]), BINS,
                                   mask=tl.reshape(inside, [CH * SUB]))
    tl.atomic_add(hist_r + (T0_ROWS + PASS) * BINS + tl.arange(0, BINS), counts, mask=counts > 0, sem="relaxed")


@triton.jit
def _count_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, n_gt_ptr, n_eq_ptr, Wi, C, NS, NT, k,
                  s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c, CH: tl.constexpr, SUB: tl.constexpr):
    """Per beam: candidates above the k-th key t, and (t finite only) those equal to it."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t = _narrow(hist_ptr + (r * (T0_ROWS + PASSES) + T0_ROWS) * BINS, k, PASSES)[0]
    t_finite = t > NEG_INF_KEY
    smax_b = smax_ptr + (r * Wi + b) * NS
    n_gt = tl.full([], 0, tl.int32)
    n_eq = tl.full([], 0, tl.int32)
    for j in range(0, NT):
        rows, c = _tile(j, CH, SUB)
        best = tl.load(smax_b + rows, mask=rows < NS, other=0)
        live = (best >= t) & (best > NEG_INF_KEY)  # [CH] holds a key > t, or = t finite
        if tl.max(live.to(tl.int32), 0) > 0:
            key = _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, (c < C) & live[:, None], s_bs_r, s_bs_b, s_lp_r, s_lp_b,
                        s_lp_c, s_ok_r, s_ok_b, s_ok_c)[1]
            n_gt += tl.sum(tl.sum((key > t).to(tl.int32), 1), 0)
            n_eq += tl.sum(tl.sum(((key == t) & t_finite).to(tl.int32), 1), 0)
    tl.store(n_gt_ptr + r * Wi + b, n_gt)
    tl.store(n_eq_ptr + r * Wi + b, n_eq)


@triton.jit
def _write_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, n_gt_ptr, n_eq_ptr, score_ptr, parent_ptr, code_ptr,
                  Wi, C, NS, NT, k, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c,
                  WI_BLOCK: tl.constexpr, CH: tl.constexpr, SUB: tl.constexpr, BLOCK_K: tl.constexpr):
    """Beam b's winners into consecutive slots of request r, in flat order; program 0 writes the padding."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t, need = _narrow(hist_ptr + (r * (T0_ROWS + PASSES) + T0_ROWS) * BINS, k, PASSES)  # need: ties that win
    t_finite = t > NEG_INF_KEY
    beams = tl.arange(0, WI_BLOCK)
    before = beams < b
    tie = tl.sum(tl.load(n_eq_ptr + r * Wi + beams, mask=before, other=0), 0)  # global tie rank so far
    slot0 = tl.sum(tl.load(n_gt_ptr + r * Wi + beams, mask=before, other=0), 0) + tl.minimum(tie, need)
    out = r * k
    smax_b = smax_ptr + (r * Wi + b) * NS
    for j in range(0, NT):
        rows, c = _tile(j, CH, SUB)
        best = tl.load(smax_b + rows, mask=rows < NS, other=0)
        live = (best >= t) & (best > NEG_INF_KEY)
        if tl.max(live.to(tl.int32), 0) > 0:
            s, key = _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, (c < C) & live[:, None], s_bs_r, s_bs_b, s_lp_r, s_lp_b,
                           s_lp_c, s_ok_r, s_ok_b, s_ok_c)
            # Exclusive running counts in flat order over the [CH, SUB] tile: rows before, then lanes before.
            eq = ((key == t) & t_finite).to(tl.int32)
            eq_rows = tl.sum(eq, 1)
            tie_rank = tie + (tl.cumsum(eq_rows, 0) - eq_rows)[:, None] + tl.cumsum(eq, 1) - eq
            take = ((key > t) | ((eq != 0) & (tie_rank < need))).to(tl.int32)
            take_rows = tl.sum(take, 1)
            slot = slot0 + (tl.cumsum(take_rows, 0) - take_rows)[:, None] + tl.cumsum(take, 1) - take
            put = (take != 0) & (slot < k)  # slot < k holds for valid inputs; a NaN must not write out of bounds
            tl.store(score_ptr + out + slot, s, mask=put)
            tl.store(parent_ptr + out + slot, (b + tl.zeros_like(slot)).to(tl.int64), mask=put)
            tl.store(code_ptr + out + slot, c.to(tl.int64), mask=put)
            slot0 += tl.sum(take_rows, 0)
            tie += tl.sum(eq_rows, 0)
    if b == 0:
        filled = tl.where(t_finite, k, k - need)  # t = -inf: only the finite candidates
        for start in range(0, k, BLOCK_K):
            i = start + tl.arange(0, BLOCK_K)
            pad = (i >= filled) & (i < k)
            tl.store(score_ptr + out + i, tl.full([BLOCK_K], float("-inf"), tl.float32), mask=pad)
            tl.store(parent_ptr + out + i, tl.zeros([BLOCK_K], tl.int64) + (Wi - 1), mask=pad)
            tl.store(code_ptr + out + i, tl.zeros([BLOCK_K], tl.int64), mask=pad)


def launch_beam_sort(beam_scores: torch.Tensor, log_probs: torch.Tensor, valid: torch.Tensor, k: int,
                     block_c: int | None = None, sub_c: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the kernels (arguments as in ``MaskedBeamSorter.forward``).

    block_c codes a tile (default up to 2,048) in sub-chunks of sub_c codes; small values are for tests.
    """
    R, Wi, C = log_probs.shape
    block_c = block_c or min(2048, max(32, triton.next_power_of_2(C)))
    sub_c = min(sub_c, block_c // 2)
    ns, nt = triton.cdiv(C, sub_c), triton.cdiv(C, block_c)
    t0 = Wi * ns >= k  # the bound needs k sub-chunk maxima
    device = log_probs.device
    hist = torch.zeros(R, T0_ROWS.value + PASSES.value, BINS.value, dtype=torch.int32, device=device)
    smax = torch.empty(R, Wi, ns, dtype=torch.int64, device=device)  # best key of each sub-chunk
    n_gt = torch.empty(R, Wi, dtype=torch.int32, device=device)
    n_eq = torch.empty(R, Wi, dtype=torch.int32, device=device)
    scores = torch.empty(R, k, dtype=torch.float32, device=device)
    parent = torch.empty(R, k, dtype=torch.int64, device=device)
    code = torch.empty(R, k, dtype=torch.int64, device=device)
    common = (beam_scores, log_probs, valid, smax, hist, Wi, C, ns, nt, k,
              *beam_scores.stride(), *log_probs.stride(), *valid.stride())
    tile = dict(CH=block_c // sub_c, SUB=sub_c, num_warps=8 if block_c >= 2048 else 4)
    grid = (Wi, R)
    _maxima_kernel[grid](*common, T0=t0, **tile)
    if t0:
        _maxima_pass_kernel[grid](*common, NS_BLOCK=triton.next_power_of_2(ns), num_warps=4)
    for p in range(PASSES.value):
        _radix_pass_kernel[grid](*common, PASS=p, T0=t0, **tile)
    _count_kernel[grid](*common[:5], n_gt, n_eq, *common[5:], **tile)
    _write_kernel[grid](*common[:5], n_gt, n_eq, scores, parent, code, *common[5:],
                        WI_BLOCK=triton.next_power_of_2(Wi), BLOCK_K=1024, **tile)
    return scores, parent, code


@torch.library.custom_op("xgr_toolkit::beam_sort", mutates_args=())
def triton_beam_sort(beam_scores: torch.Tensor, log_probs: torch.Tensor, valid: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``MaskedBeamSorter.forward`` on the Triton path: (scores [R, k], parent [R, k], code [R, k])."""
    return launch_beam_sort(beam_scores, log_probs, valid, k)


@triton_beam_sort.register_fake
def _(beam_scores, log_probs, valid, k):
    R = log_probs.shape[0]
    return (log_probs.new_empty(R, k, dtype=torch.float32), log_probs.new_empty(R, k, dtype=torch.int64),
            log_probs.new_empty(R, k, dtype=torch.int64))
