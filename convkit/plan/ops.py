"""A plan's operations, as data: NumPy kernels and plain numbers, no torch.

A *plan* is a filter chain flattened into the operations the backends run:

* :class:`LinearOp`: one 2-D kernel + bias with a border mode (one kernel, or several
  consecutive ones fused into one: :mod:`convkit.plan.fuse`);
* :class:`MedianOp` and :class:`GradientOp`: the median and the gradient magnitude;
* :class:`ModuleOp`: anything else (pooling, unsharp with a threshold, learned filters), run by
  the module's own definition on the torch backend.

Plans are made from a spec string without torch (:mod:`convkit.plan.specs`) or from a module's
buffers (:mod:`convkit.backends.module_plans`); both give the same operations for the same filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["LazyKernel", "LinearOp", "MedianOp", "MorphOp", "GradientOp", "ModuleOp", "Plan", "Op",
           "reach", "RANK_TOL", "exact_factors"]

# Singular values below this fraction of the largest are float32 noise: dropping them changes a
# result by less than float32 rounding of the kernel itself.
RANK_TOL = 1e-7


def exact_factors(k: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer ``(col, row)`` (up to a power-of-two scale) whose outer product is exactly ``k``:
    Sobel's ``[1, 2, 1]`` and ``[-1, 0, 1]``, Scharr's ``[3, 10, 3]``, a binomial over 16. An
    SVD gives such kernels irrational factors whose float32 products miss the integers by an
    ulp (a Sobel response of 0.99999994 for 1); integer factors keep integer images exact.
    None for a kernel that is not a power-of-two multiple of an integer rank-1 kernel."""
    if k.size < 2 or k.size > 1 << 20 or not np.isfinite(k).all() or not k.any():
        return None
    for m in range(0, 25, 4):  # k * 2**m integer for some small m (a /16 binomial: m = 4)
        ints = np.ldexp(k, m)
        if np.array_equal(ints, np.round(ints)):
            break
    else:
        return None
    if np.abs(ints).max() >= 2**31:
        return None
    i = int(np.flatnonzero(ints.any(axis=1))[0])  # the first row that is not zero
    row = ints[i].astype(np.int64)
    g = int(np.gcd.reduce(np.abs(row[row != 0])))
    r = row // g
    j = int(np.flatnonzero(r)[np.argmin(np.abs(r[r != 0]))])
    if np.any(ints[:, j] % r[j]):
        return None
    col = ints[:, j] // r[j]
    if not np.array_equal(np.outer(col, r), ints):
        return None
    return np.ldexp(col.astype(np.float64), -m), r.astype(np.float64)


class LazyKernel:
    """A dataclass's ``kernel`` field that may be given as None with separable ``factors``:
    the dense kernel is then made by ``_make(col, row)`` when first read (a 4095-tap gaussian
    is planned and run as two vectors, never as a 4095x4095 array)."""

    kernel: Any
    factors: Any

    def __post_init__(self) -> None:
        if self.kernel is None:
            if self.factors is None:
                raise TypeError(f"{type(self).__name__}: a kernel, or separable factors, is "
                                "needed")
            del self.__dict__["kernel"]  # __getattr__ makes it when read

    def __getattr__(self, name: str) -> Any:
        # only reached for a kernel not made yet
        if name == "kernel" and self.__dict__.get("factors") is not None:
            k = self.__dict__["kernel"] = self._make(*self.factors)
            return k
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @staticmethod
    def _make(col: np.ndarray, row: np.ndarray) -> np.ndarray:
        return np.outer(col, row)

    @property
    def dense(self) -> bool:
        """Whether the dense kernel exists (given, or made by a read)."""
        return "kernel" in self.__dict__

    @property
    def shape(self) -> tuple[int, int]:
        if not self.dense:
            return len(self.factors[0]), len(self.factors[1])
        return self.kernel.shape


