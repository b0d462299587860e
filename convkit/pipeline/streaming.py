"""PNG to PNG band by band without torch: a plan of fixed filters (the command line's CPU
route) run on bands of rows of a huge PNG, so that neither the image nor torch is ever loaded.

Each band of output rows is filtered from the input rows the plan reaches above and below it
(the sum of its operations' reach); a band at the top or bottom of the image reads the image's
edge, so the border rule applies there as on the whole image, and the rows a band's own
padding spoils lie within the reach and are dropped. Full width: the left and right borders
are the image's. The result equals the plan on the whole image (float rounding of an FFT
aside, which these plans do not use). ICC profile and EXIF are kept as
:func:`convkit.io.images.write_image` keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error
from typing import TYPE_CHECKING, Any

from ..io import atomic
from ..plan.ops import Plan, reach
from .memory import parse_memory

if TYPE_CHECKING:
    from ..io.pngstream import PngInfo

__all__ = ["stream_png", "PngSource", "png_source", "metadata_chunks", "BYTES_PER_SAMPLE"]

#: Working bytes per sample of a band: the decoded rows, the plan's float32 intermediates (run
#: in cache-sized bands inside), the result and its PNG scanlines.
BYTES_PER_SAMPLE = 16
#: Working memory of the bands when none is given.
DEFAULT_MEMORY = 128 << 20


@dataclass
class PngSource:
    """A PNG's header chunks and the metadata :mod:`convkit.io.images` takes from it."""

    info: PngInfo
    icc: object  # Pillow's icc_profile, before it is matched to the channels written
    exif: bytes | None  # as io would write it
    orientation: int  # as io applies it on read


def png_source(src: Path) -> PngSource | None:
    """``src``'s header and metadata, or None when pngstream cannot parse it as a PNG.

    The metadata is what :func:`convkit.io.images.read_image_with_info` would find: io's own helpers
    run on Pillow's parse of the file's metadata chunks (copied into a 1x1 PNG by
    :func:`convkit.io.pngstream.metadata_png`, so that no image data is read).
    """
    from io import BytesIO

    from PIL import Image

    from ..io import images as cio
    from ..io import pngstream

    try:
        info = pngstream.read_info(src)
    except (ValueError, OSError, struct_error):
        return None
    data = pngstream.metadata_png(info)
    cio.check_png_chunks(data, str(src))  # a bad CRC or cut-off chunk, as io reports it
    try:
        with Image.open(BytesIO(data), formats=["PNG"]) as im:
            orientation = cio.exif_orientation(im)
            icc = im.info.get("icc_profile")
            exif = cio.exif_block(im, reset_orientation=orientation != 1)
    except Exception as e:  # Pillow raises many kinds of exception for corrupt chunks
        raise ValueError(f"{src}: corrupt PNG metadata ({e})") from None
    return PngSource(info, icc, exif, orientation)


def metadata_chunks(png: PngSource, channels: int, head: bytes) -> bytes:
    """``head`` (signature and IHDR) followed by the iCCP and eXIf chunks io writes for an
    image of ``channels`` channels."""
    from ..io import images as cio

    return cio.png_with_metadata(head, cio.matching_icc(png.icc, channels), png.exif)


def stream_png(plan: Plan, src: str | Path, dst: str | Path, *, max_memory: Any = None,
               opts: Any = None, allow_truncated: bool = False) -> dict | None:
    """Filter the PNG ``src`` into the PNG ``dst`` band by band with ``plan``, without torch.

    Returns a summary, or None when this route cannot take the file or the plan (then
    nothing is written): a PNG that is interlaced, stored turned (EXIF orientation) or not
    parsed by :mod:`convkit.io.pngstream`; a plan with a wrapping border (it needs the far
    edge first) or one that does not run on OpenCV for the file's depth.
    """
    from ..backends import opencv
    from ..io import pngstream
    from ..plan.rules import current

    opts = opts or current()
    src, dst = Path(src), Path(dst)
    png = png_source(src)
    if png is None or png.orientation != 1:
        return None
    info = png.info
    reaches = [reach(op) for op in plan.ops]
    if (pngstream.streamable(info) is not None or any(r is None for r in reaches)
            or any(getattr(op, "border", None) == "circular" for op in plan.ops)
            or any(getattr(getattr(op, "gx", None), "border", None) == "circular"
                   for op in plan.ops)):
        return None
    dtype = "uint16" if info.bit_depth == 16 else "uint8"
    if not opencv.runs_plan(plan, dtype, opts, torch_fft=False):
        return None
    top = sum(r[0] for r in reaches)
    bottom = sum(r[1] for r in reaches)
    budget = parse_memory(max_memory) if max_memory is not None else DEFAULT_MEMORY
    c = info.channels
    h, w = info.height, info.width
    rows = max(16, budget // (w * c * BYTES_PER_SAMPLE) - top - bottom)
    alpha = c in (2, 4)
    head = metadata_chunks(png, info.samples, pngstream.header(info))
    starts = range(0, h, rows)
    ranges = [(max(0, r0 - top), min(h, r0 + rows + bottom)) for r0 in starts]
    reader = pngstream.row_ranges(pngstream.iter_bands(src, info, rows, allow_truncated),
                                  ranges)
    with atomic.replacing(dst) as tmp, pngstream.PngWriter(tmp, info, head=head) as writer:
        for r0, (lo, _), band in zip(starts, ranges, reader, strict=True):
            chw = band[None] if band.ndim == 2 else band.transpose(2, 0, 1)
            out = opencv.run_plan_image(plan, chw, alpha, opts)[:, r0 - lo:r0 + rows - lo]
            writer.write(out[0] if band.ndim == 2 else out.transpose(1, 2, 0))
    return {"width": w, "height": h, "channels": c, "dtype": dtype, "bands": len(ranges),
            "working_memory": budget, "streamed": True, "torch": False}
