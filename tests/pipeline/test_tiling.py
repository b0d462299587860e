"""Tiled filtering equals filtering whole: linear, median, pooling and learned-like chains, every
border mode, tiny tiles (so that every tile edge and image edge case is hit), in place too."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import convkit
from convkit.backends import engine
from convkit.pipeline import huge_files, tiling

pytestmark = pytest.mark.usefixtures("one_torch_thread")


R = np.random.default_rng(11)
LOCAL_BORDERS = ["reflect", "replicate", "constant", "symmetric"]


def _img(shape, dtype=torch.uint8, b=1, c=3) -> torch.Tensor:
    if dtype == torch.uint8:
        return torch.from_numpy(R.integers(0, 256, (b, c, *shape), dtype=np.uint8))
    if dtype == torch.uint16:
        return torch.from_numpy(R.integers(0, 65536, (b, c, *shape), dtype=np.uint16))
    return torch.from_numpy(R.random((b, c, *shape)).astype(np.float32))


def assert_same(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """Equal up to float rounding (the same operations run on different tile shapes)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype, what
    if out.is_floating_point():
        np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5, err_msg=what)
    else:
        diff = (out.int() - ref.int()).abs()
        assert diff.max() <= 1, f"{what}: max diff {diff.max()}"
        assert (diff > 0).float().mean() < 1e-3, f"{what}: {(diff > 0).sum()} pixels differ"


def _spec(template: str, border: str) -> str:
    return template.replace("B", border)


LINEAR = ("gaussian(sigma=1.5, border=B) | sharpen(border=B) "
          "| kernel(weights=[[1,2],[3,4]], border=B)")
NONLIN = "median(size=5, border=B) | emboss(border=B) | sobel(border=B)"
POOLED = ("sharpen(border=B) | avgpool(size=2, border=B) | gaussian(sigma=1, border=B) "
          "| maxpool(size=3, stride=2, border=B) | box(size=4, border=B)")
RECT = ("avgpool(size=[3, 1], border=B) | gaussian(sigma=[1, 2], border=B) "
        "| maxpool(size=[2, 3], stride=[1, 2], border=B) | sharpen(border=B)")


@pytest.mark.parametrize("template", [LINEAR, NONLIN, POOLED, RECT],
                         ids=["linear", "median", "pool", "rectangular-pool"])
@pytest.mark.parametrize("border", LOCAL_BORDERS)
def test_tiles_equal_whole(template, border):
    spec = _spec(template, border)
    if border == "constant":
        spec = spec.replace("border=constant", "border=constant, value=40")
    ch = convkit.chain(spec)
    for shape, tiles in (((29, 37), (1, (4, 7))), ((6, 5), (1, 3))):
        for dtype in (torch.uint8, torch.float32):
            x = _img(shape, dtype)
            whole = engine.apply(ch, x)
            for tile in tiles:
                before = x.clone()
                out = tiling.apply_tiled(ch, x, tile=tile)
                assert torch.equal(x, before)
                assert_same(out, whole, f"{spec} {shape} {dtype} tile={tile}")


def test_circular_chain_tiles_and_in_place():
    ch = convkit.chain("gaussian(sigma=2, border=circular) | kernel(weights=[[1,-2],[0,3]], "
                       "border=circular) | median(size=3, border=circular)")
    x = _img((23, 19))
    whole = engine.apply(ch, x)
    for tile in (2, 5, (3, 40)):
        assert_same(tiling.apply_tiled(ch, x, tile=tile), whole, f"tile {tile}")
        y = x.clone()
        assert_same(tiling.apply_tiled(ch, y, tile=tile, out=y), whole, f"in place {tile}")
    # images shorter or narrower than the chain's reach (9 rows up, 9 down): the halo wraps
    # around them more than once
    for shape in ((5, 40), (1, 30), (12, 3)):
        x = _img(shape)
        whole = engine.apply(ch, x)
        y = x.clone()
        assert_same(tiling.apply_tiled(ch, y, tile=8, out=y), whole, f"in place {shape}")
        assert_same(tiling.apply_tiled(ch, x, tile=8), whole, f"{shape}")


