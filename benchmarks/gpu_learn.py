"""Learned filters on a GPU, in one go of a few minutes: the CUDA tests, then a short CUDA
training run with timing and PSNR, then the CPU <-> CUDA agreement of the trained model.

Run: ``python benchmarks/gpu_learn.py`` (or ``benchmarks/gpu_learn.sh``); exits 1 on a failure.
Prints one summary table to paste into the README with the card's name.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to do")
        return 1
    card = torch.cuda.get_device_name(0)
    print(f"device: {card}, torch {torch.__version__}", flush=True)
    failures = 0

    # 1. the learned-filter tests, CUDA cases included (not skipped here)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/learn/test_learn.py",
                        "-k", "cuda or device"], cwd=ROOT)
    failures += r.returncode != 0
    print(f"CUDA tests: {'ok' if r.returncode == 0 else 'FAILED'} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    # 2. a short training run on the GPU: median(size=5) with the default net, AMP on
    import bench_learn

    import convkit
    from convkit.learn.train import train

    photos = bench_learn._photos()
    work = Path(tempfile.mkdtemp(prefix="convkit-gpu-learn-"))
    bench_learn._write_folder(photos, bench_learn.TRAIN, work / "train", None)
    rows = []
    for name, opts in (
        ("median5 fp16 AMP", dict(chain="median(size=5)", steps=600, epoch_steps=200,
                                  patch=64, batch_size=32, lr=2e-3, amp=True)),
        ("median5 fp32", dict(chain="median(size=5)", steps=600, epoch_steps=200, patch=64,
                              batch_size=32, lr=2e-3, amp=False)),
        ("denoise25 grey", dict(sigma=25.0, grey=True, depth=8, pool=2, steps=600,
                                epoch_steps=200, patch=64, batch_size=32, lr=2e-3)),
    ):
        out = work / name.replace(" ", "_") / "m.pt"
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = train(work / "train", out, device="cuda", val=1, force=True, **opts)
        torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        if "chain" in opts:
            got, base = bench_learn._eval_mimic(out, opts["chain"], photos)
        else:
            got, base, _ = bench_learn._eval_denoise(out, opts["sigma"], photos)
        rows.append((name, opts["steps"], secs, res.metrics["val_psnr"], got, base))
        print(f"{name}: {opts['steps']} steps in {secs:.1f} s, held-out PSNR {got:.2f} dB "
              f"(input {base:.2f} dB)", flush=True)

        # 3. the trained model gives the same output on the CPU and on the GPU
        m = convkit.load_model(out)
        x = torch.from_numpy(photos["chelsea"].copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            cpu = m(x)
            gpu = m.to("cuda")(x.cuda()).cpu()
        diff = (cpu - gpu).abs().max().item()
        ok = diff < 1e-3
        failures += not ok
        print(f"   CPU vs CUDA output: max difference {diff:.2e} {'ok' if ok else 'FAILED'}")

    print(f"\nlearned filters on {card}:")
    print("| run | steps | train time | val PSNR | held-out PSNR | input PSNR |")
    print("|---|---|---|---|---|---|")
    for name, steps, secs, val, got, base in rows:
        print(f"| {name} | {steps} | {secs:.1f} s | {val:.2f} dB | {got:.2f} dB | "
              f"{base:.2f} dB |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
