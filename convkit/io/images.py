"""Reading and writing image files as NumPy arrays or torch tensors.

Images are read into contiguous ``(C, H, W)`` arrays (:func:`read_array_with_info`, torch-free:
the command line's CPU route) or tensors (:func:`read_image_with_info`) with one channel for
grey, two for grey + alpha, three for RGB and four for RGBA. Pixel values keep the file's bit
depth: ``uint8`` for 8-bit files, ``uint16`` for 16-bit PNG and TIFF, ``float32`` for float
TIFF. torch is imported only for tensors and for decoding JPEGs on a GPU, Pillow only for
files other than plain JPEGs (those are read from their own header and decoded by libjpeg-turbo
through simplejpeg, written through OpenCV).

Every problem with a file raises :class:`ImageFileError`, whose message is one line naming the
file and the reason, so a command-line tool can print it as it is.

The functions may be called from several threads at once.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .files import READ_FLAGS, NotRegularFile, not_a_regular_file, read_regular
from .formats import (
    JPEG_SOF,
    PNG_SIGNATURE,
    WRITE_FORMATS,
    JpegHeader,
    jpeg_header,
    jpeg_segments,
    png_header,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "EncodedJPEG",
    "ImageFileError",
    "ImageInfo",
    "decode_jpegs",
    "is_image_path",
    "read_array_with_info",
    "sniff_format",
    "read_image",
    "read_image_with_info",
    "write_image",
]

StrPath = str | os.PathLike[str]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
)
"""Extensions :func:`is_image_path` accepts (lower case, with the dot); GIF is read-only."""

# Extension -> Pillow format name for writing.
WRITE_EXTENSIONS: tuple[str, ...] = tuple(WRITE_FORMATS)
"""Extensions :func:`write_image` can write."""

# Pillow plugins read_image may use. Limiting them keeps Pillow from handing a file to one of its
# many rarer plugins (EPS even runs Ghostscript). The JPEG plugin also opens MPO, the JPEG variant
# of cameras that store extra preview images.
_READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
_READABLE = "PNG, JPEG, WebP, TIFF, BMP or GIF"

_EXIF_ORIENTATION = 0x0112
_EXIF_HEADER = b"Exif\x00\x00"

# Largest side each format can store.
_MAX_SIDE = {"JPEG": 65_535, "WEBP": 16_383}

# Image.open runs with Pillow's process-wide pixel limit switched off, so that the image's size
# can be checked here against max_pixels (which may be above Pillow's own limit) and reported in
# the error. The lock stops two reads from restoring each other's values.
PILLOW_GLOBALS = threading.Lock()


# Pillow's own default of Image.MAX_IMAGE_PIXELS (a test checks it against Pillow's).
PILLOW_DEFAULT_PIXEL_LIMIT = 1024 * 1024 * 1024 // 4 // 3


def pillow_pixel_limit() -> int | None:
    """Pillow's decompression-bomb limit. Read under the lock: ``_open`` switches it off for a
    moment in whichever thread is parsing a header, and an unlocked read could see None.
    Pillow is imported only for the files that need it (a plain JPEG does not); before it is,
    nothing can have changed its default."""
    pil = sys.modules.get("PIL.Image")
    if pil is None:
        return PILLOW_DEFAULT_PIXEL_LIMIT
    with PILLOW_GLOBALS:
        return getattr(pil, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_PIXEL_LIMIT)


@contextmanager
def no_pixel_limit() -> Iterator[None]:
    """Pillow's decompression-bomb limit switched off while a header is parsed (the caller
    checks the size against its own limit), under the lock that keeps two threads from
    restoring each other's values."""
    from PIL import Image

    with PILLOW_GLOBALS:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


class ImageFileError(ValueError):
    """An image file could not be read or written.

    The message is one line, ``"<path>: <reason>"``, for example
    ``"photo.png: not a PNG, JPEG, WebP, TIFF, BMP or GIF image (cannot identify image file)"``.
    """


@dataclass
class ImageInfo:
    """File metadata carried from an image that was read to the image written from it.

    Attributes:
        format: Pillow's format name of the source, e.g. ``"PNG"``, ``"JPEG"``.
        mode: The source's Pillow mode, e.g. ``"RGB"``, ``"P"``, ``"I;16"``. For 16-bit colour
            images, which Pillow cannot hold, it is ``"LA;16"``, ``"RGB;16"`` or ``"RGBA;16"``.
        icc_profile: The embedded ICC profile, or None. Dropped on read when it does not describe
            the channels returned (a CMYK profile on an image converted to RGB).
        exif: The EXIF block as ``b"Exif\\0\\0"`` followed by the TIFF-structured data, or None.
            When the orientation was applied on read, its Orientation tag reads 1. TIFF files
            give None: their tags describe the file's own layout.
        has_alpha: True when the tensor read has an alpha channel (2 or 4 channels).
        frames: Frames (animated GIF, PNG, WebP) or pages (TIFF) in the file; only the first
            is read. A caller that writes the result over a file of several frames would lose
            the others (see :func:`convkit.pipeline.batches.run`, which refuses that).
    """

    format: str | None
    mode: str
    icc_profile: bytes | None
    exif: bytes | None
    has_alpha: bool
    frames: int = 1


@dataclass
class EncodedJPEG:
    """A grey or RGB JPEG read but not decoded, from ``read_image_with_info(defer_jpeg=True)``.

    Its header was parsed and checked like any file's, so ``shape`` and ``dtype`` are those of
    the image :func:`decode_jpegs` will give (display layout, after the EXIF orientation), and
    batches can be planned before any pixel is decoded.

    Attributes:
        name: The file, for error messages.
        data: The file's bytes, a 1-D ``uint8`` tensor on the CPU.
        channels: 1 for grey, 3 for RGB (YCbCr in the file).
        height, width: As stored, before the orientation is applied.
        orientation: The EXIF orientation (1 to 8) to apply after decoding.
    """

    name: str
    data: torch.Tensor
    channels: int
    height: int
    width: int
    orientation: int

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w = (self.width, self.height) if self.orientation >= 5 else (self.height, self.width)
        return self.channels, h, w

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return torch.uint8


def decode_jpegs(items: list[EncodedJPEG], device: torch.device | str) -> list[torch.Tensor]:
    """Decode JPEGs read with ``defer_jpeg=True`` on ``device``, in as few calls as possible.

    On a CUDA device torchvision hands them to nvJPEG as one batch (one per channel count).
    nvJPEG's pixels are not libjpeg-turbo's (the JPEG standard leaves decoders some freedom): on
    an H100, 1080p photos came out 0.31 grey levels apart on average and up to 29 apart. On the
    CPU torchvision's libjpeg-turbo gives the same pixels as :func:`read_image`.

    Returns:
        One contiguous ``(C, H, W)`` ``uint8`` tensor per item, in order, on ``device``, in
        display layout.

    Raises:
        ImageFileError: The decoder refused the data. With one item the message names its file;
            with several it names the first and the count (decode them one by one to find which).
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(items)
    if torch.device(device).type == "cuda":
        # nvJPEG's hardware engine can write its outputs before work queued earlier on the
        # stream has run, into blocks the caching allocator freed to it while queued kernels
        # still read them (pytorch/vision#9606): let that work finish first.
        torch.cuda.current_stream(device).synchronize()
    for channels, mode in ((1, ImageReadMode.GRAY), (3, ImageReadMode.RGB)):
        idx = [i for i, item in enumerate(items) if item.channels == channels]
        if not idx:
            continue
        try:
            decoded = decode_jpeg([items[i].data for i in idx], mode=mode, device=device)
        except Exception as e:  # nvJPEG and libjpeg report damage as RuntimeError, mostly
            first = items[idx[0]].name
            which = first if len(idx) == 1 else f"{first} (or one of {len(idx) - 1} more)"
            raise ImageFileError(f"{which}: cannot decode JPEG on {device} ({_describe(e)})") \
                from None
        for i, image in zip(idx, decoded, strict=True):
            item = items[i]
            if tuple(image.shape) != (channels, item.height, item.width):
                raise ImageFileError(
                    f"{item.name}: JPEG decoded on {device} to shape {tuple(image.shape)}, "
                    f"expected {(channels, item.height, item.width)} from its header"
                )
            out[i] = _orient_tensor(image, item.orientation)
    return out  # type: ignore[return-value]


def is_image_path(path: StrPath) -> bool:
    """Tell from the name alone whether ``path`` is a file :func:`read_image` can read."""
    return Path(os.fsdecode(path)).suffix.lower() in SUPPORTED_EXTENSIONS


def read_image(path: StrPath, *, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file into a tensor.

    See :func:`read_image_with_info`, which also returns the file's metadata.

    Returns:
        Contiguous ``(C, H, W)`` tensor, ``uint8``, ``uint16`` or ``float32``.
    """
    return read_image_with_info(path, max_pixels=max_pixels)[0]


