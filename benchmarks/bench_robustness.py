"""The robustness report: the hostile input set through the real `convkit` command.

    python benchmarks/bench_robustness.py

Builds the set that tests/test_robustness.py uses (truncated PNG/JPEG/TIFF, zero-byte and
random-byte files, a text file named .png, a bad CRC, a 100000x100000 bomb header, CMYK JPEG,
palette+transparency, 16-bit grey, grey+alpha, 1-bit, float32 TIFF, animated GIF, EXIF-rotated
JPEG, non-ASCII names with spaces, a symlink loop), runs `convkit sharpen -r` over it in a
subprocess, and prints a table: cases tried, outputs correct (within 1 grey level of an
OpenCV/Pillow reference), clear one-line errors naming the file, crashes (a traceback or an exit
status other than 0/1), inputs modified or outputs left partial.

Then the cases of the issues on lost data, hangs and writing safely (tests/test_hostile.py: files
of several frames in place, damaged JPEGs, a 2 MiB ICC profile, 16-bit colour keys, FIFOs and
/dev/zero among the inputs, a dead run's temporary files, in-place modes and links, clobbering,
`-o.png` from the shell, newlines in names, kernel files that never end, huge specs,
unsupported devices, huge separable kernels), of model files that lie
(tests/learn/test_model_files.py), and of memory bounded in bytes
(tests/pipeline/test_batches.py: images in flight within --max-memory, batches filtered to make
room, headers weighed): each case runs as its test does and is counted as held or broken.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_robustness import diff, digest, make_hostile_set, temp_files  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, out = tmp / "in", tmp / "out"
        bad, good = make_hostile_set(src)
        before = digest(src)
        res = subprocess.run(
            [sys.executable, "-m", "convkit", "sharpen", "-r", str(src), "-o", str(out),
             "--format", "png", "-q"], capture_output=True, text=True, timeout=600,
        )
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
        clear = sum(
            1 for name, reason in bad.items()
            if sum(ln.startswith(f"error: {src / name}: ") and reason in ln for ln in lines) == 1
        )
        for name, reason in bad.items():
            mine = [ln for ln in lines if ln.startswith(f"error: {src / name}: ")]
            if len(mine) != 1 or reason not in mine[0]:
                print(f"unexpected for {name} (expected {reason!r}): {mine}")
        correct = 0
        for name, expected in good.items():
            p = out / name
            if p.exists():
                got = np.asarray(Image.open(p))
                correct += got.shape == expected.shape and diff(got, expected) <= 1
        crashed = int("Traceback" in res.stderr or res.returncode not in (0, 1))
        modified = sum(before[k] != v for k, v in digest(src).items()) + len(
            set(before) ^ set(digest(src)))
        partial = len(temp_files(tmp))
        rows = [
            ("cases tried", len(bad) + len(good)),
            ("outputs correct", f"{correct} / {len(good)}"),
            ("clear one-line errors", f"{clear} / {len(bad)}"),
            ("crashes", crashed),
            ("inputs modified", modified),
            ("partial outputs left", partial),
            ("exit status", res.returncode),
        ]
        for k, v in rows:
            print(f"| {k} | {v} |")
        ok = correct == len(good) and clear == len(bad) and not (crashed or modified or partial)
        for tests, only in (("test_hostile.py", None), ("learn/test_model_files.py", None),
                            ("pipeline/test_batches.py",
                             "flight or make_room or declared_bytes")):
            held, broken = hostile_cases(tests, only)
            what = f"tests/{tests}" + (f" -k '{only}'" if only else "")
            print(f"| hostile cases held ({what}) | {held} / {held + len(broken)} |")
            for name in broken:
                print(f"broken: {name}")
            ok = ok and not broken
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


def hostile_cases(name: str, only: str | None = None) -> tuple[int, list[str]]:
    """Run tests/NAME (those matching ``only``, a -k expression); (cases held, names of the
    broken ones)."""
    tests = Path(__file__).resolve().parent.parent / "tests" / name
    select = ["-k", only] if only else []
    res = subprocess.run([sys.executable, "-m", "pytest", str(tests), "-q", "-rA",
                          "-p", "no:cacheprovider", *select], capture_output=True, text=True,
                         timeout=900)
    held = [ln for ln in res.stdout.splitlines() if ln.startswith("PASSED ")]
    broken = [ln.split(" ", 1)[1] for ln in res.stdout.splitlines()
              if ln.startswith(("FAILED ", "ERROR "))]
    return len(held), broken


if __name__ == "__main__":
    raise SystemExit(main())
