"""A plan straight from a spec string, without torch: the command line's route.

``plan_spec("gaussian(sigma=2) | sharpen")`` parses the spec, checks every parameter as
:func:`convkit.chain` does (the same messages), turns each filter's leaves
(:mod:`convkit.plan.leaves`) into operations exactly as the engine reads them from a module's
buffers (float32 weights), and fuses them. It gives ``None`` when the chain holds something
that is not a fixed kernel: pooling, unsharp masking with a threshold, a learned filter (model
file); those run through torch modules.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..kernels.chainspec import check_path_element, format_call, parse
from ..kernels.registry import get_info
from .fuse import fuse
from .leaves import GradientLeaf, KernelLeaf, Leaf, MedianLeaf, MorphLeaf
from .ops import LinearOp, MedianOp, MorphOp, Plan, gradient_op, linear_op

__all__ = ["plan_spec", "leaf_ops"]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def leaf_ops(leaves: list[Leaf], name: str) -> list:
    """The operations of one filter's leaves, as the engine reads the modules built from them
    (:func:`convkit.nn.builders.from_leaves`): float32 weights, the same names."""
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
            ops.append(gradient_op(_f32(leaf.kx), _f32(leaf.ky), leaf.border, leaf.value,
                                   name if one else "GradientMagnitude"))
        else:
            raise TypeError(f"not a leaf: {type(leaf).__name__}")
    return ops


# Plans of recent spec strings that read no file: process(img, "erode(size=5)") in a loop
# parsed and planned the spec again on every call (a third of a 1 ms call on a 1080p photo).
# Plans are not changed by running them (a lazy kernel is made once, the same every time).
_CACHE: OrderedDict[tuple[str, bool], Plan | None] = OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()


def plan_spec(spec: str, fuse_kernels: bool = True) -> Plan | None:
    """The plan of a chain spec of fixed filters; None when some element needs torch.

    Raises ValueError for a bad spec, as :func:`convkit.chain` does.
    """
    key = (spec, bool(fuse_kernels))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    reads_files, plan = _plan_spec(spec, fuse_kernels)
    if not reads_files:  # (a kernel file may change between calls)
        with _CACHE_LOCK:
            _CACHE[key] = plan
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return plan


def _plan_spec(spec: str, fuse_kernels: bool) -> tuple[bool, Plan | None]:
    """(whether the spec reads a file, its plan)."""
    ops: list = []
    negative = None
    reads_files = False
    for call in parse(spec):
        if call.path is not None:
            if check_path_element(call.path) == "model":
                return True, None  # a learned filter
            info, params = get_info("kernel"), {"path": call.path}
        else:
            info = get_info(call.name)
            params = info.check_params(tuple(call.args), call.kwargs)
        reads_files = reads_files or any(info.param(k).kind == "path" for k in params)
        leaves = info.leaves(**params)
        if leaves is None:
            return reads_files, None
        ops.extend(leaf_ops(leaves, format_call(info.name, params)))
        own = [leaf.negative for leaf in leaves if isinstance(leaf, KernelLeaf)]
        if len(leaves) == 1 and own and own[0] is not None:
            negative = own[0]
    return reads_files, fuse(ops, negative or "clip", [], fuse_kernels)
