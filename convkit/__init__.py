"""convkit: image filtering with fixed and learned conv layers.

The public API is what ``__all__`` names. Importing convkit does not import torch; the names
that need it load on first use, so the command line starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .kernels.registry import list_filters

_LAZY = {
    "get_filter": ("kernels.registry", "get_filter"),
    "register_toml": ("kernels.registry", "register_toml"),
    "Filter": ("nn.modules", "Filter"),
    "Kernel2d": ("nn.modules", "Kernel2d"),
    "GradientMagnitude": ("nn.modules", "GradientMagnitude"),
    "Median": ("nn.modules", "Median"),
    "Pool2d": ("nn.modules", "Pool2d"),
    "Unsharp": ("nn.modules", "Unsharp"),
    "Chain": ("nn.chains", "Chain"),
    "chain": ("nn.chains", "chain"),
    "process": ("api", "process"),
    "run": ("pipeline.batches", "run"),
    "Summary": ("pipeline.batches", "Summary"),
    "load_model": ("learn.files", "load_model"),
    "apply_tiled": ("pipeline.tiling", "apply_tiled"),
    "filter_file": ("pipeline.huge_files", "filter_file"),
    "to_torch": ("nn.export", "to_torch"),
    "export": ("nn.export", "export"),
    "functional": ("nn.functional", None),
    "engine": ("backends.engine", None),
}

__all__ = ["__version__", "list_filters", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'convkit' has no attribute {name!r}") from None
    module = import_module(f".{module_name}", __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
