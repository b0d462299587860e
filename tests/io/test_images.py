"""Tests for convkit.io.images: files written and read back, checked against Pillow, OpenCV and
NumPy."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

import convkit.io.images as cio
from convkit.io.atomic import is_temp_name
from convkit.io.images import (
    SUPPORTED_EXTENSIONS,
    ImageFileError,
    ImageInfo,
    is_image_path,
    read_image,
    read_image_with_info,
    write_image,
)

RNG = np.random.default_rng(1234)
H, W = 24, 40  # not square, so a rotation or transposition shows in the shape


def noise(*shape: int, dtype: type = np.uint8) -> np.ndarray:
    high = np.iinfo(dtype).max + 1
    return RNG.integers(0, high, size=shape, dtype=dtype)


def smooth_rgb() -> np.ndarray:
    """(H, W, 3) uint8 gradient: JPEG keeps it close, unlike noise."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 6, y * 10, (x + y) * 3], axis=-1).astype(np.uint8)


def as_hwc(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> (H, W, C) array, to compare with Pillow and OpenCV."""
    return t.permute(1, 2, 0).numpy()


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "ConvkitCam"  # Make, in IFD0
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal, in the Exif IFD
    if orientation is not None:
        exif[0x0112] = orientation
    return exif.tobytes()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk, built by hand: length, type, data, CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(width: int, height: int, depth: int, colour_type: int, raw: bytes) -> bytes:
    """A minimal PNG built by hand: signature, IHDR, one IDAT of ``raw`` scanlines, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if is_temp_name(p.name)]


# --- reading and writing each mode ---------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "pil_mode"),
    [((H, W), "L"), ((H, W, 2), "LA"), ((H, W, 3), "RGB"), ((H, W, 4), "RGBA")],
)
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_8bit_round_trip_lossless(tmp_path, shape, pil_mode, ext):
    a = noise(*shape)
    path = tmp_path / f"x{ext}"
    write_image(path, a)
    with Image.open(path) as im:  # the file is what an independent reader expects
        assert im.mode == pil_mode
        assert np.array_equal(np.asarray(im), a)
    t, info = read_image_with_info(path)
    channels = 1 if a.ndim == 2 else a.shape[2]
    assert t.shape == (channels, H, W) and t.dtype == torch.uint8 and t.is_contiguous()
    assert np.array_equal(as_hwc(t).reshape(a.shape), a)
    assert info.mode == pil_mode and info.has_alpha == (channels in (2, 4))


def test_tensor_input_is_chw_and_numpy_input_is_hwc(tmp_path):
    a = noise(H, W, 3)
    write_image(tmp_path / "np.png", a)
    write_image(tmp_path / "t.png", torch.from_numpy(a).permute(2, 0, 1))
    write_image(tmp_path / "grey.png", torch.from_numpy(a[:, :, 0]))  # (H, W) tensor
    assert np.array_equal(np.asarray(Image.open(tmp_path / "np.png")), a)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t.png")), a)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grey.png")), a[:, :, 0])


def test_read_only_and_flipped_arrays_are_written_without_warnings(tmp_path):
    a = noise(H, W, 3)
    read_only = np.asarray(Image.fromarray(a))
    assert not read_only.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_image(tmp_path / "ro.png", read_only)
        write_image(tmp_path / "flip.png", a[::-1])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ro.png")), a)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "flip.png")), a[::-1])


def test_bmp_round_trip_and_alpha_dropped(tmp_path):
    a = noise(H, W, 4)
    write_image(tmp_path / "x.bmp", a)
    t = read_image(tmp_path / "x.bmp")
    assert t.shape == (3, H, W)
    assert np.array_equal(as_hwc(t), a[:, :, :3])


def test_palette_without_transparency_reads_as_rgb(tmp_path):
    src = Image.fromarray(smooth_rgb()).quantize(colors=16)
    src.save(tmp_path / "p.png")
    t, info = read_image_with_info(tmp_path / "p.png")
    assert info.mode == "P" and not info.has_alpha
    assert t.shape == (3, H, W)
    assert np.array_equal(as_hwc(t), np.asarray(src.convert("RGB")))


