"""The registry's fixed filters as leaves: checked parameters in, kernels as NumPy data out.

One function per fixed filter (the registry names them as its builders): each returns the
filter's *leaves*, the pieces a plan is made of, without torch. :func:`convkit.nn.builders.build`
makes the ``nn.Module`` from the same leaves, and :mod:`convkit.plan.specs` the plan, so a
filter's kernel is computed by one rule whichever way it is used.

Filters that are not fixed kernels (pooling, unsharp with a threshold, learned filters) have
torch builders only (:mod:`convkit.nn.builders`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kernels.specs import (
    KernelSpec,
    blend,
    check_weights,
    gaussian_ksize,
    gaussian_taps,
    load_spec,
)
from .ops import LazyKernel

__all__ = ["KernelLeaf", "MedianLeaf", "GradientLeaf", "MorphLeaf", "Leaf", "named_kernel",
           "sharpen",
           "gradient", "gaussian", "box", "unsharp", "edges", "median", "kernel"]


@dataclass(frozen=True, eq=False)
class KernelLeaf(LazyKernel):
    """``correlate(pad(x), kernel) + bias``: ``kernel`` float64 (kh, kw), the one applied;
    ``bias`` on the [0, 1] scale; ``value`` the constant border's fill in 8-bit grey levels;
    ``factors`` exact separable (col, row) when known (gaussian, box). With factors the kernel
    may be None: ``np.outer(col, row)``, made when first read (a plan never needs it)."""

    kernel: np.ndarray
    bias: float = 0.0
    border: str = "reflect"
    value: float = 0.0
    negative: str | None = None
    factors: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True, eq=False)
class MedianLeaf:
    size: int
    border: str = "reflect"
    value: float = 0.0


@dataclass(frozen=True, eq=False)
class GradientLeaf:
    """``sqrt(gx**2 + gy**2)``, ``gx`` by ``kx`` (float64, d/dx) and ``gy`` by ``ky`` (the
    transpose of ``kx`` unless given)."""

    kx: np.ndarray
    border: str = "reflect"
    value: float = 0.0
    ky: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.ky is None:
            object.__setattr__(self, "ky", self.kx.T)


@dataclass(frozen=True, eq=False)
class MorphLeaf:
    """Morphology ``op`` (see :mod:`convkit.kernels.morphology`) with the uint8 0/1 footprint
    ``fp``; ``value`` the constant border's fill in 8-bit grey levels."""

    op: str
    fp: np.ndarray
    iterations: int = 1
    border: str = "none"
    value: float = 0.0


Leaf = KernelLeaf | MedianLeaf | GradientLeaf | MorphLeaf


def _linear(rows: Any, *, scale: float, offset: float, strength: float, border: str,
            value: float, negative: str | None = None, factors=None) -> KernelLeaf:
    if factors is not None and strength == 1.0 and scale == 1.0 and offset == 0.0:
        # (``rows`` is then the outer product of the factors, taps in [0, 1]: left unmade)
        return KernelLeaf(None, 0.0, border, float(value), negative, factors)
    k, bias = blend(rows() if callable(rows) else rows, scale, offset, strength)
    return KernelLeaf(k, bias, border, float(value), negative,
                      factors if strength == 1.0 else None)


def _spec_kernel(spec: KernelSpec, *, strength: float, border: str | None, value: float,
                 negative: str | None = None, offset: float | None = None,
                 scale: float | None = None) -> KernelLeaf:
    if negative is None and spec.signed:
        negative = "abs"
    return _linear(spec.weights, scale=spec.scale if scale is None else scale,
                   offset=spec.offset if offset is None else offset, strength=strength,
                   border=border or spec.border, value=value, negative=negative)


def named_kernel(info, strength=1.0, border=None, value=0.0, negative=None) -> list[Leaf]:
    return [_spec_kernel(info.spec, strength=strength, border=border, value=value,
                         negative=negative)]


