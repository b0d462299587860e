"""Plans of modules: a filter (chain) module flattened into :mod:`convkit.plan` operations.

The engine (:mod:`convkit.backends.engine`) never runs a :class:`~convkit.nn.chains.Chain` module by
module. It reads the module's buffers into operations (:func:`build_plan`: the weights a module
holds are what runs, also after ``load_state_dict`` or an in-place edit), fuses them
(:mod:`convkit.plan.fuse`) and caches the plan per module (:func:`get_plan`); the plan is
rebuilt only when a kernel buffer or border changes. A spec string gives the same plan without
torch (:mod:`convkit.plan.specs`).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.modules import GradientMagnitude, Kernel2d, Median, Morphology, Pool2d, flatten
from ..plan.fuse import fuse
from ..plan.ops import LinearOp, MedianOp, ModuleOp, MorphOp, Plan, gradient_op, linear_op

__all__ = ["build_plan", "get_plan"]


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


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _kernel_op(m: Kernel2d) -> LinearOp:
    sep = getattr(m, "separable", None) and hasattr(m, "col")
    return linear_op(_numpy(m.weight), float(m.bias), m.border, m.value,
                     getattr(m, "method", None), _name(m),
                     _numpy(m.col) if sep else None, _numpy(m.row) if sep else None)


def _leaf_op(m: nn.Module):
    if type(m) is Kernel2d:
        return _kernel_op(m)
    if type(m) is Median:
        return MedianOp(m.size, m.border, m.value / 255.0, _name(m))
    if type(m) is Morphology:
        return MorphOp(m.op, m.fp, m.iterations, m.border, m.value / 255.0, _name(m))
    if type(m) is GradientMagnitude:
        return gradient_op(_numpy(m.kx), _numpy(m.ky), m.border, m.value, _name(m))
    return ModuleOp(m, _name(m))


def build_plan(module: nn.Module, fuse_kernels: bool = True) -> Plan:
    """Flatten ``module`` into operations and fuse consecutive linear kernels where exact."""
    leaves = flatten(module)
    neg = getattr(module, "negative", None)
    return fuse([_leaf_op(m) for m in leaves], neg if isinstance(neg, str) else "clip",
                [m for m in leaves if isinstance(m, Pool2d)], fuse_kernels)


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

