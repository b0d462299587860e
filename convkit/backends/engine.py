"""The execution engine: runs a plan on an image batch of any dtype, on the backend that suits.

``apply(module, x)`` is the single place where integer images become float and back. The result
is the one the core defines (see :mod:`convkit.nn.functional`): uint8/uint16 -> float on the [0, 1]
scale -> module -> the module's ``negative`` mapping -> round to nearest (ties to even) ->
saturate to the dtype's range (OpenCV's saturate_cast). How it is computed is the engine's
choice, and results never depend on it beyond float rounding (1 grey level on integer images):

1. The module is flattened into a cached *plan* (:mod:`convkit.backends.module_plans`,
   :mod:`convkit.plan`): consecutive linear kernels fused where exact.
2. Each linear kernel runs by one *method*, picked by the rule in :mod:`convkit.plan.rules`.
3. Each operation runs on a *backend*: ``opencv`` (CPU; uint8, uint16 and float32 planes, see
   :mod:`convkit.backends.opencv`; integer conversion folded into the kernel, so an integer image
   goes in and out in one pass) or ``torch`` (any device and dtype, differentiable; channels_last on
   the CPU). A plan of several linear kernels that OpenCV runs goes through the image in bands
   of rows, every kernel on one band before the next (the float32 intermediates stay in the
   cache).

The opencv backend is used on the CPU for uint8, uint16 and float32 images when the input
needs no gradient; torch otherwise (or when ``backend="torch"``). Median filters use
cv2.medianBlur (uint8 at odd sizes; uint16/float32 at sizes 3 and 5), the gradient magnitude
two OpenCV passes and cv2.magnitude; pooling and learned filters run their own definition.

On CUDA, ``options(compile=True)`` (or CONVKIT_COMPILE=1) runs small direct kernels through one
``torch.compile``'d function that reads the integer image and writes the integer result in a
single pass. ``options(triton=True)`` (or CONVKIT_TRITON=1) runs kernels of up to 49 taps whose
method is automatic or ``direct``, and gradient magnitudes, through convkit's own one-pass
Triton stencil (:mod:`convkit.backends.stencil`). It takes precedence over ``compile``; what it does
not take runs as above.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.specs import INT_MAX, OFFSET
from ..nn import functional as KF
from ..nn.modules import reference
from ..plan.ops import GradientOp, LinearOp, MedianOp, ModuleOp, MorphOp, Plan
from ..plan.rules import (
    BACKENDS,
    METHODS,
    Options,
    choose_method,
    cpu_fft,
    merged,
    method_for,
    options,
)
from . import opencv, stencil
from .module_plans import get_plan

__all__ = ["apply", "options", "explain", "module_forward", "choose_method", "METHODS",
           "BACKENDS"]

_MAX = {getattr(torch, name): top for name, top in INT_MAX.items()}  # by torch dtype
COMPILE_MAX_TAPS = 49

# --- torch methods ----------------------------------------------------------------------------
def _depthwise(x: Tensor, w: Tensor, cl: bool) -> Tensor:
    """Valid correlation of every plane of x with the (1, 1, kh, kw) kernel w."""
    b, c, h, _ = x.shape
    kh = w.shape[-2]
    oh = h - kh + 1
    if cl and b * c == 1 and oh >= 2:
        # torch's CPU kernel is an order of magnitude slower on one channel than on two
        # (channels_last depthwise): filter the top and bottom halves as two channels.
        top = (oh + 1) // 2
        two = torch.cat([x[..., :top + kh - 1, :], x[..., oh - top:, :]], dim=1)
        y = _depthwise(two, w, cl)
        return torch.cat([y[:, :1], y[:, 1:, 2 * top - oh:]], dim=2)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    # (a contiguous weight: cuDNN may refuse an expanded one; it is C * kh * kw numbers)
    return F.conv2d(x, w.expand(c, 1, *w.shape[-2:]).contiguous(), groups=c)


def _next_fast(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3, 5 and 7 (fast FFT sizes)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _torch_method(op: LinearOp, x: Tensor, method: str, s: float, fill: float,
                  cl: bool) -> Tensor:
    """``correlate(pad(x), kernel * s)`` by ``method`` (x float, any device)."""
    t, b, l, r = op.pads
    kh, kw = op.shape
    dev, dt = x.device, x.dtype
    if method == "direct":
        w = op.cached(("t", dev, dt, s, "2d"),
                      lambda: torch.as_tensor(op.kernel * s, dtype=dt, device=dev)[None, None])
        return _depthwise(KF.pad(x, t, b, l, r, op.border, fill), w, cl)
    if method in ("separable", "lowrank"):
        terms = op.cached(("t", dev, dt, s, "sep"), lambda: [
            (torch.as_tensor(c * s, dtype=dt, device=dev).view(1, 1, -1, 1),
             torch.as_tensor(rw, dtype=dt, device=dev).view(1, 1, 1, -1), float(rw.sum()))
            for c, rw in op.svd])
        acc = None
        for col, row, row_sum in terms:
            y = _depthwise(KF.pad(x, 0, 0, l, r, op.border, fill), row, cl)
            # a constant border after the row pass is the fill seen through the row kernel
            y = _depthwise(KF.pad(y, t, b, 0, 0, op.border, fill * row_sum), col, cl)
            acc = y if acc is None else acc.add_(y)
        return acc
    if method == "fft":
        return _fft(op, x, s, fill)
    if method == "box":
        # running sums in float64: exact enough for any image range and size
        xp = KF.pad(x, t, b, l, r, op.border, fill).to(torch.float64)
        c = F.pad(xp.cumsum(-1), (1, 0))
        y = c[..., kw:] - c[..., :-kw]
        c = F.pad(y.cumsum(-2), (0, 0, 1, 0))
        y = c[..., kh:, :] - c[..., :-kh, :]
        return y.mul_(op.box_weight * s).to(dt)
    raise AssertionError(method)


def _fft(op: LinearOp, x: Tensor, s: float, fill: float) -> Tensor:
    """``correlate(pad(x), kernel * s)`` through the FFT. ``x`` may be an integer image (then
    the result is float32): it is padded by the border rule straight into the FFT buffer.

    The padded image sits in the top-left of a buffer of a fast FFT size; the circular
    correlation's output rows kh-1 .. hp-1 (and columns likewise) read only the padded image,
    never the wrapped-around margin, which is zero (uninitialised memory could hold NaN)."""
    t, b, l, r = op.pads
    kh, kw = op.shape
    ft = torch.float64 if x.dtype == torch.float64 else torch.float32
    out_dt = x.dtype if x.is_floating_point() else torch.float32
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=out_dt, device=x.device)  # (an FFT of nothing fails)
    if not x.is_floating_point() and (x.dtype != torch.uint8 or (
            op.border == "constant" and not opencv.fill_fits(fill, 255))):
        # torch pads uint16 in no mode; a fill that uint8 cannot hold needs float padding
        x = x.to(ft)
    xp = KF.pad(x, t, b, l, r, op.border, fill)
    hp, wp = xp.shape[-2:]
    size = (_next_fast(hp), _next_fast(wp))
    buf = torch.empty((*xp.shape[:-2], *size), dtype=ft, device=x.device)
    buf[..., :hp, :wp] = xp
    buf[..., hp:, :] = 0
    buf[..., :hp, wp:] = 0
    kf = op.cached(("t", x.device, ft, s, "fft", size), lambda: torch.fft.rfft2(
        torch.as_tensor(op.kernel[::-1, ::-1] * s, dtype=ft, device=x.device), s=size))
    y = torch.fft.irfft2(torch.fft.rfft2(buf).mul_(kf), s=size)
    return y[..., kh - 1:hp, kw - 1:wp].to(out_dt)


def _finalize(y: Tensor, dtype: torch.dtype, top: float, negative: str) -> Tensor:
    """Pixel-unit float result -> integer image: negative mapping, round half even, saturate."""
    if negative == "abs":
        y = y.abs_()
    elif negative == "offset":
        y = y.add_(OFFSET * top)
    elif negative != "clip":
        raise ValueError(f"Invalid negative {negative!r}. Expected one of abs, offset, clip.")
    return y.round_().clamp_(0, top).to(dtype)


_COMPILED: dict = {}


def _shift_add(x: Tensor, k: Tensor, pads: tuple[int, int, int, int], border: str, fill: float,
               bias: float, top: float, negative: str, integer_out: bool) -> Tensor:
    """Direct correlation written as a sum of shifted images, so that torch.compile fuses the
    integer->float conversion, padding, all taps and the rounding into one kernel."""
    xf = x.to(torch.float32)
    xp = KF.pad(xf, *pads, border, fill)
    h, w = x.shape[-2:]
    kh, kw = k.shape
    acc = xp[..., 0:h, 0:w] * k[0, 0]
    for i in range(kh):
        for j in range(kw):
            if i or j:
                acc = acc + xp[..., i:i + h, j:j + w] * k[i, j]
    acc = acc + bias
    if not integer_out:
        return acc
    if negative == "abs":
        acc = acc.abs()
    elif negative == "offset":
        acc = acc + OFFSET * top
    return acc.round().clamp(0, top).to(torch.uint8 if top == 255.0 else torch.uint16)


def _compiled_direct(op: LinearOp, x: Tensor, s: float, fill: float, bias: float, top: float,
                     negative: str | None) -> Tensor:
    fn = _COMPILED.get("shift_add")
    if fn is None:
        # shapes: static first, symbolic after a second size (no recompile per image size)
        fn = _COMPILED["shift_add"] = torch.compile(_shift_add)
    k = op.cached(("t", x.device, torch.float32, s, "2d-flat"),
                  lambda: torch.as_tensor(op.kernel * s, dtype=torch.float32, device=x.device))
    return fn(x, k, op.pads, op.border, fill, bias, top, negative or "clip", negative is not None)


# --- running one operation ----------------------------------------------------------------------
@dataclass
class _Step:
    """Where one operation of a plan runs: for explain() and for the tests."""

    name: str
    backend: str
    method: str


def _backend_for(op, x: Tensor, opts: Options) -> str:
    if isinstance(op, ModuleOp):
        return "torch"
    cv_ok = (x.device.type == "cpu" and not x.requires_grad and opencv.supports(op, x.dtype))
    if opts.backend == "opencv":
        if not cv_ok:
            why = ("it runs on the CPU only" if x.device.type != "cpu" else
                   "the input needs a gradient" if x.requires_grad else
                   f"it takes uint8, uint16 or float32 planes (and odd median sizes); got "
                   f"{x.dtype}")
            raise ValueError(f"backend='opencv' cannot run {op.name}: {why}")
        return "opencv"
    if opts.backend == "torch" or not cv_ok:
        return "torch"
    return "opencv"



def _stencil_takes(op: LinearOp, x: Tensor, out_dtype: torch.dtype, negative: str | None,
                   opts: Options) -> bool:
    """Whether ``options(triton=True)`` runs this kernel through :mod:`convkit.backends.stencil`: a
    kernel of at most ``stencil.MAX_TAPS`` taps whose method is automatic or ``direct`` (one
    pass beats two separable ones at that size), on a device the stencil runs on."""
    forced = op.method or opts.method
    return (opts.triton and forced in (None, "direct")
            and stencil.runs(x, op.shape, out_dtype, negative))


@dataclass(frozen=True)
class _Call:
    """What an executor needs besides its operation and image: the scales in and out, the
    integer mapping of the last operation (``negative``; None: float on [0, 1] out), the
    options, the backend chosen, and the trace to note each step in (or None)."""

    in_max: float
    out_dtype: torch.dtype
    out_max: float
    negative: str | None
    opts: Options
    backend: str
    channels_last: bool
    trace: list | None

    @property
    def scale(self) -> float:
        return self.out_max / self.in_max  # kernel scale: input units -> output units

    def note(self, name: str, backend: str, method: str) -> None:
        if self.trace is not None:
            self.trace.append(_Step(name, backend, method))

    def finalize(self, y: Tensor) -> Tensor:
        return y if self.negative is None else _finalize(y, self.out_dtype, self.out_max,
                                                         self.negative)


def _run_linear(op: LinearOp, x: Tensor, c: _Call) -> Tensor:
    backend = c.backend
    if backend == "opencv" and cpu_fft(op, c.opts):
        backend, method = "torch", "fft"  # only an explicit backend="opencv" refuses fft
    else:
        method = method_for(op, backend, c.opts, x.device.type)
    fill = op.value * c.in_max
    bias = op.bias * c.out_max
    s = c.scale
    if backend == "torch" and _stencil_takes(op, x, c.out_dtype, c.negative, c.opts):
        c.note(op.name, "triton", "direct")
        w = op.cached(("stencil", x.device, s), lambda: stencil.prepare([op.kernel], s, x.device))
        return stencil.correlate(x, w, op.border, fill, bias, c.out_dtype, c.out_max, c.negative)
    c.note(op.name, backend, method)
    if backend == "opencv":
        return opencv.linear(x, op, method, c.in_max, c.out_dtype, c.out_max, c.negative)
    if (c.opts.compile and method == "direct" and op.shape[0] * op.shape[1] <= COMPILE_MAX_TAPS
            and not x.requires_grad and (c.negative is None or x.dtype == c.out_dtype)
            and (x.dtype in _MAX or x.dtype == torch.float32)):
        return _compiled_direct(op, x, s, fill, bias, c.out_max, c.negative)
    # (fft converts the integer image while it pads it into its FFT buffer)
    xf = x if x.is_floating_point() or method == "fft" else x.to(torch.float32)
    y = _torch_method(op, xf, method, s, fill, c.channels_last)
    if bias:
        y = y.add_(bias)
    return c.finalize(y)


def _run_values(op: MedianOp | MorphOp, x: Tensor, c: _Call) -> Tensor:
    """Operations whose results are values of the image (and their differences): OpenCV on
    the planes, or torch's definition on the [0, 1] scale."""
    median = isinstance(op, MedianOp)
    c.note(op.name, c.backend, "median" if median else "morphology")
    if c.backend == "opencv":
        run = opencv.median if median else opencv.morphology
        return run(x, op, c.in_max, c.out_dtype, c.out_max, c.negative)
    xf = KF.to_float(x) if not x.is_floating_point() else x
    y = KF.median_blur(xf, op.size, op.border, op.value) if median else \
        KF.morphology(xf, op.op, op.fp, op.iterations, op.border, op.value)
    return y if c.negative is None else c.finalize(y.mul_(c.out_max))


