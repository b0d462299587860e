"""Peak memory of a huge image through a chain: a 20000x20000 RGB PNG through
``gaussian(sigma=3) | sharpen``, as the command line runs it (streamed without torch; target:
peak RSS at most 0.5 GB) and through the modules (``filter_file``, torch, tiles), and the tiled
result checked against the untiled one on a smaller image.

    python benchmarks/bench_memory.py                 # make the PNG once (cached), measure
    python benchmarks/bench_memory.py --side 8000     # a smaller run
    python benchmarks/bench_memory.py --max-memory 1.5G

Each measurement runs in a fresh Python process that reports its own peak RSS
(``resource.getrusage``), so the numbers include the interpreter, torch and OpenCV (about
0.3 GB) as well as the decoded image (1.2 GB for 20000x20000 RGB uint8). The picture is a real
photo (scikit-image's astronaut) tiled with mirror flips, so that the PNG has photo statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHAIN = "gaussian(sigma=3) | sharpen"

_MAKE = r"""
import sys, cv2, numpy as np
from skimage import data
side, path = int(sys.argv[1]), sys.argv[2]
tile = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
pair = np.concatenate([tile, tile[:, ::-1]], axis=1)
block = np.concatenate([pair, pair[::-1]], axis=0)  # 1024 x 1024, seamless
reps = -(-side // block.shape[0])
img = np.tile(block, (reps, reps, 1))[:side, :side]
assert cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
"""

_RUN = r"""
import json, sys, time
t0 = time.perf_counter()
from convkit.pipeline import huge_files
src, dst, chain, mem = sys.argv[1:5]
info = huge_files.filter_file(chain, src, dst, max_memory=None if mem == "auto" else mem,
                          max_pixels=10**10)
info["seconds"] = time.perf_counter() - t0
# VmHWM, this process's own peak (ru_maxrss would keep a larger parent's from before exec)
info["peak_rss"] = [int(ln.split()[1]) * 1024 for ln in open("/proc/self/status")
                    if ln.startswith("VmHWM")][0]
print(json.dumps(info))
"""

_CLI = r"""
import json, sys, time
t0 = time.perf_counter()
from convkit.cli.main import main
src, dst, chain = sys.argv[1:4]
try:
    main(["apply", chain, src, "-o", dst, "-q"])
except SystemExit as e:
    assert e.code == 0, e.code
peak = [int(ln.split()[1]) * 1024 for ln in open("/proc/self/status")
        if ln.startswith("VmHWM")][0]
print(json.dumps({"peak_rss": peak, "seconds": time.perf_counter() - t0,
                  "torch": "torch" in sys.modules}))
"""

_CHECK = r"""
import json, sys, cv2, numpy as np, torch
from convkit import chain, engine
from convkit.pipeline import huge_files
src, dst, spec, mem = sys.argv[1:5]
img = cv2.imread(src, cv2.IMREAD_UNCHANGED)
info = huge_files.filter_file(spec, src, dst, max_memory=mem)
tiled = cv2.imread(dst, cv2.IMREAD_UNCHANGED)
x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
whole = engine.apply(chain(spec), x)[0].permute(1, 2, 0).numpy()
d = np.abs(tiled.astype(int) - whole.astype(int))
print(json.dumps({"bands": info["bands"], "max_diff": int(d.max()),
                  "differing": int((d > 0).sum()), "pixels": int(d.size)}))
"""


def _python(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=20000)
    ap.add_argument("--max-memory", default="auto",
                    help="decoded image + working memory (bytes or 2G); auto: image + automatic")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "convkit-bench"))
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"photo-{args.side}.png"
    if not src.exists():
        print(f"making {src} ({args.side}x{args.side} RGB) ...", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _MAKE, str(args.side), str(src)], check=True)
        print(f"  {time.perf_counter() - t0:.0f} s, {src.stat().st_size / 2**20:.0f} MiB")
    dst = work / f"out-{args.side}.png"
    gib = 2**30
    cli = _python(_CLI, str(src), str(dst), CHAIN)
    print(f"\nconvkit apply {CHAIN!r} (the command line, one process):")
    print(f"  peak RSS             {cli['peak_rss'] / gib:6.2f} GiB  (target <= 0.5 GB = "
          f"{0.5e9 / gib:.2f} GiB: {'ok' if cli['peak_rss'] <= 0.5e9 else 'MISSED'}); "
          f"torch imported: {cli['torch']}")
    print(f"  time (start, decode, filter, encode)  {cli['seconds']:.1f} s")
    r = _python(_RUN, str(src), str(dst), CHAIN, args.max_memory)
    decoded = r["width"] * r["height"] * r["channels"]
    print(f"\n{r['width']}x{r['height']} RGB PNG through {CHAIN!r} as modules "
          f"(huge_files.filter_file, torch; max_memory {args.max_memory}):")
    print(f"  decoded image        {decoded / gib:6.2f} GiB")
    print(f"  working budget       {r['working_memory'] / gib:6.2f} GiB, {r['bands']} bands")
    print(f"  peak RSS             {r['peak_rss'] / gib:6.2f} GiB  (target <= 2 GB = "
          f"{2e9 / gib:.2f} GiB: {'ok' if r['peak_rss'] <= 2e9 else 'MISSED'})")
    print(f"  time (decode, filter, encode)  {r['seconds']:.1f} s")
    dst.unlink(missing_ok=True)

    # identity: tiled (many bands) against untiled, on a 3000x2000 crop of the same photo
    small = work / "photo-check.png"
    subprocess.run([sys.executable, "-c", _MAKE.replace("[:side, :side]", "[:3000, :2000]"),
                    "3000", str(small)], check=True)
    c = _python(_CHECK, str(small), str(work / "out-check.png"), CHAIN, "40M")
    print(f"\nTiled vs untiled on 2000x3000 ({c['bands']} bands): max difference "
          f"{c['max_diff']} grey level(s), {c['differing']} of {c['pixels']} samples differ "
          "(float rounding: the same arithmetic on different band shapes)")


if __name__ == "__main__":
    main()
