"""Builders behind the registry: checked parameters in, an ``nn.Module`` out."""

from __future__ import annotations

import torch

from . import functional as KF
from .kernels import KernelSpec, check_weights, load_spec
from .modules import GradientMagnitude, Kernel2d, Median, Pool2d, Sequence2, Unsharp
from .registry import FilterInfo, get_info


def _spec_kernel(spec: KernelSpec, *, strength: float, border: str | None, value: float,
                 negative: str | None = None, offset: float | None = None,
                 scale: float | None = None, weights=None) -> Kernel2d:
    if negative is None and spec.signed:
        negative = "abs"
    return Kernel2d(
        weights if weights is not None else spec.weights,
        scale=scale if scale is not None else spec.scale,
        offset=spec.offset if offset is None else offset,
        border=border or spec.border,
        value=value,
        strength=strength,
        negative=negative,
    )


def named_kernel(info: FilterInfo, strength=1.0, border=None, value=0.0, negative=None):
    return _spec_kernel(info.spec, strength=strength, border=border, value=value,
                        negative=negative)


def sharpen(info: FilterInfo, amount=1.0, strength=1.0, border=None, value=0.0):
    # The file holds the amount-1 kernel; amount scales (K - identity), the same rule as strength.
    return _spec_kernel(info.spec, strength=amount * strength, border=border, value=value)


def gradient(info: FilterInfo, dx=0, dy=0, negative="abs", strength=1.0, border=None, value=0.0):
    spec = info.spec
    border = border or spec.border
    if dx + dy == 0:
        if strength != 1.0:
            raise ValueError(f"{info.name}: strength applies to one derivative (dx=1 or dy=1); "
                             "the magnitude is not a linear filter")
        return GradientMagnitude(spec.normalized(), border=border, value=value)
    if dx and dy:
        raise ValueError(f"{info.name}: give dx=1 or dy=1, not both (0 and 0 = magnitude)")
    k = spec.normalized()
    if dy:
        k = [list(r) for r in zip(*k, strict=True)]
    return Kernel2d(k, scale=1.0, border=border, value=value, strength=strength,
                    negative=negative)


def _gaussian(sigma: float, ksize: int | None, **kw) -> Kernel2d:
    ksize = ksize or KF.gaussian_ksize(sigma)
    g = KF.gaussian_kernel1d(ksize, sigma)
    return Kernel2d(torch.outer(g, g), scale=1.0, separable=(g, g), **kw)


def gaussian(info: FilterInfo, sigma=1.0, ksize=None, strength=1.0, border="reflect", value=0.0):
    return _gaussian(sigma, ksize, strength=strength, border=border, value=value)


def box(info: FilterInfo, size=3, strength=1.0, border="reflect", value=0.0):
    ones = torch.full((size,), 1.0 / size, dtype=torch.float64)
    return Kernel2d(torch.outer(ones, ones), scale=1.0, separable=(ones, ones),
                    strength=strength, border=border, value=value)


def unsharp(info: FilterInfo, sigma=1.0, amount=1.0, threshold=0.0, ksize=None,
            border="reflect", value=0.0):
    blur = _gaussian(sigma, ksize, border=border, value=value)
    if threshold == 0:
        # x + a(x - Gx) = identity + (-a)(G - identity): one kernel.
        return Kernel2d(blur.weight.double(), scale=1.0, strength=-amount, border=border,
                        value=value)
    return Unsharp(blur, amount, threshold)


def edges(info: FilterInfo, sigma=1.0, border="reflect", value=0.0):
    sobel = get_info("sobel").spec
    return Sequence2(_gaussian(sigma, None, border=border, value=value),
                     GradientMagnitude(sobel.normalized(), border=border, value=value))


def median(info: FilterInfo, size=3, border="reflect", value=0.0):
    return Median(size, border=border, value=value)


def avgpool(info: FilterInfo, size=2, stride=None, border="reflect", value=0.0):
    return Pool2d("avg", size, stride, border=border, value=value)


def maxpool(info: FilterInfo, size=2, stride=None, border="reflect", value=0.0):
    return Pool2d("max", size, stride, border=border, value=value)


def kernel(info: FilterInfo, weights=None, path=None, scale=None, offset=None, negative=None,
           strength=1.0, border=None, value=0.0):
    if (weights is None) == (path is None):
        raise ValueError("kernel: give exactly one of weights=[[...]] or path=FILE.toml")
    if path is not None:
        spec = load_spec(path)
        return _spec_kernel(spec, strength=strength, border=border, value=value,
                            negative=negative, offset=offset, scale=scale)
    rows = check_weights(weights, what="kernel")
    return Kernel2d(rows, scale=scale, offset=offset or 0.0, border=border or "reflect",
                    value=value, strength=strength, negative=negative)
