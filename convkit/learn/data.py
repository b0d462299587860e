"""Training data from a folder: image pairs, a chain to mimic, or clean images to denoise.

Images are read once (by :func:`convkit.io.images.read_image`) into memory as integer tensors
(C, H, W) (uint8, or uint16 for 16-bit files); an alpha channel is dropped (at inference alpha
passes through the model untouched). Keeping every image in memory bounds a folder to what fits
in RAM (about 36 MB per 12-megapixel RGB photo). Training batches are random crops with random
flips, drawn from one ``torch.Generator`` so that a run is reproducible from its seed and can be
resumed exactly from the generator's saved state.

* ``pairs``: ``DIR/input/NAME.*`` and ``DIR/target/NAME.*`` matched by file stem. Pairs whose
  sizes or channel counts differ, unmatched files and unreadable files are reported and skipped.
* ``mimic``: targets are made on the fly by a fixed chain, on the integer crop, so they are
  rounded exactly like a real 8-bit (or 16-bit) output. Each crop is filtered with a halo of the
  chain's reach and flipped before filtering, so every target equals the chain's output on the
  whole (flipped) image: no crop-edge artefacts, and flips stay right for asymmetric kernels.
* ``denoise``: Gaussian noise of ``sigma`` grey levels (of 255) is added to each clean crop, then
  the noisy crop is rounded and clipped to the image's integer type, as a saved noisy photo is.

Validation images are centre crops (at most ``val_size`` a side) treated as whole images: the
target is made from the crop itself, so model and target see the same borders.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io.images import SUPPORTED_EXTENSIONS as IMAGE_EXTS
from ..nn import functional as KF

__all__ = ["IMAGE_EXTS", "TrainData", "Item", "list_images", "read_image", "build_data"]

MODES = ("pairs", "mimic", "denoise")


@dataclass
class Item:
    """One training image: ``x`` (C, H, W) integer, ``y`` its target for pairs, else None."""

    name: str
    x: Tensor
    y: Tensor | None = None

    @property
    def levels(self) -> int:
        ref = self.y if self.y is not None else self.x
        return 65535 if ref.dtype == torch.uint16 else 255


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension), sorted by path.

    The folder is walked by the batch pipeline's walk
    (:func:`convkit.pipeline.batches.walk_images`), so training reads what ``convkit apply`` would:
    hidden files and folders (``.x``: macOS ``._x.png`` resource forks, ``.DS_Store``, a writer's
    temporaries) are skipped, and a symlinked folder is entered once.
    """
    from ..pipeline.batches import walk_images

    found, _ = walk_images(str(folder), recursive, None)
    return sorted(p for p in map(Path, found) if p.is_file())


def read_image(path: str | Path, grey: bool = False, rgb: bool = False) -> Tensor:
    """Read an image file (through :func:`convkit.io.images.read_image`) as an integer tensor
    (C, H, W): uint8, or uint16 for 16-bit files; the alpha channel is dropped.

    ``grey`` converts colour to one channel (ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B,
    rounded), ``rgb`` grey to three equal channels. Raises ValueError naming the file when it
    cannot be read or holds float pixels.
    """
    from ..io.images import read_image as read_file

    t = read_file(path)  # its errors are ValueErrors that name the file
    if t.is_floating_point():
        raise ValueError(f"{path}: float images are not supported for training (8 or 16 bit)")
    if t.shape[0] in (2, 4):
        t = t[:-1]
    if grey and t.shape[0] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)
        t = (t.double() * w).sum(0, keepdim=True).round().to(t.dtype)
    if rgb and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.contiguous()


def _chain_reach(module: nn.Module) -> int:
    """The largest side of the chain's reach; refuses elements that do not tile."""
    mods = list(module) if isinstance(module, nn.Sequential) else [module]
    total = 0
    for m in mods:
        reach = getattr(m, "reach", None)
        if reach is None or getattr(m, "tile_align", 1) != 1:
            raise ValueError(
                f"cannot mimic {m}: it does not say how much context it needs (reach), or it "
                "pools; mimic needs a chain of convkit filters that keep the image size"
            )
        total += max(reach)
    return total