def read_image_with_info(
    path: StrPath, *, max_pixels: int | None = None, defer_jpeg: bool = False,
    allow_truncated: bool = False,
) -> tuple[torch.Tensor | EncodedJPEG, ImageInfo]:
    """Read an image file into a ``(C, H, W)`` tensor, with the metadata needed to write it
    back: :func:`read_array_with_info`, whose arguments and errors it shares, as a tensor that
    shares the array's memory."""
    import torch

    image, info = read_array_with_info(path, max_pixels=max_pixels, defer_jpeg=defer_jpeg,
                                       allow_truncated=allow_truncated)
    return (image if isinstance(image, EncodedJPEG) else torch.from_numpy(image)), info


def read_array_with_info(
    path: StrPath, *, max_pixels: int | None = None, defer_jpeg: bool = False,
    allow_truncated: bool = False, interleaved: bool = False,
) -> tuple[np.ndarray | EncodedJPEG, ImageInfo]:
    """Read an image file into a NumPy array, with the metadata needed to write it back.

    The format is told from the content, not the name: PNG, JPEG, WebP, TIFF, BMP and GIF. Of an
    animated GIF, PNG or WebP only the first frame is read. The EXIF orientation is applied, so
    the tensor is the image as it should be displayed.

    Channels: grey gives 1, grey + alpha 2, RGB 3, RGBA 4. Palette images give RGB, or RGBA when
    they have transparency; bilevel images give grey 0/255; CMYK and YCbCr give RGB.

    Args:
        path: The file to read.
        max_pixels: Refuse images with more pixels (width * height) than this. None or 0 keeps
            Pillow's limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 million unless changed;
            None there means no limit).
        defer_jpeg: Leave a complete grey or RGB JPEG undecoded: ``image`` is then an
            :class:`EncodedJPEG` (its header checked, its metadata read) for
            :func:`decode_jpegs` to decode on a GPU. Other files are decoded as usual.
        interleaved: Give the (C, H, W) array as a view of the decoded (H, W, C) pixels
            instead of a planar copy (OpenCV filters and encoders take interleaved images as
            they lie: the command line's route saves two copies of every image).
        allow_truncated: Decode what a damaged file holds instead of refusing it: a JPEG
            whose decoder reports missing or corrupt data (libjpeg-turbo's warnings, "premature
            end of data segment" and the like), or a file cut short, gives the pixels that
            could be decoded, the rest grey (JPEG) or black (others: palette entry 0 in a
            palette PNG, transparent where there is alpha), as Pillow's
            ``LOAD_TRUNCATED_IMAGES`` does. A PNG cut inside its header or before any image
            data, or with a second IHDR, is refused all the same. By default such a file
            raises ImageFileError.

    Returns:
        ``(image, info)``: ``image`` is a contiguous ``(C, H, W)`` array (a view of a
        contiguous (H, W, C) one with ``interleaved``), ``uint8`` for 8-bit
        (and lower) files, ``uint16`` for 16-bit PNG and TIFF, ``float32`` (one channel) for
        float TIFF; ``info`` is the file's :class:`ImageInfo`.

    Raises:
        ImageFileError: The file is missing, not a regular file (a FIFO, a device),
            unreadable, not an image, corrupt or truncated (JPEG data that its decoder reports
            missing or corrupt included), in a pixel format this module does not handle, or
            over the pixel limit.
        ValueError: ``max_pixels`` is negative.
    """
    name = os.fsdecode(path)
    if max_pixels is not None and max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0, got {max_pixels}")
    limit = max_pixels or pillow_pixel_limit()

    data = _read_bytes(path, name)
    if data.startswith(PNG_SIGNATURE):
        if check_png_chunks(data, name, allow_truncated):
            check_png_size(data, name)  # a bomb cut short is still one
            data = _complete_png(data, name, limit)
    elif not defer_jpeg:
        plain = _read_plain_jpeg(data, name, limit, allow_truncated, interleaved)
        if plain is not None:
            return plain
    im = _open(data, name)
    try:
        width, height = im.size
        if limit is not None and width * height > limit:
            raise _over_limit(name, width, height, limit)
        if im.format == "PNG":
            check_png_size(data, name)
        if defer_jpeg and _plain_jpeg(im, data):
            orientation, mode = exif_orientation(im), im.mode
            import torch

            image = EncodedJPEG(name, torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                1 if im.mode == "L" else 3, height, width, orientation)
        elif _is_16bit_colour(im, data):
            chw, mode, orientation = _decode_16bit_colour(im, data, name)
            image = _orient_array(chw, orientation)
        else:
            if im.format in ("JPEG", "MPO"):
                _check_jpeg_data(im, data, name, allow_truncated)
            decoded = None
            if _plain_jpeg(im, data, ("JPEG", "MPO")):
                pixels = _decode_jpeg(data, im.mode == "L", im.size, name, allow_truncated,
                                      interleaved)
                if pixels is not None:
                    decoded = pixels, im.mode, exif_orientation(im)
            chw, mode, orientation = decoded or _decode_with_pillow(im, name, allow_truncated)
            image = _orient_array(chw, orientation, interleaved)
        info = ImageInfo(
            format="JPEG" if im.format == "MPO" else im.format,
            mode=mode,
            icc_profile=matching_icc(im.info.get("icc_profile"), image.shape[0]),
            exif=exif_block(im, reset_orientation=orientation != 1),
            has_alpha=image.shape[0] in (2, 4),
            frames=_frames(im),
        )
    finally:
        im.close()
    return image, info


def _read_plain_jpeg(data: bytes, name: str, limit: int | None, allow_truncated: bool,
                     interleaved: bool) -> tuple[np.ndarray, ImageInfo] | None:
    """A plain JPEG (see :func:`~convkit.io.formats.jpeg_header`, complete to its EOI
    marker) read from its own header and decoded strictly, without Pillow: Pillow's import and
    its first header parse cost about 25 ms of a 0.2 s one-photo command. None for every other
    file, which the Pillow route reads (the same pixels and metadata, and its messages for
    damaged headers)."""
    header = jpeg_header(data)
    if header is None or not _ends_complete(data):
        return None
    orientation = _jpeg_orientation(header)
    if orientation is None:
        return None
    width, height = header.width, header.height
    if limit is not None and width * height > limit:
        raise _over_limit(name, width, height, limit)
    grey = header.components == 1
    chw = _decode_jpeg(data, grey, (width, height), name, allow_truncated, interleaved)
    if chw is None:
        return None
    image = _orient_array(chw, orientation, interleaved)
    info = ImageInfo(format="JPEG", mode="L" if grey else "RGB",
                     icc_profile=matching_icc(header.icc, image.shape[0]),
                     exif=_exif_from_raw(header.exif, reset_orientation=orientation != 1),
                     has_alpha=False, frames=1)
    return image, info