def sharpen(info, amount=1.0, strength=1.0, border=None, value=0.0) -> list[Leaf]:
    # The file holds the amount-1 kernel; amount scales (K - identity), the same rule as strength.
    return [_spec_kernel(info.spec, strength=amount * strength, border=border, value=value)]


def sobel_kernel(ksize: int) -> np.ndarray:
    """The x-derivative kernel of ``cv2.Sobel(dx=1, ksize=ksize)``: binomial smoothing down
    (``ksize`` taps; none for 1) times the central difference across, widened by binomial
    smoothing to ``ksize`` taps (cv2.getDerivKernels): 1x3 for 1, 3x3 ... 7x7."""
    if ksize not in (1, 3, 5, 7):
        raise ValueError(f"ksize should be 1, 3, 5 or 7 (cv2.Sobel's apertures). Got {ksize}")
    smooth = np.array([1.0])
    for _ in range(ksize - 1):
        smooth = np.convolve(smooth, [1.0, 1.0])
    across = np.array([-1.0, 0.0, 1.0])
    for _ in range(max(ksize - 3, 0)):
        across = np.convolve(across, [1.0, 1.0])
    return np.outer(smooth, across)


def gradient(info, dx=0, dy=0, negative="abs", strength=1.0, border=None,
             value=0.0, ksize=None) -> list[Leaf]:
    spec = info.spec
    border = border or spec.border
    k = sobel_kernel(ksize) if ksize not in (None, 3) else \
        np.array(spec.weights, dtype=np.float64) / spec.scale
    ky = k.T if spec.weights_y is None else np.array(spec.weights_y, dtype=np.float64) / spec.scale
    if dx + dy == 0:
        if strength != 1.0:
            raise ValueError(f"{info.name}: strength applies to one derivative (dx=1 or dy=1); "
                             "the magnitude is not a linear filter")
        if spec.magnitude == "rms":  # sqrt((gx^2 + gy^2) / 2): both kernels over sqrt(2)
            k, ky = k / math.sqrt(2.0), ky / math.sqrt(2.0)
        return [GradientLeaf(k, border, float(value), ky)]
    if dx and dy:
        raise ValueError(f"{info.name}: give dx=1 or dy=1, not both (0 and 0 = magnitude)")
    return [_linear(ky if dy else k, scale=1.0, offset=0.0, strength=strength, border=border,
                    value=value, negative=negative)]


def _xy(v):
    """(x, y) from one value for both axes or [x, y]."""
    return (v[0], v[1]) if isinstance(v, list | tuple) else (v, v)


def _gaussian(sigma, ksize, *, strength: float = 1.0, border: str = "reflect",
              value: float = 0.0) -> KernelLeaf:
    """``sigma`` and ``ksize``: one value, or [x, y] (width first), as cv2.GaussianBlur's
    sigmaX, sigmaY and Size(width, height)."""
    (kx, ky) = _xy(ksize)
    if sigma is None:  # 1, or with a side, as cv2.GaussianBlur with sigma 0
        sigma = 1.0 if ksize is None else 0.0
    (sx, sy) = _xy(sigma)
    if sy == 0:  # cv2.GaussianBlur: a sigmaY of 0 is sigmaX
        sy = sx

    def taps(k, s):
        if s == 0:  # from the side, as cv2.getGaussianKernel(k, 0)
            if not k:
                raise ValueError("gaussian: sigma 0 takes its value from ksize, as in "
                                 "cv2.GaussianBlur; give ksize, or a sigma > 0")
            return opencv_gaussian_taps(k)
        return gaussian_taps(k or gaussian_ksize(s), s)

    row, col = taps(kx, sx), taps(ky, sy)
    return _linear(lambda: np.outer(col, row), scale=1.0, offset=0.0, strength=strength,
                   border=border, value=value, factors=(col, row))


# cv2.getGaussianKernel's fixed taps for small odd sides when no sigma is given (OpenCV 5: 1 to
# 9, in 256ths from 5 up; OpenCV 4 stops at 7)
_SMALL_GAUSSIANS = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
                    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
                    9: [t / 256 for t in (4, 13, 30, 51, 60, 51, 30, 13, 4)]}


