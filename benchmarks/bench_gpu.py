"""GPU benchmark (called by benchmarks/gpu.sh): batched 1080p sharpen against the memory-bandwidth
roofline, and a folder of JPEGs end to end with decoding on the GPU.

    python benchmarks/bench_gpu.py [--batch 16] [--images 96] [--skip-cli]

Roofline: a uint8 filter must read each sample once and write it once, so its floor is
2 bytes per sample at the memory bandwidth. The peak is the card's theoretical one (memory clock
x bus width, from torch.cuda.get_device_properties) and, as a practical ceiling, a
device-to-device copy of the same bytes measured here. Reported: achieved GB/s of each path and
its share of both. Runs on CPU too (``--device cpu``) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import convkit
from convkit.backends import engine


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, reps: int = 20) -> float:
    """Median seconds per call, after two warm-up calls."""
    fn()
    fn()
    _sync(dev)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def peak_bandwidth(dev: torch.device) -> float | None:
    """Theoretical bytes/s: 2 transfers per clock (DDR/HBM) x memory clock x bus width."""
    if dev.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(dev)
    clock = getattr(p, "memory_clock_rate", 0)  # kHz
    width = getattr(p, "memory_bus_width", 0)  # bits
    return 2.0 * clock * 1e3 * width / 8 if clock and width else None


def photo_batch(n: int, dev: torch.device) -> torch.Tensor:
    import cv2
    from skimage import data

    img = cv2.resize(data.astronaut(), (1920, 1080), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return torch.stack([torch.roll(x, 13 * i, dims=2) for i in range(n)]).to(dev)


def roofline(dev: torch.device, batch: int) -> list[dict]:
    x = photo_batch(batch, dev)
    nbytes = x.numel()  # uint8: one byte per sample, read once and written once
    y = torch.empty_like(x)
    copy = timed(lambda: y.copy_(x), dev)
    copy_bw = 2 * nbytes / copy
    peak = peak_bandwidth(dev)
    m = convkit.chain("sharpen").to(dev)
    rows = [{"path": "device-to-device copy", "s": copy, "GB/s": copy_bw / 1e9}]
    import cv2

    k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    reference = torch.from_numpy(np.stack([
        np.stack([cv2.filter2D(p, -1, k, borderType=cv2.BORDER_REFLECT_101) for p in img])
        for img in x.cpu().numpy()])).to(dev).int()
    runs = [("convkit sharpen (eager)", {}),
            ("convkit sharpen (eager, channels_last)", {"channels_last": True}),
            ("convkit sharpen (compile=True)", {"compile": True}),
            ("convkit sharpen (triton=True)", {"triton": True})]
    for name, opts in runs:
        try:
            with engine.options(**opts):
                t0 = time.perf_counter()
                engine.apply(m, x)
                _sync(dev)
                first = time.perf_counter() - t0  # compile/triton: the compile itself
                t = timed(lambda: engine.apply(m, x), dev)
                plan = engine.explain(m, x)
                worst = int((engine.apply(m, x).int() - reference).abs().max())
        except Exception as e:  # report and go on: the script must finish its table
            rows.append({"path": name, "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append({"path": name, "s": t, "GB/s": 2 * nbytes / t / 1e9, "plan": plan})
        print(f"{name}: first call {first:.2f} s; plan {plan}; {worst} levels from OpenCV's "
              f"filter2D", flush=True)
    try:
        import kornia

        k = torch.tensor([[[0, -1, 0], [-1, 5, -1], [0, -1, 0]]], dtype=torch.float32,
                         device=dev)

        def kor():
            f = x.float().div_(255)
            kornia.filters.filter2d(f, k, border_type="reflect").mul_(255).round_().clamp_(
                0, 255).to(torch.uint8)

        t = timed(kor, dev, reps=5)
        rows.append({"path": "kornia filter2d (float)", "s": t, "GB/s": 2 * nbytes / t / 1e9})
    except ImportError:
        pass
    except Exception as e:  # a kornia that fails must not take the rest of the table with it
        rows.append({"path": "kornia filter2d (float)", "error": f"{type(e).__name__}: {e}"})
    for r in rows:
        if "s" in r:
            r["% copy"] = 100 * r["GB/s"] * 1e9 / copy_bw
            r["% peak"] = 100 * r["GB/s"] * 1e9 / peak if peak else None
    print(f"\nBatched sharpen, {batch} x 1080p RGB uint8 ({nbytes / 1e6:.0f} MB in, same out); "
          f"theoretical peak {peak / 1e9:.0f} GB/s" if peak else "")
    print(f"| {'path':40s} | {'ms':>8s} | {'GB/s':>8s} | {'% of copy':>9s} | {'% of peak':>9s} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 11}|")
    for r in rows:
        if "error" in r:
            print(f"| {r['path']:40s} | {r['error'][:60]}")
            continue
        pk = f"{r['% peak']:8.1f}%" if r.get("% peak") is not None else f"{'-':>9s}"
        print(f"| {r['path']:40s} | {r['s'] * 1e3:8.2f} | {r['GB/s']:8.1f} | "
              f"{r['% copy']:8.1f}% | {pk} |")
    best = max((r for r in rows[1:] if "s" in r and r["path"].startswith("convkit")),
               key=lambda r: r["GB/s"], default=None)
    if best is not None and peak:
        ok = best["% peak"] >= 50
        print(f"target: >= 50% of the roofline: best convkit path {best['% peak']:.0f}% of peak "
              f"({'ok' if ok else 'MISSED'})")
    stencil_blocks(x, reference, copy_bw, peak)
    return rows


# (rows, columns, warps) per program tried for the Triton stencil; stencil.BLOCK is the default
BLOCKS = [(8, 128, 4), (16, 128, 4), (32, 128, 8), (16, 256, 8), (8, 256, 4), (4, 512, 4),
          (32, 64, 4), (64, 64, 8), (32, 256, 8), (64, 128, 8)]


def stencil_blocks(x: torch.Tensor, reference: torch.Tensor, copy_bw: float,
                   peak: float | None) -> None:
    """The Triton stencil's sharpen at each tile shape, called directly (no engine)."""
    from convkit.backends import stencil

    if not stencil.available(x.device):
        print("\nTriton stencil: not available on this device (CUDA and Triton needed)")
        return
    k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float64)
    w = stencil.prepare([k], 1.0, x.device)
    nbytes = x.numel()
    print(f"\nTriton stencil tile shapes (sharpen, same batch; default {stencil.BLOCK}):")
    print("| rows x cols, warps | ms | GB/s | % of copy | % of peak | levels from OpenCV |")
    print("|---|---|---|---|---|---|")
    for block in BLOCKS:
        def run(block=block):
            return stencil.correlate(x, w, "reflect", 0.0, 0.0, torch.uint8, 255.0, "clip",
                                     block=block)
        try:
            worst = int((run().int() - reference).abs().max())
            t = timed(run, x.device)
        except Exception as e:  # report and go on
            print(f"| {block} | {type(e).__name__}: {str(e)[:80]} |")
            continue
        gbs = 2 * nbytes / t
        pk = f"{100 * gbs / peak:.1f}" if peak else "-"
        print(f"| {block[0]} x {block[1]}, {block[2]} | {t * 1e3:.3f} | {gbs / 1e9:.0f} | "
              f"{100 * gbs / copy_bw:.1f} | {pk} | {worst} |", flush=True)


