"""Huge images in bounded memory: tiles with a halo, identical to filtering the image whole.

:func:`apply_tiled` runs a filter (chain) over an image tile by tile. Each output tile reads the
input it depends on (its *halo*: the chain's total reach, composed through pooling strides) and
nothing else, so the result equals ``engine.apply`` on the whole image, pixel for pixel:

* A chain is cut into *units*: runs of same-size filters (run by the engine in one call, fused
  as usual) and pooling steps. Each unit's needed input range is found from the output tile
  backwards: a same-size unit with reach (top, bottom) needs ``[o0 - top, o1 + bottom)``; a pool
  of window k and stride s needs ``[o0 * s, (o1 - 1) * s + k)``, which starts on the pooling
  grid, so its windows are the whole image's windows. A module that pools and upsamples inside
  (a learned filter) can ask for its tiles to start on a multiple of ``tile_align``.
* Border modes are local for reflect, symmetric, replicate and constant (and zero padding
  inside learned filters): a tile that touches the image's edge includes it, and is made at
  least the unit's reach deep there, so the unit's own padding gives the whole image's border
  pixels. Inside the image, the pixels a unit's padding spoils are within the halo and are cut
  off before the next unit. ``circular`` wraps to the far edge: a chain whose filters are all
  circular (and same-size) reads its halo around the image instead; a chain that mixes
  circular with other borders, or with pooling, is refused.
* Between units the tile stays float (as in the untiled run); the integer rounding and the
  chain's ``negative`` mapping happen once, at the end.

Memory: the working memory of a tile is estimated as (tile pixels incl. halo) x channels x a
per-sample factor (:func:`bytes_per_sample`); tiles are made as large as ``max_memory`` allows
(full-width bands when possible). ``max_memory`` is the working memory beyond the input and
output images; None picks an eighth of the available memory, between 64 MiB and 512 MiB.
With ``out=x`` a same-size chain filters the image in place, band by band (full width, top to
bottom), keeping a copy of the input rows the next band still needs; then no second image is
allocated. :func:`convkit.pipeline.huge_files.filter_file` uses that to filter an image file
with about one decoded image of memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..backends import engine
from ..nn import functional as KF
from ..nn.modules import Pool2d, flatten
from .memory import available_memory, parse_memory

if TYPE_CHECKING:
    pass

__all__ = ["apply_tiled", "plan_tiles", "halo", "units_of", "input_ranges", "run_tile",
           "negative_of", "auto_memory", "bytes_per_sample", "TilePlan", "Unit"]


@dataclass
class Unit:
    """A run of same-size modules (``kind="same"``) or one pooling step (``kind="pool"``)."""

    kind: str
    modules: list[nn.Module]
    reach: tuple[int, int, int, int] = (0, 0, 0, 0)
    size: tuple[int, int] = (1, 1)  # window (rows, cols) of a pooling step
    stride: tuple[int, int] = (1, 1)
    align: tuple[int, int] = (1, 1)  # tiles start at multiples of these (rows, cols)

    def module(self) -> nn.Module:
        return self.modules[0] if len(self.modules) == 1 else nn.Sequential(*self.modules)


def _reach(m: nn.Module) -> tuple[int, int, int, int]:
    r = getattr(m, "reach", None)
    if r is None:
        raise ValueError(
            f"cannot tile {type(m).__name__}: it does not declare its reach (a `reach` property "
            "(top, bottom, left, right) of input pixels it needs around each output pixel)"
        )
    r = tuple(int(v) for v in r)
    if len(r) != 4 or min(r) < 0:
        raise ValueError(f"{type(m).__name__}.reach should be 4 non-negative ints. Got {r}")
    return r  # type: ignore[return-value]


def _borders(m: nn.Module) -> set[str]:
    out = set()
    for sub in m.modules():
        b = getattr(sub, "border", None)
        if isinstance(b, str):
            out.add(b)
    return out


def units_of(module: nn.Module) -> tuple[list[Unit], bool]:
    """The chain cut into units, and whether every filter wraps (circular)."""
    units: list[Unit] = []
    borders: set[str] = set()
    for m in flatten(module):
        borders |= _borders(m)
        if isinstance(m, Pool2d):
            units.append(Unit("pool", [m], size=m.kernel_size, stride=m.step, align=m.step))
            continue
        r = _reach(m)
        stride = getattr(m, "stride", 1)
        if isinstance(stride, int) and stride != 1:
            raise ValueError(f"cannot tile {type(m).__name__}: it changes the image size "
                             f"(stride {stride}) and is not a convkit pooling filter")
        align = int(getattr(m, "tile_align", 1) or 1)
        if units and units[-1].kind == "same":
            u = units[-1]
            u.modules.append(m)
            u.reach = tuple(a + b for a, b in zip(u.reach, r, strict=True))  # type: ignore
            u.align = (math.lcm(u.align[0], align), math.lcm(u.align[1], align))
        else:
            units.append(Unit("same", [m], reach=r, align=(align, align)))
    circular = "circular" in borders
    if circular and borders != {"circular"}:
        raise ValueError(
            "cannot tile a chain that mixes the circular border with others (borders: "
            f"{', '.join(sorted(borders))}); circular wraps to the far edge of the whole image. "
            "Use one border mode, or filter the image untiled."
        )
    if circular and any(u.kind == "pool" for u in units):
        raise ValueError(
            "cannot tile a chain that pools with the circular border: the wrapped halo of a "
            "shrunk image is not implemented. Use another border mode, or filter the image "
            "untiled."
        )
    return units, circular


def halo(module: nn.Module) -> tuple[int, int, int, int]:
    """Input pixels (top, bottom, left, right) an output pixel of the chain depends on, in
    input pixels, composed through pooling strides (the receptive field minus one pixel)."""
    units, _ = units_of(module)
    t = b = l = r = 0
    sr = sc = 1  # input pixels per pixel of this unit's input (rows, cols)
    for u in units:
        if u.kind == "same":
            t += u.reach[0] * sr
            b += u.reach[1] * sr
            l += u.reach[2] * sc
            r += u.reach[3] * sc
        else:
            b += (u.size[0] - 1) * sr
            r += (u.size[1] - 1) * sc
            sr, sc = sr * u.stride[0], sc * u.stride[1]
    return t, b, l, r


# --- geometry along one axis --------------------------------------------------------------------
def _out_len(u: Unit, n: int, axis: int) -> int:
    if u.kind == "same":
        return n
    k, s = u.size[axis], u.stride[axis]
    return 1 if n <= k else math.ceil((n - k) / s) + 1


def _need(u: Unit, lo: int, hi: int, n_in: int, axis: int, wrap: bool) -> tuple[int, int]:
    """Input range of unit ``u`` for its output range [lo, hi) (axis 0 = rows, 1 = cols)."""
    if u.kind == "same":
        before, after = u.reach[2 * axis], u.reach[2 * axis + 1]
        lo_in, hi_in = lo - before, hi + after
        edge = before + after + 1  # depth at an image edge so the unit's padding is the image's
    else:
        k, s = u.size[axis], u.stride[axis]
        lo_in, hi_in = lo * s, (hi - 1) * s + k
        edge = k + s
    if wrap:  # read around the image (circular), never clamp
        return lo_in, hi_in
    lo_in, hi_in = max(lo_in, 0), min(hi_in, n_in)
    if hi_in == n_in:
        lo_in = min(lo_in, max(0, n_in - edge))
    if lo_in == 0:
        hi_in = max(hi_in, min(n_in, edge))
    lo_in = (lo_in // u.align[axis]) * u.align[axis]
    return lo_in, hi_in


def input_ranges(units: list[Unit], sizes: list[int], lo: int, hi: int, axis: int,
            wrap: bool) -> list[tuple[int, int]]:
    """Per unit, the input range for the final output range [lo, hi); then [lo, hi) itself."""
    out = [(lo, hi)]
    for i in range(len(units) - 1, -1, -1):
        lo, hi = _need(units[i], lo, hi, sizes[i], axis, wrap)
        out.append((lo, hi))
    return out[::-1]


# --- memory -------------------------------------------------------------------------------------
def auto_memory() -> int:
    return int(min(512 << 20, max(64 << 20, available_memory() // 8)))


def bytes_per_sample(module: nn.Module) -> int:
    """Working bytes per input sample (pixel x channel) of a tile: float32 intermediates of the
    engine (about 6 live copies), more for learned filters with wide layers."""
    widest = max([sub.out_channels for sub in module.modules() if isinstance(sub, nn.Conv2d)],
                 default=1)
    return 24 + 12 * widest if widest > 3 else 24


# --- tiles --------------------------------------------------------------------------------------
@dataclass
class TilePlan:
    units: list[Unit]
    wrap: bool
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    rows: list[tuple[int, int]]  # output row ranges
    cols: list[tuple[int, int]]  # output col ranges
    sizes_h: list[int]  # input height of each unit
    sizes_w: list[int]


def _split(n: int, step: int, minimum: int) -> list[tuple[int, int]]:
    step = max(1, min(n, step))
    edges = list(range(0, n, step)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] < minimum:
        edges.pop(-2)  # a short last tile joins its neighbour
    return list(zip(edges[:-1], edges[1:], strict=True))


def plan_tiles(module: nn.Module, shape: tuple[int, ...], *, max_memory: int | str | None = None,
               tile: int | tuple[int, int] | None = None, full_width: bool = False) -> TilePlan:
    """Output tiles for an image of ``shape`` (B, C, H, W) within ``max_memory`` bytes of
    working memory (or of side ``tile`` output pixels, for tests)."""
    b, c, h, w = shape
    units, wrap = units_of(module)
    sizes_h, sizes_w = [h], [w]
    for u in units:
        sizes_h.append(_out_len(u, sizes_h[-1], 0))
        sizes_w.append(_out_len(u, sizes_w[-1], 1))
    oh, ow = sizes_h[-1], sizes_w[-1]
    t, bo, le, ri = halo(module)
    sr = sc = 1  # input pixels per output pixel (rows, cols)
    for u in units:
        sr, sc = sr * u.stride[0], sc * u.stride[1]
    if tile is not None:
        th, tw = (tile, tile) if isinstance(tile, int) else tile
        if full_width:
            tw = ow
    else:
        budget = parse_memory(max_memory) if max_memory is not None else auto_memory()
        per_px = max(1, b * c * bytes_per_sample(module))
        pixels = max(1, budget // per_px)  # input pixels per tile, halo included
        in_rows = pixels // max(1, w + le + ri)
        if full_width or in_rows >= 4 * (t + bo + 1):
            th, tw = max(1, (in_rows - t - bo) // sr), ow
        else:
            side = int(math.sqrt(pixels))
            th = max(1, (side - t - bo) // sr)
            tw = max(1, (side - le - ri) // sc)
        # tiles no thinner than their halo: otherwise the halo costs more than the tile
        th = max(th, (t + bo) // sr + 1, 8)
        tw = max(tw, (le + ri) // sc + 1, 8)
    min_h = max(1, (t + bo) // sr + 1)
    min_w = max(1, (le + ri) // sc + 1)
    return TilePlan(units, wrap, (h, w), (oh, ow), _split(oh, th, min_h), _split(ow, tw, min_w),
                    sizes_h, sizes_w)


def _take(x: Tensor, r: tuple[int, int], c: tuple[int, int], wrap: bool) -> Tensor:
    h, w = x.shape[-2:]
    if wrap and (r[0] < 0 or r[1] > h or c[0] < 0 or c[1] > w):
        rows = torch.arange(r[0], r[1], device=x.device).remainder_(h)
        cols = torch.arange(c[0], c[1], device=x.device).remainder_(w)
        return x.index_select(-2, rows).index_select(-1, cols)
    return x[..., r[0]:r[1], c[0]:c[1]]


def negative_of(module: nn.Module) -> str:
    neg = getattr(module, "negative", None)
    return neg if isinstance(neg, str) else "clip"


def run_tile(tp: TilePlan, module: nn.Module, x: Tensor, rr: list, cc: list, alpha: bool,
              negative: str) -> Tensor:
    """Filter one tile: x holds the input ranges rr[0] x cc[0]; returns rr[-1] x cc[-1]."""
    units = tp.units
    if len(units) == 1:  # one engine call: integer in and out, fused conversions
        y = engine.apply(module, x, alpha=alpha)
        lo_r = rr[0][0] if units[0].kind == "same" else rr[0][0] // units[0].stride[0]
        lo_c = cc[0][0] if units[0].kind == "same" else cc[0][0] // units[0].stride[1]
        return y[..., rr[1][0] - lo_r:rr[1][1] - lo_r, cc[1][0] - lo_c:cc[1][1] - lo_c]
    integer = not x.is_floating_point()
    colour, a = (x[:, :-1], x[:, -1:]) if alpha else (x, None)
    cur = KF.to_float(colour) if integer else colour
    af = (KF.to_float(a) if integer else a) if a is not None else None
    for i, u in enumerate(units):
        m = u.module()
        cur = engine.apply(m, cur)
        if af is not None and u.kind == "pool":
            af = m(af)
        sr, sc = u.stride  # (1, 1) for a same-size unit
        lo_r, lo_c = rr[i][0] // sr, cc[i][0] // sc
        sl = (Ellipsis, slice(rr[i + 1][0] - lo_r, rr[i + 1][1] - lo_r),
              slice(cc[i + 1][0] - lo_c, cc[i + 1][1] - lo_c))
        cur = cur[sl]
        if af is not None:
            af = af[sl]
    if integer:
        cur = KF.to_integer(cur, x.dtype, negative)
        af = KF.to_integer(af, x.dtype) if af is not None else None
    return cur if af is None else torch.cat([cur, af.to(cur.dtype)], dim=1)


def apply_tiled(module: nn.Module, x: Tensor, *, alpha: bool = False,
                max_memory: int | str | None = None, tile: int | tuple[int, int] | None = None,
                out: Tensor | None = None) -> Tensor:
    """Filter ``x`` (B, C, H, W) of uint8/uint16/float tile by tile; same result as
    ``engine.apply(module, x, alpha=alpha)``.

    Args:
        module: a filter or chain; learned filters need a ``reach`` property (and may set
            ``tile_align``).
        x: the image batch (usually one huge image). Never modified unless ``out`` is ``x``.
        alpha: the last channel is alpha (passed through, pooled when the chain pools).
        max_memory: working memory for a tile, bytes or a size like "512M"; None: automatic
            (an eighth of the available memory, between 64 MiB and 512 MiB).
        tile: output tile side(s) in pixels instead of a memory budget (tests use tiny ones).
        out: where to write the result: a new tensor by default; ``x`` itself filters in place
            (same-size chains only; bands of full width, top to bottom).

    Returns:
        The filtered image (``out`` when given).
    """
    if x.dim() != 4:
        raise ValueError(f"apply_tiled expects a batch (B,C,H,W). Got shape {tuple(x.shape)}")
    in_place = out is not None and out.data_ptr() == x.data_ptr()
    tp = plan_tiles(module, tuple(x.shape), max_memory=max_memory, tile=tile,
                    full_width=in_place)
    oh, ow = tp.out_size
    b, c = x.shape[:2]
    if in_place:
        if tp.out_size != tp.in_size or out.shape != x.shape:
            raise ValueError("apply_tiled(out=x) needs a chain that keeps the image size; "
                             "this one pools")
        return _in_place(tp, module, x, alpha)
    if out is None:
        out = torch.empty((b, c, oh, ow), dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != (b, c, oh, ow) or out.dtype != x.dtype:
        raise ValueError(f"out should be {(b, c, oh, ow)} {x.dtype}. Got {tuple(out.shape)} "
                         f"{out.dtype}")
    return _tiles_into(tp, module, x, alpha, out)


def _tiles_into(tp: TilePlan, module: nn.Module, x: Tensor, alpha: bool, out: Tensor) -> Tensor:
    """Every tile of the plan from ``x`` (read only) into ``out``."""
    negative = negative_of(module)
    for r in tp.rows:
        rr = input_ranges(tp.units, tp.sizes_h, *r, 0, tp.wrap)
        for cl in tp.cols:
            cc = input_ranges(tp.units, tp.sizes_w, *cl, 1, tp.wrap)
            tile_in = _take(x, rr[0], cc[0], tp.wrap)
            out[..., r[0]:r[1], cl[0]:cl[1]] = run_tile(tp, module, tile_in, rr, cc, alpha,
                                                         negative)
    return out


def _in_place(tp: TilePlan, module: nn.Module, x: Tensor, alpha: bool) -> Tensor:
    """Full-width bands top to bottom, written over the input. Before a band is written, the
    input rows that later bands still read from it are copied (at most a halo's worth: bands
    are at least a halo deep)."""
    h, w = tp.in_size
    negative = negative_of(module)
    bands = [(r, input_ranges(tp.units, tp.sizes_h, *r, 0, tp.wrap)) for r in tp.rows]
    if any(rr[0][0] < -h or rr[0][1] > 2 * h for _, rr in bands):
        # circular, on an image shorter than the chain's reach: the halo wraps around it more
        # than once. Such an image is at most a few kernels tall: filter it out of place.
        return x.copy_(_tiles_into(tp, module, x, alpha, torch.empty_like(x)))
    # circular: the first band reads the last rows and the last bands the first rows
    below = max([rr[0][1] for _, rr in bands]) - h if tp.wrap else 0
    wrap_top = x[..., :below, :].clone() if below > 0 else None
    saved: Tensor | None = None
    saved_lo = 0
    for k, (r, rr) in enumerate(bands):
        lo, hi = rr[0]
        parts = []
        if lo < 0:  # circular only: rows above the top are the bottom rows (not written yet)
            parts.append(x[..., h + lo:, :])
            lo = 0
        if saved is not None and lo < saved_lo + saved.shape[-2]:
            parts.append(saved[..., lo - saved_lo:, :])
            lo = saved_lo + saved.shape[-2]
        parts.append(x[..., lo:min(hi, h), :])
        if hi > h:
            parts.append(wrap_top[..., :hi - h, :])
        tile_in = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
        y = run_tile(tp, module, tile_in, rr, [(0, w)] * len(rr), alpha, negative)
        if k + 1 < len(bands):
            # keep input rows [nxt, r1): from the saved copy above r0, from x below
            nxt = max(0, min(b_rr[0][0] for _, b_rr in bands[k + 1:]))
            keep = [] if nxt >= r[1] else [x[..., max(nxt, r[0]):r[1], :].clone()]
            if keep and nxt < r[0]:
                keep.insert(0, saved[..., nxt - saved_lo:, :])
            saved = None if not keep else keep[0] if len(keep) == 1 else torch.cat(keep, -2)
            saved_lo = nxt
        x[..., r[0]:r[1], :] = y
    return x
