"""MaskedBeamSorter: the exact top-k (beam, code) candidates of each request, for one beam-search step.

Candidate (b, c) of request r scores ``beam_scores[r, b] + log_probs[r, b, c]`` in float32 where
``valid[r, b, c]``, else -inf. The k kept are the first k of the order (score descending, flat index
``b * C + c`` ascending), restricted to finite scores, and come back ordered by flat index ascending:
``parent`` is non-decreasing and the beams stay in SID order. When fewer than k candidates are
finite, the trailing slots hold score -inf, parent ``Wi - 1`` and code 0 (the padding keeps
``parent`` non-decreasing and points at a real beam, a valid index for the cache's lineage).

``beam_sort_reference`` is the vectorised PyTorch path: the k-th largest score by ``torch.topk``,
ties at that score resolved by flat index, and the winners found in flat order by a binary search
of their running count. The Triton path (``triton_beam_sorter``) selects the
same set by a radix select that skips every chunk of a beam whose best candidate cannot reach the
k-th best (docs/beam_sorter.md gives the algorithm and why it is exact). No host syncs, no
data-dependent shapes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["MaskedBeamSorter", "beam_sort_reference", "candidate_scores"]

Backend = Literal["auto", "torch", "triton"]


def candidate_scores(beam_scores: torch.Tensor, log_probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[R, Wi], [R, Wi, C], [R, Wi, C] -> [R, Wi * C] float32 scores, -inf where invalid, -0.0 made +0.0.

    The sign of zero is dropped so that -0.0 and +0.0 tie, as they compare equal.
    """
    scores = beam_scores.float()[:, :, None] + log_probs.float()
    scores = torch.where(scores == 0, torch.zeros_like(scores), scores)
    return torch.where(valid, scores, torch.full_like(scores, float("-inf"))).flatten(1)


def _running_count(mask: torch.Tensor) -> torch.Tensor:
    """[R, N] bool -> [R, N] int64 count of True up to each index of its row.

    One scan over the flattened rows: CUDA scans a few long rows along dim 1 with one block a row.
    """
    total = mask.flatten().cumsum(0).view(mask.shape)
    before = torch.cat((total.new_zeros(1), total[:-1, -1]))  # [R] count in the rows above
    return total - before[:, None]


def beam_sort_reference(beam_scores: torch.Tensor, log_probs: torch.Tensor, valid: torch.Tensor,
                        k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PyTorch path of ``MaskedBeamSorter.forward`` (same arguments and results)."""
    R, Wi, C = log_probs.shape
    scores = candidate_scores(beam_scores, log_probs, valid)  # [R, N]
    kth = scores.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)  # [R, 1] k-th largest
    above = scores > kth
    # Ties at the k-th score go to the lowest flat indices; -inf never enters (it fills the tail).
    tied = (scores == kth) & (kth > float("-inf"))
    need = k - above.sum(dim=1, keepdim=True)
    kept = _running_count(above | (tied & (_running_count(tied) <= need)))  # [R, N] winners up to each index
    rank = torch.arange(1, k + 1, device=scores.device).repeat(R, 1)  # [R, k]
    flat = torch.searchsorted(kept, rank)  # [R, k] flat index of the j-th winner in flat order; N if none
    filled = rank <= kept[:, -1:]
    flat = torch.where(filled, flat, (Wi - 1) * C)  # padding: parent Wi - 1, code 0
    out = torch.where(filled, scores.gather(1, flat), torch.full_like(kth, float("-inf")))
    return out, flat // C, flat % C


class MaskedBeamSorter(nn.Module):
    """Exact top-k valid candidates per request, returned in flat-index order.

    Args:
        backend: ``"auto"`` (Triton on CUDA, else PyTorch), ``"torch"`` or ``"triton"`` (also on the
            CPU under ``TRITON_INTERPRET=1``).
    """

    def __init__(self, backend: Backend = "auto"):
        super().__init__()
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton'; got {backend!r}")
        self.backend = backend

    def forward(self, beam_scores: torch.Tensor, log_probs: torch.Tensor, valid: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Select k of the Wi * C candidates of each request.

        Args:
            beam_scores: [R, Wi] float32 cumulative scores, -inf for dead beams.
            log_probs: [R, Wi, C] float32 or bfloat16, finite where valid (any sign).
            valid: [R, Wi, C] bool.
            k: output beams, ``1 <= k <= Wi * C``.

        Returns:
            scores [R, k] float32, parent [R, k] int64, code [R, k] int64: the selected candidates by
            flat index ``parent * C + code`` ascending, then -inf padding (parent Wi - 1, code 0).
        """
        R, Wi, C = log_probs.shape
        if not 1 <= k <= Wi * C:
            raise ValueError(f"k must be in [1, Wi * C = {Wi * C}]; got {k}")
        backend = self.backend
        if backend == "auto":
            backend = "triton" if log_probs.is_cuda else "torch"
        if backend == "torch":
            return beam_sort_reference(beam_scores, log_probs, valid, k)
        # Imported here: Triton decides at import whether its kernels are interpreted (TRITON_INTERPRET).
        from .triton_beam_sorter import triton_beam_sort
        return triton_beam_sort(beam_scores, log_probs, valid, k)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
