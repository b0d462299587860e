"""Morphology: erosion, dilation and what they compose into, as OpenCV defines them.

``erode`` takes the minimum and ``dilate`` the maximum of the pixels under a structuring element
(a footprint of 0/1, anchored at its centre); ``opening`` is erode then dilate, ``closing``
dilate then erode, ``morph_gradient`` dilate minus erode, ``tophat`` the image minus its
opening, ``blackhat`` its closing minus the image. ``iterations`` repeats each erosion and
dilation (an opening of 2 iterations is erode, erode, dilate, dilate), as ``cv2.morphologyEx``.
Footprints are OpenCV's ``getStructuringElement`` shapes (rect, cross, ellipse) or any 0/1
matrix.

Borders: ``none`` (the default, OpenCV's) lets no pixel outside the image take part: the
border is a constant that never wins (+inf for an erosion, -inf for a dilation). The other
modes extend the image by their rule before each erosion or dilation; ``constant`` with
``value`` (in 8-bit grey levels) does take part.

Results equal ``cv2.morphologyEx`` at every pixel for uint8, uint16 and float32 images: min,
max and the differences of two values of the image are exact in float32. On the CPU without
autograd the module runs OpenCV itself; otherwise a min/max over shifted copies of the padded
image, differentiable (the gradient flows to the pixel that wins).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from . import functional as KF
from .kernels import check_border
from .modules import Filter

__all__ = ["OPS", "SHAPES", "Morphology", "footprint", "morphology", "reach"]

OPS = ("erode", "dilate", "open", "close", "gradient", "tophat", "blackhat")
SHAPES = {"rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS, "ellipse": cv2.MORPH_ELLIPSE}
_CV_OPS = {"erode": cv2.MORPH_ERODE, "dilate": cv2.MORPH_DILATE, "open": cv2.MORPH_OPEN,
           "close": cv2.MORPH_CLOSE, "gradient": cv2.MORPH_GRADIENT,
           "tophat": cv2.MORPH_TOPHAT, "blackhat": cv2.MORPH_BLACKHAT}
_CV_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "symmetric": cv2.BORDER_REFLECT,
               "replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
# erosions and dilations each operation makes, one after the other
_PASSES = {"erode": 1, "dilate": 1, "open": 2, "close": 2, "gradient": 1, "tophat": 2,
           "blackhat": 2}


def footprint(size: int, shape: str = "rect", weights=None) -> np.ndarray:
    """The structuring element as a uint8 0/1 array: ``weights`` (any 0/1 matrix) or OpenCV's
    ``getStructuringElement(shape, (size, size))``."""
    if weights is not None:
        fp = np.asarray(weights, dtype=np.float64)
        if fp.ndim != 2 or not np.isin(fp, (0, 1)).all() or not fp.any():
            raise ValueError("footprint should be a matrix of 0 and 1 with at least one 1")
        return fp.astype(np.uint8)
    return cv2.getStructuringElement(SHAPES[shape], (size, size))


def reach(fp: np.ndarray, op: str, iterations: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixels of input each output pixel depends on."""
    kh, kw = fp.shape
    n = _PASSES[op] * iterations
    return (n * (kh // 2), n * (kh - 1 - kh // 2), n * (kw // 2), n * (kw - 1 - kw // 2))


def _rect_iterations(fp: np.ndarray, iterations: int
                     ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(footprint, passes, anchor): OpenCV runs a full rectangle of several iterations as one
    larger rectangle, anchored at the anchor times the iterations (the same result inside the
    image, not at a border with an extending mode), so this does too."""
    kh, kw = fp.shape
    if iterations > 1 and fp.all():
        big = np.ones((kh + (iterations - 1) * (kh - 1), kw + (iterations - 1) * (kw - 1)),
                      np.uint8)
        return big, 1, ((kh // 2) * iterations, (kw // 2) * iterations)
    return fp, iterations, (kh // 2, kw // 2)


def _pass(x: Tensor, fp: np.ndarray, anchor: tuple[int, int], kind: str, border: str,
          value: float) -> Tensor:
    """One erosion (``kind`` "min") or dilation ("max") of (B, C, H, W) ``x``."""
    kh, kw = fp.shape
    top, left = anchor
    bottom, right = kh - 1 - top, kw - 1 - left
    if border == "none":
        fill = float("inf") if kind == "min" else float("-inf")
        xp = torch.nn.functional.pad(x, (left, right, top, bottom), value=fill)
    else:
        xp = KF.pad(x, top, bottom, left, right, border, value)
    h, w = x.shape[-2:]
    out = None
    pick = torch.minimum if kind == "min" else torch.maximum
    for dy, dx in zip(*np.nonzero(fp), strict=True):
        part = xp[..., dy:dy + h, dx:dx + w]
        out = part if out is None else pick(out, part)
    return out


def _passes(x: Tensor, fp: np.ndarray, kind: str, iterations: int, border: str,
            value: float) -> Tensor:
    fp, iterations, anchor = _rect_iterations(fp, iterations)
    for _ in range(iterations):
        x = _pass(x, fp, anchor, kind, border, value)
    return x


def morphology(x: Tensor, op: str, fp: np.ndarray, iterations: int = 1, border: str = "none",
               value: float = 0.0) -> Tensor:
    """``op`` (see :data:`OPS`) on a float image (B, C, H, W) or (C, H, W) with the footprint
    ``fp`` (an (h, w) 0/1 array anchored at its centre), as ``cv2.morphologyEx``. ``value`` is
    the constant border's fill on the image's scale. Differentiable."""
    x4, added = KF.check_image(x)
    if op in ("erode", "dilate"):
        out = _passes(x4, fp, "min" if op == "erode" else "max", iterations, border, value)
    elif op in ("open", "tophat"):
        opened = _passes(_passes(x4, fp, "min", iterations, border, value), fp, "max",
                         iterations, border, value)
        out = opened if op == "open" else x4 - opened
    elif op in ("close", "blackhat"):
        closed = _passes(_passes(x4, fp, "max", iterations, border, value), fp, "min",
                         iterations, border, value)
        out = closed if op == "close" else closed - x4
    elif op == "gradient":
        out = (_passes(x4, fp, "max", iterations, border, value)
               - _passes(x4, fp, "min", iterations, border, value))
    else:
        raise ValueError(f"Invalid morphology {op!r}. Expected one of {', '.join(OPS)}")
    return out.squeeze(0) if added else out


def morphology_cv(planes: np.ndarray, op: str, fp: np.ndarray, iterations: int, border: str,
                  value: float) -> np.ndarray:
    """``op`` on a (N, H, W) array of planes with OpenCV (uint8, uint16 or float32);
    ``value`` on the array's scale. Circular extends the image by the operation's reach first
    (OpenCV's morphology has no wrapping border) and crops the result."""
    out = np.empty_like(planes)
    if border == "circular":
        t, b, left, r = reach(fp, op, iterations)
        n, h, w = planes.shape
        rows = np.arange(-t, h + b) % h
        cols = np.arange(-left, w + r) % w
        for i in range(n):
            wide = np.ascontiguousarray(planes[i][np.ix_(rows, cols)])
            res = cv2.morphologyEx(wide, _CV_OPS[op], fp, iterations=iterations,
                                   borderType=cv2.BORDER_REPLICATE)
            out[i] = res[t:t + h, left:left + w]
        return out
    if border == "none":
        kw = {"borderType": cv2.BORDER_CONSTANT}  # with OpenCV's never-winning value
    else:
        kw = {"borderType": _CV_BORDERS[border], "borderValue": value}
    for i in range(planes.shape[0]):
        out[i] = cv2.morphologyEx(np.ascontiguousarray(planes[i]), _CV_OPS[op], fp,
                                  iterations=iterations, **kw)
    return out


class Morphology(Filter):
    """``op`` (see :data:`OPS`) with a fixed structuring element, as a module.

    Args:
        op: erode, dilate, open, close, gradient, tophat or blackhat.
        fp: the footprint, an (h, w) array of 0/1 anchored at its centre (``h // 2``,
            ``w // 2``), as :func:`footprint` makes.
        iterations: erosions and dilations repeated, as OpenCV's ``iterations``.
        border: ``none`` (no outside pixel takes part; OpenCV's default) or a convkit border.
        value: the constant border's fill in 8-bit grey levels.

    Shape: (B, C, H, W) or (C, H, W) float -> the same; equals ``cv2.morphologyEx`` on
    uint8, uint16 and float32 images.
    """

    def __init__(self, op: str, fp: np.ndarray, iterations: int = 1, border: str = "none",
                 value: float = 0.0) -> None:
        super().__init__()
        if op not in OPS:
            raise ValueError(f"Invalid morphology {op!r}. Expected one of {', '.join(OPS)}")
        self.op = op
        self.fp = np.ascontiguousarray(fp, dtype=np.uint8)
        self.iterations = int(iterations)
        self.border = border if border == "none" else check_border(border)
        self.value = float(value)

    @property
    def reach(self) -> tuple[int, int, int, int]:
        return reach(self.fp, self.op, self.iterations)

    def _reference(self, x: Tensor) -> Tensor:
        value = self.value / 255.0
        if (x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad
                and not _tracing()):
            # OpenCV's morphology: the same min, max and differences, several times faster
            x4, added = KF.check_image(x)
            b, c, h, w = x4.shape
            planes = np.ascontiguousarray(x4.detach().numpy()).reshape(b * c, h, w)
            out = morphology_cv(planes, self.op, self.fp, self.iterations, self.border, value)
            y = torch.from_numpy(out.reshape(b, c, h, w))
            return y.squeeze(0) if added else y
        return morphology(x, self.op, self.fp, self.iterations, self.border, value)

    def filter_integer(self, x: Tensor) -> Tensor:
        """The operation on a (B, C, H, W) uint8 or uint16 CPU tensor with OpenCV, in its own
        units (the engine's route for integer images: no float copy; min, max and saturating
        differences are what the [0, 1] route rounds to). An image laid out channels last (as
        decoded files and NumPy images are) is filtered as it lies, all channels in one call,
        and comes back in that layout."""
        b, c, h, w = x.shape
        top = 255.0 if x.dtype == torch.uint8 else 65535.0
        value = self.value / 255.0 * top
        hwc = x.permute(0, 2, 3, 1)
        if c <= 4 and hwc.is_contiguous() and self.border != "circular":
            a = hwc.numpy()
            out = np.empty_like(a)
            kw = {"borderType": cv2.BORDER_CONSTANT} if self.border == "none" else \
                {"borderType": _CV_BORDERS[self.border], "borderValue": (value,) * 4}
            for i in range(b):
                res = cv2.morphologyEx(a[i], _CV_OPS[self.op], self.fp,
                                       iterations=self.iterations, **kw)
                out[i] = res.reshape(h, w, c)
            return torch.from_numpy(out).permute(0, 3, 1, 2)
        planes = np.ascontiguousarray(x.numpy()).reshape(b * c, h, w)
        out = morphology_cv(planes, self.op, self.fp, self.iterations, self.border, value)
        return torch.from_numpy(out.reshape(b, c, h, w))

    def integer_exact(self, negative: str) -> bool:
        """Whether :meth:`filter_integer` gives what rounding the float result with ``negative``
        gives: always, except a top hat or black hat (negative where the footprint is not
        symmetric) written with abs or offset, or a constant fill between integer levels."""
        top_hats = self.op in ("tophat", "blackhat")
        whole = self.border != "constant" or float(self.value).is_integer()
        return whole and (negative == "clip" or not top_hats)

    def _own_spec(self) -> tuple[str, dict]:
        return self.op, {"iterations": self.iterations, "border": self.border}


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or \
        torch.compiler.is_compiling()