@dataclass(eq=False)
class LinearOp(LazyKernel):
    """``y = correlate(pad(x), kernel) + bias``; kernel anchored at (kh // 2, kw // 2).

    ``value`` (the constant border's fill) and ``bias`` are on the [0, 1] float scale.
    ``factors`` holds exact separable factors when the source module gave them (gaussian, box).
    With factors, ``kernel`` may be given as None: the dense kernel is then made when first
    read, as the float32 products of the factors (what a module's ``weight`` holds), so a
    4095-tap gaussian is planned and run as two vectors without a 4095x4095 array.
    """

    kernel: np.ndarray  # float64 (kh, kw); None with factors: made when read
    bias: float = 0.0
    border: str = "reflect"
    value: float = 0.0
    method: str | None = None
    name: str = "kernel"
    factors: tuple[np.ndarray, np.ndarray] | None = None  # exact (col, row), rank 1
    _cache: dict = field(default_factory=dict, repr=False)

    @staticmethod
    def _make(col: np.ndarray, row: np.ndarray) -> np.ndarray:
        return np.outer(col, row).astype(np.float32).astype(np.float64)

    def with_bias(self, bias: float) -> LinearOp:
        """This operation with another bias (its kernel, made or not, shared)."""
        return LinearOp(self.__dict__.get("kernel"), bias, self.border, self.value, self.method,
                        self.name, self.factors)

    @cached_property
    def l1(self) -> float:
        """The sum of the kernel's absolute taps (its gain bound)."""
        if not self.dense:
            col, row = self.factors  # type: ignore[misc]
            return float(np.abs(col).sum() * np.abs(row).sum())
        return float(np.abs(self.kernel).sum())

    @property
    def pads(self) -> tuple[int, int, int, int]:
        kh, kw = self.shape
        return kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2

    @cached_property
    def svd(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Separable terms ``[(col, row), ...]`` whose outer products sum to the kernel."""
        if self.factors is not None:
            return [self.factors]
        exact = exact_factors(self.kernel)
        if exact is not None:
            return [exact]
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
        if not self.dense:
            # equal taps need constant factors (a factor with unequal entries gives unequal
            # products, or all zeros); the weight as the made kernel holds it
            col, row = self.factors  # type: ignore[misc]
            if col.size * row.size > 1 and np.all(col == col[0]) and np.all(row == row[0]):
                w = float(np.float32(col[0] * row[0]))
                return w if w != 0 else None
            return None
        k = self.kernel
        if k.size > 1 and np.all(k == k.flat[0]) and k.flat[0] != 0:
            return float(k.flat[0])
        return None

    @cached_property
    def symmetric(self) -> bool:
        """Odd sides and mirror-symmetric in both axes (the reflect-fusion condition)."""
        if not self.dense:
            col, row = self.factors  # type: ignore[misc]
            if np.array_equal(col, col[::-1]) and np.array_equal(row, row[::-1]):
                return col.size % 2 == 1 and row.size % 2 == 1  # the products are symmetric
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
class MorphOp:
    """Morphology (:mod:`convkit.kernels.morphology`): ``op`` with the 0/1 footprint ``fp``."""

    op: str
    fp: Any  # uint8 (h, w) array of 0/1
    iterations: int
    border: str  # "none" or a convkit border
    value: float  # [0, 1] scale
    name: str = "morphology"


@dataclass(eq=False)
class GradientOp:
    """``sqrt(gx**2 + gy**2)`` for the two derivative kernels (as LinearOps, bias 0)."""

    gx: LinearOp
    gy: LinearOp
    name: str = "gradient"


@dataclass(eq=False)
class ModuleOp:
    module: Any  # an nn.Module
    name: str = "module"


Op = LinearOp | MedianOp | MorphOp | GradientOp | ModuleOp


def reach(op: Any) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) input pixels an output pixel of ``op`` reads around it; None
    for a module (its reach is its own)."""
    if isinstance(op, LinearOp):
        return op.pads
    if isinstance(op, GradientOp):
        return tuple(max(a, b) for a, b in zip(op.gx.pads, op.gy.pads, strict=True))
    if isinstance(op, MedianOp):
        k = op.size
        return k // 2, k - 1 - k // 2, k // 2, k - 1 - k // 2
    if isinstance(op, MorphOp):
        from ..kernels.morphology import reach as morph_reach

        return morph_reach(op.fp, op.op, op.iterations)
    return None


@dataclass(eq=False)
class Plan:
    ops: list
    negative: str
    alpha_steps: list  # size-changing modules the alpha channel follows (pooling)


def linear_op(kernel: np.ndarray, bias: float, border: str, value: float, method: str | None,
              name: str, col: np.ndarray | None = None,
              row: np.ndarray | None = None) -> LinearOp:
    """The LinearOp of a kernel as a module holds it (float32 weights, ``value`` in 8-bit grey
    levels). Separable factors (col, row) are kept only while they still give the weights:
    ``load_state_dict`` or an in-place edit changes the weights, not the factors."""
    k = np.array(kernel, dtype=np.float64)
    factors = None
    if col is not None and row is not None:
        c, r = np.array(col, dtype=np.float64), np.array(row, dtype=np.float64)
        if np.abs(np.outer(c, r) - k).max() <= 1e-6 * max(np.abs(k).max(), 1e-30):
            factors = (c, r)
    return LinearOp(k, float(bias), border, value / 255.0, method, name, factors)


def gradient_op(kx: np.ndarray, ky: np.ndarray, border: str, value: float,
                name: str) -> GradientOp:
    """The GradientOp of two derivative kernels as a module holds them (``value`` in grey
    levels)."""
    v = value / 255.0
    return GradientOp(LinearOp(np.array(kx, dtype=np.float64), 0.0, border, v, name="d/dx"),
                      LinearOp(np.array(ky, dtype=np.float64), 0.0, border, v, name="d/dy"),
                      name)
