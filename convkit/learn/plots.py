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
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44))


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


def _labels(values: Sequence[float], fmt) -> list[str]:
    """Tick labels that tell the ticks apart: ``fmt`` first, then more digits until no two
    neighbours read the same (a narrow range printed "1.7e-04" five times)."""
    labels = [fmt(v) for v in values]
    for digits in range(3, 9):
        if all(a != b for a, b in zip(labels, labels[1:], strict=False)):
            break
        labels = [f"{v:.{digits}g}" for v in values]
    return labels


def _panel(draw, box, xs, ys, title, ylabel_fmt, colour, log_y=False, font=None,
           label: str = "", baseline: float | None = None, baseline_label: str = "") -> None:
    """One line chart in ``box`` (x0, y0, x1, y1): ``ys`` over ``xs`` (epochs), five labelled
    y ticks and a light grid, the x axis labelled "epoch", a dashed horizontal ``baseline``
    where given, and a legend naming the line and the baseline."""
    x0, y0, x1, y1 = box
    pts = [(x, y) for x, y in zip(xs, ys, strict=True)
           if y is not None and math.isfinite(y) and (not log_y or y > 0)]
    draw.text((x0, y0 - 22), title, fill=_FG, font=font)
    left, bottom = x0 + 70, y1 - 40
    draw.rectangle((left, y0, x1, bottom), outline=_FG)
    draw.text(((left + x1) // 2 - 20, bottom + 22), "epoch", fill=_FG, font=font)
    if not pts:
        draw.text((left + 10, (y0 + bottom) // 2), "no data", fill=_FG, font=font)
        return
    tx = [math.log10(y) if log_y else y for _, y in pts]
    show_base = baseline is not None and math.isfinite(baseline) and (not log_y or baseline > 0)
    span = tx + ([math.log10(baseline) if log_y else baseline] if show_base else [])
    lo, hi = min(span), max(span)
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

    ticks = [lo + (hi - lo) * i / 4 for i in range(5)]
    for t, text in zip(ticks, _labels([10**t if log_y else t for t in ticks], ylabel_fmt),
                       strict=True):
        _, yy = px(xmin, t)
        draw.line((left + 1, yy, x1 - 1, yy), fill=_GRID)
        draw.text((x0, yy - 7), text, fill=_FG, font=font)
    for x in sorted({xmin, xmax, round((xmin + xmax) / 2)}):
        xx, _ = px(x, lo)
        draw.text((xx - 8, bottom + 4), str(int(x)), fill=_FG, font=font)
    legend = [(colour, label, False)] if label else []
    if show_base:
        _, yb = px(xmin, math.log10(baseline) if log_y else baseline)
        for xa in range(left + 1, x1 - 1, 10):  # dashed
            draw.line((xa, yb, min(xa + 5, x1 - 1), yb), fill=_FG, width=1)
        legend.append((_FG, baseline_label, True))
    line = [px(x, t) for (x, _), t in zip(pts, tx, strict=True)]
    if len(line) > 1:
        draw.line(line, fill=colour, width=2)
    for p in line:
        draw.ellipse((p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3), fill=colour)
    for k, (c, text, dashed) in enumerate(legend):  # top right, inside the frame
        ly = y0 + 8 + 18 * k
        lx = x1 - 190
        if dashed:
            draw.line((lx, ly + 7, lx + 6, ly + 7), fill=c)
            draw.line((lx + 10, ly + 7, lx + 16, ly + 7), fill=c)
        else:
            draw.line((lx, ly + 7, lx + 16, ly + 7), fill=c, width=2)
        draw.text((lx + 22, ly), text, fill=_FG, font=font)


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                baseline: dict[str, float] | None = None) -> Path:
    """Three charts over the epochs: train loss (log scale), validation PSNR (dB) and SSIM,
    the last two with the input's own scores (``baseline``: ``psnr``, ``ssim``) as a dashed
    line, so a run shows how far it got beyond doing nothing.

    ``history`` rows need ``epoch``, ``train_loss``, ``val_psnr`` and ``val_ssim`` (None
    without validation).
    """
    from PIL import Image, ImageDraw

    path = Path(path)
    baseline = baseline or {}
    w, h = 1380, 400
    img = Image.new("RGB", (w, h), _BG)
    draw = ImageDraw.Draw(img)
    font = _font(14)
    draw.text((16, 8), title, fill=_FG, font=_font(16))
    epochs = [r["epoch"] for r in history]
    third = w // 3
    _panel(draw, (16, 64, third - 16, h - 8), epochs, [r.get("train_loss") for r in history],
           "train loss (log scale)", _fmt, _COLOURS[0], log_y=True, font=font,
           label="train loss")
    _panel(draw, (third + 16, 64, 2 * third - 16, h - 8), epochs,
           [r.get("val_psnr") for r in history], "validation PSNR (dB)",
           lambda v: f"{v:.2f}", _COLOURS[1], font=font, label="filter's output",
           baseline=baseline.get("psnr"), baseline_label="input as it is")
    _panel(draw, (2 * third + 16, 64, w - 16, h - 8), epochs,
           [r.get("val_ssim") for r in history], "validation SSIM",
           lambda v: f"{v:.4f}", _COLOURS[2 % len(_COLOURS)], font=font,
           label="filter's output", baseline=baseline.get("ssim"),
           baseline_label="input as it is")
    _save(img, path)
    return path


def plot_kernels(weight: Tensor, path: str | Path, cell: int | None = None) -> Path:
    """A grid of conv kernels ``weight`` (out, in, k, k) on one scale, with its colour bar
    below: 0 is mid-grey, the largest magnitude of all the kernels black (negative) or white
    (positive); RGB when in == 3, else the first input channel. ``cell``: pixels per kernel
    side (default: 48, larger when there are few kernels)."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    path = Path(path)
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w[:, :1]
    peak = float(w.abs().max().clamp_min(1e-12))
    w = 0.5 + 0.5 * w / peak
    if cell is None:
        cell = max(48, 384 // min(8, w.shape[0]))
    scale = max(1, cell // w.shape[-1])
    w = w.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(w, nrow=min(8, w.shape[0]), padding=4, pad_value=1.0)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    gh, gw = arr.shape[:2]
    width = max(gw, 300)
    canvas = Image.new("RGB", (width, gh + 56), _BG)
    canvas.paste(Image.fromarray(arr), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    x0, x1, y0 = 10, width - 10, gh + 8
    for x in range(x0, x1):  # the colour bar: -peak .. 0 .. +peak
        level = round(255 * (x - x0) / (x1 - x0 - 1))
        draw.line((x, y0, x, y0 + 12), fill=(level,) * 3)
    draw.rectangle((x0, y0, x1 - 1, y0 + 12), outline=_FG)
    for frac, text in ((0.0, _fmt(-peak)), (0.5, "0"), (1.0, _fmt(peak))):
        tx = x0 + frac * (x1 - x0) - (0 if frac == 0 else 24 if frac == 1 else 4)
        draw.text((tx, y0 + 16), text, fill=_FG, font=font)
    draw.text((x0, y0 + 32), "weight (one scale for every kernel)", fill=_FG, font=font)
    _save(canvas, path)
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
    if w < 160:  # small crops are shown enlarged (nearest), so that the labels fit over them
        f = -(-160 // w)
        tiles = [t.repeat(f, axis=0).repeat(f, axis=1) for t in tiles]
        h, w = h * f, w * f
    gap, band = 6, 24
    canvas = Image.new("RGB", (3 * w + 2 * gap, h + band), _BG)
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (i * (w + gap), band))
        draw.text((i * (w + gap) + 4, 4), label, fill=_FG, font=font)
    _save(canvas, path)
    return path
