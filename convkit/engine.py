"""Running a filter (chain) on an image tensor of any dtype: the integer in/out rules.

``apply(module, x)`` is the single place where integer images become float and back:
uint8/uint16 -> float32 on the [0, 1] scale -> module -> the module's ``negative`` mapping ->
round to nearest (ties to even) -> saturate to the dtype's range (OpenCV's saturate_cast).
An alpha channel, when flagged, bypasses the filters; only the resampling of pooling touches it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as KF
from .modules import Pool2d

__all__ = ["apply"]


def _negative(module: nn.Module) -> str:
    neg = getattr(module, "negative", None)
    return neg if isinstance(neg, str) else "clip"


def _alpha_path(module: nn.Module) -> list[nn.Module]:
    """The size-changing steps of a chain, which the alpha channel must follow too."""
    mods = list(module) if isinstance(module, nn.Sequential) else [module]
    return [m for m in mods if isinstance(m, Pool2d)]


def apply(module: nn.Module, x: Tensor, *, alpha: bool = False) -> Tensor:
    """Filter a batch ``x`` (B, C, H, W) of uint8, uint16 or float; return the same dtype.

    Float input is filtered as it is (no clamping). With ``alpha=True`` the last channel is
    alpha: it is passed through unchanged (pooled only when the chain pools).
    """
    if x.dim() != 4:
        raise ValueError(f"apply expects a batch (B,C,H,W). Got shape {tuple(x.shape)}")
    integer = not x.is_floating_point()
    if integer and x.dtype not in (torch.uint8, torch.uint16):
        raise TypeError(f"integer images should be uint8 or uint16. Got {x.dtype}")
    if alpha and x.shape[1] < 2:
        raise ValueError("alpha=True needs at least 2 channels")
    colour, a = (x[:, :-1], x[:, -1:]) if alpha else (x, None)
    out = module(KF.to_float(colour) if integer else colour)
    if integer:
        out = KF.to_integer(out, x.dtype, _negative(module))
    if a is None:
        return out
    steps = _alpha_path(module)
    if steps:
        af = KF.to_float(a) if integer else a
        for m in steps:
            af = m(af)
        a = KF.to_integer(af, x.dtype) if integer else af
    return torch.cat([out, a.to(out.dtype)], dim=1)
