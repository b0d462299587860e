"""OpenCV fast path on the CPU: the plan's operations run on each (H, W) plane of a (B, C, H, W)
array or tensor, without a transpose (every plane of a contiguous CHW batch is a contiguous 2-D
array). Torch-free: :func:`run_plan` runs a whole plan on NumPy arrays (the command line's
route); the engine hands it CPU tensors as NumPy views.

Semantics are the core's (see :mod:`convkit.nn.functional`), not OpenCV's defaults:

* Scale: an integer plane is in pixel units (0..255 or 0..65535), a float plane on the [0, 1]
  scale. The conversion is folded into the kernel (``kernel * out_max / in_max``) and the bias
  into OpenCV's ``delta``, so an integer image goes in and out in one pass.
* Rounding: OpenCV's ``saturate_cast`` rounds to nearest, ties to even, and saturates, as
  :func:`convkit.nn.functional.to_integer`. The ``negative`` mapping is applied before rounding:
  ``offset`` joins ``delta``; ``abs`` goes through a signed (16S or 32F) result and
  ``convertScaleAbs`` (``|round(y)| == round(|y|)`` for ties-to-even).
* Borders: reflect = BORDER_REFLECT_101, symmetric = BORDER_REFLECT, replicate, constant with
  fill 0 are passed to OpenCV; ``circular`` (filter2D has no BORDER_WRAP) and ``constant`` with
  another fill pre-pad with ``copyMakeBorder`` (which follows the same rules as
  :func:`convkit.nn.functional.pad`, also for pads wider than the image) and filter the interior.
* medianBlur always replicates: other borders pre-pad. It takes uint8 at any odd size, uint16
  and float32 at sizes 3 and 5 only.

Threads: the rows of the planes of a batch are shared among ``cv2.getNumThreads()`` worker
threads (at most :data:`MAX_WORKERS`, the calling thread one of them) in bands (see
:func:`_runs`); ``cv2.setNumThreads(1)`` makes the fast path single-threaded. :func:`own_threads`
sets the worker count itself and gives the workers the cores alone (OpenCV's own threading off,
process-wide), as the command line does; ``own_threads(0)`` undoes it. Every output row is
final once written by the one band it belongs to (rows that two workers' bands both wrote are
written again after both are done), so the result does not depend on the scheduling.

Results equal the torch path's up to float rounding (at most 1 grey level on integer images).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import cv2
import numpy as np

from ..kernels.morphology import reach as morph_reach
from ..kernels.specs import INT_MAX, OFFSET, border_index, dtype_name
from ..plan.ops import GradientOp, LinearOp, MedianOp, MorphOp, Plan
from ..plan.rules import Options, cpu_fft, method_for

__all__ = ["supports", "linear", "median", "gradient", "morphology_cv", "own_threads", "run_plan",
           "run_plan_image", "runs_plan", "CV_DTYPES"]

CV_DTYPES = ("uint8", "uint16", "float32")
# The integer dtypes' maxima: integer images are in pixel units, float ones on [0, 1].
_BORDER = {
    "reflect": cv2.BORDER_REFLECT_101,
    "symmetric": cv2.BORDER_REFLECT,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
    "circular": cv2.BORDER_WRAP,
}
_MORPH = {"erode": cv2.MORPH_ERODE, "dilate": cv2.MORPH_DILATE, "open": cv2.MORPH_OPEN,
          "close": cv2.MORPH_CLOSE, "gradient": cv2.MORPH_GRADIENT, "tophat": cv2.MORPH_TOPHAT,
          "blackhat": cv2.MORPH_BLACKHAT}

# Above this many taps filter2D on integer planes is slow (it stays in the spatial domain);
# on float32 planes OpenCV switches to its DFT, so large kernels convert the plane first.
FLOAT_DIRECT_MIN_TAPS = 121


# --- plane-parallel execution -----------------------------------------------------------------
MAX_WORKERS = 8
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (workers, pool)
_POOL_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # a forked child (a DataLoader worker) has none of the parent's threads, and a lock held by
    # one of them stays held
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def workers() -> int:
    """How many threads the fast path shares planes among: OpenCV's own thread setting, or
    the count given to :func:`own_threads`."""
    if _OWN_THREADS is not None:
        return _OWN_THREADS
    return max(1, min(cv2.getNumThreads(), MAX_WORKERS))


_OWN_THREADS: int | None = None
_OPENCV_THREADS: int | None = None  # OpenCV's count before own_threads, given back by 0


def own_threads(n: int | None = None) -> int:
    """Share the CPU work among ``n`` convkit worker threads (default: OpenCV's current
    thread count) and switch OpenCV's own threading off, process-wide, so that each worker's
    OpenCV call runs on its core alone instead of also splitting itself among OpenCV's threads
    on the same cores. The command line does this (it owns its process); a library caller
    may, knowing that its own OpenCV calls then run on one thread. ``own_threads(0)`` gives
    OpenCV its threads back (and the workers follow its count again). Returns the worker
    count.

    Measured 2026-12-05 on the 2-core VM, ``module(x)`` on a float (2, 3, 1080, 1920) batch:
    gaussian sigma 3 26 -> 18 ms, sharpen 11 -> 8.5 ms. (Switching OpenCV's threads off and
    back around every call instead made calls take 90 ms at times: OpenCV rebuilds its
    thread pool when the count changes.)
    """
    global _OWN_THREADS, _OPENCV_THREADS
    if n == 0:
        if _OPENCV_THREADS is not None:
            cv2.setNumThreads(_OPENCV_THREADS)
        _OWN_THREADS = _OPENCV_THREADS = None
        return workers()
    n = max(1, min(int(n) if n is not None else workers(), MAX_WORKERS))
    if _OPENCV_THREADS is None:
        _OPENCV_THREADS = cv2.getNumThreads()
    cv2.setNumThreads(1)
    _OWN_THREADS = n
    return n


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != n:
            # (a replaced pool's idle threads end once it is garbage collected; a caller that
            # still holds it finishes its jobs there)
            _POOL = (n, ThreadPoolExecutor(n, thread_name_prefix="convkit-cv"))
        return _POOL[1]


# Handing jobs to the worker threads and waiting for them costs about 0.2 ms a call on the
# 2-core machine; a small image is done sooner in the calling thread (OpenCV still uses its own
# threads inside a call where that pays). Measured 2026-11-27, RGB uint8, calling thread
# against the workers: sharpen 0.12 against 0.31 ms at 64x64, 0.34 against 0.50 at 256x256,
# 0.69 against 0.57 at 362x362; gaussian sigma 2, median 5, sobel magnitude, box 31 and the
# chain of 4 break even between 181x181 and 256x256 (which side wins changes from run to run).
# So: up to this many samples (3 x 209 x 209) run in the calling thread.
SERIAL_MAX_SAMPLES = 1 << 17


def small(arrays: Sequence[np.ndarray]) -> bool:
    """Whether filtering ``arrays`` is too little work to share out among threads."""
    return sum(a.size for a in arrays) <= SERIAL_MAX_SAMPLES


def parallel(fn: Callable[..., object], jobs: Sequence[tuple], serial: bool = False,
             caller: bool = False) -> None:
    """``fn(*job)`` for every job, shared among :func:`workers` threads (OpenCV releases the
    GIL), or all in the calling thread when ``serial``; the first exception is raised after all
    jobs have finished. With ``caller``, the calling thread runs the first job itself instead
    of waiting idle (one thread fewer to wake: about 0.05 ms a call on the 2-core VM), and an
    exception there is raised at once; give it only jobs that return to Python often (bands),
    so that Ctrl-C is not held up."""
    n = workers()
    if (serial or n <= 1 or len(jobs) <= 1
            or threading.current_thread().name.startswith("convkit-cv")):
        for job in jobs:
            fn(*job)
        return
    pool = _pool(n)
    futures = [pool.submit(fn, *job) for job in jobs[1 if caller else 0:]]
    if caller:
        fn(*jobs[0])  # (the workers finish theirs on their own if this raises)
    errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e


def supports(op, dtype: Any) -> bool:
    """Whether OpenCV can run ``op`` on planes of ``dtype`` (NumPy's or torch's)."""
    dtype = dtype_name(dtype)
    if dtype not in CV_DTYPES:
        return False
    if isinstance(op, (LinearOp, GradientOp, MorphOp)):
        return True
    if isinstance(op, MedianOp):
        if op.size % 2 == 0:
            return False
        return dtype == "uint8" or op.size in (3, 5)
    return False


def fill_fits(fill: float, top: float) -> bool:
    """Whether a constant border's ``fill`` is a value an integer image of maximum ``top``
    holds exactly (padding in that dtype would otherwise saturate or truncate it)."""
    return 0 <= fill <= top and fill == int(fill)


def _prepad(src: np.ndarray, pads, border: str, fill: float):
    """(source, OpenCV border, crop) so that OpenCV reads convkit's border pixels."""
    if border == "constant" and src.dtype != np.float32 and not fill_fits(
            fill, np.iinfo(src.dtype).max):
        src = src.astype(np.float32)  # copyMakeBorder would saturate the fill to the dtype
    if border == "circular" or (border == "constant" and fill != 0):
        t, b, l, r = pads
        padded = cv2.copyMakeBorder(src, t, b, l, r, _BORDER[border], value=(fill,) * 4)
        return padded, cv2.BORDER_CONSTANT, (t, l, src.shape[0], src.shape[1])
    return src, _BORDER[border], None


