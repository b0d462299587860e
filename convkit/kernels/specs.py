"""Kernel specs: the TOML files in ``filters/``, loaded and validated.

This module does not import torch, so that ``convkit list`` and ``--help`` stay fast.

TOML schema (one file per named kernel)::

    name = "sharpen"                 # registry name: lower case, digits, underscores
    description = "one line"
    weights = [[0, -1, 0],           # rows of numbers, any rectangle (odd or even sides)
               [-1, 5, -1],
               [0, -1, 0]]
    scale = 1                        # optional: the weights are divided by it
                                     # (default: their sum, or 1 when they sum to 0)
    offset = 0                       # optional: added after scaling, in 8-bit grey levels
    border = "reflect"               # optional default border mode
    signed = false                   # optional: the output is a signed response (written to an
                                     # integer image as its absolute value by default)
    type = "kernel"                  # optional: "kernel" or "gradient" (weights are d/dx;
                                     # d/dy is their transpose)
    weights_y = [[...]]              # gradient only, optional: the d/dy kernel when it is not
                                     # the transpose (Roberts' cross); scaled by ``scale`` too
    magnitude = "l2"                 # gradient only, optional: "l2" = sqrt(gx^2 + gy^2)
                                     # (cv2.magnitude) or "rms" = sqrt((gx^2 + gy^2) / 2)
                                     # (scikit-image's edge magnitudes)
"""

from __future__ import annotations

import math
import numbers
import re
import stat
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.files import FileTooLarge, NotRegularFile, read_regular

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

BORDERS = ("reflect", "replicate", "constant", "circular", "symmetric")
#: The integer image dtypes and their full scale: an integer image is filtered on the [0, 1]
#: scale (x / 255, x / 65535) and written back rounded and saturated to the same range.
INT_MAX = {"uint8": 255.0, "uint16": 65535.0}
#: Mid-grey on the [0, 1] scale: what ``negative="offset"`` adds so that a zero response is grey.
OFFSET = 128.0 / 255.0


def dtype_name(dtype: Any) -> str:
    """``"uint8"`` for np.uint8, np.dtype("uint8") and torch.uint8 alike."""
    if isinstance(dtype, type):
        import numpy as np

        return np.dtype(dtype).name
    return str(dtype).removeprefix("torch.")
#: The largest kernel given weight by weight (a spec's weights, a kernel file): a million
#: taps, whose filter2D on a 1080p photo takes seconds (it goes through a DFT).
MAX_DENSE_SIDE = 1023
KERNEL_TYPES = ("kernel", "gradient")
MAGNITUDES = ("l2", "rms")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_KEYS = {"name", "description", "weights", "scale", "offset", "border", "signed", "type",
         "weights_y", "magnitude"}


@dataclass(frozen=True)
class KernelSpec:
    """A named kernel as data. ``weights`` are the raw rows; ``scale`` is resolved (never 0)."""

    name: str
    description: str
    weights: tuple[tuple[float, ...], ...]
    scale: float
    offset: float = 0.0
    border: str = "reflect"
    signed: bool = False
    type: str = "kernel"
    source: str | None = field(default=None, compare=False)  # where it was read: provenance
    weights_y: tuple[tuple[float, ...], ...] | None = None  # a gradient's d/dy (None: weights.T)
    magnitude: str = "l2"  # a gradient's magnitude: "l2" or "rms" (see the module docstring)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.weights), len(self.weights[0])

    def normalized(self) -> list[list[float]]:
        """The weights divided by ``scale``: the kernel that is actually applied."""
        return [[w / self.scale for w in row] for row in self.weights]