@pytest.mark.parametrize("template", [LINEAR, NONLIN], ids=["linear", "median"])
@pytest.mark.parametrize("border", LOCAL_BORDERS)
def test_in_place_bands(template, border):
    ch = convkit.chain(_spec(template, border))
    for dtype in (torch.uint8, torch.uint16):
        x = _img((41, 17), dtype, c=4)
        whole = engine.apply(ch, x, alpha=True)
        for tile in (1, 4, 9):
            y = x.clone()
            out = tiling.apply_tiled(ch, y, alpha=True, tile=tile, out=y)
            assert out.data_ptr() == y.data_ptr()
            assert_same(y, whole, f"{border} {dtype} tile={tile}")


def test_pooling_with_alpha_and_batch():
    ch = convkit.chain("avgpool(size=3, stride=2) | sharpen | maxpool(size=2)")
    x = _img((33, 27), c=4, b=2)
    whole = engine.apply(ch, x, alpha=True)
    for tile in (1, 5):
        assert_same(tiling.apply_tiled(ch, x, alpha=True, tile=tile), whole, f"tile {tile}")


class TinyNet(nn.Module):
    """A learned-filter-like module: zero-padded convs, optionally pooling and upsampling inside
    (then its tiles must start on even rows/columns: tile_align = 2)."""

    def __init__(self, pool: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool = pool
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)
        self.tile_align = 2 if pool else 1

    @property
    def reach(self):
        r = 2 + (4 if self.pool else 0)  # two 3x3 convs; at half resolution they reach twice
        return (r, r, r, r)

    def forward(self, x):
        y = torch.relu(self.a(nn.functional.avg_pool2d(x, 2) if self.pool else x))
        y = self.b(y)
        if self.pool:  # back to full size; an odd last row/column repeats its neighbour
            y = y.repeat_interleave(2, -2).repeat_interleave(2, -1)
            y = nn.functional.pad(y, (0, x.shape[-1] - y.shape[-1], 0, x.shape[-2] - y.shape[-2]),
                                  mode="replicate")
        return x + y


@pytest.mark.parametrize("pool", [False, True])
def test_learned_like_module(pool):
    net = TinyNet(pool).eval()
    ch = convkit.chain([convkit.get_filter("gaussian", sigma=1), net])
    x = _img((32, 26), torch.float32)
    with torch.no_grad():
        whole = engine.apply(ch, x)
        for tile in (4, (8, 26)):
            assert_same(tiling.apply_tiled(ch, x, tile=tile), whole, f"tile {tile}")


