"""Streaming PNG: read and write a PNG band by band, so a huge image never sits whole in memory.

Reading keeps OpenCV's decoder (libpng, in C) for the per-row unfiltering: the IDAT stream is
inflated incrementally with :mod:`zlib`, and each band of filtered scanlines is wrapped in a
small PNG of its own (stored, not compressed) that :func:`cv2.imdecode` decodes. The first
scanline of a band may refer to the row above it (PNG's Up, Average and Paeth filters), so the
band's PNG starts with that row, unfiltered, which the previous band decoded. Arrays come in
OpenCV's layout: (rows, W) grey or (rows, W, 3|4) BGR(A), uint8 or uint16; grey+alpha comes as
BGRA, as :func:`cv2.imread` gives it.

Writing filters each scanline with PNG's Up filter (vectorised with NumPy) and deflates the
rows through one :func:`zlib.compressobj`, so the output is a single ordinary PNG.

Streamable: non-interlaced 8- or 16-bit grey, grey+alpha, RGB and RGBA without a tRNS chunk.
Others (palette, 1/2/4-bit, interlaced) are reported by :func:`streamable` so that the caller
can decode them whole.

Metadata: :func:`read_info` keeps the chunks that the ICC profile, the EXIF block and the EXIF
orientation are read from (iCCP, eXIf, and text chunks with the keywords Pillow takes them from),
before and after the image data, skipping the image data itself. :func:`metadata_png` puts them
in a 1x1 PNG that Pillow can parse as it would parse the whole file. :class:`PngWriter` writes
no ancillary chunk of its own; the caller passes the ones it wants in ``head``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .formats import PNG_SIGNATURE

__all__ = ["PngInfo", "read_info", "streamable", "iter_bands", "row_ranges", "header",
           "metadata_png", "PngWriter"]

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel in the file
# Chunks Pillow reads the ICC profile, EXIF and orientation from: iCCP, eXIf, and text chunks
# (tEXt, zTXt, iTXt) with these keywords ("Raw profile type exif": ImageMagick's EXIF; the XMP
# packet's tiff:Orientation; the others are keys of Pillow's info dict that a text chunk of that
# name overwrites).
_META = {b"iCCP", b"eXIf"}
_TEXT = {b"tEXt", b"zTXt", b"iTXt"}
_TEXT_KEYS = {b"exif", b"Raw profile type exif", b"XML:com.adobe.xmp", b"xmp", b"icc_profile"}


@dataclass
class PngInfo:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int
    idat_offset: int  # file offset of the first IDAT chunk
    # the metadata chunks (see _META), whole (length, type, data, CRC), in file order
    metadata: list[bytes] = field(default_factory=list)
    has_trns: bool = False
    frames: int = 1  # of an animated PNG (acTL), of which only the first is read

    @property
    def samples(self) -> int:
        return _CHANNELS.get(self.colour_type, 1)

    @property
    def row_bytes(self) -> int:
        return (self.width * self.samples * self.bit_depth + 7) // 8

    @property
    def channels(self) -> int:
        """Channels of the arrays this module reads and writes (OpenCV's layout)."""
        return {0: 1, 2: 3, 4: 4, 6: 4}[self.colour_type]


def _chunks(f) -> Iterator[tuple[bytes, int, int]]:
    """(type, data offset, length) of each chunk, without reading their data, up to IEND or
    the end of the file (a file cut short is caught when its image data is read: an error, or
    black rows with ``allow_truncated``)."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            return  # the end, or a file cut inside a chunk header (iter_bands decides)
        length, ctype = struct.unpack(">I4s", head)
        start = f.tell()
        yield ctype, start, length
        f.seek(start + length + 4)
        if ctype == b"IEND":
            return


def read_info(path: str | Path) -> PngInfo:
    """Parse the chunks of a PNG file other than its image data (ValueError when it is not a
    PNG). Every chunk header is read, up to IEND, but of the chunk data only the header's and
    the metadata chunks'."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            raise ValueError(f"{path}: not a PNG file")
        info: PngInfo | None = None
        metadata, trns, frames = [], False, 0
        for ctype, start, length in _chunks(f):
            if ctype == b"IHDR":
                if info is not None:
                    raise ValueError(f"{path}: corrupt PNG file (a second IHDR chunk)")
                f.seek(start)
                w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", f.read(13))
                info = PngInfo(w, h, depth, colour, interlace, 0)
            elif ctype == b"IDAT":
                if info is None:
                    raise ValueError(f"{path}: IDAT before IHDR")
                if not info.idat_offset:
                    info.idat_offset = start - 8
            elif info is not None and info.idat_offset and ctype == b"fcTL" and frames > 1:
                break  # the next frame of an animated PNG: Pillow reads no further either
            elif ctype == b"acTL":
                f.seek(start)
                frames = struct.unpack(">I", f.read(4))[0] if length >= 4 else 0
            elif ctype == b"tRNS":
                trns = True
            elif ctype in _META or (ctype in _TEXT and _text_key(f, start, length) in _TEXT_KEYS):
                f.seek(start - 8)
                metadata.append(f.read(length + 12))
    if info is None or not info.idat_offset:
        raise ValueError(f"{path}: PNG without image data")
    info.metadata, info.has_trns, info.frames = metadata, trns, max(1, frames)
    return info


def _text_key(f, start: int, length: int) -> bytes:
    """The keyword of a text chunk (at most 79 bytes, then NUL); longer ones are no keyword
    of ours."""
    f.seek(start)
    head = f.read(min(length, 80))
    return head.split(b"\0", 1)[0]


def streamable(info: PngInfo) -> str | None:
    """None when :func:`iter_bands` can read the image, else why not."""
    if info.interlace:
        return "interlaced"
    if info.colour_type not in _CHANNELS:
        return "palette image"
    if info.bit_depth not in (8, 16):
        return f"{info.bit_depth}-bit samples"
    if info.has_trns:
        return "tRNS transparency"
    return None


def _idat_data(path: str | Path, info: PngInfo, piece: int = 1 << 20) -> Iterator[bytes]:
    """The concatenated IDAT payloads, in pieces of at most ``piece`` bytes."""
    with open(path, "rb") as f:
        f.seek(info.idat_offset)
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: truncated PNG image data")
            length, ctype = struct.unpack(">I4s", head)
            if ctype != b"IDAT":
                return
            left = length
            while left:
                data = f.read(min(piece, left))
                if not data:
                    raise ValueError(f"{path}: truncated PNG image data")
                left -= len(data)
                yield data
            f.read(4)  # CRC (zlib's own checksum guards the data)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(
        ">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def _ihdr(info: PngInfo, height: int) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", info.width, height, info.bit_depth,
                                       info.colour_type, 0, 0, 0))