def _run_gradient(op: GradientOp, x: Tensor, c: _Call) -> Tensor:
    own = replace(c.opts, method=None)  # its kernels run by their own rule, whatever method=
    s = c.scale
    if (c.backend == "torch" and op.gx.shape == op.gy.shape
            and _stencil_takes(op.gx, x, c.out_dtype, c.negative, own)):
        c.note(op.name, "triton", "gradient")
        w = op.gx.cached(("stencil-gradient", x.device, s), lambda: stencil.prepare(
            [op.gx.kernel, op.gy.kernel], s, x.device))
        return stencil.correlate(x, w, op.gx.border, op.gx.value * c.in_max, 0.0, c.out_dtype,
                                 c.out_max, c.negative)
    c.note(op.name, c.backend, "gradient")
    if c.backend == "opencv":
        return opencv.gradient(x, op, c.in_max, c.out_dtype, c.out_max, c.negative,
                               lambda lin: method_for(lin, "opencv", own))
    xf = x if x.is_floating_point() else x.to(torch.float32)
    g = [_torch_method(lin, xf, method_for(lin, "torch", own, x.device.type), s,
                       lin.value * c.in_max, c.channels_last) for lin in (op.gx, op.gy)]
    return c.finalize(KF.magnitude(g[0], g[1]))