def border_index(n: int, before: int, after: int, border: str) -> Any:
    """Source indices (a NumPy int64 array) for a padded axis of length ``before + n + after``.

    The border rule, as OpenCV's ``borderInterpolate`` for every mode, also for pads wider
    than the image (constant is handled by the caller): replicate clamps, circular wraps,
    reflect mirrors without repeating the edge pixel (period 2n - 2), symmetric mirrors with it
    (period 2n).
    """
    import numpy as np

    p = np.arange(-before, n + after, dtype=np.int64)
    if border == "replicate":
        return p.clip(0, n - 1)
    if border == "circular":
        return p % n
    if border == "reflect":
        if n == 1:
            return np.zeros_like(p)
        q = p % (2 * n - 2)
        return np.where(q >= n, 2 * n - 2 - q, q)
    if border == "symmetric":
        q = p % (2 * n)
        return np.where(q >= n, 2 * n - 1 - q, q)
    raise ValueError(f"border_index: no index rule for border {border!r}")


def check_border(border: Any) -> str:
    if border not in BORDERS:
        raise ValueError(f"Invalid border {border!r}. Expected one of {', '.join(BORDERS)}.")
    return border


def check_weights(weights: Any, what: str = "kernel") -> tuple[tuple[float, ...], ...]:
    """Validate a kernel given as rows of numbers (a 1-D list is one row).

    Returns the rows as tuples of floats. Raises ValueError for an empty kernel, rows of unequal
    length, or non-finite numbers, and ParameterTypeError for anything that is not numbers.
    """
    if hasattr(weights, "tolist"):  # numpy array or torch tensor
        weights = weights.tolist()
    if is_number(weights):
        weights = [[weights]]
    if not isinstance(weights, Sequence) or isinstance(weights, (str, bytes)):
        raise ParameterTypeError(
            f"{what}: weights should be rows of numbers. Got {type(weights).__name__}")
    if len(weights) == 0:
        raise ValueError(f"{what}: weights should not be empty. Got []")
    if all(is_number(w) for w in weights):
        weights = [weights]
    longest = max((len(r) for r in weights if isinstance(r, Sequence)), default=0)
    if len(weights) > MAX_DENSE_SIDE or longest > MAX_DENSE_SIDE:
        raise ValueError(f"{what}: weights should be at most {MAX_DENSE_SIDE}x{MAX_DENSE_SIDE}. "
                         f"Got {len(weights)} rows of up to {longest}")
    rows = []
    for i, row in enumerate(weights):
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)):
            raise ParameterTypeError(f"{what}: row {i} should be a list of numbers. Got {row!r}")
        if not all(is_number(w) for w in row):
            raise ParameterTypeError(f"{what}: row {i} should hold only numbers. Got {list(row)!r}")
        rows.append(tuple(float(w) for w in row))
    if any(len(r) == 0 for r in rows):
        raise ValueError(f"{what}: weights should not be empty. Got an empty row")
    widths = sorted({len(r) for r in rows})
    if len(widths) > 1:
        raise ValueError(
            f"{what}: all rows should have the same length. Got lengths {[len(r) for r in rows]}"
        )
    bad = [w for r in rows for w in r if not math.isfinite(w)]
    if bad:
        raise ValueError(f"{what}: weights should be finite numbers. Got {bad[0]}")
    return tuple(rows)


def resolve_scale(
    weights: tuple[tuple[float, ...], ...], scale: Any, what: str = "kernel"
) -> float:
    """``scale`` as given, or the sum of the weights, or 1 when they sum to 0."""
    if scale is None:
        try:
            total = math.fsum(w for row in weights for w in row)
        except OverflowError:
            raise ValueError(f"{what}: the weights' sum overflows a float; give weights whose "
                             "sum is finite, or a scale") from None
        return 1.0 if abs(total) < 1e-12 else total
    if not is_number(scale) or not math.isfinite(scale) or scale == 0:
        raise ValueError(f"{what}: scale should be a finite non-zero number. Got {scale!r}")
    return float(scale)


