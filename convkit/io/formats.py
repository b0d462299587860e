"""File formats by name, extension and signature: the one table the reader, the writer, the
batch pipeline and the command line share (no imports, so ``--help`` stays fast)."""

from __future__ import annotations

__all__ = ["FORMATS", "WRITE_FORMATS", "PNG_SIGNATURE", "png_header"]

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
