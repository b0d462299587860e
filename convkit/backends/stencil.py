"""One-pass stencil kernels for CUDA, written in Triton: ``options(triton=True)``.

Eager torch runs a small direct kernel on an integer image as several float32 passes over
memory (convert, pad, convolve, scale, round, saturate, convert back); ``torch.compile`` fuses
them but, for a 3x3 on 1080p uint8, still moves several times the bytes of one read and one
write. The kernel here (:mod:`convkit.backends._stencil_kernel`) reads the image once and writes the
result once: each program filters a tile of one plane (border tiles map the source rows and
columns of each tap through the border rule), accumulates in float32, or exactly in int32 for
integer weights on an integer image, and stores float32 or the rounded, saturated integer
(round half to even, as the core defines it). Zero taps are skipped at compile time.

It runs direct kernels of up to :data:`MAX_TAPS` taps (any sides, odd or even, any border mode,
images smaller than the kernel) and the gradient magnitude of two such kernels, on uint8,
uint16 and float32 images in any memory layout. Anything else goes to the torch methods.

The results equal the torch path's to float rounding (1 grey level at a rounding tie). Under
``TRITON_INTERPRET=1`` Triton runs the same kernel on the CPU through NumPy: that is how the
test suite checks it on machines without a GPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor

from ..kernels.specs import INT_MAX, OFFSET

__all__ = ["MAX_TAPS", "Weights", "available", "runs", "prepare", "correlate", "tap_mask"]

MAX_TAPS = 49
BLOCK = (16, 128, 4)  # rows, columns per program, warps; benchmarks/bench_gpu.py sweeps these
BORDERS = {"constant": 0, "replicate": 1, "reflect": 2, "symmetric": 3, "circular": 4}
_KINDS = {torch.uint8: 0, torch.uint16: 1, torch.float32: 2}
_NEGATIVE = {None: 0, "clip": 0, "abs": 1, "offset": 2}
_INT32 = 2**31 - 1
_INPUT_MAX = {getattr(torch, name): int(top) for name, top in INT_MAX.items()}


def interpreted() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


@cache
def _kernel():
    """The compiled kernel, or None when Triton is missing (imported on first use only)."""
    try:
        from ._stencil_kernel import stencil
    except ImportError:
        return None
    return stencil


def available(device: torch.device) -> bool:
    """Whether the stencil can run on ``device``: CUDA with Triton installed, or any device
    under the interpreter."""
    if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
        return False
    return _kernel() is not None


def runs(x: Tensor, kernel_shape: tuple[int, int], out_dtype: torch.dtype,
         negative: str | None) -> bool:
    """Whether :func:`correlate` takes this call (else the caller uses the torch methods)."""
    kh, kw = kernel_shape
    if kh * kw > MAX_TAPS or x.dim() != 4 or x.requires_grad or x.dtype not in _KINDS:
        return False
    if negative is not None and out_dtype not in (torch.uint8, torch.uint16):
        return False
    if negative is None and out_dtype != torch.float32:
        return False
    # 32-bit offsets inside a plane of x and of the dense result; one grid row of programs per
    # plane (CUDA allows 65535)
    if any(s * n > _INT32 for s, n in zip(x.stride()[2:], x.shape[2:], strict=True)):
        return False
    if x.shape[1] * x.shape[2] * x.shape[3] > _INT32:
        return False
    if x.shape[0] * x.shape[1] > 65535 or -(-x.shape[2] // BLOCK[0]) > 65535:
        return False
    return available(x.device)


@dataclass(frozen=True)
class Weights:
    """Kernels scaled and flattened for :func:`correlate`, on one device (build once, reuse).

    ``whole`` is an int32 copy of a single kernel whose weights are all whole numbers: the
    kernel then sums exactly in integers (sharpen, laplacian, the derivative kernels,
    unnormalised boxes) where :func:`correlate` finds that the sum fits int32 (``l1``, the sum
    of the weights' magnitudes, times the largest sample or fill)."""

    shape: tuple[int, int]
    floats: tuple[Tensor, ...]
    whole: Tensor | None
    l1: float
    taps: tuple[int, ...]  # per kernel, its non-zero taps as bits (see :func:`tap_mask`)


def tap_mask(kernel: np.ndarray) -> int:
    """The non-zero taps of a kernel as the bits of an int, bit ``i * kw + j`` for tap (i, j):
    the kernel skips the others at compile time."""
    return sum(1 << n for n, v in enumerate(np.asarray(kernel).reshape(-1)) if v != 0)


def prepare(kernels: list[np.ndarray], s: float, device: torch.device) -> Weights:
    """``k * s`` for each of one or two same-shaped kernels (anchored at (kh // 2, kw // 2))."""
    if len(kernels) not in (1, 2) or any(k.shape != kernels[0].shape for k in kernels):
        raise ValueError("the stencil takes one kernel or two of the same shape")
    scaled = [np.ascontiguousarray(k, dtype=np.float64).reshape(-1) * s for k in kernels]
    floats = tuple(torch.as_tensor(k, dtype=torch.float32, device=device) for k in scaled)
    k = scaled[0]
    l1 = float(np.abs(k).sum())
    whole = None
    if len(scaled) == 1 and np.isfinite(l1) and np.array_equal(k, np.round(k)) and l1 < 2**31:
        whole = torch.as_tensor(k, dtype=torch.int32, device=device)
    taps = tuple(tap_mask(f.cpu().numpy()) for f in floats)  # a weight that float32 flushes
    return Weights(tuple(kernels[0].shape), floats, whole, l1, taps)  # to 0 is skipped, too


def _whole(v: float) -> bool:
    return float(v).is_integer() and abs(v) < 2**24


def correlate(x: Tensor, weights: Weights, border: str, fill: float, bias: float,
              out_dtype: torch.dtype, top: float, negative: str | None,
              block: tuple[int, int, int] | None = None) -> Tensor:
    """``correlate(pad(x), k * s) + bias`` in one pass, for one kernel, or the magnitude
    ``sqrt(a**2 + b**2) + bias`` of two (see :func:`prepare`).

    Args:
        x: (B, C, H, W) uint8, uint16 or float32, any strides.
        weights: the scaled kernels, from :func:`prepare`, on x's device.
        border: a convkit border mode; fill: the constant border's value in x's units.
        bias: added after the sum, in output units.
        out_dtype: float32 (then ``negative`` is None) or the integer dtype of the result.
        top: the integer dtype's maximum; negative: "clip", "abs" or "offset" (integer out).
        block: (rows, columns, warps) per program; :data:`BLOCK` by default.

    Returns:
        (B, C, H, W) ``out_dtype`` tensor, in x's memory layout.
    """
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("convkit's stencil kernels need Triton (pip install triton)")
    kh, kw = weights.shape
    b, c, h, w = x.shape
    y = torch.empty_like(x, dtype=out_dtype)
    if y.numel() == 0:
        return y
    offset = OFFSET * top
    exact = (weights.whole is not None and x.dtype in (torch.uint8, torch.uint16)
             and negative is not None and _whole(fill) and _whole(bias)
             and (negative != "offset" or _whole(offset))
             and weights.l1 * max(_INPUT_MAX[x.dtype], abs(fill)) + abs(bias) + abs(offset)
             < 2**31 - 1)  # every partial sum fits int32
    wt = [weights.whole] if exact else list(weights.floats)
    num = int if exact else float
    bh, bw, warps = block or BLOCK
    xv = x.view(torch.int16) if x.dtype == torch.uint16 else x
    yv = y.view(torch.int16) if out_dtype == torch.uint16 else y
    grid = (-(-w // bw), -(-h // bh), b * c)
    with torch.cuda.device(x.device) if x.device.type == "cuda" else nullcontext():
        kernel[grid](
            xv, yv, wt[0], wt[-1], 1,
            c, h, w, *x.stride(), *y.stride(),
            *(num(v) for v in (fill, bias, offset, top)),
            KH=kh, KW=kw, AY=kh // 2, AX=kw // 2, BORDER=BORDERS[border],
            IN_KIND=_KINDS[x.dtype], OUT_KIND=_KINDS[out_dtype],
            NEG=_NEGATIVE[negative], TWO=len(wt) == 2, UNIT=x.stride(3) == 1, INT=exact,
            TAPS=weights.taps[0], TAPS2=weights.taps[1] if len(wt) == 2 else 0,
            BH=bh, BW=bw, num_warps=warps)
    return y


def compile_for(arch: int = 90, *, dtype: torch.dtype = torch.uint8,
                out_dtype: torch.dtype = torch.uint8, shape: tuple[int, int] = (3, 3),
                border: str = "reflect", negative: str | None = "clip", two: bool = False,
                whole: bool = False, unit: bool = True,
                block: tuple[int, int, int] | None = None,
                taps: tuple[int, ...] | None = None):
    """Compile the stencil for an NVIDIA GPU of architecture ``sm_<arch>`` without one, as a
    launch on a contiguous 1920-wide image with these arguments would specialise it (Triton's
    ahead-of-time path: ``triton.compile`` on an ``ASTSource``). ``whole``: the exact int32
    path; ``taps``: each kernel's :func:`tap_mask` (every tap by default). Returns Triton's
    compiled kernel; ``.asm["cubin"]`` is the machine code.

    For the tests (errors that only the compiler sees, not the interpreter) and
    ``benchmarks/stencil_sass.py`` (instructions per pixel, without a GPU)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._stencil_kernel import stencil

    ptr = {torch.uint8: "*u8", torch.uint16: "*i16", torch.float32: "*fp32"}
    num = "i32" if whole else "fp32"
    kh, kw = shape
    bh, bw, warps = block or BLOCK
    taps = taps or (2 ** (kh * kw) - 1,) * (1 + two)
    types = dict(x_ptr=ptr[dtype], y_ptr=ptr[out_dtype], w_ptr="*i32" if whole else "*fp32",
                 w2_ptr="*i32" if whole else "*fp32", fill=num, bias=num, offset=num, top=num)
    const = dict(KH=kh, KW=kw, AY=kh // 2, AX=kw // 2, BORDER=BORDERS[border],
                 IN_KIND=_KINDS[dtype], OUT_KIND=_KINDS[out_dtype], NEG=_NEGATIVE[negative],
                 TWO=two, UNIT=unit, INT=whole, TAPS=taps[0], TAPS2=taps[1] if two else 0,
                 BH=bh, BW=bw)
    if unit:  # Triton's launcher specialises an int argument equal to 1 into a constant
        const.update(xsw=1, ysw=1)
    names = stencil.arg_names
    signature = {n: "constexpr" if n in const else types.get(n, "i32") for n in names}
    aligned = ("x_ptr", "y_ptr", "w_ptr", "w2_ptr", "W", "xsb", "xsc", "xsh", "ysb", "ysc",
               "ysh")  # pointers aligned to 16 bytes, ints divisible by 16
    src = ASTSource(stencil, signature,
                    constexprs={(names.index(n),): v for n, v in const.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