def _run_module(op: ModuleOp, x: Tensor, c: _Call) -> Tensor:
    """The module's own definition on the [0, 1] scale."""
    c.note(op.name, "torch", "module")
    xf = KF.to_float(x) if not x.is_floating_point() else x
    y = reference(op.module, xf)
    return y if c.negative is None else KF.to_integer(y, c.out_dtype, c.negative)


_EXECUTORS = {LinearOp: _run_linear, MedianOp: _run_values, MorphOp: _run_values,
              GradientOp: _run_gradient, ModuleOp: _run_module}


def _run_op(op, x: Tensor, in_max: float, out_dtype: torch.dtype, out_max: float,
            negative: str | None, opts: Options, trace: list | None) -> Tensor:
    """One operation: x (integer in pixel units, or float on the [0, 1] scale) -> float on the
    [0, 1] scale (``negative`` None) or the final integer image."""
    cl = opts.channels_last if opts.channels_last is not None else x.device.type == "cpu"
    call = _Call(in_max, out_dtype, out_max, negative, opts, _backend_for(op, x, opts), cl, trace)
    run = _EXECUTORS.get(type(op)) or next(
        (fn for kind, fn in _EXECUTORS.items() if isinstance(op, kind)), _run_module)
    return run(op, x, call)


def _scales(plan: Plan, x: Tensor):
    """Per operation: (in_max, out_dtype, out_max, negative) (see :func:`opencv.scales`)."""
    for in_max, dtype, out_max, negative in opencv.scales(plan, x.dtype):
        yield in_max, getattr(torch, dtype), out_max, negative