def test_halo_and_refusals():
    assert tiling.halo(convkit.chain("gaussian(sigma=1) | avgpool(size=2) | sharpen")) == (
        5, 6, 5, 6)
    # 3 across by 1 down, stride (3, 1): the sharpen after it reaches 3 columns per pixel
    assert tiling.halo(convkit.chain("avgpool(size=[3, 1]) | sharpen")) == (1, 1, 3, 5)
    with pytest.raises(ValueError, match="mixes the circular border with others"):
        tiling.apply_tiled(convkit.chain("sharpen(border=circular) | box(size=3)"), _img((8, 8)))
    with pytest.raises(ValueError, match="pools with the circular border"):
        tiling.apply_tiled(convkit.chain("avgpool(border=circular) | sharpen(border=circular)"),
                           _img((8, 8)))
    with pytest.raises(ValueError, match="reach"):
        tiling.apply_tiled(nn.Conv2d(3, 3, 3, padding=1), _img((8, 8), torch.float32))
    with pytest.raises(ValueError, match="pools"):
        x = _img((8, 8))
        tiling.apply_tiled(convkit.chain("avgpool(size=2)"), x, out=x)
    for good, n in (("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), (4096, 4096)):
        assert tiling.parse_memory(good) == n
    for bad in ("lots", "-1G", 0, "2Q"):
        with pytest.raises(ValueError, match="max_memory"):
            tiling.parse_memory(bad)


def test_memory_budget_sets_tile_size():
    ch = convkit.chain("gaussian(sigma=3) | sharpen")
    shape = (1, 3, 4000, 3000)
    small = tiling.plan_tiles(ch, shape, max_memory="8M")
    big = tiling.plan_tiles(ch, shape, max_memory="1G")
    assert len(small.rows) * len(small.cols) > len(big.rows) * len(big.cols) >= 1
    per = tiling.bytes_per_sample(ch) * 3
    h0, h1 = small.rows[0]
    t, b, l, r = tiling.halo(ch)
    w = small.cols[0][1] - small.cols[0][0]
    assert (h1 - h0 + t + b) * (w + l + r) * per <= 8 << 20


def test_filter_file_in_place_equals_whole(tmp_path):
    ch = convkit.chain("gaussian(sigma=3) | sharpen")
    rgb = R.integers(0, 256, (300, 211, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, R.integers(0, 256, (300, 211), dtype=np.uint8)])
    grey16 = R.integers(0, 65536, (120, 90), dtype=np.uint16)
    for name, img in (("rgb.png", rgb), ("rgba.png", rgba), ("grey16.png", grey16)):
        src, dst = tmp_path / name, tmp_path / f"out-{name}"
        assert cv2.imwrite(str(src), img)
        before = src.read_bytes()
        info = huge_files.filter_file(ch, src, dst, max_memory=img.nbytes + (17 << 20))
        assert src.read_bytes() == before
        out = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
        x = torch.from_numpy(np.ascontiguousarray(img))
        x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None].contiguous()
        ref = engine.apply(ch, x, alpha=x.shape[1] == 4)[0]
        ref = ref[0] if img.ndim == 2 else ref.permute(1, 2, 0)
        assert_same(torch.from_numpy(out), ref.contiguous(), name)
        assert info["width"] == img.shape[1] and info["height"] == img.shape[0]
        assert info["streamed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [n for n in ("rgb.png", "rgba.png", "grey16.png")] +
        [f"out-{n}" for n in ("rgb.png", "rgba.png", "grey16.png")])


@pytest.mark.parametrize("ext,streamed", [(".png", True), (".tif", False), (".bmp", False)])
def test_filter_file_many_bands(tmp_path, ext, streamed):
    """Budgets small enough for several bands, streamed (PNG) or in place: still equal to the
    whole image."""
    ch = convkit.chain("gaussian(sigma=3) | sharpen | median(size=3)")
    img = R.integers(0, 256, (3000, 200, 3), dtype=np.uint8)
    src, dst = tmp_path / f"a{ext}", tmp_path / f"b{ext}"
    cv2.imwrite(str(src), img)
    budget = img.nbytes + (17 << 20) if not streamed else "6M"
    info = huge_files.filter_file(ch, src, dst, max_memory=budget)
    assert info["streamed"] == streamed and info["bands"] >= 3
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    ref = engine.apply(ch, x)[0].permute(1, 2, 0).contiguous()
    assert_same(torch.from_numpy(cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)), ref)


def test_png_stream_reads_every_filter_and_kind(tmp_path):
    """The band reader against OpenCV's whole-image decode, for PNGs written with each PNG
    filter type (Paeth and Average refer to the row above: the band seams test them)."""
    from convkit.io import pngstream

    cases = {"rgb": R.integers(0, 256, (37, 23, 3), dtype=np.uint8),
             "rgba16": R.integers(0, 65536, (37, 23, 4), dtype=np.uint16),
             "grey": R.integers(0, 256, (37, 23), dtype=np.uint8)}
    filters = [cv2.IMWRITE_PNG_FILTER_NONE, cv2.IMWRITE_PNG_FILTER_SUB,
               cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_FILTER_AVG,
               cv2.IMWRITE_PNG_FILTER_PAETH]
    for name, img in cases.items():
        for flt in filters:
            path = tmp_path / f"{name}-{flt}.png"
            assert cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_FILTER, flt])
            info = pngstream.read_info(path)
            assert pngstream.streamable(info) is None
            for rows in (1, 5, 37, 100):
                got = np.concatenate(list(pngstream.iter_bands(path, info, rows)))
                np.testing.assert_array_equal(got, img, err_msg=f"{name} {flt} {rows}")
            out = tmp_path / "w.png"
            w = pngstream.PngWriter(out, info)
            for i in range(0, 37, 8):
                w.write(img[i:i + 8])
            w.close()
            np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), img)


