"""File formats by name, extension and signature: the one table the reader, the writer, the
batch pipeline and the command line share (the standard library only, so ``--help`` stays
fast)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FORMATS", "WRITE_FORMATS", "PNG_SIGNATURE", "png_header", "JPEG_SOF",
           "jpeg_segments", "JpegHeader", "jpeg_header"]

#: Extension -> Pillow's name of the format written.
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".bmp": "BMP"}
#: ``--format`` values and the extension each writes.
FORMATS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif",
           "tif": ".tif", "bmp": ".bmp"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(head: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's first 26 bytes (its signature and
    IHDR chunk, which always comes first), or None when ``head`` does not start a PNG."""
    if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[24],
            head[25])


# --- JPEG ------------------------------------------------------------------------------------
#: Start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15): every coding a frame header can declare.
JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF))
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset(range(0xD0, 0xD8))  # RST0-7: no length field (Pillow refuses TEM)


def jpeg_segments(data: bytes):
    """(marker, body) of each marker segment of a JPEG from SOI up to its first scan (SOS),
    the scan itself not read. Stops early (without an error) where ``data`` ends or where the
    bytes are not markers; a caller that needs the whole header checks that it saw SOS."""
    if not data.startswith(b"\xff\xd8"):
        return
    i, n = 2, len(data)
    while i + 2 <= n:
        if data[i] != 0xFF:
            return  # junk between segments: not a header this reads
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte before the marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (_EOI, 0x01) or i + 4 > n:
            return
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return
        yield marker, data[i + 4:i + 2 + length]
        if marker == _SOS:
            return
        i += 2 + length


@dataclass(frozen=True)
class JpegHeader:
    """What a plain JPEG's header says, read without decoding it (see :func:`jpeg_header`).

    ``exif`` is the APP1 block as stored (``b"Exif\\0\\0"`` + TIFF data), ``icc`` the ICC
    profile assembled from its APP2 chunks, ``xmp`` whether an XMP packet is there."""

    width: int
    height: int
    components: int
    exif: bytes | None
    icc: bytes | None
    xmp: bool


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a plain JPEG: one 8-bit frame, baseline, extended or progressive Huffman
    coded (SOF0-2), 1 or 3 components, its segments in order up to the first scan; at most
    one EXIF block; no multi-picture (MPO) index; every ICC chunk before the frame and the
    chunks complete. None for anything else (the caller then reads the file with Pillow, which
    reads every variant and reports the damaged ones)."""
    exif: bytes | None = None
    icc: list[bytes] = []
    xmp = False
    frame: tuple[int, int, int] | None = None
    for marker, body in jpeg_segments(data):
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            if exif is not None:
                return None  # several EXIF segments (Pillow joins them)
            exif = body
        elif marker == 0xE1 and body.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            xmp = True
        elif marker == 0xE2 and body.startswith(b"MPF\x00"):
            return None  # a multi-picture file: more than one frame
        elif marker == 0xE2 and body.startswith(b"ICC_PROFILE\x00"):
            if frame is not None or len(body) < 14:
                return None
            icc.append(body)
        elif marker in JPEG_SOF:
            if frame is not None or marker not in (0xC0, 0xC1, 0xC2) or len(body) < 6:
                return None
            precision, height, width, components = (body[0], int.from_bytes(body[1:3], "big"),
                                                    int.from_bytes(body[3:5], "big"), body[5])
            if precision != 8 or components not in (1, 3) or not width or not height:
                return None
            frame = (width, height, components)
        elif marker == _SOS:
            if frame is None:
                return None
            profile = None
            if icc:
                icc.sort()  # by sequence number (the bytes before it are the same)
                if icc[0][13] == len(icc):
                    profile = b"".join(chunk[14:] for chunk in icc)
            return JpegHeader(*frame, exif, profile, xmp)
    return None
