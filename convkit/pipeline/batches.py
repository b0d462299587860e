"""The batch loop behind ``convkit FILTER ...`` and :func:`convkit.run`: files in, files out.

The way through (one module per step elsewhere; this one wires them together)::

    inputs (files, folders, globs) --plan--> jobs (source, output), sorted; this rank's shard
      --decode threads--> uint8/uint16 tensors (C, H, W)  [bounded window of futures]
      --group by (C, H, W, dtype)--> batches of --batch-size (huge images go alone)
      --engine.apply on the device--> filtered batches
      --encode threads--> atomic writes (convkit.io.images: temp file, then rename)

Every queue is bounded, so memory depends on ``batch_size`` and the number of workers, not on the
number of files. A file that cannot be read, filtered or written is reported with one line naming
it and the run goes on; inputs are never modified (unless ``in_place``), and an output is either
complete or absent.

Sharding: when ``RANK`` and ``WORLD_SIZE`` are set (``torchrun``), rank r takes every
``WORLD_SIZE``-th job of the sorted job list, starting at r, so the ranks together write every
output exactly once.

Signals: SIGINT and SIGTERM stop the run cleanly: no new file is started, the writes in flight
finish (each output is complete or absent), and the summary records the signal so the command
line exits with 128 + its number (130, 143). ``skip_existing`` then resumes the run.
"""

from __future__ import annotations

import glob
import os
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import not_a_regular_file
from ..io.formats import FORMATS, png_header
from .memory import FLIGHT_FACTOR, default_budget, parse_memory

__all__ = ["run", "Summary", "plan", "Job", "filter_batch", "filter_image", "FORMATS",
           "output_name", "file_spec", "cpu_plan", "is_pattern", "UsageError"]

_GLOB_MAGIC = set("*?[")


def is_pattern(item: str) -> bool:
    """Whether an input is a glob pattern: a name with ``*``, ``?`` or ``[`` that no file or
    folder has."""
    return not os.path.lexists(item) and any(ch in _GLOB_MAGIC for ch in item)

# Images above this many pixels are filtered one at a time (never batched): the hook where a
# tiled path plugs in for huge images.
HUGE_PIXELS = 4096 * 4096
#: The command line's default pixel limit (a decompression-bomb guard): 2^30, about 1.07
#: gigapixels. Pillow's own default (89.5 million, where it starts to warn) refuses real photos
#: (a 102 MP medium-format frame, a 144 MP panorama) that tiling filters in bounded memory;
#: bombs are caught by this limit and by the check that a PNG's header does not declare more
#: pixels than its data could hold (convkit.io.images).
DEFAULT_MAX_PIXELS = 1 << 30
# Cap on the pixels of one batch (B*H*W), so a big --batch-size on big images stays in memory.
MAX_BATCH_PIXELS = 16 * 1920 * 1080


class UsageError(ValueError):
    """The arguments of a run do not make sense together (the CLI exits 2)."""


@dataclass
class Job:
    """One input file and where its output goes. ``shown`` is the input as the user named it."""

    src: str
    out: str
    shown: str
    error: str | None = None
    started: float = 0.0  # when its decode began (perf_counter)


@dataclass
class Summary:
    """What a run did. ``errors`` lists ``"<file>: <reason>"`` lines, one per failed input."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # one record per input: input, output, status (written, skipped, failed; "planned" in a dry
    # run), reason (for failed), seconds (decode to write)
    files: list[dict] = field(default_factory=list)
    interrupted: str | None = None
    # a long step was still running when the signal came: its thread is left to run out (the
    # command line then exits at once, without waiting for it)
    abandoned: bool = False
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def exit_code(self) -> int:
        """0 all written, 1 some failed, 128 + signal number when interrupted."""
        if self.interrupted:
            return 128 + int(getattr(signal, self.interrupted))
        return 1 if self.failed else 0

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        where = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        text = (f"convkit: {where}{self.written} written, {self.skipped} skipped, "
                f"{self.failed} failed in {self.seconds:.2f} s ({rate:.1f} images/s)")
        if self.interrupted:
            text += f"; interrupted by {self.interrupted}"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d

    def to_json(self) -> str:
        import json  # (1 ms of every start-up otherwise)

        return json.dumps(self.to_dict())


# --------------------------------------------------------------------------------------------
# Planning: inputs -> jobs
# --------------------------------------------------------------------------------------------


def _io():
    from ..io import images as io

    return io


def file_spec(spec: Any) -> Any:
    """A spec string that names an existing file (a kernel .toml or a model), quoted so that
    any file name parses as one path element; anything else as it is."""
    if isinstance(spec, str) and os.path.isfile(spec):
        return '"' + spec.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return spec


def cpu_plan(spec: Any, device: Any):
    """The torch-free plan of ``spec`` (a spec string, or a list of them) for a run on
    ``device``, or None when the run goes through torch: a module, a chain holding something
    other than fixed filters (pooling, a rank filter, a learned filter), or a device that
    needs torch to decide or to run (see :func:`convkit.backends.device.wants_torch_device`). The
    rule of the command line, and of :func:`convkit.process` for spec strings (a module's plan
    comes from the engine's cache instead)."""
    from ..backends.device import wants_torch_device

    if isinstance(spec, list) and spec and all(isinstance(p, str) for p in spec):
        spec = " | ".join(spec)
    if not isinstance(spec, str) or wants_torch_device(device):
        return None
    from ..plan.rules import current
    from ..plan.specs import plan_spec

    plan = plan_spec(file_spec(spec), current().fuse)
    return plan if plan is not None and plan.ops else None


def output_name(spec: Any) -> str:
    """The tag in ``<stem>-<tag><ext>``: the filter names of a chain spec joined by ``-``."""
    if not isinstance(spec, str):
        return "filtered"
    from ..kernels.chainspec import parse

    spec = file_spec(spec)

    try:
        calls = parse(spec)
    except ValueError:
        return "filtered"
    names = [c.name if c.name else Path(c.path or "").stem for c in calls]
    slug = "-".join(n for n in names if n)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in slug)
    return safe if 0 < len(safe) <= 48 else "filtered"


