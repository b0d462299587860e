"""Plain functions on float tensors: padding in every border mode, depthwise correlation,
pooling, median, and the integer <-> float conversions.

Conventions (the README states them for users):

* Images are float tensors of shape (B, C, H, W) or (C, H, W); [0, 1] is the usual range.
* Filtering is cross-correlation (no kernel flip), as ``nn.Conv2d`` and ``cv2.filter2D``.
  A kernel of height kh and width kw is anchored at row kh // 2, column kw // 2 (OpenCV's
  default anchor), so even sizes take one more pixel from the top/left than from the bottom/right.
* Each channel is filtered on its own (depthwise, ``groups = C``).
* Borders: ``reflect`` = OpenCV BORDER_REFLECT_101 (``dcb|abcd|cba``), ``symmetric`` = OpenCV
  BORDER_REFLECT (``cba|abcd|dcb``), ``replicate``, ``circular`` (wrap) and ``constant``
  (``value``, on the image's own scale). Padding wider than the image repeats the rule, exactly
  as OpenCV's ``borderInterpolate`` does, so an image smaller than the kernel is fine.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.morphology import compose, rect_iterations
from ..kernels.specs import INT_MAX, OFFSET, check_border, dtype_name, gaussian_ksize, gaussian_taps
from ..kernels.specs import border_index as _border_index

__all__ = [
    "magnitude",
    "unsharp_mask",
    "pad",
    "filter2d",
    "sep_filter2d",
    "avg_pool",
    "max_pool",
    "pool_size",
    "median_blur",
    "gaussian_kernel1d",
    "gaussian_ksize",
    "to_float",
    "to_integer",
    "check_image",
    "gaussian_blur",
    "box_blur",
    "sharpen",
    "gradient_magnitude",
    "unsharp",
    "named_filter",
]


def check_image(x: object, what: str = "input") -> tuple[Tensor, bool]:
    """Validate a float image; return it as (B, C, H, W) and whether a batch dim was added."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} should be a torch.Tensor (B,C,H,W). Got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} should be a floating point tensor (B,C,H,W); convert integer images with "
            f"convkit.process or x.float() / 255. Got dtype {x.dtype}"
        )
    if x.dim() == 3:
        return x.unsqueeze(0), True
    if x.dim() != 4:
        raise ValueError(
            f"{what} should have shape (B,C,H,W) or (C,H,W). Got {x.dim()}-D shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"{what} should not be empty. Got shape {tuple(x.shape)}")
    return x, False


def border_index(n: int, before: int, after: int, border: str, device=None) -> Tensor:
    """Source indices for a padded axis of length ``before + n + after``
    (:func:`convkit.kernels.specs.border_index`, as a tensor on ``device``)."""
    return torch.from_numpy(_border_index(n, before, after, border)).to(device)


def pad(
    x: Tensor, top: int, bottom: int, left: int, right: int, border: str = "reflect",
    value: float = 0.0,
) -> Tensor:
    """Pad the last two dims of ``x`` with a border mode (see the module docstring).

    Any pad width works, also one larger than the image.
    """
    check_border(border)
    if top == bottom == left == right == 0:
        return x
    h, w = x.shape[-2], x.shape[-1]
    if border == "constant":
        return F.pad(x, (left, right, top, bottom), mode="constant", value=value)
    # torch's own padding is fastest; it covers reflect/circular only while pads fit the image.
    if border == "replicate" or (
        border == "reflect" and max(top, bottom) < h and max(left, right) < w
    ) or (border == "circular" and max(top, bottom) <= h and max(left, right) <= w):
        if x.dim() == 4:
            return F.pad(x, (left, right, top, bottom), mode=border)
        return F.pad(x.unsqueeze(0), (left, right, top, bottom), mode=border).squeeze(0)
    rows = border_index(h, top, bottom, border, x.device)
    cols = border_index(w, left, right, border, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def kernel_pads(kh: int, kw: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that anchors a kh x kw kernel at (kh//2, kw//2)."""
    return kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2


def _depthwise(x: Tensor, kernel: Tensor) -> Tensor:
    c = x.shape[1]
    weight = kernel.to(dtype=x.dtype, device=x.device).expand(c, 1, *kernel.shape[-2:])
    return F.conv2d(x, weight, groups=c)


def filter2d(
    x: Tensor, kernel: Tensor, border: str = "reflect", value: float = 0.0
) -> Tensor:
    """Cross-correlate every channel of ``x`` with one 2-D kernel; output size = input size.

    Args:
        x: float image (B, C, H, W) or (C, H, W).
        kernel: (kh, kw) float tensor, any sides (odd or even).
        border: border mode; value: fill of the constant border.

    Returns:
        float tensor of the same shape; equals ``cv2.filter2D(x, -1, kernel, borderType=...)``
        up to float rounding.

    Correlation, not convolution: a kernel whose one weight sits right of the centre reads
    the right neighbour, so an impulse moves left (with the zero border here):

    >>> x = torch.zeros(1, 1, 3, 3); x[0, 0, 1, 1] = 1
    >>> k = torch.tensor([[0., 0., 0.], [0., 0., 1.], [0., 0., 0.]])
    >>> filter2d(x, k, border="constant")[0, 0]
    tensor([[0., 0., 0.],
            [1., 0., 0.],
            [0., 0., 0.]])
    """
    x4, added = check_image(x)
    kernel = _check_kernel(kernel)
    xp = pad(x4, *kernel_pads(*kernel.shape), border=border, value=value)
    out = _depthwise(xp, kernel)
    return out.squeeze(0) if added else out


def sep_filter2d(
    x: Tensor, kx: Tensor, ky: Tensor, border: str = "reflect", value: float = 0.0
) -> Tensor:
    """Separable correlation: the row kernel ``kx`` (kw,) then the column kernel ``ky`` (kh,).

    Equals ``filter2d(x, ky[:, None] * kx[None, :])`` up to float rounding (also at the borders,
    since both passes pad the same way) and ``cv2.sepFilter2D``.
    """
    x4, added = check_image(x)
    kx, ky = kx.reshape(-1), ky.reshape(-1)
    top, bottom, left, right = kernel_pads(ky.numel(), kx.numel())
    out = _depthwise(pad(x4, 0, 0, left, right, border, value), kx.view(1, -1))
    # The rows above/below the image are constant rows that went through the row pass too.
    col_value = value * float(kx.sum()) if border == "constant" else value
    out = _depthwise(pad(out, top, bottom, 0, 0, border, col_value), ky.view(-1, 1))
    return out.squeeze(0) if added else out


def _check_kernel(kernel: Tensor) -> Tensor:
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel should be a torch.Tensor (kh, kw). Got {type(kernel).__name__}")
    if kernel.dim() != 2 or kernel.numel() == 0:
        raise ValueError(f"kernel should be 2-D and not empty. Got shape {tuple(kernel.shape)}")
    return kernel


def pool_size(v: int | tuple[int, int], what: str = "size") -> tuple[int, int]:
    """An int for both axes (any integer scalar: a NumPy int, a 0-d tensor), or (rows, cols)
    as torch's pooling takes them."""
    try:
        pair = (operator.index(v),) * 2
    except TypeError:
        try:
            pair = tuple(operator.index(n) for n in v)  # type: ignore[union-attr]
        except TypeError:
            pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what} should be a positive int or (height, width). Got {v!r}")
    return pair  # type: ignore[return-value]


def pool_pads(h: int, w: int, size: int | tuple[int, int],
              stride: int | tuple[int, int]) -> tuple[int, int]:
    """Bottom and right padding so that windows cover every pixel (ceil mode); ``size`` and
    ``stride`` an int or (rows, cols)."""
    (kh, kw), (sh, sw) = pool_size(size, "size"), pool_size(stride, "stride")

    def need(n: int, k: int, s: int) -> int:
        if n <= k:
            return k - n
        return (math.ceil((n - k) / s) * s + k) - n

    return need(h, kh, sh), need(w, kw, sw)


def _pool(x: Tensor, size: int | tuple[int, int], stride: int | tuple[int, int] | None,
          border: str, value: float, op) -> Tensor:
    x4, added = check_image(x)
    k = pool_size(size, "size")
    s = pool_size(stride, "stride") if stride else k
    ph, pw = pool_pads(x4.shape[-2], x4.shape[-1], k, s)
    if s[0] > k[0] or s[1] > k[1]:
        # Windows with gaps between them read only some rows or columns: gather those (the
        # border rule gives the ones past the edge) and pool them side by side. Padding the
        # whole image made maxpool(size=2, stride=18000) of a 52x36 image use 4.2 GB.
        x4 = _window_lines(x4, 2, k[0], s[0], ph, border, value) if s[0] > k[0] else \
            pad(x4, 0, ph, 0, 0, border, value)
        x4 = _window_lines(x4, 3, k[1], s[1], pw, border, value) if s[1] > k[1] else \
            pad(x4, 0, 0, 0, pw, border, value)
        out = op(x4, k, (min(s[0], k[0]), min(s[1], k[1])))
    else:
        out = op(pad(x4, 0, ph, 0, pw, border, value), k, s)
    return out.squeeze(0) if added else out


def _window_lines(x: Tensor, dim: int, size: int, stride: int, extra: int, border: str,
                  value: float) -> Tensor:
    """The lines along ``dim`` that windows of ``size`` every ``stride`` read, window after
    window, from the axis extended by ``extra`` past its end by the border rule."""
    n = x.shape[dim]
    starts = range(0, n + extra - size + 1, stride)
    pos = np.array([s + j for s in starts for j in range(size)], dtype=np.int64)
    if border == "constant":
        src = np.minimum(pos, n - 1)
    else:
        src = _border_index(n, 0, int(pos.max()) + 1 - n if pos.max() >= n else 0, border)[pos]
    out = x.index_select(dim, torch.from_numpy(src).to(x.device))
    if border == "constant" and (pos >= n).any():
        shape = [1] * x.dim()
        shape[dim] = len(pos)
        outside = torch.from_numpy(pos >= n).to(x.device).view(shape)
        out = torch.where(outside, torch.full((), value, dtype=x.dtype, device=x.device), out)
    return out


def avg_pool(
    x: Tensor, size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
    border: str = "reflect", value: float = 0.0,
) -> Tensor:
    """Mean of each window of ``size`` (an int, or (rows, cols) as ``F.avg_pool2d`` takes it),
    stepping by ``stride`` (the same forms; default ``size``).

    Output side along each axis: ``ceil((n - k) / s) + 1`` (1 when n <= k). Windows that run
    past the bottom/right edge read the border mode's pixels; when ``n - k`` is a multiple of
    the stride this equals ``nn.AvgPool2d(size, stride)`` exactly.
    """
    return _pool(x, size, stride, border, value, lambda t, k, s: F.avg_pool2d(t, k, s))


def max_pool(
    x: Tensor, size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
    border: str = "reflect", value: float = 0.0,
) -> Tensor:
    """Max of each window; sizes as :func:`avg_pool`."""
    return _pool(x, size, stride, border, value, lambda t, k, s: F.max_pool2d(t, k, s))


def median_blur(
    x: Tensor, size: int, border: str = "reflect", value: float = 0.0, rows_per_chunk: int = 0
) -> Tensor:
    """Median of each ``size`` x ``size`` neighbourhood (the lower median for even sizes).

    Works in row chunks so that memory stays near ``size**2`` times one chunk, not the image.
    With ``border="replicate"`` it equals ``cv2.medianBlur``.
    """
    x4, added = check_image(x)
    b, c, h, w = x4.shape
    top, bottom, left, right = kernel_pads(size, size)
    xp = pad(x4, top, bottom, left, right, border, value)
    if size == 3:
        out = _median3x3(xp, h, w)
        return out.squeeze(0) if added else out
    out = _ranked(xp, size, (size * size - 1) // 2, rows_per_chunk)  # the lower median
    return out.squeeze(0) if added else out


def _ranked(xp: Tensor, size: int, rank: int, rows_per_chunk: int = 0) -> Tensor:
    """The ``rank``-th smallest of every ``size`` x ``size`` window of the padded ``xp``, a
    chunk of rows at a time, so that memory stays near ``size**2`` times one chunk."""
    b, c = xp.shape[:2]
    h, w = xp.shape[-2] - size + 1, xp.shape[-1] - size + 1
    k = size * size
    if rows_per_chunk <= 0:
        # about 64 MB of unfolded values per chunk
        rows_per_chunk = max(1, (16 << 20) // max(1, b * c * w * k))
    out = xp.new_empty((b, c, h, w))
    for r0 in range(0, h, rows_per_chunk):
        r1 = min(h, r0 + rows_per_chunk)
        band = xp[..., r0 : r1 + size - 1, :]
        win = band.unfold(-2, size, 1).unfold(-2, size, 1)  # (b, c, rows, w, size, size)
        out[..., r0:r1, :] = win.reshape(b, c, r1 - r0, w, k).kthvalue(rank + 1, dim=-1).values
    return out


def rank_filter(x: Tensor, size: int, rank: int, border: str = "replicate",
                value: float = 0.0) -> Tensor:
    """The ``rank``-th smallest (0-based) of the ``size`` x ``size`` neighbourhood, as Pillow's
    ``ImageFilter.RankFilter(size, rank)`` (which extends the image by replicating its edge:
    ``border="replicate"``). rank 0 is the minimum, ``size**2 - 1`` the maximum. Works in row
    chunks as :func:`median_blur`; differentiable (the gradient goes to the chosen pixel)."""
    x4, added = check_image(x)
    if not 0 <= rank < size * size:
        raise ValueError(f"rank should be in [0, {size * size - 1}] for size {size}. Got {rank}")
    top, bottom, left, right = kernel_pads(size, size)
    out = _ranked(pad(x4, top, bottom, left, right, border, value), size, rank)
    return out.squeeze(0) if added else out


def _sort3(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    mid, top = torch.minimum(hi, c), torch.maximum(hi, c)
    return torch.minimum(lo, mid), torch.maximum(lo, mid), top


def _med3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def _median3x3(xp: Tensor, h: int, w: int) -> Tensor:
    """Median of every 3x3 window of the padded ``xp`` by min/max alone: sort each column of
    three (shared by the three windows that hold it); the median of the nine is then the
    median of (the largest column minimum, the median of the column medians, the smallest
    column maximum). Exact, and differentiable as min and max are."""
    lo, mid, hi = _sort3(xp[..., 0:h, :], xp[..., 1:h + 1, :], xp[..., 2:h + 2, :])
    cols = (slice(0, w), slice(1, w + 1), slice(2, w + 2))
    a, b, c = (lo[..., s] for s in cols)
    most_low = torch.maximum(torch.maximum(a, b), c)
    a, b, c = (hi[..., s] for s in cols)
    least_high = torch.minimum(torch.minimum(a, b), c)
    return _med3(most_low, _med3(*(mid[..., s] for s in cols)), least_high)


def gaussian_kernel1d(ksize: int, sigma: float, dtype=torch.float64) -> Tensor:
    """Normalised Gaussian taps, as ``cv2.getGaussianKernel(ksize, sigma)`` for sigma > 0
    (:func:`convkit.kernels.specs.gaussian_taps`, as a tensor)."""
    return torch.from_numpy(gaussian_taps(ksize, sigma)).to(dtype)




def to_float(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """An integer image to float on the [0, 1] scale (x / 255 for uint8, x / 65535 for uint16).

    Float input is returned as it is (cast to ``dtype``).
    """
    if x.is_floating_point():
        return x.to(dtype)
    if x.dtype not in (torch.uint8, torch.uint16):
        raise TypeError(f"integer images should be uint8 or uint16. Got {x.dtype}")
    return x.to(dtype) / INT_MAX[dtype_name(x.dtype)]


def to_integer(x: Tensor, dtype: torch.dtype, negative: str = "clip") -> Tensor:
    """A float image on the [0, 1] scale to ``dtype``, rounding to nearest (ties to even) and
    saturating like OpenCV's ``saturate_cast``.

    ``negative`` maps a signed response first: ``clip`` (negatives become 0), ``abs`` (absolute
    value) or ``offset`` (add mid-grey, 128/255, so that zero response is grey).
    """
    if negative == "abs":
        x = x.abs()
    elif negative == "offset":
        x = x + OFFSET
    elif negative != "clip":
        raise ValueError(f"Invalid negative {negative!r}. Expected one of abs, offset, clip.")
    top = INT_MAX.get(dtype_name(dtype))
    if top is None:
        raise TypeError(f"integer images should be uint8 or uint16. Got {dtype}")
    return torch.round(x * top).clamp_(0, top).to(dtype)


# --- morphology (see convkit.kernels.morphology for the rules) ------------------------------------
def _morph_pass(x: Tensor, fp: np.ndarray, anchor: tuple[int, int], kind: str, border: str,
          value: float) -> Tensor:
    """One erosion (``kind`` "min") or dilation ("max") of (B, C, H, W) ``x``."""
    kh, kw = fp.shape
    top, left = anchor
    bottom, right = kh - 1 - top, kw - 1 - left
    if border == "none":
        fill = float("inf") if kind == "min" else float("-inf")
        xp = torch.nn.functional.pad(x, (left, right, top, bottom), value=fill)
    else:
        xp = pad(x, top, bottom, left, right, border, value)
    h, w = x.shape[-2:]
    out = None
    pick = torch.minimum if kind == "min" else torch.maximum
    for dy, dx in zip(*np.nonzero(fp), strict=True):
        part = xp[..., dy:dy + h, dx:dx + w]
        out = part if out is None else pick(out, part)
    return out


def _morph_passes(x: Tensor, fp: np.ndarray, kind: str, iterations: int, border: str,
            value: float) -> Tensor:
    fp, iterations, anchor = rect_iterations(fp, iterations)
    for _ in range(iterations):
        x = _morph_pass(x, fp, anchor, kind, border, value)
    return x


def morphology(x: Tensor, op: str, fp: np.ndarray, iterations: int = 1, border: str = "none",
               value: float = 0.0) -> Tensor:
    """``op`` (see :data:`OPS`) on a float image (B, C, H, W) or (C, H, W) with the footprint
    ``fp`` (an (h, w) 0/1 array anchored at its centre), as ``cv2.morphologyEx``. ``value`` is
    the constant border's fill on the image's scale. Differentiable."""
    x4, added = check_image(x)
    out = compose(op, x4, lambda t: _morph_passes(t, fp, "min", iterations, border, value),
                  lambda t: _morph_passes(t, fp, "max", iterations, border, value))
    return out.squeeze(0) if added else out


def magnitude(gx: Tensor, gy: Tensor) -> Tensor:
    """``sqrt(gx**2 + gy**2)``; where it is 0 its gradient is 0, not NaN (sqrt's slope is
    infinite there)."""
    sq = gx * gx + gy * gy
    if not sq.requires_grad:
        return sq.sqrt_()
    nonzero = sq > 0
    return torch.where(nonzero, sq, torch.ones_like(sq)).sqrt() * nonzero.to(sq.dtype)


def unsharp_mask(x: Tensor, blurred: Tensor, amount: float, threshold: float) -> Tensor:
    """``x + amount * d`` where ``|d| >= threshold``, else ``x``; ``d = x - blurred``
    (``threshold`` on the image's scale)."""
    d = x - blurred
    return x + amount * d * (d.abs() >= threshold).to(d.dtype)


# --- the named filters as functions: the twins of the registry's modules ---------------------
# Each builds the module the registry builds from the same leaves (nn.builders) and runs its
# plain definition, so function and module agree within float rounding (the module may run
# the same numbers on OpenCV).
def named_filter(x: Tensor, name: str, **params: Any) -> Tensor:
    """``x`` (B, C, H, W) or (C, H, W), float, through the registry's fixed filter ``name``
    with ``params`` (as ``convkit.get_filter(name, **params)(x)``; the same parameter checks
    and messages). Pooling, unsharp masking with a threshold and learned filters are modules
    only: use :func:`avg_pool`, :func:`max_pool`, :func:`unsharp` or the module.
    """
    from ..kernels.registry import get_info
    from .builders import from_leaves  # (builders -> modules -> this module)
    from .modules import reference

    leaves = get_info(name).leaves(**{k: v for k, v in params.items() if v is not None})
    if leaves is None:
        raise ValueError(f"{name}: not a fixed filter; use convkit.get_filter({name!r}) (a module)")
    return reference(from_leaves(leaves).to(x.device, x.dtype), x)


def gaussian_blur(x: Tensor, sigma: float | tuple[float, float] | None = None,
                  ksize: int | tuple[int, int] | None = None, border: str = "reflect",
                  value: float = 0.0) -> Tensor:
    """Gaussian blur as ``cv2.GaussianBlur``: the kernel side from ``sigma`` (odd,
    ``round(6 sigma + 1)``), or sigma from ``ksize`` (OpenCV's rule); pairs are (x, y), as
    OpenCV's. The twin of ``convkit.get_filter("gaussian", ...)``. ``value``: the constant
    border's fill in 8-bit grey levels."""
    return named_filter(x, "gaussian", sigma=_listed(sigma), ksize=_listed(ksize),
                        border=border, value=value)


def box_blur(x: Tensor, size: int | tuple[int, int] = 3, border: str = "reflect",
             value: float = 0.0) -> Tensor:
    """Mean over a ``size`` window (an int, or (width, height)), as ``cv2.blur``."""
    return named_filter(x, "box", size=_listed(size), border=border, value=value)


def sharpen(x: Tensor, amount: float = 1.0, border: str = "reflect", value: float = 0.0
            ) -> Tensor:
    """The 3x3 sharpen kernel of ``filters/sharpen.toml``, its high-pass scaled by ``amount``."""
    return named_filter(x, "sharpen", amount=amount, border=border, value=value)


def gradient_magnitude(x: Tensor, kernel: str = "sobel", border: str | None = None,
                       value: float = 0.0) -> Tensor:
    """``sqrt(gx**2 + gy**2)`` of a gradient kernel file: ``sobel`` (as cv2.Sobel dx and dy
    with cv2.magnitude), ``scharr``, ``prewitt``, or scikit-image's ``roberts`` and ``farid``
    (their rms magnitude). ``border`` None: the kernel file's own."""
    return named_filter(x, kernel, border=border, value=value)


def unsharp(x: Tensor, sigma: float = 1.0, amount: float = 1.0, threshold: float = 0.0,
            ksize: int | None = None, border: str = "reflect", value: float = 0.0) -> Tensor:
    """Unsharp masking: ``x + amount * (x - gaussian(x))`` where that difference is at least
    ``threshold`` (8-bit grey levels), else ``x``."""
    if threshold:
        from ..kernels.registry import get_info

        get_info("unsharp").check_params((), {k: v for k, v in (
            ("sigma", sigma), ("amount", amount), ("threshold", threshold), ("ksize", ksize),
            ("border", border), ("value", value)) if v is not None})
        blurred = gaussian_blur(x, sigma, ksize, border, value)
        return unsharp_mask(x, blurred, amount, threshold / 255.0)
    return named_filter(x, "unsharp", sigma=sigma, amount=amount, ksize=ksize, border=border,
                        value=value)


def _listed(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
