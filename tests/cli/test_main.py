"""The ``convkit`` command line: commands from the registry, options, exit codes, outputs.

Outputs are checked against OpenCV computed here (cv2.filter2D / GaussianBlur with
BORDER_REFLECT_101), never against convkit's own earlier output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import max_diff, run_cli

import convkit
from convkit.cli.main import cli
from convkit.kernels.registry import get_info, list_filters

SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
LAPLACE = SHARPEN - np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)


def photo(h: int = 48, w: int = 64, channels: int = 3, seed: int = 0,
          dtype=np.uint8) -> np.ndarray:
    """A photo-like test image: smooth shading, edges and grain (H, W, C) in BGR order."""
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(channels)], -1)
    base = (base + 1) / 2
    base[h // 3 : h // 2, w // 4 : w // 2] = 0.9  # a bright block: sharp edges
    img = base * top * 0.8 + rng.normal(0, top * 0.03, base.shape) + top * 0.1
    return np.clip(img, 0, top).astype(dtype)


def write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"{path} is not a readable image"
    return img


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="convkit")


# --- help, version, list, show ----------------------------------------------------------------


def test_help_lists_commands_filters_and_an_example():
    res = invoke("--help")
    assert res.exit_code == 0
    for name in ("apply", "list", "show", "sharpen", "gaussian", "sobel", "emboss"):
        assert f"  {name} " in res.output
    assert "convkit sharpen photo.jpg" in res.output
    assert "Exit status" in res.output


@pytest.mark.parametrize("name", list_filters())
def test_every_filter_command_has_help_with_an_example_and_its_options(name):
    res = invoke(name, "--help")
    assert res.exit_code == 0, res.output
    assert "Example" in res.output and f"convkit {name}" in res.output
    for p in get_info(name).params:
        assert "--" + p.name.replace("_", "-") in res.output
    assert "--skip-existing" in res.output and "--in-place" in res.output


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0
    import convkit

    assert convkit.__version__ in res.output


def test_python_dash_m_convkit_runs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "convkit", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "convkit" in res.stdout


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["sharpen", "--help"]])
def test_help_and_list_do_not_import_torch(argv):
    loaded = run_cli(argv, report="sorted(m for m in sys.modules if m.split('.')[0] in "
                                  "('torch', 'torchvision', 'cv2', 'numpy'))", timeout=60)
    assert loaded == "[]", loaded


def test_list_shows_every_filter_its_description_and_parameters():
    res = invoke("list")
    assert res.exit_code == 0
    for name in list_filters():
        info = get_info(name)
        assert any(line.startswith(name + " ") and info.description in line
                   for line in res.output.splitlines()), name
    assert "sigma=1" in res.output and "border=reflect" in res.output
    data = json.loads(invoke("list", "--json").output)
    assert [d["name"] for d in data] == list_filters()
    params = {d["name"]: d["params"] for d in data}
    assert params["unsharp"]["sigma"]["default"] == 1.0
    assert params["gaussian"]["sigma"]["default"] is None  # (1, or derived from ksize)


def test_show_sharpen_prints_the_kernel_its_sum_and_rank():
    res = invoke("show", "sharpen", "amount=1.5")
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines()[1:4]]
    expected = np.eye(3)[1:2].T @ np.eye(3)[1:2] + 1.5 * LAPLACE  # identity + 1.5 * Laplacian
    np.testing.assert_allclose(np.array(rows, dtype=float), expected, atol=1e-6)
    assert "sum: 1" in res.output
    assert "separable: no (rank 2)" in res.output


def test_show_gaussian_is_separable_into_opencvs_1d_kernel():
    res = invoke("show", "gaussian", "sigma=1.5")
    assert res.exit_code == 0, res.output
    assert "separable: yes (rank 1)" in res.output
    col = [float(v) for v in res.output.split("column:")[1].splitlines()[0].split()]
    ref = cv2.getGaussianKernel(int(round(6 * 1.5 + 1)) | 1, 1.5).ravel()
    np.testing.assert_allclose(col, ref, atol=1e-5)
    assert "sum: 1" in res.output


def test_show_custom_kernel_and_non_linear_filters():
    res = invoke("show", "kernel", "weights=[[1,2,1],[2,4,2],[1,2,1]]")
    assert res.exit_code == 0, res.output
    assert "0.0625" in res.output and "0.25" in res.output and "separable: yes" in res.output
    for name, word in (("median", "non-linear"), ("sobel", "non-linear"),
                       ("maxpool", "pooling")):
        res = invoke("show", name)
        assert res.exit_code == 0 and word in res.output, res.output
    res = invoke("show", "emboss")
    assert "offset: 128" in res.output


def test_show_errors_are_usage_errors():
    res = invoke("show", "nosuch")
    assert res.exit_code == 2 and "Unknown filter 'nosuch'" in res.output
    res = invoke("show", "gaussian", "sigma")
    assert res.exit_code == 2 and "expected KEY=VALUE" in res.output
    res = invoke("show", "gaussian", "sigma=-2")
    assert res.exit_code == 2 and "sigma should be >= 0" in res.output


# --- usage errors: exit 2 with click's usage message ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuch", "a.png"], "No such command or filter 'nosuch'"),
        (["gaussian", "--sigma", "-1", "IMG"], "Invalid value for '--sigma': gaussian: sigma "
                                               "should be >= 0. Got -1.0"),
        (["box", "--size", "0", "IMG"], "size should be >= 1"),
        (["sharpen", "--border", "mirror", "IMG"], "'mirror' is not one of"),
        (["kernel", "--weights", "[[0,-1,0],[-1,5,-1]", "IMG"],
         "does not parse at position"),
        (["kernel", "--weights", "[[1,2],[3]]", "IMG"], "same length"),
        (["kernel", "IMG"], "give exactly one of weights"),
        (["apply", "gaussian(sigma=2 | sharpen", "IMG"], "at position"),
        (["apply", "blurr", "IMG"], "Unknown filter 'blurr'"),
        (["sharpen", "IMG", "--device", "tpu"], "Invalid device 'tpu'"),
        (["sharpen", "IMG", "--device", "cpu", "--decode", "gpu"],
         "--decode gpu needs a CUDA device. Got device cpu"),
        (["sharpen", "IMG", "--decode", "nvjpeg"], "'nvjpeg' is not one of 'cpu', 'gpu'"),
        (["sharpen", "IMG", "--in-place", "-o", "x.png"], "not both"),
        (["sharpen", "IMG", "--in-place", "--skip-existing"], "cannot be combined"),
        (["sharpen", "DIR"], "needs -o"),
        (["sharpen", "IMG", "--quality", "101"], "--quality"),
        (["sharpen", "IMG", "--max-memory", "lots"], "Invalid max_memory 'lots'"),
        (["sharpen"], "Usage: convkit sharpen"),
    ],
)
def test_usage_errors_exit_2_with_the_message(tmp_path, argv, message):
    img = write(tmp_path / "img.png", photo())
    (tmp_path / "dir").mkdir()
    write(tmp_path / "dir" / "a.png", photo())
    argv = [str(img) if a == "IMG" else str(tmp_path / "dir") if a == "DIR" else a for a in argv]
    res = invoke(*argv)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Usage: convkit" in res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "img.png"]  # nothing written


# --- outputs against OpenCV --------------------------------------------------------------------


def test_sharpen_one_file_writes_stem_dash_filter_beside_it(tmp_path):
    img = photo()
    src = write(tmp_path / "my photo.png", img)
    before = src.read_bytes()
    res = invoke("sharpen", src)
    assert res.exit_code == 0, res.output
    out = tmp_path / "my photo-sharpen.png"
    ref = cv2.filter2D(img, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(read(out), ref) <= 1
    assert src.read_bytes() == before
    assert "1 written, 0 skipped, 0 failed" in res.stderr


def test_options_map_to_filter_parameters(tmp_path):
    img = photo(seed=1)
    src = write(tmp_path / "in.png", img)
    res = invoke("sharpen", "--amount", "1.5", "--border", "replicate", src, "-o",
                 tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    k = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32) + 1.5 * LAPLACE
    ref = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REPLICATE)
    assert max_diff(read(tmp_path / "s.png"), ref) <= 1

    res = invoke("gaussian", "--sigma", "2", src, "-o", tmp_path / "g.png")
    assert res.exit_code == 0, res.output
    ref = cv2.GaussianBlur(img, (13, 13), 2, borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(read(tmp_path / "g.png"), ref) <= 1

    weights = "[[1,0,-1],[2,0,-2],[1,0,-1]]"
    res = invoke("kernel", "--weights", weights, "--negative", "clip", src, "-o",
                 tmp_path / "k.png")
    assert res.exit_code == 0, res.output
    k = np.array(json.loads(weights), np.float32)
    ref = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(read(tmp_path / "k.png"), ref) <= 1


def test_apply_a_chain_and_a_toml_kernel(tmp_path):
    img = photo(seed=2)
    src = write(tmp_path / "in.png", img)
    res = invoke("apply", "gaussian(sigma=1) | sharpen", src)
    assert res.exit_code == 0, res.output
    out = tmp_path / "in-gaussian-sharpen.png"
    # float reference, rounded once at the end (the chain's rule)
    g = cv2.GaussianBlur(img.astype(np.float32), (7, 7), 1, borderType=cv2.BORDER_REFLECT_101)
    ref = cv2.filter2D(g, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
    ref = np.clip(np.rint(ref), 0, 255).astype(np.uint8)
    assert max_diff(read(out), ref) <= 1

    toml = tmp_path / "ridge.toml"
    toml.write_text('name = "ridge"\nweights = [[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]]\n')
    res = invoke("apply", toml, src, "-o", tmp_path / "ridge.png")
    assert res.exit_code == 0, res.output
    k = np.array([[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]], np.float32)
    ref = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(read(tmp_path / "ridge.png"), ref) <= 1


def test_pooling_changes_the_size(tmp_path):
    img = photo(48, 64)
    src = write(tmp_path / "in.png", img)
    res = invoke("avgpool", "--size", "2", src, "-o", tmp_path / "p.png")
    assert res.exit_code == 0, res.output
    ref = cv2.resize(img, (32, 24), interpolation=cv2.INTER_AREA)
    assert max_diff(read(tmp_path / "p.png"), ref) <= 1


def test_folder_mirrors_the_layout_and_recurses_only_with_r(tmp_path):
    imgs = {"a.png": photo(seed=3), "sub/b.png": photo(40, 30, seed=4),
            "sub/deeper/c.jpg": photo(seed=5)}
    for rel, img in imgs.items():
        write(tmp_path / "in" / rel, img)
    (tmp_path / "in" / "notes.txt").write_text("not an image")

    res = invoke("sharpen", tmp_path / "in", "-o", tmp_path / "flat")
    assert res.exit_code == 0, res.output
    assert sorted(str(p.relative_to(tmp_path / "flat")) for p in
                  (tmp_path / "flat").rglob("*") if p.is_file()) == ["a.png"]

    res = invoke("sharpen", "-r", tmp_path / "in", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")
                 if p.is_file())
    assert got == sorted(imgs)
    for rel in ("a.png", "sub/b.png"):
        ref = cv2.filter2D(imgs[rel], -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
        assert max_diff(read(tmp_path / "out" / rel), ref) <= 1
    assert "3 written" in res.stderr


def test_several_folders_mirror_under_their_common_parent(tmp_path):
    write(tmp_path / "x" / "one.png", photo())
    write(tmp_path / "y" / "one.png", photo(seed=9))
    res = invoke("box", tmp_path / "x", tmp_path / "y", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "x" / "one.png").exists()
    assert (tmp_path / "out" / "y" / "one.png").exists()


def test_glob_patterns_and_format_option(tmp_path):
    for i in range(3):
        write(tmp_path / f"p{i}.jpg", photo(seed=i))
    write(tmp_path / "other.png", photo())
    res = invoke("sharpen", str(tmp_path / "p*.jpg"), "-o", tmp_path / "out", "--format", "png")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png", "p2.png"]
    src = read(tmp_path / "p1.jpg")
    ref = cv2.filter2D(src, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(read(tmp_path / "out" / "p1.png"), ref) <= 1


def test_jpeg_quality_option(tmp_path):
    src = write(tmp_path / "in.png", photo(96, 128))
    for q in (40, 95):
        res = invoke("sharpen", src, "-o", tmp_path / f"q{q}.jpg", "--quality", str(q))
        assert res.exit_code == 0, res.output
    assert (tmp_path / "q40.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size


def test_skip_existing_leaves_outputs_alone_and_counts_them(tmp_path):
    for i in range(3):
        write(tmp_path / "in" / f"{i}.png", photo(seed=i))
    (tmp_path / "out").mkdir()
    marker = b"already here"
    (tmp_path / "out" / "1.png").write_bytes(marker)
    res = invoke("sharpen", tmp_path / "in", "-o", tmp_path / "out", "--skip-existing", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (2, 1, 0)
    assert (tmp_path / "out" / "1.png").read_bytes() == marker
    # without --skip-existing an existing output is replaced
    res = invoke("sharpen", tmp_path / "in", "-o", tmp_path / "out", "--json")
    assert json.loads(res.stdout)["written"] == 3
    assert (tmp_path / "out" / "1.png").read_bytes() != marker


def test_in_place_overwrites_inputs_with_the_result_and_nothing_else(tmp_path):
    imgs = [photo(seed=i) for i in range(2)]
    for i, img in enumerate(imgs):
        write(tmp_path / f"{i}.png", img)
    res = invoke("sharpen", tmp_path, "--in-place")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png"]
    for i, img in enumerate(imgs):
        ref = cv2.filter2D(img, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
        assert max_diff(read(tmp_path / f"{i}.png"), ref) <= 1


def test_input_is_never_overwritten_without_in_place(tmp_path):
    src = write(tmp_path / "a.png", photo())
    before = src.read_bytes()
    res = invoke("sharpen", src, "-o", src)
    assert res.exit_code == 1
    assert f"{src}: the output {src} is the input file; pass --in-place" in res.stderr
    assert src.read_bytes() == before
    # an output name that is another input: a.png -> a-box.png, which is also an input
    other = write(tmp_path / "a-box.png", photo(seed=1))
    other_before = other.read_bytes()
    res = invoke("box", src, other)
    assert res.exit_code == 1
    assert "would overwrite input" in res.stderr
    assert other.read_bytes() == other_before
    assert (tmp_path / "a-box-box.png").exists()  # the other input was still processed


def test_json_summary_and_exit_1_when_some_inputs_fail(tmp_path):
    write(tmp_path / "in" / "good.png", photo())
    (tmp_path / "in" / "bad.png").write_text("this is text, not a PNG")
    res = invoke("sharpen", tmp_path / "in", "-o", tmp_path / "out", "--json")
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    assert summary["written"] == 1 and summary["failed"] == 1 and summary["exit_code"] == 1
    assert summary["errors"] == [f"{tmp_path / 'in' / 'bad.png'}: not a PNG, JPEG, WebP, TIFF, "
                                 "BMP or GIF image (cannot identify image file)"]
    assert f"error: {tmp_path / 'in' / 'bad.png'}: not a PNG" in res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_quiet_prints_no_summary(tmp_path):
    src = write(tmp_path / "in.png", photo())
    res = invoke("sharpen", src, "-q")
    assert res.exit_code == 0 and res.output == ""


def test_alpha_passes_through_and_16_bit_stays_16_bit(tmp_path):
    bgra = photo(channels=4, seed=6)
    src = write(tmp_path / "rgba.png", bgra)
    res = invoke("sharpen", src, "-o", tmp_path / "rgba-out.png")
    assert res.exit_code == 0, res.output
    out = read(tmp_path / "rgba-out.png")
    assert out.shape == bgra.shape
    assert np.array_equal(out[:, :, 3], bgra[:, :, 3])
    ref = cv2.filter2D(bgra[:, :, :3], -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(out[:, :, :3], ref) <= 1

    deep = photo(dtype=np.uint16, seed=7)
    src = write(tmp_path / "deep.png", deep)
    res = invoke("sharpen", src, "-o", tmp_path / "deep-out.png")
    assert res.exit_code == 0, res.output
    out = read(tmp_path / "deep-out.png")
    assert out.dtype == np.uint16
    ref = cv2.filter2D(deep, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(out, ref) <= 1


def test_missing_input_and_empty_folder_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    src = write(tmp_path / "ok.png", photo())
    res = invoke("sharpen", src, tmp_path / "empty", tmp_path / "gone.png", "-o", tmp_path / "o")
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert f"error: {tmp_path / 'empty'}: no images found; supported extensions: .bmp, .gif, " \
           ".jpeg, .jpg, .png, .tif, .tiff, .webp" in lines
    assert f"error: {tmp_path / 'gone.png'}: no such file or folder" in lines
    assert (tmp_path / "o" / "ok.png").exists()


def test_unwritable_output_folder_is_one_error_per_file(tmp_path):
    src = write(tmp_path / "in.png", photo())
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    res = invoke("sharpen", src, "-o", blocker / "sub" / "out.png")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0] == (
        f"error: {src}: cannot create output folder {blocker / 'sub'} (a file is in the way)")
    assert "Traceback" not in res.output


def test_apply_a_model_file_with_a_space_in_its_name(tmp_path):
    model_mod = pytest.importorskip("convkit.learn.model")
    files = pytest.importorskip("convkit.learn.files")
    import torch

    net = model_mod.LearnedFilter(model_mod.ModelConfig(arch="linear", kernel=3))
    with torch.no_grad():  # a linear model holding the sharpen kernel
        net.conv.weight[0, 0] = torch.from_numpy(SHARPEN)
    model = files.save_model(net, tmp_path / "my sharpen.pt")
    img = photo(seed=8)
    src = write(tmp_path / "in.png", img)
    res = invoke("apply", model, src, "-o", tmp_path / "out.png")
    assert res.exit_code == 0, res.output
    ref = cv2.filter2D(img, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)
    assert max_diff(read(tmp_path / "out.png"), ref) <= 1
    res = invoke("apply", model, src)  # default name from the model file's stem
    assert res.exit_code == 0 and (tmp_path / "in-my_sharpen.png").exists(), res.output


@pytest.mark.parametrize("args", [
    ["sharpen", "{src}", "-o", "{out}/a.png"],
    ["apply", "gaussian(sigma=2) | sharpen | median(size=3)", "{src}", "-o", "{out}/b.png"],
    ["edges", "{src}", "-o", "{out}/c.png", "--device", "auto"],
    ["apply", "opening(size=5, shape=ellipse) | tophat(size=4)", "{src}", "-o", "{out}/d.png"],
])
def test_cpu_command_line_never_imports_torch(tmp_path, args):
    """Fixed filters on the CPU run on a torch-free plan: neither torch nor torchvision is
    imported (checked in a fresh interpreter), and the result equals OpenCV's."""

    import cv2
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    src = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(src)
    argv = [a.format(src=src, out=tmp_path) for a in args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # "auto" must find no GPU, even here
    loaded = run_cli(argv, report="'torch' in sys.modules, 'torchvision' in sys.modules",
                     env=env)
    assert loaded == "False False", loaded
    if args[0] == "sharpen":
        k = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
        a = np.asarray(Image.open(src))
        ref = cv2.filter2D(a, -1, k, borderType=cv2.BORDER_REFLECT_101)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), ref)