def _out_suffix(suffix: str, fmt: str | None) -> str:
    if fmt:
        return FORMATS[fmt]
    # formats convkit reads but does not write (GIF, PPM, ...) are written as PNG
    return suffix if suffix.lower() in _io().WRITE_EXTENSIONS else ".png"


def walk_images(folder: str, recursive: bool, exclude: str | None) -> tuple[list[str], bool]:
    """Image files under ``folder`` (sorted); and whether subfolders were left unvisited.

    Symbolic links to folders are followed once each: a folder whose real path was seen
    already is not entered again, so a symlink loop ends. Hidden names (``.x``) are skipped,
    which also keeps the temporary files of a concurrent writer out.
    """
    io = _io()
    found: list[str] = []
    seen: set[str] = set()
    has_subdirs = False
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen or (exclude and real == exclude):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not recursive:
            has_subdirs = bool(dirs)
            dirs[:] = []
        for name in files:
            if not name.startswith(".") and io.is_image_path(name):
                found.append(os.path.join(root, name))
    return sorted(found), has_subdirs


def _expand(inputs: Sequence[str | os.PathLike], recursive: bool, exclude: str | None
            ) -> tuple[list[tuple[str, str]], list[str], bool]:
    """Inputs -> (file, root) pairs, error lines, and whether any input was a folder or glob.

    ``root`` is the folder the file's output path is made relative to: a folder input is its
    own root; a file's root is its parent folder.
    """
    io = _io()
    pairs: list[tuple[str, str]] = []
    errors: list[str] = []
    many = False
    for raw in inputs:
        item = os.fspath(raw)
        if os.path.isdir(item):
            many = True
            if exclude and os.path.realpath(item) == exclude:
                raise UsageError(f"-o {shown(item)} is the input folder itself; pass --in-place "
                                 "(instead of -o) to replace the inputs, or name another folder")
            files, has_subdirs = walk_images(item, recursive, exclude)
            if not files:
                hint = " (pass -r to look in subfolders)" if has_subdirs else ""
                exts = ", ".join(sorted(io.SUPPORTED_EXTENSIONS))
                errors.append(f"{shown(item)}: no images found{hint}; supported extensions: "
                              f"{exts}")
            pairs.extend((f, item) for f in files)
        elif os.path.lexists(item):
            pairs.append((item, os.path.dirname(item) or "."))
        elif is_pattern(item):
            many = True
            matches = sorted(glob.glob(item, recursive=recursive or "**" in item))
            if exclude:  # this run's outputs are never its inputs
                matches = [m for m in matches if not _inside(m, exclude)]
            files = []
            for m in matches:
                if os.path.isdir(m):
                    sub, _ = walk_images(m, recursive, exclude)
                    files.extend((f, m) for f in sub)
                elif io.is_image_path(m):
                    files.append((m, os.path.dirname(m) or "."))
            if not files:
                errors.append(f"{shown(item)}: no image files match this pattern")
            pairs.extend(files)
        else:
            errors.append(f"{shown(item)}: no such file or folder")
    # Only regular files (and links to them) are read: a FIFO would block the run for ever, a
    # device never ends. They are reported before anything is opened.
    regular = []
    for f, root in pairs:
        try:
            mode = os.stat(f).st_mode
        except OSError as e:
            errors.append(f"{shown(f)}: cannot read ({e.strerror or e})")
            continue
        if stat.S_ISREG(mode):
            regular.append((f, root))
        else:
            errors.append(f"{shown(f)}: {not_a_regular_file(mode)}; skipped")
    return regular, errors, many


def _inside(path: str, folder: str) -> bool:
    real = os.path.realpath(path)
    return real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)


def shown(path: str) -> str:
    """``path`` for a message: control characters (a newline in a file name) and bytes that
    are not text escaped, so that one error is one line and names its file unambiguously;
    everything else (spaces, accents) as it is."""
    if path.isprintable():
        return path
    out = []
    for ch in path:
        if ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _same_format(suffix: str) -> str:
    """One spelling per format: .jpeg is .jpg, .tiff is .tif."""
    return {".jpeg": ".jpg", ".tiff": ".tif"}.get(suffix.lower(), suffix.lower())


def _looks_like_file(output: str) -> bool:
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        return False
    return Path(output).suffix.lower() in _io().WRITE_EXTENSIONS