def _crop(a: np.ndarray, crop) -> np.ndarray:
    if crop is None:
        return a
    t, l, h, w = crop
    return a[t:t + h, l:l + w]


def _store(tmp: np.ndarray, dst: np.ndarray, negative: str | None, alpha: float = 1.0,
           delta: float = 0.0) -> None:
    """``dst = map(tmp * alpha + delta)``; for integer ``dst``: round half even, saturate.

    ``negative`` None means a float result (no mapping)."""
    if dst.dtype == np.float32:
        cv2.addWeighted(tmp, alpha, tmp, 0.0, delta, dst=dst, dtype=cv2.CV_32F)
        return
    depth = cv2.CV_8U if dst.dtype == np.uint8 else cv2.CV_16U
    if negative == "abs":
        if depth == cv2.CV_8U:
            cv2.convertScaleAbs(tmp, dst=dst, alpha=alpha, beta=delta)
            return
        tmp = cv2.addWeighted(tmp, alpha, tmp, 0.0, delta, dtype=cv2.CV_32F)
        np.abs(tmp, out=tmp)
        alpha, delta = 1.0, 0.0
    cv2.addWeighted(tmp, alpha, tmp, 0.0, delta, dst=dst, dtype=depth)


def _units(x: Any, out_dtype: Any) -> tuple[list, Any, list, tuple | None]:
    """Source arrays, the output (of ``x``'s kind: a NumPy array or a CPU tensor) and its
    arrays, in the layout of ``x`` (no copies):

    * planes: every (H, W) plane whose rows are contiguous (NCHW batches, channel slices);
    * HWC images: channels_last tensors with 3 or 4 channels (OpenCV filters interleaved
      channels natively), the output channels_last too.
    Anything else is made contiguous first. The last item is (source, output) as (N, H, W)
    arrays when the planes are one contiguous block, else None.
    """
    if isinstance(x, np.ndarray):
        b, c, h, w = x.shape
        if c in (3, 4) and x.transpose(0, 2, 3, 1)[0].flags.c_contiguous and (
                b == 1 or x.transpose(0, 2, 3, 1).flags.c_contiguous):
            # (H, W, C) images seen as (B, C, H, W): filtered interleaved, as they lie
            out = np.empty((b, h, w, c), dtype=dtype_name(out_dtype))
            return ([x[i].transpose(1, 2, 0) for i in range(b)], out.transpose(0, 3, 1, 2),
                    [out[i] for i in range(b)], None)
        if x.strides[-1] != x.itemsize or x.strides[-2] != w * x.itemsize:
            x = np.ascontiguousarray(x)
        out = np.empty(x.shape, dtype=dtype_name(out_dtype))
        srcs = [x[i, j] for i in range(b) for j in range(c)]
        block = (x.reshape(b * c, h, w), out.reshape(b * c, h, w)) \
            if x.flags.c_contiguous else None
        return srcs, out, [out[i, j] for i in range(b) for j in range(c)], block
    import torch  # (x is a tensor: torch is loaded)

    # The output is allocated by NumPy, which asks Linux for transparent huge pages
    # (madvise) where torch.empty does not: a fresh (2, 3, 1080, 1920) float32 result is
    # written in 4.7 ms instead of 10.2 (its page faults, which two workers writing at once
    # also wait on each other for).
    # (views are cut from NumPy arrays: indexing a tensor costs microseconds a plane)
    name = dtype_name(out_dtype)
    b, c, h, w = x.shape
    if not (x.stride(-1) == 1 and x.stride(-2) == w):
        if c in (3, 4) and x.is_contiguous(memory_format=torch.channels_last):
            hwc = np.empty((b, h, w, c), dtype=name)
            out = torch.from_numpy(hwc).permute(0, 3, 1, 2)  # channels_last (B, C, H, W)
            src = x.numpy().transpose(0, 2, 3, 1)
            return [src[i] for i in range(b)], out, [hwc[i] for i in range(b)], None
        x = x.contiguous()
    xn, on = x.numpy(), np.empty(x.shape, dtype=name)
    block = (xn.reshape(b * c, h, w), on.reshape(b * c, h, w)) if x.is_contiguous() else None
    return ([xn[i, j] for i in range(b) for j in range(c)], torch.from_numpy(on),
            [on[i, j] for i in range(b) for j in range(c)], block)


