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

Eight launches and a memset, grid (Wi, R), one program a beam; no host sync, no data-dependent
shape. Each launch takes one digit step from the state that the previous launch's program 0 left
(``_step``), so no program replays the whole chain. Histograms and running counts are taken over
1-D tiles loaded straight from memory (the layouts that Triton's own tests cover on the GPU). The
whole is the custom op ``xgr_toolkit::beam_sort`` (usable inside ``torch.compile(fullgraph=True)``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["launch_beam_sort", "triton_beam_sort"]

BINS: tl.constexpr = tl.constexpr(256)  # 8-bit digits of a 32-bit key, 4 passes
NEG_INF_KEY: tl.constexpr = tl.constexpr(0x7FFFFF)  # key of -inf; lanes past C get key 0, below it
HIST_ROWS: tl.constexpr = tl.constexpr(6)  # a request's histograms: 0-1 digits of T0, 2-5 digits of t
# A request's state (int64): T0's top digit and rank, the bound (T0's top 16 bits), then t's
# top 8p bits and rank after p = 1..4 passes (after 4: t itself and the ties at t that win).
STATE: tl.constexpr = tl.constexpr(16)
S_T0_LO: tl.constexpr = tl.constexpr(0)
S_T0_RANK: tl.constexpr = tl.constexpr(1)
S_BOUND: tl.constexpr = tl.constexpr(2)
S_T: tl.constexpr = tl.constexpr(3)  # lo after pass p at S_T + 2 * (p - 1), its rank next to it


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
def _step(hist_ptr, lo, rank, SHIFT: tl.constexpr):
    """One digit of a k-th largest key.

    hist_ptr: [BINS] int32 counts of digit ``bits SHIFT..SHIFT+7`` over the keys whose higher bits
    are lo's; rank: the target's rank (1 = largest) among those keys. Returns lo with the target's
    digit set, and its rank among the keys that share that digit too.
    """
    bins = tl.arange(0, BINS)
    h = tl.load(hist_ptr + bins)
    at_or_above = tl.cumsum(h, 0, reverse=True)  # keys with digit >= d
    d = tl.max(tl.where(at_or_above >= rank, bins, -1), 0)
    return lo + (d.to(tl.int64) << SHIFT), rank - tl.sum(tl.where(bins > d, h, 0), 0).to(tl.int64)


@triton.jit
def _state_after(state_r, hist_r, k, b, PASS: tl.constexpr):
    """t's top 8 * PASS bits (zeros below) and rank among the keys sharing them; program 0 records them."""
    lo = tl.full([], 0, tl.int64)
    rank = tl.full([], 0, tl.int64) + k
    if PASS >= 2:
        lo = tl.load(state_r + S_T + 2 * (PASS - 2))
        rank = tl.load(state_r + S_T + 2 * (PASS - 2) + 1)
    if PASS >= 1:
        lo, rank = _step(hist_r + (2 + PASS - 1) * BINS, lo, rank, 32 - 8 * PASS)
        tl.store(state_r + S_T + 2 * (PASS - 1), lo, mask=b == 0)
        tl.store(state_r + S_T + 2 * (PASS - 1) + 1, rank, mask=b == 0)
    return lo, rank


@triton.jit
def _maxima_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, state_ptr, Wi, C, NS, NT, k,
                   s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c,
                   T0: tl.constexpr, CH: tl.constexpr, SUB: tl.constexpr, NS_BLOCK: tl.constexpr):
    """The one full read: the best key of every sub-chunk, smax [R, Wi, NS]; histogram of their top digit."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    smax_b = smax_ptr + (r * Wi + b) * NS
    for j in range(0, NT):
        rows = j * CH + tl.arange(0, CH)
        c = rows[:, None] * SUB + tl.arange(0, SUB)[None, :]  # [CH, SUB]
        key = _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, c < C, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c,
                    s_ok_r, s_ok_b, s_ok_c)[1]
        tl.store(smax_b + rows, tl.max(key, 1), mask=rows < NS)
    if T0:
        # Histogram the maxima read back as a plain 1-D tile, not the row maxima above (a reduction
        # layout, each value held by several threads): a version that histogrammed those was inexact
        # on an H200 with Triton 3.6. The barrier makes this program's stores visible to its threads.
        tl.debug_barrier()
        _maxima_histogram(smax_b, hist_ptr + r * HIST_ROWS * BINS, tl.full([], 0, tl.int64), NS, 0, NS_BLOCK)


@triton.jit
def _maxima_histogram(smax_b, hist_r, lo, NS, PASS: tl.constexpr, NS_BLOCK: tl.constexpr):
    """Histogram of digit PASS of the beam's maxima whose higher digits are lo's, added into row PASS."""
    s = tl.arange(0, NS_BLOCK)
    best = tl.load(smax_b + s, mask=s < NS, other=0, cache_modifier=".cg")
    inside = (s < NS) & ((best >> (32 - 8 * PASS)) == (lo >> (32 - 8 * PASS)))
    counts = tl.histogram(((best >> (24 - 8 * PASS)) & 255).to(tl.int32), BINS, mask=inside)
    tl.atomic_add(hist_r + PASS * BINS + tl.arange(0, BINS), counts, mask=counts > 0, sem="relaxed")


@triton.jit
def _maxima_pass_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, state_ptr, Wi, C, NS, NT, k,
                        s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c, NS_BLOCK: tl.constexpr):
    """Second digit of T0: histogram of the maxima whose top digit is T0's."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    hist_r = hist_ptr + r * HIST_ROWS * BINS
    lo, rank = _step(hist_r, tl.full([], 0, tl.int64), tl.full([], 0, tl.int64) + k, 24)
    tl.store(state_ptr + r * STATE + S_T0_LO, lo, mask=b == 0)
    tl.store(state_ptr + r * STATE + S_T0_RANK, rank, mask=b == 0)
    _maxima_histogram(smax_ptr + (r * Wi + b) * NS, hist_r, lo, NS, 1, NS_BLOCK)


@triton.jit
def _radix_pass_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, state_ptr, Wi, C, NS, NT, k,
                       s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c,
                       PASS: tl.constexpr, T0: tl.constexpr, CH: tl.constexpr, SUB: tl.constexpr):
    """Digit PASS of t: histogram of the keys sharing t's digits so far, in sub-chunks that can reach t."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    hist_r = hist_ptr + r * HIST_ROWS * BINS
    state_r = state_ptr + r * STATE
    lo = _state_after(state_r, hist_r, k, b, PASS)[0]
    bound = lo
    if T0:
        if PASS == 0:
            t0 = _step(hist_r + BINS, tl.load(state_r + S_T0_LO), tl.load(state_r + S_T0_RANK), 16)[0]
            tl.store(state_r + S_BOUND, t0, mask=b == 0)
        else:
            t0 = tl.load(state_r + S_BOUND)
        bound = tl.maximum(lo, t0)  # T0's top 16 bits <= T0 <= t
    smax_b = smax_ptr + (r * Wi + b) * NS
    counts = tl.zeros([BINS], tl.int32)
    for j in range(0, NT):
        rows = j * CH + tl.arange(0, CH)
        if tl.max(tl.load(smax_b + rows, mask=rows < NS, other=0), 0) >= bound:
            c = j * CH * SUB + tl.arange(0, CH * SUB)
            live = (c < C) & (tl.load(smax_b + c // SUB, mask=c < C, other=0) >= bound)  # its sub-chunk can reach t
            key = _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, live, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c,
                        s_ok_r, s_ok_b, s_ok_c)[1]
            inside = live & ((key >> (32 - 8 * PASS)) == (lo >> (32 - 8 * PASS)))  # t's digits so far
            counts += tl.histogram(((key >> (24 - 8 * PASS)) & 255).to(tl.int32), BINS, mask=inside)
    tl.atomic_add(hist_r + (2 + PASS) * BINS + tl.arange(0, BINS), counts, mask=counts > 0, sem="relaxed")


@triton.jit
def _count_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, state_ptr, n_gt_ptr, n_eq_ptr, Wi, C, NS, NT, k,
                  s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c, CH: tl.constexpr, SUB: tl.constexpr):
    """Per beam: candidates above the k-th key t, and (t finite only) those equal to it."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t = _state_after(state_ptr + r * STATE, hist_ptr + r * HIST_ROWS * BINS, k, b, 4)[0]
    t_finite = t > NEG_INF_KEY
    smax_b = smax_ptr + (r * Wi + b) * NS
    n_gt = tl.full([], 0, tl.int32)
    n_eq = tl.full([], 0, tl.int32)
    for j in range(0, NT):
        rows = j * CH + tl.arange(0, CH)
        best = tl.max(tl.load(smax_b + rows, mask=rows < NS, other=0), 0)
        if (best >= t) & (best > NEG_INF_KEY):  # the tile holds a key > t, or = t finite
            c = j * CH * SUB + tl.arange(0, CH * SUB)
            sub_best = tl.load(smax_b + c // SUB, mask=c < C, other=0)
            live = (c < C) & (sub_best >= t) & (sub_best > NEG_INF_KEY)
            key = _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, live, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c,
                        s_ok_r, s_ok_b, s_ok_c)[1]
            n_gt += tl.sum((key > t).to(tl.int32), 0)
            n_eq += tl.sum(((key == t) & t_finite).to(tl.int32), 0)
    tl.store(n_gt_ptr + r * Wi + b, n_gt)
    tl.store(n_eq_ptr + r * Wi + b, n_eq)