def plan(inputs: Sequence[str | os.PathLike] | str | os.PathLike, output: str | os.PathLike |
         None = None, *, name: str = "filtered", recursive: bool = False, in_place: bool = False,
         format: str | None = None, overwrite: bool = False) -> tuple[list[Job], list[str]]:
    """Work out every (input, output) pair, sorted by input path, and the inputs that fail early.

    Output rules (as ``mogrify`` and click tools users know):

    * ``in_place``: each output is its input (with ``format``, the input's stem with the new
      extension, beside it).
    * one input file and ``output`` with an image extension (not an existing folder): that file.
    * otherwise ``output`` is a folder that mirrors the inputs' layout relative to the common
      folder of their roots (a folder input is its own root, a file's root is its parent).
    * no ``output``: ``<stem>-<name><ext>`` beside each input file; folders need ``output``.

    Jobs whose output is an input file (without ``in_place``) or the output of another job carry
    an ``error`` and are reported, not run. So does an ``in_place`` job with a new ``format``
    whose output (``a.jpg`` for ``a.png``) is a file that exists and is not an input, unless
    ``overwrite``. Raises :class:`UsageError` for arguments that do not fit together.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise UsageError("no inputs given")
    if format is not None and format not in FORMATS:
        raise UsageError(f"invalid format {format!r}. Expected one of {', '.join(FORMATS)}")
    if in_place and output is not None:
        raise UsageError("give either -o/--output or --in-place, not both")
    out = os.fspath(output) if output is not None else None
    if out is not None and out.lower() in _io().SUPPORTED_EXTENSIONS and not os.path.isdir(out):
        # `convkit sharpen *.png` in a folder holding "-o.png": the shell hands click "-o.png",
        # which it reads as -o ".png"
        raise UsageError(f"-o {out} looks like a file named '-o{out}' that the shell expanded "
                         f"into an option; put -- before the file names (convkit FILTER -- "
                         f"*{out}) or write it as ./-o{out}")
    exclude = os.path.realpath(out) if out and os.path.isdir(out) else None
    pairs, errors, many = _expand(inputs, recursive, exclude)

    # the same name given twice (or through a folder and a glob) is processed once; names that
    # are links to one file each get their output, except in place (in the same format),
    # where the file is filtered once whatever the names that reach it
    once = in_place and format is None
    unique: dict[str, tuple[str, str]] = {}
    for f, root in pairs:
        unique.setdefault(os.path.realpath(f) if once else os.path.abspath(f), (f, root))
    items = sorted(unique.values(), key=lambda p: p[0])
    if out is None and not in_place and many and items:
        raise UsageError("a folder or pattern needs -o OUTPUT_FOLDER (or --in-place)")

    io = _io()
    suffix = Path(out).suffix.lower() if out is not None else ""
    if (suffix in io.SUPPORTED_EXTENSIONS and suffix not in io.WRITE_EXTENSIONS
            and not os.path.isdir(out) and not out.endswith(("/", os.sep))):
        raise UsageError(f"-o {out}: convkit reads {suffix} images but does not write them. "
                         f"Expected one of {', '.join(io.WRITE_EXTENSIONS)}")
    single_file = (out is not None and len(items) == 1 and not many and len(inputs) == 1
                   and _looks_like_file(out))
    if (out is not None and not single_file and items and suffix in io.SUPPORTED_EXTENSIONS
            and not os.path.isdir(out) and not out.endswith(("/", os.sep))):
        # several inputs (or a folder, a pattern) and -o out.png: one file cannot hold them
        # (any other name, such as results.v2, is a folder)
        n = "a folder or pattern" if many else \
            f"{len(items)} input{'s' if len(items) != 1 else ''}"
        raise UsageError(f"-o {shown(out)} names a file, but {n} were given; name a folder "
                         f"for the outputs (-o {shown(str(Path(out).with_suffix('')))}/)")
    if single_file and format is not None and _same_format(suffix) != _same_format(
            FORMATS[format]):
        raise UsageError(f"-o {out} is a {suffix} file but --format {format} writes "
                         f"{FORMATS[format]}; give one of them, or matching ones")
    base = None
    if out is not None and not single_file and items:
        roots = [os.path.abspath(root) for _, root in items]
        base = os.path.commonpath(roots)

    jobs = []
    for f, _root in items:
        p = Path(f)
        if in_place:
            target = f if format is None else str(p.with_suffix(FORMATS[format]))
        elif out is None:
            target = str(p.with_name(f"{p.stem}-{name}{_out_suffix(p.suffix, format)}"))
        elif single_file:
            target = out  # (its extension agrees with format, checked above)
        else:
            rel = Path(os.path.relpath(os.path.abspath(f), base))
            target = str(Path(out) / rel.with_suffix(_out_suffix(p.suffix, format)))
        jobs.append(Job(src=f, out=target, shown=shown(f)))

    # An input is never overwritten by accident, and no two jobs share an output.
    sources = {os.path.realpath(j.src): j.shown for j in jobs}
    taken: dict[str, str] = {}
    for j in jobs:
        real_out = os.path.realpath(j.out)
        if not in_place and real_out in sources:
            other = sources[real_out]
            what = "is the input file" if other == j.shown else f"would overwrite input {other}"
            j.error = (f"{j.shown}: the output {shown(j.out)} {what}; pass --in-place to "
                       "overwrite inputs")
        elif real_out in taken:
            j.error = (f"{j.shown}: the output {shown(j.out)} is also the output of "
                       f"{taken[real_out]}")
        elif (in_place and not overwrite and real_out != os.path.realpath(j.src)
              and real_out not in sources and os.path.lexists(j.out)):
            j.error = (f"{j.shown}: --in-place --format {format} would replace "
                       f"{shown(j.out)}, which is not an input; pass --overwrite to replace it")
        else:
            taken[real_out] = j.shown
    return jobs, errors


def shard() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not set."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise UsageError(
            f"RANK and WORLD_SIZE should be integers. Got RANK={os.environ.get('RANK')!r}, "
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK should be in [0, WORLD_SIZE). Got RANK={rank}, WORLD_SIZE={world}")
    return rank, world


# --------------------------------------------------------------------------------------------
# Filtering: the hooks the engine plugs into
# --------------------------------------------------------------------------------------------


def filter_batch(module, batch, *, alpha: bool, device) -> Any:
    """Filter a batch (B, C, H, W) of uint8/uint16 on ``device``; returns it on the CPU.

    The integer rules (float on [0, 1], round to nearest, saturate) are ``engine.apply``'s.
    """
    import torch

    from ..backends import engine

    with torch.inference_mode():
        x = batch.to(device, non_blocking=True) if device.type != "cpu" else batch
        out = engine.apply(module, x, alpha=alpha)
        return out.cpu() if out.device.type != "cpu" else out


# A huge image filtered whole by the torch-free plan holds up to this many times its own bytes
# (itself, its result, the workers' padded planes and partial results, the encoder's copy).
# Measured 2026-12-06 on a 48 MP RGB photo (144 MB), peak RSS over the process's start: sharpen
# 2.7x, erode 2.7x, sobel 2.3x, gaussian | sharpen 2.1x, median 5 3.7x.
WHOLE_FACTOR = 4


def fits_whole(image: np.ndarray, budget: int) -> bool:
    """Whether the torch-free plan may filter a huge decoded ``image`` whole within ``budget``
    bytes (:data:`WHOLE_FACTOR`); else it goes in tiles through torch, in place. That 48 MP
    photo through ``sharpen``: 0.63 s and 466 MB whole, 3.2 s and 1.05 GB in tiles."""
    return WHOLE_FACTOR * image.nbytes <= budget


def filter_image(module, image, *, alpha: bool, device, max_memory: int | None = None) -> Any:
    """Filter one image (C, H, W); returns (C, H', W') on the CPU.

    Huge images (over :data:`HUGE_PIXELS`) come here one at a time, never batched. On the CPU
    they are filtered in tiles with a halo (:func:`convkit.pipeline.tiling.apply_tiled`: the same
    result as the whole image, in bounded working memory, ``max_memory`` bytes or automatic), in
    place when the chain keeps the image size, so no second full-size image is allocated.
    """
    import torch

    from ..nn.modules import Pool2d
    from .tiling import apply_tiled as tiled

    if device.type == "cpu" and image.shape[-1] * image.shape[-2] > HUGE_PIXELS:
        x = image.unsqueeze(0)
        pools = any(isinstance(m, Pool2d) for m in module.modules())
        with torch.inference_mode():
            return tiled(module, x, alpha=alpha, max_memory=max_memory,
                         out=None if pools else x)[0]
    return filter_batch(module, image.unsqueeze(0), alpha=alpha, device=device)[0]


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class _Stop:
    """SIGINT/SIGTERM -> a flag the loop polls; restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.event = threading.Event()
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
        self.event.set()

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # ignored on purpose (nohup, a background job): leave it so
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # pragma: no cover - exotic embedding
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _one_line(job: Job, exc: BaseException) -> str:
    """``exc`` as one line that starts with the input's name, file names escaped (see
    :func:`shown`) and any other line break made a space."""
    msg = str(exc).strip() or type(exc).__name__
    for raw in (job.src, job.out):
        msg = msg.replace(raw, shown(raw))
    if not msg.startswith(job.shown):
        msg = f"{job.shown}: {msg}"
    return "".join(ch if ch.isprintable() else " " for ch in msg)


