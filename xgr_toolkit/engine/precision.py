"""The precision of the serving decoder's linear layers: the one seam where the engine sets it.

``serve.linear_precision: float8`` turns every linear layer of the engine's decoder copy (after
:meth:`~xgr_toolkit.modules.GRDecoder.fuse_projections`: qkv, o, gate/up, down; the vocabulary head unless
``serve.float8_skip`` keeps it) into torchao's float8 inference path: weights cast to e4m3 once, here,
with one scale per output channel; activations cast to e4m3 on the fly with one scale per row (per
token). The activation's amax, scale and cast are plain PyTorch ops inside the compiled regions, so that
inductor can fuse them into the kernel that produces the activation (the RMSNorm before qkv and gate/up,
SwiGLU before down; not yet seen on a GPU); the product is ``torch._scaled_mm`` with row-wise scales, bf16
out. Attention, the
norms and the residual stream stay bf16. The model's own decoder is not touched: only the copy's modules
get the new weights.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from ..config import ConfigError, ServeConfig

__all__ = ["apply_linear_precision", "check_float8_device", "float8_layer_names"]

_MULTIPLE = 16  # torch._scaled_mm needs both dimensions of a weight to be multiples of 16
_MIN_CAPABILITY = (8, 9)  # e4m3 tensor cores: Ada (8.9), Hopper (9.0) and later


def _refuse(allowed: str) -> ConfigError:
    return ConfigError("serve.linear_precision", "float8", allowed)


def check_float8_device(device: torch.device, dtype: torch.dtype) -> None:
    """Raise a ConfigError naming ``serve.linear_precision`` where float8 cannot run: ``device`` is not a
    CUDA GPU of compute capability >= 8.9, the weights (``dtype``) are not bf16, or torchao is missing."""
    if device.type != "cuda":
        raise _refuse(f"'dtype' on the {device.type}: float8 needs a CUDA GPU of compute capability >= 8.9 "
                      "(Ada, Hopper or later)")
    capability = torch.cuda.get_device_capability(device)
    if capability < _MIN_CAPABILITY:
        raise _refuse(f"'dtype' on {torch.cuda.get_device_name(device)} (compute capability "
                      f"{capability[0]}.{capability[1]}): float8 needs >= 8.9 (Ada, Hopper or later)")
    if dtype != torch.bfloat16:
        raise _refuse(f"'dtype' for {dtype} weights: float8 scales from bfloat16 (serve.dtype: bfloat16)")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise _refuse("'dtype' without torchao: pip install 'xgr_toolkit[fp8]'") from None


def float8_layer_names(decoder: nn.Module, skip: list[str]) -> list[str]:
    """The linear layers of ``decoder`` to cast to float8: all but those ``skip`` names (fnmatch patterns of
    module names) and those whose weight has a dimension that is not a multiple of 16 (left in bf16).

    Raises:
        ConfigError: a pattern of ``skip`` matches no linear layer (a typo would quantize what it meant to keep).
    """
    linears = {name: m for name, m in decoder.named_modules() if isinstance(m, nn.Linear)}
    for pattern in skip:
        if not any(fnmatchcase(name, pattern) for name in linears):
            raise ConfigError("serve.float8_skip", list(skip),
                              f"patterns matching the engine's linear layers; {pattern!r} matches none of "
                              f"{sorted(linears)[:8]}{' ...' if len(linears) > 8 else ''}")
    return [name for name, m in linears.items()
            if not any(fnmatchcase(name, p) for p in skip)
            and all(n % _MULTIPLE == 0 for n in m.weight.shape)]


def apply_linear_precision(decoder: nn.Module, serve: ServeConfig) -> list[str]:
    """Give the engine's decoder copy ``serve.linear_precision``; call it after ``fuse_projections``.
    -> the names of the layers now in float8 (none for "dtype").

    Raises:
        ConfigError: naming ``serve.linear_precision`` where float8 cannot run (see :func:`check_float8_device`),
            or ``serve.float8_skip`` where a pattern matches no layer.
    """
    if serve.linear_precision == "dtype":
        return []
    param = next(decoder.parameters())
    check_float8_device(param.device, param.dtype)
    names = float8_layer_names(decoder, serve.float8_skip)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    from torchao.quantization.quantize_.common import KernelPreference

    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(),  # activations per row (token), weights per output channel
        # torch ops for the activation's scale and cast, which inductor fuses into their producer (mslk's
        # quantize kernel, AUTO's pick where it is installed, is opaque to inductor)
        kernel_preference=KernelPreference.TORCH,
        # an all-zero row (a padded slot) would get scale 0 and 0/0 = NaN: its amax is clamped instead
        activation_value_lb=1e-12,
        # torchao's recommended settings are process-wide (TF32 float32 products, coordinate-descent tuning):
        # they would change every other engine of the process, the float32 reference of the benchmark too
        set_inductor_config=False)
    wanted = set(names)
    quantize_(decoder, config, filter_fn=lambda module, name: name in wanted)
    return names