@dataclass
class TrainData:
    """Training and validation images plus how targets are made.

    Attributes:
        mode: pairs, mimic or denoise.
        train, val: the items.
        notes: what was skipped and why (one line each), for the user.
        sigma: noise standard deviation on the [0, 1] scale (denoise).
        target_fn: the fixed chain (mimic).
        source: what was found (image counts), for the model file's provenance.
    """

    mode: str
    train: list[Item]
    val: list[Item]
    notes: list[str] = field(default_factory=list)
    sigma: float = 0.0
    target_fn: nn.Module | None = None
    reach: int = 0
    channels: int = 1
    source: dict = field(default_factory=dict)

    # --- training batches ---------------------------------------------------------------
    def effective_patch(self, patch: int) -> int:
        smallest = min(min(it.x.shape[-2:]) for it in self.train)
        return max(1, min(patch, smallest))

    def pixels(self) -> int:
        return sum(it.x.shape[-1] * it.x.shape[-2] for it in self.train)

    def batch(
        self, n: int, patch: int, context: int, gen: torch.Generator, flip: bool = True,
        border: str = "reflect",
    ) -> tuple[Tensor, Tensor]:
        """``n`` random crops: inputs (N, c, patch + 2 context, patch + 2 context) and targets
        (N, c, patch, patch), float on the [0, 1] scale.

        ``context`` is the model's reach: the input crop carries that much real image around the
        patch, extended by ``border`` where it runs off the image, exactly what the model sees
        of the whole image at inference. c = 1 for a per-channel model (every colour channel of
        a crop is its own sample, so N = n * channels), c = 3 for an RGB model. Images are picked
        with probability proportional to their area.
        """
        areas = torch.tensor([float(it.x.shape[-1] * it.x.shape[-2]) for it in self.train])
        picks = torch.multinomial(areas, n, replacement=True, generator=gen).tolist()
        xs, ys = [], []
        for idx in picks:
            item = self.train[idx]
            h, w = item.x.shape[-2:]
            top = int(torch.randint(0, h - patch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - patch + 1, (1,), generator=gen))
            fl = torch.rand(2, generator=gen).tolist() if flip else [1.0, 1.0]
            x, y = self._crop(item, top, left, patch, context, border, gen)
            # flipping the extended crop equals cropping the flipped image (the border modes
            # used are mirror-symmetric); mimic targets were made from the flipped image
            dims = [d for d, f in ((-2, fl[0] < 0.5), (-1, fl[1] < 0.5)) if f]
            if dims:
                x, y = x.flip(dims), y.flip(dims)
            if self.mode == "mimic":
                y = self._mimic_target(item, top, left, patch, dims)
            xs.append(x)
            ys.append(y)
        if self.channels == 1:
            return torch.cat(xs).unsqueeze(1), torch.cat(ys).unsqueeze(1)
        return torch.stack(xs), torch.stack(ys)

    def _crop(
        self, item: Item, top: int, left: int, p: int, ctx: int, border: str,
        gen: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        h, w = item.x.shape[-2:]
        rows = KF.border_index(h, ctx, ctx, border)[top : top + p + 2 * ctx]
        cols = KF.border_index(w, ctx, ctx, border)[left : left + p + 2 * ctx]
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        src = KF.to_float(item.x[:, r0:r1, c0:c1])
        if self.mode == "denoise":
            # noise on the real pixels, then the extension, as at inference on a noisy photo
            src = add_noise(src, self.sigma, item.levels, gen)
        x = src.index_select(-2, rows - r0).index_select(-1, cols - c0)
        if self.mode == "mimic":
            return x, x  # the target is made by _mimic_target
        y = item.y if item.y is not None else item.x
        return x, KF.to_float(y[:, top : top + p, left : left + p])

    def _mimic_target(self, item: Item, top: int, left: int, p: int, dims: list[int]) -> Tensor:
        """The chain's output on the (flipped) image at the patch: the chain runs on the patch
        with a halo of its reach, clipped to the image, so it sees what the whole image shows."""
        h, w = item.x.shape[-2:]
        r = self.reach
        a0, a1 = max(0, top - r), min(h, top + p + r)
        b0, b1 = max(0, left - r), min(w, left + p + r)
        region = item.x[:, a0:a1, b0:b1]
        oy, ox = top - a0, left - b0
        if -2 in dims:
            region, oy = region.flip(-2), (a1 - a0) - oy - p
        if -1 in dims:
            region, ox = region.flip(-1), (b1 - b0) - ox - p
        return KF.to_float(self._apply_chain(region)[:, oy : oy + p, ox : ox + p])

    def _apply_chain(self, region: Tensor) -> Tensor:
        from ..backends.engine import apply

        with torch.inference_mode():
            return apply(self.target_fn, region.unsqueeze(0))[0]

    # --- validation ---------------------------------------------------------------------
    def val_set(self, val_size: int, seed: int) -> list[tuple[str, Tensor, Tensor, int]]:
        """(name, input, target, levels) per validation image: float (1, C, h, w) centre crops
        at most ``val_size`` a side; fixed noise (from ``seed``) in denoise mode."""
        out = []
        gen = torch.Generator().manual_seed(seed + 7919)
        for item in self.val:
            h, w = item.x.shape[-2:]
            ch, cw = min(h, val_size), min(w, val_size)
            t0, l0 = (h - ch) // 2, (w - cw) // 2
            xi = item.x[:, t0 : t0 + ch, l0 : l0 + cw]
            if self.mode == "mimic":
                yi = self._apply_chain(xi)
                x, y = KF.to_float(xi), KF.to_float(yi)
            elif self.mode == "pairs":
                x = KF.to_float(xi)
                y = KF.to_float(item.y[:, t0 : t0 + ch, l0 : l0 + cw])
            else:
                y = KF.to_float(xi)
                x = add_noise(y, self.sigma, item.levels, gen)
            out.append((item.name, x.unsqueeze(0), y.unsqueeze(0), item.levels))
        return out


def add_noise(x: Tensor, sigma: float, levels: int, gen: torch.Generator) -> Tensor:
    """``x`` plus Gaussian noise of std ``sigma`` ([0, 1] scale), rounded and clipped to
    ``levels`` (255 or 65535) like a noisy image stored as integers."""
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32) * sigma
    return torch.round((x + noise).clamp(0, 1) * levels) / levels