def _default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def run(
    spec: Any,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    recursive: bool = False,
    in_place: bool = False,
    skip_existing: bool = False,
    format: str | None = None,
    quality: int = 95,
    batch_size: int | None = None,
    device: str | None = "auto",
    workers: int | None = None,
    max_pixels: int | None = None,
    max_memory: int | str | None = None,
    decode: str = "cpu",
    name: str | None = None,
    progress: bool | None = None,
    on_error: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    allow_truncated: bool = False,
    overwrite: bool = False,
    compression: str = "deflate",
    dry_run: bool = False,
    on_info: Callable[[str], None] | None = None,
) -> Summary:
    """Filter image files through a chain and write the results; the engine of the CLI.

    Args:
        spec: a chain spec string (``"gaussian(sigma=2) | sharpen"``), a kernel ``.toml`` or
            model file, an ``nn.Module``, or a list of these (anything ``convkit.chain`` takes).
        inputs: files, folders and glob patterns (one or a list).
        output: an output file (one input) or folder (mirrors the inputs' layout); None writes
            ``<stem>-<name><ext>`` beside each input. See :func:`plan` for the rules.
        recursive: walk folders (and ``**`` patterns) into subfolders.
        in_place: overwrite each input with its result (atomically).
        skip_existing: leave outputs that exist already alone (resume an interrupted run).
        format: png, jpeg, webp, tiff or bmp; default from the output's extension.
        quality: JPEG/WebP quality, 1-100.
        batch_size: images of the same size and kind filtered together; default 8 on CUDA and
            1 on the CPU, where the OpenCV engine gains nothing from batches and they only cost
            memory.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        workers: decode and encode threads each (default: CPU count, 2 to 8).
        max_pixels: refuse images with more pixels than this (decompression-bomb guard);
            None: :data:`DEFAULT_MAX_PIXELS` (2^30).
        max_memory: memory for images, bytes or a size like "512M": the images in flight
            (decoded, waiting for a batch, filtered, being encoded) are kept within it, each
            weighed before its decode by what its header declares (x3 for the copies a run
            makes); one image over it runs alone. It is also the working memory of a huge
            image filtered in tiles (see :func:`filter_image`). None: a quarter of the memory
            available (at least 1 GiB) for the images in flight, automatic for tiles.
        decode: where grey and RGB JPEGs are decoded. "cpu" (default): libjpeg-turbo in the
            decode threads, the same pixels on every machine. "gpu": nvJPEG on the CUDA device,
            a batch at a time (``torchvision.io.decode_jpeg``); its pixels differ from
            libjpeg-turbo's (see :func:`convkit.io.images.decode_jpegs`), and a JPEG it refuses is
            decoded on the CPU. Other formats are always decoded on the CPU.
        name: the tag in default output names (default: from the spec).
        progress: show a tqdm bar on stderr; default when stderr is a terminal.
        on_error: called with each one-line error as it happens (default: print to stderr).
        on_warning: called with each one-line warning (an input of several frames of which
            only the first was written, metadata left out); default: print to stderr.
        allow_truncated: filter damaged files as far as they decode (see
            :func:`convkit.io.images.read_image_with_info`) instead of failing them.
        compression: TIFF's lossless compression: deflate (default), lzw or none.
        dry_run: plan only: ``summary.files`` lists each input and the output it would get
            (status "planned" or "skipped"); nothing is read or written, the filter is checked.
        on_info: called with a line saying how each filter of the chain runs (backend and
            method), once per run (the command line's ``--verbose``).
        overwrite: with ``in_place`` and a new ``format``, replace an existing file of the new
            name that is not an input (by default such a job fails, naming the file).

    Files of several frames or pages (TIFF, APNG, animated WebP or GIF): the first is filtered
    and written, with a warning; with ``in_place`` such a file fails instead, since writing it
    back would lose the other frames.

    Returns:
        A :class:`Summary`. Per-file failures are counted and listed there, never raised.
        ``UsageError`` / ValueError is raised for a bad spec, device or argument combination.
    """
    t0 = time.perf_counter()
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch_size should be >= 1. Got {batch_size}")
    if not 1 <= quality <= 100:
        raise UsageError(f"quality should be in 1..100. Got {quality}")
    if skip_existing and in_place:
        raise UsageError("--skip-existing cannot be combined with --in-place")
    if compression not in ("deflate", "lzw", "none"):
        raise UsageError(f"compression should be deflate, lzw or none. Got {compression!r}")
    if decode not in ("cpu", "gpu"):
        raise UsageError(f"decode should be 'cpu' or 'gpu'. Got {decode!r}")
    if max_pixels is None:
        max_pixels = DEFAULT_MAX_PIXELS
    if max_memory is not None:
        max_memory = parse_memory(max_memory)
    rank, world = shard()
    tag = name or output_name(spec)
    jobs, early = plan(inputs, output, name=tag, recursive=recursive, in_place=in_place,
                       format=format, overwrite=overwrite)

    summary = Summary(rank=rank, world_size=world)
    report = on_error or (lambda line: print(f"error: {line}", file=sys.stderr, flush=True))
    tell = on_warning or (lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
    said = threading.Lock()

    def warn(line: str) -> None:
        with said:
            summary.warnings.append(line)
            tell(line)

    def fail(line: str) -> None:
        summary.failed += 1
        summary.errors.append(line)
        report(line)

    def record(job: Job, status: str, reason: str | None = None) -> None:
        seconds = round(time.perf_counter() - job.started, 4) if job.started else None
        with said:
            summary.files.append({"input": job.shown, "output": shown(job.out),
                                  "status": status, "reason": reason, "seconds": seconds})

    # Early errors are about the inputs as given, not about one job: rank 0 reports them.
    if rank == 0:
        for line in early:
            fail(line)
    mine = jobs[rank::world]
    todo: list[Job] = []
    for j in mine:
        if j.error:
            fail(j.error)
            record(j, "failed", j.error)
        elif skip_existing and os.path.exists(j.out):
            summary.skipped += 1
            record(j, "skipped")
        else:
            todo.append(j)

    if dry_run:
        _Runner(spec, device, rank, gpu_decode=decode == "gpu")  # checked as a run would be
        for j in todo:
            record(j, "planned")
        todo = []
    if todo:
        from ..io.atomic import destination, remove_stale

        # a run killed earlier (SIGKILL, a power cut) may have left temporary files
        folders = {destination(j.out).parent for j in todo}
        for folder in folders:
            remove_stale(folder)
        runner = _Runner(spec, device, rank, gpu_decode=decode == "gpu")
        if decode == "gpu" and not _device_decodes(runner.device_type):
            raise UsageError(f"--decode gpu needs a CUDA device. Got device {runner.device_name}")
        summary.device = runner.device_name
        if batch_size is None:
            batch_size = 8 if runner.device_type == "cuda" else 1
        with runner.threads():
            settings = _Settings(
                batch_size=batch_size, workers=workers or _default_workers(), quality=quality,
                max_pixels=max_pixels, max_memory=max_memory, progress=progress,
                defer_jpeg=decode == "gpu", in_place=in_place, allow_truncated=allow_truncated,
                compression=compression)
            _Loop(runner, summary, settings, fail, record, on_info, warn)(todo)
        if summary.abandoned:  # an abandoned step may have begun a file: no trace of it
            for folder in folders:
                remove_stale(folder, own=True)
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


class _Runner:
    """What filters a run's images, and where.

    A spec string of fixed filters (kernels, gradients, median: no pooling, no learned
    filter) on the CPU is planned without torch (:func:`convkit.plan.specs.plan_spec`) and run
    on OpenCV (:func:`convkit.backends.opencv.run_plan`), on the NumPy arrays the decoders give: the
    command line then never imports torch. ``device="auto"`` counts as the CPU where
    :func:`convkit.backends.device.cuda_may_be_present` finds no trace of a GPU. Anything else, and
    any image the plan does not run as the engine would (a huge image filtered in tiles, a response
    past int32), goes through the torch modules, built on first need; the results are the same
    (:func:`convkit.backends.opencv.runs_plan` is the engine's own rule) within float rounding:
    a kernel large enough for torch's FFT runs on it there and on OpenCV's DFT or separable
    passes here.
    """

    def __init__(self, spec: Any, device: str | None, rank: int, gpu_decode: bool = False):
        from ..plan.rules import current

        self.spec, self.device_arg, self.rank = spec, device, rank
        self.plan = None if gpu_decode else cpu_plan(spec, device)
        self.opts = current()
        self._module = None
        self._dev = None
        if self.plan is None:
            self._torch()

    def _torch(self) -> None:
        if self._module is not None:
            return
        import torch

        from ..api import resolve_device
        from ..nn.chains import chain

        dev = resolve_device(self.device_arg if self.plan is None else "cpu")
        if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        module = self.spec if not isinstance(self.spec, str | list) else chain(file_spec(self.spec))
        self._module, self._dev = module.to(dev).eval(), dev

    @property
    def module(self):
        self._torch()
        return self._module

    @property
    def dev(self):
        self._torch()
        return self._dev

    @property
    def device_type(self) -> str:
        return "cpu" if self.plan is not None else self._dev.type

    @property
    def device_name(self) -> str:
        return "cpu" if self.plan is not None else str(self._dev)

    @property
    def keeps_size(self) -> bool:
        if self.plan is not None:
            return True  # plans hold no pooling
        from ..nn.modules import Pool2d

        return not any(isinstance(m, Pool2d) for m in self.module.modules())

    def runs(self, image: Any, budget: int = 0) -> bool:
        """Whether ``image`` (a (C, H, W) array) is filtered by the torch-free plan: any image
        the plan runs, a huge one (over :data:`HUGE_PIXELS`) where :func:`fits_whole` the
        memory ``budget`` (else it is filtered in tiles through torch, in place)."""
        from ..backends import opencv

        return (self.plan is not None and isinstance(image, np.ndarray)
                and (image.shape[1] * image.shape[2] <= HUGE_PIXELS
                     or fits_whole(image, budget))
                and opencv.runs_plan(self.plan, image.dtype.name, self.opts, torch_fft=False))

    def run_plan(self, image: np.ndarray, alpha: bool, trace: list | None = None) -> np.ndarray:
        """The plan on one (C, H, W) image; an alpha channel (the last) passes through, as in
        the engine. ``trace`` collects (name, backend, method) per operation."""
        from ..backends import opencv

        return opencv.run_plan_image(self.plan, image, alpha, self.opts, trace)

    def threads(self):
        return _torch_threads(self._dev) if self._module is not None else nullcontext()


def _device_decodes(device_type: str) -> bool:
    """Whether ``decode="gpu"`` can run on a device of this type (nvJPEG: CUDA only)."""
    return device_type == "cuda"


@contextmanager
def _torch_threads(dev):
    """On the CPU, give torch's own ops half the cores while the run lasts.

    The decode and encode threads keep the other half busy; on 2 cores a torch op with 2
    threads (pooling, say) made a folder run slower (2.2-3.2 s against 2.0 s for 16 photos)
    and cost more CPU time. OMP_NUM_THREADS (set by torchrun, or by the user) is respected.
    """
    import torch

    before = torch.get_num_threads()
    if dev.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bar(total: int, progress: bool | None, rank: int):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr,
                desc=f"rank {rank}" if rank else None, leave=False)