def _jpeg_orientation(header: JpegHeader) -> int | None:
    """The EXIF orientation of a plain JPEG as Pillow reads it, or None where this cannot
    tell it the same way (an unusual EXIF layout; no EXIF orientation but an XMP packet, from
    which Pillow reads one)."""
    found = _orientation_entry(header.exif) if header.exif is not None else (None, 1)
    if found is None or (found[0] is None and header.xmp):
        return None
    return _valid_orientation(found[1])


def write_image(
    path: StrPath,
    image: torch.Tensor | np.ndarray,
    *,
    quality: int = 95,
    format: str | None = None,
    info: ImageInfo | None = None,
    compression: str = "deflate",
) -> list[str]:
    """Write an image file, atomically: the file appears complete or not at all.

    An existing file is replaced keeping its permission bits (and owner, where allowed); a
    symbolic link stays a link to the replaced file (:mod:`convkit.io.atomic`).

    Pixel values: ``uint8`` is written as is. ``uint16`` stays 16-bit in PNG and TIFF and becomes
    ``round(x / 257)`` in the 8-bit formats (JPEG, WebP, BMP). Floats are taken as 0..1 and
    written as 8-bit ``round(clip(x, 0, 1) * 255)`` (NaN as 0), except a one-channel float image
    in TIFF, which is written as 32-bit float unchanged.

    Channels: JPEG and BMP have no alpha, so it is dropped (not blended). WebP stores grey as RGB.
    16-bit grey + alpha is written to PNG and TIFF as 16-bit RGBA, as neither Pillow nor OpenCV
    write 16-bit grey + alpha.

    JPEG uses 4:4:4 chroma (no subsampling) when ``quality >= 90`` and 4:2:0 below, as
    ImageMagick does; Huffman tables are not optimised and the file is baseline, for speed.

    Metadata: the ICC profile and EXIF of ``info`` are written to JPEG, PNG, WebP and TIFF; BMP
    has room for neither. A profile whose colour space (grey or RGB) does not match the written
    channels is left out. 16-bit colour TIFF (written by OpenCV) carries no metadata.

    Args:
        path: The file to write; an existing file is replaced.
        image: ``(C, H, W)`` or ``(H, W)`` tensor, or ``(H, W, C)`` or ``(H, W)`` NumPy array,
            with 1 to 4 channels, of ``uint8``, ``uint16`` or a float dtype. Tensors may be on
            any device.
        quality: JPEG and WebP quality, 1 (smallest) to 100 (best).
        format: ``"png"``, ``"jpeg"``/``"jpg"``, ``"webp"``, ``"tiff"``/``"tif"`` or ``"bmp"``
            (any case); None takes it from the extension of ``path``.
        info: Metadata to write, usually from :func:`read_image_with_info`. An ICC profile or
            EXIF block too large for the format to hold readably (over 1 MiB of profile in a
            PNG, which Pillow refuses to read back; over 255 segments in a JPEG) is left out.

        compression: TIFF's lossless compression: ``"deflate"`` (the default, as
            ImageMagick's ``-compress zip``), ``"lzw"`` or ``"none"``. Other formats ignore it
            (PNG is always deflated, at zlib level 1).

    Returns:
        One line for each piece of metadata left out (empty when all was written).

    Raises:
        ImageFileError: Unknown format, an image the format cannot store, or the file cannot be
            written (missing or read-only folder, disk full, ...).
        TypeError: ``image`` is not a tensor or array.
        ValueError: ``image`` has a shape or dtype listed above as unsupported, or ``quality`` is
            out of range.
    """
    name = os.fsdecode(path)
    fmt = _write_format(name, format)
    if not isinstance(quality, int | np.integer) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    chw = _as_chw_array(image)
    channels, height, width = chw.shape
    if height == 0 or width == 0:
        raise ValueError(f"image has no pixels: shape {tuple(chw.shape)}")
    if max(height, width) > _MAX_SIDE.get(fmt, 2**31 - 1):
        raise ImageFileError(
            f"{name}: cannot write ({width}x{height} is too large for {fmt}, which stores at "
            f"most {_MAX_SIDE[fmt]} pixels a side)"
        )
    if compression not in TIFF_COMPRESSIONS:
        raise ValueError(f"compression should be one of {', '.join(TIFF_COMPRESSIONS)}. Got "
                         f"{compression!r}")
    notes: list[str] = []
    try:
        payload = _encode(chw, fmt, quality, info, notes, compression)
    except Exception as e:
        # Pillow and OpenCV raise many kinds of exception for images they cannot encode.
        raise ImageFileError(f"{name}: cannot write ({_describe(e)})") from None
    _write_atomically(path, name, payload)
    return notes


# --- reading -------------------------------------------------------------------------------


def _read_bytes(path: StrPath, name: str) -> bytes:
    """The whole file, read once, so the decoders never see a file that changes or vanishes
    mid-read (:func:`convkit.io.files.read_regular`: regular files only, no more than the size
    they declare)."""
    try:
        data = read_regular(path)
    except FileNotFoundError:
        raise ImageFileError(f"{name}: no such file") from None
    except PermissionError:
        raise ImageFileError(f"{name}: permission denied") from None
    except NotRegularFile as e:
        raise ImageFileError(f"{name}: {not_a_regular_file(e.mode)}") from None
    except OSError as e:
        raise ImageFileError(f"{name}: cannot read ({e.strerror or e})") from None
    if not data:
        raise ImageFileError(f"{name}: empty file (0 bytes)")
    return data


_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}  # colour type -> channels read (palette: RGBA)


