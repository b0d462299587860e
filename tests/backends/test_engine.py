"""The execution engine: every method and backend equals the reference direct depthwise
correlation (convkit.functional.filter2d, itself checked against OpenCV in test_filters.py), for
every border mode, odd and even kernels, images smaller than the kernel, uint8/uint16/float;
fusion is exact where the engine fuses. No timings here (see benchmarks/bench_filters.py)."""

from __future__ import annotations

import os
import sys
import threading

import cv2
import numpy as np
import pytest
import torch
from conftest import traced_peak

import convkit
from convkit.backends import engine, stencil
from convkit.backends import module_plans as fusion
from convkit.backends import opencv as opencv_backend
from convkit.nn import functional as KF
from convkit.nn.modules import GradientMagnitude, Kernel2d, Median
from convkit.nn.modules import reference as plain
from convkit.plan import fuse as fuse_mod
from convkit.plan.ops import LinearOp, MedianOp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


BORDERS = ["reflect", "replicate", "constant", "circular", "symmetric"]
SIZES = [(23, 29), (3, 2), (1, 1)]  # the last two are smaller than every kernel below
R = np.random.default_rng(7)


def _kernels() -> dict[str, np.ndarray]:
    g = np.exp(-((np.arange(7) - 3) ** 2) / 4.0)
    u, v = R.normal(size=(2, 9)), R.normal(size=(2, 9))
    return {
        "odd3": R.normal(size=(3, 3)),
        "even2x4": R.normal(size=(2, 4)),
        "rank1_7x5": np.outer(g, g[1:6]),
        "rank2_9": u[0][:, None] * v[0] + u[1][:, None] * v[1],
        "box5": np.full((5, 5), 1 / 25),
        "box4x6": np.full((4, 6), 1 / 24),
        "big11": R.normal(size=(11, 11)) / 11,  # 121 taps: OpenCV's DFT, torch's fft
        "row1x5": R.normal(size=(1, 5)),
    }


KERNELS = _kernels()


def _valid_methods(name: str) -> list[str]:
    k = KERNELS[name]
    rank = np.linalg.matrix_rank(k, tol=1e-7 * np.abs(k).max())
    out = ["direct", "fft"]
    if rank <= 3:  # (lowrank of a full-rank 11x11 is 11 separable passes: slow, never chosen)
        out.append("lowrank")
    if rank == 1:
        out.append("separable")
    if np.all(k == k.flat[0]):
        out.append("box")
    return out


CASES = [(k, m, b) for k in KERNELS for m in _valid_methods(k) for b in ("torch", "opencv")
         if not (m == "fft" and b == "opencv")]


def _image(shape, dtype, b=2, c=3) -> torch.Tensor:
    if dtype == torch.uint8:
        return torch.from_numpy(R.integers(0, 256, (b, c, *shape), dtype=np.uint8))
    if dtype == torch.uint16:
        return torch.from_numpy(R.integers(0, 65536, (b, c, *shape), dtype=np.uint16))
    return torch.from_numpy(R.random((b, c, *shape), dtype=np.float32))


def reference(m: Kernel2d, x: torch.Tensor, negative: str = "clip") -> torch.Tensor:
    """Direct depthwise correlation in float64 with the module's own kernel, then the core's
    integer rules."""
    xf = KF.to_float(x, torch.float64)
    y = KF.filter2d(xf, m.weight.double(), m.border, m.value / 255.0) + m.bias
    if x.is_floating_point():
        return y
    return KF.to_integer(y, x.dtype, negative)


