"""Fusion of consecutive linear kernels, and the CPU cost model that picks methods.

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
is never fused. A group of fusable kernels runs as one kernel, or, when the cost model
(:func:`cost`) says it is cheaper, as its separable members fused into one separable kernel
followed by the rest (:func:`split_group`; exact for the same reason). The bias of A passes
through B as ``bias_A * sum(B)``.

Torch-free: this works on :mod:`convkit.plan.ops` alone.
"""

from __future__ import annotations

import numpy as np

from .ops import LinearOp, Plan

__all__ = ["fusable", "convolve_ops", "split_group", "cost", "method_costs", "fuse",
           "PASS_COST", "FFT_COST", "FFT_MIN_TAPS"]


def fusable(a: LinearOp, b: LinearOp) -> bool:
    """Whether ``a`` then ``b`` equals one pass with :func:`convolve_ops` (a, b) at every pixel."""
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


def convolve_ops(a: LinearOp, b: LinearOp) -> LinearOp:
    """The single LinearOp equal to ``a`` then ``b`` (see the module docstring for when).

    Correlating with A then B correlates with the full convolution ``C[c] = sum_{i+j=c} A[i]
    B[j]``, anchored at the sum of the anchors.
    """
    if a.factors is not None and b.factors is not None and all(
            n % 2 for n in (*a.shape, *b.shape)):
        # two centred separable kernels make a separable one, its factors the factors' full
        # convolutions; its dense kernel, the float32 products, is made only if read (so the
        # plans of a spec and of its modules hold the same kernel)
        (ca, ra), (cb, rb) = a.factors, b.factors  # type: ignore[misc]
        col, row = np.convolve(ca, cb), np.convolve(ra, rb)
        if a.symmetric and b.symmetric:  # (palindromes, as the dense branch makes them)
            col, row = (col + col[::-1]) / 2.0, (row + row[::-1]) / 2.0
        gain = float(cb.sum() * rb.sum())
        return LinearOp(None, a.bias * gain + b.bias, a.border, a.value, None,
                        f"{a.name} * {b.name}", (col, row))
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
        out = convolve_ops(out, o)
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
                fused = convolve_ops(tail[-1], o)
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
            best = [o.with_bias(0.0) for o in cand[:-1]] + [cand[-1].with_bias(total)]
    return best



def fuse(leaves: list, negative: str, alpha_steps: list | None = None,
         fuse: bool = True) -> Plan:
    """A plan of the leaf operations ``leaves`` (in order), consecutive linear kernels fused
    where exact (``fuse``)."""
    ops: list = []
    group: list[LinearOp] = []  # consecutive fusable kernels
    for op in leaves:
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
    return Plan(ops, negative, alpha_steps or [])
