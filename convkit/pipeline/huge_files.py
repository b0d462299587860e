"""Huge images from file to file in bounded memory: :func:`filter_file`.

A PNG written as PNG streams band by band (:mod:`convkit.io.pngstream`): each band of output
rows is filtered from the input rows its halo reaches, so memory does not grow with the image.
Other files are decoded whole and filtered in tiles, in place. The geometry of tiles and halos
is :mod:`convkit.pipeline.tiling`'s; this module reads and writes the files around it.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..io import atomic
from ..nn.modules import Filter, flatten
from .memory import parse_memory
from .streaming import PngSource, metadata_chunks, png_source
from .tiling import (
    apply_tiled,
    auto_memory,
    halo,
    input_ranges,
    negative_of,
    plan_tiles,
    run_tile,
    units_of,
)

__all__ = ["filter_file"]


def _header(path: Path, max_pixels: int | None) -> tuple[int, int, str]:
    """(width, height, Pillow mode) from the header, with the decompression-bomb guard."""
    from PIL import Image, UnidentifiedImageError

    from ..io.images import no_pixel_limit, pillow_pixel_limit

    try:
        with no_pixel_limit(), Image.open(path) as im:
            size, mode = im.size, im.mode
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    limit = max_pixels or pillow_pixel_limit()
    w, h = size
    if limit and w * h > limit:
        raise ValueError(
            f"{path}: {w}x{h} = {w * h} pixels is above the limit of {limit} pixels (a guard "
            "against decompression bombs); raise it with --max-pixels (max_pixels= in Python)"
        )
    return w, h, mode


def filter_file(module: nn.Module | str, src: str | os.PathLike, dst: str | os.PathLike, *,
                max_memory: int | str | None = None, max_pixels: int | None = None,
                quality: int = 95, alpha: bool | None = None,
                allow_truncated: bool = False) -> dict:
    """Filter one (huge) image file into ``dst`` in bounded memory.

    A PNG to PNG (8/16-bit grey, grey+alpha, RGB, RGBA, not interlaced) streams: bands are
    decoded, filtered with their halo and encoded one after the other
    (:mod:`convkit.io.pngstream`), so memory does not grow with the image. Other files are decoded
    whole with OpenCV (no Pillow copy), filtered in place band by band (:func:`apply_tiled`
    with ``out=x``) and encoded by OpenCV from the same buffer: about one decoded image of
    memory. A JPEG (and, with ``allow_truncated``, a PNG that does not stream) is read by
    :func:`convkit.io.images.read_array_with_info` instead, as everywhere else in convkit:
    damaged or cut-short data is refused (OpenCV's decoder fills it with grey and says
    nothing), the EXIF orientation is applied, and :func:`convkit.io.images.write_image` writes
    it with its ICC profile and EXIF, its encoder taking about one more decoded image of
    memory (counted in ``max_memory``). 8- and
    16-bit images stay 8/16-bit; a 4-channel image's last channel is alpha. The
    output is written to a temporary name and renamed, so no partial file is left; ``src`` is
    never modified.

    A PNG written as PNG keeps the metadata :func:`convkit.io.images.write_image` would keep: the
    ICC profile when it fits the channels written, and the EXIF block (found as
    :func:`convkit.io.images.read_image_with_info` finds them; other ancillary chunks are not
    copied). A PNG whose EXIF orientation is not 1 must be turned before it is filtered, which
    cannot be done band by band: it is read whole by :func:`convkit.io.images.read_image_with_info`
    (turned, its Orientation tag then reads 1), filtered in place and written by
    :func:`convkit.io.images.write_image`, the same result as for any other image, with the memory
    of that path (the file, the decoded image and its turned copy). Other formats keep no metadata.

    Args:
        module: a filter, chain, or chain spec string; it must keep the image size.
        max_memory: bytes (or "2G") for the decoded image plus the working memory; None: the
            image plus an automatic working budget. An image that does not fit is refused
            before it is decoded.
        max_pixels: largest width x height accepted (default: Pillow's
            ``Image.MAX_IMAGE_PIXELS``). OpenCV refuses more than 2**30 pixels unless the
            environment sets OPENCV_IO_MAX_IMAGE_PIXELS before it is first used.
        quality: JPEG/WebP quality.
        allow_truncated: filter what a damaged or cut-short file holds (the rest black, or grey
            in a JPEG) instead of refusing it, as :func:`convkit.io.images.read_image_with_info`.

    Returns:
        A summary: width, height, channels, dtype, bands, working_memory, streamed.
    """
    import cv2

    if isinstance(module, str):
        from ..nn.chains import chain

        module = chain(module)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ValueError(f"{src}: no such file")
    w, h, mode = _header(src, max_pixels)
    png = png_source(src) if dst.suffix.lower() == ".png" else None
    if png is not None and png.orientation != 1:
        return _filter_with_io(module, src, dst, w, h, max_memory, max_pixels, quality, alpha,
                               allow_truncated)
    if png is not None:
        streamed = _stream_png(module, src, dst, png, max_memory, alpha, allow_truncated)
        if streamed is not None:
            return streamed
    from ..io.images import sniff_format

    with open(src, "rb") as f:
        kind = sniff_format(f.read(12))
    if kind == "JPEG" or (allow_truncated and kind == "PNG"):
        # a JPEG: OpenCV's decoder fills damaged data with grey without a word, and ignores
        # the EXIF orientation under IMREAD_UNCHANGED; a PNG cut short that did not stream:
        # OpenCV refuses it. io reads them, as everywhere else
        return _filter_with_io(module, src, dst, w, h, max_memory, max_pixels, quality, alpha,
                               allow_truncated)
    channels = {"L": 1, "LA": 4, "RGBA": 4, "PA": 4}.get(mode, 3)
    itemsize = 2 if mode.startswith("I;16") or mode == "I" else 1
    budget = _file_budget(src, w, h, w * h * channels * itemsize, max_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{src}: OpenCV could not decode it (corrupt file, unsupported format, "
                         f"or more than OPENCV_IO_MAX_IMAGE_PIXELS pixels)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{src}: {img.dtype} images are not supported here (8/16-bit only)")
    if img.ndim == 2:
        x = torch.from_numpy(img)[None, None]
    else:
        x = torch.from_numpy(img).permute(2, 0, 1)[None]  # channels_last view, no copy
    if alpha is None:
        alpha = x.shape[1] in (2, 4)
    # Learned filters may mix colour channels: give them RGB order (a per-band copy).
    rgb = not all(isinstance(m, Filter) for m in flatten(module)) and x.shape[1] >= 3
    mod = _BgrWrapped(module) if rgb else module
    tp = plan_tiles(mod, tuple(x.shape), max_memory=budget, full_width=True)
    if tp.out_size != tp.in_size:
        raise ValueError("filter_file needs a chain that keeps the image size; this one pools")
    with torch.no_grad():
        apply_tiled(mod, x, alpha=alpha, max_memory=budget, out=x)
    params: list[int] = []
    suffix = dst.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    elif suffix in (".tif", ".tiff"):  # lossless, as convkit.io.images writes TIFF
        params = [cv2.IMWRITE_TIFF_COMPRESSION, cv2.IMWRITE_TIFF_COMPRESSION_ADOBE_DEFLATE]
    with atomic.replacing(dst, keep_suffix=True) as tmp:
        if not cv2.imwrite(str(tmp), img, params):
            raise ValueError(f"{dst}: cannot write ({_cv_write_failure(tmp)})")
        if png is not None:
            _insert_png_metadata(tmp, png, int(x.shape[1]))
    return _tiled_summary(x, tp, budget)


def _cv_write_failure(tmp: Path) -> str:
    """Why cv2.imwrite returned False: OpenCV gives no reason, so look at the disk."""
    try:
        st = os.statvfs(tmp.parent)
        if st.f_bavail * st.f_frsize < (1 << 20):
            return "No space left on device"
    except OSError:
        pass
    return "OpenCV's encoder failed"


def _tiled_summary(x: Tensor, tp, budget: int) -> dict:
    """filter_file's summary of an image filtered whole in tiles (``x``: (1, C, H, W))."""
    _, c, h, w = x.shape
    return {"width": w, "height": h, "channels": c, "dtype": str(x.dtype).split(".")[-1],
            "bands": len(tp.rows), "working_memory": budget, "streamed": False}