def module_reference(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The core's definition for any filter or chain: the module's plain definition (padding and
    one dense correlation per kernel, no plan) in float64 on the [0, 1] scale (on a CPU copy,
    so ``m`` is left as it is), then the integer rules."""
    import copy

    ref = plain(copy.deepcopy(m).cpu().double(), KF.to_float(x.cpu(), torch.float64))
    return ref if x.is_floating_point() else KF.to_integer(ref, x.dtype, m.negative)


def assert_close(out: torch.Tensor, ref: torch.Tensor, scale: float = 1.0, what: str = "") -> None:
    assert out.shape == ref.shape, what
    if out.is_floating_point():
        assert ref.is_floating_point(), what
        err = (out.double() - ref.double()).abs().max().item()
        assert err <= 2e-5 * scale, f"{what}: max error {err}"
    else:
        assert out.dtype == ref.dtype, what
        err = (out.int() - ref.int()).abs().max().item()
        assert err <= 1, f"{what}: max error {err} grey levels"


@pytest.fixture
def worker_threads(monkeypatch):
    """Small images share out among the worker threads as large ones do (stacked planes, bands
    per worker), instead of running in the calling thread: the tests' images are small."""
    monkeypatch.setattr(opencv_backend, "SERIAL_MAX_SAMPLES", 0)


def spy_opencv(monkeypatch, *names: str) -> list[tuple[str, tuple]]:
    """Record (thread name, source shape) of every call the OpenCV backend makes to these cv2
    functions, into the list returned."""
    calls: list[tuple[str, tuple]] = []

    def spy(fn):
        def call(src, *args, **kwargs):
            calls.append((threading.current_thread().name, src.shape))
            return fn(src, *args, **kwargs)
        return call

    for name in names:
        monkeypatch.setattr(opencv_backend.cv2, name, spy(getattr(cv2, name)))
    return calls


@pytest.mark.parametrize("h", [1, 2, 3, 5, 40])
@pytest.mark.parametrize("spec", ["box(size=[3, 2])", "kernel(weights=[[1, 2], [3, 4]])",
                                  "erode(size=4)", "opening(size=2, border=reflect)",
                                  "sharpen(border=symmetric)", "median(size=5)",
                                  "median(size=3, border=constant, value=0.5)"])
def test_planes_shared_unevenly_equal_the_definition(spec, h, worker_threads):
    """3 planes on 2 workers (and one interleaved image): whole planes go round the workers and
    the plane left over is cut into bands only where they are tall enough; short planes and
    even kernels (a border row reflected inside a band of one row) equal the torch
    definition and OpenCV on the interleaved image."""
    opencv_backend.own_threads(2)  # two workers whatever OpenCV's setting (restored after)
    m = convkit.chain(spec)
    x = torch.rand(1, 3, h, 301, generator=torch.Generator().manual_seed(h))
    torch.testing.assert_close(m(x), plain(m, x), atol=1e-6, rtol=1e-6)
    img = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    ref = (plain(m, torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0]
           .permute(1, 2, 0).numpy() * 255).round().clip(0, 255)
    assert np.abs(convkit.process(img, spec).astype(float) - ref).max() <= 1, spec


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("border,cv_border", [("reflect", cv2.BORDER_REFLECT_101),
                                              ("symmetric", cv2.BORDER_REFLECT),
                                              ("replicate", cv2.BORDER_REPLICATE)])
@pytest.mark.parametrize("h", [9, 10, 64])
def test_planes_stacked_for_opencv_threads_equal_opencv(dtype, border, cv_border, h,
                                                         monkeypatch, worker_threads):
    """Many small planes (6 here) are stacked into one tall plane per worker, and the rows next
    to each plane's edges are redone: the same as cv2.filter2D on each plane alone, down to the
    shortest planes stacked (a 5x5 kernel: 9 rows, twice its reach and one)."""
    monkeypatch.setattr(opencv_backend, "workers", lambda: 2)  # whatever this machine has
    stacked = []
    real = opencv_backend._stacked
    monkeypatch.setattr(opencv_backend, "_stacked", lambda *a: (stacked.append(1), real(*a)))
    k = np.array([[1, -2, 0, 3, 1], [0, 4, -1, 2, 0], [2, 1, 9, -3, 1], [0, -2, 1, 1, 0],
                  [1, 0, -1, 2, 3]], np.float32) / 15
    rng = np.random.default_rng(h)
    planes = rng.integers(0, 256, (2, 3, h, 97)).astype(dtype)
    if dtype == np.float32:
        planes /= 255
    spec = f"kernel({k.tolist()}, scale=1, border={border})"
    out = convkit.process(torch.from_numpy(planes), spec)
    assert stacked, "the stacked route was not taken"
    for b in range(2):
        for c in range(3):
            ref = cv2.filter2D(planes[b, c], -1, k, borderType=cv_border)
            got = out[b, c].numpy()
            if dtype == np.float32:
                np.testing.assert_allclose(got, ref, atol=2e-6)
            else:
                assert np.abs(got.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("spec,whole", [("sharpen", True), ("gaussian(sigma=2)", True),
                                        ("erode(size=5)", False), ("box(size=9)", False)])
def test_interleaved_images_run_whole_on_opencv_threads(dtype, spec, whole, monkeypatch,
                                                         worker_threads):
    """With OpenCV's threads on, interleaved (H, W, C) images that the workers cannot share
    evenly (1 or 3 on 2 workers) through a direct or separable kernel are one OpenCV call each
    in the calling thread, which OpenCV shares among its threads; a box filter (which OpenCV
    runs on one thread) and a morphology (faster so) are cut into bands for the workers, as
    planes are; images that share out evenly go whole to the workers. Either way the result is
    the module's definition on the whole image."""
    monkeypatch.setattr(opencv_backend, "workers", lambda: 2)  # whatever this machine has
    calls = spy_opencv(monkeypatch, "filter2D", "sepFilter2D", "boxFilter", "morphologyEx")
    m = convkit.chain(spec)
    for b in (1, 2, 3, 8):
        # images that share out evenly (2, or 8 on 2 workers) go whole to the workers
        uneven = b in (1, 3)
        x = _image((64, 90), dtype, b=b).contiguous(memory_format=torch.channels_last)
        calls.clear()
        out = engine.apply(m, x)
        assert_close(out, module_reference(m, x), what=f"{spec} {dtype} b={b}")
        here = {name for name, _ in calls} == {threading.current_thread().name}
        assert here == (whole and uneven), (spec, b, calls)
        if whole or not uneven:
            assert [shape for _, shape in calls] == [(64, 90, 3)] * b, (spec, b, calls)
    # planes that are not interleaved (nor one block: a channel slice) are shared out
    x = _image((64, 90), dtype, b=2, c=4)[:, :3]
    calls.clear()
    assert_close(engine.apply(m, x), module_reference(m, x), what=f"{spec} {dtype} slice")
    assert len({name for name, _ in calls}) == 2, (spec, calls)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("border", ["reflect", "constant, value=0.3", "circular"])
@pytest.mark.parametrize("own", [False, True])
def test_planes_go_to_the_workers_in_bands(own, border, dtype, monkeypatch, worker_threads):
    """Planes (3 on 2 workers, or 6) are shared among the workers in bands of rows, the
    calling thread taking one share: with OpenCV's threads on, each call (with the rows it
    reads) under OPENCV_SPLITS_PIXELS, which OpenCV runs on its worker alone; with
    own_threads, float32 in bands of BAND_BYTES and integer planes in bands as large as a
    worker's share; a circular border (which a band cannot wrap on its own), whole planes.
    Either way the result is the module's definition, the image's first and last rows and the
    rows where two workers' shares meet included."""
    monkeypatch.setattr(opencv_backend, "workers", lambda: 2)
    if own:
        monkeypatch.setattr(opencv_backend, "_OWN_THREADS", 2)
    monkeypatch.setattr(opencv_backend, "BAND_BYTES", 90 * 60)  # 60 rows of uint8
    monkeypatch.setattr(opencv_backend, "OPENCV_SPLITS_PIXELS", 90 * 80)  # 80 rows
    monkeypatch.setattr(opencv_backend, "STACK_PLANE_PIXELS", 0)  # planes as large as 1080p's
    calls = spy_opencv(monkeypatch, "sepFilter2D")
    m = convkit.chain(f"gaussian(sigma=2, border={border})")
    for b in (1, 2):
        x = _image((200, 90), dtype, b=b)
        calls.clear()
        out = engine.apply(m, x)
        assert_close(out, module_reference(m, x), what=f"own={own} {border} b={b}")
        rows = [shape[0] for _, shape in calls]
        if border == "circular":  # one call a plane, pre-padded
            assert len(calls) == 3 * b and min(rows) >= 200, calls
        else:
            if not own:
                assert max(rows) <= 80 and len(calls) > 3 * b, calls
            elif dtype == torch.float32:  # BAND_BYTES: 15 rows, but none shorter than 24
                assert max(rows) <= 2 * 24 + 12 and len(calls) > 3 * b, calls
            else:  # an integer plane: a worker's share in one call where it can
                assert max(rows) <= 212 and len(calls) >= 3 * b, calls
            assert len({name for name, _ in calls}) == 2, calls  # the caller and a worker


def test_stacked_route_makes_no_copy_of_the_batch(monkeypatch, worker_threads):
    """A kernel that OpenCV filters through a float32 copy of each plane (11x11 on uint8: its
    DFT) stays with the workers, a plane at a time, when OpenCV's threads are on: planes too
    large for the many-small-planes stacking are not stacked into a float32 copy of the whole
    batch (which took 12 float planes here; the workers hold at most 4 at once)."""
    monkeypatch.setattr(opencv_backend, "workers", lambda: 2)
    rng = np.random.default_rng(0)
    k = np.round(rng.normal(size=(11, 11)), 2).tolist()
    h, w = 1024, 1100  # over STACK_PLANE_PIXELS
    assert h * w > opencv_backend.STACK_PLANE_PIXELS
    x = torch.from_numpy(rng.integers(0, 256, (2, 3, h, w), dtype=np.uint8))
    spec = f"kernel({k}, scale=1, border=reflect)"
    convkit.process(x[:, :, :64], spec)  # plans and kernels made
    out, peak = traced_peak(lambda: convkit.process(x, spec))
    assert peak <= out.numel() + 6 * (h * w * 4), peak


def test_many_small_planes_stacked_in_runs_of_bounded_size(monkeypatch, worker_threads):
    """Many small planes are stacked into tall planes for the workers; a kernel that OpenCV
    filters through a float32 copy (11x11 on uint8) stacks at most STACK_MAX_PIXELS in one run,
    so the copies stay the size of one large plane: 29 MB at the peak for this 12.6 MB batch,
    113 MB when each worker stacked half the batch. The result equals cv2.filter2D on each
    plane."""
    monkeypatch.setattr(opencv_backend, "workers", lambda: 2)
    monkeypatch.setattr(opencv_backend, "_OWN_THREADS", 2)  # the workers' stacking
    rng = np.random.default_rng(1)
    k = np.round(rng.normal(size=(11, 11)), 2).astype(np.float32)
    x = torch.from_numpy(rng.integers(0, 256, (64, 3, 256, 256), dtype=np.uint8))
    assert opencv_backend._stackable(x.numpy().reshape(-1, 256, 256),
                                     opencv_backend.LinearOp(k.astype(np.float64)))
    spec = f"kernel({k.tolist()}, scale=1, border=reflect)"
    convkit.process(x[:1], spec)  # plans and kernels made
    out, peak = traced_peak(lambda: convkit.process(x, spec))
    # the output, and per worker a float32 copy and result of one run of about 1 MP
    assert peak <= out.numel() + 2 * 2 * 4 * opencv_backend.STACK_MAX_PIXELS * 1.3, peak
    for i in (0, 31, 63):
        for c in range(3):
            ref = cv2.filter2D(x[i, c].numpy(), -1, k, borderType=cv2.BORDER_REFLECT_101)
            assert np.abs(out[i, c].numpy().astype(int) - ref).max() <= 1


@pytest.mark.parametrize("kname,method,backend", CASES)
def test_method_equals_reference(kname, method, backend, worker_threads):
    k = KERNELS[kname]
    scale = float(np.abs(k).sum())
    for border in BORDERS:
        value = 37.0 if border == "constant" else 0.0
        m = Kernel2d(k, scale=1.0, border=border, value=value)
        for shape in SIZES:
            for dtype in (torch.uint8, torch.float32):
                x = _image(shape, dtype)
                before = x.clone()
                out = engine.apply(m, x, method=method, backend=backend)
                what = f"{kname} {method}/{backend} {border} {shape} {dtype}"
                assert_close(out, reference(m, x), scale, what)
                assert torch.equal(x, before), f"{what}: the input was modified"
                steps = engine.explain(m, x, method=method, backend=backend)
                assert [s[1:] for s in steps] == [(backend, method)], what


@pytest.mark.parametrize("backend", ["torch", "opencv"])
@pytest.mark.parametrize("negative", ["abs", "offset", "clip"])
def test_negative_mapping_and_offset(backend, negative, worker_threads):
    """Signed responses are mapped before rounding, on every path; the kernel offset (bias)
    is part of the response."""
    for kname in ("odd3", "rank1_7x5", "rank2_9", "box5", "big11"):
        for offset in (30.0,):  # (no offset: every other test)
            m = Kernel2d(KERNELS[kname] * 3, scale=1.0, offset=offset, negative=negative)
            for dtype in (torch.uint8, torch.uint16):
                x = _image((31, 17), dtype)
                for method in _valid_methods(kname):
                    if method == "fft" and backend == "opencv":
                        continue
                    out = engine.apply(m, x, method=method, backend=backend)
                    assert_close(out, reference(m, x, negative),
                                 what=f"{kname} {method} {negative} {dtype} {offset}")


def test_responses_past_int32_saturate():
    """A response of billions of grey levels (a huge offset or gain) saturates like any other:
    OpenCV would round it through a wrapping 32-bit int (255 came out 0), so the automatic
    backend runs such a plan on torch."""
    x = _image((9, 11), torch.uint8)
    for spec in ("kernel(weights=[[1,0,0]], offset=3e9)", "kernel(weights=[[1]], offset=-3e9)",
                 "kernel(weights=[[0,1],[1,0]], scale=1e-7)",
                 "gaussian(sigma=1) | kernel(weights=[[1]], scale=1e-8)"):
        m = convkit.chain(spec)
        out = engine.apply(m, x)
        assert torch.equal(out, module_reference(m, x)), spec
        assert {b for _, b, _ in engine.explain(m, x)} == {"torch"}, spec
    assert engine.explain(convkit.chain("sharpen(amount=1e3)"), x)[0][1] == "opencv"


def test_auto_rule_picks_documented_methods():
    x = _image((40, 40), torch.uint8)

    def picked(spec, backend="auto"):
        return engine.explain(convkit.chain(spec), x, backend=backend)[0][1:]

    assert picked("sharpen") == ("opencv", "direct")
    assert picked("gaussian(sigma=3)") == ("opencv", "separable")
    assert picked("box(size=31)") == ("opencv", "box")
    assert picked("box(size=31)", "torch") == ("torch", "box")
    assert picked("box(size=5)", "torch") == ("torch", "separable")
    # on CUDA the running sums pay only from sides of 73 (measured on an H100)
    box = {n: fusion._kernel_op(convkit.chain(f"box(size={n})")[0]) for n in (31, 71, 73)}
    assert [engine.choose_method(box[n], "cuda") for n in (31, 71, 73)] == \
        ["separable", "separable", "box"]
    assert engine.choose_method(box[31], "torch") == "box"
    assert picked("median(size=5)") == ("opencv", "median")
    assert picked("median(size=4)") == ("torch", "median")  # cv2 has odd sizes only
    assert picked("avgpool(size=2)") == ("torch", "module")
    big = Kernel2d(R.normal(size=(15, 15)), scale=1.0)
    assert engine.explain(big, x, backend="torch")[0][1:] == ("torch", "fft")
    assert engine.explain(big, x)[0][1:] == ("torch", "fft")  # cheaper than OpenCV's DFT
    assert engine.explain(big, x, backend="opencv")[0][1:] == ("opencv", "direct")
    mid = Kernel2d(R.normal(size=(11, 11)), scale=1.0)
    assert engine.explain(mid, x)[0][1:] == ("opencv", "direct")
    # gaussians: separable up to about sigma 10 (8-bit: 61x61), then fft, flat in the size
    assert picked("gaussian(sigma=8)") == ("opencv", "separable")
    assert picked("gaussian(sigma=16)") == ("torch", "fft")
    assert picked("gaussian(sigma=16)", "opencv") == ("opencv", "separable")
    ch = convkit.chain("gaussian(sigma=16) | sharpen")
    assert [s[1:] for s in engine.explain(ch, x, fuse=False)] == [("torch", "fft"),
                                                                   ("opencv", "direct")]
    ref = KF.to_integer(plain(ch.double(), KF.to_float(x, torch.float64)), torch.uint8)
    ch.float()
    for fuse in (True, False):
        assert_close(engine.apply(ch, x, fuse=fuse), ref, what=f"fft then direct, fuse={fuse}")
    low = Kernel2d(KERNELS["rank2_9"], scale=1.0)
    assert engine.explain(low, x)[0][1:] == ("opencv", "lowrank")
    # float64 and gradients need torch
    assert engine.explain(convkit.chain("sharpen"), x.double())[0][1] == "torch"


def test_independent_numpy_reference():
    """The engine against numpy's own padding (np.pad modes match convkit's borders) and a
    plain loop, on an image smaller than the kernel too."""
    np_modes = {"reflect": "reflect", "symmetric": "symmetric", "replicate": "edge",
                "circular": "wrap", "constant": "constant"}
    k = KERNELS["even2x4"]
    kh, kw = k.shape
    for border, mode in np_modes.items():
        for shape in ((9, 11), (2, 3)):
            img = R.random(shape)
            p = np.pad(img, ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2)), mode)
            ref = np.zeros(shape)
            for i in range(kh):
                for j in range(kw):
                    ref += k[i, j] * p[i:i + shape[0], j:j + shape[1]]
            m = Kernel2d(k, scale=1.0, border=border)
            x = torch.from_numpy(img.astype(np.float32))[None, None]
            for backend in ("torch", "opencv"):
                out = engine.apply(m, x, backend=backend)[0, 0].double().numpy()
                np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=f"{border} {shape}")


