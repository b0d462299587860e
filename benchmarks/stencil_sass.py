"""The Triton stencil's machine code, without a GPU: instructions per pixel and registers.

    python benchmarks/stencil_sass.py [--arch 90]

Compiles ``convkit.backends.stencil`` for sm_<arch> ahead of time (``stencil.compile_for``), takes
the SASS apart with the ``nvdisasm``/``cuobjdump`` that Triton's wheel ships, and counts the
instructions of the inner-tile path (the branch every tile of a large image takes, between the
first branch and the first EXIT), divided by the pixels each thread computes. A proxy for speed
where no GPU is at hand: on an H100 one SM issues 4 warp-instructions per clock, so at 1.98 GHz
and 132 SMs, N instructions per pixel cost N * 99.5e6 / 32 / 1.05e12 seconds for the roofline
batch (16 x 1080p RGB), against 0.083 ms for a device-to-device copy of its bytes. Only a GPU
run (benchmarks/gpu.sh) says what the kernel really achieves.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import numpy as np
import torch

from convkit.backends import stencil

SHARPEN = (stencil.tap_mask(np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])),)  # zero corners
_DX = np.array([[1, 0, 1]] * 3)  # where sobel's x kernel is non-zero; its y kernel: the transpose
SOBEL = (stencil.tap_mask(_DX), stencil.tap_mask(_DX.T))
CASES = [
    ("sharpen 3x3, uint8, int32 path", dict(whole=True, taps=SHARPEN)),
    ("sharpen 3x3, uint8, float path", dict(whole=False, taps=SHARPEN)),
    ("dense 3x3, uint8, int32 path (every tap non-zero)", dict(whole=True)),
    ("3x3, uint8 -> float32 (a chain's first step)", dict(out_dtype=torch.float32,
                                                          negative=None)),
    ("3x3, float32 -> uint8 (a chain's last step)", dict(dtype=torch.float32)),
    ("sobel magnitude 3x3, uint8", dict(two=True, taps=SOBEL)),
    ("5x5, uint8, float path", dict(shape=(5, 5))),
    ("sharpen 3x3 channels_last (column stride 3), int32 path",
     dict(whole=True, unit=False, taps=SHARPEN)),
]
BLOCKS = [(8, 128, 4), (16, 128, 4), (32, 128, 4), (16, 256, 8)]
_OP = re.compile(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)")


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def inner_path(cubin: bytes) -> tuple[collections.Counter, int]:
    """Opcode counts between the first branch and the first EXIT, and the register count."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True,
                              text=True, check=True).stdout.splitlines()
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    start = next(i for i, line in enumerate(sass) if " BRA " in line)
    end = next(i for i, line in enumerate(sass) if "EXIT" in line)
    ops = collections.Counter(m.group(1) for line in sass[start:end] if (m := _OP.match(line)))
    regs = re.search(r"REG:(\d+)", res)
    return ops, int(regs.group(1)) if regs else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args()
    print(f"convkit stencil, sm_{args.arch}, inner-tile path (default tile {stencil.BLOCK})")
    print("| case | tile (rows x cols, warps) | instructions / pixel | loads / pixel | "
          "registers | main opcodes |")
    print("|---|---|---|---|---|---|")
    for name, kw in CASES:
        for block in BLOCKS if name.startswith("sharpen 3x3, uint8") else [stencil.BLOCK]:
            k = stencil.compile_for(args.arch, block=block, **kw)
            ops, regs = inner_path(k.asm["cubin"])
            per = block[0] * block[1] / (32 * block[2])  # pixels per thread
            loads = sum(n for op, n in ops.items() if op.startswith("LDG"))
            top = ", ".join(f"{op} {n / per:.1f}" for op, n in ops.most_common(4))
            print(f"| {name} | {block[0]} x {block[1]}, {block[2]} | "
                  f"{sum(ops.values()) / per:.1f} | {loads / per:.1f} | {regs} | {top} |",
                  flush=True)


if __name__ == "__main__":
    main()