def _file_budget(src: Path, w: int, h: int, decoded: int, max_memory) -> int:
    """Working memory left by ``max_memory`` once the image is decoded (``decoded`` bytes)."""
    if max_memory is None:
        return auto_memory()
    budget = parse_memory(max_memory) - decoded
    if budget < (16 << 20):
        raise ValueError(
            f"{src}: a {w}x{h} image needs {decoded / 2**30:.2f} GiB decoded; max_memory "
            f"{parse_memory(max_memory) / 2**30:.2f} GiB leaves too little to filter it"
        )
    return budget


def _insert_png_metadata(path: Path, png: PngSource, channels: int) -> None:
    """Put the metadata chunks into the PNG OpenCV wrote at ``path``, copying it in blocks."""
    part = path.with_name(path.name + ".meta")
    try:
        with open(path, "rb") as f:
            head = f.read(33)
            full = metadata_chunks(png, channels, head)
            if full == head:
                return
            with open(part, "wb") as g:
                g.write(full)
                shutil.copyfileobj(f, g, 1 << 20)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _filter_with_io(module: nn.Module, src: Path, dst: Path, w: int, h: int, max_memory,
                    max_pixels: int | None, quality: int, alpha: bool | None,
                    allow_truncated: bool) -> dict:
    """The path of every other image (:mod:`convkit.io.images` reads, turns, writes), for a
    JPEG (strict decoding, orientation, metadata) and a PNG whose EXIF orientation is not 1 (it
    must be turned before it is filtered, which needs it whole); ``w`` x ``h`` from its
    header."""
    from ..io import images as cio

    if any(u.kind != "same" for u in units_of(module)[0]):
        raise ValueError("filter_file needs a chain that keeps the image size; this one pools")
    # the bytes read_array_with_info gives (a header that does not tell: 8-bit RGB's)
    decoded = cio.declared_bytes(src) or w * h * 3
    # write_image's encoder takes a converted copy (BGR for OpenCV) and the encoded bytes: the
    # budget counts two images, so the tiles' working memory keeps the total within it
    budget = _file_budget(src, w, h, 2 * decoded, max_memory)
    # interleaved: a (C, H, W) view of the decoded (H, W, C) pixels, filtered in place
    image, meta = cio.read_array_with_info(src, max_pixels=max_pixels, interleaved=True,
                                           allow_truncated=allow_truncated)
    x = torch.from_numpy(image)[None]
    if alpha is None:
        alpha = image.shape[0] in (2, 4)
    tp = plan_tiles(module, tuple(x.shape), max_memory=budget, full_width=True)
    with torch.no_grad():
        apply_tiled(module, x, alpha=alpha, max_memory=budget, out=x)
    cio.write_image(dst, image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0),
                    quality=quality, info=meta)
    return _tiled_summary(x, tp, budget)


