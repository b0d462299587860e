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
    with pytest.raises(ValueError, match="gaussian: sigma should be >= 0"):
        convkit.chain("gaussian(sigma=[1, -1])")


@pytest.mark.parametrize("border", list(BORDERS))
@pytest.mark.parametrize("ksize", [3, 5, 7, 9, 13, [5, 9], [11, 3]])
def test_gaussian_sigma_from_ksize_as_opencv(border, ksize):
    """``gaussian(ksize=k)`` without sigma is cv2.GaussianBlur(img, (k, k), 0): its fixed taps
    for 3 to 9 and its sigma rule above (taps checked against cv2.getGaussianKernel(k, 0));
    the image against OpenCV's float64 result (correctly rounded) and its 8-bit one (1 level)."""
    from convkit.plan.leaves import opencv_gaussian_taps

    w, h = (ksize, ksize) if isinstance(ksize, int) else ksize
    for k in (w, h):
        assert np.allclose(opencv_gaussian_taps(k),
                           cv2.getGaussianKernel(k, 0, ktype=cv2.CV_64F).ravel(),
                           rtol=0, atol=1e-15)
    a = image(2)
    got = convkit.process(a, f"gaussian(ksize={ksize}, border={border})").astype(np.float64)
    exact = cv2.GaussianBlur(a.astype(np.float64), (w, h), 0, borderType=BORDERS[border])
    assert np.abs(got - exact).max() <= 0.5 + 1e-6
    # OpenCV's 8-bit path is fixed-point, up to 1.8 levels off its float64 result: 2 levels
    ref8 = cv2.GaussianBlur(a, (w, h), 0, borderType=BORDERS[border])
    assert np.abs(got - ref8).max() <= 2


def test_gaussian_without_sigma_or_ksize_is_sigma_1():
    a = image(3)
    assert np.array_equal(convkit.process(a, "gaussian"), convkit.process(a, "gaussian(sigma=1)"))


@pytest.mark.parametrize("sigma, ksize, cv_sigmas", [
    (0, 5, (0, 0)), ([0, 0], [7, 3], (0, 0)), ([2, 0], [9, 5], (2, 2)),
    ([0, 1.5], [5, 9], (0, 1.5)), ([2.5, 0], None, (2.5, 2.5))])
