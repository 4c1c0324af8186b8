"""Functional kernels of the beam engine: a PyTorch reference beside each fast path, and a dispatcher.

Triton modules (``triton_*``) are imported only when a Triton backend is first used, because Triton
decides at import whether to interpret its kernels (``TRITON_INTERPRET=1``, for CPU tests).
"""

from .beam_sorter import MaskedBeamSorter, beam_sort_reference, candidate_scores
from .staged_attention import merge_attention_states, staged_attention, staged_attention_reference

__all__ = ["MaskedBeamSorter", "beam_sort_reference", "candidate_scores", "merge_attention_states",
           "staged_attention", "staged_attention_reference"]
