"""Morphology against OpenCV: every operation, structuring element, border and dtype equals
cv2.morphologyEx exactly; gradients flow (gradcheck on the torch path); the filters run from the
command line, in chains and in tiles."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import convkit
from convkit.backends import opencv
from convkit.cli.main import cli

NAMES = {"erode": cv2.MORPH_ERODE, "dilate": cv2.MORPH_DILATE, "opening": cv2.MORPH_OPEN,
         "closing": cv2.MORPH_CLOSE, "morph_gradient": cv2.MORPH_GRADIENT,
         "tophat": cv2.MORPH_TOPHAT, "blackhat": cv2.MORPH_BLACKHAT}
SHAPES = {"rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS, "ellipse": cv2.MORPH_ELLIPSE}
CV_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE,
              "symmetric": cv2.BORDER_REFLECT, "constant": cv2.BORDER_CONSTANT}


def image(dtype, h=23, w=31, channels=3, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random((h, w, channels)).astype(np.float32)
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, (h, w, channels)).astype(dtype)


def reference(a: np.ndarray, name: str, fp: np.ndarray, iterations: int, border: str,
              value: float) -> np.ndarray:
    """cv2.morphologyEx; circular by wrapping the image by a generous margin first."""
    if border == "circular":
        m = 4 * iterations * max(fp.shape)
        wide = np.pad(a, ((m, m), (m, m), (0, 0)), mode="wrap")
        out = cv2.morphologyEx(wide, NAMES[name], fp, iterations=iterations,
                               borderType=cv2.BORDER_REPLICATE)
        return out[m:-m, m:-m]
    if border == "none":
        return cv2.morphologyEx(a, NAMES[name], fp, iterations=iterations)
    top = 1.0 if a.dtype == np.float32 else float(np.iinfo(a.dtype).max)
    fill = value / 255 * top  # (a bare number would fill the first channel only)
    return cv2.morphologyEx(a, NAMES[name], fp, iterations=iterations,
                            borderType=CV_BORDERS[border], borderValue=(fill,) * 4)


@pytest.mark.parametrize("name", list(NAMES))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_every_operation_equals_opencv(name, dtype):
    a = image(dtype)
    for shape in ("rect", "cross", "ellipse"):
        for size in (3, 4, 5):
            for iterations in (1, 2):
                for border in ("none", "reflect", "replicate", "symmetric", "constant",
                               "circular"):
                    value = 51.0 if border == "constant" else 0.0
                    spec = (f"{name}(size={size}, shape={shape}, iterations={iterations}, "
                            f"border={border}, value={value})")
                    got = convkit.process(a, spec)
                    fp = cv2.getStructuringElement(SHAPES[shape], (size, size))
                    ref = reference(a, name, fp, iterations, border, value)
                    if dtype == np.float32:
                        np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=spec)
                    else:
                        assert np.array_equal(got, ref), spec


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_images_filtered_in_bands_equal_opencv(dtype, monkeypatch):
    """Images large enough to be shared out: the rows of an interleaved (H, W, C) image, or of
    the planes of a planar (1, C, H, W) tensor, shared among the workers, whose shares meet
    inside a plane. With OpenCV's threads on: the interleaved image in one call, the planes in
    bands (here of at most 60 rows with the rows they reach, so that a composite operation's
    reach crosses band edges). Each the same as OpenCV on the whole image."""
    monkeypatch.setattr(opencv, "OPENCV_SPLITS_PIXELS", 203 * 60)
    rows = []
    real = cv2.morphologyEx
    monkeypatch.setattr(opencv.cv2, "morphologyEx",
                        lambda src, *a, **kw: (rows.append(src.shape[0]), real(src, *a, **kw))[1])
    a = image(dtype, h=261, w=203)
    planar = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
    for name in ("erode", "opening", "blackhat"):
        for shape, size, iterations in (("rect", 5, 1), ("ellipse", 4, 3), ("cross", 7, 2)):
            for border in ("none", "reflect", "constant", "circular"):
                value = 51.0 if border == "constant" else 0.0
                spec = (f"{name}(size={size}, shape={shape}, iterations={iterations}, "
                        f"border={border}, value={value})")
                fp = cv2.getStructuringElement(SHAPES[shape], (size, size))
                ref = reference(a, name, fp, iterations, border, value)
                cv2.setNumThreads(2)
                opencv.own_threads(2)
                by_workers = (convkit.process(a, spec),
                              convkit.process(planar, spec)[0].permute(1, 2, 0).numpy())
                opencv.own_threads(0)  # OpenCV's two threads again: the planes in bands
                rows.clear()
                in_bands = convkit.process(planar, spec)[0].permute(1, 2, 0).numpy()
                assert (max(rows) < 261) == (border != "circular"), (spec, rows)
                for got in (*by_workers, convkit.process(a, spec), in_bands):
                    if dtype == np.float32:
                        np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=spec)
                    else:
                        assert np.array_equal(got, ref), spec


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_rectangular_structuring_elements_equal_opencv(dtype):
    """size=[w, h] is OpenCV's Size, width first: getStructuringElement(shape, (w, h))."""
    a = image(dtype, h=37, w=41)
    for name in ("erode", "opening", "blackhat"):
        for shape in ("rect", "cross", "ellipse"):
            for (w, h), border in (((7, 3), "none"), ((2, 5), "reflect"), ((4, 1), "constant")):
                value = 51.0 if border == "constant" else 0.0
                spec = (f"{name}(size=[{w}, {h}], shape={shape}, border={border}, "
                        f"value={value})")
                fp = cv2.getStructuringElement(SHAPES[shape], (w, h))
                ref = reference(a, name, fp, 1, border, value)
                got = convkit.process(a, spec)
                if dtype == np.float32:
                    np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=spec)
                else:
                    assert np.array_equal(got, ref), spec


