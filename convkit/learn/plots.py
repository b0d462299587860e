"""Pictures of a training run, drawn with Pillow (no plotting library): loss and PSNR curves,
the first layer's kernels, and an input | output | target strip."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .files import atomic_write

__all__ = ["plot_curves", "plot_kernels", "plot_strip"]

_BG, _FG, _GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)
_COLOURS = ((31, 119, 180), (214, 39, 40))


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _save(img, path: Path) -> None:
    def write(f):
        img.save(f, format="PNG")

    atomic_write(path, write)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:.3g}"


def _panel(draw, box, xs, ys, title, ylabel_fmt, colour, log_y=False, font=None) -> None:
    """One line chart in ``box`` (x0, y0, x1, y1) with min/max ticks and a light grid."""
    x0, y0, x1, y1 = box
    pts = [(x, y) for x, y in zip(xs, ys, strict=True)
           if y is not None and math.isfinite(y) and (not log_y or y > 0)]
    draw.text((x0, y0 - 22), title, fill=_FG, font=font)
    left, bottom = x0 + 62, y1 - 26
    draw.rectangle((left, y0, x1, bottom), outline=_FG)
    if not pts:
        draw.text((left + 10, (y0 + bottom) // 2), "no data", fill=_FG, font=font)
        return
    tx = [math.log10(y) if log_y else y for _, y in pts]
    lo, hi = min(tx), max(tx)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    xmin, xmax = min(x for x, _ in pts), max(x for x, _ in pts)
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1

    def px(x: float, t: float) -> tuple[float, float]:
        return (left + (x - xmin) / (xmax - xmin) * (x1 - left - 1),
                bottom - (t - lo) / (hi - lo) * (bottom - y0 - 1))

    for i in range(5):  # horizontal grid and y labels
        t = lo + (hi - lo) * i / 4
        _, yy = px(xmin, t)
        draw.line((left + 1, yy, x1 - 1, yy), fill=_GRID)
        label = ylabel_fmt(10**t if log_y else t)
        draw.text((x0, yy - 7), label, fill=_FG, font=font)
    for x in sorted({xmin, xmax, round((xmin + xmax) / 2)}):
        xx, _ = px(x, lo)
        draw.text((xx - 8, bottom + 6), str(int(x)), fill=_FG, font=font)
    line = [px(x, t) for (x, _), t in zip(pts, tx, strict=True)]
    if len(line) > 1:
        draw.line(line, fill=colour, width=2)
    for p in line:
        draw.ellipse((p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3), fill=colour)


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Two charts over the epochs: train loss (log scale) and validation PSNR (dB).

    ``history`` rows need ``epoch``, ``train_loss`` and ``val_psnr`` (None without validation).
    """
    from PIL import Image, ImageDraw

    path = Path(path)
    w, h = 960, 380
    img = Image.new("RGB", (w, h), _BG)
    draw = ImageDraw.Draw(img)
    font = _font(14)
    draw.text((16, 8), title, fill=_FG, font=_font(16))
    epochs = [r["epoch"] for r in history]
    _panel(draw, (16, 64, w // 2 - 16, h - 8), epochs, [r.get("train_loss") for r in history],
           "train loss (log scale) per epoch", _fmt, _COLOURS[0], log_y=True, font=font)
    _panel(draw, (w // 2 + 16, 64, w - 16, h - 8), epochs,
           [r.get("val_psnr") for r in history], "validation PSNR (dB) per epoch",
           lambda v: f"{v:.2f}", _COLOURS[1], font=font)
    _save(img, path)
    return path


def plot_kernels(weight: Tensor, path: str | Path, cell: int | None = None) -> Path:
    """A grid of conv kernels ``weight`` (out, in, k, k), each scaled so that 0 is mid-grey and
    its largest magnitude is black or white; RGB when in == 3, else the first input channel.
    ``cell``: pixels per kernel side (default: 48, larger when there are few kernels)."""
    from PIL import Image
    from torchvision.utils import make_grid

    path = Path(path)
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w[:, :1]
    peak = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    w = 0.5 + 0.5 * w / peak
    if cell is None:
        cell = max(48, 384 // min(8, w.shape[0]))
    scale = max(1, cell // w.shape[-1])
    w = w.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(w, nrow=min(8, w.shape[0]), padding=4, pad_value=1.0)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    _save(Image.fromarray(arr), path)
    return path


def plot_strip(
    x: Tensor, out: Tensor, target: Tensor, path: str | Path,
    labels: Sequence[str] = ("input", "output", "target"),
) -> Path:
    """Side by side, labelled: three float images (C, H, W) on [0, 1] (grey or RGB)."""
    import numpy as np
    from PIL import Image, ImageDraw

    path = Path(path)
    tiles = []
    for t in (x, out, target):
        t = t.detach().float().cpu().clamp(0, 1)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        tiles.append((t[:3] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    h, w = tiles[0].shape[:2]
    gap, band = 6, 24
    canvas = Image.new("RGB", (3 * w + 2 * gap, h + band), _BG)
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (i * (w + gap), band))
        draw.text((i * (w + gap) + 4, 4), label, fill=_FG, font=font)
    _save(canvas, path)
    return path
