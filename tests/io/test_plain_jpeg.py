"""Plain JPEGs are read from their own header without Pillow (the command line's commonest
file); everything else, and every doubt, goes to Pillow. Both give what Pillow gives."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import run_cli, run_python
from PIL import Image, ImageCms, ImageOps

import convkit.io.images as cio
from convkit.io.formats import jpeg_header, jpeg_segments
from convkit.io.images import ImageFileError, read_array_with_info

H, W = 48, 64


def photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def exif_bytes(orientation: int | None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "ConvkitCam"  # Make
    if orientation is not None:
        exif[0x0112] = orientation
    return exif.tobytes()


def srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def big_icc() -> bytes:
    """An sRGB profile padded past 64 KiB, so that Pillow writes it in three APP2 chunks."""
    return srgb() + bytes(150_000)


def save(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", **kw)
    return buf.getvalue()


def swap_icc_chunks(data: bytes) -> bytes:
    """The file with its first two ICC chunks in the other order (decoders must sort them)."""
    spans, i = [], 2
    for marker, body in jpeg_segments(data):
        start = data.index(body, i) - 4
        if marker == 0xE2 and body.startswith(b"ICC_PROFILE\x00"):
            spans.append((start, start + 4 + len(body)))
        i = start + 4 + len(body)
    (a0, a1), (b0, b1) = spans[:2]
    return data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:]


def pillow_reads(path) -> tuple[np.ndarray, bytes | None]:
    with Image.open(path) as im:
        icc = im.info.get("icc_profile")
        return np.asarray(ImageOps.exif_transpose(im)), icc


PLAIN = {
    "baseline 4:2:0": lambda: save(photo(), quality=90),
    "4:4:4": lambda: save(photo(), quality=95, subsampling=0),
    "progressive": lambda: save(photo(), quality=90, progressive=True),
    "grey": lambda: save(photo()[..., 0], quality=90),
    "icc in three chunks": lambda: save(photo(), quality=90, icc_profile=big_icc()),
    "icc chunks out of order": lambda: swap_icc_chunks(save(photo(), icc_profile=big_icc())),
    **{f"orientation {o}": (lambda o=o: save(photo(), exif=exif_bytes(o))) for o in range(1, 9)},
    "exif without orientation": lambda: save(photo(), exif=exif_bytes(None)),
}


@pytest.fixture
def no_pillow(monkeypatch):
    """Fails the test if the reader opens the file with Pillow."""
    def refuse(data, name):
        raise AssertionError(f"{name} went to Pillow")
    monkeypatch.setattr(cio, "_open", refuse)


@pytest.mark.parametrize("case", list(PLAIN))
def test_plain_jpeg_read_without_pillow_as_pillow_reads_it(tmp_path, case, monkeypatch):
    path = tmp_path / "x.jpg"
    path.write_bytes(PLAIN[case]())
    expected, icc = pillow_reads(path)
    # by the Pillow route (the header parsed by Pillow) ...
    monkeypatch.setattr(cio, "_read_plain_jpeg", lambda *a: None)
    by_pillow, pillow_info = read_array_with_info(path)
    monkeypatch.undo()
    # ... and by the plain route, where Pillow must not be asked
    opened = []
    monkeypatch.setattr(cio, "_open", lambda *a: opened.append(a) or None)
    chw, info = read_array_with_info(path)
    assert not opened, f"{case}: went to Pillow"
    got = chw.transpose(1, 2, 0)
    assert np.array_equal(got if expected.ndim == 3 else got[..., 0], expected), case
    assert np.array_equal(chw, by_pillow), case
    assert info == pillow_info, case
    assert info.icc_profile == (icc if icc and icc[16:20] in (b"RGB ", b"GRAY") else None)
    if info.exif is not None:
        exif = Image.Exif()
        exif.load(info.exif)
        assert exif.get(0x0112, 1) == 1 and exif[0x010F] == "ConvkitCam"


def test_interleaved_plain_jpeg_is_a_view_of_the_pixels(tmp_path, no_pillow):
    path = tmp_path / "x.jpg"
    path.write_bytes(save(photo(), exif=exif_bytes(6)))
    chw, _ = read_array_with_info(path, interleaved=True)
    expected, _ = pillow_reads(path)
    assert chw.transpose(1, 2, 0).flags.c_contiguous
    assert np.array_equal(chw.transpose(1, 2, 0), expected)


def test_unusual_jpegs_go_to_pillow(tmp_path):
    """Files the plain route does not read as Pillow would are left to Pillow: an XMP
    orientation without an EXIF one (Pillow applies it), a multi-picture file (its frame
    count matters to in-place writes), CMYK, and a file cut short (Pillow says truncated)."""
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
           b' tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    (tmp_path / "xmp.jpg").write_bytes(save(photo(), xmp=xmp))
    chw, _ = read_array_with_info(tmp_path / "xmp.jpg")
    assert chw.shape == (3, W, H)  # turned as Pillow's exif_transpose turns it
    assert np.array_equal(chw.transpose(1, 2, 0), pillow_reads(tmp_path / "xmp.jpg")[0])

    frames = [Image.fromarray(photo(s)) for s in range(2)]
    frames[0].save(tmp_path / "two.mpo", "MPO", save_all=True, append_images=frames[1:])
    assert jpeg_header((tmp_path / "two.mpo").read_bytes()) is None
    assert read_array_with_info(tmp_path / "two.mpo")[1].frames == 2

    Image.fromarray(photo()).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_array_with_info(tmp_path / "cmyk.jpg")[1].mode == "CMYK"

    data = save(photo())
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(ImageFileError, match="cut.jpg: .*truncated"):
        read_array_with_info(tmp_path / "cut.jpg")


def test_damaged_plain_jpeg_is_refused_by_the_plain_route(tmp_path, no_pillow):
    """Scan data corrupted in the middle, EOI intact: one line naming the file; decoded
    anyway with allow_truncated."""
    data = bytearray(save(photo(), quality=90))
    sos = data.index(b"\xff\xda")
    for k in range(sos + 200, sos + 260):
        data[k] = 0xFF if data[k] != 0xFF else 0x00
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageFileError, match=r"bad.jpg: damaged JPEG"):
        read_array_with_info(tmp_path / "bad.jpg")
    chw, _ = read_array_with_info(tmp_path / "bad.jpg", allow_truncated=True)
    assert chw.shape == (3, H, W)


def test_pixel_limit_holds_on_the_plain_route(tmp_path, no_pillow, monkeypatch):
    (tmp_path / "x.jpg").write_bytes(save(photo()))
    with pytest.raises(ImageFileError, match=r"x.jpg: image is 64x48 = 3072 pixels, over the "
                                             r"limit of 3000"):
        read_array_with_info(tmp_path / "x.jpg", max_pixels=3000)
    # a limit set in Pillow (once Pillow is imported) is the default one
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with pytest.raises(ImageFileError, match="over the limit of 3000"):
        read_array_with_info(tmp_path / "x.jpg")


def test_pillow_default_pixel_limit_is_pillows():
    """The limit the reader assumes before Pillow is imported is Pillow's own default."""
    code = "import PIL.Image as I, convkit.io.images as c; " \
           "print(I.MAX_IMAGE_PIXELS == c.PILLOW_DEFAULT_PIXEL_LIMIT)"
    res = run_python(code, timeout=60)
    assert res.stdout.strip() == "True", res.stderr


