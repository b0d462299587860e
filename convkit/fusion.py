"""Execution plans: a filter (chain) flattened into operations, with linear kernels fused.

The engine (:mod:`convkit.engine`) never runs a :class:`~convkit.chains.Chain` module by module.
It first turns it into a *plan*, a list of operations:

* :class:`LinearOp`: one 2-D kernel + bias with a border mode (a :class:`Kernel2d`, or several
  consecutive ones fused into one kernel);
* :class:`MedianOp` and :class:`GradientOp`: filters that have an OpenCV fast path;
* :class:`ModuleOp`: anything else (pooling, unsharp with a threshold, learned filters), run by
  its own ``forward``.

Fusion rule. Filtering with kernel A and then with kernel B, each padding with the border mode,
equals filtering once with ``C = A (full convolution) B`` padded with the same mode *exactly*
(not only in the interior) when the padded signal after A is again the border extension of A's
output:

* ``circular``: always (correlation on the torus is associative);
* ``reflect`` and ``symmetric``: when A has odd sides and is mirror-symmetric in both axes
  (``A == A[::-1, :] == A[:, ::-1]``): the border extension is an even (periodic) signal and a
  symmetric kernel keeps it even. B may be anything;
* ``replicate`` and ``constant``: never (a filtered image does not continue as a constant).

Both kernels must use the same border mode (and fill value); a kernel with its own ``method``
attribute is never fused. A group of fusable kernels runs as one kernel, or, when a rough cost
model (:func:`cost`) says it is cheaper, as its separable members fused into one separable
kernel followed by the rest (:func:`split_group`; exact for the same reason). The bias of A
passes through B as ``bias_A * sum(B)``. Plans are built once per module and cached; they are
rebuilt only when a kernel buffer or border changes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch
from torch import Tensor, nn

from .modules import GradientMagnitude, Kernel2d, Median, Pool2d, Sequence2

__all__ = ["LinearOp", "MedianOp", "GradientOp", "ModuleOp", "Plan", "build_plan", "get_plan",
           "flatten", "compose", "fusable", "split_group", "cost", "method_costs"]

# Singular values below this fraction of the largest are float32 noise: dropping them changes a
# result by less than float32 rounding of the kernel itself.
RANK_TOL = 1e-7


@dataclass(eq=False)
class LinearOp:
    """``y = correlate(pad(x), kernel) + bias``; kernel anchored at (kh // 2, kw // 2).

    ``value`` (the constant border's fill) and ``bias`` are on the [0, 1] float scale.
    ``factors`` holds exact separable factors when the source module gave them (gaussian, box).
    """

    kernel: np.ndarray  # float64 (kh, kw)
    bias: float = 0.0
    border: str = "reflect"
    value: float = 0.0
    method: str | None = None
    name: str = "kernel"
    factors: tuple[np.ndarray, np.ndarray] | None = None  # exact (col, row), rank 1
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.kernel.shape  # type: ignore[return-value]

    @property
    def pads(self) -> tuple[int, int, int, int]:
        kh, kw = self.shape
        return kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2

    @cached_property
    def svd(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Separable terms ``[(col, row), ...]`` whose outer products sum to the kernel."""
        if self.factors is not None:
            return [self.factors]
        u, s, vt = np.linalg.svd(self.kernel)
        if s[0] == 0:
            return [(np.zeros(self.shape[0]), np.zeros(self.shape[1]))]
        keep = int(np.sum(s > RANK_TOL * s[0]))
        # split each singular value evenly so both 1-D passes have a similar range
        return [(u[:, i] * np.sqrt(s[i]), vt[i] * np.sqrt(s[i])) for i in range(keep)]

    @property
    def rank(self) -> int:
        return len(self.svd)

    @cached_property
    def box_weight(self) -> float | None:
        """The common weight when every tap is equal (a box kernel), else None."""
        k = self.kernel
        if k.size > 1 and np.all(k == k.flat[0]) and k.flat[0] != 0:
            return float(k.flat[0])
        return None

    @cached_property
    def symmetric(self) -> bool:
        """Odd sides and mirror-symmetric in both axes (the reflect-fusion condition)."""
        k = self.kernel
        return (k.shape[0] % 2 == 1 and k.shape[1] % 2 == 1
                and np.array_equal(k, k[::-1, :]) and np.array_equal(k, k[:, ::-1]))

    def cached(self, key, make):
        """Per-op cache of derived kernels (per device, dtype and scale): built once."""
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = make()
        return out


@dataclass(eq=False)
class MedianOp:
    size: int
    border: str
    value: float  # [0, 1] scale
    name: str = "median"


@dataclass(eq=False)
class GradientOp:
    """``sqrt(gx**2 + gy**2)`` for the two derivative kernels (as LinearOps, bias 0)."""

    gx: LinearOp
    gy: LinearOp
    name: str = "gradient"


@dataclass(eq=False)
class ModuleOp:
    module: nn.Module
    name: str = "module"


Op = LinearOp | MedianOp | GradientOp | ModuleOp


@dataclass(eq=False)
class Plan:
    ops: list
    negative: str
    alpha_steps: list  # size-changing modules the alpha channel follows (pooling)

    def describe(self) -> list[str]:
        return [op.name for op in self.ops]


def _name(m: nn.Module) -> str:
    """A short readable name: the spec when the registry built the module, else its type."""
    if getattr(m, "spec_name", None) is not None and not (
            type(m) is Kernel2d and m.weights_changed()):
        try:
            spec = m.spec()  # type: ignore[operator]
        except (ValueError, NotImplementedError):
            spec = ""
        if 0 < len(spec) <= 80:  # (a kernel of many weights is named by its shape)
            return spec
    w = getattr(m, "weight", None)
    if type(m) is Kernel2d and w is not None:
        return f"kernel {w.shape[0]}x{w.shape[1]}"
    return type(m).__name__


def flatten(module: nn.Module) -> list[nn.Module]:
    """The leaf filters of a chain, in order: plain ``nn.Sequential`` containers, a
    :class:`~convkit.Chain` and :class:`Sequence2` are opened; anything else is a leaf."""
    if isinstance(module, Sequence2):
        return [leaf for m in module.parts for leaf in flatten(m)]
    if isinstance(module, nn.Sequential) and (type(module).forward is nn.Sequential.forward
                                              or getattr(type(module), "opens_in_plans", False)):
        return [leaf for m in module for leaf in flatten(m)]
    return [module]


def _kernel_op(m: Kernel2d) -> LinearOp:
    k = m.weight.detach().double().cpu().numpy().copy()
    factors = None
    if getattr(m, "separable", None) and hasattr(m, "col"):
        col = m.col.detach().double().cpu().numpy()
        row = m.row.detach().double().cpu().numpy()
        # only while they still give the weights: load_state_dict or an in-place edit changes
        # the weights, not these factors (they are not saved: they follow from the weights)
        if np.abs(np.outer(col, row) - k).max() <= 1e-6 * max(np.abs(k).max(), 1e-30):
            factors = (col.copy(), row.copy())
    return LinearOp(k, float(m.bias), m.border, m.value / 255.0,
                    getattr(m, "method", None), _name(m), factors)


def _leaf_op(m: nn.Module):
    if type(m) is Kernel2d:
        return _kernel_op(m)
    if type(m) is Median:
        return MedianOp(m.size, m.border, m.value / 255.0, _name(m))
    if type(m) is GradientMagnitude:
        kx = m.kx.detach().double().cpu().numpy().copy()
        ky = m.ky.detach().double().cpu().numpy().copy()
        v = m.value / 255.0
        return GradientOp(LinearOp(kx, 0.0, m.border, v, name="d/dx"),
                          LinearOp(ky, 0.0, m.border, v, name="d/dy"), _name(m))
    return ModuleOp(m, _name(m))


def fusable(a: LinearOp, b: LinearOp) -> bool:
    """Whether ``a`` then ``b`` equals one pass with :func:`compose` (a, b) at every pixel."""
    if a.method is not None or b.method is not None:
        return False
    if a.border != b.border or a.value != b.value:
        return False
    if a.border == "circular":
        return True
    if a.border in ("reflect", "symmetric"):
        return a.symmetric
    return False


def _reanchor(k: np.ndarray, ay: int, ax: int) -> np.ndarray:
    """Zero-pad ``k`` so that its tap (ay, ax) sits at the default anchor (h // 2, w // 2)."""
    h, w = k.shape

    def pads(n: int, a: int) -> tuple[int, int]:
        if a >= n // 2:
            return 0, max(0, 2 * a - n)
        return n - 2 * a - 1, 0

    (t, b), (l, r) = pads(h, ay), pads(w, ax)
    return np.pad(k, ((t, b), (l, r))) if t or b or l or r else k


def compose(a: LinearOp, b: LinearOp) -> LinearOp:
    """The single LinearOp equal to ``a`` then ``b`` (see the module docstring for when).

    Correlating with A then B correlates with the full convolution ``C[c] = sum_{i+j=c} A[i]
    B[j]``, anchored at the sum of the anchors.
    """
    ka, kb = a.kernel, b.kernel
    ha, wa = ka.shape
    hb, wb = kb.shape
    c = np.zeros((ha + hb - 1, wa + wb - 1))
    for i in range(hb):
        for j in range(wb):
            if kb[i, j] != 0:
                c[i:i + ha, j:j + wa] += kb[i, j] * ka
    if a.symmetric and b.symmetric:
        # the exact result is symmetric; remove the float noise of the summation order so that
        # the fused kernel fuses again with the next one
        # (pairwise sums are commutative, so each step is exactly symmetric)
        c = c + c[::-1, :]
        c = (c + c[:, ::-1]) / 4.0
    c = _reanchor(c, ha // 2 + hb // 2, wa // 2 + wb // 2)
    factors = None
    if a.factors is not None and b.factors is not None and c.shape == (ha + hb - 1, wa + wb - 1):
        factors = (np.convolve(a.factors[0], b.factors[0]), np.convolve(a.factors[1],
                                                                        b.factors[1]))
    return LinearOp(c, a.bias * float(kb.sum()) + b.bias, a.border, a.value, None,
                    f"{a.name} * {b.name}", factors)


# Cost of one operation in ns per sample, fitted to `bench_filters.py --methods` on the 2-core
# machine class (OpenCV, one 1080p uint8 plane): used to pick methods on the opencv backend and
# to choose how a fusable group is split.
PASS_COST = 1.5  # one more float32 intermediate: its write, its read and the final store


# torch's FFT on the CPU (pad, rfft2, product, irfft2, round): flat in the kernel size (45-75 ms
# for 1080p RGB); cheaper than OpenCV's separable pass from about 63x63 (a gaussian of sigma
# 10.5 on 8-bit images) and than its DFT-based filter2D from 13x13.
FFT_COST = 10.5
FFT_MIN_TAPS = 121


def method_costs(op: LinearOp) -> dict[str, float]:
    """Estimated ns per sample of each method that can run ``op`` on the CPU: OpenCV's, and
    ``fft`` (torch's, for large kernels)."""
    kh, kw = op.shape
    taps = kh * kw
    # filter2D switches to its DFT from 11x11
    out = {"direct": max(1.0, 0.16 * taps) if taps < 121 else min(21.0, 10.0 + 0.02 * (
        taps - 121))}
    if op.box_weight is not None and kh > 1 and kw > 1:
        out["box"] = 0.9
    if op.rank == 1 and kh > 1 and kw > 1:
        out["separable"] = 0.5 + 0.08 * (kh + kw)
    out["lowrank"] = op.rank * (2.0 + 0.08 * (kh + kw)) + 2.0
    if taps >= FFT_MIN_TAPS:
        out["fft"] = FFT_COST
    return out


def cost(op: LinearOp) -> float:
    """Estimated ns per sample of ``op`` by its cheapest method."""
    return min(method_costs(op).values())


def _total(ops: list[LinearOp]) -> float:
    return sum(cost(o) for o in ops) + PASS_COST * (len(ops) - 1)


def _fold(ops: list[LinearOp]) -> LinearOp:
    out = ops[0]
    for o in ops[1:]:
        out = compose(out, o)
    return out


def split_group(group: list[LinearOp]) -> list[LinearOp]:
    """The cheapest exact way to run a group of mutually fusable kernels (in order).

    Candidates: everything fused into one kernel, or the separable members fused into one
    separable kernel P applied first, then the others (fused where that is cheaper). P first is
    exact: its members are symmetric (for reflect/symmetric borders) or the border is circular,
    so P commutes with the rest on the border-extended image.
    """
    if len(group) <= 1:
        return group
    best = [_fold(group)]
    sep = [o for o in group if o.rank == 1 and min(o.shape) > 1
           and (o.border == "circular" or o.symmetric)]
    rest = [o for o in group if all(o is not p for p in sep)]
    if sep and rest:
        tail: list[LinearOp] = []
        for o in rest:
            if tail:
                fused = compose(tail[-1], o)
                if cost(fused) <= cost(tail[-1]) + cost(o) + PASS_COST:
                    tail[-1] = fused
                    continue
            tail.append(o)
        cand = [_fold(sep), *tail]
        if _total(cand) < _total(best):
            # Moving kernels changes which kernels each bias passes through; a constant passes
            # through a kernel as itself times the kernel's sum (no constant border here), so
            # the group's bias, folded in the original order, goes to the last operation.
            total = best[0].bias
            best = [replace(o, bias=0.0) for o in cand[:-1]] + [replace(cand[-1], bias=total)]
    return best


def build_plan(module: nn.Module, fuse: bool = True) -> Plan:
    """Flatten ``module`` into operations and fuse consecutive linear kernels where exact."""
    leaves = flatten(module)
    ops: list = []
    group: list[LinearOp] = []  # consecutive fusable kernels
    for m in leaves:
        op = _leaf_op(m)
        # every member but the newest passed fusable() when its successor joined
        if fuse and isinstance(op, LinearOp) and group and fusable(group[-1], op):
            group.append(op)
            continue
        ops.extend(split_group(group))
        group = []
        if fuse and isinstance(op, LinearOp):
            group = [op]
        else:
            ops.append(op)
    ops.extend(split_group(group))
    neg = getattr(module, "negative", None)
    negative = neg if isinstance(neg, str) else "clip"
    return Plan(ops, negative, [m for m in leaves if isinstance(m, Pool2d)])


def _weight_state(w: Tensor):
    """What changes when a kernel's weights change in place: the version counter; a tensor
    made under ``torch.inference_mode`` keeps none, so then its values (kernels are small)."""
    if w.is_inference():
        return w.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()  # any dtype
    return w._version


def _signature(module: nn.Module, fuse: bool) -> tuple:
    sig: list = [fuse]
    for m in flatten(module):
        if type(m) is Kernel2d:
            w = m.weight
            sig.append((id(m), w.data_ptr(), _weight_state(w), m.border, m.value, m.bias,
                        getattr(m, "method", None), getattr(m, "negative", None)))
        elif type(m) in (Median, GradientMagnitude):
            sig.append((id(m), m.border, m.value, getattr(m, "size", None)))
        else:
            sig.append(id(m))
    sig.append(getattr(module, "negative", None))
    return tuple(sig)


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_plan(module: nn.Module, fuse: bool = True) -> Plan:
    """The cached plan of ``module``; rebuilt only when its kernels or settings changed."""
    sig = _signature(module, fuse)
    per_module = _PLANS.get(module)
    if per_module is None:
        per_module = _PLANS[module] = {}
    hit = per_module.get(fuse)
    if hit is not None and hit[0] == sig:
        return hit[1]
    plan = build_plan(module, fuse)
    per_module[fuse] = (sig, plan)
    return plan


def as_tensor(a: np.ndarray, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype or like.dtype, device=like.device)