FILTER_ROWS = [("sharpen", "sharpen"), ("emboss", "emboss"), ("laplacian", "laplacian"),
               ("sobel magnitude", "sobel"),
               ("chain of 4 linear", "gaussian(sigma=1) | sharpen | box(size=3) | emboss"),
               ("box 3", "box(size=3)")]


def triton_rows(dev: torch.device, batch: int) -> None:
    """Eager torch against options(triton=True) on the filters the stencil takes."""
    from convkit.backends import stencil

    if not stencil.available(dev):
        return
    x = photo_batch(batch, dev)
    print(f"\nFilters on {batch} x 1080p RGB uint8: eager torch against options(triton=True)")
    print("| filter | eager ms | triton ms | speed-up | triton plan | levels apart |")
    print("|---|---|---|---|---|---|")
    for name, spec in FILTER_ROWS:
        m = convkit.chain(spec).to(dev)
        try:
            te = timed(lambda m=m: engine.apply(m, x), dev, reps=10)
            with engine.options(triton=True):
                tt = timed(lambda m=m: engine.apply(m, x), dev, reps=10)
                plan = [f"{b}/{meth}" for _, b, meth in engine.explain(m, x)]
                out = engine.apply(m, x)
            apart = int((out.int() - engine.apply(m, x).int()).abs().max())  # eager's
        except Exception as e:
            print(f"| {name} | {type(e).__name__}: {str(e)[:80]} |")
            continue
        print(f"| {name} | {te * 1e3:.2f} | {tt * 1e3:.2f} | {te / tt:.1f}x | "
              f"{', '.join(plan)} | {apart} |", flush=True)


