"""Hostile and broken inputs, interrupted runs and concurrent writers, through the command line.

Every case ends in a correct output (checked against a reference made here with Pillow and
OpenCV) or a one-line error naming the file; never a traceback, a partial output or a modified
input. Interrupts use a real subprocess and a real signal.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convkit.cli.main import cli

SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)


def photo(h: int = 36, w: int = 52, channels: int = 3, seed: int = 0) -> np.ndarray:
    """RGB(A) test image (H, W, C), uint8, with edges and grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 80 * np.sin(xx / (4 + c) - yy / 6) for c in range(channels)], -1)
    base[h // 4 : h // 2, w // 3 : w // 2] = 230
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def sharp(a: np.ndarray) -> np.ndarray:
    """OpenCV reference: the sharpen kernel with BORDER_REFLECT_101, on any dtype."""
    return cv2.filter2D(a, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".convkit-*")]


def diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# --- the hostile set --------------------------------------------------------------------------


def make_hostile_set(folder: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Write the robustness set; return (bad file -> expected error text, good file -> the
    expected output pixels, as Pillow reads the PNG convkit should write)."""
    folder.mkdir(parents=True)
    rgb = photo()
    bad: dict[str, str] = {}
    good: dict[str, np.ndarray] = {}

    png = png_bytes(Image.fromarray(rgb))
    jpg_buf = io.BytesIO()
    Image.fromarray(rgb).save(jpg_buf, "JPEG", quality=90)
    jpg = jpg_buf.getvalue()
    tif_buf = io.BytesIO()
    Image.fromarray(rgb).save(tif_buf, "TIFF")
    tif = tif_buf.getvalue()

    (folder / "truncated_png.png").write_bytes(png[: len(png) // 2])
    bad["truncated_png.png"] = "truncated PNG file"
    (folder / "truncated_jpg.jpg").write_bytes(jpg[: len(jpg) // 2])
    bad["truncated_jpg.jpg"] = "truncated"
    (folder / "truncated_tif.tif").write_bytes(tif[: len(tif) // 2])
    bad["truncated_tif.tif"] = "truncated"
    (folder / "zero_png.png").write_bytes(b"")
    bad["zero_png.png"] = "empty file (0 bytes)"
    (folder / "zero_jpg.jpg").write_bytes(b"")
    bad["zero_jpg.jpg"] = "empty file (0 bytes)"
    rng = np.random.default_rng(5)
    for ext in ("png", "jpg", "tif", "webp"):
        (folder / f"random_{ext}.{ext}").write_bytes(rng.integers(0, 256, 3000, np.uint8).tobytes())
        bad[f"random_{ext}.{ext}"] = "not a PNG, JPEG, WebP, TIFF, BMP or GIF image"
    (folder / "text.png").write_text("Dear user, this is not a picture.\n")
    bad["text.png"] = "not a PNG, JPEG, WebP, TIFF, BMP or GIF image"
    crc = bytearray(png)
    idat = crc.index(b"IDAT")
    crc[idat + 8] ^= 0xFF  # flip a data byte: the chunk's CRC no longer matches
    (folder / "bad crc.png").write_bytes(bytes(crc))
    bad["bad crc.png"] = "bad CRC"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))
    (folder / "bomb.png").write_bytes(bomb)
    bad["bomb.png"] = "100000x100000 = 10000000000 pixels, over the limit"
    Image.new("I", (20, 10), 7).save(folder / "int32.tif")
    bad["int32.tif"] = "unsupported pixel format (Pillow mode 'I')"

    # good files and the pixels their PNG output should hold
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(folder / "cmyk.jpg", quality=95)
    good["cmyk.png"] = sharp(np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB")))

    pal = Image.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 3
    pal.save(folder / "palette.png", transparency=3)
    rgba = np.asarray(Image.open(folder / "palette.png").convert("RGBA"))
    good["palette.png"] = np.dstack([sharp(np.ascontiguousarray(rgba[:, :, :3])),
                                     rgba[:, :, 3]])

    grey16 = (photo(channels=1, seed=2)[:, :, 0].astype(np.uint16) * 257 + 100).clip(0, 65535)
    assert cv2.imwrite(str(folder / "grey16.png"), grey16.astype(np.uint16))
    good["grey16.png"] = sharp(grey16.astype(np.uint16))

    la = photo(channels=2, seed=3)
    Image.fromarray(la, "LA").save(folder / "grey alpha.png")
    good["grey alpha.png"] = np.dstack([sharp(np.ascontiguousarray(la[:, :, 0])), la[:, :, 1]])

    bits = photo(channels=1, seed=4)[:, :, 0] > 128
    Image.fromarray(bits).convert("1").save(folder / "bilevel.png")
    good["bilevel.png"] = sharp(np.where(bits, 255, 0).astype(np.uint8))

    f32 = photo(channels=1, seed=5)[:, :, 0].astype(np.float32) / 255
    Image.fromarray(f32, "F").save(folder / "float32.tif")
    ref = sharp(f32)  # float in, float out, then written to PNG as round(clip(x, 0, 1) * 255)
    good["float32.png"] = np.rint(np.clip(ref, 0, 1) * 255).astype(np.uint8)

    frames = [Image.fromarray(photo(seed=10 + i)).quantize(64) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    first = np.asarray(Image.open(folder / "anim.gif").convert("RGB"))  # frame 0
    good["anim.png"] = sharp(first)

    upright = photo(30, 44, seed=6)
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # shown upright after a 90° CW turn
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
    shown = np.asarray(Image.open(folder / "rotated.jpg").transpose(Image.Transpose.ROTATE_270))
    good["rotated.png"] = sharp(np.ascontiguousarray(shown))

    Image.fromarray(rgb).save(folder / "名前 with spaces.png")
    good["名前 with spaces.png"] = sharp(rgb)

    sub = folder / "sub"
    sub.mkdir()
    Image.fromarray(photo(seed=8)).save(sub / "nested.png")
    good["sub/nested.png"] = sharp(photo(seed=8))
    os.symlink("..", sub / "loop")  # sub/loop -> folder: a cycle for a recursive walk
    return bad, good


def test_hostile_inputs_end_in_a_correct_output_or_one_line_error(tmp_path):
    src = tmp_path / "in"
    bad, good = make_hostile_set(src)
    before = digest(src)
    res = CliRunner().invoke(cli, ["sharpen", "-r", str(src), "-o", str(tmp_path / "out"),
                                   "--format", "png", "--json"], prog_name="convkit")
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 1
    assert "Traceback" not in res.output

    # one line per bad file, naming it, with the reason
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == len(bad), "\n".join(lines)
    for name, reason in bad.items():
        mine = [ln for ln in lines if ln.startswith(f"error: {src / name}: ")]
        assert len(mine) == 1 and reason in mine[0], (name, lines)
    summary = json.loads(res.stdout)
    assert (summary["written"], summary["failed"]) == (len(good), len(bad))

    # the good files, and nothing else, in the output; each one right
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        sorted(good)
    for name, expected in good.items():
        got = np.asarray(Image.open(out / name))
        assert got.shape == expected.shape, name
        assert diff(got, expected) <= 1, name
    assert digest(src) == before  # inputs untouched
    assert temp_files(tmp_path) == []


def test_max_pixels_option_refuses_big_images(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(photo()).save(path)
    res = CliRunner().invoke(cli, ["sharpen", str(path), "--max-pixels", "1000"])
    assert res.exit_code == 1
    assert f"error: {path}: image is 52x36 = 1872 pixels, over the limit of 1000" in res.stderr
    assert not (tmp_path / "a-sharpen.png").exists()


# --- interrupted and concurrent runs ----------------------------------------------------------


def _folder_of_photos(folder: Path, n: int, size: int = 160) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    refs = {}
    for i in range(n):
        img = photo(size, size, seed=i)
        Image.fromarray(img).save(folder / f"{i:03d}.png", compress_level=0)
        refs[f"{i:03d}.png"] = sharp(img)
    return refs


def _convkit(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "convkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _check_outputs(out: Path, refs: dict[str, np.ndarray]) -> int:
    """Every file in ``out`` is a complete, correct output; returns how many there are."""
    names = sorted(p.name for p in out.iterdir())
    assert set(names) <= set(refs), names
    for name in names:
        got = np.asarray(Image.open(out / name))  # a cut-off PNG would raise here
        assert diff(got, refs[name]) <= 1, name
    return len(names)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_folder_leaves_complete_outputs_and_skip_existing_resumes(tmp_path, sig,
                                                                           code):
    n = 150
    refs = _folder_of_photos(tmp_path / "in", n, size=256)
    before = digest(tmp_path / "in")
    out = tmp_path / "out"
    # one worker and batches of one: about a second of work, which the signal interrupts
    # a few milliseconds in
    proc = _convkit("sharpen", str(tmp_path / "in"), "-o", str(out), "--workers", "1",
                    "--batch-size", "1", "--json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.is_dir() and len([p for p in out.iterdir() if p.suffix == ".png"]) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] == sig.name and summary["exit_code"] == code
    done = _check_outputs(out, refs)
    assert 2 <= done < n and done == summary["written"]
    assert temp_files(tmp_path) == []
    if sig == signal.SIGTERM:
        return  # resuming is the same for both signals; once is enough for the suite's time

    proc = _convkit("sharpen", str(tmp_path / "in"), "-o", str(out), "--skip-existing",
                    "--json")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert (summary["skipped"], summary["written"]) == (done, n - done)
    assert _check_outputs(out, refs) == n
    assert digest(tmp_path / "in") == before


def test_two_processes_writing_the_same_folder_never_corrupt_a_file(tmp_path):
    refs = _folder_of_photos(tmp_path / "in", 30, size=96)
    out = tmp_path / "out"
    procs = [_convkit("sharpen", str(tmp_path / "in"), "-o", str(out), "-q",
                      "--batch-size", str(b)) for b in (1, 3)]
    # Meanwhile a reader looks at every visible output: each must already be a whole PNG (a
    # writer that wrote in place would show files that stop before their IEND chunk).
    seen = 0
    while any(p.poll() is None for p in procs):
        for path in out.glob("*.png") if out.is_dir() else ():
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # replaced between listing and reading
                continue
            assert data.endswith(b"IEND\xaeB`\x82"), f"{path.name}: incomplete ({len(data)} B)"
            seen += 1
        time.sleep(0.005)
    assert seen > 0
    for p in procs:
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
    assert _check_outputs(out, refs) == 30
    assert temp_files(tmp_path) == []
