"""nvJPEG through torchvision on this GPU: are the pixels right, and where does the time go?

    python benchmarks/gpu_decode_check.py [--device cuda]

1. Small JPEGs (56x40, like the test's) and 1080p photos decoded in batches of several sizes
   and one by one, repeatedly, each compared with libjpeg-turbo's decode of the same file: an
   image that nvJPEG left unwritten or wrote wrong shows as a large difference.
2. The time of one decode call against the batch size (median of 5, after two warm-ups).
3. ``convkit.run(decode="gpu")`` on a folder of 1080p JPEGs with the decoder and the filter
   timed, and counts of device-decode failures (each one falls back to the CPU decoder).
"""

from __future__ import annotations

import argparse
import io as pyio
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_gpu import jpeg_bytes, timed  # (benchmarks/ is on the path when a script there runs)
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

import convkit
from convkit.io import images as io
from convkit.pipeline import batches as pipeline


def small_jpegs(n: int) -> list[bytes]:
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:40, 0:56]
        base = np.stack([128 + 90 * np.sin(xx / (5 + c) + yy / 7) for c in range(3)], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = pyio.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def as_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def agreement(name: str, blobs: list[bytes], dev: torch.device, batch: int, reps: int,
              sync_first: bool) -> None:
    ref = [decode_jpeg(as_tensor(b), mode=ImageReadMode.RGB) for b in blobs]
    worst, bad = 0, 0
    for _ in range(reps):
        for i in range(0, len(blobs), batch):
            if sync_first and dev.type == "cuda":
                torch.cuda.synchronize(dev)
            chunk = [as_tensor(b) for b in blobs[i:i + batch]]
            got = decode_jpeg(chunk if batch > 1 else chunk[0], mode=ImageReadMode.RGB,
                              device=dev)
            got = got if isinstance(got, list) else [got]
            for j, g in enumerate(got):
                d = int((g.cpu().int() - ref[i + j].int()).abs().max())
                worst = max(worst, d)
                bad += d > 40
    print(f"  {name:10s} batch {batch:2d} sync_first={sync_first!s:5s}: worst {worst:3d} levels, "
          f"{bad} of {reps * len(blobs)} images off by > 40", flush=True)


def timing(blobs: list[bytes], dev: torch.device) -> None:
    for batch in (1, 4, 8, 16):
        chunk = [as_tensor(b) for b in blobs[:batch]]
        per = timed(lambda c=chunk: decode_jpeg(c, mode=ImageReadMode.RGB, device=dev), dev,
                    reps=5)
        print(f"  decode_jpeg of {batch:2d} 1080p JPEGs: {per * 1e3:6.1f} ms per call, "
              f"{batch / per:6.0f} images/s", flush=True)


def pipeline_run(blobs: list[bytes], dev: torch.device) -> None:
    stats = {"decode_calls": 0, "decode_fail": 0, "decode_s": 0.0, "filter_s": 0.0,
             "cpu_decoded": 0}  # (with decode=gpu: the fallbacks)
    real_decode, real_filter, real_read = io.decode_jpegs, pipeline.filter_batch, \
        io.read_image_with_info

    def decode(items, d):
        t0 = time.perf_counter()
        stats["decode_calls"] += 1
        try:
            return real_decode(items, d)
        except Exception as e:
            stats["decode_fail"] += 1
            print(f"  decode_jpegs failed: {e}"[:300], flush=True)
            raise
        finally:
            stats["decode_s"] += time.perf_counter() - t0

    def filt(*a, **k):
        t0 = time.perf_counter()
        try:
            return real_filter(*a, **k)
        finally:
            stats["filter_s"] += time.perf_counter() - t0

    def read(path, **k):
        if not k.get("defer_jpeg", False):
            stats["cpu_decoded"] += 1
        return real_read(path, **k)

    io.decode_jpegs, pipeline.filter_batch, io.read_image_with_info = decode, filt, read
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "in"
            folder.mkdir()
            for i, b in enumerate(blobs):
                (folder / f"{i:03d}.jpg").write_bytes(b)
            for decode_where in ("gpu", "cpu", "gpu"):
                for k in stats:
                    stats[k] = 0 if isinstance(stats[k], int) else 0.0
                s = convkit.run("sharpen", folder, Path(tmp) / f"out-{decode_where}",
                                device=str(dev), decode=decode_where, progress=False)
                print(f"  convkit.run decode={decode_where}: {s.written} written, {s.failed} "
                      f"failed in {s.seconds:.2f} s; {stats}", flush=True)
            a = io.read_image(Path(tmp) / "out-gpu" / "000.jpg").int()
            b = io.read_image(Path(tmp) / "out-cpu" / "000.jpg").int()
            print(f"  first output, gpu decode against cpu decode: max {int((a - b).abs().max())}"
                  f" levels", flush=True)
    finally:
        io.decode_jpegs, pipeline.filter_batch, io.read_image_with_info = real_decode, \
            real_filter, real_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device {dev}: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}")
    small, photos = small_jpegs(8), jpeg_bytes(16)
    print("1. agreement with libjpeg-turbo")
    for name, blobs, reps in (("56x40", small, 10), ("1080p", photos, 2)):
        for batch in (1, 2, 4, 8):
            for sync_first in (False, True):
                agreement(name, blobs, dev, batch, reps, sync_first)
    print("2. time per call")
    timing(photos, dev)
    print("3. the pipeline")
    pipeline_run(jpeg_bytes(48), dev)


if __name__ == "__main__":
    main()