def test_header_walk_refuses_malformed_segments():
    """Cut, overlong, junk-filled and reordered headers give None, never an exception."""
    good = save(photo(), exif=exif_bytes(3), icc_profile=big_icc())
    assert jpeg_header(good) is not None
    sos = good.index(b"\xff\xda")
    sof = good.index(b"\xff\xc0")
    bad = {
        "cut in a segment": good[:sof + 6],
        "no scan": good[:sos],
        "overlong segment": good[:sof + 2] + b"\xff\xff" + good[sof + 4:],
        "junk between segments": good[:sof] + b"\x00" + good[sof:],
        "scan before frame": good[:2] + good[sos:],
        "12-bit frame": good[:sof + 4] + b"\x0c" + good[sof + 5:],
        "two frames": good[:sos] + good[sof:sos] + good[sos:],
        "not a JPEG": b"\x89PNG" + good[4:],
    }
    for what, data in bad.items():
        assert jpeg_header(data) is None, what
    rng = np.random.default_rng(0)
    for _ in range(300):  # random damage to the header never raises
        mutated = bytearray(good[:sos + 64])
        for k in rng.integers(2, len(mutated), 3):
            mutated[k] = int(rng.integers(0, 256))
        jpeg_header(bytes(mutated))


def test_command_line_reads_and_writes_jpegs_without_pillow(tmp_path):
    """A JPEG through ``convkit sharpen`` in a fresh interpreter imports neither Pillow nor
    torch, and the result is OpenCV's filter of Pillow's decode."""
    import cv2

    src = tmp_path / "in.jpg"
    src.write_bytes(save(photo(), quality=95, exif=exif_bytes(1), icc_profile=srgb()))
    loaded = run_cli(["sharpen", "-q", str(src), "-o", str(tmp_path / "o.png")],
                     report="'PIL' in sys.modules, 'torch' in sys.modules",
                     env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert loaded == "False False", loaded
    k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    ref = cv2.filter2D(pillow_reads(src)[0], -1, k, borderType=cv2.BORDER_REFLECT_101)
    with Image.open(tmp_path / "o.png") as out:
        assert np.array_equal(np.asarray(out), ref)
        assert out.info.get("icc_profile") == Image.open(src).info.get("icc_profile")


def with_exif(data: bytes, tiff: bytes) -> bytes:
    """``data`` (a JPEG) with an APP1 EXIF block holding ``tiff`` right after SOI."""
    body = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


def ifd0(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """Little-endian TIFF data with one directory of (tag, type, count, 4-byte value)."""
    import struct

    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHI", tag, kind, count) + value
    return out + struct.pack("<I", 0)


@pytest.mark.parametrize("first", ["bad make", "orientation"])
def test_exif_that_pillow_stops_reading_is_read_as_pillow_reads_it(tmp_path, first):
    """A Make tag whose text lies past the EXIF block: Pillow stops reading the directory
    there, so an Orientation after it is never applied; one before it is. Both routes agree."""
    import struct

    make = (0x010F, 2, 32, struct.pack("<I", 5000))
    orientation = (0x0112, 3, 1, struct.pack("<HH", 6, 0))
    entries = [make, orientation] if first == "bad make" else [orientation, make]
    path = tmp_path / "x.jpg"
    path.write_bytes(with_exif(save(photo()), ifd0(entries)))
    with Image.open(path) as im:
        turned = im.getexif().get(0x0112, 1) == 6
    chw, _ = read_array_with_info(path)
    assert chw.shape == ((3, W, H) if turned else (3, H, W))
    assert turned == (first == "orientation")


def test_markers_pillow_refuses_are_refused(tmp_path):
    """A TEM marker between segments: Pillow finds no marker there, and so does the reader
    (the plain route does not skip it)."""
    data = save(photo())
    (tmp_path / "tem.jpg").write_bytes(data[:2] + b"\xff\x01" + data[2:])
    assert jpeg_header((tmp_path / "tem.jpg").read_bytes()) is None
    with pytest.raises(ImageFileError, match="tem.jpg: "):
        read_array_with_info(tmp_path / "tem.jpg")
