"""Filter registry: name -> parameters + builder.

The registry itself does not import torch: the CLI lists filters and builds its options from it,
and only the chosen filter's builder (a ``"module:function"`` string) is imported when a filter is
built. Kernels named in ``filters/*.toml`` are registered from the files.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .specs import (
    BORDERS,
    KernelSpec,
    ParameterTypeError,
    builtin_specs,
    check_weights,
    is_number,
    load_spec,
)


@dataclass(frozen=True)
class Param:
    """One filter parameter.

    kind: "float", "int", "bool", "choice", "matrix" (rows of numbers), "path", "str", or
    "pair" / "ipair" (a float / an int for both axes, or [x, y]).
    ``low``/``high`` bound numbers; ``low_open`` makes the lower bound strict (sigma > 0).
    A default of None means "not given" (for example gaussian's ksize).
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def check(self, value: Any, where: str) -> Any:
        if value is None and self.default is None:
            return None
        kind = self.kind
        if kind in ("pair", "ipair"):
            # one number for both axes, or [x, y] (width first, as OpenCV's Size)
            one = Param(self.name, "int" if kind == "ipair" else "float", self.default,
                        self.help, low=self.low, high=self.high, low_open=self.low_open)
            if isinstance(value, list | tuple):
                if len(value) != 2:
                    raise ValueError(f"{where}: {self.name} should be a number or [x, y]. "
                                     f"Got {len(value)} numbers")
                x, y = (one.check(v, where) for v in value)
                return x if x == y else [x, y]
            return one.check(value, where)
        if kind in ("float", "int"):
            if not is_number(value):
                what = "a number"
                if isinstance(value, str) and value.strip().lower().lstrip("+-") in (
                        "nan", "inf", "infinity"):
                    what = "a finite number"
                raise ParameterTypeError(f"{where}: {self.name} should be {what}. Got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{where}: {self.name} should be a finite number. Got {value!r}")
            if kind == "int":
                if value != int(value):
                    raise ValueError(f"{where}: {self.name} should be an integer. Got {value!r}")
                value = int(value)
            else:
                value = float(value)
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                op = ">" if self.low_open else ">="
                raise ValueError(
                    f"{where}: {self.name} should be {op} {_num(self.low)}. Got {value}"
                )
            if self.high is not None and value > self.high:
                raise ValueError(
                    f"{where}: {self.name} should be <= {_num(self.high)}. Got {value}"
                )
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise ParameterTypeError(
                    f"{where}: {self.name} should be true or false. Got {value!r}")
            return value
        if kind == "choice":
            if value not in self.choices:
                raise ValueError(
                    f"{where}: invalid {self.name} {value!r}. Expected one of "
                    f"{', '.join(self.choices)}."
                )
            return value
        if kind == "matrix":
            rows = check_weights(value, what=f"{where}: {self.name}")
            return [list(r) for r in rows]
        if kind in ("path", "str"):
            if isinstance(value, Path):
                value = str(value)
            if not isinstance(value, str) or not value:
                raise ParameterTypeError(
                    f"{where}: {self.name} should be a non-empty string. Got {value!r}")
            return value
        raise AssertionError(kind)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class FilterInfo:
    """A registered filter: its parameters and the dotted path of its builder."""

    name: str
    description: str
    params: tuple[Param, ...]
    builder: str
    spec: KernelSpec | None = None
    example: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def check_params(self, args: tuple = (), kwargs: dict | None = None) -> dict[str, Any]:
        """Validate ``args``/``kwargs`` against the parameters; return the given ones, checked.

        Positional values fill parameters in order. Only parameters that were given appear in
        the result, so that a chain prints back as it was written.
        """
        kwargs = dict(kwargs or {})
        names = [p.name for p in self.params]
        if len(args) > len(names):
            raise ValueError(
                f"{self.name}: takes at most {len(names)} positional values. Got {len(args)}"
            )
        for name, value in zip(names, args, strict=False):
            if name in kwargs:
                raise ValueError(f"{self.name}: {name} given twice")
            kwargs[name] = value
        out = {}
        for key, value in kwargs.items():
            if key not in names:
                expected = ", ".join(names) if names else "no parameters"
                raise ValueError(f"{self.name}: unknown parameter {key!r}. Expected: {expected}")
            out[key] = self.param(key).check(value, self.name)
        return out

    def leaves(self, **params: Any) -> list | None:
        """Check ``params`` and give the filter's leaves (:mod:`convkit.plan.leaves`), without
        torch; None for a filter that is not fixed kernels (pooling, a learned filter, unsharp
        with a threshold)."""
        checked = self.check_params((), params)
        if not self.builder.startswith(_L):
            return None
        return self._call(self.builder, checked)

    def build(self, **params: Any):
        """Check ``params`` and build the module (imports torch)."""
        checked = self.check_params((), params)
        out = self._call(self.builder, checked)
        if isinstance(out, list):
            from ..nn.builders import from_leaves

            out = from_leaves(out)
        elif out is None:  # a torch-free builder that hands this case to its torch twin
            out = self._call(_B + self.builder.split(":")[1], checked)
        out.spec_name = self.name
        out.spec_params = {k: v for k, v in checked.items() if v is not None}  # (not given)
        return out

    def _call(self, builder: str, checked: dict) -> Any:
        module_name, func_name = builder.split(":")
        fn = getattr(importlib.import_module(module_name), func_name)
        try:
            return fn(self, **checked)
        except ValueError as e:  # name the filter, not the module class that refused
            msg = str(e)
            if msg.startswith(f"{self.name}:") or type(e) is not ValueError:
                raise
            raise ValueError(f"{self.name}: {msg.removeprefix('Kernel2d: ')}") from None


# --- shared parameters ---------------------------------------------------------------------
BORDER = Param(
    "border", "choice", "reflect",
    "border mode: reflect (OpenCV REFLECT_101), replicate, constant, circular, symmetric "
    "(OpenCV REFLECT)",
    choices=BORDERS,
)
VALUE = Param("value", "float", 0.0, "fill value of the constant border, in 8-bit grey levels")
STRENGTH = Param("strength", "float", 1.0, "0 = identity, 1 = the filter, above 1 exaggerates")
NEGATIVE = Param(
    "negative", "choice", "abs",
    "how a signed response is written to an integer image: abs, offset (+128) or clip",
    choices=("abs", "offset", "clip"),
)
LINEAR = (STRENGTH, BORDER, VALUE)
# The longest kernel side a parameter may ask for. A kernel is built dense (4095 x 4095 float64
# is 134 MB and takes seconds to build); box(size=100000) would ask for 80 GB. The gaussian's
# sigma is bounded so that its side, round(6 * sigma + 1) made odd, stays within it.
MAX_SIDE = 4095
MAX_SIGMA = 682.0
POOL = (
    Param("size", "ipair", 2, "window side, or [width, height]", low=1, high=MAX_SIDE),
    Param("stride", "ipair", None, "step between windows, or [across, down] (default: size)",
          low=1),
    BORDER, VALUE,
)

# Morphology (convkit.kernels.morphology): a structuring element and OpenCV's border rule.
MORPH = (
    Param("size", "ipair", 3, "side of the structuring element, or [width, height]", low=1,
          high=255),
    Param("shape", "choice", "rect", "structuring element: rect, cross or ellipse, as "
          "cv2.getStructuringElement", choices=("rect", "cross", "ellipse")),
    Param("footprint", "matrix", None, "any structuring element as rows of 0 and 1 (instead "
          "of size and shape), anchored at its centre"),
    Param("iterations", "int", 1, "erosions and dilations repeated, as OpenCV's iterations",
          low=1, high=100),
    Param("border", "choice", "none", "none (pixels outside the image never win: OpenCV's "
          "default) or a border mode: reflect, replicate, constant, circular, symmetric",
          choices=("none", *BORDERS)),
    VALUE,
)
_MORPH_TEXT = {
    "erode": "Erosion: the minimum under the structuring element, as cv2.erode.",
    "dilate": "Dilation: the maximum under the structuring element, as cv2.dilate.",
    "opening": "Opening: erode, then dilate (removes small bright details).",
    "closing": "Closing: dilate, then erode (fills small dark gaps).",
    "morph_gradient": "Morphological gradient: dilation minus erosion (outlines).",
    "tophat": "Top hat: the image minus its opening (small bright details).",
    "blackhat": "Black hat: the closing minus the image (small dark details).",
}

# Fixed filters name their torch-free leaves (convkit.plan.leaves), which give the module and the
# plan alike; the others a torch builder. Named by dotted string, so that listing filters and
# --help import neither.
_L = "convkit.plan.leaves:"
_B = "convkit.nn.builders:"

_BUILTINS: tuple[FilterInfo, ...] = (
    FilterInfo(
        "box", "Box (mean) blur over a size x size square, as cv2.blur.",
        (Param("size", "ipair", 3, "side of the square, or [width, height]", low=1,
               high=MAX_SIDE), *LINEAR),
        _L + "box", example="convkit box --size 5 photo.jpg",
    ),
    FilterInfo(
        "gaussian", "Gaussian blur, as cv2.GaussianBlur (ksize from sigma, or sigma from ksize, as "
        "OpenCV chooses them).",
        (
            Param("sigma", "pair", None, "standard deviation in pixels, or [x, y] for "
                  "different ones across and down; 0 (or left out, with ksize) derives it from "
                  "ksize as OpenCV does (0.3*((ksize-1)*0.5-1)+0.8; its fixed taps for 3 to "
                  "9), a y of 0 is x's (cv2.GaussianBlur's rules); default 1", low=0,
                  high=MAX_SIGMA),
            Param("ksize", "ipair", None, "kernel side, or [width, height]; default "
                  "round(6*sigma+1) made odd", low=1, high=MAX_SIDE),
            *LINEAR,
        ),
        _L + "gaussian", example="convkit gaussian --sigma 2 photo.jpg",
    ),
    FilterInfo(
        "unsharp", "Unsharp mask: x + amount * (x - gaussian(x)), only where the difference "
        "exceeds threshold.",
        (
            Param("sigma", "float", 1.0, "blur standard deviation in pixels", low=0,
                  low_open=True, high=MAX_SIGMA),
            Param("amount", "float", 1.0, "strength of the high-pass added back"),
            Param("threshold", "float", 0.0, "minimum difference, in 8-bit grey levels", low=0),
            Param("ksize", "int", None, "blur kernel side; default from sigma", low=1,
                  high=MAX_SIDE),
            BORDER, VALUE,
        ),
        _L + "unsharp", example="convkit unsharp --sigma 2 --amount 1.5 photo.jpg",
    ),
    FilterInfo(
        "edges", "Visible edge map: Sobel gradient magnitude of a lightly smoothed image.",
        (Param("sigma", "float", 1.0, "pre-smoothing sigma in pixels", low=0, low_open=True,
               high=MAX_SIGMA), BORDER, VALUE),
        _L + "edges", example="convkit edges photo.jpg",
    ),
    FilterInfo(
        "median", "Median of each size x size neighbourhood (non-linear; lower median for even "
        "sizes).",
        (Param("size", "int", 3, "side of the square", low=1, high=MAX_SIDE), BORDER, VALUE),
        _L + "median", example="convkit median --size 5 photo.jpg",
    ),
    FilterInfo(
        "avgpool", "Average pooling: shrinks the image by stride.", POOL,
        _B + "avgpool", example="convkit avgpool --size 2 photo.jpg",
    ),
    FilterInfo(
        "maxpool", "Max pooling: shrinks the image by stride.", POOL,
        _B + "maxpool", example="convkit maxpool --size 2 photo.jpg",
    ),
    FilterInfo("minimum", "Smallest value of each size x size square, as Pillow's MinFilter.",
               (Param("size", "int", 3, "side of the square", low=1, high=63),
                Param("border", "choice", "replicate", BORDER.help, choices=BORDERS), VALUE),
               _B + "minimum", example="convkit minimum --size 5 photo.jpg"),
    FilterInfo("maximum", "Largest value of each size x size square, as Pillow's MaxFilter.",
               (Param("size", "int", 3, "side of the square", low=1, high=63),
                Param("border", "choice", "replicate", BORDER.help, choices=BORDERS), VALUE),
               _B + "maximum", example="convkit maximum --size 5 photo.jpg"),
    FilterInfo("percentile", "Value at percentile q of each size x size square (rank "
               "round(q/100*(n-1)) of n), as Pillow's RankFilter.",
               (Param("size", "int", 3, "side of the square", low=1, high=63),
                Param("q", "float", 50.0, "percentile, 0 (minimum) to 100 (maximum)", low=0,
                      high=100),
                Param("border", "choice", "replicate", BORDER.help, choices=BORDERS), VALUE),
               _B + "percentile", example="convkit percentile --size 5 --q 25 photo.jpg"),
    *(FilterInfo(name, text, MORPH, _L + "morphology_" + name,
                 example=f"convkit {name} --size 5 --shape ellipse photo.jpg")
      for name, text in _MORPH_TEXT.items()),
    FilterInfo(
        "kernel", "A custom kernel: weights as rows of numbers, or a TOML file (path).",
        (
            Param("weights", "matrix", None, "rows of numbers, e.g. [[0,-1,0],[-1,5,-1],[0,-1,0]]"),
            Param("path", "path", None, "a kernel TOML file (see filters/ for the schema)"),
            Param("scale", "float", None, "divide the weights by this (default: their sum, or 1)"),
            Param("offset", "float", None, "added after scaling, in 8-bit grey levels"),
            Param("negative", "choice", None, NEGATIVE.help, choices=NEGATIVE.choices),
            Param("strength", "float", 1.0, STRENGTH.help),
            Param("border", "choice", None, BORDER.help, choices=BORDERS),
            VALUE,
        ),
        _L + "kernel",
        example="convkit kernel --weights '[[0,-1,0],[-1,5,-1],[0,-1,0]]' photo.jpg",
    ),
    FilterInfo(
        "learned", "A learned filter saved by `convkit train` (a model file).",
        (Param("path", "path", None, "the model file written by convkit train"),),
        "convkit.learn.files:build_learned", example="convkit learned --path model.pt photo.jpg",
    ),
)


def _from_spec(spec: KernelSpec) -> FilterInfo:
    """Registry entry for a kernel file; a few built-ins add their own parameters. The border
    parameter's default is the file's own (``border = "symmetric"`` in roberts.toml), so that
    ``--help``, ``convkit list --json`` and ``spec()`` say what runs."""
    linear = LINEAR if spec.border == BORDER.default else \
        (STRENGTH, replace(BORDER, default=spec.border), VALUE)
    if spec.type == "gradient":
        params = (
            Param("dx", "int", 0, "order of the x derivative (0 or 1); 0 and dy 0 = magnitude",
                  low=0, high=1),
            Param("dy", "int", 0, "order of the y derivative (0 or 1)", low=0, high=1),
            NEGATIVE, *linear,
        )
        if spec.name == "sobel":  # OpenCV's apertures (a file's kernel is its own)
            params = (*params, Param("ksize", "int", 3, "aperture: 1, 3, 5 or 7, as cv2.Sobel's "
                                     "(1: [-1, 0, 1] without smoothing)", low=1, high=7))
        return FilterInfo(spec.name, spec.description, params, _L + "gradient", spec,
                          example=f"convkit {spec.name} --dx 1 photo.jpg")
    if spec.name == "sharpen":
        params = (Param("amount", "float", 1.0, "strength of the high-pass"), *linear)
        return FilterInfo(spec.name, spec.description, params, _L + "sharpen", spec,
                          example="convkit sharpen --amount 1.5 photo.jpg")
    params = (NEGATIVE, *linear) if spec.signed else linear
    return FilterInfo(spec.name, spec.description, params, _L + "named_kernel", spec,
                      example=f"convkit {spec.name} photo.jpg")


_REGISTRY: dict[str, FilterInfo] = {}


def _ensure_loaded() -> None:
    if _REGISTRY:
        return
    for info in _BUILTINS:
        _REGISTRY[info.name] = info
    for spec in builtin_specs().values():
        if spec.name in _REGISTRY:
            raise ValueError(f"{spec.source}: an entry is already registered under {spec.name!r}")
        _REGISTRY[spec.name] = _from_spec(spec)


def register_filter(info: FilterInfo) -> FilterInfo:
    """Add a filter to the registry; a name that is taken is refused."""
    _ensure_loaded()
    if info.name in _REGISTRY:
        raise ValueError(f"An entry is already registered under the name {info.name!r}")
    _REGISTRY[info.name] = info
    return info


def register_toml(path: str | Path) -> str:
    """Register a user's kernel TOML file under its ``name``; returns the name."""
    return register_filter(_from_spec(load_spec(path))).name


def list_filters() -> list[str]:
    """Sorted names of every registered filter."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def unknown_filter(name: object, extra: Sequence[str] = ()) -> str:
    """The message for a filter name that is not registered: the closest names first (a typo
    such as 'sharpn'), then every name; a long name quoted as an excerpt."""
    from difflib import get_close_matches

    from .chainspec import excerpt

    names = [*list_filters(), *extra]
    text = excerpt(name) if isinstance(name, str) else repr(type(name).__name__)
    close = get_close_matches(name, names, n=3, cutoff=0.6) if isinstance(name, str) and \
        len(name) <= 40 else []
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown filter {text}.{hint} Expected one of: {', '.join(sorted(names))}"


def get_info(name: str) -> FilterInfo:
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(unknown_filter(name))
    return _REGISTRY[name]


def get_filter(name: str, **params: Any):
    """Build the filter ``name`` as an ``nn.Module``; bad names or values raise ValueError.

    >>> import convkit
    >>> convkit.get_filter("gaussian", sigma=2.0)
    Kernel2d(gaussian(sigma=2.0))
    """
    return get_info(name).build(**params)