def opencv_gaussian_taps(ksize: int) -> np.ndarray:
    """The taps ``cv2.getGaussianKernel(ksize, 0)`` gives for an odd side (GaussianBlur takes
    no other): its fixed table for 1 to 9, else the Gaussian of sigma
    ``0.3 * ((ksize - 1) * 0.5 - 1) + 0.8``. An even side gets that Gaussian too."""
    if ksize in _SMALL_GAUSSIANS:
        return np.array(_SMALL_GAUSSIANS[ksize])
    return gaussian_taps(ksize, 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8)


def gaussian(info, sigma=None, ksize=None, strength=1.0, border="reflect",
             value=0.0) -> list[Leaf]:
    return [_gaussian(sigma, ksize, strength=strength, border=border, value=value)]


def box(info, size=3, strength=1.0, border="reflect", value=0.0) -> list[Leaf]:
    w, h = _xy(size)  # [width, height], as cv2.blur's ksize
    row, col = np.full(w, 1.0 / w), np.full(h, 1.0 / h)
    return [_linear(lambda: np.outer(col, row), scale=1.0, offset=0.0, strength=strength,
                    border=border, value=value, factors=(col, row))]


def unsharp(info, sigma=1.0, amount=1.0, threshold=0.0, ksize=None, border="reflect",
            value=0.0) -> list[Leaf] | None:
    """With threshold 0, one kernel: ``x + a(x - Gx) = identity + (-a)(G - identity)``, G the
    float32 gaussian the module holds. A threshold makes it non-linear: torch only (None)."""
    if threshold != 0:
        return None
    g = _gaussian(sigma, ksize, border=border, value=value)
    g32 = g.kernel.astype(np.float32).astype(np.float64)
    return [_linear(g32, scale=1.0, offset=0.0, strength=-amount, border=border, value=value)]


def edges(info, sigma=1.0, border="reflect", value=0.0) -> list[Leaf]:
    from ..kernels.registry import get_info

    sobel = get_info("sobel").spec
    kx = np.array(sobel.weights, dtype=np.float64) / sobel.scale
    return [_gaussian(sigma, None, border=border, value=value),
            GradientLeaf(kx, border, float(value))]


def median(info, size=3, border="reflect", value=0.0) -> list[Leaf]:
    return [MedianLeaf(int(size), border, float(value))]


def kernel(info, weights=None, path=None, scale=None, offset=None, negative=None,
           strength=1.0, border=None, value=0.0) -> list[Leaf]:
    if (weights is None) == (path is None):
        raise ValueError("kernel: give exactly one of weights=[[...]] or path=FILE.toml")
    if path is not None:
        return [_spec_kernel(load_spec(path), strength=strength, border=border, value=value,
                             negative=negative, offset=offset, scale=scale)]
    from ..kernels.specs import resolve_scale

    rows = check_weights(weights, what="kernel")
    return [_linear(rows, scale=resolve_scale(rows, scale, what="kernel"), offset=offset or 0.0,
                    strength=strength, border=border or "reflect", value=value,
                    negative=negative)]


def _morph(op: str):
    """The leaves function of one morphology filter."""
    def leaves(info, size=3, shape="rect", footprint=None, iterations=1, border="none",
               value=0.0) -> list[Leaf]:
        from ..kernels.morphology import footprint as make_footprint

        try:
            fp = make_footprint(size, shape, footprint)
        except ValueError as e:
            raise ValueError(f"{info.name}: {e}") from None
        return [MorphLeaf(op, fp, int(iterations), border, float(value))]

    leaves.__name__ = f"morphology_{op}"
    return leaves


morphology_erode = _morph("erode")
morphology_dilate = _morph("dilate")
morphology_opening = _morph("open")
morphology_closing = _morph("close")
morphology_morph_gradient = _morph("gradient")
morphology_tophat = _morph("tophat")
morphology_blackhat = _morph("blackhat")
