"""Command-line conventions a user meets in the first hour: output names that cannot hold
several inputs, TIFF compression, show for filters of several steps, --help examples that run,
and a pixel limit that lets real large photos through while it stops bombs."""

from __future__ import annotations

import os
import shlex
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convkit.cli.main import cli

SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)


def photo(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def run(*args: str, cwd: Path | None = None):
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("out", ["joined.png", "joined.tif"])
def test_one_file_named_for_several_inputs_is_a_usage_error(tmp_path, out):
    for i in range(2):
        Image.fromarray(photo(seed=i)).save(tmp_path / f"{i}.png")
    res = run("sharpen", str(tmp_path / "0.png"), str(tmp_path / "1.png"),
              "-o", str(tmp_path / out))
    assert res.exit_code == 2
    assert "names a file, but 2 inputs were given; name a folder" in res.stderr
    assert not (tmp_path / out).exists()


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("out", ["results.v2", "2026.12.06", "out.xyz"])
def test_output_with_a_suffix_that_is_no_image_format_is_a_folder(tmp_path, out, n):
    """-o is a file only with an image extension; any other name, dots and all, is a folder
    (the README's rule): `-o out.xyz` with one input said "names a file, but 1 inputs were
    given", and a dated folder such as 2026.12.06 was refused for several."""
    for i in range(n):
        Image.fromarray(photo(seed=i)).save(tmp_path / f"{i}.png")
    res = run("sharpen", *(str(tmp_path / f"{i}.png") for i in range(n)), "-q",
              "-o", str(tmp_path / out))
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / out).iterdir()) == [f"{i}.png" for i in range(n)]


@pytest.mark.parametrize("compression,tag", [("deflate", "tiff_adobe_deflate"),
                                             ("lzw", "tiff_lzw"), ("none", "raw")])
