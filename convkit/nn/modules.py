"""``nn.Module`` filters. Kernels live in buffers: not learnable, moved by ``.to(device)``, saved in
``state_dict`` and built once, never per call. Outputs stay differentiable w.r.t. the input.

Every module takes a float image (B, C, H, W) or (C, H, W) and returns float, unclamped. Integer
images go through :func:`convkit.process`, which converts, filters and rounds.

``module(x)`` runs the engine's cached plan (:func:`convkit.backends.engine.module_forward`): the
same fusion and methods as :func:`convkit.process`, on OpenCV for float32 on the CPU without
autograd, on torch's differentiable methods otherwise. Each module's ``_reference`` is the plain
definition (padding and one dense depthwise correlation): the engine runs it where a plan cannot go
(while tracing, compiling or exporting, under functorch transforms, on the meta device) and the
tests hold every method to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..kernels.morphology import OPS as MORPH_OPS
from ..kernels.morphology import reach as morph_reach
from ..kernels.specs import blend, check_border, check_weights, resolve_scale
from . import functional as KF

__all__ = ["Filter", "Kernel2d", "GradientMagnitude", "Unsharp", "Pool2d", "Median", "reference",
           "flatten"]


class Filter(nn.Module):
    """Base of convkit's modules.

    Attributes read by the rest of convkit:
        spec_name / spec_params: how the module prints in a chain spec (set by the registry).
        negative: how a signed response is written to an integer image, or None to inherit from
            the filter before it in a chain (see :func:`convkit.nn.functional.to_integer`).
        reach: (top, bottom, left, right) pixels of context the output needs from the input.
        stride: the factor by which the module shrinks the image (1 = same size).
    """

    spec_name: str | None = None
    spec_params: dict | None = None
    negative: str | None = None
    stride: int = 1

    @property
    def reach(self) -> tuple[int, int, int, int]:
        return (0, 0, 0, 0)

    def spec(self) -> str:
        from ..kernels.chainspec import format_call

        if self.spec_name is None:
            return format_call(*self._own_spec())
        return format_call(self.spec_name, self.spec_params or {})

    def _own_spec(self) -> tuple[str, dict]:
        raise NotImplementedError(f"{type(self).__name__} has no spec string")

    def forward(self, x: Tensor) -> Tensor:
        """Filter ``x`` (B, C, H, W) or (C, H, W), float; see the module docstring."""
        from ..backends.engine import module_forward

        return module_forward(self, x)

    def _reference(self, x: Tensor) -> Tensor:
        """The plain torch definition of this filter (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} has no reference forward")

    def __or__(self, other):
        """``gaussian | sharpen``: a :class:`~convkit.Chain` of both (a string is a spec)."""
        from .chains import compose

        return compose(self, other) if isinstance(other, (str, nn.Module)) else NotImplemented

    def __ror__(self, other):
        from .chains import compose

        return compose(other, self) if isinstance(other, (str, nn.Module)) else NotImplemented

    def extra_repr(self) -> str:
        try:
            return self.spec()
        except NotImplementedError:
            return ""

    def _common(self, params: dict) -> dict:
        if getattr(self, "border", "reflect") != "reflect":
            params["border"] = self.border
        if getattr(self, "value", 0.0) != 0.0:
            params["value"] = self.value
        return params