# --- linear kernels ---------------------------------------------------------------------------
def _kernels(op: LinearOp, s: float, dense: bool):
    """float32 kernels scaled by s, built once per scale: the dense kernel (``dense``; a
    separable op's is made only for filter2D) or the separable terms."""

    def make():
        if dense:
            return (op.kernel * s).astype(np.float32)
        return [((c * s).astype(np.float32).reshape(-1, 1), r.astype(np.float32).reshape(1, -1))
                for c, r in op.svd]

    return op.cached(("cv", s, dense), make)


def _filter(src, op: LinearOp, method: str, ddepth: int, s: float, delta: float, bt: int,
            dst=None):
    """One plane through ``method``; returns the result (ddepth), written to ``dst`` if given
    (direct and separable only)."""
    if method == "direct":
        k = _kernels(op, s, dense=True)
        return cv2.filter2D(src, ddepth, k, dst=dst, delta=delta, borderType=bt)
    terms = _kernels(op, s, dense=False)
    if method == "separable":
        col, row = terms[0]
        return cv2.sepFilter2D(src, ddepth, row, col, dst=dst, delta=delta, borderType=bt)
    if method == "lowrank":
        acc = None
        for col, row in terms:
            t = cv2.sepFilter2D(src, cv2.CV_32F, row, col, delta=delta if acc is None else 0.0,
                                borderType=bt)
            acc = t if acc is None else cv2.add(acc, t, dst=acc)
        return acc
    raise AssertionError(method)


