"""What convkit writes and what it refuses, for the hostile cases of the issues on lost data
and on writing safely: files of several frames, damaged JPEGs, FIFOs and devices among the
inputs, in-place writes of private files and links, outputs that would clobber an unrelated
file, odd names, and spec and kernel input that is too large or never ends.

References are Pillow, OpenCV and hand-made expectations; the CLI runs in-process through
click's runner, or in a real subprocess where a hang or the shell is the point.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_cli, traced_peak
from PIL import Image

import convkit
from convkit.cli.main import cli

# A child process's peak RSS in kB (VmHWM, not getrusage: a child's ru_maxrss keeps the peak of
# the process it was forked from)
VMHWM = "[ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]"

SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)


def photo(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 80 * np.sin(xx / (4 + c) - yy / 6) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def sharp(a: np.ndarray) -> np.ndarray:
    return cv2.filter2D(a, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args: str):
    return CliRunner().invoke(cli, ["sharpen", "-q", *args], catch_exceptions=False)


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


def jpeg_bytes(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


# --- files of several frames ------------------------------------------------------------------


def _frames(folder: Path) -> list[Path]:
    frames = [Image.fromarray(photo(seed=s)) for s in range(3)]
    paths = []
    for ext, kw in (("tif", {}), ("png", {}), ("webp", {"lossless": True})):
        p = folder / f"three.{ext}"
        frames[0].save(p, save_all=True, append_images=frames[1:], **kw)
        paths.append(p)
    return paths


def test_in_place_refuses_files_of_several_frames(tmp_path):
    paths = _frames(tmp_path)
    before = {p: digest(p) for p in paths}
    res = invoke("--in-place", *map(str, paths))
    assert res.exit_code == 1
    lines = error_lines(res.stderr)
    assert len(lines) == 3
    for p in paths:
        assert digest(p) == before[p]  # nothing lost
        what = "pages" if p.suffix == ".tif" else "frames"
        assert any(ln.startswith(f"error: {p}: has 3 {what}") and "--in-place" in ln
                   for ln in lines), lines
    with Image.open(paths[0]) as im:
        assert im.n_frames == 3


def test_out_of_place_says_only_the_first_frame_was_used(tmp_path):
    tif = _frames(tmp_path)[0]
    out = tmp_path / "out.tif"
    res = invoke(str(tif), "-o", str(out))
    assert res.exit_code == 0, res.stderr
    assert f"warning: {tif}: has 3 pages; only the first was filtered" in res.stderr
    with Image.open(out) as im:
        assert im.n_frames == 1
        assert np.array_equal(np.asarray(im), sharp(photo(seed=0)))


# --- damaged JPEGs ----------------------------------------------------------------------------


def test_jpeg_cut_short_with_an_eoi_appended_is_a_failed_input(tmp_path):
    data = jpeg_bytes(photo(200, 300))
    bad = tmp_path / "half.jpg"
    bad.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # a broken download, EOI added
    res = invoke(str(bad), "-o", str(tmp_path / "half-out.png"))
    assert res.exit_code == 1
    assert error_lines(res.stderr) == [res.stderr.strip()]
    assert res.stderr.startswith(f"error: {bad}: damaged JPEG")
    assert not (tmp_path / "half-out.png").exists()
    ok = invoke("--allow-truncated", str(bad), "-o", str(tmp_path / "half-out.png"))
    assert ok.exit_code == 0 and (tmp_path / "half-out.png").exists()


def test_jpeg_header_declaring_9000x9000_without_data_is_refused(tmp_path):
    data = bytearray(jpeg_bytes(photo(16, 16)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 9000, 9000)  # height, width
    sos = data.index(b"\xff\xda")
    header_only = bytes(data[: sos + 2 + struct.unpack_from(">H", data, sos + 2)[0]]) + \
        b"\xff\xd9"
    bad = tmp_path / "liar.jpg"
    bad.write_bytes(header_only)
    assert len(header_only) < 1000
    res = invoke(str(bad), "-o", str(tmp_path / "liar-out.png"))
    assert res.exit_code == 1
    assert res.stderr.startswith(f"error: {bad}: damaged JPEG"), res.stderr
    assert not (tmp_path / "liar-out.png").exists()


def test_intact_jpeg_decodes_as_pillow_does(tmp_path):
    for sub in (0, 2):  # 4:4:4 and 4:2:0
        p = tmp_path / f"ok{sub}.jpg"
        p.write_bytes(jpeg_bytes(photo(33, 47), subsampling=sub))
        image = convkit.io.images.read_image(p)
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(p)))


# --- metadata that a format cannot hold readably, 16-bit colour keys --------------------------


def test_huge_icc_profile_is_left_out_of_a_png_with_a_warning(tmp_path):
    icc = bytearray(os.urandom(2 << 20))  # 2 MiB: more than Pillow reads back from a PNG
    icc[16:20] = b"RGB "
    src = tmp_path / "icc.jpg"
    src.write_bytes(jpeg_bytes(photo(), icc_profile=bytes(icc)))
    out = tmp_path / "icc-out.png"
    res = invoke(str(src), "-o", str(out))
    assert res.exit_code == 0, res.stderr
    assert "ICC profile of 2097152 bytes left out" in res.stderr
    with Image.open(out) as im:  # readable, by Pillow and by convkit
        im.load()
        assert "icc_profile" not in im.info
    convkit.io.images.read_image(out)


def test_metadata_a_format_cannot_hold_is_left_out_with_a_warning(tmp_path):
    """BMP holds neither an ICC profile nor EXIF, and OpenCV writes none into a 16-bit colour
    TIFF: the warning says what was left out (both were dropped without a word); a PNG keeps
    them, and a file without either gets no warning."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "convkit test"  # Make
    src = tmp_path / "meta.jpg"
    src.write_bytes(jpeg_bytes(photo(), icc_profile=icc, exif=exif.tobytes()))
    res = invoke(str(src), "-o", str(tmp_path / "meta.bmp"))
    assert res.exit_code == 0, res.stderr
    assert "ICC profile and EXIF left out: BMP files hold neither" in res.stderr, res.stderr
    res = invoke(str(src), "-o", str(tmp_path / "meta.png"))
    assert res.exit_code == 0 and "left out" not in res.stderr, res.stderr
    with Image.open(tmp_path / "meta.png") as im:
        assert im.info.get("icc_profile") == icc and im.getexif()[0x010F] == "convkit test"
    wide = tmp_path / "wide.png"
    Image.fromarray(photo()).save(wide, icc_profile=icc)
    deep = tmp_path / "deep.png"  # 16-bit RGB with the profile, written by convkit
    convkit.io.images.write_image(deep, photo().astype(np.uint16) * 257,
                                  info=convkit.io.images.read_image_with_info(wide)[1])
    res = invoke(str(deep), "-o", str(tmp_path / "deep.tif"))
    assert res.exit_code == 0, res.stderr
    assert "ICC profile left out: 16-bit colour TIFF" in res.stderr, res.stderr
    plain = tmp_path / "plain.png"
    Image.fromarray(photo()).save(plain)
    res = invoke(str(plain), "-o", str(tmp_path / "plain.bmp"))
    assert res.exit_code == 0 and "left out" not in res.stderr, res.stderr


