"""Model files: one file holding a learned filter's architecture, weights, metrics and provenance.

Format (``FORMAT_VERSION`` 1), written with ``torch.save`` as a plain dict::

    {"format": "convkit-learned-filter", "format_version": 1,
     "convkit_version": "0.1.0", "torch_version": "...",
     "config": {...ModelConfig fields...},          # the architecture
     "state_dict": {name: tensor},                   # the weights, float32
     "metrics": {...}, "provenance": {...},          # JSON-able: numbers, strings, lists
     "train_state": {...}}                           # checkpoints only: optimizer, RNG, step

It is read with ``torch.load(weights_only=True)``, whose unpickler accepts only tensors and plain
containers: a file crafted to run code when unpickled is refused before anything runs. A
``.safetensors`` file (weights plus the same fields as JSON in the header's ``__metadata__``) is
read and written by the small reader below, without the safetensors package and without pickle.

Every problem with a file (missing, corrupt, truncated, unsafe, written by a newer convkit, not
a convkit model) is a one-line ValueError that names the file. Files are written atomically: a
temporary file in the same folder, flushed to disk, then renamed over the target, so a reader
never sees a half-written model or checkpoint.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from .model import LearnedFilter, ModelConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "load_model",
    "save_model",
    "update_metrics",
    "read_model_file",
    "build_learned",
    "atomic_write",
]

FORMAT = "convkit-learned-filter"
FORMAT_VERSION = 1
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F64": torch.float64}


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it to ``path``
    (:func:`convkit.io.atomic.write_file`: the replaced file's mode and links are kept).

    On any failure (an exception, Ctrl-C) the temporary file is removed and ``path`` keeps its
    old content, if it had one.
    """
    from ..io.atomic import write_file

    write_file(path, write, fsync=True)


def _version() -> str:
    from .._version import __version__

    return __version__


def model_payload(
    model: LearnedFilter, metrics: dict | None = None, provenance: dict | None = None
) -> dict[str, Any]:
    """The dict a model file holds (weights copied to float32 on the CPU)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "convkit_version": _version(),
        "torch_version": torch.__version__.split("+")[0],
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()},
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
    }


def save_model(
    model: LearnedFilter, path: str | Path, metrics: dict | None = None,
    provenance: dict | None = None, extra: dict | None = None,
) -> Path:
    """Write ``model`` with its metrics and provenance to ``path`` (atomically).

    A ``.safetensors`` suffix writes the safetensors format; anything else ``torch.save``'s.
    ``extra`` adds top-level entries (checkpoints put ``train_state`` there; torch format only).
    metrics and provenance must be JSON-able.
    """
    path = Path(path)
    payload = model_payload(model, metrics, provenance)
    if path.suffix.lower() == ".safetensors" and extra:
        raise ValueError(f"{path}: a checkpoint cannot be a .safetensors file")
    payload.update(extra or {})
    _write_payload(payload, path)
    return path


def update_metrics(path: str | Path, metrics: dict) -> None:
    """Replace the metrics a model file records, keeping its weights and everything else
    (atomically). Raises ValueError as :func:`read_model_file` does."""
    path = Path(path)
    payload = read_model_file(path)
    del payload["config_obj"]
    payload["metrics"] = dict(metrics)
    _write_payload(payload, path)


def _write_payload(payload: dict[str, Any], path: Path) -> None:
    json.dumps({"m": payload["metrics"], "p": payload["provenance"]})  # fail early, not in load
    if path.suffix.lower() == ".safetensors":
        atomic_write(path, lambda f: f.write(_safetensors_bytes(payload)))
    else:
        atomic_write(path, lambda f: torch.save(payload, f))


# --- reading --------------------------------------------------------------------------------
def read_model_file(path: str | Path) -> dict[str, Any]:
    """Read and check a model file; returns its dict (see the module docstring).

    Raises:
        ValueError: one line naming the file: missing, unreadable, corrupt or truncated,
            unsafe (would run code), newer format version, or not a convkit model.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such model file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    if path.suffix.lower() == ".safetensors":
        payload = _read_safetensors(path)
    else:
        payload = _torch_load(path)
    return _check_payload(payload, path)


#: The most a model file may unpack to: far above any architecture convkit trains.
MAX_UNPACKED = 2 << 30