class Kernel2d(Filter):
    """A fixed 2-D kernel applied to each channel by cross-correlation (depthwise conv).

    ``out = correlate(x, weights / scale) + offset / 255``, with the border mode's padding so that
    the output has the input's size. A kernel of size (kh, kw) is anchored at (kh // 2, kw // 2),
    as in OpenCV. ``strength`` s blends with the identity in the same single kernel:
    ``identity + s * (K - identity)`` (the offset is scaled by s too).

    Args:
        weights: rows of numbers (any rectangle), a numpy array or a 2-D tensor.
        scale: divides the weights; default their sum, or 1 when they sum to 0.
        offset: added after scaling, in 8-bit grey levels (128 = mid-grey on the [0, 1] scale).
        border: reflect (default), replicate, constant, circular or symmetric.
        value: fill of the constant border, in 8-bit grey levels.
        strength: 0 = identity, 1 = the kernel.
        negative: integer mapping of a signed response (abs, offset, clip), or None.
        separable: optional exact (column, row) factors with ``col[:, None] * row[None, :]``
            equal to the scaled kernel (before strength); the engine may use them.

    Attributes:
        method: how :func:`convkit.backends.engine.apply` runs this kernel: None (the engine's
            rule) or "direct", "separable", "lowrank", "fft", "box"; a kernel with a method set
            is never fused with its neighbours.

    Shape:
        input (B, C, H, W) or (C, H, W), float; output the same shape.

    >>> k = Kernel2d([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
    >>> k(torch.ones(1, 3, 4, 4)).shape
    torch.Size([1, 3, 4, 4])
    """

    weight: Tensor
    method: str | None = None

    def __init__(
        self,
        weights,
        *,
        scale: float | None = None,
        offset: float = 0.0,
        border: str = "reflect",
        value: float = 0.0,
        strength: float = 1.0,
        negative: str | None = None,
        separable: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        rows = check_weights(weights, what="Kernel2d")
        self.raw_weights = [list(r) for r in rows]
        self.scale = resolve_scale(rows, scale, what="Kernel2d")
        self.offset = float(offset)
        self.border = check_border(border)
        self.value = float(value)
        self.strength = float(strength)
        self.negative = negative
        k, self.bias = blend(rows, self.scale, self.offset, self.strength)
        kh, kw = k.shape
        self.anchor = (kh // 2, kw // 2)
        self.register_buffer("weight", torch.from_numpy(k).float(), persistent=True)
        self._mark_built(self.weight.clone())  # the weights its parameters give (see spec())
        self.separable = None
        if separable is not None and self.strength == 1.0:
            col = torch.as_tensor(separable[0], dtype=torch.float64).float()
            row = torch.as_tensor(separable[1], dtype=torch.float64).float()
            self.register_buffer("col", col, persistent=False)
            self.register_buffer("row", row, persistent=False)
            self.separable = True

    @classmethod
    def from_leaf(cls, leaf) -> Kernel2d:
        """The module of a :class:`convkit.plan.leaves.KernelLeaf` (its kernel is the one
        applied: scale 1, strength 1)."""
        m = cls.__new__(cls)
        Filter.__init__(m)
        m.raw_weights = None  # (the leaf's kernel: _own_spec reads the buffer)
        m.scale, m.strength = 1.0, 1.0
        m.offset, m.bias = leaf.bias * 255.0, leaf.bias
        m.border, m.value, m.negative = check_border(leaf.border), float(leaf.value), \
            leaf.negative
        kh, kw = leaf.shape
        m.anchor = (kh // 2, kw // 2)
        m.separable = None
        if leaf.factors is not None:
            col = torch.from_numpy(leaf.factors[0]).float()
            row = torch.from_numpy(leaf.factors[1]).float()
            m.register_buffer("col", col, persistent=False)
            m.register_buffer("row", row, persistent=False)
            m.separable = True
            # the float32 products of the float32 factors, as the torch-free plan makes them
            weight = torch.outer(col, row)
        else:
            weight = torch.from_numpy(leaf.kernel).float()
        m.register_buffer("weight", weight, persistent=True)
        # (a separable kernel's copy is made only when first compared: a 4095-tap gaussian
        # is built without a second 64 MB array)
        m._mark_built(None if m.separable else m.weight.clone())
        return m

    def _mark_built(self, built: Tensor | None) -> None:
        """Remember the weights the parameters give: ``built``, or (None) the float32 products
        of the factors as built, made when first compared."""
        self._built = built
        self._built_factors = None if built is not None else (self.col, self.row)

    def _built_weights(self) -> Tensor | None:
        if self._built is None and getattr(self, "_built_factors", None) is not None:
            self._built = torch.outer(*self._built_factors)
        return self._built

    @property
    def reach(self) -> tuple[int, int, int, int]:
        return KF.kernel_pads(*self.weight.shape)

    def _reference(self, x: Tensor) -> Tensor:
        out = KF.filter2d(x, self.weight, self.border, self.value / 255.0)
        return out + self.bias if self.bias else out

    def weights_changed(self) -> bool:
        """Whether the weights differ from those its parameters give (load_state_dict, an
        in-place edit); dtype changes (.double(), .half()) do not count."""
        w = self.weight
        built = self._built_weights() if hasattr(self, "_built") else None
        if built is None:  # (unpickled from an older convkit)
            return False
        w = w.detach().cpu()
        return not torch.equal(w, built.to(w.dtype))

    def extra_repr(self) -> str:
        if self.weights_changed() and self.weight.numel() > 49:
            kh, kw = self.weight.shape
            return f"kernel {kh}x{kw}, weights changed (str() gives them all)"
        return super().extra_repr()

    def spec(self) -> str:
        """The spec of its parameters; once the weights were changed (``load_state_dict``, an
        in-place edit), a ``kernel`` spec of the weights it now holds."""
        if not self.weights_changed():
            return super().spec()
        from ..kernels.chainspec import format_call

        params: dict = {"weights": self.weight.detach().cpu().double().tolist(), "scale": 1.0}
        if self.bias:
            params["offset"] = self.bias * 255.0
        self._common(params)
        if self.negative is not None:
            params["negative"] = self.negative
        return format_call("kernel", params)

    def _own_spec(self) -> tuple[str, dict]:
        if self.raw_weights is None:
            self.raw_weights = self._built_weights().double().tolist()
        params: dict = {"weights": self.raw_weights}
        if self.scale != resolve_scale(check_weights(self.raw_weights), None):
            params["scale"] = self.scale
        for key, default in (("offset", 0.0), ("strength", 1.0), ("value", 0.0)):
            if getattr(self, key) != default:
                params[key] = getattr(self, key)
        if self.border != "reflect":
            params["border"] = self.border
        if self.negative is not None:
            params["negative"] = self.negative
        return "kernel", params


class GradientMagnitude(Filter):
    """``sqrt(gx**2 + gy**2)`` of a derivative kernel ``kx`` (d/dx) and ``ky`` (d/dy; by
    default the transpose of ``kx``).

    The per-pixel magnitude is never negative. Shape as :class:`Kernel2d`.
    """

    def __init__(self, kx, ky=None, *, border: str = "reflect", value: float = 0.0) -> None:
        super().__init__()
        k = torch.tensor(check_weights(kx, what="GradientMagnitude kx"), dtype=torch.float32)
        self.register_buffer("kx", k)
        self.register_buffer("ky", k.t().contiguous() if ky is None else torch.tensor(
            check_weights(ky, what="GradientMagnitude ky"), dtype=torch.float32))
        self.border = check_border(border)
        self.value = float(value)

    @property
    def reach(self) -> tuple[int, int, int, int]:
        # both kernels' (a 1x3 d/dx reads no rows, its 3x1 transpose does)
        a, b = KF.kernel_pads(*self.kx.shape), KF.kernel_pads(*self.ky.shape)
        return tuple(max(p, q) for p, q in zip(a, b, strict=True))  # type: ignore[return-value]

    def _reference(self, x: Tensor) -> Tensor:
        v = self.value / 255.0
        gx = KF.filter2d(x, self.kx, self.border, v)
        gy = KF.filter2d(x, self.ky, self.border, v)
        return KF.magnitude(gx, gy)


class Unsharp(Filter):
    """Unsharp mask with a threshold: ``x + amount * d`` where ``|d| >= threshold``, else ``x``;
    ``d = x - gaussian(x)``. With threshold 0 this is linear (the registry then builds a
    single :class:`Kernel2d`). ``threshold`` is in 8-bit grey levels."""

    def __init__(self, blur: Kernel2d, amount: float, threshold: float) -> None:
        super().__init__()
        self.blur = blur
        self.amount = float(amount)
        self.threshold = float(threshold)

    @property
    def reach(self) -> tuple[int, int, int, int]:
        return self.blur.reach

    def _reference(self, x: Tensor) -> Tensor:
        return KF.unsharp_mask(x, self.blur._reference(x), self.amount, self.threshold / 255.0)


def _one_or_pair(hw: tuple[int, int]) -> int | tuple[int, int]:
    return hw[0] if hw[0] == hw[1] else hw


class Pool2d(Filter):
    """Average or max pooling over ``size`` windows stepping by ``stride``.

    ``size`` and ``stride`` are an int (both axes) or (rows, cols), as ``nn.AvgPool2d`` takes
    them (spec strings give ``[width, height]``, OpenCV's order, as box and gaussian do); the
    stride defaults to the size. Output side along each axis ``ceil((n - k) / s) + 1`` (1 when
    the image is smaller than the window); windows running off the bottom/right edge read the
    border mode's pixels. Where ``n - k`` is a multiple of the stride it equals
    ``nn.AvgPool2d`` / ``nn.MaxPool2d``.
    """

    def __init__(
        self, mode: str, size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None, border: str = "reflect", value: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"Invalid pooling mode {mode!r}. Expected avg or max.")
        self.mode = mode
        self.kernel_size = KF.pool_size(size, "size")
        self.step = KF.pool_size(stride, "stride") if stride else self.kernel_size
        self.border = check_border(border)
        self.value = float(value)

    @property
    def size(self) -> int | tuple[int, int]:
        """The window: an int where both axes agree, else (rows, cols)."""
        return _one_or_pair(self.kernel_size)

    @property
    def stride(self) -> int | tuple[int, int]:  # (Filter.stride: the factor the image shrinks by)
        """The step: an int where both axes agree, else (rows, cols)."""
        return _one_or_pair(self.step)

    @property
    def reach(self) -> tuple[int, int, int, int]:
        return (0, self.kernel_size[0] - 1, 0, self.kernel_size[1] - 1)

    def _reference(self, x: Tensor) -> Tensor:
        op = KF.avg_pool if self.mode == "avg" else KF.max_pool
        return op(x, self.kernel_size, self.step, self.border, self.value / 255.0)

    def _own_spec(self) -> tuple[str, dict]:
        def wh(hw: tuple[int, int]) -> int | list[int]:
            return hw[0] if hw[0] == hw[1] else [hw[1], hw[0]]

        params = {"size": wh(self.kernel_size)}
        if self.step != self.kernel_size:
            params["stride"] = wh(self.step)
        return f"{self.mode}pool", self._common(params)


class Rank(Filter):
    """The ``rank``-th smallest value of each ``size`` x ``size`` neighbourhood (0 = minimum),
    as Pillow's ``RankFilter``; see :func:`convkit.nn.functional.rank_filter`."""

    def __init__(self, size: int, rank: int, border: str = "replicate",
                 value: float = 0.0) -> None:
        super().__init__()
        if not 0 <= rank < size * size:
            raise ValueError(f"rank should be in [0, {size * size - 1}]. Got {rank}")
        self.size, self.rank = int(size), int(rank)
        self.border = check_border(border)
        self.value = float(value)

    @property
    def reach(self) -> tuple[int, int, int, int]:
        return KF.kernel_pads(self.size, self.size)

    def _reference(self, x: Tensor) -> Tensor:
        return KF.rank_filter(x, self.size, self.rank, self.border, self.value / 255.0)

    def _own_spec(self) -> tuple[str, dict]:
        return "rank", {"size": self.size, "rank": self.rank, "border": self.border}


class Median(Rank):
    """Median of each ``size`` x ``size`` neighbourhood, per channel (non-linear).

    Anchored like a kernel of that size; the lower median for even sizes.
    """

    def __init__(self, size: int, border: str = "reflect", value: float = 0.0) -> None:
        super().__init__(size, (int(size) ** 2 - 1) // 2, border, value)

    def _reference(self, x: Tensor) -> Tensor:
        return KF.median_blur(x, self.size, self.border, self.value / 255.0)

    def _own_spec(self) -> tuple[str, dict]:
        return "median", self._common({"size": self.size})


class Sequence2(Filter):
    """Two or more filters applied in turn as one registry entry (e.g. ``edges``)."""

    def __init__(self, *mods: Filter) -> None:
        super().__init__()
        self.parts = nn.ModuleList(mods)

    @property
    def reach(self) -> tuple[int, int, int, int]:
        total = [0, 0, 0, 0]
        for m in self.parts:
            total = [a + b for a, b in zip(total, m.reach, strict=True)]
        return tuple(total)

    def _reference(self, x: Tensor) -> Tensor:
        for m in self.parts:
            x = reference(m, x)
        return x


class Morphology(Filter):
    """``op`` (see :data:`OPS`) with a fixed structuring element, as a module.

    Args:
        op: erode, dilate, open, close, gradient, tophat or blackhat.
        fp: the footprint, an (h, w) array of 0/1 anchored at its centre (``h // 2``,
            ``w // 2``), as :func:`footprint` makes.
        iterations: erosions and dilations repeated, as OpenCV's ``iterations``.
        border: ``none`` (no outside pixel takes part; OpenCV's default) or a convkit border.
        value: the constant border's fill in 8-bit grey levels.

    Shape: (B, C, H, W) or (C, H, W) float -> the same; equals ``cv2.morphologyEx`` on
    uint8, uint16 and float32 images. Runs as a plan operation: OpenCV on the CPU without
    autograd, the torch definition (:func:`convkit.nn.functional.morphology`) otherwise.
    """

    def __init__(self, op: str, fp: np.ndarray, iterations: int = 1, border: str = "none",
                 value: float = 0.0) -> None:
        super().__init__()
        if op not in MORPH_OPS:
            raise ValueError(f"Invalid morphology {op!r}. Expected one of {', '.join(MORPH_OPS)}")
        self.op = op
        self.fp = np.ascontiguousarray(fp, dtype=np.uint8)
        self.iterations = int(iterations)
        self.border = border if border == "none" else check_border(border)
        self.value = float(value)

    @property
    def reach(self) -> tuple[int, int, int, int]:
        return morph_reach(self.fp, self.op, self.iterations)

    def _reference(self, x: Tensor) -> Tensor:
        return KF.morphology(x, self.op, self.fp, self.iterations, self.border,
                             self.value / 255.0)

    def _own_spec(self) -> tuple[str, dict]:
        return self.op, {"iterations": self.iterations, "border": self.border}


def reference(module: nn.Module, x: Tensor) -> Tensor:
    """``module``'s plain definition on ``x``: ``_reference`` for convkit's filters (and
    chains), the module's own ``forward`` for anything else (a learned filter)."""
    if isinstance(module, Filter) and type(module).forward is Filter.forward:
        return module._reference(x)
    if getattr(type(module), "opens_in_plans", False):
        for m in module:  # type: ignore[attr-defined]
            x = reference(m, x)
        return x
    return module(x)


def flatten(module: nn.Module) -> list[nn.Module]:
    """The leaf filters of a chain, in order: plain ``nn.Sequential`` containers, a
    :class:`~convkit.Chain` and :class:`Sequence2` are opened; anything else is a leaf."""
    if isinstance(module, Sequence2):
        return [leaf for m in module.parts for leaf in flatten(m)]
    if isinstance(module, nn.Sequential) and (type(module).forward is nn.Sequential.forward
                                              or getattr(type(module), "opens_in_plans", False)):
        return [leaf for m in module for leaf in flatten(m)]
    return [module]
