"""Shared fixtures: devices, dtypes and real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
DEVICES = ("cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda]))

# convkit border name -> OpenCV border type (filter2D refuses WRAP: see cv_filter2d)
CV_BORDERS = {
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
    "symmetric": cv2.BORDER_REFLECT,
    "circular": cv2.BORDER_WRAP,
}


def cv_filter2d(img: np.ndarray, kernel, border: str, value: float = 0.0) -> np.ndarray:
    """OpenCV's correlation with convkit's anchor (kh//2, kw//2) for every border mode.

    filter2D has no WRAP and no fill value, so circular and constant pre-pad with
    copyMakeBorder and filter only the interior.
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    kh, kw = kernel.shape
    if border not in ("circular", "constant"):
        return cv2.filter2D(img, -1, kernel, borderType=CV_BORDERS[border])
    top, left = kh // 2, kw // 2
    padded = cv2.copyMakeBorder(
        img, top, kh - 1 - top, left, kw - 1 - left, CV_BORDERS[border], value=(value,) * 4
    )
    out = cv2.filter2D(padded, -1, kernel, anchor=(left, top), borderType=cv2.BORDER_CONSTANT)
    return out[top : top + img.shape[0], left : left + img.shape[1]]


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny images: torch's second thread only adds waiting, a lot of it on a
    busy 2-core machine. Restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _opencv_threads_restored():
    """The command line hands OpenCV's threads to convkit's workers for the rest of its
    process (opencv.own_threads); in this test process each test starts as it found them."""
    import cv2

    from convkit.backends import opencv

    before = cv2.getNumThreads()
    yield
    opencv.own_threads(0)
    cv2.setNumThreads(before)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photo, uint8 (H, W, 3), cropped small to keep tests fast."""
    from PIL import Image

    path = SAMPLES / "astronaut.png"
    if not path.exists():
        pytest.skip("samples/astronaut.png is missing")
    img = np.asarray(Image.open(path).convert("RGB"))
    return np.ascontiguousarray(img[100:260, 150:350])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def run_python(code: str, *args: str, env: dict | None = None, timeout: int = 120):
    """``code`` in a fresh Python interpreter (the tests' own), with ``args`` in sys.argv:
    what a new process imports and prints, untouched by what this one has loaded."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_cli(*argvs: list[str], report: str, before: str = "", env: dict | None = None,
            timeout: int = 120) -> str:
    """Each ``argv`` through convkit's command line, one after the other, in one fresh
    interpreter (see :func:`run_python`), after the statements ``before`` (a lowered limit);
    each must exit 0. Returns the last line that ``print(report)`` gives there afterwards
    (``report``: the arguments, as source; what the process imported, its peak memory)."""
    code = f"import sys\n{before}\nfrom convkit.cli.main import main\n"
    for argv in argvs:
        code += (f"try:\n    main({list(argv)!r})\n"
                 f"except SystemExit as e:\n    assert e.code == 0, ({argv!r}, e.code)\n")
    res = run_python(code + f"print({report})\n", env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def traced_peak(fn):
    """``fn()`` and the peak of the memory Python's allocators traced while it ran (NumPy's
    arrays included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two arrays of the same shape; two integer arrays
    must have the same dtype too (an image read back at another depth is a failure)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
