"""Windows that are not square: gaussian(sigma=[sx, sy], ksize=[w, h]) and box(size=[w, h]),
against OpenCV (Size is width first, as in OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import convkit

BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE,
           "symmetric": cv2.BORDER_REFLECT, "constant": cv2.BORDER_CONSTANT}


def image(seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((47, 61, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("border", list(BORDERS))
@pytest.mark.parametrize("sigma,ksize", [([3, 1], None), ([2, 0.5], [9, 5]), ([0.8, 2.5], [3, 15])])
def test_anisotropic_gaussian(border, sigma, ksize):
    """Against OpenCV's float64 result: convkit rounds it correctly (within half a level);
    OpenCV's own 8-bit path is a fixed-point approximation up to 1.8 levels off it."""
    a = image()
    spec = f"gaussian(sigma={sigma}, border={border}" + (f", ksize={ksize})" if ksize else ")")
    got = convkit.process(a, spec).astype(np.float64)
    w = ksize[0] if ksize else round(6 * sigma[0] + 1) | 1
    h = ksize[1] if ksize else round(6 * sigma[1] + 1) | 1
    exact = cv2.GaussianBlur(a.astype(np.float64), (w, h), sigma[0], sigmaY=sigma[1],
                             borderType=BORDERS[border])
    assert np.abs(got - exact).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("border", list(BORDERS))
@pytest.mark.parametrize("size", [[7, 3], [1, 9], [4, 6]])
def test_rectangular_box(border, size):
    a = image(1)
    got = convkit.process(a, f"box(size={size}, border={border})")
    exact = cv2.blur(a.astype(np.float64), tuple(size), borderType=BORDERS[border])
    assert np.abs(got - exact).max() <= 0.5 + 1e-6
    if size[0] % 2 and size[1] % 2:  # odd sides: the same anchor as OpenCV's
        assert np.array_equal(got, cv2.blur(a, tuple(size), borderType=BORDERS[border]))


def test_pair_parameters_print_and_check():
    assert str(convkit.chain("gaussian(sigma=[2, 2])")) == "gaussian(sigma=2.0)"
    assert str(convkit.chain("box(size=[7, 3])")) == "box(size=[7, 3])"
    with pytest.raises(ValueError, match=r"box: size should be a number or \[x, y\]"):
        convkit.chain("box(size=[1, 2, 3])")
    with pytest.raises(ValueError, match="gaussian: sigma should be > 0"):
        convkit.chain("gaussian(sigma=[1, 0])")