@pytest.mark.parametrize("size", [3, 4, 5, 7])
def test_median_every_path(size):
    for border in BORDERS:
        m = Median(size, border=border, value=20.0 if border == "constant" else 0.0)
        for dtype in (torch.uint8, torch.uint16, torch.float32):
            for shape in ((19, 23), (2, 3)):
                x = _image(shape, dtype)
                ref = engine.apply(m, x, backend="torch")
                xf = KF.to_float(x)
                exp = KF.median_blur(xf, size, border, m.value / 255.0)
                exp = exp if x.is_floating_point() else KF.to_integer(exp, dtype)
                assert torch.equal(ref, exp)
                if opencv_backend.supports(MedianOp(size, border, 0.0), dtype):
                    out = engine.apply(m, x, backend="opencv")
                    assert torch.equal(out, ref), f"{size} {border} {dtype} {shape}"


def test_median_opencv_is_cv2_medianblur_for_replicate():
    x = _image((40, 50), torch.uint8, b=1)
    out = engine.apply(Median(5, border="replicate"), x)
    for c in range(3):
        assert np.array_equal(out[0, c].numpy(), cv2.medianBlur(x[0, c].numpy(), 5))


@pytest.mark.parametrize("name", ["sobel", "scharr", "prewitt"])
def test_gradient_magnitude_paths(name):
    for border in BORDERS:
        m = convkit.get_filter(name, border=border)
        assert isinstance(m, GradientMagnitude)
        for dtype in (torch.uint8, torch.uint16, torch.float32):
            x = _image((21, 18), dtype)
            ref = m(KF.to_float(x, torch.float64))
            ref = ref if x.is_floating_point() else KF.to_integer(ref, dtype)
            for backend in ("torch", "opencv"):
                assert_close(engine.apply(m, x, backend=backend), ref, 8.0,
                             f"{name} {border} {dtype} {backend}")