def _split(n: int, val: float, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """Indices for training and validation: ``val`` < 1 is a fraction, >= 1 a count."""
    if val <= 0 or n < 2:
        return list(range(n)), []
    k = int(val) if val >= 1 else max(1, round(n * val))
    k = min(k, n - 1)
    perm = torch.randperm(n, generator=gen).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def _load_pairs(
    folder: Path, grey: bool, rgb: bool, notes: list[str]
) -> list[Item]:
    in_dir, tg_dir = folder / "input", folder / "target"

    def by_stem(d: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for p in list_images(d):
            if p.stem in found:
                notes.append(f"{p}: another file in {d} has the stem {p.stem!r}; skipped")
                continue
            found[p.stem] = p
        return found

    ins, tgs = by_stem(in_dir), by_stem(tg_dir)
    for stem in sorted(set(ins) - set(tgs)):
        notes.append(f"{ins[stem]}: no target with the stem {stem!r} in {tg_dir}; skipped")
    for stem in sorted(set(tgs) - set(ins)):
        notes.append(f"{tgs[stem]}: no input with the stem {stem!r} in {in_dir}; skipped")
    items = []
    for stem in sorted(set(ins) & set(tgs)):
        try:
            x = read_image(ins[stem], grey, rgb)
            y = read_image(tgs[stem], grey, rgb)
        except ValueError as e:
            notes.append(f"{e}; pair skipped")
            continue
        if x.shape != y.shape:
            notes.append(
                f"{ins[stem]}: input is {_shape(x)}, target {tgs[stem].name} is {_shape(y)}: "
                "sizes or channel counts differ; skipped"
            )
            continue
        items.append(Item(stem, x, y))
    return items


def _shape(t: Tensor) -> str:
    c, h, w = t.shape
    return f"{w}x{h} with {c} channel{'s' if c > 1 else ''}"


def build_data(
    folder: str | Path,
    mode: str,
    *,
    chain: str | None = None,
    sigma: float | None = None,
    val: float = 0.1,
    seed: int = 0,
    grey: bool = False,
    channels: int = 1,
    recursive: bool = False,
    log: Callable[[str], None] | None = None,
    exclude: Iterable[str | Path] = (),
) -> TrainData:
    """Read the folder and split it.

    Args:
        folder: for pairs, a folder with ``input/`` and ``target/``; else a folder of images.
        mode: pairs, mimic or denoise.
        chain: the chain spec to mimic. sigma: the noise in grey levels of 255 (denoise).
        val: the validation split: a fraction below 1, a count from 1 (none with 0 or one image).
        seed: picks the validation images.
        grey: convert every image to one channel. channels: 3 converts every image to RGB.
        exclude: files that are not to be read even when they lie in the folder (a training
            run's own pictures, when its model is written inside the data folder).

    Raises:
        ValueError with a one-line message for a missing or empty folder, a bad chain, or a
        folder with no usable image.
    """
    if mode not in MODES:
        raise ValueError(f"Invalid mode {mode!r}. Expected one of {', '.join(MODES)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    rgb = channels == 3
    notes: list[str] = []
    target_fn, reach, s = None, 0, 0.0
    if mode == "pairs":
        missing = [d for d in ("input", "target") if not (folder / d).is_dir()]
        if missing:
            raise ValueError(
                f"{folder}: paired training needs the subfolders input/ and target/ "
                f"(missing: {', '.join(missing)}); for a plain folder of images use --mimic "
                "CHAIN or --denoise SIGMA"
            )
        items = _load_pairs(folder, grey, rgb, notes)
        if not items:
            raise ValueError(
                f"{folder}: no usable input/target pair (matched by file stem; supported "
                f"extensions: {', '.join(IMAGE_EXTS)})"
            )
    else:
        if mode == "mimic":
            target_fn, reach = _make_chain(chain)
        else:
            if sigma is None or not math.isfinite(sigma) or sigma <= 0:
                raise ValueError(f"denoise sigma should be a number > 0 (grey levels). Got {sigma}")
            s = float(sigma) / 255.0
        skip = {os.path.realpath(p) for p in exclude}
        paths = [p for p in list_images(folder, recursive) if os.path.realpath(p) not in skip]
        items = []
        for p in paths:
            try:
                items.append(Item(str(p.relative_to(folder)), read_image(p, grey, rgb)))
            except ValueError as e:
                notes.append(f"{e}; skipped")
        if not items:
            raise ValueError(
                f"{folder}: no images found{' (searched recursively)' if recursive else ''}; "
                f"supported extensions: {', '.join(IMAGE_EXTS)}"
            )
    gen = torch.Generator().manual_seed(seed)
    tr, va = _split(len(items), val, gen)
    if val > 0 and not va:
        notes.append("only one image: no validation split; the last epoch's model is kept")
    data = TrainData(
        mode, [items[i] for i in tr], [items[i] for i in va], notes, sigma=s,
        target_fn=target_fn, reach=reach, channels=channels,
        source={"images": len(items), "train_images": len(tr), "val_images": len(va),
                "skipped": len(notes) - (1 if val > 0 and not va else 0)},
    )
    if log is not None:
        for line in notes:
            log(line)
    return data


def _make_chain(spec: str | None) -> tuple[nn.Module, int]:
    from ..nn.chains import chain as build_chain

    if not spec or not isinstance(spec, str):
        raise ValueError(f"--mimic needs a chain spec such as 'gaussian(sigma=1) | sharpen'. "
                         f"Got {spec!r}")
    module = build_chain(spec).eval()
    reach = _chain_reach(module)
    probe = torch.zeros(1, 1, 9, 11, dtype=torch.uint8)
    from ..backends.engine import apply

    with torch.inference_mode():
        out = apply(module, probe)
    if out.shape != probe.shape:
        raise ValueError(
            f"cannot mimic {spec!r}: its output is not the size of its input (pooling); a "
            "learned filter keeps the image size"
        )
    return module, reach