@triton.jit
def _write_kernel(bs_ptr, lp_ptr, ok_ptr, smax_ptr, hist_ptr, state_ptr, n_gt_ptr, n_eq_ptr, score_ptr, parent_ptr,
                  code_ptr, Wi, C, NS, NT, k, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c, s_ok_r, s_ok_b, s_ok_c,
                  WI_BLOCK: tl.constexpr, CH: tl.constexpr, SUB: tl.constexpr, BLOCK_K: tl.constexpr):
    """Beam b's winners into consecutive slots of request r, in flat order; program 0 writes the padding."""
    b, r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    t = tl.load(state_ptr + r * STATE + S_T + 6)
    need = tl.load(state_ptr + r * STATE + S_T + 7)  # ties at t that win
    t_finite = t > NEG_INF_KEY
    beams = tl.arange(0, WI_BLOCK)
    before = beams < b
    tie = tl.sum(tl.load(n_eq_ptr + r * Wi + beams, mask=before, other=0), 0)  # global tie rank so far
    slot0 = tl.sum(tl.load(n_gt_ptr + r * Wi + beams, mask=before, other=0), 0) + tl.minimum(tie, need)
    out = r * k
    smax_b = smax_ptr + (r * Wi + b) * NS
    for j in range(0, NT):
        rows = j * CH + tl.arange(0, CH)
        best = tl.max(tl.load(smax_b + rows, mask=rows < NS, other=0), 0)
        if (best >= t) & (best > NEG_INF_KEY):
            c = j * CH * SUB + tl.arange(0, CH * SUB)
            sub_best = tl.load(smax_b + c // SUB, mask=c < C, other=0)
            live = (c < C) & (sub_best >= t) & (sub_best > NEG_INF_KEY)
            s, key = _keys(bs_ptr, lp_ptr, ok_ptr, r, b, c, live, s_bs_r, s_bs_b, s_lp_r, s_lp_b, s_lp_c,
                           s_ok_r, s_ok_b, s_ok_c)
            eq = ((key == t) & t_finite).to(tl.int32)
            take = ((key > t) | ((eq != 0) & (tie + tl.cumsum(eq, 0) - eq < need))).to(tl.int32)
            slot = slot0 + tl.cumsum(take, 0) - take
            put = (take != 0) & (slot < k)  # slot < k holds for valid inputs; a NaN must not write out of bounds
            tl.store(score_ptr + out + slot, s, mask=put)
            tl.store(parent_ptr + out + slot, (b + tl.zeros_like(slot)).to(tl.int64), mask=put)
            tl.store(code_ptr + out + slot, c.to(tl.int64), mask=put)
            slot0 += tl.sum(take, 0)
            tie += tl.sum(eq, 0)
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
    hist = torch.zeros(R, HIST_ROWS.value, BINS.value, dtype=torch.int32, device=device)
    state = torch.empty(R, STATE.value, dtype=torch.int64, device=device)
    smax = torch.empty(R, Wi, ns, dtype=torch.int64, device=device)  # best key of each sub-chunk
    n_gt = torch.empty(R, Wi, dtype=torch.int32, device=device)
    n_eq = torch.empty(R, Wi, dtype=torch.int32, device=device)
    scores = torch.empty(R, k, dtype=torch.float32, device=device)
    parent = torch.empty(R, k, dtype=torch.int64, device=device)
    code = torch.empty(R, k, dtype=torch.int64, device=device)
    head = (beam_scores, log_probs, valid, smax, hist, state)
    tail = (Wi, C, ns, nt, k, *beam_scores.stride(), *log_probs.stride(), *valid.stride())
    # Warps: at least one tile element a thread, so that histogram inputs are not replicated across
    # threads (except in tiles under 32 codes, which only tests use); the maxima tile is as wide.
    warps = max(1, min(8, block_c // 256))
    tile = dict(CH=block_c // sub_c, SUB=sub_c, num_warps=warps)
    ns_block = max(triton.next_power_of_2(ns), 32 * warps)
    grid = (Wi, R)
    _maxima_kernel[grid](*head, *tail, T0=t0, NS_BLOCK=ns_block, **tile)
    if t0:
        _maxima_pass_kernel[grid](*head, *tail, NS_BLOCK=ns_block, num_warps=warps)
    for p in range(4):
        _radix_pass_kernel[grid](*head, *tail, PASS=p, T0=t0, **tile)
    _count_kernel[grid](*head, n_gt, n_eq, *tail, **tile)
    _write_kernel[grid](*head, n_gt, n_eq, scores, parent, code, *tail,
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
