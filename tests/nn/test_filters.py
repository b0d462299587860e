"""Filters against OpenCV and Pillow, pixel by pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import CV_BORDERS, cv_filter2d, max_diff, needs_cuda
from PIL import Image, ImageFilter

import convkit
from convkit.nn import functional as KF

BORDERS = list(CV_BORDERS)
SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)


# --- kernel: uint8, uint16 and float against cv2.filter2D, every border --------------------
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (5, 2), (2, 5), (7, 7)])
def test_kernel_uint8_matches_filter2d(photo, rng, border, shape):
    k = rng.standard_normal(shape).astype(np.float32)
    k /= np.abs(k).sum()
    spec = f"kernel(weights={k.tolist()}, scale=1, border={border}, negative=clip)"
    ours = convkit.process(photo, spec)
    assert ours.dtype == np.uint8 and ours.shape == photo.shape
    assert max_diff(ours, cv_filter2d(photo, k, border)) <= 1


@pytest.mark.parametrize("border", BORDERS)
def test_kernel_uint16_and_float_match_filter2d(rng, border):
    img16 = rng.integers(0, 65536, (37, 41), dtype=np.uint16)
    ours16 = convkit.process(img16, convkit.Kernel2d(SHARPEN, border=border))
    assert ours16.dtype == np.uint16
    assert max_diff(ours16, cv_filter2d(img16, SHARPEN, border)) <= 1

    imgf = rng.random((37, 41, 3), dtype=np.float32)
    oursf = convkit.process(imgf, convkit.Kernel2d(SHARPEN, border=border))
    assert oursf.dtype == np.float32
    # float output is unclamped: sharpening noise leaves [0, 1]
    assert oursf.min() < 0 and oursf.max() > 1
    np.testing.assert_allclose(oursf, cv_filter2d(imgf, SHARPEN, border), atol=1e-5)


def test_constant_border_value_is_in_grey_levels(rng):
    img = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    k = np.ones((3, 3), np.float32) / 9
    ours = convkit.process(img, convkit.Kernel2d(k, border="constant", value=200))
    assert max_diff(ours, cv_filter2d(img, k, "constant", value=200)) <= 1


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (3, 2), (1, 6)])
def test_image_smaller_than_kernel(border, hw, rng):
    img = rng.random(hw, dtype=np.float32)
    k = rng.standard_normal((5, 4)).astype(np.float32)
    x = torch.from_numpy(img)[None, None]
    ours = KF.filter2d(x, torch.from_numpy(k), border)[0, 0].numpy()
    assert ours.shape == hw
    if border in ("circular",):
        # OpenCV cannot wrap by more than the image; compare with numpy's wrap padding
        padded = np.pad(img, ((2, 2), (2, 1)), mode="wrap")
        ref = np.array([[np.sum(padded[i:i + 5, j:j + 4] * k) for j in range(hw[1])]
                        for i in range(hw[0])], np.float32)
    elif border == "constant":
        padded = np.pad(img, ((2, 2), (2, 1)))
        ref = np.array([[np.sum(padded[i:i + 5, j:j + 4] * k) for j in range(hw[1])]
                        for i in range(hw[0])], np.float32)
    else:
        ref = cv2.filter2D(img, -1, k, borderType=CV_BORDERS[border])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_hand_computed_even_kernel_anchor():
    # 2x2 kernel anchored at (1, 1): out[y, x] = sum k[i, j] * in[y + i - 1, x + j - 1]
    x = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)
    k = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # picks the top-left neighbour
    out = KF.filter2d(x, k, "replicate")[0, 0]
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [3.0, 3.0, 4.0]])
    torch.testing.assert_close(out, expected)


# --- gaussian, box, sharpen, unsharp ----------------------------------------------------------
@pytest.mark.parametrize("border", ["reflect", "replicate", "symmetric", "constant"])
@pytest.mark.parametrize("sigma,ksize", [(0.8, None), (1.5, None), (3.0, None), (2.0, 5)])
def test_gaussian_matches_cv2(photo, border, sigma, ksize):
    k = ksize or 0
    ref = cv2.GaussianBlur(photo, (k, k), sigma, borderType=CV_BORDERS[border])
    spec = f"gaussian(sigma={sigma}, border={border})" if ksize is None else \
        f"gaussian(sigma={sigma}, ksize={ksize}, border={border})"
    assert max_diff(convkit.process(photo, spec), ref) <= 1


def test_gaussian_ksize_rule_is_opencvs():
    for sigma, expected in [(0.5, 5), (1.0, 7), (1.2, 9), (2.0, 13), (5.0, 31)]:
        assert KF.gaussian_ksize(sigma) == expected
        g = cv2.getGaussianKernel(expected, sigma)[:, 0]
        np.testing.assert_allclose(KF.gaussian_kernel1d(expected, sigma).numpy(), g, atol=1e-7)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 9])
def test_box_matches_cv2_blur(photo, size):
    ref = cv2.blur(photo, (size, size), borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(convkit.process(photo, f"box(size={size})"), ref) <= 1


@pytest.mark.parametrize("amount", [0.5, 1.0, 2.0])
def test_sharpen_amount(photo, amount):
    k = np.zeros((3, 3), np.float32)
    k[1, 1] = 1
    k += amount * (SHARPEN - k)
    ref = cv_filter2d(photo, k, "reflect")
    assert max_diff(convkit.process(photo, f"sharpen(amount={amount})"), ref) <= 1


def test_sharpen_kernel_and_brightness():
    m = convkit.get_filter("sharpen")
    np.testing.assert_array_equal(m.weight.numpy(), SHARPEN)
    assert float(m.weight.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("strength", [0.0, 0.5, 2.0])
def test_strength_blends_with_identity(photo, strength):
    k = np.ones((3, 3), np.float32) / 9
    ident = np.zeros_like(k)
    ident[1, 1] = 1
    ref = cv_filter2d(photo, ident + strength * (k - ident), "reflect")
    ours = convkit.process(photo, f"box(size=3, strength={strength})")
    assert max_diff(ours, ref) <= 1
    if strength == 0:
        np.testing.assert_array_equal(ours, photo)


def test_unsharp(photo):
    blur = cv2.GaussianBlur(photo.astype(np.float32), (0, 0), 2.0)
    ref = np.clip(np.round(photo + 1.5 * (photo - blur)), 0, 255)
    ours = convkit.process(photo, "unsharp(sigma=2, amount=1.5)")
    assert max_diff(ours, ref) <= 1
    # with a threshold, small differences are left alone
    d = photo - blur
    ref_t = np.clip(np.round(np.where(np.abs(d) >= 10, photo + 1.5 * d, photo)), 0, 255)
    ours_t = convkit.process(photo, "unsharp(sigma=2, amount=1.5, threshold=10)")
    assert (np.abs(ours_t.astype(int) - ref_t) > 1).mean() < 1e-3  # ties at the threshold


# --- edges ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cvfun", [("sobel", "Sobel"), ("scharr", "Scharr")])
@pytest.mark.parametrize("dx,dy", [(1, 0), (0, 1)])
def test_derivatives_match_cv2(photo, name, cvfun, dx, dy):
    f = photo.astype(np.float32) / 255
    if cvfun == "Sobel":
        ref = cv2.Sobel(f, cv2.CV_32F, dx, dy, ksize=3)
    else:
        ref = cv2.Scharr(f, cv2.CV_32F, dx, dy)
    ours = convkit.process(f, f"{name}(dx={dx}, dy={dy})")
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # to uint8: absolute value by default, like cv2.convertScaleAbs
    ours8 = convkit.process(photo, f"{name}(dx={dx}, dy={dy})")
    ref8 = cv2.convertScaleAbs(cv2.Sobel(photo, cv2.CV_32F, dx, dy) if cvfun == "Sobel"
                               else cv2.Scharr(photo, cv2.CV_32F, dx, dy))
    assert max_diff(ours8, ref8) <= 1
    off8 = convkit.process(photo, f"{name}(dx={dx}, dy={dy}, negative=offset)")
    ref_off = np.clip(np.round((ref * 255) + 128), 0, 255)
    assert max_diff(off8, ref_off) <= 1


def test_sobel_magnitude_and_prewitt(photo):
    f = photo.astype(np.float32) / 255
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1)
    np.testing.assert_allclose(convkit.process(f, "sobel"), np.sqrt(gx**2 + gy**2), atol=1e-5)
    kx = np.array([[-1, 0, 1]] * 3, np.float32)
    np.testing.assert_allclose(convkit.process(f, "prewitt(dx=1)"),
                               cv2.filter2D(f, -1, kx), atol=1e-5)


# scikit-image's scipy.ndimage modes by their convkit names
NDIMAGE_MODES = {"symmetric": "reflect", "reflect": "mirror", "replicate": "nearest",
                 "circular": "wrap", "constant": "constant"}


@pytest.mark.parametrize("border", sorted(NDIMAGE_MODES))
def test_farid_matches_skimage(photo, border):
    filters = pytest.importorskip("skimage.filters")
    mode = NDIMAGE_MODES[border]
    f = photo[..., 1].astype(np.float32) / 255
    for spec, ref in ((f"farid(border={border})", filters.farid(f, mode=mode)),
                      (f"farid(dx=1, border={border})", filters.farid(f, axis=1, mode=mode)),
                      (f"farid(dy=1, border={border})", filters.farid(f, axis=0, mode=mode))):
        np.testing.assert_allclose(convkit.process(f, spec), ref, atol=2e-6, err_msg=spec)
    if border == "symmetric":  # scikit-image's own default, and convkit's for farid
        np.testing.assert_allclose(convkit.process(f, "farid"), filters.farid(f), atol=2e-6)
        # 16-bit: skimage's [0, 1] result on the 16-bit scale, rounded
        img16 = photo[..., 1].astype(np.uint16) * 257 + 3
        ref16 = np.round(filters.farid(img16.astype(np.float64) / 65535) * 65535)
        assert max_diff(convkit.process(img16, "farid"), ref16) <= 1


def test_roberts_matches_skimage(photo):
    filters = pytest.importorskip("skimage.filters")
    f = photo[..., 0].astype(np.float32) / 255
    np.testing.assert_allclose(convkit.process(f, "roberts"), filters.roberts(f), atol=2e-6)
    np.testing.assert_allclose(convkit.process(f, "roberts(dx=1)"),
                               filters.roberts_pos_diag(f), atol=1e-6)
    np.testing.assert_allclose(convkit.process(f, "roberts(dy=1)"),
                               filters.roberts_neg_diag(f), atol=1e-6)
    # 8-bit: skimage's [0, 1] result in grey levels, rounded (the magnitude is never negative)
    ref8 = np.round(filters.roberts(photo[..., 0]) * 255)
    assert max_diff(convkit.process(photo[..., 0], "roberts"), ref8) <= 1
    # a hand-computed case: a step of 1 down-right of the pixel, symmetric border
    x = np.zeros((3, 3), np.float32)
    x[2, 2] = 1.0
    got = convkit.process(x, "roberts")
    assert got[1, 1] == pytest.approx(np.sqrt(0.5))  # dx = 1 - 0, dy = 0 - 0
    assert got[0, 0] == 0.0


def test_laplacian_matches_cv2(photo):
    f = photo.astype(np.float32) / 255
    np.testing.assert_allclose(convkit.process(f, "laplacian"),
                               cv2.Laplacian(f, cv2.CV_32F, ksize=1), atol=1e-5)


def test_edges_is_a_visible_edge_map(photo):
    e = convkit.process(photo, "edges")
    assert e.dtype == np.uint8
    strong = e.max(axis=2) > 64
    # a photo's edge map: a real fraction of pixels are edges, most are not
    assert 0.02 < strong.mean() < 0.5


# --- Pillow's kernels -----------------------------------------------------------------------
PIL_KERNELS = {
    "emboss": ImageFilter.EMBOSS, "smooth": ImageFilter.SMOOTH,
    "smooth_more": ImageFilter.SMOOTH_MORE, "detail": ImageFilter.DETAIL,
    "edge_enhance": ImageFilter.EDGE_ENHANCE, "edge_enhance_more": ImageFilter.EDGE_ENHANCE_MORE,
    "contour": ImageFilter.CONTOUR, "find_edges": ImageFilter.FIND_EDGES,
    "blur5": ImageFilter.BLUR,
}


@pytest.mark.parametrize("name", sorted(PIL_KERNELS))
def test_pillow_kernels_match_pillow_inside(photo, name):
    ref = np.asarray(Image.fromarray(photo).filter(PIL_KERNELS[name]))
    ours = convkit.process(photo, name)
    m = PIL_KERNELS[name].filterargs[0][0] // 2  # Pillow leaves the outer pixels unfiltered
    assert max_diff(ours[m:-m, m:-m], ref[m:-m, m:-m]) <= 1


# --- pooling and median ---------------------------------------------------------------------
def test_pooling_matches_torch_and_cv2(photo):
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    for size, stride in [(2, 2), (3, 3), (4, 2)]:
        h = (photo.shape[0] - size) // stride * stride + size
        w = (photo.shape[1] - size) // stride * stride + size
        crop = x[..., :h, :w]
        ours = convkit.get_filter("avgpool", size=size, stride=stride)(crop)
        torch.testing.assert_close(ours, torch.nn.functional.avg_pool2d(crop, size, stride))
        ours = convkit.get_filter("maxpool", size=size, stride=stride)(crop)
        torch.testing.assert_close(ours, torch.nn.functional.max_pool2d(crop, size, stride))
    # block mean = OpenCV's INTER_AREA for an integer factor
    ref = cv2.resize(photo, (photo.shape[1] // 2, photo.shape[0] // 2),
                     interpolation=cv2.INTER_AREA)
    assert max_diff(convkit.process(photo, "avgpool(size=2)"), ref) <= 1


@pytest.mark.parametrize("size,stride", [([3, 2], None), ([2, 3], [1, 3]), (2, [2, 1]),
                                         ([4, 1], [2, 1])])
def test_rectangular_pooling_matches_torch(photo, size, stride):
    """Spec sizes are [width, height] (OpenCV's order); torch's are (height, width)."""
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    hw = lambda v: (v, v) if isinstance(v, int) else (v[1], v[0])  # noqa: E731
    (kh, kw), (sh, sw) = hw(size), hw(stride or size)
    crop = x[..., :(x.shape[2] - kh) // sh * sh + kh, :(x.shape[3] - kw) // sw * sw + kw]
    for mode, ref in (("avg", torch.nn.functional.avg_pool2d),
                      ("max", torch.nn.functional.max_pool2d)):
        f = convkit.get_filter(f"{mode}pool", size=size, stride=stride)
        torch.testing.assert_close(f(crop), ref(crop, (kh, kw), (sh, sw)))
        assert convkit.chain(f.spec())(crop).shape == f(crop).shape  # the spec round-trips
    # a block mean of 3 across by 2 down = OpenCV's INTER_AREA for those factors
    h, w = photo.shape[0] // 2 * 2, photo.shape[1] // 3 * 3
    ref = cv2.resize(photo[:h, :w], (w // 3, h // 2), interpolation=cv2.INTER_AREA)
    assert max_diff(convkit.process(photo[:h, :w], "avgpool(size=[3, 2])"), ref) <= 1


def test_pooling_ragged_edge_reads_the_border():
    x = torch.arange(5.0).reshape(1, 1, 1, 5)
    # windows [0,1], [2,3], [4, reflect->3]
    out = convkit.get_filter("avgpool", size=2)(x)
    torch.testing.assert_close(out, torch.tensor([[[[0.5, 2.5, 3.5]]]]))
    out = convkit.get_filter("maxpool", size=2, border="replicate")(x)
    torch.testing.assert_close(out, torch.tensor([[[[1.0, 3.0, 4.0]]]]))


@pytest.mark.parametrize("size", [3, 5])
def test_median_matches_cv2(photo, size):
    ref = cv2.medianBlur(photo, size)  # OpenCV's median replicates the border
    ours = convkit.process(photo, f"median(size={size}, border=replicate)")
    np.testing.assert_array_equal(ours, ref)


# --- colour, alpha, batches, module semantics -----------------------------------------------
def test_alpha_passes_through_and_grey_stays_grey(photo, rng):
    alpha = rng.integers(0, 256, photo.shape[:2], dtype=np.uint8)
    rgba = np.dstack([photo, alpha])
    out = convkit.process(rgba, "gaussian(sigma=2)")
    np.testing.assert_array_equal(out[..., 3], alpha)
    assert max_diff(out[..., :3], cv2.GaussianBlur(photo, (0, 0), 2)) <= 1
    grey = photo[..., 0].copy()
    assert convkit.process(grey, "sharpen").shape == grey.shape
    pil = convkit.process(Image.fromarray(rgba, "RGBA"), "sharpen")
    assert pil.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(pil)[..., 3], alpha)


def test_channels_are_independent(photo):
    out = convkit.process(photo, "gaussian(sigma=1.5)")
    for c in range(3):
        single = convkit.process(np.ascontiguousarray(photo[..., c]), "gaussian(sigma=1.5)")
        np.testing.assert_array_equal(out[..., c], single)


def test_batch_equals_loop(rng):
    x = torch.from_numpy(rng.random((4, 3, 20, 24), dtype=np.float32))
    c = convkit.chain("gaussian(sigma=1) | sharpen | median(size=3) | avgpool(size=2)")
    batched = c(x)
    looped = torch.cat([c(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, looped)


def test_function_equals_module(rng):
    x = torch.from_numpy(rng.random((2, 3, 16, 18), dtype=np.float32))
    g = convkit.get_filter("gaussian", sigma=1.5, border="symmetric")
    k = KF.gaussian_kernel1d(KF.gaussian_ksize(1.5), 1.5).float()
    torch.testing.assert_close(g(x), KF.sep_filter2d(x, k, k, "symmetric"))
    torch.testing.assert_close(g(x), KF.filter2d(x, g.weight, "symmetric"))
    m = convkit.get_filter("median", size=3)
    torch.testing.assert_close(m(x), KF.median_blur(x, 3))
    p = convkit.get_filter("avgpool", size=3, stride=2)
    torch.testing.assert_close(p(x), KF.avg_pool(x, 3, 2))


def test_non_contiguous_input(rng):
    x = torch.from_numpy(rng.random((1, 20, 16, 3), dtype=np.float32)).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    g = convkit.get_filter("sharpen")
    torch.testing.assert_close(g(x), g(x.contiguous()))


def test_buffers_not_parameters_and_state_dict():
    g = convkit.get_filter("gaussian", sigma=2.0)
    assert list(g.parameters()) == []
    assert "weight" in g.state_dict()
    w = g.weight
    g(torch.rand(1, 1, 8, 8))
    assert g.weight is w  # not rebuilt per call


def test_loaded_or_edited_weights_are_what_runs_and_prints(rng):
    """Weights loaded with load_state_dict (or edited in place) are what every path runs: the
    separable factors a gaussian was built with are not reused once they no longer give its
    weights, and its spec then prints the weights it holds (parsing back to the same filter)."""
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    want = cv2.GaussianBlur(img, (13, 13), 3.0, borderType=cv2.BORDER_REFLECT_101)
    a = convkit.get_filter("gaussian", sigma=1, ksize=13)
    a.load_state_dict(convkit.get_filter("gaussian", sigma=3, ksize=13).state_dict())
    for method in (None, "separable", "lowrank", "direct"):
        a.method = method
        assert max_diff(convkit.process(img, a), want) <= 1, method
    a.method = None
    spec = str(convkit.chain(a))
    assert spec.startswith("kernel(weights=") and "sigma" not in spec
    assert max_diff(convkit.process(img, spec), want) <= 1
    g = convkit.get_filter("gaussian", sigma=2)
    g.weight.copy_(torch.from_numpy(rng.random(g.weight.shape, dtype=np.float32)))
    x = torch.from_numpy(rng.random((1, 3, 20, 21), dtype=np.float32))
    torch.testing.assert_close(convkit.engine.apply(g, x), g(x), atol=1e-5, rtol=1e-5)
    assert str(convkit.get_filter("gaussian", sigma=1)) == "Kernel2d(gaussian(sigma=1.0))"
    assert repr(a) == "Kernel2d(kernel 13x13, weights changed (str() gives them all))"


def test_gradients_reach_input():
    x = torch.rand(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    specs = ["sharpen", "gaussian(sigma=1)", "sobel", "avgpool", "box(size=4, border=symmetric)"]
    for spec in specs:
        m = convkit.chain(spec).double()
        assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", convkit.list_filters())
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (23, 17)])
def test_every_registered_filter_runs(name, hw, device):
    if name in ("kernel", "learned"):
        pytest.skip("needs a weights or path parameter")
    m = convkit.get_filter(name).to(device)
    x = torch.rand(2, 3, *hw, device=device)
    out = m(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if name in ("avgpool", "maxpool"):
        assert out.shape[-2:] == tuple(-(-max(n - 2, 0) // 2) + 1 for n in hw)
    else:
        assert out.shape == x.shape
    img = (np.random.default_rng(0).random((*hw, 3)) * 255).astype(np.uint8)
    assert convkit.process(img, name, device=device).dtype == np.uint8


def _registered(name: str) -> str:
    """A spec of the registry's filter ``name`` (those that need a value get one)."""
    return {"kernel": "kernel(weights=[[1, 2, 0], [0, 1, -3]], offset=4)"}.get(name, name)


BATTERY = [n for n in convkit.list_filters() if n != "learned"]


@pytest.mark.parametrize("name", BATTERY)
def test_every_filter_takes_non_contiguous_input(name):
    """A channel slice, a transposed view and a channels_last tensor give what a contiguous
    copy gives."""
    m = convkit.chain(_registered(name))
    base = torch.rand(2, 5, 19, 23, generator=torch.Generator().manual_seed(3))
    for x in (base[:, 1:4], base[:, :3].transpose(2, 3),
              base[:, :3].contiguous(memory_format=torch.channels_last)):
        assert not x.is_contiguous()
        torch.testing.assert_close(m(x), m(x.contiguous()), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", BATTERY)
def test_every_filter_has_gradients(name):
    """float64 gradcheck through every registered filter (its torch definition: autograd
    takes that route). The non-linear ones are checked away from their ties (random
    values)."""
    m = convkit.chain(_registered(name)).double()
    x = torch.rand(1, 2, 9, 10, dtype=torch.float64, requires_grad=True,
                   generator=torch.Generator().manual_seed(7))
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-4)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", BATTERY)
def test_every_filter_on_cuda_equals_the_cpu(name):
    """The module on a CUDA device (the torch backend) and on the CPU (OpenCV), float32 and
    uint8 through process()."""
    m = convkit.chain(_registered(name))
    x = torch.rand(2, 3, 31, 37, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(m.to("cuda")(x.cuda()).cpu(), m.cpu()(x), atol=2e-5, rtol=1e-4)
    img = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    got = convkit.process(img, _registered(name), device="cuda")
    assert max_diff(got, convkit.process(img, _registered(name), device="cpu")) <= 1


@pytest.mark.parametrize("name", BATTERY)
def test_every_filter_names_itself_in_a_bad_parameter(name):
    """A parameter it does not have is refused with the filter's name and what it takes."""
    with pytest.raises(ValueError, match=rf"^{name}: unknown parameter 'colour'\. Expected: "):
        convkit.get_filter(name, colour=1)


MODULE_ONLY = {"avgpool", "maxpool", "minimum", "maximum", "percentile", "learned"}


@pytest.mark.parametrize("name", BATTERY)
def test_every_fixed_filter_has_a_function_twin(name):
    """functional.named_filter(x, name) equals the registry's module (which runs the same
    weights on OpenCV), float rounding aside; module-only filters say so."""
    x = torch.rand(2, 3, 17, 21, generator=torch.Generator().manual_seed(5))
    spec = convkit.chain(_registered(name))[0].spec()  # the parameters the module holds
    params = {"weights": [[1, 2, 0], [0, 1, -3]], "offset": 4} if name == "kernel" else {}
    if name in MODULE_ONLY:
        with pytest.raises(ValueError, match=f"{name}: not a fixed filter"):
            KF.named_filter(x, name, **params)
        return
    torch.testing.assert_close(KF.named_filter(x, name, **params), convkit.chain(spec)(x),
                               atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("call,spec", [
    (lambda x: KF.gaussian_blur(x, (3.0, 1.0), border="symmetric"),
     "gaussian(sigma=[3, 1], border=symmetric)"),
    (lambda x: KF.gaussian_blur(x, ksize=(5, 3)), "gaussian(ksize=[5, 3])"),
    (lambda x: KF.box_blur(x, (4, 3), border="constant", value=30),
     "box(size=[4, 3], border=constant, value=30)"),
    (lambda x: KF.sharpen(x, 1.5, border="replicate"), "sharpen(amount=1.5, border=replicate)"),
    (lambda x: KF.gradient_magnitude(x, "scharr"), "scharr"),
    (lambda x: KF.gradient_magnitude(x, "farid", border="reflect"), "farid(border=reflect)"),
    (lambda x: KF.unsharp(x, 2.0, 1.5), "unsharp(sigma=2, amount=1.5)"),
    (lambda x: KF.unsharp(x, 2.0, 1.5, threshold=4), "unsharp(sigma=2, amount=1.5, threshold=4)"),
])
def test_named_functions_equal_their_modules(call, spec):
    x = torch.rand(1, 3, 23, 19, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(call(x), convkit.chain(spec)(x), atol=2e-6, rtol=1e-5)
    # and gaussian_blur against OpenCV itself (13 taps: 6 sigma + 1; OpenCV's own choice for
    # float images would be 8 sigma + 1)
    a = x[0].permute(1, 2, 0).numpy()
    ref = cv2.GaussianBlur(a, (13, 13), 2.0, borderType=cv2.BORDER_REFLECT_101)
    got = KF.gaussian_blur(x, 2.0)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_named_functions_check_parameters_as_modules_do():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"^gaussian: sigma should be >= 0\. Got -1"):
        KF.gaussian_blur(x, -1.0)
    with pytest.raises(ValueError, match=r"^box: size should be >= 1\. Got 0"):
        KF.box_blur(x, 0)
    with pytest.raises(ValueError, match=r"^unsharp: threshold should be >= 0"):
        KF.unsharp(x, 1.0, 1.0, threshold=-2)


def test_device_moves_buffers(device):
    g = convkit.get_filter("gaussian", sigma=1.0).to(device)
    assert g.weight.device.type == device
    x = torch.rand(1, 3, 10, 10, device=device)
    ref = convkit.get_filter("gaussian", sigma=1.0)(x.cpu())
    torch.testing.assert_close(g(x).cpu(), ref)


@pytest.mark.parametrize("border", BORDERS)
def test_sep_filter2d_equals_filter2d_at_the_borders(rng, border):
    x = torch.from_numpy(rng.random((1, 2, 7, 9), dtype=np.float32))
    kx = torch.tensor([1.0, 2.0, 1.0, 0.5])
    ky = torch.tensor([1.0, -2.0, 3.0])
    full = torch.outer(ky, kx)
    torch.testing.assert_close(KF.sep_filter2d(x, kx, ky, border, value=0.5),
                               KF.filter2d(x, full, border, value=0.5), atol=1e-5, rtol=1e-5)
