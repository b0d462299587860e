"""``nn.Module``\\ s from the registry's leaves, and the builders of filters that need torch.

Fixed filters are built from their leaves (:mod:`convkit.plan.leaves`): a kernel becomes a
:class:`Kernel2d`, a median a :class:`Median`, a gradient magnitude a
:class:`GradientMagnitude`, several leaves a :class:`Sequence2`. Pooling and unsharp masking
with a threshold have builders here.
"""

from __future__ import annotations

from torch import nn

from ..plan import leaves as L
from .modules import Filter, GradientMagnitude, Kernel2d, Median, Pool2d, Sequence2, Unsharp


def from_leaves(leaves: list[L.Leaf]) -> Filter:
    """The module of ``leaves`` (one, or a :class:`Sequence2` of several)."""
    mods = [_module(leaf) for leaf in leaves]
    return mods[0] if len(mods) == 1 else Sequence2(*mods)


def _module(leaf: L.Leaf) -> nn.Module:
    if isinstance(leaf, L.KernelLeaf):
        return Kernel2d.from_leaf(leaf)
    if isinstance(leaf, L.MedianLeaf):
        return Median(leaf.size, border=leaf.border, value=leaf.value)
    if isinstance(leaf, L.MorphLeaf):
        from .modules import Morphology

        return Morphology(leaf.op, leaf.fp, leaf.iterations, leaf.border, leaf.value)
    if isinstance(leaf, L.GradientLeaf):
        return GradientMagnitude(leaf.kx, leaf.ky, border=leaf.border, value=leaf.value)
    raise TypeError(f"not a leaf: {type(leaf).__name__}")


def unsharp(info, sigma=1.0, amount=1.0, threshold=0.0, ksize=None, border="reflect",
            value=0.0) -> Filter:
    """Unsharp masking with a threshold (non-linear; without one it is a kernel: see
    :func:`convkit.plan.leaves.unsharp`)."""
    blur = from_leaves(L.gaussian(info, sigma, ksize, border=border, value=value))
    return Unsharp(blur, amount, threshold)


def _hw(v):
    """A spec's int or [width, height] as (rows, cols)."""
    return v if v is None or isinstance(v, int) else (v[1], v[0])


def avgpool(info, size=2, stride=None, border="reflect", value=0.0) -> Filter:
    return Pool2d("avg", _hw(size), _hw(stride), border=border, value=value)


def maxpool(info, size=2, stride=None, border="reflect", value=0.0) -> Filter:
    return Pool2d("max", _hw(size), _hw(stride), border=border, value=value)


def _rank(info, size: int, rank: int, border: str, value: float) -> Filter:
    from .modules import Rank

    return Rank(size, rank, border=border, value=value)


def minimum(info, size=3, border="replicate", value=0.0) -> Filter:
    """The smallest value of each square, as Pillow's MinFilter (rank 0)."""
    return _rank(info, size, 0, border, value)


def maximum(info, size=3, border="replicate", value=0.0) -> Filter:
    """The largest value of each square, as Pillow's MaxFilter."""
    return _rank(info, size, size * size - 1, border, value)


def percentile(info, size=3, q=50.0, border="replicate", value=0.0) -> Filter:
    """The value at percentile ``q`` of each square: rank ``round(q / 100 * (n - 1))`` of the
    n = size**2 sorted values (q 0 the minimum, 100 the maximum, 50 the median for odd
    sizes), as Pillow's ``RankFilter(size, rank)``."""
    return _rank(info, size, round(q / 100 * (size * size - 1)), border, value)