class _OpenCVOp(torch.autograd.Function):
    """One linear kernel or gradient magnitude on OpenCV, float32 on the CPU, with its
    gradient w.r.t. the input on OpenCV too (:func:`convkit.backends.opencv.linear_adjoint`):
    torch's own CPU convolutions, forward and backward, are several times slower."""

    @staticmethod
    def forward(ctx, x: Tensor, op, opts: Options) -> Tensor:
        ctx.op, ctx.opts = op, opts
        a = x.detach().numpy()
        if isinstance(op, LinearOp):
            return torch.from_numpy(opencv.linear(a, op, method_for(op, "opencv", opts), 1.0,
                                                    "float32", 1.0, None))
        own = replace(opts, method=None)
        g = [opencv.linear(a, lin, method_for(lin, "opencv", own), 1.0, "float32", 1.0, None)
             for lin in (op.gx, op.gy)]
        mag = np.sqrt(g[0] * g[0] + g[1] * g[1])
        ctx.saved = (g[0], g[1], mag)
        return torch.from_numpy(mag)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        g = np.ascontiguousarray(grad.numpy(), dtype=np.float32)
        op, opts = ctx.op, ctx.opts
        if isinstance(op, LinearOp):
            return torch.from_numpy(opencv.linear_adjoint(g, op, opts)), None, None
        gx, gy, mag = ctx.saved
        # d|g|/dg = g / |g|; 0 where |g| = 0 (sqrt's slope is infinite there)
        scale = np.divide(g, mag, out=np.zeros_like(g), where=mag > 0)
        dx = opencv.linear_adjoint(scale * gx, op.gx, opts)
        dx += opencv.linear_adjoint(scale * gy, op.gy, opts)
        return torch.from_numpy(dx), None, None