def linear(x: Any, op: LinearOp, method: str, in_max: float, out_dtype: Any, out_max: float,
           negative: str | None) -> Any:
    """Run a LinearOp on every plane of ``x`` (uint8/uint16 in pixel units, or float32).

    ``negative`` None: float32 output on the [0, 1] scale; otherwise ``out_dtype`` is the final
    integer dtype and ``negative`` its mapping.
    """
    srcs, out, dsts, block = _units(x, out_dtype)
    one = step(op, method, in_max, out_max, negative)

    def run(src: np.ndarray, dst: np.ndarray) -> None:
        _linear_unit(src, dst, *one)

    if small(srcs):
        parallel(run, list(zip(srcs, dsts, strict=True)), serial=True)
        return out
    if block is not None and _stackable(block[0], op):
        # many small planes: one tall plane per worker, each a run of whole planes; where the
        # run is filtered through a float32 copy (see _straight), runs of at most
        # STACK_MAX_PIXELS, so that the copies stay the size of one large plane instead of
        # half the batch
        n, h, w = block[0].shape
        runs = min(workers(), n // STACK_MIN_PLANES)
        if not _straight(block[0].dtype, block[1].dtype, op, negative, method):
            runs = max(runs, -(-n // max(1, STACK_MAX_PIXELS // (h * w))))
        cuts = np.linspace(0, n, runs + 1).astype(int)
        parallel(lambda a, b: _stacked(block[0][a:b], block[1][a:b], op, run),
                 list(zip(cuts[:-1], cuts[1:], strict=False)))
        return out
    if _uneven(srcs, workers()) and _whole_calls(srcs[0], dsts[0], op, method, negative):
        # one interleaved image (or 3 on 2 workers): one call each, shared among OpenCV's
        # own threads
        parallel(run, list(zip(srcs, dsts, strict=True)), serial=True)
    else:  # (a band pre-padded with a constant fill is the plane's; a wrapping one is not)
        _runs(srcs, dsts, op.pads[0], op.pads[1], run, cached=4 * (srcs[0].dtype == np.float32),
              splits=method != "box", padded=not bandable(op), cut=op.border != "circular")
    return out


def _uneven(srcs: list, n: int) -> bool:
    """Whether ``srcs`` (planes or images) share out unevenly among ``n`` workers: a count
    that is not a multiple of ``n`` and too small for whole ones to even out (under 4 each)."""
    return len(srcs) % n != 0 and len(srcs) < 4 * n


# Many small planes: a worker's planes stacked into one tall plane cost one OpenCV call
# instead of one call each, which pays where the calls are short. Planes of up to
# STACK_PLANE_PIXELS are stacked; larger ones go in bands (_runs). Measured 2026-12-06 on the
# 2-core VM (AMD EPYC), uint8 RGB batches, stacked against bands: 64 images of 128x128
# sharpen 1.2-1.3 / 1.9 ms (with own_threads 1.27 / 3.51); 32 of 256x256 sharpen 2.07 / 2.12
# (1.81 / 2.20), gaussian sigma 2 4.76 / 3.81; 16 of 512x512 sharpen 3.85 / 3.06, gaussian
# sigma 2 8.2-9.6 / 6.6, an 11x11 kernel 37 / 29 ms. A stacked run that is filtered through a
# float32 copy holds at most STACK_MAX_PIXELS.
STACK_PLANE_PIXELS = 1 << 16
STACK_MAX_PIXELS = 1 << 20
STACK_MIN_PLANES = 4


# The linear methods that OpenCV shares among its own threads well on an interleaved image:
# with those threads on (a library caller's default), one call per image beats bands on
# convkit's workers. Measured 2026-12-06 on the 2-core VM (AMD EPYC), a 1080p RGB array, one
# call against the bands of _runs: sharpen uint8 1.29 / 1.36 ms, float32 2.09-2.24 / 2.12;
# gaussian sigma 2 2.91 / 3.40, float32 5.10 / 6.28; sigma [3, 1] 3.08 / 3.23. (erode 5 went
# the other way, 0.62-0.64 / 0.52 ms, so morphology stays in bands; boxFilter and medianBlur
# run on one thread.) Only where the images would be cut into bands (see _uneven): many images
# go whole to the workers, faster than one after the other on OpenCV's threads (16 RGB images
# of 512x512 through sharpen 5.5 against 9.0 ms).
OPENCV_THREADED_HWC = ("direct", "separable")


def _whole_calls(src: np.ndarray, dst: np.ndarray, op: LinearOp, method: str,
                 negative: str | None) -> bool:
    """Whether interleaved images run as one OpenCV call each in the calling thread (see
    :data:`OPENCV_THREADED_HWC`): OpenCV's threads are on and the call writes the image
    straight into its output."""
    return (src.ndim == 3 and _OWN_THREADS is None and workers() > 1
            and method in OPENCV_THREADED_HWC and _straight(src.dtype, dst.dtype, op, negative,
                                                             method))


def _straight(src: Any, dst: Any, op: LinearOp, negative: str | None,
              method: str = "direct") -> bool:
    """Whether :func:`_linear_unit` filters planes of ``src`` dtype straight into ``dst``
    (no float32 copy of the input, no intermediate result): stacked planes or whole images
    then cost no memory beyond the output, where a copy of a whole batch would. Only direct
    kernels under FLOAT_DIRECT_MIN_TAPS and separable passes, on a border OpenCV reads itself
    (no padded copy), write so; low-rank sums, box gains and padded borders go through
    float32."""
    small = method == "separable" or (
        method == "direct" and op.shape[0] * op.shape[1] < FLOAT_DIRECT_MIN_TAPS)
    return small and bandable(op) and src == dst and (negative in ("clip", "offset") or (
        negative is None and src == np.float32))


def _stackable(src3: np.ndarray, op: LinearOp) -> bool:
    """Whether :func:`_stacked` runs ``op`` on the (N, H, W) planes ``src3``: many small
    planes (where stacking pays for itself), taller than the rows it redoes, on a border it
    spells out row by row."""
    n, h, w = src3.shape
    t, b = op.pads[0], op.pads[1]
    return (n >= STACK_MIN_PLANES and h * w <= STACK_PLANE_PIXELS and h >= 2 * (t + b) + 1
            and op.border in ("reflect", "symmetric", "replicate"))


def _stacked(src3: np.ndarray, dst3: np.ndarray, op: LinearOp, run) -> None:
    """Filter the (N, H, W) planes stacked into one tall plane, then redo the rows next to each
    plane's top and bottom (where the tall plane read its neighbour instead of the border).
    Those rows come from strips that carry their border rows explicitly, stacked too, so that
    every output row reads only its own strip. Only for :func:`_stackable` planes."""
    n, h, w = src3.shape
    t, b = op.pads[0], op.pads[1]
    run(src3.reshape(n * h, w), dst3.reshape(n * h, w))
    if t == 0 and b == 0:
        return
    rows = border_index(h, t, b, op.border)  # index k is row k - t
    # rows [-t, t + b) give output rows [0, t); rows [h - b - t, h + b) give [h - b, h)
    for lo, hi, keep, target in ((0, 2 * t + b, slice(t, 2 * t), slice(0, t)),
                                 (h - b, h + b + t, slice(t, t + b), slice(h - b, h))):
        if keep.start == keep.stop:
            continue
        strips = np.ascontiguousarray(src3[:, rows[lo:hi], :])
        res = np.empty((n, hi - lo, w), dst3.dtype)
        run(strips.reshape(-1, w), res.reshape(-1, w))
        dst3[:, target, :] = res[:, keep, :]


def _linear_unit(src, dst, op: LinearOp, method: str, s: float, delta: float, fill: float,
                 negative: str | None) -> None:
    """One plane (or HWC image) through ``method`` into ``dst``."""
    src2, bt, crop = _prepad(src, op.pads, op.border, fill)
    if method == "box":
        _box(src2, dst, op, s, delta, bt, crop, negative)
        return
    big = op.shape[0] * op.shape[1] >= FLOAT_DIRECT_MIN_TAPS
    if method == "direct" and big and src2.dtype != np.float32:
        # OpenCV filters float32 planes through its DFT when the kernel is large.
        src2 = src2.astype(np.float32)
    direct_int = (negative in ("clip", "offset") and crop is None and method != "lowrank"
                  and src2.dtype == dst.dtype)
    if direct_int:
        _filter(src2, op, method, -1, s, delta, bt, dst=dst)
        return
    if negative == "abs" and dst.dtype == np.uint8 and method != "lowrank" and \
            src2.dtype == np.uint8:
        res = _filter(src2, op, method, cv2.CV_16S, s, delta, bt)
        cv2.convertScaleAbs(_crop(res, crop), dst=dst)
        return
    if method == "direct" and src2.dtype != np.float32:
        # filter2D from an integer plane to float32 is ~4x slower than converting the
        # plane first (measured: 5x5 on 1080p, 13 ms against 0.8 + 2.6 ms)
        src2 = src2.astype(np.float32)
    if negative is None and crop is None and method != "lowrank":
        _filter(src2, op, method, cv2.CV_32F, s, delta, bt, dst=dst)  # float result
        return
    res = _filter(src2, op, method, cv2.CV_32F, s, delta, bt)
    _store(_crop(res, crop), dst, negative)


def _box(src, dst, op: LinearOp, s, delta, bt, crop, negative) -> None:
    """A box mean. OpenCV's uint8 -> uint8 boxFilter (cv2.blur) is the nearest integer only for
    windows of odd area: for even areas it rounds in fixed point, ties up and, for areas of a
    power of two, up to a level off the exact mean (1x2: 1.0, 4x4: 0.5625; 9% of a random
    image's pixels at 4x4; measured with OpenCV 5.1 over every window up to 39x39). Those go
    through the float32 mean, rounded half to even as everywhere else (+0.6 ms a 1080p
    plane)."""
    kh, kw = op.shape
    gain = op.box_weight * kh * kw * s  # boxFilter(normalize=True) gives the mean
    exact_gain = abs(gain - 1.0) < 1e-6
    if (exact_gain and delta == 0 and crop is None and negative in ("clip", "offset")
            and src.dtype == dst.dtype and (src.dtype != np.uint8 or kh * kw % 2)):
        cv2.boxFilter(src, -1, (kw, kh), dst=dst, normalize=True, borderType=bt)
        return
    mean = cv2.boxFilter(src, cv2.CV_32F, (kw, kh), normalize=True, borderType=bt)
    _store(_crop(mean, crop), dst, negative, alpha=gain, delta=delta)


# --- median and gradient magnitude -------------------------------------------------------------
def median(x: Any, op: MedianOp, in_max: float, out_dtype: Any, out_max: float,
           negative: str | None) -> Any:
    """Median of each plane; the result keeps the values of ``x`` (then mapped/stored)."""
    srcs, out, dsts, _ = _units(x, out_dtype)
    p = op.size // 2
    fill = op.value * in_max
    s = out_max / in_max
    delta = OFFSET * out_max if negative == "offset" else 0.0

    def run(src: np.ndarray, dst: np.ndarray) -> None:
        if op.border == "replicate":
            med = cv2.medianBlur(src, op.size)
        else:
            padded = cv2.copyMakeBorder(src, p, p, p, p, _BORDER[op.border], value=(fill,) * 4)
            med = _crop(cv2.medianBlur(padded, op.size), (p, p, src.shape[0], src.shape[1]))
        if med.dtype == dst.dtype and s == 1.0 and delta == 0.0:
            np.copyto(dst, med)  # median values are inputs: abs and clip change nothing
        else:
            _store(med.astype(np.float32) if med.dtype != np.float32 else med, dst,
                   negative, alpha=s, delta=delta)

    # medianBlur runs on one thread: one interleaved image, or 3 planes on 2 workers, is shared
    # out in bands so that every worker has a share (a 1080p RGB array 7.5 -> 3.9 ms measured
    # with OpenCV's calls alone)
    _runs(srcs, dsts, p, p, run, cached=srcs[0].itemsize if srcs else 0, splits=False,
          cut=op.border != "circular")
    return out


def morphology(x: Any, op: MorphOp, in_max: float, out_dtype: Any, out_max: float,
               negative: str | None) -> Any:
    """Morphology of each plane (or interleaved image) with OpenCV. Erosions, dilations and
    their compositions keep the values of ``x``, and the differences (gradient, top hats) of
    two of them are exact, so integer planes are filtered as they are; a top hat whose
    negative values must survive (a float result, or abs/offset) and a constant fill between
    integer levels are filtered in float32, exactly the torch definition's arithmetic."""
    srcs, out, dsts, _ = _units(x, out_dtype)
    fill = op.value * in_max
    s = out_max / in_max
    delta = OFFSET * out_max if negative == "offset" else 0.0
    signed = op.op in ("tophat", "blackhat")

    def run(src: np.ndarray, dst: np.ndarray) -> None:
        as_is = src.dtype == np.float32 or (
            (op.border != "constant" or float(fill).is_integer())
            and not (signed and (dst.dtype != src.dtype or s != 1.0 or negative != "clip")))
        a = src if as_is else src.astype(np.float32)
        if (a.dtype == dst.dtype and a.shape == dst.shape and dst.flags.c_contiguous
                and s == 1.0 and delta == 0.0 and not signed):
            morphology_cv(a[None], op.op, op.fp, op.iterations, op.border, fill, dst[None])
            return
        res = morphology_cv(a[None], op.op, op.fp, op.iterations, op.border, fill)[0]
        if res.dtype == dst.dtype and s == 1.0 and delta == 0.0 and not signed:
            np.copyto(dst, res.reshape(dst.shape))
        else:
            tmp = res.astype(np.float32) if res.dtype != np.float32 else res
            _store(tmp.reshape(dst.shape), dst, negative, alpha=s, delta=delta)

    top, bottom, _, _ = morph_reach(op.fp, op.op, op.iterations)
    # (interleaved images too: erode 5 on a 1080p RGB array in bands 0.52 ms, in one call shared
    # among OpenCV's threads 0.62-0.64 ms; float32 2.1-2.2 against 2.7 ms)
    _runs(srcs, dsts, top, bottom, run, cut=op.border != "circular")
    return out


def gradient(x: Any, op: GradientOp, in_max: float, out_dtype: Any, out_max: float,
             negative: str | None, method_for) -> Any:
    """``sqrt(gx**2 + gy**2)`` per plane, computed in float32 and stored once."""
    srcs, out, dsts, _ = _units(x, out_dtype)
    s = out_max / in_max
    delta = OFFSET * out_max if negative == "offset" else 0.0
    methods = [method_for(lin) for lin in (op.gx, op.gy)]

    def run(src: np.ndarray, dst: np.ndarray) -> None:
        g = []
        for lin, method in zip((op.gx, op.gy), methods, strict=True):
            src2, bt, crop = _prepad(src, lin.pads, lin.border, lin.value * in_max)
            g.append(_crop(_filter(src2, lin, method, cv2.CV_32F, s, 0.0, bt), crop))
        mag = cv2.magnitude(np.ascontiguousarray(g[0]), np.ascontiguousarray(g[1]))
        _store(mag, dst, negative, delta=delta)

    # in bands: the two float32 derivatives and their magnitude stay in the cache
    top, bottom = max(op.gx.pads[0], op.gy.pads[0]), max(op.gx.pads[1], op.gy.pads[1])
    _runs(srcs, dsts, top, bottom, run, cached=4, cut=bandable(op.gx) and bandable(op.gy))
    return out


# --- chains of linear kernels, in bands of rows ------------------------------------------------
BANDABLE_BORDERS = ("reflect", "symmetric", "replicate", "constant")

# One step of a chain: (op, method, scale, delta, fill, negative), as _linear_unit takes them.
Step = tuple[LinearOp, str, float, float, float, "str | None"]


def step(op: LinearOp, method: str, in_max: float, out_max: float, negative: str | None) -> Step:
    """``op`` from values in units of ``in_max`` to units of ``out_max``: the kernel's scale,
    OpenCV's ``delta`` (bias and offset) and the constant border's fill."""
    delta = op.bias * out_max + (OFFSET * out_max if negative == "offset" else 0.0)
    return op, method, out_max / in_max, delta, op.value * in_max, negative


def bandable(op: LinearOp) -> bool:
    """Whether OpenCV reads ``op``'s border itself (no pre-padding), so that a band of rows cut
    from a plane is filtered as the plane would be, away from the band's cut edges."""
    return op.border in BANDABLE_BORDERS and (op.border != "constant" or op.value == 0)


def linear_chain(x: Any, steps: list[Step], out_dtype: Any) -> Any:
    """Run several linear kernels one after the other on every plane of ``x``, band by band.

    Each band of rows is cut from the plane with ``sum(top pads)`` rows above it and
    ``sum(bottom pads)`` below (fewer at the plane's edges, where the border rule applies as on
    the whole plane), run through every step with float32 intermediates, and its own rows are
    kept: every kept row reads only rows that the whole-plane computation would read, so the
    result is the same. Bands go to the worker threads in runs of consecutive bands; they are
    sized for the float32 intermediates (see :func:`_band_rows`).
    """
    srcs, out, dsts, _ = _units(x, out_dtype)
    top = sum(op.pads[0] for op, *_ in steps)
    bottom = sum(op.pads[1] for op, *_ in steps)
    _runs(srcs, dsts, top, bottom, lambda src, dst: _chain(src, dst, steps), cached=4)
    return out


# --- sharing rows out among the workers ---------------------------------------------------------
# OpenCV shares a call among its own threads when the image has more than this many pixels
# (rows x columns, whatever the channels and dtype; measured with OpenCV 5.1 on filter2D,
# sepFilter2D and erode: 546 rows of 1920 run on the calling thread alone, 547 on two). A band
# on one of convkit's workers must stay under it while those threads are on: over it, every
# worker's call wakes OpenCV's threads too, four threads on two cores. Measured 2026-12-06 on
# the 2-core VM, erode 5 on one 1080p plane: 0.19 ms alone, 0.24 ms shared among OpenCV's
# threads (an interleaved image gains from them: 0.66 -> 0.45 ms for 1080p RGB).
OPENCV_SPLITS_PIXELS = 1 << 20
# Where a band's data (a chain's or gradient's float32 intermediates, float32 planes, the
# median's input) should stay in a core's cache, a band holds at most this many bytes of it: a
# chain's float32 intermediates written to and read back from memory cost more than the
# filters themselves (1080p RGB: 21 ms against 8 ms, gaussian*box then a sparse 5x5).
# Measured 2026-12-06 on the 2-core VM: module(x) on a float32 (2, 3, 1080, 1920) batch,
# gaussian sigma 3, 17.7 ms in bands of this size against 19.4 in bands of 2**20 pixels;
# median 5 on a 1080p RGB array 2.9 against 5.4-7.0 ms in one band per worker. A linear
# kernel on integer images was faster in bands as large as allowed (box 31 on a 1080p RGB
# array with own_threads: 2.2-2.35 against 2.5 ms).
BAND_BYTES = 1 << 20
# Where two workers' shares meet inside a plane, an operation that reads at least this many
# rows above and below (top + bottom) filters the bands on either side of the meeting through
# a buffer, copying their output once, in parallel; one that reads fewer lets both bands
# write straight and filters the few rows they both wrote again afterwards, on one thread.
# Measured 2026-12-06 on the 2-core VM, 1080p RGB, fixed again against buffered: box 101
# 2.6-3.3 / 2.3-2.4 ms, box 31 2.1-2.2 / 2.0-2.2; erode 5 0.45-0.51 / 0.48-0.64, sharpen
# 1.26-1.40 / 1.30-1.45, gaussian sigma 2 on the array 2.89-2.93 / 2.95-3.15.
MEET_BUFFER_ROWS = 16


def _band_rows(src: np.ndarray, reach: int, cached: int, splits: bool) -> int:
    """How many rows of ``src`` (a plane, or an interleaved image) one band has for the
    workers: with ``cached`` (the bytes per sample of the data that should stay in the cache),
    at most :data:`BAND_BYTES` of it; for OpenCV functions that share a call among OpenCV's
    threads (``splits``: not ``boxFilter`` and ``medianBlur``, which run on one thread),
    while those threads are on, under :data:`OPENCV_SPLITS_PIXELS` with the ``reach`` rows
    that the band's call reads besides its own. Otherwise a band is a worker's whole share of a
    plane: each band's call reads its ``reach`` again (box 101 on a 1080p plane in bands of
    2**20 pixels cost 1.5x-1.7x box 11, in whole shares 1.2x)."""
    rows = src.shape[0]
    if cached:
        rows = min(rows, BAND_BYTES // (int(np.prod(src.shape[1:])) * cached))
    if splits and _OWN_THREADS is None and workers() > 1:
        rows = min(rows, OPENCV_SPLITS_PIXELS // src.shape[1] - reach)
    return max(1, rows)


def _runs(srcs: list, dsts: list, top: int, bottom: int,
          fn: Callable[[np.ndarray, np.ndarray], None], *, cached: int = 0, splits: bool = True,
          padded: bool = False, cut: bool = True) -> None:
    """``fn(src, dst)`` on every plane (or image), which filters whole arrays of rows: the
    planes' rows are shared evenly among the workers, one run of consecutive rows each (which
    may cross from one plane into the next), and each run is filtered in bands written
    straight into the output (no copy), of :func:`_band_rows` rows (``cached`` and ``splits``
    as there; ``padded``: ``fn`` pads a band by ``top`` and ``bottom`` rows once more). The
    calling thread takes the first run. Too little work to share out (see :func:`small`) runs
    in the calling thread; without ``cut`` (a border that a band cannot keep: a circular one
    would wrap round the band), whole planes go to the workers.

    A band is filtered together with the ``top`` rows above it and ``bottom`` below that it
    reads (fewer at the plane's edges, where the plane's border rule applies), and its call
    writes those rows too, with values of the wrong border. Above a band lie rows of the
    worker's previous band: they are kept aside and put back. Below it lie rows that the
    worker's next band writes again. Where two workers' runs meet inside a plane, the bands
    on either side go through a buffer (:func:`_band`), or, for an operation that reads few
    rows, write straight and the rows that both wrote are filtered again once both are done
    (see :data:`MEET_BUFFER_ROWS`). Every kept row reads only rows that the whole-plane
    computation reads, so the result is the same."""
    if small(srcs) or not cut:
        parallel(fn, list(zip(srcs, dsts, strict=True)), serial=small(srcs))
        return
    h = srcs[0].shape[0]
    n = workers()
    # no band shorter than this: a band of a row or two, filtered on its own with its border
    # rows, is not the plane's (OpenCV's rule for images shorter than the kernel differs), and
    # a chain's bottom border rule reads rows that its earlier steps computed right
    shortest = max(16, 2 * (top + bottom))
    rows = max(_band_rows(srcs[0], (top + bottom) * (2 if padded else 1), cached, splits),
               shortest)
    total = len(srcs) * h
    bounds = [i * total // n for i in range(n + 1)]
    for i in range(1, n):  # no run starts or ends a few rows from a plane's edge
        r = bounds[i] % h
        if 0 < r < shortest or 0 < h - r < shortest:
            bounds[i] += -r if r < h / 2 else h - r
    bounds = sorted(set(bounds))
    buffered = top + bottom >= MEET_BUFFER_ROWS
    jobs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        bands = []
        while a < b:  # the run's share of each plane it crosses, cut into bands
            p, r0 = divmod(a, h)
            r1 = min(h, r0 + b - a)
            a += r1 - r0
            k = max(1, min(-(-(r1 - r0) // rows), (r1 - r0) // shortest))
            for j in range(k):
                lo, hi = r0 + (r1 - r0) * j // k, r0 + (r1 - r0) * (j + 1) // k
                s0, s1 = max(0, lo - top), min(h, hi + bottom)
                if buffered and ((j == 0 and r0 > 0) or (j == k - 1 and r1 < h)):
                    bands.append(partial(_band, srcs[p], dsts[p], lo, hi, top, bottom, fn))
                else:  # (the rows above a band are its run's own after its first band)
                    bands.append(partial(_straight_band, srcs[p][s0:s1], dsts[p][s0:s1],
                                         lo - s0 if j else 0, fn))
        jobs.append((bands,))

    def run(bands: list) -> None:
        for band in bands:
            band()

    parallel(run, jobs, caller=True)
    if top + bottom and not buffered:
        for b in bounds[1:-1]:  # where two runs meet inside a plane
            p, r = divmod(b, h)
            if r:
                _band(srcs[p], dsts[p], max(0, r - max(top, shortest // 2)),
                      min(h, r + max(bottom, shortest // 2)), top, bottom, fn)


def _straight_band(src: np.ndarray, dst: np.ndarray, above: int,
                   fn: Callable[[np.ndarray, np.ndarray], None]) -> None:
    """``fn(src, dst)`` on a band with the rows it reads, written straight into the output;
    the first ``above`` rows of ``dst``, another band's, are kept as they were."""
    kept = dst[:above].copy() if above else None
    fn(src, dst)
    if above:
        dst[:above] = kept


def _band(src: np.ndarray, dst: np.ndarray, r0: int, r1: int, top: int, bottom: int,
          fn: Callable[[np.ndarray, np.ndarray], None]) -> None:
    """Rows [r0, r1) of ``dst``: ``fn`` on the rows of ``src`` they read (the plane's border
    rule applies where those reach past the plane), then the band's own rows kept."""
    s0, s1 = max(0, r0 - top), min(src.shape[0], r1 + bottom)
    if s0 == r0 and s1 == r1:
        fn(src[r0:r1], dst[r0:r1])
        return
    buf = np.empty(src[s0:s1].shape, dst.dtype)
    fn(src[s0:s1], buf)
    dst[r0:r1] = buf[r0 - s0:r1 - s0]


def _chain(src: np.ndarray, dst: np.ndarray, steps: list[Step]) -> None:
    """``steps`` one after the other, float32 in between."""
    cur = src
    for one in steps[:-1]:
        buf = np.empty(cur.shape, np.float32)
        _linear_unit(cur, buf, *one)
        cur = buf
    _linear_unit(cur, dst, *steps[-1])


# --- a whole plan on NumPy arrays ----------------------------------------------------------
def scales(plan: Plan, dtype: Any):
    """Per operation of ``plan`` on images of ``dtype``: (in_max, out_dtype, out_max,
    negative). Integer images are in pixel units going in and coming out of the last operation;
    everything between is float32 on [0, 1] (float images keep their dtype)."""
    name = dtype_name(dtype)
    top = INT_MAX.get(name)
    in_max = top or 1.0
    n = len(plan.ops)
    for i in range(n):
        if i == n - 1 and top:
            yield in_max, name, top, plan.negative
        else:
            yield in_max, "float32" if top else name, 1.0, None
        in_max = 1.0


def past_int32(plan: Plan, dtype: Any) -> bool:
    """Whether a response of ``plan`` on an integer image can pass 2**30 grey levels (a gain
    or offset of millions). OpenCV rounds such a float through a 32-bit int, which wraps:
    saturating to 255 gives 0 there. The torch path saturates them right."""
    top = INT_MAX.get(dtype_name(dtype))
    if top is None:
        return False
    gain, bias = 1.0, 0.0  # bound of |response| on the [0, 1] scale: gain * 1 + bias
    for op in plan.ops:
        lins = ([op] if isinstance(op, LinearOp) else
                [op.gx, op.gy] if isinstance(op, GradientOp) else [])
        if lins:
            l1 = sum(k.l1 for k in lins)
            gain, bias = gain * l1, bias * l1 + abs(getattr(op, "bias", 0.0))
    return (gain + bias + 1.0) * top >= 2**30


def runs_plan(plan: Plan, dtype: Any, opts: Options, *, torch_fft: bool) -> bool:
    """Whether :func:`run_plan` runs the whole of ``plan`` on images of ``dtype`` as the
    engine's automatic choice would: every operation on OpenCV (none needs a module, or a
    response past int32, or torch's FFT by name), the backend not forced to torch.

    ``torch_fft``: whether a kernel that the cost rule gives to torch's FFT leaves OpenCV
    (tensors, torch loaded: True). NumPy images (the command line, ``process`` on arrays) pass
    False and run such kernels on OpenCV's best method (filter2D's own DFT on float32 from
    11x11, or separable passes): importing torch for them cost about 2 s and 650 MB, more than
    the FFT saves on a photo (1080p RGB, 2026-12-06: gaussian sigma 16 38.5 ms on OpenCV
    against 35.5 ms by torch's FFT, sigma 32 112 against 54 ms)."""
    if opts.backend == "torch" or not plan.ops or (opts.backend == "auto"
                                                   and past_int32(plan, dtype)):
        return False
    for op in plan.ops:
        if not supports(op, dtype):
            return False
        if isinstance(op, LinearOp) and ((torch_fft and cpu_fft(op, opts))
                                         or (op.method or opts.method) == "fft"):
            return False
    return True


def run_plan(plan: Plan, x: Any, opts: Options, trace: list | None = None) -> Any:
    """Run ``plan`` on a (B, C, H, W) uint8, uint16 or float32 NumPy array or CPU tensor, as
    the engine does on the CPU (see :func:`runs_plan` for which plans); returns a new array (or
    tensor) of ``x``'s dtype. ``trace`` collects (name, "opencv", method) per operation.

    A plan of several linear kernels goes through the image in bands of rows, every kernel on
    one band before the next (:func:`linear_chain`): the float32 intermediates stay in the
    cache."""
    ops = plan.ops
    steps = list(scales(plan, x.dtype))
    if len(ops) >= 2 and all(isinstance(op, LinearOp) and bandable(op) for op in ops):
        chain = []
        for op, (in_max, _, out_max, negative) in zip(ops, steps, strict=True):
            method = method_for(op, "opencv", opts)
            if trace is not None:
                trace.append((op.name, "opencv", method))
            chain.append(step(op, method, in_max, out_max, negative))
        return linear_chain(x, chain, x.dtype)
    cur = x
    own = Options(method=None, backend=opts.backend, fuse=opts.fuse)
    for op, (in_max, out_dtype, out_max, negative) in zip(ops, steps, strict=True):
        if isinstance(op, LinearOp):
            method = method_for(op, "opencv", opts)
            cur = linear(cur, op, method, in_max, out_dtype, out_max, negative)
        elif isinstance(op, MedianOp):
            method = "median"
            cur = median(cur, op, in_max, out_dtype, out_max, negative)
        elif isinstance(op, MorphOp):
            method = "morphology"
            cur = morphology(cur, op, in_max, out_dtype, out_max, negative)
        else:
            method = "gradient"  # (its kernels run by their own rule, whatever method=)
            cur = gradient(cur, op, in_max, out_dtype, out_max, negative,
                           lambda lin: method_for(lin, "opencv", own))
        if trace is not None:
            trace.append((op.name, "opencv", method))
    return cur


def run_plan_image(plan: Plan, chw: np.ndarray, alpha: bool, opts: Options,
                   trace: list | None = None) -> np.ndarray:
    """:func:`run_plan` on one (C, H, W) image; an alpha channel (the last) passes through
    (these plans do not pool). With alpha the result is a view of an interleaved (H, W, C)
    array, as the encoders and (H, W, C) callers take it."""
    colour = chw[:-1] if alpha else chw
    out = run_plan(plan, colour[None], opts, trace)[0]
    if not alpha:
        return out
    return np.concatenate([out.transpose(1, 2, 0), chw[-1:].transpose(1, 2, 0)],
                          axis=2).transpose(2, 0, 1)


# --- gradients: the adjoint of a linear kernel, on NumPy planes ----------------------------
def _flipped(op: LinearOp) -> LinearOp:
    """The kernel turned by 180 degrees, zero border: its correlation is ``op``'s adjoint."""
    f = op.factors
    if f is not None and not op.dense:  # the made kernel turns with its factors
        return LinearOp(None, 0.0, "constant", 0.0, None, f"{op.name}'",
                        (f[0][::-1].copy(), f[1][::-1].copy()))
    return LinearOp(op.kernel[::-1, ::-1].copy(), 0.0, "constant", 0.0, None, f"{op.name}'",
                    None if f is None else (f[0][::-1].copy(), f[1][::-1].copy()))


def linear_adjoint(g: np.ndarray, op: LinearOp, opts: Options) -> np.ndarray:
    """The gradient w.r.t. the input of ``y = correlate(pad(x), kernel) + bias`` (float32
    (B, C, H, W) planes), given ``g`` = dL/dy: the zero-extended ``g`` correlated with the
    flipped kernel gives dL/d(padded x); each padded pixel's share then goes back to the pixel
    the border rule copied it from (a constant border's pixels are no input's)."""
    t, b, l, r = op.pads
    n, c, h, w = g.shape
    ext = np.zeros((n, c, h + t + b, w + l + r), np.float32)
    ext[:, :, b:b + h, r:r + w] = g  # (the adjoint's anchor is the far corner)
    flip = op.cached("flipped", lambda: _flipped(op))
    gp = linear(ext, flip, method_for(flip, "opencv", Options(backend="opencv")), 1.0,
                "float32", 1.0, None)
    if op.border == "constant":
        return np.ascontiguousarray(gp[:, :, t:t + h, l:l + w])
    rows = border_index(h, t, b, op.border)
    cols = border_index(w, l, r, op.border)
    out = gp[:, :, t:t + h, :].copy()
    for k in (*range(t), *range(t + h, t + h + b)):
        out[:, :, rows[k], :] += gp[:, :, k, :]
    res = out[:, :, :, l:l + w].copy()
    for k in (*range(l), *range(l + w, l + w + r)):
        res[:, :, :, cols[k]] += out[:, :, :, k]
    return res


def differentiable(plan: Plan, opts: Options) -> bool:
    """Whether :func:`run_plan` and its adjoints give ``plan``'s gradient on float32 planes:
    linear kernels and gradient magnitudes, automatic backend."""
    return opts.backend == "auto" and all(isinstance(op, (LinearOp, GradientOp))
                                          for op in plan.ops) and runs_plan(plan, "float32", opts,
                                                                            torch_fft=True)


def morphology_cv(planes: np.ndarray, op: str, fp: np.ndarray, iterations: int, border: str,
                  value: float, out: np.ndarray | None = None) -> np.ndarray:
    """``op`` on a (N, H, W) array of planes, or of (H, W, C) images, with OpenCV (uint8,
    uint16 or float32); ``value`` on the array's scale. Circular extends the image by the
    operation's reach first (OpenCV's morphology has no wrapping border) and crops it.
    ``out``: a C-contiguous array like ``planes`` to write into (OpenCV writes there
    directly: a fresh 1080p image and its copy cost more than the erosion itself)."""
    if out is None:
        out = np.empty_like(planes)
    if border == "circular":
        t, b, left, r = morph_reach(fp, op, iterations)
        h, w = planes.shape[1:3]
        rows = np.arange(-t, h + b) % h
        cols = np.arange(-left, w + r) % w
        for i in range(planes.shape[0]):
            wide = np.ascontiguousarray(planes[i][np.ix_(rows, cols)])
            res = cv2.morphologyEx(wide, _MORPH[op], fp, iterations=iterations,
                                   borderType=cv2.BORDER_REPLICATE)
            out[i] = res[t:t + h, left:left + w].reshape(out[i].shape)
        return out
    if border == "none":
        kw = {"borderType": cv2.BORDER_CONSTANT}  # with OpenCV's never-winning value
    else:
        kw = {"borderType": _BORDER[border], "borderValue": (value,) * 4}
    for i in range(planes.shape[0]):
        src = np.ascontiguousarray(planes[i])
        if out.flags.c_contiguous:
            cv2.morphologyEx(src, _MORPH[op], fp, dst=out[i], iterations=iterations, **kw)
        else:
            out[i] = cv2.morphologyEx(src, _MORPH[op], fp, iterations=iterations, **kw)
    return out