def test_tiff_is_compressed_losslessly(tmp_path, compression, tag):
    a = photo(60, 80)
    Image.fromarray(a).save(tmp_path / "a.png")
    args = ["sharpen", "-q", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.tif")]
    if compression != "deflate":  # deflate is the default
        args += ["--compression", compression]
    assert run(*args).exit_code == 0
    with Image.open(tmp_path / "a.tif") as im:
        assert im.info["compression"] == tag
        ref = cv2.filter2D(a, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
        assert np.array_equal(np.asarray(im), ref)


def test_show_lists_the_steps_of_a_filter_of_several():
    res = run("show", "edges")
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[0] == "edges: 2 steps, applied in order:"
    assert lines[1].startswith("1. kernel: 7x7 kernel")
    assert any(ln.startswith("2. gradient magnitude: non-linear") for ln in lines)
    assert "Sequence2" not in res.output


def test_every_help_example_runs_as_printed(tmp_path):
    """The two examples of each filter's --help, run as printed (photo.jpg, photos/), in a
    folder that has them; filters that need a file argument get one."""
    Image.fromarray(photo()).save(tmp_path / "photo.jpg")
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    Image.fromarray(photo(seed=1)).save(tmp_path / "photos" / "sub" / "b.jpg")
    (tmp_path / "model.pt").write_bytes(b"")  # learned: the example names model.pt
    from convkit import list_filters

    for name in list_filters():
        text = run(name, "--help").output
        block = text.split("Example:")[1].split("Run `convkit show")[0]
        examples = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("convkit")]
        assert len(examples) == 2, (name, examples)
        for example in examples:
            args = shlex.split(example)[1:]
            res = run(*args, cwd=tmp_path)
            if name == "learned":  # model.pt is not a model: the file is named, exit 2
                assert res.exit_code == 2 and "model.pt" in res.output, res.output
            else:
                assert res.exit_code == 0, (example, res.output)


def test_pixel_limit_lets_a_102_megapixel_photo_through(tmp_path):
    a = np.zeros((8520, 12000), np.uint8)  # 102.2 MP, over Pillow's 89.5 MP warning level
    a[::7] = 200
    cv2.imwrite(str(tmp_path / "mf.png"), a, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    res = subprocess.run([sys.executable, "-m", "convkit", "sharpen", "-q",
                          str(tmp_path / "mf.png"), "-o", str(tmp_path / "out.png")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    ref = cv2.filter2D(a, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
    assert np.array_equal(out, ref)


def test_png_declaring_more_than_its_data_could_hold(tmp_path):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 0.9 GP: under the limit
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(bomb)
    res = run("sharpen", str(tmp_path / "bomb.png"), "-o", str(tmp_path / "out.png"))
    assert res.exit_code == 1
    assert "declares 30000x30000" in res.stderr and "more than its" in res.stderr


def _sharp(a: np.ndarray) -> np.ndarray:
    return cv2.filter2D(a, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)


def test_stdin_to_stdout(tmp_path):
    a = photo(25, 35)
    Image.fromarray(a).save(tmp_path / "a.png")
    res = subprocess.run([sys.executable, "-m", "convkit", "sharpen", "-q", "-", "-o", "-",
                          "--format", "png"], input=(tmp_path / "a.png").read_bytes(),
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    (tmp_path / "out.png").write_bytes(res.stdout)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), _sharp(a))


@pytest.mark.parametrize("args,message", [
    (["-", "-o", "-"], "-o - writes the image to stdout: give its --format"),
    (["-"], "- reads the image from stdin: give -o FILE, or -o - for stdout"),
    (["-", "x.png", "-o", "out/"], "- (stdin) must be the only input"),
    (["x.png", "-o", "-", "--format", "png", "--json"], "--json or --dry-run would use too"),
    (["x.png", "y.png", "-o", "-", "--format", "png"], "-o - writes one image to stdout"),
    ([".", "-o", "-", "--format", "png"], "-o - writes one image to stdout"),
    (["*.png", "-o", "-", "--format", "png"], "-o - writes one image to stdout"),
])
def test_stdin_stdout_usage_errors(args, message):
    res = run("sharpen", *args)
    assert res.exit_code == 2 and message in res.stderr
    assert "convkit-" not in res.stderr  # never the temporary folder behind - (stdin, stdout)


def test_stdin_is_named_dash_in_json_and_errors(tmp_path):
    """--json and usage errors name stdin "-", not the temporary file behind it."""
    import json

    src = tmp_path / "a.png"
    Image.fromarray(photo()).save(src)
    res = subprocess.run([sys.executable, "-m", "convkit", "sharpen", "-", "-o",
                          str(tmp_path / "o.png"), "--json"], input=src.read_bytes(),
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["files"][0]["input"] == "-", res.stdout
    res = subprocess.run([sys.executable, "-m", "convkit", "sharpen", "-", "-o",
                          str(tmp_path / "o2.png"), "--json"], input=b"not an image",
                         capture_output=True, timeout=60)
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["errors"][0].startswith("-: ") and report["files"][0]["input"] == "-", report
    assert b"convkit-" not in res.stdout + res.stderr


def test_stdin_that_is_not_an_image_names_stdin():
    res = subprocess.run([sys.executable, "-m", "convkit", "sharpen", "-q", "-", "-o", "x.png"],
                         input=b"not a picture", capture_output=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.decode().startswith("error: -: not a PNG, JPEG")


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    for name in ("a.png", "b.jpg"):
        Image.fromarray(photo()).save(tmp_path / name)
    res = run("sharpen", str(tmp_path), "-o", str(tmp_path / "out"), "--dry-run")
    assert res.exit_code == 0
    assert res.stdout.splitlines() == [f"{tmp_path / 'a.png'} -> {tmp_path / 'out' / 'a.png'}",
                                       f"{tmp_path / 'b.jpg'} -> {tmp_path / 'out' / 'b.jpg'}"]
    assert not (tmp_path / "out").exists()
    bad = run("gaussian", "--sigma", "-1", str(tmp_path), "-o", "x/", "--dry-run")
    assert bad.exit_code == 2  # the filter is still checked


def test_json_has_one_record_per_file(tmp_path):
    import json

    Image.fromarray(photo()).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"junk")
    res = run("sharpen", "-q", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o",
              str(tmp_path / "out"), "--json")
    assert res.exit_code == 1
    files = sorted(json.loads(res.stdout)["files"], key=lambda f: f["input"])
    assert [(f["input"], f["status"]) for f in files] == [(str(tmp_path / "a.png"), "written"),
                                                         (str(tmp_path / "b.png"), "failed")]
    assert files[0]["output"] == str(tmp_path / "out" / "a.png") and files[0]["seconds"] > 0
    assert files[1]["reason"].startswith(f"{tmp_path / 'b.png'}: not a PNG")


def test_verbose_says_how_each_filter_runs(tmp_path):
    Image.fromarray(photo()).save(tmp_path / "a.png")
    res = run("apply", "gaussian(sigma=2) | median(size=3)", str(tmp_path / "a.png"), "-o",
              str(tmp_path / "b.png"), "-v", "-q")
    assert res.exit_code == 0
    assert "convkit: gaussian(sigma=2.0): opencv, separable" in res.stderr
    assert "convkit: median(size=3): opencv, median" in res.stderr


def test_completion_offers_filters_after_show(tmp_path):
    env = {**os.environ, "COMP_WORDS": "convkit show gau", "COMP_CWORD": "2",
           "_CONVKIT_COMPLETE": "bash_complete"}
    res = subprocess.run([sys.executable, "-m", "convkit"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert "plain,gaussian" in res.stdout.split()


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_jpeg_through_the_interleaved_route(tmp_path, orientation):
    """The torch-free route reads JPEGs as interleaved views and writes them without planar
    copies: the result is the filter of the decoded, EXIF-turned photo (Pillow's decode and
    exif_transpose as the reference), for RGB and grey."""
    from PIL import ImageOps

    for mode in ("RGB", "L"):
        a = photo(40, 56)
        im = Image.fromarray(a).convert(mode)
        exif = Image.Exif()
        exif[0x0112] = orientation
        src = tmp_path / f"{mode}{orientation}.jpg"
        im.save(src, quality=92, exif=exif.tobytes())
        out = tmp_path / f"{mode}{orientation}.png"
        assert run("sharpen", "-q", str(src), "-o", str(out)).exit_code == 0
        with Image.open(src) as decoded:
            ref = np.asarray(ImageOps.exif_transpose(decoded))
        got = np.asarray(Image.open(out))
        assert got.shape == ref.shape
        assert np.array_equal(got, _sharp(np.ascontiguousarray(ref)))


def test_show_prints_the_structuring_element():
    res = run("show", "erode", "size=5", "shape=ellipse")
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert "minimum under the 5x5 structuring element" in lines[0]
    fp = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    assert [[int(v) for v in ln.split()] for ln in lines[1:6]] == fp.tolist()
    rank = run("show", "percentile", "size=3", "q=25")
    assert "value number 3 (from the smallest) of the 9" in rank.output


def test_every_default_shown_is_the_default_that_runs(tmp_path):
    """The defaults that --help and `convkit list --json` print are those the filter runs with:
    roberts and farid, whose files default to border=symmetric, said reflect. Checked on the
    module built without arguments, and on the command line's output against a spec that
    spells the border out."""
    import json

    import convkit
    from convkit.kernels.registry import get_info

    listed = {f["name"]: f["params"] for f in json.loads(run("list", "--json").output)}
    for name in convkit.list_filters():
        border = listed[name].get("border", {}).get("default")
        if border is None or name in ("kernel", "learned"):
            continue  # no border, or one that comes with its weights
        if get_info(name).spec is not None:
            assert border == get_info(name).spec.border, name
        module = convkit.get_filter(name)
        modules = module if isinstance(module, convkit.Chain) else [module]
        got = {m.border for m in modules if hasattr(m, "border")}
        assert got <= {border}, (name, border, got)
    for name in ("roberts", "farid"):
        assert listed[name]["border"]["default"] == "symmetric"
        assert "[default: symmetric]" in " ".join(run(name, "--help").output.split())
    cv2.imwrite(str(tmp_path / "a.png"), photo(24, 31))
    run("roberts", str(tmp_path / "a.png"), "-o", str(tmp_path / "cli.png"), "-q")
    run("apply", "roberts(border=symmetric)", str(tmp_path / "a.png"), "-o",
        str(tmp_path / "spec.png"), "-q")
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "cli.png")),
                                  cv2.imread(str(tmp_path / "spec.png")))
