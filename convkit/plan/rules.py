"""The method rule and the engine's options: which method runs each linear kernel.

Torch-free: the command line plans with it before deciding whether torch is needed at all.

Methods. ``direct`` (2-D correlation), ``separable`` (two 1-D passes, rank 1 by SVD or the exact
factors of gaussian/box), ``lowrank`` (a sum of separable passes, for kernels of small SVD
rank), ``fft`` (torch's FFT, on any device) or ``box`` (running sums, O(1) per pixel, for
kernels whose taps are all equal).

Method rule (``method=None``). ``taps`` is kh*kw, ``r`` the SVD rank, ``n`` = kh + kw.

* CPU: the cheapest method by the cost model :func:`convkit.plan.fuse.method_costs`, fitted to
  ``python benchmarks/bench_filters.py --methods`` on the 2-core machine class (OpenCV's
  direct, separable, lowrank and box, and torch's fft, which is flat in the kernel size and
  wins from about 63x63 for separable kernels and 13x13 for dense ones). torch's fft is
  chosen for tensors only (:func:`cpu_fft`); NumPy images, the command line's, run OpenCV's
  cheapest method instead. An explicit ``backend="opencv"`` keeps to OpenCV's methods.
* torch backend (CUDA, and the CPU fallback), a threshold rule: box kernels -> ``box`` from
  121 taps on the CPU and from n >= 146 on CUDA (measured on an H100), else ``separable``;
  otherwise rank 1 with taps >= 9 -> ``separable``; taps <= 25 -> ``direct``;
  ``r * n * 2 <= taps`` -> ``lowrank``; taps >= 225 -> ``fft``; else ``direct``.

Overrides, innermost first: a ``method`` attribute on a :class:`~convkit.Kernel2d` (that kernel
is then never fused), ``apply(..., method=, backend=, fuse=)``, and the context manager
:func:`options`. A method that cannot run a kernel (``separable`` on a rank-2 kernel, ``box`` on
unequal taps) raises ValueError.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from .fuse import method_costs
from .ops import LinearOp

__all__ = ["Options", "options", "current", "merged", "choose_method", "check_method",
           "method_for", "cpu_fft", "METHODS", "BACKENDS"]

METHODS = ("direct", "separable", "lowrank", "fft", "box")
BACKENDS = ("auto", "torch", "opencv")

# --- the torch rule's thresholds (see the table above) ----------------------------------------
DIRECT_MAX_TAPS = 25
SEP_MIN_TAPS = 9
LOWRANK_FACTOR = 2  # lowrank when rank * (kh + kw) * LOWRANK_FACTOR <= taps
T_BOX_MIN_TAPS = 121
T_FFT_MIN_TAPS = 225
CUDA_BOX_MIN_N = 146  # box kernels on CUDA: running sums when kh + kw >= this


@dataclass(frozen=True)
class Options:
    method: str | None = None
    backend: str = "auto"
    fuse: bool = True
    compile: bool = os.environ.get("CONVKIT_COMPILE", "") not in ("", "0")
    triton: bool = os.environ.get("CONVKIT_TRITON", "") not in ("", "0")
    channels_last: bool | None = None  # None: on the CPU only


_OPTIONS: contextvars.ContextVar[Options] = contextvars.ContextVar(
    "convkit_engine_options", default=Options()  # noqa: B039 (frozen, immutable)
)


def checked(method: str | None, backend: str | None) -> None:
    if method is not None and method not in METHODS:
        raise ValueError(f"Invalid method {method!r}. Expected one of {', '.join(METHODS)}.")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"Invalid backend {backend!r}. Expected one of {', '.join(BACKENDS)}.")


@contextmanager
def options(*, method: str | None = None, backend: str | None = None, fuse: bool | None = None,
            compile: bool | None = None, triton: bool | None = None,
            channels_last: bool | None = None) -> Iterator[None]:
    """Set engine options for the calls inside the ``with`` block (this thread/task only).

    >>> with options(method="direct", backend="torch"):
    ...     pass  # every apply() here uses torch's direct correlation
    """
    checked(method, backend)
    cur = _OPTIONS.get()
    new = replace(
        cur,
        method=method if method is not None else cur.method,
        backend=backend if backend is not None else cur.backend,
        fuse=cur.fuse if fuse is None else bool(fuse),
        compile=cur.compile if compile is None else bool(compile),
        triton=cur.triton if triton is None else bool(triton),
        channels_last=cur.channels_last if channels_last is None else channels_last,
    )
    token = _OPTIONS.set(new)
    try:
        yield
    finally:
        _OPTIONS.reset(token)


# --- the rule ---------------------------------------------------------------------------------
def choose_method(op: LinearOp, backend: str) -> str:
    """The method the rule picks for ``op``: ``backend`` "opencv" (OpenCV's methods), "cpu"
    (the automatic choice on the CPU: OpenCV's methods or torch's fft), "torch" (torch on the
    CPU) or "cuda" (torch on a GPU)."""
    if backend in ("opencv", "cpu"):
        costs = method_costs(op)
        if backend == "opencv":
            costs.pop("fft", None)
        return min(costs, key=costs.get)
    kh, kw = op.shape
    taps = kh * kw
    if op.box_weight is not None and kh > 1 and kw > 1:
        if backend == "cuda":
            return "box" if kh + kw >= CUDA_BOX_MIN_N else "separable"
        return "box" if taps >= T_BOX_MIN_TAPS else "separable"
    if op.rank == 1 and kh > 1 and kw > 1 and taps >= SEP_MIN_TAPS:
        return "separable"
    if taps <= DIRECT_MAX_TAPS:
        return "direct"
    if op.rank * (kh + kw) * LOWRANK_FACTOR <= taps:
        return "lowrank"
    if taps >= T_FFT_MIN_TAPS:
        return "fft"
    return "direct"


def check_method(op: LinearOp, method: str) -> None:
    if method == "separable" and op.rank != 1:
        raise ValueError(
            f"method='separable' needs a rank-1 kernel; {op.name} ({op.shape[0]}x{op.shape[1]}) "
            f"has rank {op.rank}. Use lowrank or direct."
        )
    if method == "box" and op.box_weight is None:
        raise ValueError(
            f"method='box' needs a kernel whose taps are all equal; {op.name} has unequal taps"
        )



def current() -> Options:
    """The options in force in this thread/task."""
    return _OPTIONS.get()


def merged(method: str | None, backend: str | None, fuse: bool | None) -> Options:
    checked(method, backend)
    opts = _OPTIONS.get()
    if method is not None or backend is not None or fuse is not None:
        opts = replace(opts, method=method or opts.method, backend=backend or opts.backend,
                       fuse=opts.fuse if fuse is None else bool(fuse))
    return opts



def cpu_fft(op: LinearOp, opts: Options) -> bool:
    """Whether an op that OpenCV could run goes to torch's fft instead (automatic backend) when
    its image is a tensor. NumPy images do not (see :func:`convkit.backends.opencv.runs_plan`):
    such kernels run on OpenCV's best method there."""
    return opts.backend == "auto" and (op.method or opts.method or choose_method(op, "cpu")) \
        == "fft"


def method_for(op: LinearOp, backend: str, opts: Options, device: str = "cpu") -> str:
    rule = "cuda" if backend == "torch" and device == "cuda" else backend
    method = op.method or opts.method or choose_method(op, rule)
    if method not in METHODS:
        raise ValueError(f"Invalid method {method!r} on {op.name}. Expected one of "
                         f"{', '.join(METHODS)}.")
    check_method(op, method)
    if backend == "opencv" and method == "fft":
        raise ValueError("method='fft' runs on the torch backend; use backend='torch' (OpenCV "
                         "uses its own DFT for large kernels under method='direct')")
    return method

