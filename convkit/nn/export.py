"""Filters as plain torch layers, and files other runtimes load: ONNX, ``torch.export``,
TorchScript.

:func:`to_torch` rewrites a chain of convkit filters as the conv layers they are: a border
pad (:class:`BorderPad`) then ``nn.Conv2d(C, C, k, groups=C)`` with frozen weights for a
kernel, ``nn.AvgPool2d`` / ``nn.MaxPool2d`` for pooling, and for the median, rank filters and
morphology the minimum, maximum or k-th value of the window's shifted views. Every layer is
made of standard operators (Pad, Slice, Concat, Conv, AveragePool, MaxPool, TopK, Min, Max,
Sqrt, Where), with no Python callback and no shape baked in but the channels, so
:func:`export` writes a graph whose height, width and batch are free.

The layers compute what :func:`convkit.process` computes on a float (B, C, H, W) tensor on
the [0, 1] scale (no clipping, no rounding: a float output, signed where the filter is), with
two conditions the engine does not need:

* every pad is smaller than the image's side (reflect and symmetric borders mirror the image
  once; convkit's engine mirrors again for kernels wider than the image);
* pooling reads whole windows: ``(side - size)`` a multiple of the stride on each axis (the
  engine reads the border mode's pixels for windows running off the edge; torch's pooling
  layers drop them).

Learned filters are plain torch already and are kept as they are.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.morphology import compose, rect_iterations
from . import functional as KF
from .modules import Filter, GradientMagnitude, Kernel2d, Morphology, Pool2d, Rank, Unsharp, flatten

__all__ = ["to_torch", "export", "BorderPad", "EXPORT_FORMATS"]

#: File suffixes :func:`export` writes, and what each holds.
EXPORT_FORMATS = {".onnx": "ONNX", ".pt2": "torch.export program", ".ts": "TorchScript"}


class BorderPad(nn.Module):
    """Pad (top, bottom, left, right) with a convkit border mode: ``reflect`` (ONNX Pad
    reflect), ``replicate`` (edge), ``constant`` (``value`` on the image's scale), ``none``
    (``value`` as given: +inf or -inf for morphology), ``circular`` and ``symmetric`` (slices
    and concatenation, mirrored with Flip). Pads must be smaller than the image's sides."""

    def __init__(self, pads: tuple[int, int, int, int], border: str, value: float = 0.0):
        super().__init__()
        self.pads, self.border, self.value = tuple(int(p) for p in pads), border, float(value)

    def forward(self, x: Tensor) -> Tensor:
        t, b, l, r = self.pads
        if not any(self.pads):
            return x
        if self.border in ("constant", "none"):
            return F.pad(x, (l, r, t, b), mode="constant", value=self.value)
        if self.border in ("reflect", "replicate"):
            return F.pad(x, (l, r, t, b), mode=self.border)
        return self._wrap(self._wrap(x, -2, t, b), -1, l, r)

    def _wrap(self, x: Tensor, dim: int, before: int, after: int) -> Tensor:
        n = x.shape[dim]
        parts = []
        if self.border == "circular":
            if before:
                parts.append(x.narrow(dim, n - before, before))
            parts.append(x)
            if after:
                parts.append(x.narrow(dim, 0, after))
        else:  # symmetric: the edge pixel repeated, as cv2.BORDER_REFLECT
            if before:
                parts.append(x.narrow(dim, 0, before).flip(dim))
            parts.append(x)
            if after:
                parts.append(x.narrow(dim, n - after, after).flip(dim))
        return torch.cat(parts, dim) if len(parts) > 1 else x

    def extra_repr(self) -> str:
        return f"pads={self.pads}, border={self.border}" + (
            f", value={self.value:g}" if self.border in ("constant", "none") else "")


def _views(xp: Tensor, kh: int, kw: int, taps) -> list[Tensor]:
    """The shifted views ``xp[..., dy:dy+H, dx:dx+W]`` of a padded image, one per tap, by
    slices counted from both ends (no image size in the graph)."""
    return [xp[..., dy:xp.shape[-2] - (kh - 1 - dy), dx:xp.shape[-1] - (kw - 1 - dx)]
            for dy, dx in taps]


def _depthwise(weight: Tensor, bias: float, channels: int) -> nn.Conv2d:
    kh, kw = weight.shape
    conv = nn.Conv2d(channels, channels, (kh, kw), groups=channels, bias=bias != 0)
    with torch.no_grad():
        conv.weight.copy_(weight.detach().float().cpu().expand(channels, 1, kh, kw))
        if conv.bias is not None:
            conv.bias.fill_(bias)
    conv.requires_grad_(False)
    return conv


class Magnitude(nn.Module):
    """``sqrt(gx**2 + gy**2)`` of two padded depthwise convolutions (0 where both are 0, with
    a zero gradient there, as :class:`convkit.GradientMagnitude`)."""

    def __init__(self, gx: nn.Module, gy: nn.Module):
        super().__init__()
        self.gx, self.gy = gx, gy

    def forward(self, x: Tensor) -> Tensor:
        return KF.magnitude(self.gx(x), self.gy(x))


class Thresholded(nn.Module):
    """Unsharp mask with a threshold: ``x + amount * d`` where ``|d| >= threshold``."""

    def __init__(self, blur: nn.Module, amount: float, threshold: float):
        super().__init__()
        self.blur, self.amount, self.threshold = blur, float(amount), float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        return KF.unsharp_mask(x, self.blur(x), self.amount, self.threshold)


class RankWindow(nn.Module):
    """The ``rank``-th smallest value (0-based) of every ``size`` x ``size`` window (TopK over
    the window's shifted views; the median of an odd window is rank ``size**2 // 2``)."""

    def __init__(self, pad: BorderPad, size: int, rank: int):
        super().__init__()
        self.pad, self.size, self.rank = pad, int(size), int(rank)

    def forward(self, x: Tensor) -> Tensor:
        s = self.size
        taps = [(dy, dx) for dy in range(s) for dx in range(s)]
        stack = torch.stack(_views(self.pad(x), s, s, taps), dim=-1)
        return torch.topk(stack, self.rank + 1, dim=-1, largest=False).values[..., -1]


class Extremum(nn.Module):
    """One erosion (``kind`` "min") or dilation ("max") with a 0/1 footprint anchored at
    ``anchor``: the minimum or maximum of the shifted views where the footprint is 1."""

    def __init__(self, fp: np.ndarray, anchor: tuple[int, int], kind: str, border: str,
                 value: float):
        super().__init__()
        kh, kw = fp.shape
        top, left = anchor
        if border == "none":
            value = float("inf") if kind == "min" else float("-inf")
        self.pad = BorderPad((top, kh - 1 - top, left, kw - 1 - left), border, value)
        self.shape = (kh, kw)
        self.taps = [(int(dy), int(dx)) for dy, dx in zip(*np.nonzero(fp), strict=True)]
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        views = _views(self.pad(x), *self.shape, self.taps)
        pick = torch.minimum if self.kind == "min" else torch.maximum
        out = views[0]
        for v in views[1:]:
            out = pick(out, v)
        return out


class Morph(nn.Module):
    """Morphology ``op`` as erosions and dilations (see :mod:`convkit.kernels.morphology`)."""

    def __init__(self, op: str, fp: np.ndarray, iterations: int, border: str, value: float):
        super().__init__()
        fp, iterations, anchor = rect_iterations(fp, iterations)
        self.op = op
        self.erode = nn.Sequential(*[Extremum(fp, anchor, "min", border, value)
                                     for _ in range(iterations)])
        self.dilate = nn.Sequential(*[Extremum(fp, anchor, "max", border, value)
                                      for _ in range(iterations)])

    def forward(self, x: Tensor) -> Tensor:
        return compose(self.op, x, self.erode, self.dilate)


def _padded(weight: Tensor, bias: float, border: str, value: float,
            channels: int) -> nn.Sequential:
    """A kernel's border pad and depthwise convolution (``value`` in 8-bit grey levels)."""
    kh, kw = weight.shape
    return nn.Sequential(BorderPad(KF.kernel_pads(kh, kw), border, value / 255.0),
                         _depthwise(weight, bias, channels))


def _layer(m: nn.Module, channels: int) -> nn.Module:
    if isinstance(m, Kernel2d):
        return _padded(m.weight, float(m.bias), m.border, m.value, channels)
    if isinstance(m, GradientMagnitude):  # (each kernel its own pads: 1x3 and 3x1 for ksize 1)
        return Magnitude(_padded(m.kx, 0.0, m.border, m.value, channels),
                         _padded(m.ky, 0.0, m.border, m.value, channels))
    if isinstance(m, Unsharp):
        return Thresholded(_layer(m.blur, channels), m.amount, m.threshold / 255.0)
    if isinstance(m, Pool2d):
        cls = nn.AvgPool2d if m.mode == "avg" else nn.MaxPool2d
        return cls(m.kernel_size, m.step)
    if isinstance(m, Rank):
        pad = BorderPad(KF.kernel_pads(m.size, m.size), m.border, m.value / 255.0)
        return RankWindow(pad, m.size, m.rank)
    if isinstance(m, Morphology):
        return Morph(m.op, m.fp, m.iterations, m.border, m.value / 255.0)
    from ..learn.model import LearnedFilter

    if isinstance(m, LearnedFilter):
        return Learned(m, channels)
    if isinstance(m, Filter):
        raise TypeError(f"{type(m).__name__} has no plain torch form for export")
    return copy.deepcopy(m)  # a module of the user's own: exported as it is


class Learned(nn.Module):
    """A learned filter's net behind its border (:class:`BorderPad` of its reach): each
    channel on its own for a per-channel model, the RGB net for an RGB one (a grey image
    replicated in and averaged out, as :class:`convkit.learn.LearnedFilter` does)."""

    def __init__(self, m: nn.Module, channels: int):
        super().__init__()
        n = m.reach[0]
        self.pad = BorderPad((n, n, n, n), m.config.border)
        self.model = copy.deepcopy(m).eval().requires_grad_(False)
        self.per_channel = m.config.channels == 1
        if not self.per_channel and channels not in (1, 3):
            raise ValueError(f"this model was trained on RGB; it exports for 1 or 3 channels. "
                             f"Got {channels}")
        self.grey = not self.per_channel and channels == 1

    def forward(self, x: Tensor) -> Tensor:
        if self.per_channel:
            planes = x.reshape(-1, 1, x.shape[-2], x.shape[-1])
            return self.model.net(self.pad(planes)).reshape(x.shape)
        if self.grey:
            rgb = torch.cat([x, x, x], dim=1)
            return self.model.net(self.pad(rgb)).mean(dim=1, keepdim=True)
        return self.model.net(self.pad(x))


def to_torch(module: nn.Module | str, channels: int = 3) -> nn.Sequential:
    """The chain (a module or a spec) as plain torch layers for images of ``channels``
    channels: :class:`BorderPad` and ``nn.Conv2d(C, C, k, groups=C, bias=...)`` with frozen
    weights (``requires_grad_(True)`` on the copy to fine-tune them), ``nn.AvgPool2d`` /
    ``nn.MaxPool2d``, and window layers for the median, rank filters and morphology. See the
    module docstring for the two conditions under which it equals :func:`convkit.process`.

    >>> import convkit
    >>> convkit.to_torch("sharpen")
    Sequential(
      (0): Sequential(
        (0): BorderPad(pads=(1, 1, 1, 1), border=reflect)
        (1): Conv2d(3, 3, kernel_size=(3, 3), stride=(1, 1), groups=3, bias=False)
      )
    )
    """
    if isinstance(module, str):
        from .chains import chain

        module = chain(module)
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels should be a positive integer. Got {channels!r}")
    return nn.Sequential(*[_layer(m, channels) for m in flatten(module)]).eval()


def export(module: nn.Module | str, path: str | os.PathLike, *, channels: int = 3,
           opset: int = 17) -> Path:
    """Write the chain (a module or a spec) as a file another runtime loads, chosen by the
    suffix of ``path``: ``.onnx`` (ONNX, opset ``opset``), ``.pt2`` (``torch.export``, load
    with ``torch.export.load``), ``.ts`` (TorchScript, ``torch.jit.load``; not ``.pt``, the
    suffix of convkit's model files).

    The graph takes a float (B, ``channels``, H, W) image on the [0, 1] scale, with batch,
    height and width free, and gives the float output :func:`convkit.process` gives on such a
    tensor (see the module docstring). The file is written whole or not at all. One more
    condition for ``.pt2``: a learned filter with pooling (``--pool``) is traced on even sides,
    and torch.export keeps that as a guard (odd sides are refused when the program runs).
    """
    path = Path(path)
    kind = EXPORT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: cannot tell the format from the suffix {path.suffix!r}. "
                         f"Expected one of {', '.join(EXPORT_FORMATS)}")
    if kind == "ONNX":
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            raise ValueError(f"{path}: writing ONNX needs the onnx package: "
                             "pip install 'convkit[export]' (or pip install onnx)")
    if isinstance(module, str):
        from .chains import chain

        module = chain(module)
    model = to_torch(module, channels)
    side = max(16, _example_side(model))  # an example larger than every pad
    # (a batch of 1 would be baked in; even sides, the usual case for what torch.export must
    # assume of a learned filter's pooling: such a .pt2 takes even sides only)
    example = torch.rand(2, channels, side + 4, side + 6)
    import warnings

    from ..io.atomic import replacing

    with replacing(path, keep_suffix=True) as tmp, warnings.catch_warnings():
        # (the exporters' notes on constant folding and tracing are not the user's concern)
        warnings.simplefilter("ignore")
        if kind == "ONNX":
            names = {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["filtered"],
                              dynamic_axes={"image": names, "filtered": names})
        elif kind == "TorchScript":
            with torch.no_grad():
                traced = torch.jit.trace(model, example)
            traced.save(str(tmp))
        else:
            auto = torch.export.Dim.AUTO
            program = torch.export.export(model, (example,),
                                          dynamic_shapes=({0: auto, 2: auto, 3: auto},))
            torch.export.save(program, str(tmp))
    return path


def _example_side(model: nn.Module) -> int:
    """The side an example image needs so that every pad of ``model`` (as :func:`to_torch`
    makes it) is smaller than the image it pads: walked back from the output, through the
    pooling strides."""
    side = 4
    for m in reversed(list(model.modules())):
        if isinstance(m, nn.AvgPool2d | nn.MaxPool2d):  # in = (out - 1) * stride + size
            side = (side - 1) * max(KF.pool_size(m.stride)) + max(KF.pool_size(m.kernel_size))
        else:  # the same size in and out; its pads must be smaller than that
            r = getattr(m, "reach", None) or getattr(m, "pads", None) or (0, 0, 0, 0)
            side = max(side, max(r) + 2)
    return side