@dataclass
class _Settings:
    """How a run reads, filters and writes its images (the options of :func:`run`)."""

    batch_size: int
    workers: int
    quality: int
    max_pixels: int | None
    max_memory: int | None
    progress: bool | None
    defer_jpeg: bool = False
    in_place: bool = False
    allow_truncated: bool = False
    compression: str = "deflate"


class _Loop:
    """The batch loop of one run, step by step: :meth:`decode` (threads) -> :meth:`receive`
    (group images of one shape into batches) -> :meth:`emit` (filter a batch in the filter
    thread) -> :meth:`encode` (threads) -> :meth:`finish` (count, report, free the bytes).

    Decodes run a window ahead of the loop, within the memory budget of the images in flight
    (:class:`_Flight`); writes run a window behind it (:meth:`settle`). One thread, the
    caller's, runs the loop; the worker threads only decode, filter or encode.
    """

    def __init__(self, runner: _Runner, summary: Summary, settings: _Settings,
                 fail: Callable[[str], None], record: Callable[..., None],
                 on_info: Callable[[str], None] | None,
                 warn: Callable[[str], None] = lambda line: None) -> None:
        self.runner, self.summary, self.settings = runner, summary, settings
        self.record, self.on_info, self.warn = record, on_info, warn
        self.io = _io()
        self.bar = None  # a progress bar, made in __call__
        self._fail = fail
        self.read_kw: dict[str, Any] = {"allow_truncated": settings.allow_truncated}
        if settings.max_pixels is not None:
            self.read_kw["max_pixels"] = settings.max_pixels
        self.flight = _Flight(settings.max_memory or default_budget())
        self.writes: deque[tuple[Job, Future]] = deque()
        self.groups: dict[tuple, list] = {}  # (channels, h, w, dtype) -> decoded, waiting
        self.pending = 0  # images waiting in groups
        self.explained = False
        self.stop: _Stop | None = None
        # a window of a few batches ahead keeps the device busy without holding the folder
        self.read_window = max(2 * settings.workers, 2 * settings.batch_size)
        self.write_window = max(2 * settings.workers, settings.batch_size)

    # --- reporting -------------------------------------------------------------------------
    def fail(self, line: str) -> None:
        if self.bar is None:
            self._fail(line)
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            self._fail(line)

    def finish(self, job: Job, error: BaseException | None = None) -> None:
        """One input done: written, or failed with ``error``; its bytes leave the flight."""
        if error is None:
            self.summary.written += 1
            self.record(job, "written")
        else:
            self.fail(_one_line(job, error))
            self.record(job, "failed", _one_line(job, error))
        self.flight.release(job)
        if self.bar is not None:
            self.bar.update(1)

    def explain(self, steps: list) -> None:
        if self.on_info is not None and not self.explained:
            self.explained = True
            for name, backend, method in steps:
                self.on_info(f"{name}: {backend}, {method}")

    # --- reading ---------------------------------------------------------------------------
    def read(self, path, **kw):
        # the torch-free route reads NumPy arrays (interleaved views, which OpenCV filters and
        # writes as they lie); torch's reads tensors (a GPU may decode JPEGs)
        if self.runner.plan is not None:
            return self.io.read_array_with_info(path, interleaved=True, **kw)
        return self.io.read_image_with_info(path, **kw)

    def decode(self, job: Job):
        """(image, info) of one input, in a decode thread."""
        job.started = time.perf_counter()
        image, info = self._read(job)
        if info is not None and info.frames > 1:
            what = "pages" if info.format == "TIFF" else "frames"
            if self.settings.in_place:
                raise self.io.ImageFileError(
                    f"{job.shown}: has {info.frames} {what}; convkit filters the first only, so "
                    f"--in-place would lose the others (write to another file with -o)")
            self.warn(f"{job.shown}: has {info.frames} {what}; only the first was filtered "
                      f"(written to {shown(job.out)})")
        return image, info

    def _read(self, job: Job):
        st, runner = self.settings, self.runner
        if (runner.keeps_size and runner.device_type == "cpu"
                and _huge_png_to_png(job, st.max_pixels)
                and not (st.in_place and _animated_png(job.src))):
            # Streams band by band, so memory does not grow with the image: a torch-free plan
            # without torch (streaming.stream_png); else, or for a PNG it cannot stream (one
            # stored turned is read whole), the modules in tiles (huge_files.filter_file).
            _make_parent(job)
            if runner.plan is not None:
                from .streaming import stream_png

                done = stream_png(runner.plan, job.src, job.out, max_memory=st.max_memory,
                                  opts=runner.opts, allow_truncated=st.allow_truncated)
                if done is not None:
                    if self.on_info is not None:
                        self.on_info(f"{job.shown}: streamed in {done['bands']} bands of rows "
                                     "(opencv, without torch)")
                    return _STREAMED, None
            from .huge_files import filter_file

            filter_file(runner.module, job.src, job.out, max_memory=st.max_memory,
                        max_pixels=st.max_pixels, quality=st.quality,
                        allow_truncated=st.allow_truncated)
            return _STREAMED, None
        return self.read(job.src, defer_jpeg=st.defer_jpeg, **self.read_kw)

    def receive(self, job: Job, fut: Future) -> None:
        """One decoded image into its batch (or filtered at once), or its failure reported."""
        try:
            image, info = _wait(fut, self.stop.event)
        except _Abandoned:
            raise
        except Exception as e:
            self.finish(job, e)
            return
        if image is _STREAMED:
            self.finish(job)
            return
        c, h, w = image.shape
        if h * w > HUGE_PIXELS:
            self.emit([(job, image, info)], alpha=c in (2, 4))
            return
        key = (c, h, w, image.dtype)
        group = self.groups.setdefault(key, [])
        group.append((job, image, info))
        self.pending += 1
        if len(group) >= self.settings.batch_size or len(group) * h * w >= MAX_BATCH_PIXELS:
            self.flush(key)
        # Many sizes, few of each: flush the biggest group so memory stays bounded.
        while self.pending > 2 * self.settings.batch_size:
            self.flush(max(self.groups, key=lambda k: len(self.groups[k])))

    # --- filtering -------------------------------------------------------------------------
    def flush(self, key) -> None:
        batch = self.groups.pop(key)
        self.pending -= len(batch)
        self.emit(batch, alpha=key[0] in (2, 4))

    def make_room(self) -> None:
        """Filter the batches that wait and finish the writes: their bytes leave the flight."""
        for key in list(self.groups):
            self.flush(key)
        self.settle(0)

    def filter(self, batch: list[tuple[Job, Any, Any]], alpha: bool) -> list:
        """The filtered images of ``batch``, in the filter thread."""
        runner = self.runner
        images = [img for _, img, _ in batch]
        if all(runner.runs(img, self.flight.budget) for img in images):
            trace: list | None = [] if self.on_info is not None and not self.explained else None
            outs = [runner.run_plan(img, alpha, trace if i == 0 else None)
                    for i, img in enumerate(images)]
            if trace is not None:
                self.explain(trace)
            return outs
        import torch

        dev = runner.dev
        images = _decoded([torch.from_numpy(np.ascontiguousarray(i))
                           if isinstance(i, np.ndarray) else i for i in images], dev)
        if self.on_info is not None and not self.explained:
            from ..backends import engine

            x = images[0][None].to(dev)
            self.explain(engine.explain(runner.module,
                                        x.float() if x.dtype == torch.uint16 else x))
        if len(images) == 1:
            return [filter_image(runner.module, images[0], alpha=alpha, device=dev,
                                 max_memory=self.settings.max_memory)]
        return list(filter_batch(runner.module, torch.stack(images), alpha=alpha, device=dev))

    def emit(self, batch: list[tuple[Job, Any, Any]], alpha: bool) -> None:
        """Filter ``batch`` (one image at a time when it fails, to name the one that does)
        and hand the results to the encoders."""
        if self.stop.event.is_set():
            return
        try:
            outs = _wait(self.filterer.submit(self.filter, batch, alpha), self.stop.event)
        except _Abandoned:
            raise
        except Exception as e:
            if len(batch) > 1:  # find the image that fails; filter the others
                for item in batch:
                    self.emit([item], alpha)
                return
            job, image, _ = batch[0]
            error = e
            if isinstance(image, self.io.EncodedJPEG):
                # The device decoder refused it: the CPU decoder reads it or names the problem.
                try:
                    image, info = self.read(job.src, **self.read_kw)
                except Exception as cpu_error:
                    error = cpu_error
                else:
                    self.emit([(job, image, info)], alpha)
                    return
            self.finish(job, error)
            return
        for (job, _, info), out in zip(batch, outs, strict=True):
            self.writes.append((job, self.encoders.submit(self.encode, job, out, info)))
        self.settle(self.write_window)

    # --- writing ---------------------------------------------------------------------------
    def encode(self, job: Job, image, info) -> None:
        """Write one result, in an encode thread."""
        _make_parent(job)
        if isinstance(image, np.ndarray):
            image = image.transpose(1, 2, 0)  # write_image takes arrays as (H, W, C)
        for note in self.io.write_image(job.out, image, quality=self.settings.quality,
                                        info=info, compression=self.settings.compression):
            self.warn(f"{job.shown}: {note}")

    def settle(self, limit: int) -> None:
        """Wait for the oldest writes until at most ``limit`` are in flight."""
        while len(self.writes) > limit:
            job, fut = self.writes.popleft()
            try:
                fut.result()
            except Exception as e:
                self.finish(job, e)
            else:
                self.finish(job)

    # --- the run ---------------------------------------------------------------------------
    def __call__(self, todo: list[Job]) -> None:
        workers = self.settings.workers
        self.bar = _bar(len(todo), self.settings.progress, self.summary.rank)
        decoders = ThreadPoolExecutor(workers, thread_name_prefix="convkit-decode")
        # The filter runs in a thread of its own, so that SIGINT/SIGTERM are honoured within a
        # tenth of a second even while one long OpenCV or torch call runs (a median of size
        # 999 took 18 s to notice a SIGTERM when it ran here).
        self.filterer = ThreadPoolExecutor(1, thread_name_prefix="convkit-filter")
        self.encoders = ThreadPoolExecutor(workers, thread_name_prefix="convkit-encode")
        with _Stop() as self.stop:
            try:
                for job, fut in _window(todo, decoders, self.decode, self.read_window,
                                        self.stop.event, self.flight, self.make_room):
                    self.receive(job, fut)
                    del fut  # (its result, the decoded image, must not outlive its write)
                self.make_room()
            except _Abandoned:
                self.summary.abandoned = True
            finally:
                # A decode (or a huge image filtered in tiles) that a signal interrupted is
                # left to run out in its thread; its result is never written.
                stopped = self.stop.event.is_set()
                decoders.shutdown(wait=not stopped, cancel_futures=True)
                self.filterer.shutdown(wait=not stopped, cancel_futures=True)
                # Writes in flight finish: each output is then complete (the rename is atomic).
                self.encoders.shutdown(wait=True)
                self.settle(0)
                if self.bar is not None:
                    self.bar.close()
            self.summary.interrupted = self.stop.signal