def header(info: PngInfo) -> bytes:
    """Signature and IHDR of a non-interlaced PNG of ``info``'s size and kind (33 bytes)."""
    return PNG_SIGNATURE + _ihdr(info, info.height)


def metadata_png(info: PngInfo) -> bytes:
    """A 1x1 8-bit grey PNG with the file's metadata chunks (as they were, CRC included) ahead
    of its image data: parsing it gives the ICC profile, EXIF and text the whole file gives,
    without touching the file's image data."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    return (PNG_SIGNATURE + ihdr + b"".join(info.metadata)
            + _chunk(b"IDAT", zlib.compress(b"\0\0")) + _chunk(b"IEND", b""))


def to_raw(info: PngInfo, rows: np.ndarray) -> np.ndarray:
    """OpenCV-layout rows -> PNG scanline bytes (rows, row_bytes), uint8."""
    if info.colour_type == 2:
        rows = rows[..., ::-1]
    elif info.colour_type == 6:
        rows = rows[..., [2, 1, 0, 3]]
    elif info.colour_type == 4:
        rows = rows[..., [0, 3]]
    rows = np.ascontiguousarray(rows, dtype=">u2" if info.bit_depth == 16 else np.uint8)
    return rows.view(np.uint8).reshape(rows.shape[0], info.row_bytes)


def iter_bands(path: str | Path, info: PngInfo, rows: int,
               allow_truncated: bool = False) -> Iterator[np.ndarray]:
    """Decoded bands of ``rows`` rows (the last one shorter), top to bottom. A file cut short
    raises ValueError, or with ``allow_truncated`` gives black rows (filter None, zero
    samples) from where its image data ends."""
    stride = 1 + info.row_bytes
    source = _idat_data(path, info)
    inflate = zlib.decompressobj()
    pending = b""
    prev: np.ndarray | None = None  # the previous band's last row, as raw scanline bytes
    done = 0
    ended = False
    while done < info.height:
        n = min(rows, info.height - done)
        need = n * stride
        buf = bytearray()
        while len(buf) < need:
            if not pending and not ended:
                try:
                    pending = inflate.unconsumed_tail or next(source, b"")
                except ValueError:  # cut off inside a chunk
                    pending = b""
                ended = not pending
            if ended:
                if not allow_truncated:
                    raise ValueError(f"{path}: truncated PNG image data; --allow-truncated "
                                     "accepts that")
                buf += bytes(need - len(buf))
                break
            buf += inflate.decompress(pending, need - len(buf))
            pending = inflate.unconsumed_tail
        if prev is not None:
            raw = b"\x00" + prev.tobytes() + bytes(buf)  # filter type 0: the row as it is
        else:
            raw = bytes(buf)
        png = (PNG_SIGNATURE + _ihdr(info, n + (prev is not None))
               + _chunk(b"IDAT", zlib.compress(raw, 0)) + _chunk(b"IEND", b""))
        band = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        if band is None:
            raise ValueError(f"{path}: corrupt PNG image data near row {done}")
        if prev is not None:
            band = band[1:]
        prev = to_raw(info, band[-1:])[0]
        done += n
        yield band


def row_ranges(bands: Iterator[np.ndarray], ranges: list[tuple[int, int]]
               ) -> Iterator[np.ndarray]:
    """Rows ``[lo, hi)`` of an image for each of ``ranges`` (both ends ascending), from
    ``bands``, its rows top to bottom in bands (:func:`iter_bands`); only the rows a later
    range still reads are kept."""
    buf, buf_lo = None, 0
    for k, (lo, hi) in enumerate(ranges):
        while buf is None or buf_lo + buf.shape[0] < hi:
            part = next(bands)
            buf = part if buf is None else np.concatenate([buf, part])
        yield buf[lo - buf_lo:hi - buf_lo]
        if k + 1 < len(ranges) and ranges[k + 1][0] > buf_lo:
            nxt = ranges[k + 1][0]
            buf, buf_lo = buf[nxt - buf_lo:], nxt


class PngWriter:
    """Write a PNG of ``info``'s kind band by band (Up filter, one zlib stream).

    ``head``: what comes before the image data, :func:`header` of ``info`` followed by any
    ancillary chunks; by default :func:`header` alone (no metadata)."""

    def __init__(self, path: str | Path, info: PngInfo, level: int = 1, *,
                 head: bytes | None = None) -> None:
        if head is None:
            head = header(info)
        elif not head.startswith(header(info)):
            raise ValueError("PngWriter: head does not start with this image's signature and IHDR")
        self.info = info
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.zip = zlib.compressobj(level)
        self.prev = np.zeros((1, info.row_bytes), np.uint8)
        self.rows = 0
        self.f.write(head)

    def write(self, band: np.ndarray) -> None:
        raw = to_raw(self.info, band)
        up = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
        up[:, 0] = 2  # PNG filter type Up: each byte minus the byte above it (mod 256)
        np.subtract(raw[:1], self.prev, out=up[:1, 1:])
        np.subtract(raw[1:], raw[:-1], out=up[1:, 1:])
        self.prev = raw[-1:].copy()
        data = self.zip.compress(up.data)
        if data:
            self.f.write(_chunk(b"IDAT", data))
        self.rows += raw.shape[0]

    def close(self) -> None:
        if self.rows != self.info.height:
            self.f.close()
            raise ValueError(f"PngWriter: {self.rows} rows written, {self.info.height} expected")
        self.f.write(_chunk(b"IDAT", self.zip.flush()) + _chunk(b"IEND", b""))
        self.f.close()

    def abort(self) -> None:
        self.f.close()

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        """Closed (the image complete) when the block ends, abandoned when it raises."""
        if kind is None:
            self.close()
        else:
            self.abort()