# --- fusion -------------------------------------------------------------------------------------
def _run_unfused(mods, x):
    for m in mods:
        x = m(x)
    return x


def _with_border(spec: str, border: str) -> str:
    return f"{spec[:-1]}, border={border})" if spec.endswith(")") else f"{spec}(border={border})"


SYM = {"gauss": "gaussian(sigma=1.2)", "sharpen": "sharpen(amount=2)", "box": "box(size=3)",
       "smooth": "smooth"}


@pytest.mark.parametrize("border", ["reflect", "symmetric", "circular"])
def test_fusion_exact_everywhere(border):
    """Where the engine fuses, the fused kernel equals the chain at every pixel: float64, all
    sizes including images smaller than the fused kernel (interior, borders, corners). Both
    forms the engine may run are checked: everything in one kernel, and the separable members
    first, then the rest."""
    spec = " | ".join(_with_border(s, border) for s in SYM.values())
    spec += f" | emboss(border={border})"  # the last kernel need not be symmetric
    ch = convkit.chain(spec)
    ops = [fusion._kernel_op(m) for m in ch]
    assert all(fuse_mod.fusable(a, b) for a, b in zip(ops, ops[1:], strict=False))
    full = fuse_mod._fold(ops)
    split = fuse_mod.split_group(ops)
    assert len(fusion.build_plan(ch).ops) < len(ops)  # fused, in one or more groups
    for shape in ((17, 20), (4, 3), (1, 2), (1, 1)):
        x = torch.from_numpy(R.random((1, 2, *shape)))
        ref = _run_unfused(ch, x)
        one = KF.filter2d(x, torch.from_numpy(full.kernel), border) + full.bias
        np.testing.assert_allclose(one.numpy(), ref.numpy(), atol=1e-12,
                                   err_msg=f"one kernel {border} {shape}")
        y = x
        for op in split:
            y = KF.filter2d(y, torch.from_numpy(op.kernel), border) + op.bias
        np.testing.assert_allclose(y.numpy(), ref.numpy(), atol=1e-12,
                                   err_msg=f"split {border} {shape}")
        np.testing.assert_allclose(engine.apply(ch, x, backend="torch").numpy(), ref.numpy(),
                                   atol=1e-12, err_msg=f"engine {border} {shape}")


def test_fusion_circular_any_kernels_even_sizes():
    ks = [KERNELS["even2x4"], R.normal(size=(4, 2)), KERNELS["odd3"], R.normal(size=(2, 2))]
    mods = [Kernel2d(k, scale=1.0, border="circular", offset=5.0) for k in ks]
    ch = convkit.chain(mods)
    assert len(fusion.build_plan(ch).ops) == 1
    for shape in ((13, 10), (3, 2)):
        x = torch.from_numpy(R.random((1, 1, *shape)))
        np.testing.assert_allclose(engine.apply(ch, x, backend="torch", method="direct").numpy(),
                                   _run_unfused(ch, x).numpy(), atol=1e-12)


@pytest.mark.parametrize("border,first", [
    ("replicate", "gaussian(sigma=1)"), ("constant", "gaussian(sigma=1)"),
    ("reflect", "emboss"), ("symmetric", "kernel(weights=[[1,2],[3,4]])"),
])
def test_no_fusion_where_it_would_be_wrong(border, first):
    """The engine keeps these kernels apart, and this test shows why: the composed kernel
    differs from the chain at the border."""
    ch = convkit.chain(f"{_with_border(first, border)} | sharpen(border={border})")
    a, b = ch
    assert len(fusion.build_plan(ch).ops) == 2
    x = torch.from_numpy(R.random((1, 1, 12, 12)))
    composed = fuse_mod.convolve_ops(fusion._kernel_op(a), fusion._kernel_op(b))
    y = KF.filter2d(x, torch.from_numpy(composed.kernel), border) + composed.bias
    chain_out = _run_unfused(ch, x)
    assert (y - chain_out).abs().max() > 1e-6  # the fused kernel would be wrong somewhere ...
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    torch.testing.assert_close(y[inner], chain_out[inner])  # ... though right in the interior
    torch.testing.assert_close(engine.apply(ch, x, backend="torch"), chain_out)


def test_fused_chain_integer_paths_match_the_chain():
    ch = convkit.chain("gaussian(sigma=2) | box(size=3) | gaussian(sigma=1) | sharpen | emboss")
    x = _image((45, 38), torch.uint8)
    steps = engine.explain(ch, x)
    assert [s[1:] for s in steps] == [("opencv", "separable"), ("opencv", "direct")], steps
    ref = KF.to_integer(ch(KF.to_float(x, torch.float64)), torch.uint8, ch.negative)
    for backend in ("opencv", "torch"):
        for fuse in (True, False):
            assert_close(engine.apply(ch, x, backend=backend, fuse=fuse), ref,
                         what=f"{backend} fuse={fuse}")


# --- plans, options, contract ---------------------------------------------------------------
def test_plan_is_cached_and_rebuilt_when_a_kernel_changes():
    m = convkit.chain("sharpen | box(size=3)")
    p1 = fusion.get_plan(m)
    assert fusion.get_plan(m) is p1
    x = _image((10, 10), torch.float32)
    before = engine.apply(m, x)
    m[0].weight.mul_(2.0)
    assert fusion.get_plan(m) is not p1
    torch.testing.assert_close(engine.apply(m, x), _run_unfused(m, x), atol=1e-5, rtol=0)
    assert not torch.allclose(before, engine.apply(m, x))


def test_chain_built_and_run_under_inference_mode():
    """A chain made inside ``torch.inference_mode()`` (its weights then keep no version
    counter) runs, equals OpenCV, and its plan still follows an in-place change of a kernel."""
    x = _image((12, 15), torch.uint8)
    k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    want = np.stack([cv2.filter2D(p, -1, k, borderType=cv2.BORDER_REFLECT_101)
                     for p in x[0].numpy()])
    with torch.inference_mode():
        m = convkit.chain("sharpen | box(size=1)")
        assert np.array_equal(engine.apply(m, x)[0].numpy(), want)
        assert np.array_equal(convkit.process(x, "sharpen")[0].numpy(), want)
        m[0].weight.zero_()  # sharpen -> zero
        assert not engine.apply(m, x).any()
        m = m.to(torch.float64).to(torch.float32)  # .to() inside makes new inference tensors
        assert not engine.apply(m, x).any()
        m = convkit.chain("sharpen").to(torch.bfloat16)  # a dtype NumPy does not have
        assert np.array_equal(engine.apply(m, x)[0].numpy(), want)