class _Abandoned(Exception):
    """A signal came while a long step ran in its thread: the run ends without its result."""


def _wait(fut: Future, stop: threading.Event) -> Any:
    """``fut.result()``, unless a stop request comes first (checked ten times a second)."""
    while True:
        try:
            return fut.result(timeout=0.1)
        except FutureTimeout:
            if stop.is_set():
                raise _Abandoned from None


_STREAMED = object()


def _decoded(images: list, dev) -> list:
    """The batch's images as tensors: JPEGs left encoded (``defer_jpeg``) are decoded on ``dev``
    in one call, and then the others are moved there too, so they stack."""
    io = _io()
    encoded = [i for i, img in enumerate(images) if isinstance(img, io.EncodedJPEG)]
    if not encoded:
        return images
    out = list(images)
    for i, img in zip(encoded, io.decode_jpegs([images[i] for i in encoded], dev), strict=True):
        out[i] = img
    return [img.to(dev) for img in out]


def _make_parent(job: Job) -> None:
    parent = os.path.dirname(job.out)
    if parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            in_the_way = isinstance(e, FileExistsError | NotADirectoryError)
            reason = "a file is in the way" if in_the_way else (e.strerror or str(e))
            raise OSError(f"{job.shown}: cannot create output folder {parent} "
                          f"({reason})") from None


