"""Morphology's rules, torch-free: structuring elements, reach, and OpenCV's execution.

``erode`` takes the minimum and ``dilate`` the maximum of the pixels under a structuring element
(a footprint of 0/1, anchored at its centre); ``open`` (opening) is erode then dilate,
``close`` dilate then erode, ``gradient`` dilate minus erode, ``tophat`` the image minus its
opening, ``blackhat`` its closing minus the image. ``iterations`` repeats each erosion and
dilation (an opening of 2 iterations is erode, erode, dilate, dilate), as ``cv2.morphologyEx``.
Footprints are OpenCV's ``getStructuringElement`` shapes (rect, cross, ellipse) or any 0/1
matrix.

Borders: ``none`` (the default, OpenCV's) lets no pixel outside the image take part: the
border is a constant that never wins (+inf for an erosion, -inf for a dilation). The other
modes extend the image by their rule before each erosion or dilation; ``constant`` with
``value`` (in 8-bit grey levels) does take part.

Results equal ``cv2.morphologyEx`` at every pixel for uint8, uint16 and float32 images. The
plan runs them on OpenCV (:func:`convkit.backends.opencv.morphology`); the torch definition, for
autograd and other devices, is :func:`convkit.nn.functional.morphology` and the module
:class:`convkit.nn.modules.Morphology`.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["OPS", "SHAPES", "footprint", "reach", "rect_iterations", "compose"]

OPS = ("erode", "dilate", "open", "close", "gradient", "tophat", "blackhat")
SHAPES = {"rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS, "ellipse": cv2.MORPH_ELLIPSE}
# erosions and dilations each operation makes, one after the other
_PASSES = {"erode": 1, "dilate": 1, "open": 2, "close": 2, "gradient": 1, "tophat": 2,
           "blackhat": 2}


def footprint(size: int | list[int], shape: str = "rect", weights=None) -> np.ndarray:
    """The structuring element as a uint8 0/1 array: ``weights`` (any 0/1 matrix) or OpenCV's
    ``getStructuringElement(shape, (w, h))``, ``size`` an int for both or [w, h] (OpenCV's
    Size, width first)."""
    if weights is not None:
        fp = np.asarray(weights, dtype=np.float64)
        if fp.ndim != 2 or not np.isin(fp, (0, 1)).all() or not fp.any():
            raise ValueError("footprint should be a matrix of 0 and 1 with at least one 1")
        return fp.astype(np.uint8)
    w, h = (size[0], size[1]) if isinstance(size, list | tuple) else (size, size)
    return cv2.getStructuringElement(SHAPES[shape], (int(w), int(h)))


def reach(fp: np.ndarray, op: str, iterations: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixels of input each output pixel depends on."""
    kh, kw = fp.shape
    n = _PASSES[op] * iterations
    return (n * (kh // 2), n * (kh - 1 - kh // 2), n * (kw // 2), n * (kw - 1 - kw // 2))


def rect_iterations(fp: np.ndarray, iterations: int
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


def compose(op: str, x, erode, dilate):
    """``op`` of ``x`` made of its erosions and dilations (``erode(x)``, ``dilate(x)``: any
    array type): opening is erode then dilate, closing the reverse, the gradient their
    difference, the top hats the image against its opening or closing."""
    if op == "erode":
        return erode(x)
    if op == "dilate":
        return dilate(x)
    if op in ("open", "tophat"):
        opened = dilate(erode(x))
        return opened if op == "open" else x - opened
    if op in ("close", "blackhat"):
        closed = erode(dilate(x))
        return closed if op == "close" else closed - x
    if op == "gradient":
        return dilate(x) - erode(x)
    raise ValueError(f"Invalid morphology {op!r}. Expected one of {', '.join(OPS)}")