def _stream_png(module: nn.Module, src: Path, dst: Path, png: PngSource, max_memory,
                alpha, allow_truncated: bool = False) -> dict | None:
    """PNG to PNG band by band; None when the file or the chain do not allow streaming."""
    from ..io import pngstream

    info = png.info
    if pngstream.streamable(info) is not None:
        return None
    units, wrap = units_of(module)
    if wrap or any(u.kind != "same" for u in units):
        return None  # circular needs the far edge first; pooling changes the size
    c = info.channels
    rgb = not all(isinstance(m, Filter) for m in flatten(module)) and c >= 3
    mod = _BgrWrapped(module) if rgb else module
    if alpha is None:
        alpha = c == 4
    # about 4 more bytes per sample for the decoded band, the raw rows and the deflate input
    budget = int(parse_memory(max_memory) * 0.8) if max_memory is not None else auto_memory()
    tp = plan_tiles(mod, (1, c, info.height, info.width), max_memory=budget, full_width=True)
    negative = negative_of(mod)
    bands = [(r, input_ranges(tp.units, tp.sizes_h, *r, 0, False)) for r in tp.rows]
    step = max(r[1] - r[0] for r, _ in bands)
    tiles = pngstream.row_ranges(pngstream.iter_bands(src, info, step, allow_truncated),
                                 [rr[0] for _, rr in bands])
    # the file's own channels (grey+alpha stays grey+alpha), which are also io's on read
    head = metadata_chunks(png, info.samples, pngstream.header(info))
    cols = [(0, info.width)]
    with atomic.replacing(dst) as tmp, pngstream.PngWriter(tmp, info, head=head) as writer:
        _stream_bands(tp, mod, bands, tiles, writer, cols, alpha, negative, c)
    return {"width": info.width, "height": info.height, "channels": c,
            "dtype": "uint16" if info.bit_depth == 16 else "uint8", "bands": len(bands),
            "working_memory": budget, "streamed": True}


def _stream_bands(tp, mod, bands, tiles, writer, cols, alpha, negative, c) -> None:
    """Filter ``tiles``, the input rows of each band, and hand them to ``writer`` in order."""
    with torch.no_grad():
        for (_, rr), tile in zip(bands, tiles, strict=True):
            x = torch.from_numpy(np.ascontiguousarray(tile))
            x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]
            y = run_tile(tp, mod, x, rr, cols * len(rr), alpha, negative)[0]
            writer.write(y[0].numpy() if c == 1 else y.permute(1, 2, 0).numpy())


class _BgrWrapped(nn.Module):
    """Runs ``inner`` on RGB(A) order for a BGR(A) tensor (OpenCV's channel order)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def reach(self):
        return halo(self.inner)

    @property
    def negative(self):
        return negative_of(self.inner)

    def forward(self, x: Tensor) -> Tensor:
        idx = [2, 1, 0, *range(3, x.shape[1])]
        return self.inner(x[:, idx])[:, idx]