def test_options_context_manager_and_errors():
    m = convkit.get_filter("sharpen")
    x = _image((8, 8), torch.uint8)
    with engine.options(backend="torch", method="direct"):
        assert engine.explain(m, x)[0][1:] == ("torch", "direct")
        with engine.options(method="lowrank"):
            assert engine.explain(m, x)[0][2] == "lowrank"
    assert engine.explain(m, x)[0][1] == "opencv"
    with pytest.raises(ValueError, match="method"):
        engine.apply(m, x, method="fast")
    with pytest.raises(ValueError, match="backend"):
        engine.apply(m, x, backend="numpy")
    with pytest.raises(ValueError, match="rank"):
        engine.apply(m, x, method="separable")
    with pytest.raises(ValueError, match="equal"):
        engine.apply(m, x, method="box")
    with pytest.raises(ValueError, match="opencv"):
        engine.apply(m, x.double(), backend="opencv")
    with pytest.raises(ValueError, match="fft"):
        engine.apply(m, x, backend="opencv", method="fft")
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        engine.apply(m, x[0])
    with pytest.raises(TypeError, match="uint8 or uint16"):
        engine.apply(m, x.int())


def test_method_attribute_on_a_kernel():
    g = convkit.get_filter("gaussian", sigma=2)
    g.method = "direct"
    ch = convkit.chain([g, convkit.get_filter("sharpen")])
    x = _image((30, 30), torch.uint8)
    steps = engine.explain(ch, x)
    assert [s[2] for s in steps] == ["direct", "direct"]  # not fused, and its method kept
    assert_close(engine.apply(ch, x),
                 KF.to_integer(ch(KF.to_float(x, torch.float64)), torch.uint8))


def test_alpha_batch_layout_and_grad():
    m = convkit.chain("gaussian(sigma=1.5) | sharpen")
    x = _image((20, 24), torch.uint8, b=3, c=4)
    out = engine.apply(m, x, alpha=True)
    assert torch.equal(out[:, 3], x[:, 3])
    for i in range(3):
        assert torch.equal(out[i:i + 1], engine.apply(m, x[i:i + 1], alpha=True))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(engine.apply(m, cl, alpha=True), out)
    xf = _image((9, 9), torch.float32).requires_grad_(True)
    y = engine.apply(m, xf)
    y.sum().backward()
    assert xf.grad is not None and xf.grad.abs().sum() > 0


def test_pooling_chain_and_learned_like_module():
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    ch = convkit.chain([convkit.get_filter("sharpen"), convkit.get_filter("avgpool", size=2),
                        conv])
    x = _image((16, 20), torch.uint8)
    ref = KF.to_integer(ch(KF.to_float(x)), torch.uint8)
    assert_close(engine.apply(ch, x), ref)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])])
def test_torch_methods_on_device(device):
    """Every method the engine can choose on the device (the torch backend: the GPU path), for
    every kernel, border, size (smaller than the kernel too) and dtype, against the float64
    direct reference computed on the CPU; then fused chains with the automatic plan."""
    for kname in KERNELS:
        for border in BORDERS:
            value = 37.0 if border == "constant" else 0.0
            m = Kernel2d(KERNELS[kname], scale=1.0, border=border, value=value)
            for shape in SIZES:
                for dtype in (torch.uint8, torch.float32):
                    x = _image(shape, dtype)
                    ref = reference(m, x)
                    for method in _valid_methods(kname):
                        out = engine.apply(m.to(device), x.to(device), method=method)
                        assert out.device.type == device
                        what = f"{kname} {border} {method} {shape} {dtype} {device}"
                        assert_close(out.cpu(), ref, float(np.abs(KERNELS[kname]).sum()), what)
                        m = m.cpu()
    ch = convkit.chain("gaussian(sigma=2) | box(size=3) | gaussian(sigma=1) | sharpen | emboss")
    for shape in ((45, 38), (3, 2)):
        x = _image(shape, torch.uint8)
        ref = KF.to_integer(ch(KF.to_float(x, torch.float64)), torch.uint8, ch.negative)
        for fuse in (True, False):
            out = engine.apply(ch.to(device), x.to(device), fuse=fuse)
            assert_close(out.cpu(), ref, what=f"chain {shape} fuse={fuse} {device}")
        ch = ch.cpu()


COMPILED_SPECS = ["sharpen", "emboss", "laplacian", "kernel(weights=[[1,2],[3,4]])",
                  "sharpen(border=replicate)", "sharpen(border=circular)",
                  "sharpen(border=symmetric)",
                  "kernel(weights=[[1,-2],[3,4],[0,1]], border=constant, value=200)"]


@pytest.mark.slow
@pytest.mark.parametrize("spec", COMPILED_SPECS)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])])
def test_compiled_direct(device, spec):
    """torch.compile'd single-pass direct kernels (the CUDA roofline path): every border, images
    smaller than the kernel, even kernels, the negative mappings, uint8/uint16/float32. One test
    per spec, so that pytest-xdist spreads the compiles (gpu.sh)."""
    torch._dynamo.reset()  # compiled afresh, never the eager fallback of a spent recompile limit
    m = convkit.chain(spec).to(device)
    cases = [((40, 30), torch.uint8), ((3, 2), torch.uint8), ((12, 13), torch.float32)]
    for shape, dtype in cases + ([((17, 9), torch.uint16)] if spec == "sharpen" else []):
        x = _image(shape, dtype).to(device)
        with engine.options(compile=True, backend="torch", method="direct"):
            out = engine.apply(m, x)
        assert_close(out.cpu(), module_reference(m, x), 10.0, what=f"{spec} {shape} {dtype}")


@pytest.mark.parametrize("spec", ["sharpen", "gaussian(sigma=2)", "box(size=7)", "sobel",
                                  "median(size=5)", "median(size=3, border=constant, value=9)",
                                  "kernel(weights=[[1,2],[3,4]], border=circular)",
                                  "gaussian(sigma=1) | sharpen | emboss"])
def test_opencv_layouts(spec):
    """Channel-interleaved (channels_last) and sliced inputs run in place of a copy and give
    the same result as contiguous planes."""
    m = convkit.chain(spec)
    for dtype in (torch.uint8, torch.float32):
        x = _image((26, 31), dtype, b=2, c=3)
        ref = engine.apply(m, x, backend="torch")
        cl = x.contiguous(memory_format=torch.channels_last)
        out = engine.apply(m, cl, backend="opencv")
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert_close(out, ref, 8.0, f"{spec} {dtype} channels_last")
        wide = _image((26, 31), dtype, b=2, c=5)[:, 1:4]  # planes with a batch stride gap
        assert_close(engine.apply(m, wide, backend="opencv"),
                     engine.apply(m, wide.contiguous(), backend="torch"), 8.0, f"{spec} slice")


# --- chains in bands of rows, planes shared among threads -------------------------------------
BAND_CHAINS = [
    "gaussian(sigma=1) | sharpen | box(size=3) | emboss",  # fused: separable, then a 5x5
    "sharpen | emboss | box(size=4)",  # not fused (emboss is not symmetric): three kernels
]