def test_16bit_grey_colour_key_becomes_alpha(tmp_path):
    grey = (np.arange(24 * 30).reshape(24, 30) * 90).astype(np.uint16)
    key = int(grey[5, 7])
    src = tmp_path / "key16.png"
    Image.fromarray(grey).save(src, transparency=key)
    image = convkit.io.images.read_image(src).numpy()
    assert image.shape == (2, 24, 30) and image.dtype == np.uint16
    assert np.array_equal(image[0], grey)
    assert np.array_equal(image[1], np.where(grey == key, 0, 65535))


# --- inputs that are not regular files --------------------------------------------------------


def test_fifo_and_device_inputs_are_skipped_without_hanging(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo()).save(folder / "a.png")
    os.mkfifo(folder / "x.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    res = subprocess.run([sys.executable, "-m", "convkit", "sharpen", "-q", str(folder), "-o",
                          str(tmp_path / "out"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    lines = error_lines(res.stderr)
    assert f"error: {folder / 'x.png'}: is a FIFO (named pipe), not an image file; skipped" \
        in lines
    assert f"error: {folder / 'zero.png'}: is a device, not an image file; skipped" in lines
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png"]


# --- temporary files of a killed run ----------------------------------------------------------


def test_a_run_removes_a_dead_runs_temporary_files(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(photo()).save(src)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = out / f".convkit-{int(dead.stdout)}-00112233aabb.tmp.png"
    stale.write_bytes(b"half a file")
    res = invoke(str(src), "-o", str(out) + "/", "--skip-existing")
    assert res.exit_code == 0, res.stderr
    assert sorted(os.listdir(out)) == ["a.png"]


# --- where outputs go -------------------------------------------------------------------------


def test_output_folder_that_is_the_input_folder(tmp_path):
    Image.fromarray(photo()).save(tmp_path / "a.png")
    res = invoke(str(tmp_path), "-o", str(tmp_path))
    assert res.exit_code == 2
    assert "is the input folder itself; pass --in-place" in res.stderr


def test_glob_never_reads_this_runs_outputs(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(photo()).save(src / "sub" / "a.png")
    out = src / "out"
    for _ in range(2):
        res = invoke(str(src / "**" / "*.png"), "-o", str(out))
        assert res.exit_code == 0, res.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a.png"] or written == ["sub/a.png"], written


def test_in_place_keeps_a_private_files_mode(tmp_path):
    src = tmp_path / "private.png"
    Image.fromarray(photo()).save(src)
    os.chmod(src, 0o600)
    res = invoke("--in-place", str(src))
    assert res.exit_code == 0, res.stderr
    assert stat.S_IMODE(os.stat(src).st_mode) == 0o600
    assert np.array_equal(np.asarray(Image.open(src)), sharp(photo()))


def test_in_place_through_a_link_updates_the_linked_file(tmp_path):
    real = tmp_path / "real.png"
    Image.fromarray(photo()).save(real)
    link = tmp_path / "link.png"
    link.symlink_to(real.name)
    res = invoke("--in-place", str(link))
    assert res.exit_code == 0, res.stderr
    assert link.is_symlink() and os.readlink(link) == "real.png"
    assert np.array_equal(np.asarray(Image.open(real)), sharp(photo()))


def test_links_in_a_folder_each_get_their_output_and_in_place_filters_once(tmp_path):
    """A folder mirrored to -o keeps every name, links to one file included (the file itself
    was left out when a link to it sorted first); in place, the file is filtered once, however
    many names reach it."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo()).save(src / "real.png")
    (src / "a_link.png").symlink_to("real.png")
    (src / "z_link.png").symlink_to("real.png")
    res = invoke(str(src), "-o", str(tmp_path / "out"))
    assert res.exit_code == 0, res.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a_link.png", "real.png", "z_link.png"], names
    for name in names:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / name)), sharp(photo()))
    res = invoke("--in-place", "--format", "tiff", str(src))  # new files: one a name
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in src.glob("*.tif")) == ["a_link.tif", "real.tif", "z_link.tif"]
    res = invoke("--in-place", str(src), str(src / "real.png"))
    assert res.exit_code == 0, res.stderr
    assert np.array_equal(np.asarray(Image.open(src / "real.png")), sharp(photo()))
    assert (src / "a_link.png").is_symlink() and (src / "z_link.png").is_symlink()


def test_in_place_new_format_does_not_clobber_an_unrelated_file(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(photo()).save(src)
    other = tmp_path / "a.jpg"
    other.write_bytes(jpeg_bytes(photo(seed=9)))
    before = digest(other)
    res = invoke("--in-place", "--format", "jpeg", str(src))
    assert res.exit_code == 1
    assert error_lines(res.stderr) == [
        f"error: {src}: --in-place --format jpeg would replace {other}, which is not an input; "
        "pass --overwrite to replace it"]
    assert digest(other) == before
    res = invoke("--in-place", "--format", "jpeg", "--overwrite", str(src))
    assert res.exit_code == 0, res.stderr
    assert digest(other) != before


def test_a_file_named_dash_o_expanded_by_the_shell(tmp_path):
    for name in ("-o.png", "b.png"):
        Image.fromarray(photo()).save(tmp_path / name)
    res = subprocess.run("convkit sharpen -q *.png", shell=True, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":"
                              + os.environ["PATH"]})
    assert res.returncode == 2
    assert "looks like a file named '-o.png'" in res.stderr and "--" in res.stderr
    assert not (tmp_path / ".png").exists()
    ok = subprocess.run("convkit sharpen -q -- *.png", shell=True, cwd=tmp_path,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":"
                             + os.environ["PATH"]})
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "-o-sharpen.png").exists()


def test_newline_in_a_file_name_is_escaped_in_the_error(tmp_path):
    bad = tmp_path / "two\nlines.png"
    bad.write_bytes(b"not a picture")
    res = invoke(str(bad), "-o", str(tmp_path / "out") + "/")
    assert res.exit_code == 1
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and "two\\nlines.png: not a PNG" in lines[0]
    assert len(res.stderr.strip().splitlines()) == 1


# --- specs and kernel files -------------------------------------------------------------------


def test_kernel_path_that_never_ends_or_blocks(tmp_path):
    fifo = tmp_path / "k.toml"
    os.mkfifo(fifo)
    for spec in ("kernel(path=/dev/zero)", f"kernel(path={fifo})"):
        res = subprocess.run([sys.executable, "-m", "convkit", "apply", spec, "x.png"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert "a kernel file should be a regular file" in res.stderr
        assert "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "convkit", "apply", str(fifo), "x.png"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_kernel_file_nested_too_deep(tmp_path):
    k = tmp_path / "deep.toml"
    k.write_text("weights = " + "[" * 10000 + "]" * 10000 + "\n")
    with pytest.raises(ValueError, match="nested too deeply") as e:
        convkit.chain(f"kernel(path={k})")
    assert len(str(e.value)) < 300


def test_kernel_file_over_the_size_limit(tmp_path):
    from convkit.kernels.specs import MAX_KERNEL_FILE

    k = tmp_path / "big.toml"
    with open(k, "wb") as f:
        f.truncate(MAX_KERNEL_FILE + 1)
    with pytest.raises(ValueError, match="over the limit of 16777216"):
        convkit.chain(f"kernel(path={k})")


def test_overflowing_weights_are_a_value_error():
    with pytest.raises(ValueError, match="overflows"):
        convkit.chain("kernel(weights=[1e308, 1e308])")


@pytest.mark.parametrize("spec", ["x" * 100_000, "gaussian(sigma=" + "9" * 100_000 + ")",
                                  "sharpen | " * 10_000 + "blurr"])
def test_huge_spec_gives_a_short_message(spec):
    with pytest.raises(ValueError) as e:
        convkit.chain(spec)
    assert len(str(e.value)) < 600 and "\n" not in str(e.value)


def test_typo_suggests_the_closest_filter():
    with pytest.raises(ValueError, match="Did you mean 'sharpen'"):
        convkit.chain("sharpn")
    res = CliRunner().invoke(cli, ["sharpn", "x.png"])
    assert res.exit_code == 2 and "Did you mean 'sharpen'" in res.stderr


@pytest.mark.parametrize("device", ["xla", "mps", "hpu", "meta", "cuda:7", "tpu"])
def test_unsupported_or_absent_device_is_a_usage_error(tmp_path, device):
    import torch

    src = tmp_path / "a.png"
    Image.fromarray(photo()).save(src)
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    res = invoke(str(src), "-o", str(tmp_path / "b.png"), "--device", device)
    assert res.exit_code == 2, res.output
    assert f"'{device}'" in res.stderr and "this machine offers cpu" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "b.png").exists()


def test_vanishing_sigma_is_the_identity_as_in_opencv():
    a = photo()
    for ksize in (None, 5):
        spec = "gaussian(sigma=1e-200)" if ksize is None else "gaussian(sigma=1e-200, ksize=5)"
        out = convkit.process(a, spec)
        ref = cv2.GaussianBlur(a, (ksize or 1, ksize or 1), 1e-200,
                               borderType=cv2.BORDER_REFLECT_101)
        assert np.array_equal(out, ref) and np.array_equal(out, a)


def test_show_summarises_a_huge_kernel_quickly():
    res = subprocess.run([sys.executable, "-m", "convkit", "show", "box", "size=4095"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "the central 15x15 of 4095x4095" in lines[1]
    assert len(lines) < 25 and "separable: yes" in res.stdout


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_huge_separable_kernels_are_planned_as_two_vectors(tmp_path):
    """``gaussian(ksize=4095)`` is two 4095-tap vectors: planning it, fused with a box, and a
    dry run of the command allocate no 4095x4095 array (128 MB in float64; the issue measured
    14 s building it)."""
    from convkit.plan.specs import plan_spec

    spec = "gaussian(ksize=4095) | box(size=[4095, 3])"
    plan, peak = traced_peak(lambda: plan_spec(spec))
    assert plan is not None and len(plan.ops) == 1 and peak < 4 << 20, peak
    src = tmp_path / "a.png"
    Image.fromarray(photo()).save(src)
    # (VmHWM, not getrusage: a child's ru_maxrss keeps its parent's peak from before exec)
    peak = run_cli(["apply", spec, str(src), "-o", str(tmp_path / "o.png"), "--dry-run"],
                   report=VMHWM, timeout=60)
    assert int(peak) < 120 << 10, peak  # kB; the dense kernel is 128 MB


def test_dense_kernel_side_limit():
    with pytest.raises(ValueError, match=r"at most 1023x1023\. Got 1 rows of up to 2000"):
        convkit.chain(f"kernel(weights={[1.0] * 2000})")


def test_malformed_exif_prints_nothing_when_the_image_is_fine(tmp_path):
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 65535) \
        + struct.pack("<HHII", 0x010F, 2, 100, 99999) * 10
    src = tmp_path / "exif.jpg"
    src.write_bytes(jpeg_bytes(photo(), exif=b"Exif\x00\x00" + tiff))
    res = subprocess.run([sys.executable, "-m", "convkit", "sharpen", "-q", str(src), "-o",
                          str(tmp_path / "out.png")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_sigterm_during_one_long_filter_ends_the_run_at_once(tmp_path):
    """A median of size 999 on 2000x2000 runs for many seconds in one OpenCV call; SIGTERM
    in the middle ends the process within a second or two, exit 143, nothing left behind."""
    import signal
    import time

    src = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src), rng.integers(0, 256, (2000, 2000, 3), dtype=np.uint8))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "convkit", "median", "--size", "999", "-q",
                             str(src), "-o", str(out) + "/"], stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)  # started, read, and inside the filter
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 3, "SIGTERM took too long to end the run"
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("border,cv_border", [
    ("reflect", cv2.BORDER_REFLECT_101), ("replicate", cv2.BORDER_REPLICATE),
    ("symmetric", cv2.BORDER_REFLECT), ("circular", cv2.BORDER_WRAP),
    ("constant", cv2.BORDER_CONSTANT)])
@pytest.mark.parametrize("size,stride", [(2, 100), (3, 7), (5, 9), ((2, 3), (9, 2)),
                                         ((4, 1), (3, 5))])
def test_pooling_with_gaps_between_windows(border, cv_border, size, stride):
    """Windows further apart than their size read only their own lines: the same values as
    padding the whole image with OpenCV's copyMakeBorder and taking each window."""
    import torch

    from convkit.nn import functional as KF

    a = np.random.default_rng(0).random((52, 36)).astype(np.float32)
    x = torch.from_numpy(a)[None, None]
    ph, pw = KF.pool_pads(52, 36, size, stride)
    padded = cv2.copyMakeBorder(a, 0, ph, 0, pw, cv_border, value=0.25)
    (kh, kw), (sh, sw) = KF.pool_size(size), KF.pool_size(stride)  # (rows, cols)
    rows = range(0, 52 + ph - kh + 1, sh)
    cols = range(0, 36 + pw - kw + 1, sw)
    for fn, reduce in ((KF.max_pool, np.max), (KF.avg_pool, np.mean)):
        got = fn(x, size, stride, border, 0.25)[0, 0].numpy()
        ref = np.array([[reduce(padded[i:i + kh, j:j + kw]) for j in cols] for i in rows])
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_pooling_far_apart_windows_uses_little_memory(tmp_path):
    Image.fromarray(photo(52, 36)).save(tmp_path / "small.png")
    # (VmHWM: a child's ru_maxrss keeps the peak of the test process it was forked from)
    peak = run_cli(["maxpool", "--size", "2", "--stride", "18000", "-q",
                    str(tmp_path / "small.png"), "-o", str(tmp_path / "out.png")], report=VMHWM)
    assert int(peak) < 1500 << 10  # kB; padding the image took 4.2 GB
    assert Image.open(tmp_path / "out.png").size == (2, 2)


def test_full_disk_says_so_and_leaves_nothing(tmp_path):
    """A 64 KiB tmpfs as the output folder (needs the right to mount: root in a container
    that allows it; skipped elsewhere)."""
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        src = tmp_path / "a.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3),
                                                          dtype=np.uint8)).save(src)
        res = invoke(str(src), "-o", str(full / "out.png"))
        assert res.exit_code == 1
        assert error_lines(res.stderr) == [
            f"error: {src}: {full / 'out.png'}: cannot write (No space left on device)"]
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
