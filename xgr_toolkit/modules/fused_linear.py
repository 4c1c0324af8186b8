"""Several linear maps of one input as one matrix product (serving)."""

import torch
from torch import nn

__all__ = ["fused_linear"]


@torch.no_grad()
def fused_linear(*linears: nn.Linear) -> nn.Linear:
    """One ``nn.Linear`` whose output is the outputs of ``linears`` concatenated, over new weights (the
    given ones are left as they are). One product of width sum(out) replaces len(linears) narrower ones:
    fewer kernels, and better tiles for the few-token products of decoding."""
    first = linears[0]
    weight = torch.cat([lin.weight for lin in linears])  # [sum(out), in]
    fused = nn.Linear(first.in_features, weight.shape[0], bias=first.bias is not None,
                      device=weight.device, dtype=weight.dtype)
    fused.weight.copy_(weight)
    if first.bias is not None:
        fused.bias.copy_(torch.cat([lin.bias for lin in linears]))
    return fused.requires_grad_(False)