def test_any_footprint():
    a = image(np.uint8)
    fp = np.array([[0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]], np.uint8)  # 4x3, asymmetric
    for name in NAMES:
        got = convkit.process(a, f"{name}(footprint={fp.tolist()}, iterations=2)")
        assert np.array_equal(got, cv2.morphologyEx(a, NAMES[name], fp, iterations=2)), name


def test_module_on_the_cpu_equals_its_torch_definition():
    from convkit.nn.modules import reference as plain

    x = torch.rand(2, 3, 19, 27)
    for name in NAMES:
        m = convkit.chain(f"{name}(size=5, shape=ellipse, border=reflect)")
        with torch.no_grad():
            torch.testing.assert_close(m(x), plain(m, x), atol=1e-6, rtol=0)


def test_gradients_flow():
    x = torch.rand(1, 1, 7, 8, dtype=torch.float64, requires_grad=True)
    for name in NAMES:
        m = convkit.chain(f"{name}(size=3, shape=cross, border=replicate)").double()
        assert torch.autograd.gradcheck(m, (x,)), name


def test_command_line_and_chains(tmp_path):
    a = image(np.uint8, 40, 50)
    Image.fromarray(a).save(tmp_path / "a.png")
    res = CliRunner().invoke(cli, ["opening", "--size", "5", "--shape", "ellipse", "-q",
                                   str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
    fp = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")),
                          cv2.morphologyEx(a, cv2.MORPH_OPEN, fp))
    chained = convkit.process(a, "erode | sharpen")
    k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    ref = cv2.filter2D(cv2.erode(a, np.ones((3, 3), np.uint8)), -1, k,
                       borderType=cv2.BORDER_REFLECT_101)
    assert np.array_equal(chained, ref)


def test_tiles_equal_the_whole_image():
    from convkit.pipeline.tiling import apply_tiled

    x = torch.rand(1, 3, 300, 200)
    m = convkit.chain("closing(size=7, shape=ellipse, iterations=2, border=reflect)")
    with torch.no_grad():
        whole = m(x)
        tiled = apply_tiled(m, x, max_memory=2 << 20)
    torch.testing.assert_close(tiled, whole, atol=0, rtol=0)


@pytest.mark.parametrize("spec,message", [
    ("erode(footprint=[[0, 2], [1, 1]])", "erode: footprint should be a matrix of 0 and 1"),
    ("dilate(footprint=[[0, 0]])", "with at least one 1"),
    ("erode(shape=disk)", "shape"),
    ("erode(iterations=0)", "iterations"),
    ("erode(size=256)", "size"),
])
def test_bad_parameters(spec, message):
    with pytest.raises(ValueError, match=message):
        convkit.chain(spec)


# --- rank filters, against Pillow's ImageFilter --------------------------------------------
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [3, 5, 7])
def test_rank_filters_equal_pillow(mode, size):
    from PIL import ImageFilter

    a = image(np.uint8, 29, 41)
    im = Image.fromarray(a).convert(mode)
    x = np.asarray(im)
    n = size * size
    cases = [("minimum", ImageFilter.MinFilter(size)), ("maximum", ImageFilter.MaxFilter(size))]
    for q in (0, 10, 25, 50, 90, 100):
        cases.append((f"percentile(q={q}", ImageFilter.RankFilter(size, round(q / 100 * (n - 1)))))
    for spec, peer in cases:
        spec = f"{spec}, size={size})" if "(" in spec else f"{spec}(size={size})"
        got = convkit.process(x, spec)
        assert np.array_equal(got, np.asarray(im.filter(peer))), spec


def test_rank_gradients_flow():
    x = torch.rand(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    m = convkit.chain("percentile(size=3, q=25)").double()
    assert torch.autograd.gradcheck(m, (x,))