def test_filter_file_guards(tmp_path):
    from PIL import Image

    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(src), R.integers(0, 256, (60, 50, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="decompression bombs.*max_pixels"):
        huge_files.filter_file("sharpen", src, dst, max_pixels=1000)
    bmp = tmp_path / "a.bmp"
    cv2.imwrite(str(bmp), R.integers(0, 256, (60, 50, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="max_memory"):  # decoded whole: must fit
        huge_files.filter_file("sharpen", bmp, dst, max_memory="1M")
    with pytest.raises(ValueError, match="pools"):
        huge_files.filter_file("avgpool(size=2)", src, dst)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png"):
        huge_files.filter_file("sharpen", tmp_path / "text.png", dst)
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # Pillow's own limit applies by default
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100
    try:
        with pytest.raises(ValueError, match="limit of 100 pixels"):
            huge_files.filter_file("sharpen", src, dst)
    finally:
        Image.MAX_IMAGE_PIXELS = old


# --- metadata of huge PNGs: the same as the normal path (convkit.io.images) writes ----------------

KERNEL = np.array([[0, 0, 0], [0, 2, 1], [0, -1, 0]], np.float32) / 2  # not rotation-invariant
KERNEL_SPEC = "kernel(weights=[[0,0,0],[0,2,1],[0,-1,0]], scale=2)"


def _icc(space: bytes = b"RGB ") -> bytes:
    """Pillow's sRGB profile; with b"GRAY" its header claims a grey colour space."""
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[16:20] = space
    return bytes(icc)


def _exif(orientation: int = 1):
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "ConvkitCam"  # Make
    exif[0x0110] = "Model 7"  # Model
    exif[0x0112] = orientation
    return exif


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk) of each chunk of a PNG file's bytes."""
    import struct

    out, pos = [], 8
    while pos < len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        out.append((ctype, data[pos:pos + 12 + length]))
        pos += 12 + length
    return out


def _ancillary(path) -> list[bytes]:
    return sorted(t for t, _ in _png_chunks(path.read_bytes()) if t not in (b"IDAT", b"IHDR",
                                                                               b"IEND"))


def _move_after_idat(path, ctype: bytes) -> None:
    """Move the chunk ``ctype`` behind the image data, where PNG allows eXIf and text."""
    chunks = _png_chunks(path.read_bytes())
    moved = [c for t, c in chunks if t == ctype]
    rest = [c for t, c in chunks if t != ctype]
    assert len(moved) == 1
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(rest[:-1] + moved + rest[-1:]))


def _run_both(tmp_path, monkeypatch, src, spec: str, *, max_memory=None, module=False):
    """Filter ``src`` through the normal path, then through the huge-PNG path (HUGE_PIXELS
    lowered); returns (normal output, huge output, the huge route's summary). A spec string
    takes the torch-free route (streaming.stream_png) where it can, a module (``module``)
    the torch one (huge_files.filter_file)."""
    from convkit.pipeline import batches as pipeline
    from convkit.pipeline import streaming

    normal, huge = tmp_path / "normal.png", tmp_path / "huge.png"
    s = convkit.run(spec, [str(src)], str(normal), device="cpu", progress=False)
    assert s.written == 1
    summaries = []
    for owner, name in ((huge_files, "filter_file"), (streaming, "stream_png")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, real=real, **k: summaries.append(
            real(*a, **k)) or summaries[-1])
    monkeypatch.setattr(pipeline, "HUGE_PIXELS", 100)
    s = convkit.run(convkit.chain(spec) if module else spec, [str(src)], str(huge),
                    device="cpu", max_memory=max_memory, progress=False)
    done = [x for x in summaries if x is not None]
    assert s.written == 1 and len(done) == 1, summaries
    assert done[0].get("torch", True) == (module or not done[0]["streamed"]
                                          or len(summaries) > 1)
    return normal, huge, done[0]


def _cv_reference(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """OpenCV's filter of the colour channels (reflect border); alpha passes through."""
    colour = img[..., :3] if img.ndim == 3 and img.shape[2] == 4 else img
    out = cv2.filter2D(colour, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return np.dstack([out, img[..., 3]]) if colour is not img else out


def _pillow_info(path):
    """The ICC profile and EXIF as Pillow reads them (after the image data too)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.info.get("icc_profile"), im.info.get("exif"), dict(im.getexif())


SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)


@pytest.mark.parametrize("route", ["plan", "module"])
@pytest.mark.parametrize("case", ["rgb", "grey16", "rgba-exif-after-idat", "rgb-grey-icc",
                                  "raw-profile-exif"])
def test_huge_png_streams_with_the_icc_and_exif_of_the_normal_path(tmp_path, monkeypatch, case,
                                                                   route):
    """A huge PNG written as PNG streams band by band (without torch for a spec of fixed
    filters: streaming.stream_png; with a module: huge_files.filter_file) and keeps what
    convkit.io.images keeps: the ICC profile when it fits the channels, the EXIF block; no more (no
    gAMA, pHYs or text). Checked against Pillow's reading of the input and the normal path."""
    from PIL import Image, PngImagePlugin

    from convkit.io import pngstream

    rng = np.random.default_rng(21)
    h, w = 90, 70
    pixels = {"rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
              "grey16": rng.integers(0, 65536, (h, w), dtype=np.uint16),
              "rgba-exif-after-idat": rng.integers(0, 256, (h, w, 4), dtype=np.uint8),
              "rgb-grey-icc": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
              "raw-profile-exif": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}[case]
    icc = _icc(b"GRAY" if case in ("grey16", "rgb-grey-icc") else b"RGB ")
    exif = _exif()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "not carried by convkit.io.images")
    options = {"icc_profile": icc, "exif": exif, "dpi": (300, 300), "pnginfo": text}
    if case == "raw-profile-exif":  # ImageMagick's way: hex EXIF in a text chunk
        raw = exif.tobytes()
        options.pop("exif")
        text.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}")
    src = tmp_path / "src.png"
    Image.fromarray(pixels).save(src, **options)
    if case == "rgba-exif-after-idat":
        _move_after_idat(src, b"eXIf")
    in_icc, in_exif, in_tags = _pillow_info(src)
    assert in_icc == icc and in_tags[0x010F] == "ConvkitCam"

    normal, huge, summary = _run_both(tmp_path, monkeypatch, src, "sharpen", max_memory="64K",
                                      module=route == "module")
    assert summary["streamed"] and summary["bands"] >= 2
    assert summary.get("torch", True) == (route == "module")

    fits = case != "rgb-grey-icc"  # a grey profile on an RGB image is dropped
    for out in (huge, normal):
        out_icc, out_exif, out_tags = _pillow_info(out)
        assert out_icc == (in_icc if fits else None), out.name
        assert out_tags == in_tags, out.name
        if case != "raw-profile-exif":  # the EXIF block as it was, byte for byte
            assert out_exif == in_exif, out.name
    assert _ancillary(huge) == _ancillary(normal) == sorted(
        [b"eXIf"] + [b"iCCP"] * fits)
    assert huge.read_bytes().index(b"eXIf") < huge.read_bytes().index(b"IDAT")
    # the metadata was found without reading the image data
    assert len(pngstream.metadata_png(pngstream.read_info(src))) < len(src.read_bytes()) // 4

    got = cv2.imread(str(huge), cv2.IMREAD_UNCHANGED)
    assert_same(torch.from_numpy(got),
                torch.from_numpy(cv2.imread(str(normal), cv2.IMREAD_UNCHANGED)), "vs normal")
    bgr = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    assert_same(torch.from_numpy(got), torch.from_numpy(_cv_reference(bgr, SHARPEN)), "vs cv2")


@pytest.mark.parametrize("orientation", [3, 6])
def test_huge_png_with_exif_orientation_is_turned_like_the_normal_path(tmp_path, monkeypatch,
                                                                       orientation):
    """A band-by-band stream cannot turn the image, so a PNG whose EXIF orientation is not 1
    goes through convkit.io.images whole: turned before it is filtered (the kernel is not
    symmetric), its Orientation tag then 1, the rest of the EXIF and the ICC profile kept. It is not
    written unturned with its orientation dropped."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(22)
    rgb = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    src = tmp_path / "src.png"
    Image.fromarray(rgb).save(src, icc_profile=_icc(), exif=_exif(orientation))
    in_icc, _, in_tags = _pillow_info(src)
    with Image.open(src) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))  # Pillow turns it as a viewer would

    normal, huge, summary = _run_both(tmp_path, monkeypatch, src, KERNEL_SPEC)
    assert not summary["streamed"]
    assert (summary["height"], summary["width"]) == shown.shape[:2]
    for out in (huge, normal):
        out_icc, out_exif, out_tags = _pillow_info(out)
        assert out_icc == in_icc
        assert out_tags == {**in_tags, 0x0112: 1}
    assert _pillow_info(huge)[1] == _pillow_info(normal)[1]
    got = cv2.imread(str(huge), cv2.IMREAD_UNCHANGED)
    assert got.shape[:2] == shown.shape[:2]
    np.testing.assert_array_equal(got, cv2.imread(str(normal), cv2.IMREAD_UNCHANGED))
    ref = _cv_reference(np.ascontiguousarray(shown[..., ::-1]), KERNEL)
    assert_same(torch.from_numpy(got), torch.from_numpy(ref), "vs cv2 on the turned image")


def test_huge_png_that_cannot_stream_keeps_icc_and_exif(tmp_path, monkeypatch):
    """A palette PNG is decoded whole (OpenCV) instead of streamed; its output keeps the
    metadata too."""
    from PIL import Image

    rng = np.random.default_rng(23)
    rgb = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    src = tmp_path / "src.png"
    Image.fromarray(rgb).quantize(64).save(src, icc_profile=_icc(), exif=_exif())
    in_icc, in_exif, _ = _pillow_info(src)
    normal, huge, summary = _run_both(tmp_path, monkeypatch, src, "sharpen")
    assert not summary["streamed"]
    for out in (huge, normal):
        assert _pillow_info(out)[:2] == (in_icc, in_exif), out.name
    assert _ancillary(huge) == _ancillary(normal) == [b"eXIf", b"iCCP"]
    got = cv2.imread(str(huge), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(got, cv2.imread(str(normal), cv2.IMREAD_UNCHANGED))
    with Image.open(src) as im:
        bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
    assert_same(torch.from_numpy(got), torch.from_numpy(_cv_reference(bgr, SHARPEN)))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_filter_file_jpeg_is_read_strictly_and_upright(tmp_path):
    """filter_file on a JPEG reads it as convkit.io does: a file cut short is refused (OpenCV's
    decoder filled it with grey and said nothing), or filtered as far as it decodes with
    allow_truncated; a JPEG stored turned (EXIF orientation 6) comes out upright with its
    orientation reset (IMREAD_UNCHANGED ignored it, and the output had no EXIF)."""
    from PIL import Image

    from convkit.io.images import ImageFileError

    yy, xx = np.mgrid[0:180, 0:120]
    upright = np.stack([(xx * 2 + yy) % 256, (xx * 3) % 256, (yy * 2) % 256], -1).astype(np.uint8)
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # shown upright after a 90° CW turn
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "turned.jpg"
    Image.fromarray(stored).save(src, quality=98, subsampling=0, exif=exif.tobytes())
    shown = np.asarray(Image.open(src).transpose(Image.Transpose.ROTATE_270))
    dst = tmp_path / "out.png"
    info = huge_files.filter_file("sharpen", src, dst, max_memory=(1 << 20) * 40)
    assert not info["streamed"]
    with Image.open(dst) as im:
        assert im.getexif().get(0x0112, 1) == 1
        got = np.asarray(im)
    ref = cv2.filter2D(np.ascontiguousarray(shown), -1, np.array(
        [[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32), borderType=cv2.BORDER_REFLECT_101)
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref).max() <= 1
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    with pytest.raises(ImageFileError, match="cut.jpg: .*truncated.*--allow-truncated"):
        huge_files.filter_file("sharpen", cut, tmp_path / "cut-out.jpg")
    assert not (tmp_path / "cut-out.jpg").exists()
    huge_files.filter_file("sharpen", cut, tmp_path / "cut-out.jpg", allow_truncated=True)
    assert (tmp_path / "cut-out.jpg").exists()


def test_huge_png_cut_short_through_the_command_line(tmp_path, monkeypatch):
    """A huge PNG (streamed band by band) cut short: refused naming --allow-truncated, or
    filtered as far as it goes, the rows that arrived as the whole file's, the rest black."""
    from convkit.pipeline import batches as pipeline

    yy, xx = np.mgrid[0:400, 0:150]
    img = np.stack([(xx + yy) % 256, (xx * 3) % 256, (yy * 5) % 256], -1).astype(np.uint8)
    full = tmp_path / "full.png"
    cv2.imwrite(str(full), img)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    monkeypatch.setattr(pipeline, "HUGE_PIXELS", 100)
    errors = []
    s = convkit.run("sharpen", [str(cut)], str(tmp_path / "o.png"), device="cpu",
                    progress=False, on_error=errors.append, max_memory="1M")
    assert s.failed == 1 and "--allow-truncated accepts that" in errors[0], errors
    assert not (tmp_path / "o.png").exists()
    s = convkit.run("sharpen", [str(cut)], str(tmp_path / "o.png"), device="cpu",
                    progress=False, max_memory="1M", allow_truncated=True)
    assert s.written == 1
    got = cv2.imread(str(tmp_path / "o.png"))
    ref = cv2.filter2D(img, -1, np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
                       borderType=cv2.BORDER_REFLECT_101)
    same = [bool(np.array_equal(got[r], ref[r])) for r in range(400)]
    arrived = same.index(False)
    assert 50 <= arrived < 400, arrived
    assert not got[arrived + 2 :].any()
