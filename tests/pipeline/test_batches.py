"""``convkit.run``: planning outputs, batching, bounded queues, devices and torchrun sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import run_cli

import convkit
from convkit.pipeline import batches as pipeline
from convkit.pipeline.batches import UsageError, plan

# Run before the command line in a child: "huge" from 100 pixels up
HUGE_FROM_100 = "from convkit.pipeline import batches\nbatches.HUGE_PIXELS = 100"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)


def photo(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(xx / (5 + c) + yy / 7) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def sharpened(img: np.ndarray) -> np.ndarray:
    return cv2.filter2D(img, -1, SHARPEN, borderType=cv2.BORDER_REFLECT_101)


def write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- planning ---------------------------------------------------------------------------------


def test_plan_output_rules(tmp_path):
    a = write(tmp_path / "a.jpg", photo())
    b = write(tmp_path / "sub" / "b.png", photo())
    jobs, errors = plan([a], None, name="sharpen")
    assert errors == [] and [j.out for j in jobs] == [str(tmp_path / "a-sharpen.jpg")]
    jobs, _ = plan([a], tmp_path / "x.png")
    assert [j.out for j in jobs] == [str(tmp_path / "x.png")]
    jobs, _ = plan([a], str(tmp_path / "outdir") + "/")  # a trailing slash: a folder
    assert [j.out for j in jobs] == [str(tmp_path / "outdir" / "a.jpg")]
    jobs, _ = plan([tmp_path], tmp_path / "o", recursive=True)
    assert [j.out for j in jobs] == [str(tmp_path / "o" / "a.jpg"),
                                     str(tmp_path / "o" / "sub" / "b.png")]
    jobs, _ = plan([a, b], tmp_path / "o", format="webp")
    assert [j.out for j in jobs] == [str(tmp_path / "o" / "a.webp"),
                                     str(tmp_path / "o" / "sub" / "b.webp")]
    jobs, _ = plan([a], None, in_place=True)
    assert jobs[0].out == str(a) and jobs[0].error is None
    jobs, _ = plan([a, a, str(tmp_path / "*.jpg")], tmp_path / "o")  # one file named 3 times
    assert len(jobs) == 1


def test_plan_refuses_collisions_and_bad_combinations(tmp_path):
    a = write(tmp_path / "a.png", photo())
    write(tmp_path / "a.jpg", photo())
    jobs, _ = plan([tmp_path], tmp_path / "o", format="png")
    assert jobs[0].error is None
    assert jobs[1].error == (f"{tmp_path / 'a.png'}: the output {tmp_path / 'o' / 'a.png'} is "
                             f"also the output of {tmp_path / 'a.jpg'}")
    with pytest.raises(UsageError, match="not both"):
        plan([a], tmp_path / "o.png", in_place=True)
    with pytest.raises(UsageError, match="needs -o"):
        plan([tmp_path], None)
    with pytest.raises(UsageError, match="invalid format 'gif'"):
        plan([a], None, format="gif")
    # an output file whose extension --format contradicts; one convkit cannot write
    with pytest.raises(UsageError, match=r"-o .*y\.png is a \.png file but --format jpeg"):
        plan([a], tmp_path / "y.png", format="jpeg")
    with pytest.raises(UsageError, match=r"reads \.gif images but does not write them"):
        plan([a], tmp_path / "y.gif")
    jobs, _ = plan([a], str(tmp_path / "frames.gif") + "/")  # a folder that ends in .gif
    assert [j.out for j in jobs] == [str(tmp_path / "frames.gif" / "a.png")]
    jobs, _ = plan([a], tmp_path / "y.JPEG", format="jpg")  # the same format, the user's name
    assert [j.out for j in jobs] == [str(tmp_path / "y.JPEG")]


def test_the_output_folder_inside_the_input_folder_is_not_read_back(tmp_path):
    write(tmp_path / "a.png", photo())
    s1 = convkit.run("sharpen", tmp_path, tmp_path / "out", recursive=True, progress=False)
    s2 = convkit.run("sharpen", tmp_path, tmp_path / "out", recursive=True, progress=False)
    assert (s1.written, s2.written) == (1, 1)
    assert files_under(tmp_path) == ["a.png", "out/a.png"]


def test_default_output_name_of_a_chain():
    assert pipeline.output_name("gaussian(sigma=2) | sharpen") == "gaussian-sharpen"
    assert pipeline.output_name("kernels/ridge.toml") == "ridge"
    assert pipeline.output_name(torch.nn.Identity()) == "filtered"


# --- the run ----------------------------------------------------------------------------------


def test_run_returns_a_summary_and_writes_filtered_files(tmp_path):
    imgs = {f"{i}.png": photo(seed=i) for i in range(3)}
    for name, img in imgs.items():
        write(tmp_path / "in" / name, img)
    summary = convkit.run("sharpen", [tmp_path / "in"], tmp_path / "out", progress=False)
    assert isinstance(summary, convkit.Summary)
    assert (summary.written, summary.skipped, summary.failed, summary.exit_code) == (3, 0, 0, 0)
    assert json.loads(summary.to_json())["written"] == 3
    assert "3 written, 0 skipped, 0 failed" in summary.line()
    for name, img in imgs.items():
        got = cv2.imread(str(tmp_path / "out" / name))
        assert np.abs(got.astype(int) - sharpened(img).astype(int)).max() <= 1


def test_same_size_images_are_batched_and_every_result_is_right(tmp_path, monkeypatch):
    shapes = [(40, 56)] * 7 + [(30, 20)] * 2 + [(41, 57)]
    imgs = {}
    for i, (h, w) in enumerate(shapes):
        imgs[f"{i:02d}.png"] = photo(h, w, seed=i)
        write(tmp_path / "in" / f"{i:02d}.png", imgs[f"{i:02d}.png"])
    batches = []
    real = pipeline.filter_batch

    def spy(module, batch, **kw):
        batches.append(tuple(batch.shape))
        return real(module, batch, **kw)

    monkeypatch.setattr(pipeline, "filter_batch", spy)
    # a module (not a spec string) takes the torch route, where batches are stacked
    summary = convkit.run(convkit.chain("sharpen"), tmp_path / "in", tmp_path / "out",
                          batch_size=3, progress=False)
    assert summary.written == len(shapes)
    assert sorted(batches) == sorted([(3, 3, 40, 56), (3, 3, 40, 56), (1, 3, 40, 56),
                                      (2, 3, 30, 20), (1, 3, 41, 57)])
    for name, img in imgs.items():
        got = cv2.imread(str(tmp_path / "out" / name))
        assert np.abs(got.astype(int) - sharpened(img).astype(int)).max() <= 1


def test_a_failing_batch_is_retried_one_image_at_a_time(tmp_path, monkeypatch):
    for i in range(3):
        write(tmp_path / "in" / f"{i}.png", photo(seed=i))
    real = pipeline.filter_batch

    def flaky(module, batch, **kw):
        if batch.shape[0] > 1 or int(batch[0, 0, 0, 0]) == int(photo(seed=1)[0, 0, 2]):
            raise RuntimeError("simulated device failure")
        return real(module, batch, **kw)

    monkeypatch.setattr(pipeline, "filter_batch", flaky)
    errors = []
    summary = convkit.run(convkit.chain("sharpen"), tmp_path / "in", tmp_path / "out",
                          batch_size=3, progress=False, on_error=errors.append)
    assert (summary.written, summary.failed) == (2, 1)
    assert errors == [f"{tmp_path / 'in' / '1.png'}: simulated device failure"]
    assert files_under(tmp_path / "out") == ["0.png", "2.png"]


def test_queues_are_bounded_however_many_files(tmp_path, monkeypatch):
    n = 120
    for i in range(n):
        write(tmp_path / "in" / f"{i:03d}.png", photo(8, 8, seed=i))
    live = {"now": 0, "peak": 0}
    io = pipeline._io()
    read, write_image = io.read_image_with_info, io.write_image

    def counting_read(path, **kw):
        out = read(path, **kw)
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        return out

    def counting_write(path, image, **kw):
        notes = write_image(path, image, **kw)
        live["now"] -= 1
        return notes

    monkeypatch.setattr(io, "read_image_with_info", counting_read)
    monkeypatch.setattr(io, "write_image", counting_write)
    summary = convkit.run("sharpen", tmp_path / "in", tmp_path / "out", batch_size=4, workers=2,
                          progress=False)
    assert summary.written == n
    # read window + images waiting for a batch + write window, never the whole folder
    assert live["peak"] <= 2 * 4 + 2 * 4 + 4 + 4, live


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_devices(tmp_path, device):
    img = photo()
    src = write(tmp_path / "a.png", img)
    summary = convkit.run("sharpen", src, tmp_path / "b.png", device=device, progress=False)
    assert summary.written == 1 and summary.device.startswith(device)
    got = cv2.imread(str(tmp_path / "b.png"))
    assert np.abs(got.astype(int) - sharpened(img).astype(int)).max() <= 1


def test_unknown_device_and_bad_spec_raise(tmp_path):
    src = write(tmp_path / "a.png", photo())
    with pytest.raises(ValueError, match="Invalid device"):
        convkit.run("sharpen", src, tmp_path / "b.png", device="tpu")
    with pytest.raises(ValueError, match="Unknown filter 'sharpn'"):
        convkit.run("sharpn", src, tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


# --- JPEGs decoded on the device (decode="gpu") -------------------------------------------


def _jpeg_folder(folder: Path) -> dict[str, np.ndarray]:
    """Same-size RGB JPEGs, a grey one, one stored rotated (EXIF 6), a PNG of the batch's size,
    a CMYK JPEG and a truncated one; returns what OpenCV decodes of each readable file (RGB)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        Image.fromarray(photo(40, 56, seed=i)).save(folder / f"rgb{i}.jpg", quality=90)
    Image.fromarray(photo(40, 56, seed=9)[..., 0]).save(folder / "grey.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 56 wide x 40 high, shown rotated clockwise: 40 wide x 56 high
    Image.fromarray(photo(40, 56, seed=7)).save(folder / "rotated.jpg", quality=90, exif=exif)
    Image.fromarray(photo(40, 56, seed=8)).save(folder / "png.png")
    Image.fromarray(photo(40, 56, seed=6)).convert("CMYK").save(folder / "cmyk.jpg")
    whole = (folder / "rgb0.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    return {p.name: convkit.io.images.read_image(p).permute(1, 2, 0).numpy()
            for p in sorted(folder.iterdir()) if p.name != "cut.jpg"}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_jpegs_decoded_on_the_device_in_batches(tmp_path, monkeypatch, device):
    """decode="gpu": JPEGs are decoded in batches on the device, then filtered there. Each output
    (PNG, lossless) is the filter applied to what the device's decoder gives for its file,
    checked with OpenCV; on the CPU (the same machinery, torchvision's libjpeg-turbo) that is
    also exactly the CPU-decoding run's result. Files the device decoder cannot take are
    decoded on the CPU; errors still name the file."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from convkit.io import images as io

    want = _jpeg_folder(tmp_path / "in")
    if device == "cpu":
        monkeypatch.setattr(pipeline, "_device_decodes", lambda dev: True)
    calls = []
    real = io.decode_jpegs

    def spy(items, dev):
        calls.append(sorted(Path(item.name).name for item in items))
        if any(Path(item.name).name == "rgb3.jpg" for item in items):
            raise io.ImageFileError(f"{items[0].name}: simulated nvJPEG refusal")
        return real(items, dev)

    monkeypatch.setattr(io, "decode_jpegs", spy)
    errors = []
    summary = convkit.run("sharpen", tmp_path / "in", tmp_path / "gpu", batch_size=4,
                          format="png", decode="gpu", device=device, progress=False,
                          on_error=errors.append)
    assert (summary.written, summary.failed) == (9, 1), errors
    assert len(errors) == 1 and "cut.jpg" in errors[0] and "truncated" in errors[0], errors
    # JPEGs went to the device decoder in batches (png.png batched beside them, decoded on the
    # CPU); the batch with rgb3 in it was tried whole, then one by one; cmyk.jpg never went
    assert any(len(call) > 1 and "rgb3.jpg" in call for call in calls), calls
    assert ["rgb3.jpg"] in calls, calls
    assert not any(name in ("cmyk.jpg", "png.png") for call in calls for name in call), calls
    assert ["rotated.jpg"] in calls and ["grey.jpg"] in calls, calls
    cpu = convkit.run("sharpen", tmp_path / "in", tmp_path / "cpu", format="png",
                      progress=False, on_error=lambda line: None)
    assert cpu.written == 9
    for name, img in want.items():
        got = io.read_image(tmp_path / "gpu" / f"{Path(name).stem}.png")
        assert tuple(got.shape[1:]) == img.shape[:2], name  # the rotation was applied
        if name.endswith(".jpg") and name not in ("cmyk.jpg", "rgb3.jpg"):
            grey = name == "grey.jpg"
            raw = decode_jpeg(torch.frombuffer(bytearray((tmp_path / "in" / name).read_bytes()),
                                               dtype=torch.uint8),
                              mode=ImageReadMode.GRAY if grey else ImageReadMode.RGB,
                              device=device).cpu()
            if name == "rotated.jpg":
                raw = raw.rot90(-1, (1, 2))  # EXIF 6: clockwise
            img = raw.permute(1, 2, 0).numpy()
        ref = sharpened(img)
        diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - ref.reshape(img.shape))
        assert diff.max() <= 1, (name, diff.max())
        if device == "cpu":
            assert torch.equal(got, io.read_image(tmp_path / "cpu" / f"{Path(name).stem}.png"))
    with Image.open(tmp_path / "gpu" / "rotated.png") as im:  # EXIF kept, orientation reset
        assert im.getexif().get(0x0112) == 1


def test_decode_gpu_needs_cuda_and_a_known_value(tmp_path):
    src = write(tmp_path / "a.jpg", photo())
    with pytest.raises(UsageError, match="--decode gpu needs a CUDA device. Got device cpu"):
        convkit.run("sharpen", src, tmp_path / "b.png", device="cpu", decode="gpu")
    with pytest.raises(UsageError, match="decode should be 'cpu' or 'gpu'. Got 'nvjpeg'"):
        convkit.run("sharpen", src, tmp_path / "b.png", decode="nvjpeg")
    assert not (tmp_path / "b.png").exists()


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    for i in range(3):
        write(tmp_path / "in" / f"{i}.png", photo(seed=i))
    convkit.run("sharpen", tmp_path / "in", tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "0/3" in err and "img/s" in err  # total known, unit images per second


# --- sharding across processes (torchrun's RANK / WORLD_SIZE) -----------------------------


def test_rank_env_must_make_sense(tmp_path, monkeypatch):
    src = write(tmp_path / "a.png", photo())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UsageError, match=r"RANK should be in \[0, WORLD_SIZE\)"):
        convkit.run("sharpen", src, tmp_path / "b.png")


def test_two_ranks_write_every_output_exactly_once(tmp_path):
    n = 9
    imgs = {f"sub{i % 2}/{i}.png": photo(24, 32, seed=i) for i in range(n)}
    for rel, img in imgs.items():
        write(tmp_path / "in" / rel, img)
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "convkit", "sharpen", "-r", str(tmp_path / "in"), "-o",
               str(tmp_path / "out"), "--json", "--device", "cpu"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    summaries = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        summaries.append(json.loads(out))
    assert [s["rank"] for s in summaries] == [0, 1]
    # a deterministic split of the sorted inputs: 5 + 4, and together every file once
    assert [s["written"] for s in summaries] == [5, 4]
    assert files_under(tmp_path / "out") == sorted(imgs)
    for rel, img in imgs.items():
        got = cv2.imread(str(tmp_path / "out" / rel))
        assert np.abs(got.astype(int) - sharpened(img).astype(int)).max() <= 1


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    for i in range(6):
        write(tmp_path / "in" / f"{i}.png", photo(seed=i))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "convkit",
           "sharpen", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--json", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summaries = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    assert sum(s["written"] for s in summaries) == 6
    assert len(files_under(tmp_path / "out")) == 6


def test_huge_images_are_filtered_in_tiles_with_the_same_result(tmp_path, monkeypatch):
    from convkit.pipeline import tiling

    calls = []
    real = tiling.apply_tiled

    def spy(module, x, **kw):
        calls.append((tuple(x.shape), kw["out"] is x))
        return real(module, x, **kw)

    monkeypatch.setattr(tiling, "apply_tiled", spy)
    monkeypatch.setattr(pipeline, "HUGE_PIXELS", 100 * 100)  # "huge" from 100x100 up
    img = photo(150, 220, seed=3)
    src = write(tmp_path / "big.png", img)
    # PNG to PNG would stream (test below); BMP output takes the in-memory tiled path
    s = convkit.run("sharpen", src, tmp_path / "s.bmp", max_memory="64K", progress=False)
    assert s.written == 1 and calls == [((1, 3, 150, 220), True)]  # in place: no second image
    got = cv2.imread(str(tmp_path / "s.bmp"))
    assert np.abs(got.astype(int) - sharpened(img).astype(int)).max() <= 1

    s = convkit.run("avgpool(size=2)", src, tmp_path / "p.png", max_memory="64K",
                    progress=False)
    assert s.written == 1 and calls[-1] == ((1, 3, 150, 220), False)  # pooling: a new image
    ref = cv2.resize(img, (110, 75), interpolation=cv2.INTER_AREA)
    got = cv2.imread(str(tmp_path / "p.png"))
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="Invalid max_memory"):
        convkit.run("sharpen", src, tmp_path / "x.png", max_memory="lots")


def test_huge_png_streams_to_png_with_the_whole_image_result(tmp_path, monkeypatch):
    import cv2
    import numpy as np

    import convkit
    from convkit.pipeline import batches as pipeline
    from convkit.pipeline import streaming

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    src = tmp_path / "big.png"
    cv2.imwrite(str(src), img[..., ::-1])
    monkeypatch.setattr(pipeline, "HUGE_PIXELS", 10_000)
    called = []
    real = streaming.stream_png
    monkeypatch.setattr(streaming, "stream_png",
                        lambda *a, **k: called.append(real(*a, **k)) or called[-1])
    info = []
    summary = convkit.run("gaussian(sigma=2) | sharpen", [str(src)], str(tmp_path / "o.png"),
                          progress=False, on_info=info.append)
    assert summary.written == 1 and len(called) == 1 and called[0]["torch"] is False
    assert info == [f"{src}: streamed in {called[0]['bands']} bands of rows (opencv, without "
                    "torch)"]
    out = cv2.imread(str(tmp_path / "o.png"))[..., ::-1]
    blur = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 2)
    ref = cv2.filter2D(blur, -1,
                       np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32))
    assert np.abs(out.astype(float) - np.clip(np.round(ref), 0, 255)).max() <= 1


@pytest.mark.parametrize("spec", [
    "gaussian(sigma=2) | sharpen", "median(size=5, border=replicate)",
    "closing(size=5, shape=ellipse, iterations=2) | emboss(border=symmetric)",
    "sobel(border=constant, value=30)", "unsharp(sigma=1, amount=1.5) | laplacian",
    "kernel(weights=[[1, 2], [3, 4]]) | erode(size=4)", "box(size=[7, 3], border=circular)"])
@pytest.mark.parametrize("kind", ["rgb8", "rgba8", "grey16"])
def test_huge_png_streamed_without_torch_equals_the_whole_image(tmp_path, monkeypatch, spec,
                                                                kind):
    """Bands of a few dozen rows (a 64 KiB budget), each with the rows its chain reaches: the
    written PNG equals the image filtered whole (within a level of float rounding), for 8- and
    16-bit, grey, RGB and RGBA; a wrapping border is not streamed by this route (the far edge
    comes last) and goes through the modules, with the same result."""
    import cv2
    import numpy as np

    import convkit
    from convkit.pipeline import batches as pipeline
    from convkit.pipeline import streaming

    rng = np.random.default_rng(8)
    shape, top = {"rgb8": ((157, 61, 3), 256), "rgba8": ((157, 61, 4), 256),
                  "grey16": ((157, 61), 65536)}[kind]
    img = rng.integers(0, top, shape).astype(np.uint16 if top > 256 else np.uint8)
    src = tmp_path / "big.png"
    cv2.imwrite(str(src), img)
    whole = convkit.run(spec, [str(src)], str(tmp_path / "whole.png"), progress=False)
    assert whole.written == 1
    monkeypatch.setattr(pipeline, "HUGE_PIXELS", 100)
    called = []
    real = streaming.stream_png
    monkeypatch.setattr(streaming, "stream_png",
                        lambda *a, **k: called.append(real(*a, **k)) or called[-1])
    huge = convkit.run(spec, [str(src)], str(tmp_path / "huge.png"), progress=False,
                       max_memory=None if "circular" in spec else "64K")
    assert huge.written == 1 and len(called) == 1
    if "circular" in spec:
        assert called == [None]
    else:
        assert called[0]["bands"] >= 2 and called[0]["torch"] is False
    got = cv2.imread(str(tmp_path / "huge.png"), cv2.IMREAD_UNCHANGED)
    ref = cv2.imread(str(tmp_path / "whole.png"), cv2.IMREAD_UNCHANGED)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    # (1 level: a kernel's method may depend on the image's size, and float rounding with it)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_huge_png_streams_without_importing_torch(tmp_path):
    """The command line streams a huge PNG through a spec of fixed filters and never imports
    torch (HUGE_PIXELS lowered in the child)."""
    import cv2
    import numpy as np

    img = np.random.default_rng(2).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), img)
    loaded = run_cli(["apply", "gaussian(sigma=3) | sharpen", str(tmp_path / "big.png"), "-o",
                      str(tmp_path / "out.png"), "-q", "--max-memory", "64K"],
                     before=HUGE_FROM_100,
                     report="sorted(m for m in ('torch', 'torchvision') if m in sys.modules)")
    assert loaded == "[]"
    out = cv2.imread(str(tmp_path / "out.png"))
    blur = cv2.GaussianBlur(img.astype(np.float32), (19, 19), 3)
    ref = cv2.filter2D(blur, -1, np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32))
    assert np.abs(out.astype(float) - np.clip(np.round(ref), 0, 255)).max() <= 1


def test_huge_jpeg_fitting_the_budget_is_filtered_whole_without_torch(tmp_path):
    """A huge image that is not a streamable PNG (a JPEG from a 48 MP camera) is filtered
    whole by the torch-free plan where four times its bytes fit --max-memory, in tiles through
    torch where they do not; both equal OpenCV's sharpen (HUGE_PIXELS lowered in the child)."""
    img = photo(120, 90, seed=5)
    src = tmp_path / "big.jpg"
    assert cv2.imwrite(str(src), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    ref = sharpened(cv2.imread(str(src)))
    # 4 x 32 400 bytes fit 256K; they do not fit 64K
    for budget, torch_loaded in (("256K", "False"), ("64K", "True")):
        out = tmp_path / f"out-{budget}.png"
        loaded = run_cli(["sharpen", str(src), "-o", str(out), "-q", "--max-memory", budget],
                         before=HUGE_FROM_100, report="'torch' in sys.modules")
        assert loaded == torch_loaded, budget
        assert np.abs(cv2.imread(str(out)).astype(int) - ref.astype(int)).max() <= 1, budget


def _flight_spy(monkeypatch) -> list[int]:
    """Counts the images between the start of their decode and the end of their write; returns
    the list of counts seen at each decode's start."""
    import threading

    from convkit.io import images as cio

    lock, now, seen = threading.Lock(), [0], []
    read, write = cio.read_array_with_info, cio.write_image

    def spy_read(*a, **kw):
        with lock:
            now[0] += 1
            seen.append(now[0])
        return read(*a, **kw)

    def spy_write(*a, **kw):
        try:
            return write(*a, **kw)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(cio, "read_array_with_info", spy_read)
    monkeypatch.setattr(cio, "write_image", spy_write)
    return seen


@pytest.mark.parametrize("budget, most", [("300K", 1), ("100M", None)])
def test_images_in_flight_stay_within_max_memory(tmp_path, monkeypatch, budget, most):
    """Each image is weighed by its header (200x300 RGB: 180 kB of pixels, x3) before its
    decode: within 300 KB one image is in flight at a time (it exceeds the budget alone and
    runs alone); within 100 MB the windows run ahead (several at a time)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):
        write(src / f"{i}.png", photo(200, 300, seed=i))
    seen = _flight_spy(monkeypatch)
    s = convkit.run("sharpen", src, tmp_path / "out", max_memory=budget, workers=2,
                    progress=False)
    assert s.written == 8 and len(seen) == 8
    if most is not None:
        assert max(seen) <= most, seen
    else:
        assert max(seen) > 1, seen  # (the window did run ahead)
    for i in range(8):  # and every output is right
        got = cv2.imread(str(tmp_path / "out" / f"{i}.png"))
        assert np.abs(got.astype(int) - sharpened(photo(200, 300, seed=i)).astype(int)).max() <= 1


def test_batches_waiting_are_filtered_to_make_room(tmp_path, monkeypatch):
    """With batches of 4 and room for 2 images, the batch that waits is filtered early (a
    window that waited for a full batch within the budget would never finish)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        write(src / f"{i}.png", photo(100, 100, seed=i))
    seen = _flight_spy(monkeypatch)
    s = convkit.run("sharpen", src, tmp_path / "out", max_memory=2 * 3 * 30000 + 1,
                    batch_size=4, workers=2, device="cpu", progress=False)
    assert s.written == 6 and max(seen) <= 2, seen


@pytest.mark.parametrize("name, make", [
    ("rgb8.png", lambda p: cv2.imwrite(p, np.zeros((30, 50, 3), np.uint8))),
    ("rgba16.png", lambda p: cv2.imwrite(p, np.zeros((30, 50, 4), np.uint16))),
    ("grey16.png", lambda p: cv2.imwrite(p, np.zeros((30, 50), np.uint16))),
    ("grey.jpg", lambda p: cv2.imwrite(p, np.zeros((30, 50), np.uint8))),
    ("rgb.jpg", lambda p: cv2.imwrite(p, np.zeros((30, 50, 3), np.uint8))),
    ("rgb16.tif", lambda p: cv2.imwrite(p, np.zeros((30, 50, 3), np.uint16))),
    ("float.tif", lambda p: cv2.imwrite(p, np.zeros((30, 50), np.float32))),
    ("rgb.webp", lambda p: cv2.imwrite(p, np.zeros((30, 50, 3), np.uint8))),
    ("rgb.bmp", lambda p: cv2.imwrite(p, np.zeros((30, 50, 3), np.uint8))),
    ("cmyk.jpg", lambda p: __import__("PIL.Image").Image.new("CMYK", (50, 30)).save(p)),
    ("palette.gif", lambda p: __import__("PIL.Image").Image.new("P", (50, 30)).save(p)),
])
def test_declared_bytes_are_the_decoded_bytes(tmp_path, name, make):
    """The header's word for the decoded size, against the decoder's array: equal, or (a
    palette, read as RGB or RGBA by its transparency) at most RGBA's."""
    from convkit.io import images as cio

    p = str(tmp_path / name)
    make(p)
    got = cio.declared_bytes(p)
    decoded = cio.read_array_with_info(p)[0].nbytes
    if name.startswith("palette"):
        assert decoded <= got == 30 * 50 * 4
    else:
        assert got == decoded, (got, decoded)


def test_declared_bytes_of_a_jpeg_with_much_metadata(tmp_path):
    """A 200 kB ICC profile puts the frame header past the first 64 KiB: Pillow reads on."""
    from PIL import Image

    from convkit.io import images as cio

    p = tmp_path / "icc.jpg"
    Image.new("RGB", (400, 300)).save(p, icc_profile=b"\0" * 200_000)
    assert cio.declared_bytes(p) == 400 * 300 * 3


def test_declared_bytes_of_what_is_not_an_image(tmp_path):
    from convkit.io import images as cio

    (tmp_path / "t.png").write_text("not an image")
    os.mkfifo(tmp_path / "f.png")
    assert cio.declared_bytes(tmp_path / "t.png") is None
    assert cio.declared_bytes(tmp_path / "f.png") is None  # (and it did not block)
    assert cio.declared_bytes(tmp_path / "missing.png") is None