def is_number(x: Any) -> bool:
    """A real number, NumPy's scalars included (np.int64, np.float32; np.bool_ is not one);
    not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class ParameterTypeError(TypeError, ValueError):
    """A parameter of the wrong kind (a word where a number belongs, say). It is a TypeError,
    as Python's own calls raise, and a ValueError, as every other bad parameter is, so that
    code checking user-written specs with ``except ValueError`` catches it too."""


def parse_spec(data: dict[str, Any], source: str, default_name: str | None = None) -> KernelSpec:
    """Build a KernelSpec from a parsed TOML table; errors name ``source``."""
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(
            f"{source}: unknown key {unknown[0]!r}. Expected keys: {', '.join(sorted(_KEYS))}"
        )
    if "weights" not in data:
        raise ValueError(f"{source}: missing 'weights' (rows of numbers)")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"{source}: name should be lower case letters, digits and underscores. Got {name!r}"
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{source}: description should be a string. Got {description!r}")
    try:
        weights = check_weights(data["weights"], what=source)
        scale = resolve_scale(weights, data.get("scale"), what=source)
        check_border(data.get("border", "reflect"))
    except TypeError as e:
        raise ValueError(str(e)) from None
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    offset = data.get("offset", 0.0)
    if not is_number(offset) or not math.isfinite(offset):
        raise ValueError(f"{source}: offset should be a finite number. Got {offset!r}")
    signed = data.get("signed", False)
    if not isinstance(signed, bool):
        raise ValueError(f"{source}: signed should be true or false. Got {signed!r}")
    ktype = data.get("type", "kernel")
    if ktype not in KERNEL_TYPES:
        raise ValueError(
            f"{source}: type should be one of {', '.join(KERNEL_TYPES)}. Got {ktype!r}"
        )
    if ktype == "gradient" and len(weights) != len(weights[0]):
        raise ValueError(f"{source}: a gradient kernel should be square. Got {len(weights)}x"
                         f"{len(weights[0])}")
    weights_y, magnitude = data.get("weights_y"), data.get("magnitude", "l2")
    if ktype != "gradient" and ("weights_y" in data or "magnitude" in data):
        raise ValueError(f"{source}: weights_y and magnitude are for type = \"gradient\"")
    if weights_y is not None:
        try:
            weights_y = check_weights(weights_y, what=f"{source}: weights_y")
        except TypeError as e:
            raise ValueError(str(e)) from None
    if magnitude not in MAGNITUDES:
        raise ValueError(f"{source}: magnitude should be one of {', '.join(MAGNITUDES)}. "
                         f"Got {magnitude!r}")
    return KernelSpec(
        name=name,
        description=description,
        weights=weights,
        scale=scale,
        offset=float(offset),
        border=data.get("border", "reflect"),
        signed=signed,
        type=ktype,
        source=source,
        weights_y=weights_y,
        magnitude=magnitude,
    )


#: Largest kernel file read, in bytes: a dense kernel of about 1000x1000 written out in TOML.
MAX_KERNEL_FILE = 16 << 20


def load_spec(path: str | Path) -> KernelSpec:
    """Load one kernel TOML file. Errors are ValueError naming the file.

    Only regular files (or links to them) of at most :data:`MAX_KERNEL_FILE` bytes are read:
    a FIFO would block for ever and ``/dev/zero`` never ends.
    """
    path = Path(path)
    try:
        data = read_regular(path, limit=MAX_KERNEL_FILE)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such kernel file") from None
    except NotRegularFile as e:
        raise ValueError(f"{path}: a kernel file should be a regular file. Got "
                         f"{'a folder' if stat.S_ISDIR(e.mode) else 'a FIFO or device'}") from None
    except FileTooLarge as e:
        raise ValueError(f"{path}: kernel file of {e.size} bytes, over the limit of "
                         f"{MAX_KERNEL_FILE} (16 MiB)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read kernel file ({e.strerror or e})") from None
    return loads_spec(data, str(path), _default_name(path.stem))


def loads_spec(data: bytes, source: str, default_name: str = "kernel") -> KernelSpec:
    """Parse the bytes of a kernel TOML file; errors are ValueError naming ``source``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: cannot read kernel file ({e})") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: not valid TOML ({e})") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise ValueError(f"{source}: not a kernel file (arrays or tables nested too deeply)"
                         ) from None
    return parse_spec(table, source, default_name=default_name)


