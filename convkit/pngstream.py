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
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

__all__ = ["PngInfo", "read_info", "streamable", "iter_bands", "PngWriter"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel in the file
# ancillary chunks about colour and resolution, copied to the output
_KEEP = {b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"pHYs", b"sBIT", b"tEXt", b"zTXt", b"iTXt"}


@dataclass
class PngInfo:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int
    idat_offset: int  # file offset of the first IDAT chunk
    extra: list[tuple[bytes, bytes]] = field(default_factory=list)  # (type, data) to copy
    has_trns: bool = False

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
    """(type, data offset, length) of each chunk, without reading IDAT data."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("truncated PNG (no IEND chunk)")
        length, ctype = struct.unpack(">I4s", head)
        start = f.tell()
        yield ctype, start, length
        f.seek(start + length + 4)
        if ctype == b"IEND":
            return


def read_info(path: str | Path) -> PngInfo:
    """Parse the header chunks of a PNG file (ValueError when it is not a PNG)."""
    with open(path, "rb") as f:
        if f.read(8) != SIGNATURE:
            raise ValueError(f"{path}: not a PNG file")
        info: PngInfo | None = None
        extra, trns = [], False
        for ctype, start, length in _chunks(f):
            if ctype == b"IHDR":
                f.seek(start)
                w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", f.read(13))
                info = PngInfo(w, h, depth, colour, interlace, 0)
            elif ctype == b"IDAT":
                if info is None:
                    raise ValueError(f"{path}: IDAT before IHDR")
                info.idat_offset = start - 8
                info.extra, info.has_trns = extra, trns
                return info
            elif ctype == b"tRNS":
                trns = True
            elif ctype in _KEEP:
                f.seek(start)
                extra.append((ctype, f.read(length)))
    raise ValueError(f"{path}: PNG without image data")


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


def iter_bands(path: str | Path, info: PngInfo, rows: int) -> Iterator[np.ndarray]:
    """Decoded bands of ``rows`` rows (the last one shorter), top to bottom."""
    stride = 1 + info.row_bytes
    source = _idat_data(path, info)
    inflate = zlib.decompressobj()
    pending = b""
    prev: np.ndarray | None = None  # the previous band's last row, as raw scanline bytes
    done = 0
    while done < info.height:
        n = min(rows, info.height - done)
        need = n * stride
        buf = bytearray()
        while len(buf) < need:
            if not pending:
                pending = inflate.unconsumed_tail or next(source, b"")
                if not pending:
                    raise ValueError(f"{path}: truncated PNG image data")
            buf += inflate.decompress(pending, need - len(buf))
            pending = inflate.unconsumed_tail
        if prev is not None:
            raw = b"\x00" + prev.tobytes() + bytes(buf)  # filter type 0: the row as it is
        else:
            raw = bytes(buf)
        png = (SIGNATURE + _ihdr(info, n + (prev is not None))
               + _chunk(b"IDAT", zlib.compress(raw, 0)) + _chunk(b"IEND", b""))
        band = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        if band is None:
            raise ValueError(f"{path}: corrupt PNG image data near row {done}")
        if prev is not None:
            band = band[1:]
        prev = to_raw(info, band[-1:])[0]
        done += n
        yield band


class PngWriter:
    """Write a PNG of ``info``'s kind band by band (Up filter, one zlib stream)."""

    def __init__(self, path: str | Path, info: PngInfo, level: int = 1) -> None:
        self.info = info
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.zip = zlib.compressobj(level)
        self.prev = np.zeros((1, info.row_bytes), np.uint8)
        self.rows = 0
        self.f.write(SIGNATURE + _ihdr(info, info.height))
        for ctype, data in info.extra:
            self.f.write(_chunk(ctype, data))

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
