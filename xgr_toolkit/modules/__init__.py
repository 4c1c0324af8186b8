"""Trainable building blocks of the GR decoder."""

from .attention import AttendFn, GroupedQueryAttention, causal_attend
from .decoder import IGNORE_INDEX, DecoderLayer, GRDecoder
from .mlp import SwiGLU
from .rms_norm import RMSNorm
from .rotary import RotaryEmbedding, apply_rotary

__all__ = ["AttendFn", "DecoderLayer", "GRDecoder", "GroupedQueryAttention", "IGNORE_INDEX", "RMSNorm",
           "RotaryEmbedding", "SwiGLU", "apply_rotary", "causal_attend"]
