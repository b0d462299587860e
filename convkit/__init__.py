"""convkit: image filtering with fixed and learned conv layers.

The public API is what ``__all__`` names. Importing convkit does not import torch; the names
that need it load on first use, so the command line starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .registry import list_filters

_LAZY = {
    "get_filter": ("registry", "get_filter"),
    "register_toml": ("registry", "register_toml"),
    "Kernel2d": ("modules", "Kernel2d"),
    "GradientMagnitude": ("modules", "GradientMagnitude"),
    "Median": ("modules", "Median"),
    "Pool2d": ("modules", "Pool2d"),
    "Unsharp": ("modules", "Unsharp"),
    "Chain": ("chains", "Chain"),
    "chain": ("chains", "chain"),
    "process": ("api", "process"),
    "run": ("pipeline", "run"),
    "Summary": ("pipeline", "Summary"),
    "load_model": ("learn.files", "load_model"),
    "apply_tiled": ("tiling", "apply_tiled"),
    "filter_file": ("tiling", "filter_file"),
    "to_torch": ("exporters", "to_torch"),
    "export": ("exporters", "export"),
    "functional": ("functional", None),
    "engine": ("engine", None),
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
