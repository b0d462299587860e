"""``convkit.process``: filter one image of any common kind and get the same kind back.

A NumPy array or PIL image filtered on the CPU by a spec of fixed filters runs without torch:
the spec is planned (:func:`convkit.plan.specs.plan_spec`) and run on OpenCV
(:func:`convkit.backends.opencv.run_plan`), the same plan and backend the engine picks for modules
(except that a kernel the engine would give to torch's FFT runs on OpenCV's DFT or separable
passes: equal within float rounding, without importing torch). A filter module on such an
image runs its cached plan the same way, on the array as it lies.
Tensors, pooling, learned filters, float64 images and CUDA devices go through torch.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["process", "resolve_device"]

_NP_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU; anything else as torch reads it."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        # torch knows more device types (meta, xla, mps, hpu, ...), but convkit's filters
        # run on the CPU and CUDA only
        raise ValueError(f"Invalid device {str(device)!r}. Expected auto, cpu, cuda or cuda:N; "
                         f"this machine offers {_offered(torch)}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available here; "
                         f"this machine offers {_offered(torch)}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} was asked for; this machine offers "
                         f"{_offered(torch)}")
    return dev


def _offered(torch) -> str:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "cpu" + "".join(f", cuda:{i}" for i in range(n))


def process(image: Any, spec_or_module: str | nn.Module | list, *, device=None,
            alpha: bool | None = None) -> Any:
    """Filter ``image`` and return an image of the same kind, shape and dtype (pooling aside).

    Args:
        image: a numpy array (H, W) or (H, W, C) of uint8, uint16 or float32; a ``PIL.Image``;
            or a torch tensor (C, H, W) / (B, C, H, W) of uint8, uint16 or float.
        spec_or_module: a chain spec string (``"gaussian(sigma=2) | sharpen"``), a module, or a
            list of both.
        device: "cpu", "cuda", "cuda:N", or None/"auto" (CUDA when present).
        alpha: whether the last channel is alpha (passed through). Default: for numpy arrays and
            tensors, True with 2 or 4 channels; for PIL images, from the mode.

    Integer images are filtered on the [0, 1] scale and rounded to nearest, saturating to the
    dtype's range; float images come back unclamped.
    """
    plan = _plan(image, spec_or_module, device)
    if plan is not None:
        if _is_pil(image):
            return _process_pil(image, plan, None, alpha)
        return _process_numpy(image, plan, None, alpha)
    import torch
    from torch import nn

    dev = resolve_device(device)
    if isinstance(spec_or_module, nn.Module):
        module = spec_or_module.to(dev).eval()
    else:
        module = _spec_module(spec_or_module, dev)
    if _is_pil(image):
        return _process_pil(image, module, dev, alpha)
    if isinstance(image, np.ndarray):
        return _process_numpy(image, module, dev, alpha)
    if isinstance(image, torch.Tensor):
        return _process_tensor(image, module, dev, alpha)
    raise TypeError(
        "image should be a numpy array, a PIL.Image or a torch.Tensor. "
        f"Got {type(image).__name__}"
    )


def _spec_module(spec: Any, dev: torch.device) -> nn.Module:
    """The chain of a spec string (or list) on ``dev``. A spec string that names no file is
    built once per device and kept (a few dozen of them): building it and its plan took 0.45
    ms of a 1.6 ms sharpen on a 1080p RGB tensor at every call. A spec that reads a file
    (a kernel .toml, a model) is built afresh, so that an edited file is read again."""
    from .pipeline.batches import file_spec

    if isinstance(spec, str) and file_spec(spec) == spec and "path" not in spec:
        return _cached_chain(spec, str(dev))
    return _chain_on(spec, dev)


def _chain_on(spec: Any, dev: Any) -> nn.Module:
    from .nn.chains import chain

    return chain(spec).to(dev).eval()


_cached_chain = functools.lru_cache(maxsize=32)(_chain_on)


def _plan(image: Any, spec: Any, device: Any):
    """The plan that runs this call on the array itself, on OpenCV, or None when it goes
    through tensors: a spec's torch-free plan (:func:`convkit.pipeline.batches.cpu_plan`) or a
    filter module's cached plan (:func:`_module_plan`), where OpenCV runs it for this dtype
    as the engine would."""
    if isinstance(image, np.ndarray):
        if image.dtype.name not in ("uint8", "uint16", "float32"):
            return None
    elif not _is_pil(image) or image.mode == "F":  # (float PIL images: as before)
        return None
    from .backends import opencv
    from .pipeline.batches import cpu_plan
    from .plan.rules import current

    plan = _module_plan(spec, device) if _is_module(spec) else cpu_plan(spec, device)
    dtype = image.dtype if isinstance(image, np.ndarray) else \
        ("uint16" if image.mode.startswith("I;16") else "uint8")
    if plan is None or not opencv.runs_plan(plan, dtype, current(), torch_fft=False):
        return None
    return plan


def _is_module(spec: Any) -> bool:
    torch = sys.modules.get("torch")  # (a module means torch is loaded)
    return torch is not None and isinstance(spec, torch.nn.Module)


def _module_plan(module: nn.Module, device: Any):
    """The engine's cached plan of ``module`` (the weights it holds now) for a run on the CPU,
    run on the array as it lies: no tensors, no copy of the module to a device. None where
    the run goes through torch (a device that may be CUDA; a plan that the caller checks
    against OpenCV's operations)."""
    from .backends.device import wants_torch_device
    from .backends.module_plans import get_plan
    from .plan.rules import current

    if wants_torch_device(device):
        return None
    plan = get_plan(module, current().fuse)
    return plan if plan.ops else None


def _is_pil(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(image, Image.Image)


def _default_alpha(channels: int, alpha: bool | None) -> bool:
    return channels in (2, 4) if alpha is None else bool(alpha)


def _run(module: nn.Module, x: torch.Tensor, dev: torch.device, alpha: bool) -> torch.Tensor:
    import torch

    from .backends import engine

    with torch.inference_mode():
        return engine.apply(module, x.to(dev), alpha=alpha).cpu()


def _run_plan(plan, hwc: np.ndarray, alpha: bool) -> np.ndarray:
    """``plan`` on an (H, W, C) array on OpenCV; an alpha channel passes through (these plans
    do not pool)."""
    from .backends import opencv
    from .plan.rules import current

    out = opencv.run_plan_image(plan, hwc.transpose(2, 0, 1), alpha, current())
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _process_tensor(x: torch.Tensor, module, dev, alpha) -> torch.Tensor:
    if x.dim() not in (3, 4):
        raise ValueError(f"image tensor should be (C,H,W) or (B,C,H,W). Got shape {tuple(x.shape)}")
    batch = x if x.dim() == 4 else x.unsqueeze(0)
    out = _run(module, batch, dev, _default_alpha(batch.shape[1], alpha)).to(x.device)
    return out if x.dim() == 4 else out.squeeze(0)


def _process_numpy(a: np.ndarray, module, dev, alpha) -> np.ndarray:
    if a.dtype.type not in _NP_DTYPES:
        raise TypeError(f"numpy image should be uint8, uint16 or float32. Got {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(f"numpy image should be (H,W) or (H,W,C). Got shape {a.shape}")
    hwc = a[:, :, None] if a.ndim == 2 else a
    if hwc.shape[0] == 0 or hwc.shape[1] == 0:
        raise ValueError(f"numpy image should not be empty. Got shape {a.shape}")
    if _default_alpha(hwc.shape[2], alpha) and hwc.shape[2] < 2:
        raise ValueError("alpha=True needs at least 2 channels")
    if dev is None:  # a torch-free plan
        res = _run_plan(module, hwc, _default_alpha(hwc.shape[2], alpha))
        return res[:, :, 0] if a.ndim == 2 else res
    import torch

    # torch warns on read-only arrays (np.asarray of a PIL image); the copy is never written
    # to either, but a writable one keeps the user's console clean.
    hwc = np.ascontiguousarray(hwc) if hwc.flags.writeable else np.array(hwc, order="C")
    x = torch.from_numpy(hwc).permute(2, 0, 1).unsqueeze(0)
    out = _run(module, x, dev, _default_alpha(hwc.shape[2], alpha))
    res = out[0].permute(1, 2, 0).contiguous().numpy()
    return res[:, :, 0] if a.ndim == 2 else res


def _process_pil(img, module, dev, alpha):
    from PIL import Image

    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "CMYK":
        img = img.convert("RGB")
    if img.mode not in ("L", "LA", "RGB", "RGBA", "I;16", "F"):
        raise ValueError(
            f"PIL image mode {img.mode!r} is not supported. Expected L, LA, RGB, RGBA, P, 1, "
            "CMYK, I;16 or F"
        )
    a = np.array(img)
    if img.mode == "I;16":
        a = a.astype(np.uint16)
    alpha = img.mode in ("LA", "RGBA") if alpha is None else alpha
    out = _process_numpy(a, module, dev, alpha)
    if img.mode == "I;16":
        return Image.fromarray(out)  # a 2-D uint16 array is I;16 (Pillow 13 refuses mode=)
    return Image.fromarray(out, mode=img.mode)