def test_palette_with_transparency_reads_as_rgba(tmp_path):
    index = (np.arange(H * W).reshape(H, W) % 7).astype(np.uint8)
    src = Image.fromarray(index, mode="L").convert("P")
    src.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    src.save(tmp_path / "pt.png", transparency=3)
    t, info = read_image_with_info(tmp_path / "pt.png")
    assert info.mode == "P" and info.has_alpha
    assert t.shape == (4, H, W)
    alpha = t[3].numpy()
    assert np.array_equal(alpha == 0, index == 3)
    assert np.all(alpha[index != 3] == 255)
    rgb = np.asarray(Image.open(tmp_path / "pt.png").convert("RGB"))
    assert np.array_equal(as_hwc(t)[:, :, :3], rgb)


def test_grey_colour_key_becomes_alpha(tmp_path):
    a = noise(H, W)
    a[0, 0] = 77
    Image.fromarray(a).save(tmp_path / "key.png", transparency=77)
    t = read_image(tmp_path / "key.png")
    assert t.shape == (2, H, W)
    assert np.array_equal(t[0].numpy(), a)
    assert np.array_equal(t[1].numpy() == 0, a == 77)


def test_bilevel_reads_as_grey_0_255(tmp_path):
    bits = noise(H, W) > 127
    Image.fromarray(bits).save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "1"
    t, info = read_image_with_info(tmp_path / "b.png")
    assert info.mode == "1" and t.shape == (1, H, W) and t.dtype == torch.uint8
    assert np.array_equal(t[0].numpy(), np.where(bits, 255, 0))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_grey_round_trip(tmp_path, ext):
    a = noise(H, W, dtype=np.uint16)
    write_image(tmp_path / f"g{ext}", torch.from_numpy(a))
    assert np.array_equal(cv2.imread(str(tmp_path / f"g{ext}"), cv2.IMREAD_UNCHANGED), a)
    t, info = read_image_with_info(tmp_path / f"g{ext}")
    assert t.dtype == torch.uint16 and t.shape == (1, H, W) and info.mode.startswith("I;16")
    assert np.array_equal(t[0].numpy(), a)


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_written_by_opencv_is_read_at_16_bits(tmp_path, channels, ext):
    rgb = noise(H, W, channels, dtype=np.uint16)
    bgr = rgb[:, :, [2, 1, 0, 3][:channels]]
    assert cv2.imwrite(str(tmp_path / f"c{ext}"), bgr)
    t, info = read_image_with_info(tmp_path / f"c{ext}")
    assert t.dtype == torch.uint16 and t.shape == (channels, H, W)
    assert info.mode == ("RGB;16" if channels == 3 else "RGBA;16")
    assert np.array_equal(as_hwc(t), rgb)


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_written_is_read_by_opencv(tmp_path, channels, ext):
    rgb = noise(H, W, channels, dtype=np.uint16)
    write_image(tmp_path / f"c{ext}", torch.from_numpy(rgb).permute(2, 0, 1))
    bgr = cv2.imread(str(tmp_path / f"c{ext}"), cv2.IMREAD_UNCHANGED)
    assert bgr.dtype == np.uint16
    assert np.array_equal(bgr, rgb[:, :, [2, 1, 0, 3][:channels]])


def test_16bit_grey_alpha_png_is_read(tmp_path):
    la = noise(H, W, 2, dtype=np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in la)  # filter 0 per row
    (tmp_path / "la16.png").write_bytes(png_bytes(W, H, 16, 4, raw))
    t, info = read_image_with_info(tmp_path / "la16.png")
    assert info.mode == "LA;16" and info.has_alpha
    assert t.dtype == torch.uint16 and np.array_equal(as_hwc(t), la)


