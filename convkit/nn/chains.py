"""Filter chains: a spec string <-> :class:`Chain`, an ``nn.Sequential`` of filters."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from ..kernels.chainspec import Call, check_path_element, parse
from ..kernels.registry import get_filter, get_info
from .modules import Filter

__all__ = ["Chain", "chain", "compose", "build_call"]

class Chain(nn.Sequential):
    """Filters applied in turn. ``str(chain)`` is a spec string that parses to the same chain.

    Shape: input (B, C, H, W) or (C, H, W) float; output float, the input's size unless the
    chain pools. ``chain(x)`` runs the whole chain as one engine plan (kernels fused where that
    is exact), as :func:`convkit.process` does; see :mod:`convkit.nn.modules`.

    >>> c = chain("gaussian(sigma=2) | sharpen(amount=1.5)")
    >>> str(c)
    'gaussian(sigma=2.0) | sharpen(amount=1.5)'
    """

    opens_in_plans = True  # the engine plans its filters, not the container

    def forward(self, x: Tensor) -> Tensor:
        from ..backends.engine import module_forward

        return module_forward(self, x)

    @property
    def negative(self) -> str:
        """Integer mapping of the result: that of the last filter that sets one, else clip."""
        for m in reversed(list(self)):
            neg = getattr(m, "negative", None)
            if neg is not None:
                return neg
        return "clip"

    def spec(self) -> str:
        parts = []
        for m in self:
            if not isinstance(m, Filter):
                raise ValueError(f"{type(m).__name__} has no spec string; only convkit filters do")
            parts.append(m.spec())
        return " | ".join(parts)

    def to_torch(self, channels: int = 3) -> nn.Sequential:
        """The chain as plain torch layers (pads, depthwise ``nn.Conv2d``, pooling, window
        layers), frozen: see :func:`convkit.nn.export.to_torch`."""
        from .export import to_torch

        return to_torch(self, channels)

    def __str__(self) -> str:
        try:
            return self.spec()
        except (ValueError, NotImplementedError):
            return nn.Sequential.__repr__(self)

    def __or__(self, other):
        return compose(self, other) if isinstance(other, (str, nn.Module)) else NotImplemented

    def __ror__(self, other):
        return compose(other, self) if isinstance(other, (str, nn.Module)) else NotImplemented


def compose(*parts: str | nn.Module) -> Chain:
    """``a | b``: a new chain of the filters of ``a`` then those of ``b`` (chains are opened,
    modules shared, not copied); a string is parsed as a spec."""
    mods: list[nn.Module] = []
    for p in parts:
        if isinstance(p, str):
            p = chain(p)
        if not isinstance(p, nn.Module):
            raise TypeError(f"a chain joins filters and spec strings. Got {type(p).__name__}")
        mods.extend(p if isinstance(p, Chain) else [p])
    return Chain(*mods)


def build_call(call: Call) -> nn.Module:
    """Build one parsed element (a registered name, or a kernel / model file)."""
    if call.path is not None:
        return _from_path(call.path)
    info = get_info(call.name)
    params = info.check_params(tuple(call.args), call.kwargs)
    return get_filter(call.name, **params)


def _from_path(path: str) -> nn.Module:
    if check_path_element(path) == "kernel":
        return get_filter("kernel", path=path)
    from ..learn.files import load_model

    return load_model(path)


def chain(spec: str | nn.Module | Iterable[str | nn.Module]) -> Chain:
    """Build a :class:`Chain` from a spec string, a module, or a list of modules and strings.

    Raises ValueError naming the position of a parse error, an unknown filter (with the valid
    names) or a bad parameter (with its valid range).
    """
    if isinstance(spec, Chain):
        return spec
    if isinstance(spec, str):
        return Chain(*[build_call(c) for c in parse(spec)])
    if isinstance(spec, nn.Module):
        return Chain(spec)
    if isinstance(spec, Iterable):
        mods: list[nn.Module] = []
        for item in spec:
            if isinstance(item, str):
                mods.extend(chain(item))
            elif isinstance(item, nn.Module):
                mods.append(item)
            else:
                raise TypeError(
                    f"chain items should be spec strings or nn.Modules. Got {type(item).__name__}"
                )
        if not mods:
            raise ValueError("a chain should hold at least one filter. Got an empty list")
        return Chain(*mods)
    raise TypeError(f"spec should be a string, an nn.Module or a list. Got {type(spec).__name__}")