def _huge_png_to_png(job: Job, max_pixels: int | None) -> bool:
    """A PNG over HUGE_PIXELS (and within the pixel limit) written as PNG, judged from the IHDR
    chunk alone. Over the limit, the normal reader refuses it with the usual message."""
    if not (str(job.src).lower().endswith(".png") and str(job.out).lower().endswith(".png")):
        return False
    try:
        with open(job.src, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    png = png_header(head)
    if png is None:
        return False
    w, h = png[:2]
    if not max_pixels:
        max_pixels = _io().pillow_pixel_limit()
    try:  # a header that declares more than the file could hold: the reader says so
        _io().check_png_size(head, job.shown, os.path.getsize(job.src))
    except (OSError, ValueError):
        return False
    return HUGE_PIXELS < w * h <= (max_pixels or w * h)


def _animated_png(path: str) -> bool:
    from ..io.pngstream import read_info

    try:
        return read_info(path).frames > 1
    except (OSError, ValueError):
        return False


class _Flight:
    """The bytes of the images a run holds between their decode and their write (decoding,
    waiting for a batch, filtered, being encoded), weighed before decoding by what each header
    declares (:func:`convkit.io.images.declared_bytes` x
    :data:`convkit.pipeline.memory.FLIGHT_FACTOR`), and the budget they must stay within. Kept by
    the loop's thread alone."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self._held: dict[int, int] = {}

    def weigh(self, job: Job) -> int:
        size = _io().declared_bytes(job.src)
        if size is None:  # a header that does not tell: its file's size (its decode fails)
            try:
                size = os.path.getsize(job.src)
            except OSError:
                size = 0
        return FLIGHT_FACTOR * size

    def fits(self, cost: int) -> bool:
        return self.used + cost <= self.budget

    def take(self, job: Job, cost: int) -> None:
        self._held[id(job)] = cost
        self.used += cost

    def release(self, job: Job) -> None:
        self.used -= self._held.pop(id(job), 0)


def _window(jobs: Iterable[Job], pool: ThreadPoolExecutor, fn, size: int,
            stop: threading.Event, flight: _Flight,
            make_room: Callable[[], None]) -> Iterator[tuple[Job, Future]]:
    """Submit ``fn(job)`` for the jobs, at most ``size`` ahead and within the ``flight``'s
    budget of bytes; yield them in order. When the budget is full and nothing is ahead,
    ``make_room()`` must release what the caller holds (filter its waiting batches, finish its
    writes); an image over the whole budget then runs alone."""
    ahead: deque[tuple[Job, Future]] = deque()
    for job in jobs:
        if stop.is_set():
            break
        cost = flight.weigh(job)
        while ahead and (len(ahead) >= size or not flight.fits(cost)):
            yield ahead.popleft()
            if stop.is_set():
                break
        if stop.is_set():
            break
        if not flight.fits(cost):
            make_room()
        flight.take(job, cost)
        ahead.append((job, pool.submit(fn, job)))
    while ahead and not stop.is_set():
        yield ahead.popleft()
    for _, fut in ahead:
        fut.cancel()
