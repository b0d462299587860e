"""File formats by name, extension and signature: the one table the reader, the writer, the
batch pipeline and the command line share (no imports, so ``--help`` stays fast)."""

from __future__ import annotations

__all__ = ["FORMATS", "WRITE_FORMATS", "PNG_SIGNATURE"]

#: Extension -> Pillow's name of the format written.
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".bmp": "BMP"}
#: ``--format`` values and the extension each writes.
FORMATS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif",
           "tif": ".tif", "bmp": ".bmp"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