def jpeg_bytes(n: int) -> list[bytes]:
    """``n`` different 1920x1080 JPEG photos (quality 92), as file contents."""
    import cv2
    from skimage import data

    base = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (1920, 1080),
                      interpolation=cv2.INTER_CUBIC)
    return [cv2.imencode(".jpg", np.roll(base, 17 * i, axis=1),
                         [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes() for i in range(n)]


def make_jpegs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(jpeg_bytes(n)):
        (folder / f"img{i:03d}.jpg").write_bytes(data)


def gpu_decode_pipeline(folder: Path, out: Path, dev: torch.device, batch: int) -> float:
    """JPEG files -> decode_jpeg on the GPU -> convkit -> encode_jpeg on the GPU -> files."""
    from torchvision.io import decode_jpeg, encode_jpeg, read_file

    m = convkit.chain("sharpen").to(dev)
    files = sorted(folder.glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(0, len(files), batch):
        chunk = files[i:i + batch]
        datas = [read_file(str(f)) for f in chunk]
        imgs = decode_jpeg(datas, device=dev)
        x = torch.stack(imgs)
        y = engine.apply(m, x)
        encoded = encode_jpeg(list(y), quality=95)
        for f, e in zip(chunk, encoded, strict=True):
            (out / f.name).write_bytes(e.cpu().numpy().tobytes())
    _sync(dev)
    return time.perf_counter() - t0


def decoder_agreement(folder: Path, dev: torch.device) -> dict:
    """nvJPEG (decode_jpegs on the device) against libjpeg-turbo (read_image) on the folder."""
    from convkit.io import images as io

    items = [io.read_image_with_info(f, defer_jpeg=True)[0] for f in sorted(folder.glob("*.jpg"))]
    gpu = io.decode_jpegs(items, dev)
    worst, total, count, sq = 0, 0.0, 0, 0.0
    for item, g in zip(items, gpu, strict=True):
        d = g.cpu().int() - io.read_image(item.name).int()
        worst = max(worst, int(d.abs().max()))
        total += float(d.abs().sum())
        sq += float((d.double() ** 2).sum())
        count += d.numel()
    mse = sq / count
    return {"max": worst, "mean": total / count,
            "psnr": 10 * np.log10(255**2 / mse) if mse else float("inf")}


def cli_end_to_end(folder: Path, out: Path, device: str, decode: str = "cpu",
                   triton: bool = False) -> dict | None:
    exe = shutil.which("convkit")
    cmd = [exe] if exe else [sys.executable, "-m", "convkit"]
    env = dict(os.environ, CONVKIT_TRITON="1" if triton else "0")
    t0 = time.perf_counter()
    r = subprocess.run([*cmd, "sharpen", str(folder), "-o", str(out), "--device", device,
                        "--decode", decode, "--json", "--quiet"], capture_output=True, text=True,
                       env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        print(f"CLI failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return None
    try:
        summary = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = {}
    summary["wall_s"] = wall
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    roofline(dev, args.batch)
    triton_rows(dev, args.batch)
    if args.skip_cli:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        make_jpegs(folder, args.images)
        print(f"\n{args.images} JPEGs of 1920x1080, sharpen, end to end:")
        if dev.type == "cuda":
            try:
                t = gpu_decode_pipeline(folder, Path(tmp) / "gpu-out", dev, args.batch)
                print(f"  decode_jpeg/encode_jpeg on the GPU + convkit: {t:.2f} s, "
                      f"{args.images / t:.1f} images/s")
            except Exception as e:  # older torchvision: no batched GPU decode or encode
                print(f"  GPU decode pipeline failed: {type(e).__name__}: {e}")
            try:
                a = decoder_agreement(folder, dev)
                print(f"  nvJPEG against libjpeg-turbo on these files: max {a['max']} levels, "
                      f"mean {a['mean']:.3f}, PSNR {a['psnr']:.1f} dB")
            except Exception as e:
                print(f"  decoder agreement failed: {type(e).__name__}: {e}")
        runs = [("cpu", False), ("gpu", False), ("gpu", True)] if dev.type == "cuda" else \
            [("cpu", False)]
        print(f"  | convkit CLI, --device {args.device} | wall s (start-up included) | "
              f"run s (its summary) | images/s (run) |")
        print("  |---|---|---|---|")
        for decode, tri in runs * 2:  # twice each, interleaved: the first pays for cold caches
            out = Path(tmp) / f"cli-{decode}"
            s = cli_end_to_end(folder, out, args.device, decode, tri)
            if s is not None:
                run_s = s.get("seconds", 0) or float("nan")
                print(f"  | --decode {decode}{' CONVKIT_TRITON=1' if tri else ''} | "
                      f"{s['wall_s']:.2f} | {run_s:.2f} | {s.get('written', 0) / run_s:.1f} |",
                      flush=True)
            shutil.rmtree(out, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
