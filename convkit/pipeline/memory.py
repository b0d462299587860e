"""Memory: sizes as the user writes them, what the machine has, and the pipeline's budget for
images in flight. Torch-free (the command line's CPU route uses it).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

__all__ = ["parse_memory", "available_memory", "default_budget", "FLIGHT_FACTOR"]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_memory(value: int | float | str) -> int:
    """Bytes from ``2147483648``, ``"2G"``, ``"512MiB"``, ``"1.5gb"`` (binary units)."""
    if isinstance(value, bool):
        raise TypeError(f"max_memory should be a number of bytes or a size like '2G'. Got "
                        f"{value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"max_memory should be a positive number of bytes. Got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(
            f"Invalid max_memory {value!r}. Expected bytes or a size like 512M, 2G, 1.5GiB"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable; cgroup limit if lower)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 << 30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            avail = min(avail, int(limit))
    return avail


# Bytes a run holds per decoded byte of an image between its decode and its write: the decoded
# pixels, the filtered copy, and the decoders' transients (OpenCV's 16-bit PNG decoder holds two
# copies while it swaps RGBA to BGRA). Measured: a 9400x9400 16-bit RGBA PNG (707 MB decoded)
# peaked at 2.28 GB on its way to JPEG, 3.2 times its pixels with the interpreter's 80 MB.
FLIGHT_FACTOR = 3


def default_budget() -> int:
    """The bytes of images in flight a run allows when not told (``max_memory``): a quarter of
    the memory available now (MemAvailable, or the cgroup limit if lower), at least 1 GiB."""
    return max(1 << 30, available_memory() // 4)