def test_gaussian_sigma_0_as_opencv(sigma, ksize, cv_sigmas):
    """cv2.GaussianBlur's zeros: a sigmaX of 0 comes from the width, a sigmaY of 0 is sigmaX
    (itself from the height when 0)."""
    a = image(7)
    spec = f"gaussian(sigma={sigma}" + (f", ksize={ksize})" if ksize else ")")
    got = convkit.process(a, spec).astype(np.float64)
    sx, sy = cv_sigmas
    w, h = ksize if isinstance(ksize, list) else (ksize, ksize) if ksize else (
        round(6 * sx + 1) | 1, round(6 * sy + 1) | 1)
    exact = cv2.GaussianBlur(a.astype(np.float64), (w, h), sx, sigmaY=sy,
                             borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(got - exact).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("border", list(BORDERS))
@pytest.mark.parametrize("ksize", [1, 3, 5, 7])
@pytest.mark.parametrize("dx, dy", [(1, 0), (0, 1)])
def test_sobel_apertures_as_opencv(border, ksize, dx, dy):
    """``sobel(ksize=k)`` equals cv2.Sobel on float32 (to float32 rounding: the sums run in
    another order) and exactly as |response| rounded on uint8."""
    f = image(4).astype(np.float32) / 255
    got = convkit.process(f, f"sobel(dx={dx}, dy={dy}, ksize={ksize}, border={border}, "
                             "negative=clip)")
    ref = cv2.Sobel(f, cv2.CV_32F, dx, dy, ksize=ksize, borderType=BORDERS[border])
    assert np.abs(got - ref).max() <= 2e-6
    a = image(5)
    got8 = convkit.process(a, f"sobel(dx={dx}, dy={dy}, ksize={ksize}, border={border})")
    ref8 = np.abs(cv2.Sobel(a.astype(np.float64), cv2.CV_64F, dx, dy, ksize=ksize,
                            borderType=BORDERS[border]))
    assert np.abs(got8 - np.clip(np.round(ref8), 0, 255)).max() == 0


def test_sobel_aperture_is_checked():
    with pytest.raises(ValueError, match=r"sobel: ksize should be 1, 3, 5 or 7"):
        convkit.chain("sobel(ksize=4)")
    with pytest.raises(ValueError, match=r"sobel: ksize should be <= 7"):
        convkit.chain("sobel(ksize=9)")


@pytest.mark.parametrize("name, dx, dy, col, row", [
    ("sobel", 1, 0, [1, 2, 1], [-1, 0, 1]), ("sobel", 0, 1, [-1, 0, 1], [1, 2, 1]),
    ("scharr", 1, 0, [3, 10, 3], [-1, 0, 1]), ("prewitt", 0, 1, [-1, 0, 1], [1, 1, 1])])
def test_derivatives_run_on_their_integer_factors(name, dx, dy, col, row):
    """scikit-image's test_sobel_vertical case, a vertical step of 0 and 1 (float32): the
    separable path runs the integer factors, so the responses are exact integers (an SVD's
    factors gave 0.99999994 for 1)."""
    from convkit.plan.specs import plan_spec

    (op,) = plan_spec(f"{name}(dx={dx}, dy={dy})").ops
    c, r = op.svd[0]
    assert np.array_equal(np.outer(c, r), np.outer(col, row))
    assert np.all(c == np.round(c)) and np.all(r == np.round(r))
    step = np.zeros((20, 20), np.float32)
    if dx:
        step[:, 10:] = 1
    else:
        step[10:, :] = 1
    from convkit.plan.rules import options

    with options(method="separable"):
        got = convkit.process(step, f"{name}(dx={dx}, dy={dy}, negative=clip)")
    assert np.array_equal(got, np.round(got)) and got.max() == abs(sum(col) if dx else sum(row))


def test_sobel_magnitude_of_aperture_1_reaches_both_ways():
    """ksize 1: d/dx is 1x3 and d/dy 3x1, so the magnitude reads a row above and below too;
    tiles filtered with that halo equal the whole image."""
    import torch

    from convkit.pipeline.tiling import apply_tiled

    m = convkit.chain("sobel(ksize=1)")
    assert m[0].reach == (1, 1, 1, 1)
    x = torch.from_numpy(image(6)).permute(2, 0, 1)[None]
    whole = convkit.process(x, m)
    assert torch.equal(apply_tiled(m, x, tile=16), whole)  # (194 levels apart at the seams)
    f = image(6).astype(np.float64)
    gx = cv2.Sobel(f, cv2.CV_64F, 1, 0, ksize=1, borderType=cv2.BORDER_REFLECT_101)
    gy = cv2.Sobel(f, cv2.CV_64F, 0, 1, ksize=1, borderType=cv2.BORDER_REFLECT_101)
    ref = np.clip(np.round(np.hypot(gx, gy)), 0, 255)
    assert np.abs(whole[0].permute(1, 2, 0).numpy() - ref).max() <= 1


@pytest.mark.parametrize("border", ["reflect", "replicate", "symmetric"])
def test_box_of_even_area_is_the_nearest_integer(border):
    """A uint8 box mean is the exact mean rounded to nearest (within half a level of it; ties
    either way, as the float32 mean gives them). OpenCV's own 8-bit blur is not, for windows of
    even area: 1x2 up to a whole level off, 4x4 0.5625; convkit sends those through the float32
    mean. Tensors and arrays, planes and interleaved images alike."""
    import torch

    a = np.random.default_rng(7).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    for size in ([1, 2], [2, 1], [2, 2], [4, 2], [4, 4], [8, 8], [6, 6], [5, 2], [16, 16],
                 [3, 3], [7, 5]):
        exact = cv2.blur(a.astype(np.float64), tuple(size), borderType=BORDERS[border])
        spec = f"box(size={size}, border={border})"
        planar = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
        for got in (convkit.process(a, spec),
                    convkit.process(planar, spec)[0].permute(1, 2, 0).numpy()):
            assert np.abs(got - exact).max() <= 0.5 + 1e-6, (size, border)