@pytest.mark.parametrize("border", ["reflect", "symmetric", "replicate", "constant"])
@pytest.mark.parametrize("spec", BAND_CHAINS)
def test_banded_chain_equals_the_chain(spec, border, monkeypatch, worker_threads):
    """Chains of linear kernels on OpenCV run band by band; with bands of a few rows (many
    bands, a short last band merged, halos of every size) the result is the chain's, computed
    op by op in float64."""
    parts = [p.strip() for p in spec.split("|")]
    ch = convkit.chain(" | ".join(f"{p[:-1]}, border={border})" if p.endswith(")")
                                  else f"{p}(border={border})" for p in parts))
    ch.append(Kernel2d(R.normal(size=(2, 3)), scale=1.0, border=border))  # an even kernel
    calls = []
    real = opencv_backend._chain
    monkeypatch.setattr(opencv_backend, "_chain",
                        lambda src, *a: (calls.append(src.shape[0]), real(src, *a))[1])
    monkeypatch.setattr(opencv_backend, "BAND_BYTES", 64 * 4)  # bands of 64 floats
    for shape in [(83, 21), (200, 7), (17, 9), (2, 3)]:
        for dtype in (torch.uint8, torch.uint16, torch.float32):
            x = _image(shape, dtype)
            for fuse in (True, False):
                calls.clear()
                out = engine.apply(ch, x, fuse=fuse)
                ref = module_reference(ch, x)
                what = f"{spec} {border} {shape} {dtype} fuse={fuse}"
                assert_close(out, ref, 1.0, what)
                assert len(calls) >= 6, what  # 6 planes, several bands each when tall
                if shape[0] >= 83:
                    assert max(calls) < shape[0], what
    # channels_last input, the layout of an image decoded as HWC
    x = _image((40, 30), torch.uint8).contiguous(memory_format=torch.channels_last)
    ref = KF.to_integer(plain(ch.double(), KF.to_float(x, torch.float64)), torch.uint8,
                       ch.negative)
    ch.float()
    assert_close(engine.apply(ch, x), ref, what="channels_last")


def test_circular_and_filled_borders_are_not_banded():
    """Pre-padded borders wrap around (or fill) the whole plane, never a band of it."""
    for spec in ("sharpen(border=circular) | box(size=3, border=circular)",
                 "sharpen(border=constant, value=9) | emboss(border=constant, value=9)"):
        ch = convkit.chain(spec)
        plan = fusion.get_plan(ch, False)
        assert not all(opencv_backend.bandable(op) for op in plan.ops), spec


def test_parallel_runs_every_job_and_raises_the_first_error():
    done = []
    opencv_backend.parallel(lambda i: done.append(i), [(i,) for i in range(7)])
    assert sorted(done) == list(range(7))

    def boom(i):
        if i == 3:
            raise RuntimeError("job 3")
        done.append(i)

    done.clear()
    with pytest.raises(RuntimeError, match="job 3"):
        opencv_backend.parallel(boom, [(i,) for i in range(6)])
    assert sorted(done) == [0, 1, 2, 4, 5]  # the others still ran to the end


def test_own_threads_gives_the_workers_the_cores(monkeypatch):
    """own_threads(n): n convkit workers, OpenCV's own threading off (process-wide), and the
    same results; without it the workers follow OpenCV's setting."""
    before = cv2.getNumThreads()
    monkeypatch.setattr(opencv_backend, "_OWN_THREADS", None)
    monkeypatch.setattr(opencv_backend, "SERIAL_MAX_SAMPLES", 0)
    try:
        cv2.setNumThreads(2)
        assert opencv_backend.workers() == 2
        x = torch.rand(1, 3, 40, 50)
        m = convkit.chain("gaussian(sigma=2) | erode(size=3)")
        ref = m(x)
        assert opencv_backend.own_threads(3) == 3
        assert cv2.getNumThreads() == 1 and opencv_backend.workers() == 3
        threads = set()
        real = opencv_backend.morphology_cv
        monkeypatch.setattr(opencv_backend, "morphology_cv", lambda *a, **k: (
            threads.add(threading.current_thread().name), real(*a, **k))[1])
        torch.testing.assert_close(m(x), ref)
        assert any(t.startswith("convkit-cv") for t in threads), threads
        assert opencv_backend.own_threads(0) == 2  # OpenCV's threads given back
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


@pytest.mark.parametrize("spec", ["sharpen", "gaussian(sigma=2)", "box(size=9)", "sobel",
                                  "median(size=5)", "gaussian(sigma=1) | sharpen | emboss"])