def declared_bytes(path: StrPath) -> int | None:
    """Bytes of the pixels a file's header declares, as :func:`read_array_with_info` gives
    them (width x height x channels x bytes per sample), from its first bytes: PNG's IHDR,
    JPEG's frame header, the header Pillow parses for the other formats. None when the header
    does not tell or the file is not a regular one (reading it then says why).

    The pipeline weighs its images in flight by this before decoding them."""
    try:
        with open(os.open(os.fsdecode(path), READ_FLAGS), "rb", buffering=0) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            head = f.read(1 << 16)
            png = png_header(head)
            if png is not None:
                w, h, depth, colour = png
                return w * h * _PNG_CHANNELS.get(colour, 4) * (2 if depth == 16 else 1)
            if head.startswith(b"\xff\xd8"):
                size = _jpeg_declared(head)
                if size is not None:
                    return size  # (else over 64 KiB of metadata first: Pillow reads on)
            f.seek(0)
            from PIL import Image

            with no_pixel_limit(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(f, formats=_READ_FORMATS) as im:
                    w, h = im.size
                    bands = len(im.getbands()) if im.mode != "P" else 4
                    depth = 4 if im.mode in ("I", "F") else 2 if im.mode.startswith(
                        "I;16") else 1
                    if im.format == "TIFF" and max(_as_tuple(im.tag_v2.get(258, ())) or
                                                   (8,)) == 16:
                        depth = 2
            return w * h * bands * depth
    except Exception:  # unreadable, or a header Pillow cannot parse: the decode says why
        return None


def _jpeg_declared(head: bytes) -> int | None:
    """Width x height x components from the frame header (SOFn) among the first bytes."""
    for marker, body in jpeg_segments(head):
        if marker in JPEG_SOF and len(body) >= 6:
            h, w = struct.unpack(">HH", body[1:5])
            return w * h * min(body[5], 3)  # (CMYK is read as RGB)
    return None  # (a frame header past 64 KiB of metadata: not here)


def check_png_chunks(data: bytes, name: str, allow_truncated: bool = False) -> bool:
    """Raise for a PNG chunk cut off by the end of the file or with a bad CRC; with
    ``allow_truncated``, return True for a file cut short instead (a bad CRC still raises).

    Pillow does not check the CRC of image data chunks, and reports a cut-off header chunk only
    as "cannot identify image file".
    """
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    hint = "; --allow-truncated accepts that"
    if not b"IHDR".startswith(data[12:16]):  # the first chunk is IHDR (or the file ends)
        raise ImageFileError(f"{name}: corrupt PNG file (it does not start with IHDR)")
    if len(data) < 33:  # nothing to read, with or without --allow-truncated
        raise ImageFileError(f"{name}: truncated PNG file (cut inside its header)")
    while pos < len(data):
        if pos + 8 > len(data):
            if allow_truncated:
                return True
            raise ImageFileError(f"{name}: truncated PNG file (ends inside a chunk header)"
                                 f"{hint}")
        length, chunk_type = struct.unpack_from(">I4s", data, pos)
        kind = chunk_type.decode("latin-1")
        end = pos + 12 + length
        if end > len(data):
            if allow_truncated:
                return True
            raise ImageFileError(f"{name}: truncated PNG file ({kind!r} chunk is cut off){hint}")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise ImageFileError(f"{name}: corrupt PNG file (bad CRC in {kind!r} chunk)")
        if chunk_type == b"IHDR" and pos != len(PNG_SIGNATURE):
            # decoders differ on which one counts: the size checks read the first
            raise ImageFileError(f"{name}: corrupt PNG file (a second IHDR chunk)")
        if chunk_type == b"IEND":
            return False
        pos = end
    return allow_truncated  # no IEND: cut off right after a chunk (else left to the decoder)


_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel in the file


def _png_raw_size(width: int, height: int, bits: int, interlace: int) -> int:
    """Bytes of a PNG's filtered scanlines (a filter byte a row) once inflated; ``bits`` per
    pixel. Interlaced (Adam7): the seven passes' sub-images, each row of each pass with its
    own filter byte."""
    def size(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w and h else 0

    if not interlace:
        return size(width, height)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
              (1, 0, 2, 2), (0, 1, 1, 2))  # (x0, y0, dx, dy)
    return sum(size((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy)
               for x0, y0, dx, dy in passes)


def _complete_png(data: bytes, name: str, limit: int | None) -> bytes:
    """A PNG cut short, completed so that every decoder (Pillow; OpenCV for 16-bit colour)
    reads it whole: its complete chunks as they are, the image data that arrived inflated as
    far as it goes (up to damage in it, if any), then zero bytes up to the declared size (rows
    of filter None: black, palette entry 0, transparent where there is alpha), in one IDAT.
    The size is the first IHDR's, which :func:`check_png_chunks` checked is the only one, and
    the pixel limit and :func:`check_png_size` apply to it before anything is allocated."""
    head = png_header(data[:26])
    if head is None:  # cut inside the IHDR: nothing to complete
        raise ImageFileError(f"{name}: truncated PNG file (cut inside its header)")
    width, height, depth, colour = head
    interlace = data[28] if len(data) > 28 else 0
    if limit is not None and width * height > limit:
        raise _over_limit(name, width, height, limit)
    pos, before, after, idat = len(PNG_SIGNATURE), [], [], bytearray()
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if kind == b"IDAT":
            idat += data[pos + 8 : min(end - 4, len(data))]
        elif end <= len(data) and kind != b"IEND":
            (after if idat else before).append(data[pos:end])  # eXIf may follow the data
        pos = end
    if not idat:
        raise ImageFileError(f"{name}: truncated PNG file (no image data)")
    need = _png_raw_size(width, height, _PNG_SAMPLES.get(colour, 4) * depth, interlace)
    inflate, raw = zlib.decompressobj(), bytearray()
    for i in range(0, len(idat), 1 << 16):
        piece, saved = bytes(idat[i : i + (1 << 16)]), inflate.copy()
        try:
            raw += inflate.decompress(piece, need - len(raw))
        except zlib.error:  # damage in this piece: keep what precedes it, 64 bytes at a time
            inflate = saved
            for j in range(0, len(piece), 64):
                try:
                    raw += inflate.decompress(piece[j : j + 64], need - len(raw))
                except zlib.error:
                    break
                if len(raw) >= need:
                    break
            break
        if len(raw) >= need or inflate.eof:
            break
    raw += bytes(need - len(raw))
    return b"".join([PNG_SIGNATURE, *before, _png_chunk(b"IDAT", zlib.compress(bytes(raw), 1)),
                     *after, _png_chunk(b"IEND", b"")])


# DEFLATE, PNG's compression, packs at most about 1032 bytes into one (a run of one value).
_MAX_DEFLATE_RATIO = 1032


def _over_limit(name: str, width: int, height: int, limit: int) -> ImageFileError:
    """The error for an image over the pixel limit, naming the option on both routes."""
    return ImageFileError(
        f"{name}: image is {width}x{height} = {width * height} pixels, over the limit of "
        f"{limit}; raise it with --max-pixels (max_pixels= in Python)"
    )


def check_png_size(data: bytes, name: str, size: int | None = None) -> None:
    """Refuse a PNG whose header (``data``: at least its first 26 bytes) declares more pixels
    than a file of ``size`` bytes (default ``len(data)``) could hold, before anything is
    allocated for them: a small file claiming a huge image is a bomb or damaged, whatever the
    pixel limit."""
    png = png_header(data)
    if png is None:
        return
    width, height, depth, colour = png
    size = len(data) if size is None else size
    raw = _png_raw_size(width, height, _PNG_SAMPLES.get(colour, 4) * depth, 0)
    if raw > _MAX_DEFLATE_RATIO * size + (1 << 20):
        raise ImageFileError(
            f"{name}: corrupt PNG file (its header declares {width}x{height}, "
            f"{raw} bytes of pixels, more than its {size} bytes could hold)")


def sniff_format(data: bytes) -> str | None:
    """The format the first bytes of a file claim (PNG, JPEG, TIFF, GIF, WebP, BMP), or None."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM":
        return "BMP"
    return None


def _open(data: bytes, name: str) -> Image.Image:
    """Parse the header with Pillow (no pixel limit; the caller checks the size)."""
    from PIL import Image, UnidentifiedImageError

    claimed = sniff_format(data)
    # Pillow reports a damaged TIFF header by warning, then failing; keep the warning for the
    # error message instead of letting it print. Only for TIFF, because catching warnings
    # resets Python's record of warnings already shown, process-wide.
    catching = warnings.catch_warnings(record=True) if claimed == "TIFF" else nullcontext()
    error: Exception | None = None
    with no_pixel_limit(), catching as caught:
        try:
            im = Image.open(io.BytesIO(data), formats=_READ_FORMATS)
        except Exception as e:
            # Pillow raises many kinds of exception for corrupt headers.
            error = e
    notes = [_one_line(str(w.message)) for w in caught or ()]
    if error is None:
        for note in notes:
            warnings.warn(f"{name}: {note}", UserWarning, stacklevel=3)
        return im
    if isinstance(error, UnidentifiedImageError):
        if claimed is None:
            reason = f"not a {_READABLE} image (cannot identify image file)"
        else:
            reason = f"corrupt, truncated or unsupported {claimed} file (cannot identify image file"
            reason += "".join(f"; {note}" for note in notes) + ")"
    else:
        reason = f"corrupt or truncated {claimed or 'image'} file ({_describe(error)})"
    raise ImageFileError(f"{name}: {reason}")


def _load(im: Image.Image, name: str, allow_truncated: bool = False) -> None:
    """Decode the pixels, turning every decoder failure into ImageFileError."""
    from PIL import Image, ImageFile

    width, height = im.size
    limit = pillow_pixel_limit()
    # Pillow's TIFF decoder checks its pixel limit again; an image allowed through by a raised
    # max_pixels must be decoded with that limit off. Only huge images, and damaged files
    # decoded on purpose (LOAD_TRUNCATED_IMAGES is process-wide too), take the lock here.
    over_pillow_limit = limit is not None and width * height > limit
    try:
        if over_pillow_limit or allow_truncated:
            with PILLOW_GLOBALS:
                saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
                if over_pillow_limit:
                    Image.MAX_IMAGE_PIXELS = None
                ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
                try:
                    im.load()
                finally:
                    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved
        else:
            im.load()
    except MemoryError:
        raise ImageFileError(
            f"{name}: not enough memory to decode {width}x{height} image"
        ) from None
    except Exception as e:
        # Pillow raises many kinds of exception for corrupt data.
        hint = "" if allow_truncated or "truncated" not in str(e).lower() else \
            "; --allow-truncated accepts that"
        raise ImageFileError(
            f"{name}: corrupt or truncated {im.format} file ({_describe(e)}){hint}"
        ) from None


# Pillow mode of the source -> mode to convert to before handing the pixels to NumPy.
_CONVERT = {
    "1": "L",
    "La": "LA",
    "PA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}
_KEEP = {"L", "LA", "RGB", "RGBA", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _ends_complete(data: bytes) -> bool:
    """Whether a JPEG ends with its EOI marker (zero padding after it allowed): a file cut
    short does not, and Pillow reports it as truncated."""
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _plain_jpeg(im: Image.Image, data: bytes, formats: tuple[str, ...] = ("JPEG",)) -> bool:
    """A grey or RGB JPEG that ends with its EOI marker (a file cut short does not)."""
    return (im.format in formats and im.mode in ("L", "RGB") and "transparency" not in im.info
            and _ends_complete(data))


def _decode_jpeg(data: bytes, grey: bool, size: tuple[int, int], name: str,
                 allow_truncated: bool = False, interleaved: bool = False) -> np.ndarray | None:
    """Decode a grey or RGB JPEG with libjpeg-turbo through simplejpeg, or return None to leave
    the file to Pillow.

    Pillow and OpenCV use libjpeg-turbo too and give the same pixels, but both pass a damaged
    file as whole: libjpeg only *warns* about missing or corrupt data and fills the rest with
    grey, which Pillow ignores and OpenCV prints to stderr. simplejpeg turns those warnings
    into errors (``strict``), decodes a 1080p photo in about 40% of Pillow's CPU time and
    releases the GIL while it does. Anything unusual (CMYK, a colour key, no EOI marker at the
    end: a file cut short, which Pillow reports as truncated) goes to Pillow. ``size`` is
    the header's (width, height); the (C, H, W) pixels are returned.
    """
    import simplejpeg

    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB",
                                        strict=not allow_truncated)
    except ValueError as e:
        if _jpeg_damage(e):
            raise ImageFileError(f"{name}: {_damaged_jpeg(e)}") from None
        return None
    if pixels.shape[:2] != (size[1], size[0]):
        return None
    return pixels.transpose(2, 0, 1) if interleaved else _hwc_to_chw(pixels)


def _jpeg_damage(e: BaseException) -> bool:
    """Whether simplejpeg's error is libjpeg's report of missing or corrupt data (rather than
    a file it does not handle, which Pillow may)."""
    text = str(e).lower()
    return any(w in text for w in ("corrupt", "premature", "bogus", "huffman", "truncat"))


def _damaged_jpeg(e: BaseException) -> str:
    return (f"damaged JPEG: {_describe(e)}; the decoder would fill the missing part with "
            "grey (--allow-truncated accepts that)")


def _check_jpeg_data(im: Image.Image, data: bytes, name: str, allow_truncated: bool) -> None:
    """Refuse a JPEG that Pillow would decode with missing or corrupt data filled in (CMYK and
    other files that do not take the fast path): libjpeg's warnings, turned into errors by
    simplejpeg, decide. Files simplejpeg cannot decode at all are left to Pillow."""
    if allow_truncated or _plain_jpeg(im, data, ("JPEG", "MPO")):
        return  # the fast path decodes strictly itself
    if not _ends_complete(data):
        return  # cut short: Pillow reports it as truncated
    import simplejpeg

    space = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}.get(im.mode)
    if space is None:
        return
    try:
        simplejpeg.decode_jpeg(data, colorspace=space, strict=True)
    except ValueError as e:
        if _jpeg_damage(e):
            raise ImageFileError(f"{name}: {_damaged_jpeg(e)}") from None


def _decode_with_pillow(im: Image.Image, name: str, allow_truncated: bool = False
                        ) -> tuple[np.ndarray, str, int]:
    """Decode with Pillow. Returns ``((C, H, W) array, source mode, EXIF orientation)``."""
    _load(im, name, allow_truncated)
    mode = im.mode
    if mode.startswith("I;16") and isinstance(im.info.get("transparency"), int):
        # A 16-bit grey PNG with a colour key (tRNS): Pillow has no 16-bit grey + alpha mode,
        # so the key becomes the alpha channel here, as it does for 8-bit grey.
        grey = _hwc_to_chw(np.asarray(im))
        alpha = np.where(grey[0] == im.info["transparency"], 0, 65535).astype(grey.dtype)
        return np.concatenate([grey, alpha[None]]), mode, exif_orientation(im)
    if mode == "P":
        target = "RGBA" if im.has_transparency_data else "RGB"
    elif mode in ("L", "RGB") and "transparency" in im.info:
        target = mode + "A"  # a colour key (PNG tRNS, GIF) becomes an alpha channel
    elif mode in _CONVERT:
        target = _CONVERT[mode]
    elif mode in _KEEP:
        target = mode
    else:
        raise ImageFileError(f"{name}: unsupported pixel format (Pillow mode {mode!r})")
    # Read after load: Pillow applies a TIFF's orientation itself while loading and then
    # removes the tag, and a PNG's eXIf chunk may come after the image data.
    orientation = exif_orientation(im)
    try:
        pixels = im if target == mode else im.convert(target)
    except Exception as e:
        # A damaged palette can make the conversion fail.
        reason = f"cannot convert {mode} pixels to {target} ({_describe(e)})"
        raise ImageFileError(f"{name}: {reason}") from None
    return _hwc_to_chw(np.asarray(pixels)), mode, orientation


def _is_16bit_colour(im: Image.Image, data: bytes) -> bool:
    """True for 16-bit PNG or TIFF with more than one channel, which Pillow reads as 8-bit."""
    if im.format == "PNG":
        bit_depth, colour_type = data[24], data[25]  # from IHDR, always the first chunk
        return bit_depth == 16 and colour_type in (2, 4, 6)  # RGB, grey + alpha, RGBA
    if im.format == "TIFF":
        bits = _as_tuple(im.tag_v2.get(258, ()))  # BitsPerSample
        return im.mode in ("RGB", "RGBA") and bool(bits) and max(bits) == 16
    return False


def _decode_16bit_colour(im: Image.Image, data: bytes, name: str) -> tuple[np.ndarray, str, int]:
    """Decode 16-bit colour PNG or TIFF with OpenCV, as Pillow has no 16-bit colour modes."""
    if im.format == "TIFF":
        _check_tiff_strips(im, data, name)
        orientation = 1  # OpenCV's TIFF decoder applies the Orientation tag itself
    else:
        orientation = exif_orientation(im)  # for PNG, IMREAD_UNCHANGED ignores it
    # IMREAD_UNCHANGED keeps 16 bits and alpha.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] not in (3, 4):
        raise ImageFileError(f"{name}: corrupt or truncated 16-bit {im.format} file")
    # one copy into (C, H, W) RGB(A) order (splitting, then stacking, held three copies of a
    # 16-bit image at once: 2.1 GB for a 9400x9400 RGBA file)
    if im.format == "PNG" and data[25] == 4:
        # OpenCV expands grey + alpha to BGRA with B = G = R.
        return np.ascontiguousarray(bgr.transpose(2, 0, 1)[[0, 3]]), "LA;16", orientation
    order = [2, 1, 0, 3][: bgr.shape[2]]
    mode = "RGBA;16" if len(order) == 4 else "RGB;16"
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[order]), mode, orientation


def _check_tiff_strips(im: Image.Image, data: bytes, name: str) -> None:
    """Raise if the TIFF's image data runs past the end of the file.

    Checked before OpenCV decodes, which would log libtiff's complaints to stderr.
    """
    offsets = _as_tuple(im.tag_v2.get(273) or im.tag_v2.get(324) or ())  # strips or tiles
    counts = _as_tuple(im.tag_v2.get(279) or im.tag_v2.get(325) or ())
    if offsets and len(offsets) == len(counts):
        end = max(o + c for o, c in zip(offsets, counts, strict=True))
        if end > len(data):
            raise ImageFileError(
                f"{name}: truncated TIFF file (image data ends at byte {end}, the file at "
                f"{len(data)})"
            )


def _frames(im: Image.Image) -> int:
    """Frames (GIF, APNG, WebP) or pages (TIFF) in the file."""
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:  # a damaged later frame: there is more than one all the same
        return 2


def _as_tuple(value: object) -> tuple:
    """Pillow gives a single-valued TIFF tag as a bare value, a multi-valued one as a tuple."""
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _hwc_to_chw(a: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` -> new writable, native-endian ``(C, H, W)`` array.

    Always a copy: Pillow's arrays are read-only, which torch.from_numpy warns about.
    """
    if a.ndim == 2:
        a = a[:, :, np.newaxis]
    return np.array(a.transpose(2, 0, 1), dtype=a.dtype.newbyteorder("="), order="C")


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 to 8) of an open image; 1 where it is absent or unreadable."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        # Unreadable EXIF must not make the pixels unreadable; show the image as stored.
        return 1
    return _valid_orientation(value)


def _valid_orientation(value: object) -> int:
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient_array(image: np.ndarray, orientation: int, interleaved: bool = False
                  ) -> np.ndarray:
    """Turn a ``(C, H, W)`` array stored with EXIF ``orientation`` into display layout:
    contiguous, or (``interleaved``) a view of contiguous (H, W, C) pixels."""
    h, w = 1, 2
    if orientation == 2:
        image = np.flip(image, w)
    elif orientation == 3:
        image = np.flip(image, (h, w))
    elif orientation == 4:
        image = np.flip(image, h)
    elif orientation == 5:
        image = image.transpose(0, 2, 1)
    elif orientation == 6:
        image = np.rot90(image, -1, (h, w))  # clockwise
    elif orientation == 7:
        image = np.flip(image.transpose(0, 2, 1), (h, w))
    elif orientation == 8:
        image = np.rot90(image, 1, (h, w))  # anticlockwise
    if interleaved:
        return np.ascontiguousarray(image.transpose(1, 2, 0)).transpose(2, 0, 1)
    return np.ascontiguousarray(image)


def _orient_tensor(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """:func:`_orient_array` for a tensor on any device (JPEGs decoded on a GPU)."""
    h, w = 1, 2
    if orientation == 2:
        image = image.flip(w)
    elif orientation == 3:
        image = image.flip(h, w)
    elif orientation == 4:
        image = image.flip(h)
    elif orientation == 5:
        image = image.transpose(h, w)
    elif orientation == 6:
        image = image.rot90(-1, (h, w))
    elif orientation == 7:
        image = image.transpose(h, w).flip(h, w)
    elif orientation == 8:
        image = image.rot90(1, (h, w))
    return image.contiguous()


def exif_block(im: Image.Image, *, reset_orientation: bool) -> bytes | None:
    """The EXIF block as ``b"Exif\\0\\0"`` + TIFF data, Orientation set to 1 if asked."""
    raw = im.info.get("exif")
    if raw is None and "Raw profile type exif" in im.info:  # PNG written by ImageMagick
        try:
            raw = im.getexif().tobytes()
        except Exception:
            return None
    return _exif_from_raw(raw, reset_orientation=reset_orientation)


def _exif_from_raw(raw: object, *, reset_orientation: bool) -> bytes | None:
    """:func:`exif_block` of an EXIF block as a file stores it (None: there is none)."""
    if not isinstance(raw, bytes):
        return None
    if not raw.startswith(_EXIF_HEADER):  # PNG eXIf and WebP store the TIFF data bare
        raw = _EXIF_HEADER + raw
    if raw[6:10] not in (b"II*\x00", b"MM\x00*"):
        return None  # not EXIF that any writer could use
    return _set_orientation_1(raw) if reset_orientation else raw


# Bytes per value of each TIFF field type (BYTE ... IFD8).
_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
               16: 8}


def _orientation_entry(exif: bytes) -> tuple[int | None, int] | None:
    """(offset in ``exif`` of the Orientation value, the value) when IFD0 holds it as one
    SHORT; (None, 1) when IFD0 has no Orientation tag; None for any other layout, or a
    directory that runs past the block, or an entry before Orientation whose data does (Pillow
    stops reading the directory there, and never sees the Orientation)."""
    tiff = exif[6:]
    if tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd0,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd0)
        found: tuple[int | None, int] = (None, 1)
        for entry in range(ifd0 + 2, ifd0 + 2 + 12 * count, 12):
            tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
            size = n * _TIFF_SIZES.get(kind, 0)
            if size > 4 and struct.unpack_from(order + "I", tiff, entry + 8)[0] + size > len(
                    tiff) and found[0] is None:
                return None
            if tag == _EXIF_ORIENTATION:
                if kind != 3 or n != 1 or found[0] is not None:  # not one SHORT, or twice
                    return None
                (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
                found = (6 + entry + 8, value)
    except struct.error:
        return None
    return found


def _set_orientation_1(exif: bytes) -> bytes | None:
    """Set the Orientation tag of IFD0 to 1 in place, keeping every other byte.

    Re-serialising with Pillow would move data and break offsets inside maker notes, so the
    value is patched; Pillow is the fallback for layouts this does not handle.
    """
    found = _orientation_entry(exif)
    if found is not None and found[0] is not None:
        patched = bytearray(exif)
        struct.pack_into("<H" if exif[6:8] == b"II" else ">H", patched, found[0], 1)
        return bytes(patched)
    from PIL import Image

    try:
        parsed = Image.Exif()
        parsed.load(exif)
        parsed[_EXIF_ORIENTATION] = 1
        return parsed.tobytes()
    except Exception:
        return None  # better no EXIF than one that makes viewers rotate the image again


def matching_icc(icc: object, channels: int) -> bytes | None:
    """The ICC profile if its colour space fits ``channels`` (grey: 1-2, RGB: 3-4), else None."""
    if not isinstance(icc, bytes) or len(icc) < 20:
        return None
    space = icc[16:20]  # the profile header's data colour space
    if (channels <= 2 and space == b"GRAY") or (channels >= 3 and space == b"RGB "):
        return icc
    return None


# --- writing -------------------------------------------------------------------------------


def _write_format(name: str, format: str | None) -> str:
    supported = ", ".join(WRITE_EXTENSIONS)
    if format is not None:
        fmt = WRITE_FORMATS.get("." + format.lower().lstrip("."))
        if fmt is None:
            raise ImageFileError(
                f"{name}: cannot write (unknown format {format!r}; use one of {supported})"
            )
        return fmt
    ext = Path(name).suffix.lower()
    fmt = WRITE_FORMATS.get(ext)
    if fmt is None:
        what = f"extension {ext!r}" if ext else "no extension"
        raise ImageFileError(
            f"{name}: cannot write ({what}; use one of {supported}, or pass format)"
        )
    return fmt


def _is_tensor(image: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported
    return torch is not None and isinstance(image, torch.Tensor)


def _as_chw_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Check ``image`` and view it as a ``(C, H, W)`` NumPy array (a copy only when needed)."""
    if _is_tensor(image):
        import torch

        t = image.detach().cpu()
        if t.ndim == 2:
            t = t.unsqueeze(0)
        elif t.ndim != 3:
            raise ValueError(f"expected a (C, H, W) or (H, W) tensor, got shape {tuple(t.shape)}")
        if t.dtype not in (torch.uint8, torch.uint16) and not t.dtype.is_floating_point:
            raise ValueError(f"unsupported dtype {t.dtype}; use uint8, uint16 or a float dtype")
        if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
            t = t.float()
        chw = t.numpy()
    elif isinstance(image, np.ndarray):
        hwc = image[:, :, np.newaxis] if image.ndim == 2 else image
        if hwc.ndim != 3:
            raise ValueError(f"expected an (H, W, C) or (H, W) array, got shape {image.shape}")
        if hwc.dtype not in (np.uint8, np.uint16) and hwc.dtype.kind != "f":
            raise ValueError(f"unsupported dtype {hwc.dtype}; use uint8, uint16 or a float dtype")
        chw = hwc.transpose(2, 0, 1)
    else:
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(image).__name__}")
    if not 1 <= chw.shape[0] <= 4:
        raise ValueError(f"expected 1 to 4 channels, got {chw.shape[0]} (shape {chw.shape})")
    return chw


def _to_8bit(chw: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` uint8, uint16 or float -> uint8, as documented in :func:`write_image`."""
    if chw.dtype == np.uint8:
        return chw
    if chw.dtype == np.uint16:
        # round(x / 257) maps 0..65535 onto 0..255; x / 257 is never exactly halfway (the
        # nearest is 0.002 away, far above float32's error), so OpenCV's rounding of x / 257
        # is exact. A plane at a time: whole-image uint32 temporaries took 2 GB for 88 MP RGB.
        out = np.empty(chw.shape, np.uint8)
        for c in range(chw.shape[0]):
            out[c] = cv2.convertScaleAbs(np.ascontiguousarray(chw[c]), alpha=1 / 257)
        return out
    return _float_to_8bit(chw)


def _float_to_8bit(chw: np.ndarray) -> np.ndarray:
    """round(clip(x, 0, 1) * 255) with NaN as 0, a cache-sized block of rows at a time.

    Whole-image temporaries cost more in memory traffic and page faults than the arithmetic:
    this is several times faster than the same operations on the full array.
    """
    channels, height, width = chw.shape
    out = np.empty(chw.shape, np.uint8)
    rows = max(1, 65_536 // max(width, 1))
    scratch = np.empty((rows, width), np.promote_types(chw.dtype, np.float32))
    for c in range(channels):
        for top in range(0, height, rows):
            src = chw[c, top : top + rows]
            buf = scratch[: src.shape[0]]
            np.multiply(src, 255, out=buf)
            np.fmax(buf, 0, out=buf)  # fmax also turns NaN into 0
            np.minimum(buf, 255, out=buf)
            np.rint(buf, out=buf)  # half to even, like round()
            out[c, top : top + rows] = buf
    return out


def _encode(chw: np.ndarray, fmt: str, quality: int, info: ImageInfo | None,
            notes: list[str], compression: str = "deflate") -> bytes:
    """Encode a ``(C, H, W)`` array into the bytes of a ``fmt`` file; metadata left out is
    described in ``notes``."""
    channels = chw.shape[0]
    if fmt in ("JPEG", "BMP"):
        chw = _to_8bit(chw[: 3 if channels >= 3 else 1])  # no alpha in these formats
    elif fmt == "WEBP":
        chw = _to_8bit(chw)
        if channels <= 2:  # WebP has no grey
            chw = chw[[0, 0, 0, 1][: channels + 2]]
    elif fmt == "TIFF" and chw.dtype.kind == "f" and channels == 1:
        chw = chw.astype(np.float32, copy=False)
    elif chw.dtype != np.uint16:
        chw = _to_8bit(chw)
    elif channels == 2:
        chw = chw[[0, 0, 0, 1]]  # 16-bit grey + alpha: neither Pillow nor OpenCV write it

    icc = matching_icc(info.icc_profile, chw.shape[0]) if info is not None else None
    exif = info.exif if info is not None else None
    icc, exif = _fit_metadata(fmt, icc, exif, notes)
    opencv_tiff = fmt == "TIFF" and chw.dtype == np.uint16 and chw.shape[0] > 1
    if fmt == "BMP" or opencv_tiff:
        kept = [what for what, data in (("ICC profile", icc), ("EXIF", exif)) if data]
        if kept:
            why = "BMP files hold neither" if fmt == "BMP" else \
                "16-bit colour TIFF is written by OpenCV, which writes no metadata"
            notes.append(f"{' and '.join(kept)} left out: {why}")
        icc = exif = None
    if chw.dtype == np.uint16 and chw.shape[0] > 1:
        return _encode_16bit_colour(chw, fmt, icc, exif, compression)
    if chw.dtype == np.uint8 and (fmt == "JPEG" or (fmt == "PNG" and chw.shape[0] != 2)):
        return _encode_8bit_opencv(chw, fmt, quality, icc, exif)

    options: dict[str, object] = {}
    if fmt == "JPEG":
        subsampling = "4:4:4" if quality >= 90 else "4:2:0"
        options.update(quality=int(quality), subsampling=subsampling, optimize=False)
    elif fmt == "WEBP":
        options.update(quality=int(quality))
    elif fmt == "TIFF" and compression != "none":
        options["compression"] = "tiff_adobe_deflate" if compression == "deflate" else \
            "tiff_lzw"
        if chw.dtype.kind == "u":  # horizontal differencing: a photo deflates 25% smaller
            options["tiffinfo"] = {317: 2}  # Predictor
    if icc is not None:
        options["icc_profile"] = icc
    if exif is not None:
        # Pillow's TIFF writer takes tiffinfo instead of exif when given both (and cannot
        # merge EXIF's sub-directories into it): the EXIF wins, without the predictor
        options.pop("tiffinfo", None)
        options["exif"] = exif
    from PIL import Image

    buffer = io.BytesIO()
    picture = Image.fromarray(_chw_to_hwc(chw))
    try:
        picture.save(buffer, fmt, **options)
    except Exception:
        if "compression" not in options:
            raise
        # libtiff (which Pillow uses to compress TIFF) refuses some EXIF blocks ("Error
        # setting from dictionary": sub-directories); Pillow's own writer keeps them
        options.pop("compression")
        buffer = io.BytesIO()
        picture.save(buffer, fmt, **options)
        notes.append("TIFF written uncompressed: libtiff does not take this file's EXIF")
    return buffer.getvalue()


#: TIFF compressions write_image offers, and OpenCV's codes for them.
TIFF_COMPRESSIONS = ("deflate", "lzw", "none")
CV_TIFF = {"deflate": cv2.IMWRITE_TIFF_COMPRESSION_ADOBE_DEFLATE,
           "lzw": cv2.IMWRITE_TIFF_COMPRESSION_LZW, "none": cv2.IMWRITE_TIFF_COMPRESSION_NONE}

# The largest ICC profile and EXIF block each format holds such that readers read the file
# back: Pillow refuses a PNG whose iCCP chunk inflates past 1 MiB (its MAX_TEXT_CHUNK, a guard
# against decompression bombs); JPEG splits a profile into at most 255 APP2 segments and holds
# EXIF in one APP1 segment.
_MAX_ICC = {"PNG": 1 << 20, "JPEG": 255 * 65_519}
_MAX_EXIF = {"JPEG": 65_533}


def _fit_metadata(fmt: str, icc: bytes | None, exif: bytes | None, notes: list[str]
                  ) -> tuple[bytes | None, bytes | None]:
    """Leave out an ICC profile or EXIF block too large for ``fmt`` to hold readably."""
    if icc is not None and len(icc) > _MAX_ICC.get(fmt, 1 << 62):
        notes.append(f"ICC profile of {len(icc)} bytes left out: {fmt} files hold at most "
                     f"{_MAX_ICC[fmt]} bytes of it that readers accept")
        icc = None
    if exif is not None and len(exif) > _MAX_EXIF.get(fmt, 1 << 62):
        notes.append(f"EXIF block of {len(exif)} bytes left out: {fmt} files hold at most "
                     f"{_MAX_EXIF[fmt]}")
        exif = None
    return icc, exif


def _encode_8bit_opencv(chw: np.ndarray, fmt: str, quality: int, icc: bytes | None,
                        exif: bytes | None) -> bytes:
    """8-bit JPEG (grey or RGB) and PNG (grey, RGB, RGBA) via OpenCV.

    Why not Pillow: OpenCV releases the GIL while it encodes, so the writer threads of a batch
    run really run in parallel (Pillow's encoders hold it), and its PNG settings (zlib level 1,
    filtered) are about ten times faster than Pillow's level 6 for files a few percent larger.
    The JPEG settings are the ones documented in :func:`write_image`.
    """
    hwc = chw.transpose(1, 2, 0)
    if chw.shape[0] in (3, 4) and hwc.flags.c_contiguous:  # interleaved already: one pass
        pixels = cv2.cvtColor(hwc, cv2.COLOR_RGB2BGR if chw.shape[0] == 3 else
                              cv2.COLOR_RGBA2BGRA)
    else:
        pixels = _chw_to_hwc(chw if chw.shape[0] == 1 else chw[[2, 1, 0, 3][: chw.shape[0]]])
    if fmt == "PNG":
        ok, encoded = cv2.imencode(".png", pixels)
        if not ok:
            raise RuntimeError("OpenCV could not encode a PNG")
        return png_with_metadata(encoded.tobytes(), icc, exif)
    sampling = (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if quality >= 90
                else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    ok, encoded = cv2.imencode(".jpg", pixels, params)
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return _jpeg_with_metadata(encoded.tobytes(), icc, exif)


def _jpeg_with_metadata(data: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert EXIF (APP1) and the ICC profile (APP2 chunks) after SOI and the JFIF APP0
    segment, where Pillow's encoder puts them."""
    segments = []
    if exif is not None:
        if len(exif) > 65_533:
            raise ValueError(f"EXIF block of {len(exif)} bytes is too long for JPEG")
        segments.append(b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif)
    if icc is not None:
        size = 65_519  # 65535 - 2 (length) - 12 ("ICC_PROFILE\0") - 2 (sequence, count)
        parts = [icc[i : i + size] for i in range(0, len(icc), size)]
        if len(parts) > 255:
            raise ValueError(f"ICC profile of {len(icc)} bytes is too long for JPEG")
        for n, part in enumerate(parts, start=1):
            body = b"ICC_PROFILE\x00" + bytes([n, len(parts)]) + part
            segments.append(b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body)
    if not segments:
        return data
    pos = 2  # after SOI
    if data[2:4] == b"\xff\xe0":
        pos = 4 + struct.unpack_from(">H", data, 4)[0]
    return data[:pos] + b"".join(segments) + data[pos:]


def _encode_16bit_colour(chw: np.ndarray, fmt: str, icc: bytes | None, exif: bytes | None,
                         compression: str = "deflate") -> bytes:
    """16-bit PNG or TIFF with 3 or 4 channels, via OpenCV (Pillow cannot hold them)."""
    bgr = chw[[2, 1, 0, 3][: chw.shape[0]]]
    params = [] if fmt == "PNG" else [cv2.IMWRITE_TIFF_COMPRESSION, CV_TIFF[compression]]
    ok, encoded = cv2.imencode(".png" if fmt == "PNG" else ".tiff", _chw_to_hwc(bgr), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a 16-bit {fmt}")
    data = encoded.tobytes()
    if fmt != "PNG":
        return data
    return png_with_metadata(data, icc, exif)


def png_with_metadata(data: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP and eXIf chunks into a PNG written by OpenCV."""
    chunks = []
    if icc is not None:
        # Profile name, NUL, compression method 0 (zlib), compressed profile.
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if exif is not None:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(_EXIF_HEADER)))
    # Straight after IHDR (8-byte signature + 25-byte chunk): iCCP must precede the image data,
    # and readers find eXIf there without decoding.
    return data[:33] + b"".join(chunks) + data[33:]


def _chw_to_hwc(chw: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> C-contiguous, native-endian ``(H, W, C)``, or ``(H, W)`` for C = 1."""
    if not chw.dtype.isnative:
        chw = chw.astype(chw.dtype.newbyteorder("="))
    if chw.shape[0] == 1:
        return np.ascontiguousarray(chw[0])
    hwc = chw.transpose(1, 2, 0)
    if hwc.flags.c_contiguous:  # came from an (H, W, C) array
        return hwc
    # cv2.merge interleaves planes much faster than a NumPy transposing copy.
    return cv2.merge([np.ascontiguousarray(plane) for plane in chw])


def _png_chunk(chunk_type: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + body)
    return struct.pack(">I", len(body)) + chunk_type + body + struct.pack(">I", crc)


def _write_atomically(path: StrPath, name: str, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` through :func:`convkit.io.atomic.write_file` (a temporary
    file beside it, renamed; the replaced file's mode, owner and links kept)."""
    from .atomic import destination, write_file

    folder = destination(path).parent
    try:
        write_file(path, payload)
    except OSError as e:
        raise ImageFileError(f"{name}: cannot write ({_write_failure(e, folder)})") from None


def _write_failure(e: OSError, folder: Path) -> str:
    if isinstance(e, FileNotFoundError | NotADirectoryError) and not folder.is_dir():
        return f"folder {str(folder)!r} does not exist"
    if isinstance(e, PermissionError):
        return f"no permission to write in {str(folder)!r}"
    if isinstance(e, IsADirectoryError):
        return "a folder of that name is in the way"
    return e.strerror or _describe(e)


# --- shared --------------------------------------------------------------------------------


def _describe(e: BaseException) -> str:
    text = _one_line(str(e))
    return text or type(e).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
