"""Image quality metrics on float tensors: PSNR and SSIM, plus the 8-bit quantisation that makes
a model's output what a saved image would hold."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "quantize", "clip_aware_error"]


def quantize(x: Tensor, levels: int = 255) -> Tensor:
    """Clamp to [0, 1] and round to ``levels`` steps, as writing an integer image would.

    ``levels`` is 255 for 8-bit and 65535 for 16-bit images.
    """
    return torch.round(x.clamp(0, 1) * levels) / levels


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements: ``10 log10(range^2 / MSE)``.

    Returns ``inf`` for identical inputs. Computed in float64.
    """
    if pred.shape != target.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(pred.shape)} and {tuple(target.shape)}")
    mse = (pred.double() - target.double()).square().mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(sigma: float, truncate: float, dtype, device) -> Tensor:
    # the taps scipy.ndimage.gaussian_filter uses: radius int(truncate * sigma + 0.5)
    radius = int(truncate * sigma + 0.5)
    i = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (i / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(
    pred: Tensor, target: Tensor, data_range: float = 1.0, sigma: float = 1.5,
    k1: float = 0.01, k2: float = 0.03,
) -> float:
    """Mean structural similarity (Wang et al. 2004) with a Gaussian window.

    Args:
        pred, target: float images (B, C, H, W) or (C, H, W) of the same shape.
        data_range: the value range (1 for [0, 1] images).

    The window is Gaussian with ``sigma`` (11 taps at 1.5), population covariances, and the
    mean is taken over the pixels whose window lies inside the image, averaged over channels:
    the same number as ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=...)``.
    Images smaller than the window have no such pixels; they fall back to a window the size of
    the image's smaller side.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ: {tuple(pred.shape)} and {tuple(target.shape)}")
    x = pred.double()
    y = target.double()
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    b, c, h, w = x.shape
    g = _gaussian_window(sigma, 3.5, x.dtype, x.device)
    if g.numel() > min(h, w):
        n = min(h, w) if min(h, w) % 2 else min(h, w) - 1
        g = g[(g.numel() - n) // 2 : (g.numel() + n) // 2]
        g = g / g.sum()
    x = x.reshape(b * c, 1, h, w)
    y = y.reshape(b * c, 1, h, w)

    def blur(t: Tensor) -> Tensor:  # separable, 'valid': only windows inside the image
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean().item()


def clip_aware_error(pred: Tensor, target: Tensor) -> Tensor:
    """``pred - target``, except where the target sits at 0 or 1.

    A target pixel at 0 or 1 was (or may have been) clipped when it was stored as an integer
    image, so any prediction beyond the bound is as right as the bound: the error there is only
    the part of ``pred`` on the wrong side. Elsewhere it is the plain difference.
    """
    err = pred - target
    err = torch.where(target <= 0, pred.clamp(min=0), err)
    return torch.where(target >= 1, (pred - 1).clamp(max=0), err)
