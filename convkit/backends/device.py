"""Telling whether a machine may have a CUDA device, without importing torch.

``--device auto`` (and ``process(..., device=None)``) must pick a GPU where there is one, but
importing torch to ask costs seconds and hundreds of MB on every call of a command that then
works on the CPU. :func:`cuda_may_be_present` looks for what a CUDA device leaves on Linux; only
where it finds something is torch imported and asked (``torch.cuda.is_available()``).
"""

from __future__ import annotations

import functools
import glob
import os

__all__ = ["cuda_may_be_present", "wants_torch_device"]

# Device nodes of NVIDIA's driver (/dev/nvidia0, ...), WSL's GPU paravirtualisation and ROCm
# (torch's ROCm builds answer to "cuda" too).
_NODES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")


def cuda_may_be_present() -> bool:
    """False when this machine certainly offers torch no CUDA device: ``CUDA_VISIBLE_DEVICES``
    is set to nothing (or -1), or none of NVIDIA's device nodes (``/dev/nvidia0``, ...), WSL's
    ``/dev/dxg`` or ROCm's ``/dev/kfd`` exists. True otherwise (then ask torch)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return _device_nodes()


@functools.cache
def _device_nodes() -> bool:
    # once per process: listing /dev took a tenth of process(img, spec) on a 1080p photo
    return any(glob.glob(pattern) for pattern in _NODES)


def wants_torch_device(device: object) -> bool:
    """Whether running on ``device`` ("cpu", "auto", None, "cuda:1", a torch.device) needs
    torch to decide or to run: anything but the CPU, and "auto" where a GPU may be present."""
    if device is None or device == "auto":
        return cuda_may_be_present()
    return str(device) != "cpu"
