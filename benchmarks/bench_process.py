"""Whole processes, start-up included: ``convkit sharpen`` next to an OpenCV script, a libvips
(pyvips) script and ImageMagick, on one 1080p JPEG and on a folder of them.

    python benchmarks/bench_process.py            # 1 image and 48 images, 1920x1080 JPEG
    python benchmarks/bench_process.py --n 96 --rounds 5

What a user feels is the whole process: interpreter start, imports, decode, filter, encode,
exit. Every row here is a fresh process timed from the outside (wall clock, and its peak RSS
from ``os.wait4``), each tool doing the same work: a 3x3 sharpen (0 -1 0 / -1 5 -1 / 0 -1 0)
on every photo, written as JPEG quality 95 with 4:4:4 chroma.

* convkit      ``python -m convkit sharpen IN -o OUT -q`` (CPU route: no torch is imported).
* OpenCV       a 3-line script: imread, filter2D (BORDER_REFLECT_101), imwrite.
* libvips      a pyvips script: new_from_file(access="sequential"), conv (integer precision),
               cast to uchar, write (Q=95, no chroma subsampling). libvips' border differs
               (it extends the image by copying its edge); the work is the same.
* ImageMagick  ``convert IN -morphology Convolve 3x3:... -quality 95 -sampling-factor 1x1
               OUT`` per image, ``mogrify`` for the folder; skipped where not installed.

Rounds alternate the tools (10 on one photo, 3 on the folder); each keeps its best wall time
(the run least disturbed on a shared machine) and its largest RSS. "x convkit" is a tool's time
over convkit's: above 1, convkit is faster. The engine issue's targets: one image at most 1.5x
the OpenCV script's time and at most 150 MB; the folder at least as fast as the OpenCV and
libvips scripts. Every tool starts in the temporary folder, so that ``python -m convkit`` runs
the installed package, not a checkout in the current folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cli import make_photos  # noqa: E402 (the same photos as the folder benchmark)

OPENCV_SCRIPT = """\
import os, sys, cv2, numpy as np
k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
out, files = sys.argv[1], sys.argv[2:]
params = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
          cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
for p in files:
    img = cv2.imread(p)
    cv2.imwrite(os.path.join(out, os.path.basename(p)),
                cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101), params)
"""

VIPS_SCRIPT = """\
import os, sys, pyvips
mask = pyvips.Image.new_from_array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
out, files = sys.argv[1], sys.argv[2:]
for p in files:
    im = pyvips.Image.new_from_file(p, access="sequential")
    res = im.conv(mask, precision="integer").cast("uchar")
    res.write_to_file(os.path.join(out, os.path.basename(p)), Q=95, subsample_mode="off")
"""

IM_KERNEL = "3x3:0,-1,0 -1,5,-1 0,-1,0"


# Linux keeps a process's peak RSS across exec, so a child forked from this (large) process
# would report this process's RSS as its own peak. A small launcher process starts each tool
# instead and reports the tool's wall time and peak RSS (os.wait4) on its stdout.
LAUNCHER = """\
import os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process, started in the temporary folder: from
    a checkout's root, ``python -m convkit`` would run the checkout (its modules compiled afresh
    where bytecode is not written) instead of the installed package."""
    res = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    wall, rss_kb, code = res.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{res.stderr}")
    return float(wall), int(rss_kb) / 1024


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def commands(tmp: Path, files: list[Path], folder: Path | None) -> dict[str, callable]:
    """Tool name -> function(out folder) -> the command line."""
    py = sys.executable
    (tmp / "ocv.py").write_text(OPENCV_SCRIPT)
    (tmp / "vips.py").write_text(VIPS_SCRIPT)
    names = [str(p) for p in files]
    tools = {
        "convkit sharpen": lambda out: [py, "-m", "convkit", "sharpen", "-q",
                                        str(folder) if folder else names[0], "-o",
                                        str(out) if folder else str(out / files[0].name),
                                        "--device", "cpu"],
        "OpenCV script": lambda out: [py, str(tmp / "ocv.py"), str(out), *names],
    }
    try:
        import pyvips  # noqa: F401

        tools["libvips (pyvips) script"] = lambda out: [py, str(tmp / "vips.py"), str(out),
                                                        *names]
    except ImportError:
        pass
    if folder is None and shutil.which("convert") and _real_imagemagick():
        tools["ImageMagick convert"] = lambda out: [
            "convert", names[0], "-morphology", "Convolve", IM_KERNEL, "-quality", "95",
            "-sampling-factor", "1x1", str(out / files[0].name)]
    if folder is not None and shutil.which("mogrify"):
        tools["ImageMagick mogrify"] = lambda out: [
            "mogrify", "-path", str(out), "-morphology", "Convolve", IM_KERNEL, "-quality", "95",
            "-sampling-factor", "1x1", *names]
    return tools


def _real_imagemagick() -> bool:
    try:
        res = subprocess.run(["convert", "-version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "ImageMagick" in res.stdout


def table(title: str, tmp: Path, files: list[Path], folder: Path | None, rounds: int) -> None:
    tools = commands(tmp, files, folder)
    best: dict[str, list[float]] = {name: [float("inf"), 0.0] for name in tools}
    for make in tools.values():  # warm the page cache and any compiled bytecode
        timed(make(fresh(tmp / "out")))
    for _ in range(rounds):
        for name, make in tools.items():
            wall, rss = timed(make(fresh(tmp / "out")))
            best[name][0] = min(best[name][0], wall)
            best[name][1] = max(best[name][1], rss)
    ck = best["convkit sharpen"][0]
    print(f"\n{title}")
    print("| tool | wall s (best) | images/s | peak RSS MB | x convkit |")
    print("|---|---:|---:|---:|---:|")
    for name, (wall, rss) in best.items():
        print(f"| {name} | {wall:.2f} | {len(files) / wall:.1f} | {rss:.0f} | {wall / ck:.2f} |")
    ocv = best["OpenCV script"][0]
    print(f"convkit / OpenCV script: {ck / ocv:.2f}x the time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=48, help="photos in the folder (default 48)")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs of each tool (folder)")
    ap.add_argument("--rounds-one", type=int, default=10,
                    help="timed runs of each tool on one photo (0.1-0.2 s processes, whose "
                         "best of 3 swung by 20%% from run to run on the 2-core VM)")
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "convkit" / "bench_cli")
    args = ap.parse_args()
    args.data = args.data.resolve()  # (the tools start in another folder)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, OpenCV {cv2.__version__}; load average "
          f"{os.getloadavg()[0]:.2f}")
    data = args.data / f"jpeg_{args.n}"
    paths = make_photos(data, args.n, ".jpg")
    tmp = Path(tempfile.mkdtemp(prefix="convkit-bench-"))
    try:
        table("One 1920x1080 JPEG, a whole process each", tmp, paths[:1], None,
              args.rounds_one)
        table(f"{len(paths)} 1920x1080 JPEGs in a folder, a whole process each", tmp, paths,
              data, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
