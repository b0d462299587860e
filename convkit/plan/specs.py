"""A plan straight from a spec string, without torch: the command line's route.

``plan_spec("gaussian(sigma=2) | sharpen")`` parses the spec, checks every parameter as
:func:`convkit.chain` does (the same messages), turns each filter's leaves
(:mod:`convkit.plan.leaves`) into operations exactly as the engine reads them from a module's
buffers (float32 weights), and fuses them. It gives ``None`` when the chain holds something
that is not a fixed kernel: pooling, unsharp masking with a threshold, a learned filter (model
file); those run through torch modules.
"""

from __future__ import annotations

import numpy as np

from ..registry import get_info
from ..spec import check_path_element, format_call, parse
from .fuse import fuse
from .leaves import GradientLeaf, KernelLeaf, Leaf, MedianLeaf, MorphLeaf
from .ops import LinearOp, MedianOp, MorphOp, Plan, gradient_op, linear_op

__all__ = ["plan_spec", "leaf_ops"]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def leaf_ops(leaves: list[Leaf], name: str) -> list:
    """The operations of one filter's leaves, as the engine reads the modules built from them
    (:func:`convkit.builders.from_leaves`): float32 weights, the same names."""
    ops = []
    one = len(leaves) == 1
    for leaf in leaves:
        if isinstance(leaf, KernelLeaf):
            kh, kw = leaf.shape
            label = name if one and len(name) <= 80 else f"kernel {kh}x{kw}"
            if leaf.factors is not None and not leaf.dense:
                # left unmade: the op makes the float32 products when (if ever) read
                ops.append(LinearOp(None, leaf.bias, leaf.border, leaf.value / 255.0, None,
                                    label, (_f32(leaf.factors[0]), _f32(leaf.factors[1]))))
                continue
            k = _f32(leaf.kernel)
            col, row = (_f32(leaf.factors[0]), _f32(leaf.factors[1])) if leaf.factors else \
                (None, None)
            ops.append(linear_op(k, leaf.bias, leaf.border, leaf.value, None, label, col, row))
        elif isinstance(leaf, MedianLeaf):
            ops.append(MedianOp(leaf.size, leaf.border, leaf.value / 255.0,
                                name if one else "Median"))
        elif isinstance(leaf, MorphLeaf):
            ops.append(MorphOp(leaf.op, leaf.fp, leaf.iterations, leaf.border,
                               leaf.value / 255.0, name if one else "Morphology"))
        elif isinstance(leaf, GradientLeaf):
            kx = _f32(leaf.kx)
            ky = kx.T.copy() if leaf.ky is None else _f32(leaf.ky)
            ops.append(gradient_op(kx, ky, leaf.border, leaf.value,
                                   name if one else "GradientMagnitude"))
        else:
            raise TypeError(f"not a leaf: {type(leaf).__name__}")
    return ops


def plan_spec(spec: str, fuse_kernels: bool = True) -> Plan | None:
    """The plan of a chain spec of fixed filters; None when some element needs torch.

    Raises ValueError for a bad spec, as :func:`convkit.chain` does.
    """
    ops: list = []
    negative = None
    for call in parse(spec):
        if call.path is not None:
            if check_path_element(call.path) == "model":
                return None  # a learned filter
            info, params = get_info("kernel"), {"path": call.path}
        else:
            info = get_info(call.name)
            params = info.check_params(tuple(call.args), call.kwargs)
        leaves = info.leaves(**params)
        if leaves is None:
            return None
        ops.extend(leaf_ops(leaves, format_call(info.name, params)))
        own = [leaf.negative for leaf in leaves if isinstance(leaf, KernelLeaf)]
        if len(leaves) == 1 and own and own[0] is not None:
            negative = own[0]
    return fuse(ops, negative or "clip", [], fuse_kernels)