def test_16bit_grey_alpha_is_written_as_rgba(tmp_path):
    la = noise(H, W, 2, dtype=np.uint16)
    write_image(tmp_path / "la.png", la)
    bgra = cv2.imread(str(tmp_path / "la.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(bgra, la[:, :, [0, 0, 0, 1]])


def test_float_grey_tiff_round_trip_exact(tmp_path):
    a = RNG.normal(size=(H, W)).astype(np.float32) * 1000  # outside 0..1 on purpose
    write_image(tmp_path / "f.tif", torch.from_numpy(a))
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F"
        assert np.array_equal(np.asarray(im), a)
    t, info = read_image_with_info(tmp_path / "f.tif")
    assert info.mode == "F" and t.dtype == torch.float32 and t.shape == (1, H, W)
    assert np.array_equal(t[0].numpy(), a)


def test_float_is_written_as_8bit_rounded_and_clipped(tmp_path):
    a = RNG.random((H, W, 3)).astype(np.float32)
    a[0, :6, 0] = [-0.5, 1.5, np.nan, 0.5 / 255, 1.5 / 255, np.inf]
    write_image(tmp_path / "f.png", torch.from_numpy(a).permute(2, 0, 1))
    expected = np.round(np.clip(np.nan_to_num(a, nan=0.0), 0, 1) * 255).astype(np.uint8)
    got = np.asarray(Image.open(tmp_path / "f.png"))
    assert np.array_equal(got, expected)
    assert list(got[0, :6, 0]) == [0, 255, 0, 0, 2, 255]  # numpy rounds half to even, as torch


def test_float_colour_tiff_is_8bit(tmp_path):
    a = RNG.random((3, H, W), dtype=np.float32)
    write_image(tmp_path / "f3.tif", torch.from_numpy(a))
    with Image.open(tmp_path / "f3.tif") as im:
        assert im.mode == "RGB"


def test_uint16_to_8bit_formats_is_rounded_division_by_257(tmp_path):
    a = noise(H, W, 3, dtype=np.uint16)
    a[0, :4, 0] = [0, 128, 129, 65535]
    expected = np.round(a / 257).astype(np.uint8)
    write_image(tmp_path / "x.bmp", a)  # lossless 8-bit: exact
    got = np.asarray(Image.open(tmp_path / "x.bmp"))
    assert np.array_equal(got, expected)
    assert list(got[0, :4, 0]) == [0, 0, 1, 255]


def test_uint16_written_to_jpeg_is_converted(tmp_path):
    a = (smooth_rgb().astype(np.uint16) * 257)[:, :, [0, 1, 2]]
    write_image(tmp_path / "x.jpg", torch.from_numpy(a).permute(2, 0, 1), quality=100)
    with Image.open(tmp_path / "x.jpg") as im:
        assert im.mode == "RGB"
        got = np.asarray(im).astype(int)
    assert np.abs(got - a // 257).mean() < 2  # JPEG is lossy, but the scale must be 8-bit


def test_jpeg_drops_alpha_and_grey_alpha(tmp_path):
    write_image(tmp_path / "rgba.jpg", noise(H, W, 4))
    write_image(tmp_path / "la.jpg", noise(H, W, 2))
    assert Image.open(tmp_path / "rgba.jpg").mode == "RGB"
    assert Image.open(tmp_path / "la.jpg").mode == "L"
    assert read_image(tmp_path / "la.jpg").shape == (1, H, W)


def test_webp_stores_grey_as_rgb(tmp_path):
    a = smooth_rgb()[:, :, 0]
    write_image(tmp_path / "g.webp", a, quality=100)
    with Image.open(tmp_path / "g.webp") as im:
        assert im.mode == "RGB"
        got = np.asarray(im).astype(int)
    assert np.abs(got - a[:, :, np.newaxis]).mean() < 3  # lossy, but grey in all channels


def test_jpeg_quality_changes_size_and_is_checked(tmp_path):
    a = noise(64, 64, 3)
    write_image(tmp_path / "lo.jpg", a, quality=20)
    write_image(tmp_path / "hi.jpg", a, quality=95)
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size / 2
    for bad in (0, 101):
        with pytest.raises(ValueError, match="quality"):
            write_image(tmp_path / "bad.jpg", a, quality=bad)
    assert not (tmp_path / "bad.jpg").exists()


def test_jpeg_read_matches_pillow(tmp_path):
    Image.fromarray(smooth_rgb()).save(tmp_path / "x.jpg", quality=80)
    t, info = read_image_with_info(tmp_path / "x.jpg")
    assert info.format == "JPEG" and t.shape == (3, H, W)
    assert np.array_equal(as_hwc(t), np.asarray(Image.open(tmp_path / "x.jpg")))


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    Image.fromarray(smooth_rgb()).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    t, info = read_image_with_info(tmp_path / "cmyk.jpg")
    assert info.mode == "CMYK" and t.shape == (3, H, W)
    reference = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    assert np.array_equal(as_hwc(t), reference)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (W, H), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 2
    t = read_image(tmp_path / "a.gif")
    assert t.shape == (3, H, W)
    assert torch.all(t[0] == 255) and torch.all(t[2] == 0)


def test_format_argument_overrides_extension(tmp_path):
    write_image(tmp_path / "photo.dat", noise(H, W, 3), format="JPEG")
    with Image.open(tmp_path / "photo.dat") as im:
        assert im.format == "JPEG"


# --- orientation and metadata --------------------------------------------------------------


@pytest.mark.parametrize(("orientation", "k"), [(6, -1), (8, 1)])
def test_exif_rotated_jpeg_is_read_upright(tmp_path, orientation, k):
    stored = smooth_rgb()
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif_bytes(orientation))
    decoded = np.asarray(Image.open(path))  # as stored, without the rotation
    t, info = read_image_with_info(path)
    assert t.shape == (3, W, H) and t.is_contiguous()
    assert np.array_equal(as_hwc(t), np.rot90(decoded, k=k))
    exif = Image.Exif()
    exif.load(info.exif)
    assert exif[0x0112] == 1
    assert exif[0x010F] == "ConvkitCam"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(noise(H, W, 3)).save(path, exif=exif_bytes(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert np.array_equal(as_hwc(read_image(path)), expected)


def test_orientation_reset_keeps_every_other_exif_byte(tmp_path):
    original = exif_bytes(6)
    Image.fromarray(smooth_rgb()).save(tmp_path / "o.jpg", exif=original)
    _, info = read_image_with_info(tmp_path / "o.jpg")
    assert len(info.exif) == len(original)
    differing = [i for i, (a, b) in enumerate(zip(info.exif, original, strict=True)) if a != b]
    assert 1 <= len(differing) <= 2  # just the Orientation value


def test_upright_image_keeps_exif_unchanged(tmp_path):
    original = exif_bytes(1)
    Image.fromarray(smooth_rgb()).save(tmp_path / "u.jpg", exif=original)
    assert read_image_with_info(tmp_path / "u.jpg")[1].exif == original


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16bit_colour_tiff_orientation_matches_pillow(tmp_path, orientation):
    tifffile = pytest.importorskip("tifffile")
    rgb = noise(H, W, 3, dtype=np.uint16)
    tag = [(274, "H", 1, orientation, True)]
    tifffile.imwrite(tmp_path / "o16.tif", rgb, photometric="rgb", extratags=tag)
    tifffile.imwrite(
        tmp_path / "o8.tif", (rgb >> 8).astype(np.uint8), photometric="rgb", extratags=tag
    )
    t = read_image(tmp_path / "o16.tif")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o8.tif")))
    assert t.dtype == torch.uint16
    assert np.array_equal(as_hwc(t) >> 8, expected)


def test_16bit_colour_png_orientation_is_applied(tmp_path):
    rgb = noise(H, W, 3, dtype=np.uint16)
    info = ImageInfo(
        format="PNG", mode="RGB;16", icc_profile=None, exif=exif_bytes(6), has_alpha=False
    )
    write_image(tmp_path / "o.png", rgb, info=info)
    t, back = read_image_with_info(tmp_path / "o.png")
    assert np.array_equal(as_hwc(t), np.rot90(rgb, k=-1))
    exif = Image.Exif()
    exif.load(back.exif)
    assert exif[0x0112] == 1


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tif"])
def test_icc_profile_and_exif_carried_through_write(tmp_path, ext):
    icc = srgb_profile()
    Image.fromarray(smooth_rgb()).save(tmp_path / "src.jpg", icc_profile=icc, exif=exif_bytes())
    t, info = read_image_with_info(tmp_path / "src.jpg")
    assert info.icc_profile == icc
    write_image(tmp_path / f"out{ext}", t, info=info)
    with Image.open(tmp_path / f"out{ext}") as im:
        assert im.info.get("icc_profile") == icc
        exif = im.getexif()
        assert exif[0x010F] == "ConvkitCam"
        assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"
    _, again = read_image_with_info(tmp_path / f"out{ext}")
    assert again.icc_profile == icc


def test_metadata_in_16bit_colour_png(tmp_path):
    icc = srgb_profile()
    info = ImageInfo(
        format="PNG", mode="RGB;16", icc_profile=icc, exif=exif_bytes(), has_alpha=False
    )
    rgb = noise(H, W, 3, dtype=np.uint16)
    write_image(tmp_path / "m.png", rgb, info=info)
    bgr = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)  # still a valid PNG
    assert np.array_equal(bgr, rgb[:, :, ::-1])
    with Image.open(tmp_path / "m.png") as im:
        assert im.info["icc_profile"] == icc
        assert im.getexif()[0x010F] == "ConvkitCam"
    t, back = read_image_with_info(tmp_path / "m.png")
    assert back.icc_profile == icc and np.array_equal(as_hwc(t), rgb)


def test_rgb_profile_is_not_written_to_grey_image(tmp_path):
    info = ImageInfo(
        format="PNG", mode="RGB", icc_profile=srgb_profile(), exif=None, has_alpha=False
    )
    write_image(tmp_path / "g.png", noise(H, W), info=info)
    with Image.open(tmp_path / "g.png") as im:
        assert "icc_profile" not in im.info


def test_no_metadata_when_source_has_none(tmp_path):
    Image.fromarray(smooth_rgb()).save(tmp_path / "plain.png")
    _, info = read_image_with_info(tmp_path / "plain.png")
    assert info == ImageInfo(format="PNG", mode="RGB", icc_profile=None, exif=None, has_alpha=False)


# --- bad input files -----------------------------------------------------------------------


def good_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(64, 64, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def good_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(64, 64, 3)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def good_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(64, 64, 3)).save(buffer, "TIFF")
    return buffer.getvalue()


def flip_byte(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def idat_crc_offset(png: bytes) -> int:
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack_from(">I", png, start)
    return start + 8 + length


BAD_FILES = {
    "empty.png": (lambda: b"", "empty file"),
    "text.png": (lambda: b"hello, not a picture\n", "not a PNG, JPEG, WebP, TIFF, BMP or GIF"),
    "cut.png": (lambda: good_png()[: len(good_png()) // 2], "truncated PNG"),
    "cut-header.png": (lambda: good_png()[:20], "truncated PNG"),
    "cut.jpg": (lambda: good_jpeg()[: len(good_jpeg()) // 2], "truncated JPEG"),
    "cut-header.jpg": (lambda: good_jpeg()[:100], "JPEG"),
    "cut.tif": (lambda: good_tiff()[: len(good_tiff()) // 2], "truncated TIFF"),
    "cut-header.tif": (lambda: good_tiff()[:100], "TIFF"),
    "bad-ihdr-crc.png": (lambda: flip_byte(good_png(), 29), "bad CRC in 'IHDR'"),
    "bad-idat-crc.png": (lambda: flip_byte(good_png(), idat_crc_offset(good_png())), "bad CRC"),
}


@pytest.mark.parametrize("filename", sorted(BAD_FILES))
def test_bad_file_raises_one_line_error_naming_it(tmp_path, filename, recwarn):
    make, reason = BAD_FILES[filename]
    path = tmp_path / filename
    path.write_bytes(make())
    with pytest.raises(ImageFileError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message
    assert "\n" not in message
    error = caught.value  # no chained Pillow traceback is printed with it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert not recwarn.list  # Pillow's warnings about the damage are in the message instead


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageFileError, match="nothing.png: no such file"):
        read_image(tmp_path / "nothing.png")
    with pytest.raises(ImageFileError, match="is a folder"):
        read_image(tmp_path)


def test_unsupported_pixel_format(tmp_path):
    Image.fromarray(noise(H, W, dtype=np.uint32).astype(np.int32) // 2).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    with pytest.raises(
        ImageFileError, match=r"i\.tif: unsupported pixel format \(Pillow mode 'I'\)"
    ):
        read_image(tmp_path / "i.tif")


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height grey pixels, with almost no data."""
    return png_bytes(width, height, 8, 0, b"\x00" * (width + 1))


def test_huge_declared_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png(40_000, 40_000))
    with pytest.raises(ImageFileError) as caught:
        read_image(path, max_pixels=1_000_000)
    assert str(caught.value) == (
        f"{path}: image is 40000x40000 = 1600000000 pixels, over the limit of 1000000; "
        "raise it with --max-pixels (max_pixels= in Python)"
    )


@pytest.mark.parametrize("side", [10_000, 40_000])  # over Pillow's warning / error threshold
def test_pillow_limit_applies_by_default_without_pillow_warnings(tmp_path, side, recwarn):
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png(side, side))
    with pytest.raises(ImageFileError, match=f"over the limit of {Image.MAX_IMAGE_PIXELS};"):
        read_image(path)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_max_pixels_can_raise_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    a = noise(50, 60, 3)  # 3000 pixels: over twice the patched limit, where Pillow raises
    Image.fromarray(a).save(tmp_path / "x.tif")  # Pillow's TIFF decoder checks the limit too
    with pytest.raises(ImageFileError, match="over the limit of 1000"):
        read_image(tmp_path / "x.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = read_image(tmp_path / "x.tif", max_pixels=5000)
    assert np.array_equal(as_hwc(t), a)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_concurrent_reads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    images = [noise(H, W, 3) for _ in range(16)]
    for i, a in enumerate(images):
        write_image(tmp_path / f"{i}.png", a)
    limit = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(read_image, [str(tmp_path / f"{i}.png") for i in range(16)]))
    assert all(np.array_equal(as_hwc(t), a) for t, a in zip(results, images, strict=True))
    assert Image.MAX_IMAGE_PIXELS == limit


def test_negative_max_pixels_is_invalid(tmp_path):
    write_image(tmp_path / "x.png", noise(H, W))
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(tmp_path / "x.png", max_pixels=-1)


# --- writing failures and atomicity --------------------------------------------------------


def test_write_to_missing_folder(tmp_path):
    path = tmp_path / "missing" / "out.png"
    with pytest.raises(ImageFileError) as caught:
        write_image(path, noise(H, W))
    assert str(caught.value).startswith(f"{path}: cannot write (")
    assert "does not exist" in str(caught.value)
    assert not (tmp_path / "missing").exists()


def test_write_below_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ImageFileError, match="cannot write"):
        write_image(tmp_path / "file" / "out.png", noise(H, W))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_write_to_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ImageFileError, match="out.png: cannot write"):
            write_image(folder / "out.png", noise(H, W))
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    write_image(path, noise(H, W))
    before = path.read_bytes()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cio.os, "replace", fail)
    with pytest.raises(ImageFileError, match=r"out.png: cannot write \(No space left on device\)"):
        write_image(path, noise(H, W))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_interrupted_write_leaves_no_temporary(tmp_path, monkeypatch):
    def interrupt(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(cio.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", noise(H, W))
    assert list(tmp_path.iterdir()) == []


def test_successful_write_leaves_only_the_file_with_normal_permissions(tmp_path):
    write_image(tmp_path / "out.jpg", noise(H, W, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["out.jpg"]
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert (tmp_path / "out.jpg").stat().st_mode & 0o777 == 0o666 & ~umask


def test_existing_file_is_replaced(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    write_image(path, noise(H, W))
    assert np.asarray(Image.open(path)).shape == (H, W)


def test_unknown_extension_lists_supported(tmp_path):
    with pytest.raises(ImageFileError) as caught:
        write_image(tmp_path / "out.xyz", noise(H, W))
    message = str(caught.value)
    assert "out.xyz: cannot write" in message and ".png" in message and ".tiff" in message
    with pytest.raises(ImageFileError, match="unknown format 'gif'"):
        write_image(tmp_path / "out.png", noise(H, W), format="gif")
    assert no_temp_files(tmp_path) and list(tmp_path.iterdir()) == []


def test_image_too_large_for_format(tmp_path):
    with pytest.raises(ImageFileError, match="too large for JPEG"):
        write_image(tmp_path / "wide.jpg", torch.zeros(1, 1, 70_000, dtype=torch.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (np.zeros((4, 4, 5), np.uint8), ValueError),
        (torch.zeros(2, 1, 4, 4), ValueError),
        (np.zeros((4, 4), np.int32), ValueError),
        (torch.zeros(3, 4, 4, dtype=torch.int16), ValueError),
        (torch.zeros(3, 0, 4), ValueError),
        ([[0, 1], [2, 3]], TypeError),
    ],
)
def test_invalid_images_are_rejected(tmp_path, image, error):
    with pytest.raises(error):
        write_image(tmp_path / "x.png", image)
    assert list(tmp_path.iterdir()) == []


# --- names ---------------------------------------------------------------------------------


def test_supported_extensions_and_is_image_path():
    assert set(SUPPORTED_EXTENSIONS) == {
        ".png",
        ".jpg",
        ".jpeg",
        ".webp",
        ".tif",
        ".tiff",
        ".bmp",
        ".gif",
    }
    assert all(e == e.lower() and e.startswith(".") for e in SUPPORTED_EXTENSIONS)
    assert is_image_path("a/b/Photo.JPG") and is_image_path(Path("x.tiff"))
    assert is_image_path("anim.gif")
    assert not is_image_path("notes.txt") and not is_image_path("png") and not is_image_path(".tmp")


def test_pixel_limit_holds_while_another_thread_parses_a_header(tmp_path):
    # io switches Pillow's global limit off for a moment while it parses a header; a reader in
    # another thread must still see the real limit, not that moment's None.
    import threading
    import time

    from PIL import Image

    from convkit.io import images as cio

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(50_000, 50_000, 8, 2, b"\x00" * 64))
    result: list[BaseException | None] = []

    def reader() -> None:
        try:
            cio.read_image(bomb)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            result.append(e)

    with cio.PILLOW_GLOBALS:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.2)
        Image.MAX_IMAGE_PIXELS = saved
    t.join(10)
    assert isinstance(result[0], cio.ImageFileError)
    assert "over the limit" in str(result[0])


def test_16bit_to_8bit_rounds_every_level():
    """round(x / 257) for all 65536 levels, against float64 arithmetic (write_image's rule)."""
    from convkit.io.images import _to_8bit

    x = np.arange(65536, dtype=np.uint16).reshape(1, 256, 256)
    ref = np.round(x.astype(np.float64) / 257).astype(np.uint8)
    assert np.array_equal(_to_8bit(x), ref)
    assert np.array_equal(_to_8bit(np.ascontiguousarray(np.repeat(x, 3, 0).transpose(0, 2, 1))),
                          np.repeat(ref, 3, 0).transpose(0, 2, 1))


@pytest.mark.parametrize("kind", ["rgb", "grey", "rgb16", "rgba16"])
def test_png_cut_short_is_refused_or_read_as_far_as_it_goes(tmp_path, kind):
    """A PNG cut in half is refused, naming --allow-truncated; with allow_truncated the rows
    that arrived are the file's own and the rest black, as Pillow's LOAD_TRUNCATED_IMAGES
    gives them for 8 bits (16-bit colour, which Pillow cannot hold, too). It refused such
    files whatever the option said."""
    from PIL import ImageFile

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:120, 0:90]
    base = np.stack([(xx * 2 + yy + 40 * c) % 256 for c in range(4)], -1).astype(np.uint8)
    base = base + rng.integers(0, 3, base.shape, dtype=np.uint8)
    a = {"rgb": base[:, :, :3], "grey": base[:, :, 0], "rgb16": base[:, :, :3] * np.uint16(257),
         "rgba16": base * np.uint16(257)}[kind]
    full = tmp_path / "full.png"
    cv2.imwrite(str(full), a if a.ndim == 2 else a[:, :, [2, 1, 0, 3][: a.shape[2]]])
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageFileError, match="truncated PNG file .*--allow-truncated accepts"):
        read_image(cut)
    got = cio.read_array_with_info(cut, allow_truncated=True)[0]
    got = got[0] if a.ndim == 2 else got.transpose(1, 2, 0)
    assert got.shape == a.shape and got.dtype == a.dtype
    same = [bool(np.array_equal(got[r], a[r])) for r in range(a.shape[0])]
    arrived = same.index(False)
    assert 20 <= arrived < a.shape[0], arrived  # about half the rows, each the file's own
    assert not got[arrived + 1 :].any()  # then black (the row cut through may be partial)
    if kind in ("rgb", "grey"):
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            pillow = np.asarray(Image.open(cut).convert("RGB" if kind == "rgb" else "L"))
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        np.testing.assert_array_equal(got[:arrived], pillow[:arrived])


def test_png_cut_short_guards(tmp_path):
    """What --allow-truncated must not accept, or must read right: a second IHDR (decoders
    differ on which counts, and the size checks read the first: 79 bytes declaring 8000x8000
    16-bit RGBA were completed into a 1 GB image), a file cut inside its header or before any
    image data (nothing to read), image data damaged as well as cut (the rows before the
    damage kept, as Pillow keeps them), an eXIf chunk after the image data (kept: the
    orientation applies) and an interlaced 16-bit colour file."""
    from PIL import ImageFile

    def ihdr(w, h, depth=8, colour=2, interlace=0):
        return png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace))

    raw = zlib.compress(b"\0" + bytes(3))
    bomb = cio.PNG_SIGNATURE + ihdr(1, 1) + ihdr(8000, 8000, 16, 6) + png_chunk(b"IDAT", raw)
    for data, allow in ((bomb[:-3], True), (bomb + png_chunk(b"IEND", b""), True),
                        (bomb + png_chunk(b"IEND", b""), False)):
        (tmp_path / "bomb.png").write_bytes(data)
        with pytest.raises(ImageFileError, match="a second IHDR"):
            cio.read_array_with_info(tmp_path / "bomb.png", allow_truncated=allow)
    a = np.random.default_rng(5).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    full = tmp_path / "full.png"
    cv2.imwrite(str(full), a[:, :, ::-1])
    data = full.read_bytes()
    for cut, message in ((20, "cut inside its header"), (33, "no image data")):
        (tmp_path / "cut.png").write_bytes(data[:cut])
        with pytest.raises(ImageFileError, match=message) as caught:
            cio.read_array_with_info(tmp_path / "cut.png", allow_truncated=True)
        assert "--allow-truncated" not in str(caught.value)
    # damaged in the middle of its image data, and cut after it
    idat = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[idat : idat + 4])[0]
    body = bytearray(data[idat + 8 : idat + 8 + length])
    body[len(body) // 2] ^= 0xFF
    damaged = data[:idat] + png_chunk(b"IDAT", bytes(body))  # no IEND
    (tmp_path / "damaged.png").write_bytes(damaged)
    got = cio.read_array_with_info(tmp_path / "damaged.png", allow_truncated=True)[0]
    got = got.transpose(1, 2, 0)
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        pillow = np.asarray(Image.open(tmp_path / "damaged.png").convert("RGB"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    kept = [bool(np.array_equal(pillow[r], a[r])) for r in range(40)].index(False)
    assert kept > 5 and np.array_equal(got[:kept], a[:kept]), kept
    # an eXIf chunk after the image data, the file cut inside IEND
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff = exif.tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\0\0") else tiff
    whole = data[:-12] + png_chunk(b"eXIf", tiff) + data[-12:]
    (tmp_path / "turned.png").write_bytes(whole)
    (tmp_path / "turned-cut.png").write_bytes(whole[:-6])
    ref = cio.read_array_with_info(tmp_path / "turned.png")[0]
    assert ref.shape == (3, 30, 40)  # turned upright
    got = cio.read_array_with_info(tmp_path / "turned-cut.png", allow_truncated=True)[0]
    np.testing.assert_array_equal(got, ref)
    # interlaced 16-bit colour (decoded by OpenCV), written pass by pass (Adam7), cut short
    a16 = a.astype(np.uint16) * 257
    scan = b"".join(b"\0" + row.astype(">u2").tobytes()
                    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                                           (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
                    for row in a16[y0::dy, x0::dx] if row.size)
    inter = (cio.PNG_SIGNATURE + ihdr(30, 40, 16, 2, 1) + png_chunk(b"IDAT", zlib.compress(scan))
             + png_chunk(b"IEND", b""))
    (tmp_path / "inter.png").write_bytes(inter)
    np.testing.assert_array_equal(
        cio.read_array_with_info(tmp_path / "inter.png")[0].transpose(1, 2, 0), a16)
    (tmp_path / "inter-cut.png").write_bytes(inter[: len(inter) * 2 // 3])
    got = cio.read_array_with_info(tmp_path / "inter-cut.png", allow_truncated=True)[0]
    assert got.dtype == np.uint16 and got.shape == (3, 40, 30)
    np.testing.assert_array_equal(got.transpose(1, 2, 0)[::8, ::8], a16[::8, ::8])  # pass 1