def _run(plan: Plan, x: Tensor, opts: Options, trace: list | None = None) -> Tensor:
    if not plan.ops:
        return x.clone()
    cpu = x.device.type == "cpu"
    if (cpu and x.dtype == torch.float32 and x.requires_grad and torch.is_grad_enabled()
            and opencv.differentiable(plan, opts)):
        cur = x
        for op in plan.ops:
            if trace is not None:
                trace.append(_Step(op.name, "opencv", "autograd"))
            cur = _OpenCVOp.apply(cur, op, opts)
        return cur
    if cpu and not x.requires_grad and opencv.runs_plan(plan, x.dtype, opts, torch_fft=True):
        steps: list | None = [] if trace is not None else None
        out = opencv.run_plan(plan, x, opts, steps)
        if trace is not None:
            trace.extend(_Step(*one) for one in steps)
        return out
    if opts.backend == "auto" and cpu and opencv.past_int32(plan, x.dtype):
        opts = replace(opts, backend="torch")
    cur = x
    for op, (in_max, out_dtype, out_max, negative) in zip(plan.ops, _scales(plan, x),
                                                           strict=True):
        cur = _run_op(op, cur, in_max, out_dtype, out_max, negative, opts, trace)
    if x.is_contiguous() and not cur.is_contiguous():
        cur = cur.contiguous()  # the torch path's channels_last results go back to NCHW
    return cur


