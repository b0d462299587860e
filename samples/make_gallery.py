"""Rebuild samples/gallery/gallery.png, the README's before/after strip.

It lives in a subfolder so that ``convkit train samples/ ...`` and ``convkit sharpen samples/
-o out/`` see only the photos (neither looks into subfolders without ``-r``).

    python samples/make_gallery.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

import convkit

HERE = Path(__file__).resolve().parent
SPECS = ["sharpen(amount=2)", "gaussian(sigma=3)", "edges", "emboss"]


def main() -> None:
    img = np.asarray(Image.open(HERE / "astronaut.png").convert("RGB"))[40:296, 128:384]
    tiles = [img] + [convkit.process(img, s) for s in SPECS]
    gap = np.full((img.shape[0], 6, 3), 255, np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    Image.fromarray(row).save(HERE / "gallery" / "gallery.png", optimize=True)


if __name__ == "__main__":
    main()