def _default_name(stem: str) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", stem.lower())
    return name if NAME_RE.match(name) else "kernel"


def builtin_files() -> list[Traversable]:
    """The shipped ``*.toml`` files, sorted by name.

    An installed convkit carries them as package data in ``convkit/filters/`` (the
    repository's top-level ``filters/`` folder, mapped there by ``pyproject.toml``); they are
    found through :mod:`importlib.resources`, so a wheel and a zip import both see them. An
    editable install or a checkout on ``PYTHONPATH`` has no such folder: then the repository's
    ``filters/`` beside the package is read.
    """
    package = Path(__file__).resolve().parent.parent  # convkit/
    here = package / "filters"  # a wheel installed in a folder
    found: list = [f for f in here.glob("*.toml") if f.is_file()] if here.is_dir() else []
    if not found:  # a zip import: only importlib.resources sees inside (imported here: 5 ms)
        from importlib import resources

        try:
            root: Traversable = resources.files("convkit").joinpath("filters")
            found = [f for f in root.iterdir() if f.name.endswith(".toml") and f.is_file()]
        except (FileNotFoundError, NotADirectoryError):
            found = []
    if not found:
        repo = package.parent / "filters"
        found = [f for f in repo.glob("*.toml") if f.is_file()]
    return sorted(found, key=lambda f: f.name)


def builtin_specs() -> dict[str, KernelSpec]:
    """Every shipped kernel spec by name."""
    specs = {}
    for f in builtin_files():
        spec = loads_spec(f.read_bytes(), f"filters/{f.name}", _default_name(f.name[:-5]))
        specs[spec.name] = spec
    return specs


# --- kernel arithmetic, shared by the modules and the torch-free planner ----------------------
def blend(rows: Sequence[Sequence[float]], scale: float, offset: float, strength: float,
          what: str = "Kernel2d") -> tuple[Any, float]:
    """The kernel and bias (on the [0, 1] scale) that ``rows / scale`` with ``offset`` (8-bit
    grey levels) and ``strength`` give: ``identity + strength * (K - identity)``, the identity
    at the anchor (kh // 2, kw // 2), the offset scaled by the strength too. float64; raises
    ValueError when a weight or the bias is beyond float32's range."""
    import numpy as np

    k = np.array(rows, dtype=np.float64) / scale
    if strength != 1.0:
        ident = np.zeros_like(k)
        ident[k.shape[0] // 2, k.shape[1] // 2] = 1.0
        k = ident + strength * (k - ident)
    bias = strength * offset / 255.0
    with np.errstate(over="ignore", invalid="ignore"):
        fits = bool(np.isfinite(k.astype(np.float32)).all() and np.isfinite(np.float32(bias)))
    if not fits:
        raise ValueError(
            f"{what}: the parameters give weights beyond float32's range (largest "
            f"{np.abs(k).max():g}, offset {strength * offset:g}). Expected at most about 3.4e38")
    return k, bias


def gaussian_taps(ksize: int, sigma: float) -> Any:
    """Normalised Gaussian taps ``exp(-(i - (ksize-1)/2)**2 / (2 sigma**2))`` (float64), as
    ``cv2.getGaussianKernel(ksize, sigma)`` for sigma > 0."""
    import numpy as np

    i = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    if 2 * sigma * sigma < 1e-300:
        # (a sigma of 1e-200 squares to 0 in float64: 0/0 at the centre.) Below 0.2 pixels
        # every off-centre tap is already under float32's smallest number, so the kernel is
        # the identity, which is what such a sigma means.
        return (np.abs(i) < 0.5).astype(np.float64)
    g = np.exp(-(i * i) / (2 * sigma * sigma))
    return g / g.sum()


def gaussian_ksize(sigma: float) -> int:
    """OpenCV's kernel side for 8-bit images: round(6 * sigma + 1), made odd."""
    k = int(math.floor(sigma * 6 + 1 + 0.5))  # cvRound of a positive number
    return k | 1