def _check_zip(path: Path) -> None:
    """A model file written by torch.save is a zip of stored (uncompressed) records; check what
    the records declare before torch reads them, so that a small file whose deflated record
    inflates to gigabytes is refused instead of read."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return  # an old-style pickle, or not a model file: torch.load says which
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path}: not a readable model file (corrupt: {_first_line(e)})"
                         ) from None
    total = sum(i.file_size for i in infos)
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise ValueError(f"{path}: not a convkit model file (record {packed[0]!r} is "
                         "compressed; torch.save stores its records as they are)")
    if total > MAX_UNPACKED:
        raise ValueError(f"{path}: not a convkit model file (its records declare "
                         f"{total} bytes, over the limit of {MAX_UNPACKED})")


def _torch_load(path: Path) -> Any:
    _check_zip(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of foreign files; the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        names = _pickled_globals(path) if "GLOBAL" not in msg else None
        if "GLOBAL" in msg or names:
            what = _unsafe_global(msg) or f" ({', '.join(names[:3])})"
            raise ValueError(
                f"{path}: refused to load: the file holds Python objects{what} that would run "
                "code when unpickled; convkit model files hold only tensors and plain data"
            ) from None
        raise ValueError(f"{path}: not a readable model file (corrupt: {_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError,
            struct.error, UnicodeDecodeError, AttributeError, TypeError) as e:
        # zip errors, short reads and a text file all end here
        raise ValueError(
            f"{path}: not a readable model file (corrupt or truncated: {_first_line(e)})"
        ) from None


def _pickled_globals(path: Path) -> list[str]:
    """Names of the Python objects a plain pickle file would import (and call), found by
    reading its opcodes with :mod:`pickletools`, which never executes them. Empty for a file
    that is not a valid pickle."""
    import pickletools

    try:
        data = path.read_bytes()
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
            if op.name == "STOP":
                break
        return names
    except (ValueError, OSError, EOFError, UnicodeDecodeError):
        return []


def _unsafe_global(msg: str) -> str:
    # torch names the offending global: "... unsupported GLOBAL posix.system whose ..."
    for marker in ("Unsupported global: GLOBAL ", "GLOBAL "):
        i = msg.find(marker)
        if i >= 0:
            name = msg[i + len(marker):].split()[0].strip(".,'\"")
            return f" ({name})"
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _check_payload(payload: Any, path: Path) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a convkit model file (no {FORMAT!r} format tag)")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path}: not a convkit model file (bad format version {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: written by a newer convkit (model format {version}; this convkit "
            f"{_version()} reads up to {FORMAT_VERSION}); upgrade convkit to load it"
        )
    for key, kind in (("config", dict), ("state_dict", dict), ("metrics", dict),
                      ("provenance", dict)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{path}: damaged convkit model file (no {key})")
    try:
        payload["config_obj"] = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: damaged convkit model file (architecture: {e})") from None
    _check_weights(payload["state_dict"], payload["config_obj"], path)
    payload["odd_records"] = _plain_records(payload)
    return payload


def _check_weights(state: dict[str, Any], cfg: ModelConfig, path: Path) -> None:
    """The weights are what the architecture needs, before any layer is built: the same
    names and shapes (the net is laid out on torch's meta device, which allocates nothing),
    each a dense, finite, real floating-point tensor on the CPU."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LearnedFilter(cfg).state_dict().items()}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise ValueError(f"{path}: damaged convkit model file (weights do not fit the "
                         f"architecture: {what})")
    for name, t in state.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{path}: damaged convkit model file ({name} is not a tensor)")
        if t.layout != torch.strided or t.device.type != "cpu" or not t.is_floating_point():
            kind = (f"{t.layout}".removeprefix("torch.") if t.layout != torch.strided else
                    f"on the {t.device.type} device" if t.device.type != "cpu" else
                    f"{t.dtype}".removeprefix("torch."))
            raise ValueError(f"{path}: damaged convkit model file ({name} is {kind}; "
                             "weights are dense real floating-point tensors)")
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{path}: damaged convkit model file (weights do not fit the "
                             f"architecture: {name} has shape {tuple(t.shape)}; the "
                             f"architecture needs {expected[name]})")
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: the model's weights are not finite (NaN or inf in {name})")


# The records convkit info shows as numbers; a file may hold anything there.
_NUMERIC = {
    "metrics": ("val_psnr", "val_ssim", "baseline_psnr", "baseline_ssim", "train_loss",
                "epoch", "step", "steps_total", "train_seconds", "run_steps", "run_epochs",
                "run_seconds"),
    "provenance": ("images", "train_images", "val_images", "patch", "batch_size", "seed",
                   "processes", "sigma", "lr"),
}


def _plain_records(payload: dict[str, Any]) -> list[str]:
    """Drop the records that should be numbers and are not (``val_psnr`` a string,
    ``processes`` "two"), so that describing the file never fails on them; name each one."""
    odd = []
    for section, keys in _NUMERIC.items():
        records = payload[section]
        for key in keys:
            v = records.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                odd.append(f"{section}.{key} = {str(v)[:40]!r}")
                del records[key]
    return odd


def load_model(path: str | Path) -> LearnedFilter:
    """Load a learned filter from a model file (or a training checkpoint).

    Returns an ``nn.Module`` on the CPU in eval mode that prints in a chain spec as
    ``learned(path=...)``; ``metrics`` and ``provenance`` hold the file's records.
    Loading never executes code from the file.

    Raises:
        ValueError: one line naming the file (see :func:`read_model_file`).
    """
    payload = read_model_file(path)
    model = LearnedFilter(payload["config_obj"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: damaged convkit model file (weights do not fit the architecture: "
            f"{_first_line(e)})"
        ) from None
    model.eval()
    model.spec_name = "learned"
    model.spec_params = {"path": str(path)}
    model.metrics = payload["metrics"]
    model.provenance = payload["provenance"]
    model.file_info = {k: payload.get(k) for k in ("format_version", "convkit_version",
                                                   "torch_version")}
    return model


def build_learned(info: Any, path: str | None = None) -> LearnedFilter:
    """Registry builder of the ``learned`` filter (``learned(path=model.pt)``)."""
    if path is None:
        raise ValueError("learned: give path=MODEL_FILE (--path on the command line), a model "
                         "written by convkit train")
    return load_model(path)


# --- safetensors, without the package ----------------------------------------------------
def _safetensors_bytes(payload: dict[str, Any]) -> bytes:
    meta_keys = ("format", "convkit_version", "torch_version")
    header: dict[str, Any] = {
        "__metadata__": {
            **{k: str(payload[k]) for k in meta_keys},
            "format_version": str(payload["format_version"]),
            "config": json.dumps(payload["config"]),
            "metrics": json.dumps(payload["metrics"]),
            "provenance": json.dumps(payload["provenance"]),
        }
    }
    blobs, offset = [], 0
    for name, t in sorted(payload["state_dict"].items()):
        data = t.detach().float().contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _read_safetensors(path: Path) -> dict[str, Any]:
    import numpy as np

    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a readable model file (corrupt or truncated: {why})")

    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file ({e.strerror})") from None
    if len(raw) < 8:
        raise bad("shorter than a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8 or n > 100 << 20:
        raise bad(f"header of {n} bytes in a file of {len(raw)}")
    try:
        header = json.loads(raw[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("__metadata__ is not a table of strings")
    data = memoryview(raw)[8 + n :]
    tensors = {}
    for name, entry in header.items():
        try:
            dtype = _ST_DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"bad entry for {name!r}") from None
        if any(s < 0 for s in shape) or len(shape) > 8:
            raise bad(f"{name!r} has the shape {shape}")
        count = math.prod(shape)
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise bad(f"{name!r} lies outside the file")
        buf = bytes(data[begin:end])
        if dtype == torch.bfloat16:
            t = torch.frombuffer(bytearray(buf), dtype=torch.bfloat16).float() if count else \
                torch.zeros(0)
        else:
            np_dtype = {torch.float32: "<f4", torch.float16: "<f2", torch.float64: "<f8"}[dtype]
            t = torch.from_numpy(np.frombuffer(buf, dtype=np_dtype).astype(np.float32).copy())
        tensors[name] = t.reshape(shape)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a convkit model file (no {FORMAT!r} format tag)")
    try:
        return {
            "format": meta["format"],
            "format_version": int(meta.get("format_version", "0")),
            "convkit_version": meta.get("convkit_version"),
            "torch_version": meta.get("torch_version"),
            "config": json.loads(meta["config"]),
            "metrics": json.loads(meta.get("metrics", "{}")),
            "provenance": json.loads(meta.get("provenance", "{}")),
            "state_dict": tensors,
        }
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: damaged convkit model file (metadata: {e})") from None