def test_large_kernels_run_on_opencv_without_torch(tmp_path):
    """Kernels that the cost rule would give to torch's FFT run on OpenCV (its DFT on float32,
    or separable passes) in a process without torch: the command line does not import it for
    them, and the results equal OpenCV's gaussian and the dense definition within a level."""
    import torch
    from PIL import Image

    from convkit.nn.chains import chain
    from convkit.nn.modules import reference

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    src = tmp_path / "in.png"
    Image.fromarray(img).save(src)
    specs = {"g.png": "gaussian(sigma=16)", "u.png": "unsharp(sigma=2) | laplacian"}
    argvs = [["apply", spec, "-q", str(src), "-o", str(tmp_path / name)]
             for name, spec in specs.items()]
    loaded = run_cli(*argvs, report="'torch' in sys.modules",
                     env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert loaded == "False", loaded
    k = int(convkit_ksize(16))
    # (on float32: OpenCV's 8-bit gaussian is a fixed-point approximation)
    ref = cv2.GaussianBlur(img.astype(np.float32), (k, k), 16,
                           borderType=cv2.BORDER_REFLECT_101).round()
    got = np.asarray(Image.open(tmp_path / "g.png")).astype(np.float32)
    assert max_diff(got, ref) <= 1
    # NumPy images take that route whatever this process has imported (here torch)
    for name, spec in specs.items():
        assert np.array_equal(convkit.process(img, spec), np.asarray(Image.open(tmp_path / name)))
    m = chain(specs["u.png"])
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None].float() / 255
    response = reference(m, x)[0].permute(1, 2, 0).numpy() * 255
    assert m.negative == "abs"  # laplacian's mapping of signed responses
    dense = np.abs(response).round().clip(0, 255)
    got = np.asarray(Image.open(tmp_path / "u.png")).astype(float)
    assert np.abs(got - dense).max() <= 1


def convkit_ksize(sigma: float) -> int:
    from convkit.nn.functional import gaussian_ksize

    return gaussian_ksize(sigma)