def _split_alpha(x: Tensor, alpha: bool) -> tuple[Tensor, Tensor | None]:
    if x.dim() != 4:
        raise ValueError(f"apply expects a batch (B,C,H,W). Got shape {tuple(x.shape)}")
    if not x.is_floating_point() and x.dtype not in _MAX:
        raise TypeError(f"integer images should be uint8 or uint16. Got {x.dtype}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"apply expects a non-empty image. Got shape {tuple(x.shape)}")
    if alpha and x.shape[1] < 2:
        raise ValueError("alpha=True needs at least 2 channels")
    return (x[:, :-1], x[:, -1:]) if alpha else (x, None)


def apply(module: nn.Module, x: Tensor, *, alpha: bool = False, method: str | None = None,
          backend: str | None = None, fuse: bool | None = None) -> Tensor:
    """Filter a batch ``x`` (B, C, H, W) of uint8, uint16 or float; return the same dtype.

    Args:
        module: a convkit filter, a :class:`~convkit.Chain`, or any ``nn.Module`` on float
            images (a learned filter).
        x: uint8/uint16 (filtered on the [0, 1] scale, rounded half to even and saturated) or
            float (filtered as it is, unclamped), on the module's device.
        alpha: the last channel is alpha: passed through unchanged (pooled when the chain pools).
        method, backend, fuse: override the engine's choices for this call (see the module
            docstring); None keeps the defaults set by :func:`options`.

    Returns:
        (B, C, H', W') of ``x``'s dtype; H', W' = H, W unless the chain pools.
    """
    colour, a = _split_alpha(x, alpha)
    opts = merged(method, backend, fuse)
    plan = get_plan(module, opts.fuse)
    integer = not x.is_floating_point()
    grad = torch.is_grad_enabled() and colour.requires_grad
    with nullcontext() if grad else torch.no_grad():
        out = _run(plan, colour, opts)
        if a is None:
            return out
        if plan.alpha_steps:
            af = KF.to_float(a) if integer else a
            for m in plan.alpha_steps:
                af = m(af)
            a = KF.to_integer(af, x.dtype) if integer else af
        return torch.cat([out, a.to(out.dtype)], dim=1)


def _plain_tensor(x: object) -> bool:
    """A real tensor the engine may read (not a tracing proxy, a fake or meta tensor, a
    functorch wrapper or another subclass)."""
    if type(x) is not torch.Tensor or x.device.type == "meta":
        return False
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return not (wrapped is not None and wrapped(x))


def _needs_reference(module: nn.Module, x: object) -> bool:
    """Whether ``module(x)`` must run the module's plain definition instead of its plan: while
    torch traces, scripts, compiles or exports (the plan's NumPy kernels and OpenCV calls are
    invisible there, and the plain definition is made of standard operators), for inputs that
    are not plain tensors, and when a kernel buffer itself needs a gradient."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    if not _plain_tensor(x):
        return True
    return any(b.requires_grad for b in module.buffers())


def module_forward(module: nn.Module, x: Tensor) -> Tensor:
    """What ``forward`` of convkit's filters and chains runs: ``x`` (B, C, H, W) or (C, H, W),
    float, through the module's cached plan, as :func:`apply` (alpha not split, the engine's
    options in force). Differentiable w.r.t. ``x``: with autograd it runs on torch's methods.
    Results equal the module's plain definition within float rounding."""
    if _needs_reference(module, x):
        return reference(module, x)
    x4, added = KF.check_image(x)
    y = apply(module, x4)
    return y.squeeze(0) if added else y


def explain(module: nn.Module, x: Tensor, *, method: str | None = None,
            backend: str | None = None, fuse: bool | None = None) -> list[tuple[str, str, str]]:
    """Run ``module`` on ``x`` as :func:`apply` would and return, per executed operation,
    ``(name, backend, method)``: which kernels were fused and how each one ran."""
    colour, _ = _split_alpha(x, False)
    opts = merged(method, backend, fuse)
    trace: list = []
    with torch.no_grad():
        _run(get_plan(module, opts.fuse), colour, opts, trace)
    return [(s.name, s.backend, s.method) for s in trace]