def test_small_images_run_in_the_calling_thread(spec, monkeypatch):
    """Up to SERIAL_MAX_SAMPLES samples the OpenCV path runs in the calling thread (handing
    jobs to the workers costs more than such an image takes); larger images are shared
    among the workers and the calling thread. Either way the result is the module's."""
    opencv_backend.own_threads(2)  # restored by the conftest
    calls = spy_opencv(monkeypatch, "filter2D", "sepFilter2D", "boxFilter", "medianBlur",
                       "magnitude")
    m = convkit.chain(spec)
    limit = opencv_backend.SERIAL_MAX_SAMPLES
    for shape, calling in (((60, 70), True), ((limit // 3 // 120 + 1, 120), False)):
        x = _image(shape, torch.uint8, b=1)
        calls.clear()
        out = engine.apply(m, x)
        threads = {name for name, _ in calls}
        assert engine.explain(m, x)[0][1] == "opencv"
        assert_close(out, module_reference(m, x), what=f"{spec} {shape}")
        assert (threads == {threading.current_thread().name}) == calling, (spec, threads)


def test_opencv_thread_setting_is_respected():
    n = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        assert opencv_backend.workers() == 1
        names = set()
        import threading

        opencv_backend.parallel(lambda: names.add(threading.current_thread().name),
                                 [()] * 4)
        assert names == {threading.current_thread().name}
    finally:
        cv2.setNumThreads(n)


@pytest.mark.parametrize("spec", ["sharpen", "gaussian(sigma=1) | sharpen | emboss",
                                  "median(size=3)", "sobel", "gaussian(sigma=16)"])
def test_empty_batch(spec):
    for dtype in (torch.uint8, torch.float32):
        x = torch.zeros(0, 3, 8, 8, dtype=dtype)
        out = engine.apply(convkit.chain(spec), x)
        assert out.shape == x.shape and out.dtype == dtype


@pytest.mark.parametrize("border", ["reflect", "symmetric", "replicate", "constant", "circular"])
def test_gradient_magnitude_in_bands(border, monkeypatch, worker_threads):
    """The gradient magnitude runs band by band on OpenCV (pre-padded borders plane by plane);
    either way it equals the module's own float64 forward."""
    monkeypatch.setattr(opencv_backend, "BAND_BYTES", 64 * 4)  # bands of 64 floats
    for spec in ("sobel", "scharr", "prewitt"):
        m = convkit.chain(f"{spec}(border={border})")
        for shape in [(83, 21), (5, 4), (1, 1)]:
            for dtype in (torch.uint8, torch.uint16, torch.float32):
                x = _image(shape, dtype)
                ref = module_reference(m, x)
                out = engine.apply(m, x)
                assert engine.explain(m, x)[0][1:] == ("opencv", "gradient")
                assert_close(out, ref, 8.0, f"{spec} {border} {shape} {dtype}")


@pytest.mark.parametrize("value", [-5.0, 300.0, 200.5])
def test_constant_fill_the_dtype_cannot_hold(value):
    """A fill outside 0..255 (or fractional) is used as it is, not saturated to the image's
    dtype, on every path: OpenCV (separable, direct, box, gradient) and the FFT."""
    five = Kernel2d(R.normal(size=(5, 5)), scale=1.0, border="constant", value=value)
    mods = [convkit.chain(s) for s in (
        f"gaussian(sigma=16, border=constant, value={value})",
        f"gaussian(sigma=2, border=constant, value={value})",
        f"box(size=5, border=constant, value={value})",
        f"sobel(border=constant, value={value})")] + [five]
    for m in mods:
        for dtype in (torch.uint8, torch.uint16, torch.float32):
            x = _image((40, 33), dtype)
            ref = plain(m.double(), KF.to_float(x, torch.float64))
            m.float()
            if not x.is_floating_point():
                ref = KF.to_integer(ref, x.dtype, getattr(m, "negative", "clip")
                                    if isinstance(getattr(m, "negative", None), str) else "clip")
            assert_close(engine.apply(m, x), ref, 8.0, f"{engine.explain(m, x)} {dtype}")


@pytest.mark.parametrize("border", ["circular", "reflect"])
def test_reordered_fusion_keeps_the_biases(border):
    """When a fused group runs its separable members first, the biases still add up as in the
    chain's order (each bias passes through the kernels after it)."""
    a = R.random((5, 5))
    a = a + a[::-1] + a[:, ::-1] + a[::-1, ::-1]  # symmetric, so that reflect fuses too
    a = 0.5 * a / a.sum()
    g = np.exp(-np.arange(-4, 5) ** 2 / 8.0)
    ch = convkit.Chain(Kernel2d(a, scale=1.0, border=border, offset=-20),
                       Kernel2d(np.outer(g, g), border=border, offset=40),
                       Kernel2d(R.normal(size=(3, 3)), scale=1.0, border=border, offset=7))
    x = _image((64, 48), torch.float32)
    plan = fusion.get_plan(ch)
    assert plan.ops[0].shape == (9, 9) and plan.ops[0].rank == 1, plan.describe()  # moved first
    ref = plain(ch.double(), x.double())
    ch.float()
    for backend in ("opencv", "torch"):
        assert_close(engine.apply(ch, x, backend=backend), ref, 4.0, backend)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_worker_pool():
    """A child forked while another thread held the pool's lock (a DataLoader worker, say)
    still filters: it starts with a fresh lock and pool."""
    import time

    x = _image((300, 200), torch.uint8)
    m = convkit.chain("gaussian(sigma=1) | sharpen")
    want = engine.apply(m, x)
    opencv_backend._POOL_LOCK.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child
            os._exit(0 if torch.equal(engine.apply(m, x), want) else 1)
    finally:
        opencv_backend._POOL_LOCK.release()
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0


DEFAULT_BLOCK = stencil.BLOCK
SMALL_BLOCK = (16, 16, 1)  # a 40x50 image has inner tiles for kernels of up to 7x7


@pytest.fixture(params=["interpreter", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])])
def stencil_device(request, monkeypatch) -> str:
    """Where convkit.backends.stencil's Triton kernel runs: compiled on CUDA, or on the CPU through
    Triton's interpreter (NumPy), which is how machines without a GPU test it.

    For the interpreter the kernel module is loaded afresh under another name while
    TRITON_INTERPRET=1: Triton decides at decoration time whether a kernel is compiled or
    interpreted."""
    pytest.importorskip("triton")
    # small tiles, so that the test images have inner tiles (plain shifted reads) as well as
    # border tiles (every index through the border rule)
    monkeypatch.setattr(stencil, "BLOCK", SMALL_BLOCK)
    if request.param == "cuda":
        return "cuda"
    if torch.cuda.is_available():
        # the compiled kernel is tested on the GPU; and Triton 3.5's interpreter leaves some of
        # its patches behind, which broke later compiles in the same process (seen on the CPU)
        pytest.skip("tested compiled on CUDA instead")
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    path = Path(stencil.__file__).with_name("_stencil_kernel.py")
    spec = importlib.util.spec_from_file_location("_convkit_stencil_interpreted", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # (the interpreter looks helpers up there)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(stencil, "_kernel", lambda: mod.stencil)
    return "cpu"


STENCIL_SPECS = COMPILED_SPECS + [
    "sobel", "scharr(border=constant, value=90)", "box(size=3)",
    "sharpen(border=constant, value=90)", "laplacian(negative=offset, border=replicate)",
    "kernel(weights=[[1,2,3,4,5,6,7],[0,0,0,0,0,0,1],[1,1,1,1,1,1,1],[2,0,0,0,0,0,0],"
    "[0,0,0,9,0,0,0],[1,0,1,0,1,0,1],[0,0,0,0,0,0,-3]], scale=30, border=symmetric)",
    "gaussian(sigma=2) | emboss", "kernel(weights=[[0,0],[0,0]], offset=0.3)"]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A view of ``x`` in the memory layout a test case names."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return x[:, :, 1:, ::2]
    return x


def _triton_apply(m, x: torch.Tensor, dev: str, layout: str = "") -> torch.Tensor:
    """engine.apply with options(triton=True) on ``dev``, the result back on the CPU; checks
    that the stencil ran (not the torch methods it falls back to). The layout is made on the
    device (``.to()`` would make a strided view contiguous)."""
    from unittest import mock

    m, x = m.to(dev), _layout(x.to(dev), layout)
    with engine.options(triton=True, backend="torch"), \
            mock.patch.object(stencil, "correlate", wraps=stencil.correlate) as spy:
        out = engine.apply(m, x)
    m.cpu()
    assert spy.called, "the stencil did not run"
    return out.cpu()


def _exact_on_stencil(m) -> bool:
    """One kernel of whole-number weights: on an integer image the stencil sums it exactly in
    int32, so its result must equal the float64 reference's at every pixel."""
    ops = fusion.get_plan(m).ops
    return (len(ops) == 1 and isinstance(ops[0], LinearOp)
            and np.array_equal(ops[0].kernel, np.round(ops[0].kernel)))


@pytest.mark.parametrize("spec", STENCIL_SPECS)
def test_triton_stencil(stencil_device, spec):
    """options(triton=True): the one-pass Triton stencil (the CUDA roofline path) equals the
    float64 module at every pixel: every border, images smaller than the kernel, even kernels,
    a 7x7 (its most taps), gradient magnitudes, the negative mappings, uint8/uint16/float32,
    contiguous, channels_last and strided inputs, inner tiles and border tiles. Integer
    kernels (sharpen, laplacian, emboss) on integer images take its int32 path and must be
    exact; the float32 path may be 1 level off at a rounding tie."""
    m = convkit.chain(spec)
    cases = [((40, 50), torch.uint8, "channels_last"), ((40, 50), torch.uint16, ""),
             ((40, 50), torch.float32, ""), ((3, 2), torch.uint8, ""),
             ((1, 1), torch.uint8, ""), ((12, 13), torch.float32, "strided")]
    if spec.startswith("kernel(weights=[[1,2,3,4,5,6,7]"):
        cases = cases[:1] + cases[3:5]  # 49 taps a pixel are slow in the interpreter
    for n, (shape, dtype, layout) in enumerate(cases):
        x = _image(shape, dtype, b=1 + n % 2, c=2 - n % 2)  # batch and channel strides
        out = _triton_apply(m, x, stencil_device, layout)
        x = _layout(x, layout)
        ref = module_reference(m, x)
        what = f"{spec} {shape} {dtype} {layout}"
        if dtype == torch.float32:
            assert_close(out, ref, 10.0, what=what)
        elif _exact_on_stencil(m):
            assert torch.equal(out, ref), what
        else:
            assert_close(out, ref, what=what)


def test_triton_stencil_int32_path_declines_sums_past_int32(stencil_device):
    """A constant fill far above the image's range would overflow the exact int32 sum: such a
    call takes the float path. Hand-computed: every pixel sees fill * -300 + 10 * 300 < 0."""
    x = torch.full((1, 1, 4, 5), 10, dtype=torch.uint8)
    m = convkit.chain("kernel(weights=[[-300,300]], scale=1, border=constant, value=7200180)")
    out = _triton_apply(m, x, stencil_device)
    assert torch.equal(out[0, 0, :, 0], torch.zeros(4, dtype=torch.uint8))
    assert torch.equal(out[0, 0, :, 1:], torch.zeros(4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("block,shape", [(None, (70, 300)), (SMALL_BLOCK, (40, 50))])
def test_triton_stencil_sharpen_equals_opencv(stencil_device, block, shape, monkeypatch):
    """The roofline benchmark's case against an independent reference: OpenCV's filter2D on
    uint8 with BORDER_REFLECT_101 (integer weights: no rounding ties), with the default tiles
    (the image has inner ones) and small ones."""
    monkeypatch.setattr(stencil, "BLOCK", block or DEFAULT_BLOCK)
    x = _image(shape, torch.uint8, b=1, c=2)
    k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    out = _triton_apply(convkit.chain("sharpen"), x, stencil_device)
    ref = np.stack([[cv2.filter2D(p, -1, k, borderType=cv2.BORDER_REFLECT_101) for p in img]
                    for img in x.numpy()])
    assert np.array_equal(out.numpy(), ref)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16])
def test_triton_stencil_rounds_half_to_even(stencil_device, dtype):
    """Ties round to even, as torch.round and the core do: the mean of two neighbours is a tie
    whenever their sum is odd. Hand-computed: y[i] = (x[i-1] + x[i]) / 2, replicate border."""
    top = 255 if dtype == torch.uint8 else 65535
    v = np.linspace(0, top, 16 * 16).astype(np.int64)
    x = torch.from_numpy(v.reshape(1, 1, 16, 16).astype(np.uint8 if top == 255 else np.uint16))
    m = convkit.chain("kernel(weights=[[1,1]], scale=2, border=replicate)")
    out = _triton_apply(m, x, stencil_device)
    a = x.numpy().astype(np.int64)[0, 0]
    left = np.concatenate([a[:, :1], a[:, :-1]], axis=1)
    want = np.round((left + a) / 2)  # NumPy rounds half to even
    assert (((left + a) % 2) == 1).sum() > 50  # plenty of ties
    assert np.array_equal(out.numpy()[0, 0].astype(np.int64), want)


def test_triton_stencil_declines(stencil_device):
    """What the stencil does not take runs on torch's methods: more than MAX_TAPS taps, an
    explicit separable method, float64, an input that needs a gradient."""
    x = _image((20, 21), torch.uint8).to(stencil_device)
    cases = [("gaussian(sigma=2)", x, {}), ("sharpen", x.double(), {}),
             ("box(size=3)", x, {"method": "separable"}),
             ("sharpen", x.float().requires_grad_(), {})]
    for spec, inp, kw in cases:
        with engine.options(triton=True, backend="torch"):
            steps = engine.explain(convkit.chain(spec).to(stencil_device), inp, **kw)
        assert all(backend == "torch" for _, backend, _ in steps), (spec, steps)


STENCIL_BUILDS = [
    *[dict(border=b, whole=n % 2 == 0) for n, b in enumerate(BORDERS)],
    dict(dtype=torch.uint16, out_dtype=torch.uint16, whole=True, border="constant"),
    dict(dtype=torch.float32, out_dtype=torch.float32, negative=None, two=True,
         border="constant"),
    dict(out_dtype=torch.float32, negative=None),
    dict(dtype=torch.float32, negative="offset"),
    dict(negative="abs", whole=True, unit=False, shape=(2, 4)),
    dict(shape=(7, 7), whole=True, block=(32, 256, 8)),
    dict(two=True, arch=80),
    # zero taps skipped: sharpen's corners; sobel's zero column and row; an all-zero kernel
    dict(whole=True, taps=(0b010111010,)),
    dict(two=True, taps=(0b101101101, 0b111000111), border="constant"),
    dict(dtype=torch.float32, out_dtype=torch.float32, negative=None, taps=(0,)),
]


@pytest.mark.parametrize("build", STENCIL_BUILDS, ids=str)
def test_triton_stencil_compiles(build):
    """The stencil compiles for the GPUs it targets (sm_90, sm_80), done ahead of time without
    a GPU: the interpreter runs the Python and cannot see what only the compiler rejects (a
    type that differs between branches, say)."""
    pytest.importorskip("triton")
    build = dict(build)
    kernel = stencil.compile_for(build.pop("arch", 90), **build)
    assert len(kernel.asm["cubin"]) > 1000


def test_triton_stencil_gradient_ignores_method(stencil_device):
    """A gradient magnitude's two kernels run by their own rule whatever ``method`` asks of
    the linear kernels, on the torch path as on the stencil."""
    x = _image((20, 21), torch.uint8).to(stencil_device)
    m = convkit.chain("sobel").to(stencil_device)
    with engine.options(triton=True, backend="torch", method="separable"):
        steps = engine.explain(m, x)
    assert steps == [(steps[0][0], "triton", "gradient")]


# --- every route of the OpenCV backend, every border ------------------------------------------
ROUTE_SPECS = ["sharpen", "gaussian(sigma=2)", "box(size=[5, 3])",
               "kernel([[1, 2, 0], [0, 1, -3]])", "erode(size=5)",
               "opening(size=[3, 5], iterations=2)", "median(size=5)", "sobel",
               "gaussian(sigma=1) | emboss"]
ROUTE_BORDERS = ["reflect", "symmetric", "replicate", "constant", "constant, value=0.3",
                 "circular"]


def _with_border(spec: str, border: str) -> str:
    return " | ".join(f"{p[:-1]}, border={border})" if p.endswith(")") else f"{p}(border={border})"
                      for p in (q.strip() for q in spec.split("|")))


@pytest.mark.parametrize("border", ROUTE_BORDERS)
@pytest.mark.parametrize("spec", ROUTE_SPECS)
def test_every_route_every_border_equals_the_definition(spec, border, monkeypatch,
                                                        worker_threads):
    """The OpenCV backend picks its route by layout, count, dtype, method and thread setting:
    whole planes or images on the workers, bands of rows shared among the workers (sized by
    BAND_BYTES, or by OPENCV_SPLITS_PIXELS while OpenCV's threads are on), one call in the
    calling thread, planes stacked. With every band size forced small, each route and border
    gives the module's definition (float64, the whole image padded by torch), the image's edge
    rows included: a route that pads a band by the border rule (wrapping a band round itself)
    or leaves a wrong row where two workers' shares meet is caught here."""
    monkeypatch.setattr(opencv_backend, "workers", lambda: 2)  # whatever this machine has
    monkeypatch.setattr(opencv_backend, "BAND_BYTES", 47 * 24)
    monkeypatch.setattr(opencv_backend, "OPENCV_SPLITS_PIXELS", 47 * 30)
    m = convkit.chain(_with_border(spec, border))
    for own in (False, True):
        if own:
            monkeypatch.setattr(opencv_backend, "_OWN_THREADS", 2)
            # where the workers' shares meet: the bands either side through buffers, instead
            # of the rows both wrote filtered again (the default for these kernels' reach)
            monkeypatch.setattr(opencv_backend, "MEET_BUFFER_ROWS", 1)
        for dtype in (torch.uint8, torch.uint16, torch.float32):
            for b, c, layout in [(1, 3, "planar"), (2, 3, "planar"), (1, 1, "planar"),
                                 (1, 3, "hwc"), (3, 3, "hwc"), (2, 3, "slice")]:
                x = _image((130, 47), dtype, b=b, c=c + (layout == "slice"))
                if layout == "hwc":
                    x = x.contiguous(memory_format=torch.channels_last)
                elif layout == "slice":
                    x = x[:, 1:]
                what = f"{spec} {border} own={own} {dtype} {b}x{c} {layout}"
                ref = module_reference(m, x)
                assert_close(engine.apply(m, x, backend="opencv"), ref, what=what)
                if b == 1 and layout != "slice":  # NumPy arrays: (H, W, C), or (H, W)
                    a = x[0].permute(1, 2, 0).numpy()
                    a = a[:, :, 0] if c == 1 else a
                    got = torch.from_numpy(np.ascontiguousarray(convkit.process(a, m)))
                    got = got[None, None] if c == 1 else got.permute(2, 0, 1)[None]
                    assert_close(got, ref, what=f"{what} array")
