"""Learned filters: LeNet-style conv nets trained on a folder of images, saved to one file and
run like any built-in filter.

* :class:`LearnedFilter` / :class:`ModelConfig` (``model.py``): the net.
* :func:`load_model` / :func:`save_model` (``files.py``): model files, loaded without running
  code from them.
* :func:`train` (``train.py``): the training loop; ``data.py`` makes the training batches;
  ``metrics.py`` has PSNR and SSIM; ``plots.py`` draws the pictures; ``cli.py`` holds the
  ``convkit train`` and ``convkit info`` commands.

Importing this package does not import torch; the names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "LearnedFilter": ("model", "LearnedFilter"),
    "ModelConfig": ("model", "ModelConfig"),
    "load_model": ("files", "load_model"),
    "save_model": ("files", "save_model"),
    "train": ("train", "train"),
    "TrainConfig": ("train", "TrainConfig"),
    "Trainer": ("train", "Trainer"),
    "TrainingError": ("train", "TrainingError"),
    "TrainingInterrupted": ("train", "TrainingInterrupted"),
    "psnr": ("metrics", "psnr"),
    "ssim": ("metrics", "ssim"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'convkit.learn' has no attribute {name!r}") from None
    value = getattr(import_module(f".{module_name}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
