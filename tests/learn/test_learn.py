"""Learned filters: the model, data, metrics, model files, training, resume, the CLI commands.

References are independent of the code under test: OpenCV's filter2D and GaussianBlur for the
kernels a linear model must recover, scikit-image's SSIM, hand-computed PSNR and shifts, the
safetensors package for the file format, and a pickle that would run code.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import DEVICES, SAMPLES
from PIL import Image

import convkit
from convkit.cli.learn import info_command, train_command
from convkit.cli.main import cli as cli_main
from convkit.io.atomic import is_temp_name
from convkit.learn import files as LF
from convkit.learn.data import build_data, read_image
from convkit.learn.metrics import clip_aware_error, psnr, quantize, ssim
from convkit.learn.model import LearnedFilter, ModelConfig
from convkit.learn.train import Trainer, TrainingError, TrainingInterrupted, sidecar, train

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# --- helpers ---------------------------------------------------------------------------------
def _photo(name: str = "astronaut.png") -> np.ndarray:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"samples/{name} is missing")
    return np.asarray(Image.open(path).convert("RGB"))


def _folder(tmp_path: Path, n: int = 3, size: tuple[int, int] = (40, 56), grey=False) -> Path:
    """``n`` crops of real photos, as PNG files in a new folder."""
    d = tmp_path / "photos"
    d.mkdir()
    srcs = [_photo(s) for s in ("astronaut.png", "chelsea.png", "coffee.png")]
    h, w = size
    corners = ((90, 180), (80, 180), (150, 200))  # textured parts of each photo
    for i in range(n):
        src = srcs[i % 3]
        y0, x0 = corners[i % 3][0] + 17 * (i // 3), corners[i % 3][1] + 23 * (i // 3)
        crop = src[y0 : y0 + h, x0 : x0 + w]
        img = Image.fromarray(crop).convert("L") if grey else Image.fromarray(crop)
        img.save(d / f"img{i}.png")
    return d


def _pairs(tmp_path: Path, crop, target) -> Path:
    """A pairs folder (input/, target/) of crops of the three sample photos: ``crop(i)`` gives
    the i-th photo's (rows, cols) slices, ``target`` maps an input crop to its target."""
    d = tmp_path / "pairs"
    (d / "input").mkdir(parents=True)
    (d / "target").mkdir()
    for i, name in enumerate(("astronaut.png", "chelsea.png", "coffee.png")):
        img = _photo(name)[crop(i)]
        Image.fromarray(img).save(d / "input" / f"p{i}.png")
        Image.fromarray(np.ascontiguousarray(target(img))).save(d / "target" / f"p{i}.png")
    return d


def _quick(**kw):
    """Small, fast training settings."""
    base = dict(patch=16, batch_size=4, steps=6, epoch_steps=3, val=1, val_size=32,
                depth=3, width=8, strip=False)
    base.update(kw)
    return base


# --- the model -------------------------------------------------------------------------------
CONFIGS = [
    ModelConfig(arch="linear", kernel=5),
    ModelConfig(depth=3, width=8),
    ModelConfig(depth=4, width=8, kernel=5, activation="prelu"),
    ModelConfig(depth=4, width=8, pool=2),
    ModelConfig(depth=5, width=4, pool=4, border="replicate"),
    ModelConfig(depth=3, width=8, channels=3),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe())
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (17, 30)])
def test_model_keeps_size(cfg, hw):
    m = LearnedFilter(cfg)
    c = 3
    x = torch.rand(2, c, *hw)
    assert m(x).shape == x.shape
    assert m(x[0]).shape == x[0].shape


def test_fresh_linear_model_is_identity():
    m = LearnedFilter(ModelConfig(arch="linear", kernel=7))
    x = torch.rand(1, 3, 9, 11)
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("cfg", CONFIGS[1:5], ids=lambda c: c.describe())
def test_reach_is_the_receptive_field(cfg):
    """Changing the input farther than ``reach`` from a pixel never changes that pixel."""
    torch.manual_seed(0)
    m = LearnedFilter(cfg).eval()
    for p in m.parameters():  # make every path count, the last layer included
        p.data.normal_(0, 0.3)
    n = m.reach[0]
    size = 2 * n + 21
    x = torch.rand(1, 1, size, size)
    c = size // 2
    x2 = x.clone()
    x2[..., :, c + n + 1 :] = torch.rand_like(x2[..., :, c + n + 1 :])
    x2[..., : c - n, :] = torch.rand_like(x2[..., : c - n, :])
    with torch.no_grad():
        a, b = m(x), m(x2)
    assert torch.equal(a[..., c, c], b[..., c, c])
    assert not torch.equal(a, b)


@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[3], CONFIGS[4]],
                         ids=lambda c: c.describe())
def test_tiles_with_the_reach_as_halo_equal_the_whole_image(cfg):
    torch.manual_seed(1)
    m = LearnedFilter(cfg).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    n, step = m.reach[0], m.tile_align
    x = torch.rand(1, 2, 70, 90)
    with torch.no_grad():
        whole = m(x)
        for t0, l0, th, tw in [(0, 0, 24, 32), (24, 32, 20, 28), (44, 60, 26, 30), (8, 4, 30, 40)]:
            assert t0 % step == 0 and l0 % step == 0
            a0, b0 = max(0, t0 - n), max(0, l0 - n)
            tile = x[..., a0 : t0 + th + n, b0 : l0 + tw + n]
            out = m(tile)[..., t0 - a0 : t0 - a0 + th, l0 - b0 : l0 - b0 + tw]
            torch.testing.assert_close(out, whole[..., t0 : t0 + th, l0 : l0 + tw],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [CONFIGS[3], CONFIGS[4]], ids=lambda c: c.describe())
def test_convkit_tiling_of_a_learned_filter_equals_the_whole_image(cfg):
    """The contract with convkit.pipeline.tiling: reach and tile_align are enough to tile
    exactly."""
    from convkit.backends.engine import apply
    from convkit.pipeline.tiling import apply_tiled

    torch.manual_seed(4)
    m = LearnedFilter(cfg).eval()
    x = torch.from_numpy(_photo()[:61, :83].copy()).permute(2, 0, 1)[None]
    with torch.no_grad():
        whole = apply(m, x)
        tiled = apply_tiled(m, x, tile=16)
    assert torch.equal(tiled, whole)


def test_per_channel_model_runs_each_channel_alone():
    torch.manual_seed(2)
    m = LearnedFilter(ModelConfig(depth=3, width=8)).eval()
    x = torch.rand(2, 4, 12, 13)
    with torch.no_grad():
        out = m(x)
        for c in range(4):
            torch.testing.assert_close(out[:, c : c + 1], m(x[:, c : c + 1]))


def test_rgb_model_on_grey_replicates_and_averages():
    torch.manual_seed(3)
    m = LearnedFilter(ModelConfig(depth=3, width=8, channels=3)).eval()
    g = torch.rand(1, 1, 10, 10)
    with torch.no_grad():
        expect = m(g.expand(1, 3, 10, 10)).mean(1, keepdim=True)
        torch.testing.assert_close(m(g), expect)
    with pytest.raises(ValueError, match="1 or 3 channels. Got 2"):
        m(torch.rand(1, 2, 5, 5))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"kernel": 4}, "odd"),
        ({"arch": "linear", "pool": 2}, "pool > 1 needs a residual"),
        ({"activation": "swish"}, "Expected one of relu"),
        ({"depth": 1}, "depth of a residual net"),
        ({"border": "constant"}, "Expected one of reflect"),
        ({"channels": 2}, "channels should be 1"),
        ({"arch": "unet"}, "Invalid arch"),
    ],
)
def test_model_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kw)


def test_model_outputs_are_differentiable_and_unsaved_model_has_no_spec():
    m = LearnedFilter(ModelConfig(depth=3, width=4))
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and m.head[0].weight.grad is not None
    assert "residual: 3 conv" in repr(m)
    with pytest.raises(NotImplementedError, match="save it"):
        m.spec()


# --- metrics ---------------------------------------------------------------------------------
def test_psnr_hand_computed():
    a = torch.zeros(1, 1, 4, 4)
    b = a.clone()
    b[0, 0, 0, 0] = 0.5  # MSE = 0.25 / 16
    assert psnr(b, a) == pytest.approx(10 * math.log10(16 / 0.25), abs=1e-12)
    assert psnr(a, a) == math.inf


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
    skm = pytest.importorskip("skimage.metrics")
    img = _photo()[100:190, 150:260].astype(np.float64) / 255
    if channels == 1:
        img = img.mean(axis=2, keepdims=True)
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 0.08, img.shape), 0, 1)
    ref = skm.structural_similarity(
        img, noisy, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=2,
    )
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
    assert ssim(t(noisy), t(img)) == pytest.approx(ref, abs=1e-6)
    assert ssim(t(img), t(img)) == pytest.approx(1.0)


def test_clip_aware_error_ignores_overshoot_at_clipped_targets():
    target = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5])
    pred = torch.tensor([-0.2, 0.1, 1.3, 0.9, 0.4])
    torch.testing.assert_close(clip_aware_error(pred, target),
                               torch.tensor([0.0, 0.1, 0.0, -0.1, -0.1]))
    assert torch.equal(quantize(torch.tensor([-1.0, 0.5 / 255, 2.0])),
                       torch.tensor([0.0, 0.0, 1.0]))


# --- data ------------------------------------------------------------------------------------
def test_mimic_crops_flip_with_the_target(tmp_path):
    """A one-pixel shift (asymmetric kernel) as the chain: for every crop, flipped or not, the
    target equals the input crop shifted by one column, borders included (the crop's context
    and the chain use the same reflect border). Wrong flips or offsets break the equality."""
    folder = _folder(tmp_path, n=2, size=(20, 24))
    data = build_data(folder, "mimic", chain="kernel(weights=[[0,0,0],[1,0,0],[0,0,0]])", val=0)
    gen = torch.Generator().manual_seed(0)
    ctx, p = 3, 12
    for _ in range(6):
        x, y = data.batch(8, p, ctx, gen, flip=True)
        assert x.shape == (24, 1, p + 2 * ctx, p + 2 * ctx) and y.shape == (24, 1, p, p)
        shifted = x[..., ctx : ctx + p, ctx - 1 : ctx - 1 + p]
        flipped_h = x.flip(-1)[..., ctx : ctx + p, ctx - 1 : ctx - 1 + p].flip(-1)
        # in the frame of a horizontally flipped image the kernel still shifts right, so each
        # sample matches exactly one of the two (both only on flat crops)
        ok = [torch.equal(y[i], shifted[i]) or torch.equal(y[i], flipped_h[i])
              for i in range(len(y))]
        assert all(ok)
        assert sum(torch.equal(y[i], shifted[i]) for i in range(len(y))) >= 1


def test_mimic_targets_equal_opencv_on_the_whole_image(tmp_path):
    """Crops with their targets, no flips: the target of a crop equals cv2.filter2D of the
    whole image at that place, within rounding (1 grey level)."""
    folder = _folder(tmp_path, n=1, size=(30, 40), grey=True)
    k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16
    data = build_data(folder, "mimic", chain="kernel(weights=[[1,2,1],[2,4,2],[1,2,1]])", val=0)
    img = np.asarray(Image.open(folder / "img0.png"))
    ref = torch.from_numpy(cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101))
    gen = torch.Generator().manual_seed(5)
    x, y = data.batch(30, 30, 0, gen, flip=False)
    # with patch = image height every crop spans all rows; find its columns by matching input
    full = torch.from_numpy(img.copy()).float() / 255
    for i in range(len(x)):
        left = next(j for j in range(11) if torch.equal(x[i, 0], full[:, j : j + 30]))
        diff = (y[i, 0] * 255 - ref[:, left : left + 30].float()).abs()
        assert diff.max() <= 1


def test_denoise_batches_add_quantised_noise_of_sigma(tmp_path):
    folder = _folder(tmp_path, n=2, size=(48, 48), grey=True)
    data = build_data(folder, "denoise", sigma=20, val=0)
    gen = torch.Generator().manual_seed(0)
    x, y = data.batch(32, 32, 2, gen)
    noise = x[..., 2:-2, 2:-2] - y
    inner = (y > 0.25) & (y < 0.75)  # away from clipping
    assert noise[inner].std().item() * 255 == pytest.approx(20, rel=0.05)
    assert torch.equal(torch.round(x * 255), x * 255)


def test_pairs_report_and_skip(tmp_path):
    d = tmp_path / "pairs"
    (d / "input").mkdir(parents=True)
    (d / "target").mkdir()
    img = _photo()[:32, :32]
    Image.fromarray(img).save(d / "input" / "good.png")
    Image.fromarray(img[::-1]).save(d / "target" / "good.jpg")
    Image.fromarray(img).save(d / "input" / "size.png")
    Image.fromarray(img[:30]).save(d / "target" / "size.png")
    Image.fromarray(img).save(d / "input" / "chan.png")
    Image.fromarray(img).convert("L").save(d / "target" / "chan.png")
    Image.fromarray(img).save(d / "input" / "alone.png")
    Image.fromarray(img).save(d / "target" / "orphan.png")
    (d / "input" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(img).save(d / "target" / "broken.png")
    data = build_data(d, "pairs", val=0)
    assert [it.name for it in data.train] == ["good"]
    notes = "\n".join(data.notes)
    assert "size.png: input is 32x32 with 3 channels, target size.png is 32x30" in notes
    assert "chan.png" in notes and "32x32 with 1 channel" in notes
    assert "alone.png: no target" in notes and "orphan.png: no input" in notes
    assert "broken.png" in notes
    assert len(data.notes) == 5


@pytest.mark.parametrize(
    "setup, kw, match",
    [
        ("empty", {"mode": "mimic", "chain": "sharpen"}, "no images found; supported"),
        ("empty", {"mode": "pairs"}, "needs the subfolders input/ and target/"),
        ("nopairs", {"mode": "pairs"}, "no usable input/target pair"),
        ("photos", {"mode": "mimic", "chain": "sharpen("}, "invalid chain"),
        ("photos", {"mode": "mimic", "chain": "avgpool(size=2)"}, "not the size of its input"),
        ("photos", {"mode": "denoise", "sigma": 0}, "sigma should be a number > 0"),
        ("missing", {"mode": "mimic", "chain": "sharpen"}, "not a folder"),
    ],
)
def test_bad_training_data(tmp_path, setup, kw, match):
    d = tmp_path / "d"
    if setup == "empty":
        d.mkdir()
        (d / "notes.txt").write_text("no images here")
    elif setup == "nopairs":
        (d / "input").mkdir(parents=True)
        (d / "target").mkdir()
    elif setup == "photos":
        d = _folder(tmp_path, n=1)
    with pytest.raises(ValueError, match=match):
        build_data(d, **kw)


def test_read_image_drops_alpha_and_keeps_16_bit(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 7
    Image.fromarray(rgba).save(tmp_path / "a.png")
    t = read_image(tmp_path / "a.png")
    assert t.shape == (3, 4, 5) and t.dtype == torch.uint8 and int(t[0, 0, 0]) == 200
    g = read_image(tmp_path / "a.png", grey=True)
    assert g.shape == (1, 4, 5) and int(g[0, 0, 0]) == round(0.299 * 200)
    a16 = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    cv2.imwrite(str(tmp_path / "g16.png"), a16)
    t16 = read_image(tmp_path / "g16.png")
    assert t16.dtype == torch.uint16 and torch.equal(t16[0].to(torch.int32),
                                                     torch.from_numpy(a16.astype(np.int32)))


def test_validation_split_follows_the_seed(tmp_path):
    folder = _folder(tmp_path, n=6, size=(16, 16))
    a = build_data(folder, "mimic", chain="sharpen", val=2, seed=1)
    b = build_data(folder, "mimic", chain="sharpen", val=2, seed=1)
    assert [i.name for i in a.val] == [i.name for i in b.val] and len(a.val) == 2
    assert len(a.train) == 4 and a.source["images"] == 6


def test_the_samples_folder_holds_only_the_photos(tmp_path):
    # the README's gallery strip is no training image, nor an image to filter with the photos
    photos = ["astronaut.png", "chelsea.png", "coffee.png"]
    data = build_data(SAMPLES, "denoise", sigma=5, val=0)
    assert sorted(it.name for it in data.train) == photos and not data.notes
    from convkit.pipeline.batches import plan

    jobs, errors = plan(SAMPLES, tmp_path / "out")
    assert sorted(Path(j.src).name for j in jobs) == photos and not errors


def test_training_scan_skips_hidden_files_and_folders_as_the_pipeline_does(tmp_path):
    # macOS leaves ._NAME resource forks (not images) and .DS_Store beside the photos; a hidden
    # folder or file may hold real images: neither the training scan nor `convkit apply` reads them
    from convkit.learn.data import list_images
    from convkit.pipeline.batches import plan

    d = _folder(tmp_path, n=2, size=(16, 16))
    (d / "._img0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (d / "sub").mkdir()
    (d / ".hidden").mkdir()
    for dest in (d / ".img2.png", d / "sub" / "img3.png", d / ".hidden" / "img4.png"):
        dest.write_bytes((d / "img0.png").read_bytes())
    for recursive, names in ((False, ["img0.png", "img1.png"]),
                             (True, ["img0.png", "img1.png", "sub/img3.png"])):
        found = [p.relative_to(d).as_posix() for p in list_images(d, recursive)]
        assert found == names
        jobs, errors = plan(d, tmp_path / "out", recursive=recursive)
        assert sorted(Path(j.src).relative_to(d).as_posix() for j in jobs) == names
        data = build_data(d, "denoise", sigma=5, val=0, recursive=recursive)
        assert sorted(Path(it.name).as_posix() for it in data.train) == names
        assert not data.notes and data.source["skipped"] == 0


# --- model files -----------------------------------------------------------------------------
def _trained_linear(tmp_path: Path) -> tuple[LearnedFilter, Path]:
    torch.manual_seed(0)
    m = LearnedFilter(ModelConfig(arch="linear", kernel=3))
    with torch.no_grad():
        m.conv.weight.copy_(torch.tensor([[[[0, -1, 0], [-1, 5, -1], [0, -1, 0]]]]).float())
    path = tmp_path / "m.pt"
    LF.save_model(m, path, {"val_psnr": 40.0}, {"mode": "mimic", "chain": "sharpen"})
    return m, path


def test_model_file_round_trip_and_chain_use(tmp_path):
    m, path = _trained_linear(tmp_path)
    loaded = convkit.load_model(path)
    assert loaded.spec() == f"learned(path={path})"
    assert loaded.metrics == {"val_psnr": 40.0} and loaded.provenance["chain"] == "sharpen"
    img = _photo()[:40, :50]
    # the loaded sharpen model on a uint8 image equals OpenCV's filter2D (1 grey level)
    ref = cv2.filter2D(img, -1, np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
                       borderType=cv2.BORDER_REFLECT_101)
    for spec in (str(path), f"learned(path={path})", f"gaussian(sigma=1) | {path}"):
        out = convkit.process(img, spec)
        if "gaussian" not in spec:
            assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
        ch = convkit.chain(spec)
        assert str(ch) == str(convkit.chain(str(ch)))  # prints back as a spec that parses
    rgba = np.dstack([img, np.full(img.shape[:2], 99, np.uint8)])
    out = convkit.process(rgba, str(path))
    assert (out[..., 3] == 99).all() and np.abs(out[..., :3].astype(int) - ref).max() <= 1


def test_safetensors_model_files(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    m, _ = _trained_linear(tmp_path)
    path = tmp_path / "m.safetensors"
    LF.save_model(m, path, {"val_psnr": 1.5}, {"mode": "pairs"})
    tensors = st.load_file(str(path))  # the reference reader agrees on the weights
    for k, v in m.state_dict().items():
        assert torch.equal(tensors[k], v)
    loaded = convkit.load_model(path)
    assert loaded.metrics["val_psnr"] == 1.5
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), m(x))
    # a file written by the safetensors package with the same metadata loads too
    meta = {"format": LF.FORMAT, "format_version": "1", "config": json.dumps(m.config.to_dict())}
    other = tmp_path / "other.safetensors"
    st.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(other), meta)
    torch.testing.assert_close(convkit.load_model(other)(x), m(x))
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) - 9])
    with pytest.raises(ValueError, match=r"cut.safetensors: not a readable model file"):
        convkit.load_model(tmp_path / "cut.safetensors")


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("how", ["torch_zip", "raw_pickle", "inside_state_dict"])
def test_a_model_file_that_would_run_code_is_refused(tmp_path, how):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    if how == "torch_zip":
        torch.save({"format": LF.FORMAT, "payload": _Payload(marker)}, path)
    elif how == "raw_pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        m, _ = _trained_linear(tmp_path)
        payload = LF.model_payload(m)
        payload["state_dict"]["conv.bias"] = _Payload(marker)
        torch.save(payload, path)
    # the payload really does run code when unpickled the unsafe way
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"evil.pt: refused to load: .*would run code") as e:
        convkit.load_model(path)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    result = CliRunner().invoke(info_command, [str(path)])
    assert result.exit_code == 1 and "refused to load" in result.output
    assert not marker.exists()
    # the unsafe way proves the payload is live
    if how == "raw_pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncate", "not a readable model file"),
        ("zero", "not a readable model file"),
        ("random", "not a readable model file"),
        ("text", "not a readable model file"),
        ("plain_dict", "not a convkit model file"),
        ("newer", "written by a newer convkit"),
        ("nan", "not finite"),
        ("wrong_shape", "weights do not fit the architecture"),
        ("bad_config", "architecture"),
        ("missing", "no such model file"),
    ],
)
def test_broken_model_files_give_one_line_errors(tmp_path, damage, match):
    m, path = _trained_linear(tmp_path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "zero":
        path.write_bytes(b"")
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif damage == "text":
        path.write_text("hello, I am not a model\n")
    elif damage == "plain_dict":
        torch.save({"weight": torch.zeros(3)}, path)
    else:
        payload = LF.model_payload(m)
        if damage == "newer":
            payload["format_version"] = LF.FORMAT_VERSION + 1
        elif damage == "nan":
            payload["state_dict"]["conv.weight"][0, 0, 0, 0] = float("nan")
        elif damage == "wrong_shape":
            payload["state_dict"]["conv.weight"] = torch.zeros(1, 1, 5, 5)
        elif damage == "bad_config":
            payload["config"]["kernel"] = 4
        torch.save(payload, path)
        if damage == "missing":
            path.unlink()
    with pytest.raises(ValueError, match=match) as e:
        convkit.load_model(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_registry_builds_learned(tmp_path):
    _, path = _trained_linear(tmp_path)
    f = convkit.get_filter("learned", path=str(path))
    assert f.spec() == f"learned(path={path})" and f.reach == (1, 1, 1, 1)


# --- training --------------------------------------------------------------------------------
def test_linear_model_recovers_a_kernel_exactly(tmp_path):
    folder = _folder(tmp_path, n=3, size=(48, 64))
    k = [[1, 0, -1], [2, 3, -2], [0, 1, 0]]  # asymmetric: flips must be right
    out = tmp_path / "k.pt"
    res = train(folder, out, chain=f"kernel(weights={k}, scale=4)", arch="linear", kernel=3,
                **_quick(steps=8, patch=24))
    m = convkit.load_model(out)
    expect = torch.tensor(k, dtype=torch.float32) / 4
    # the targets come from convkit's uint8 engine, which may round a pixel to the other side
    # (1 grey level, as OpenCV's fixed point does): that limits the precision to about 1e-3
    torch.testing.assert_close(m.conv.weight[0, 0], expect, atol=1e-3, rtol=0)
    assert abs(m.conv.bias.item()) < 1e-3
    assert res.metrics["val_psnr"] > 55 and res.metrics["baseline_psnr"] < 30


def test_pairs_from_opencv_teach_the_gaussian(tmp_path):
    d = _pairs(tmp_path, lambda i: np.s_[50 + 10 * i : 130 + 10 * i, 60:160],
               lambda img: cv2.GaussianBlur(img, (5, 5), 1.2, borderType=cv2.BORDER_REFLECT_101))
    out = tmp_path / "g.pt"
    train(d, out, arch="linear", kernel=5, **_quick(steps=6, patch=32))
    g = cv2.getGaussianKernel(5, 1.2)
    expect = torch.from_numpy((g @ g.T).astype(np.float32))
    torch.testing.assert_close(convkit.load_model(out).conv.weight[0, 0], expect, atol=1.5e-3,
                               rtol=0)


def test_rgb_model_learns_what_a_per_channel_model_cannot(tmp_path):
    """Swapping red and blue mixes channels: the joint RGB model (channels=3) learns it exactly,
    the default per-channel model cannot."""
    d = _pairs(tmp_path, lambda i: np.s_[60 + 9 * i : 108 + 9 * i, 150:214],
               lambda img: img[..., ::-1])
    joint = train(d, tmp_path / "rgb.pt", arch="linear", kernel=1, channels=3, **_quick())
    w = convkit.load_model(tmp_path / "rgb.pt").conv.weight[:, :, 0, 0]
    torch.testing.assert_close(w, torch.eye(3).flip(0), atol=1e-3, rtol=0)
    assert joint.metrics["val_psnr"] > 60
    single = train(d, tmp_path / "one.pt", arch="linear", kernel=1, **_quick())
    assert single.metrics["val_psnr"] < 30


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["mimic", "denoise"])
def test_residual_net_improves_on_the_input(tmp_path, mode, device):
    folder = _folder(tmp_path, n=3, size=(48, 64), grey=mode == "denoise")
    opts = {"chain": "median(size=3)"} if mode == "mimic" else {"sigma": 30.0}
    res = train(folder, tmp_path / "r.pt", device=device, lr=3e-3,
                **_quick(steps=40, epoch_steps=20, batch_size=8, patch=24), **opts)
    assert res.metrics["val_psnr"] > res.metrics["baseline_psnr"] + 0.3
    assert res.metrics["device"].startswith(device)


def test_training_writes_log_pictures_and_provenance(tmp_path):
    folder = _folder(tmp_path, n=3)
    out = tmp_path / "run" / "m.pt"
    res = train(folder, out, chain="gaussian(sigma=1)", **_quick(strip=True))
    rows = [json.loads(line) for line in sidecar(out, "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"train_loss", "val_psnr", "val_ssim", "lr", "seconds"} <= set(r) for r in rows)
    for kind in ("curves.png", "kernels.png", "strip.png"):
        with Image.open(sidecar(out, kind)) as im:
            assert im.width > 50 and im.height > 20
    m = convkit.load_model(out)
    p = m.provenance
    assert p["mode"] == "mimic" and p["chain"] == "gaussian(sigma=1)"
    assert p["images"] == 3 and p["train_images"] == 2 and p["val_images"] == 1
    assert p["data"] == str(folder.resolve())
    assert m.metrics["val_psnr"] == max(r["val_psnr"] for r in rows)
    assert res.history == rows
    assert not [f for f in os.listdir(out.parent) if is_temp_name(f)]


def test_model_written_inside_the_data_folder_does_not_train_on_its_own_pictures(tmp_path):
    """-o inside the data folder: the pictures of the first run (PNG images like the photos)
    are not read as training images by the next run."""
    folder = _folder(tmp_path, n=3)
    out = folder / "m.pt"
    train(folder, out, chain="gaussian(sigma=1)", force=True, **_quick(strip=True))
    assert all(sidecar(out, k).is_file() for k in ("curves.png", "kernels.png", "strip.png"))
    train(folder, out, chain="gaussian(sigma=1)", force=True, **_quick(strip=True))
    p = convkit.load_model(out).provenance
    assert p["images"] == 3 and p["skipped"] == 0, p


def _run_weights(path: Path) -> dict:
    return {k: v.clone() for k, v in convkit.load_model(path).state_dict().items()}


def test_resume_equals_an_uninterrupted_run(tmp_path):
    folder = _folder(tmp_path, n=3)
    opts = _quick(steps=10, epoch_steps=4, lr=3e-3)
    full = train(folder, tmp_path / "a" / "m.pt", chain="median(size=3)", **opts)

    def stop_at_6(t: Trainer) -> None:
        if t.step == 6:
            t.request_stop()

    b = tmp_path / "b" / "m.pt"
    with pytest.raises(TrainingInterrupted, match="at step 6 of 10"):
        train(folder, b, chain="median(size=3)", callbacks=[stop_at_6], **opts)
    # a fresh start over the checkpoint is refused
    with pytest.raises(ValueError, match="resume it with --resume"):
        train(folder, b, chain="median(size=3)", **opts)
    resumed = train(folder, b, resume=True)
    assert resumed.history == [
        {**r, "seconds": s["seconds"]} for r, s in zip(full.history, resumed.history,
                                                        strict=True)
    ]
    wa, wb = _run_weights(tmp_path / "a" / "m.last.ckpt"), _run_weights(b.with_suffix(
        ".last.ckpt"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    folder = _folder(tmp_path, n=3)
    out = tmp_path / "m.pt"

    def explode(t: Trainer) -> None:
        if t.step == 4:
            t.cfg.lr = 1e12  # the next steps blow the weights up

    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step \d+ .*last good"):
        train(folder, out, chain="sharpen", callbacks=[explode],
              **_quick(steps=40, epoch_steps=4, loss="l1"))
    ck = convkit.load_model(sidecar(out, "last.ckpt"))
    assert all(torch.isfinite(v).all() for v in ck.state_dict().values())
    assert convkit.load_model(out).metrics["step"] == 4
    payload = LF.read_model_file(sidecar(out, "last.ckpt"))
    assert payload["train_state"]["step"] == 4


@pytest.mark.parametrize("device", DEVICES)
def test_model_moves_between_devices(tmp_path, device):
    _, path = _trained_linear(tmp_path)
    m = convkit.load_model(path)
    x = torch.rand(1, 3, 20, 20)
    ref = m(x)
    torch.testing.assert_close(m.to(device)(x.to(device)).cpu(), ref, atol=1e-5, rtol=1e-5)


# --- command line ----------------------------------------------------------------------------
def test_cli_train_and_info(tmp_path):
    folder = _folder(tmp_path, n=3)
    out = tmp_path / "m.pt"
    runner = CliRunner()
    args = [str(folder), "-o", str(out), "--mimic", "gaussian(sigma=1) | sharpen", "--steps",
            "4", "--epoch-steps", "2", "--patch", "16", "--batch-size", "2", "--depth", "3",
            "--width", "8", "--val", "1", "--no-strip"]
    r = runner.invoke(train_command, [*args, "-q", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["output"] == str(out) and summary["metrics"]["steps_total"] == 4
    assert LF.read_model_file(summary["checkpoint"])["train_state"]["step"] == 4
    r = runner.invoke(info_command, [str(out)])
    assert r.exit_code == 0
    for text in ("residual: 3 conv 3x3, width 8", "parameters:", "mimic of 'gaussian(sigma=1) | "
                 "sharpen'", "2 for training, 1 for validation", "validation PSNR"):
        assert text in r.output
    r = runner.invoke(info_command, [str(sidecar(out, "last.ckpt")), "--json"])
    assert json.loads(r.output)["checkpoint"]["step"] == 4
    # resume with a longer run; model options are ignored with a note
    r = runner.invoke(train_command, [*args[:5], "--steps", "6", "--depth", "7", "--resume"])
    assert r.exit_code == 0, r.output
    assert "ignored: --mimic, --depth" in r.output
    assert convkit.load_model(sidecar(out, "last.ckpt")).config.depth == 3


def test_cli_train_summary_tells_the_whole_run_as_info_does(tmp_path, monkeypatch):
    import convkit.learn.train as T

    scores = [30.0, 29.0]  # the first epoch's weights stay the best

    def fake_evaluate(model, val_set, device):
        psnr = 25.0 if isinstance(model, torch.nn.Identity) else scores.pop(0)
        return {"psnr": psnr, "ssim": 0.9, "base_psnr": 25.0, "base_ssim": 0.8}

    monkeypatch.setattr(T, "evaluate", fake_evaluate)
    folder, out = _folder(tmp_path, n=3), tmp_path / "m.pt"
    r = CliRunner().invoke(train_command, [
        str(folder), "-o", str(out), "--mimic", "sharpen", "--steps", "4", "--epoch-steps", "2",
        "--patch", "16", "--batch-size", "2", "--depth", "3", "--width", "8", "--val", "1",
        "--no-strip", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    summary = r.output[r.output.index(f"wrote {out}"):].splitlines()
    assert summary[0].endswith("; best at epoch 1, step 2"), summary
    assert summary[1].startswith("run: 4 of 4 steps, 2 epochs, ") and summary[1].endswith(
        " s on cpu"), summary
    # word for word what `convkit info` says of the run
    info = CliRunner().invoke(info_command, [str(out)]).output
    assert f"training:     {summary[1][len('run: '):]}\n" in info
    assert summary[2] == f"log {sidecar(out, 'log.jsonl')}, checkpoint {sidecar(out, 'last.ckpt')}"


def test_a_tie_keeps_the_later_model_and_a_file_in_the_way_is_named(tmp_path, monkeypatch):
    """Two equal validation scores (two perfect, infinite PSNRs, say) keep the later,
    longer-trained weights; a file where the model's folder should be is named."""
    import convkit.learn.train as T

    scores = [float("inf"), float("inf")]

    def fake_evaluate(model, val_set, device):
        psnr = 25.0 if isinstance(model, torch.nn.Identity) else scores.pop(0)
        return {"psnr": psnr, "ssim": 1.0, "base_psnr": 25.0, "base_ssim": 0.8}

    monkeypatch.setattr(T, "evaluate", fake_evaluate)
    folder, out = _folder(tmp_path, n=3), tmp_path / "m.pt"
    args = ["--mimic", "sharpen", "--steps", "4", "--epoch-steps", "2", "--patch", "16",
            "--batch-size", "2", "--depth", "3", "--width", "8", "--val", "1", "--no-strip",
            "--device", "cpu"]
    r = CliRunner().invoke(train_command, [str(folder), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    assert "; best at epoch 2, step 4" in r.output, r.output
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(train_command, [str(folder), "-o", str(tmp_path / "afile" / "m.pt"),
                                           *args])
    assert r.exit_code == 1
    assert "cannot make its folder, " in r.output and "afile is a file in the way" in r.output


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_info_tells_the_whole_run_from_the_step_of_the_saved_weights(tmp_path, monkeypatch,
                                                                      suffix):
    import convkit.learn.train as T

    scores = [30.0, 29.0, 28.0, 27.0]  # the first epoch's weights stay the best

    def fake_evaluate(model, val_set, device):
        psnr = 25.0 if isinstance(model, torch.nn.Identity) else scores.pop(0)
        return {"psnr": psnr, "ssim": 0.9, "base_psnr": 25.0, "base_ssim": 0.8}

    monkeypatch.setattr(T, "evaluate", fake_evaluate)
    folder, out = _folder(tmp_path, n=3), tmp_path / f"m{suffix}"
    snapshot = {}

    def at_step(t: Trainer) -> None:
        if t.step == 3:
            snapshot.update(_weights_of(t.model))
        if t.step == 10:
            t.request_stop()

    with pytest.raises(TrainingInterrupted):
        train(folder, out, chain="sharpen", callbacks=[at_step],
              **_quick(steps=12, epoch_steps=3))
    m = LF.read_model_file(out)["metrics"]
    assert (m["step"], m["epoch"], m["run_steps"], m["run_epochs"], m["steps_total"]) == (
        3, 1, 10, 3, 12)
    assert m["run_seconds"] >= m["train_seconds"]
    for k, v in _weights_of(convkit.load_model(out)).items():  # still the best weights
        assert torch.equal(v, snapshot[k]), k
    runner = CliRunner()
    text = runner.invoke(info_command, [str(out)]).output
    assert "training:     10 of 12 steps (unfinished), 3 epochs, " in text
    assert "weights:      the best so far, from step 3 (epoch 1)\n" in text
    assert "metrics:      validation PSNR 30.00 dB" in text
    text = runner.invoke(info_command, [str(sidecar(out, "last.ckpt"))]).output
    assert f"model file:   the best so far, from step 3 (epoch 1), in m{suffix}\n" in text
    assert "checkpoint:   training state at step 10 (epoch 3)" in text

    train(folder, out, resume=True, callbacks=[at_step])
    text = runner.invoke(info_command, [str(out)]).output
    assert "training:     12 of 12 steps, 4 epochs, " in text
    assert "weights:      the best of the run, from step 3 (epoch 1)\n" in text
    # files of older convkits record only the saved weights' step: what is known is shown
    m = LF.read_model_file(out)["metrics"]
    LF.update_metrics(out, {k: v for k, v in m.items() if not k.startswith("run_")})
    r = runner.invoke(info_command, [str(out)])
    assert r.exit_code == 0, r.output
    assert "training:     12 steps planned on cpu; how far the run got is not recorded" in r.output
    assert "weights:      the best, from step 3 (epoch 1)\n" in r.output
    LF.update_metrics(out, {})
    r = runner.invoke(info_command, [str(out)])
    assert r.exit_code == 0 and "how far the run got is not recorded" in r.output
    assert "weights:" not in r.output and "Traceback" not in r.output


def _weights_of(model: torch.nn.Module) -> dict:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "extra, code, match",
    [
        (["--mimic", "gaussian(sigma=", "--denoise", "3"], 2, "Invalid value for '--mimic'"),
        (["--mimic", "sharpen", "--denoise", "3"], 2, "not both"),
        (["--denoise", "-1"], 2, "sigma should be > 0"),
        (["--mimic", "sharpen", "--device", "tpu"], 2, "Invalid device"),
        (["--mimic", "sharpen", "--val", "1.5"], 2, "whole count"),
        ([], 1, "needs the subfolders input/ and target/"),
        (["--mimic", "sharpen", "--kernel", "4"], 1, "kernel should be odd"),
    ],
)
def test_cli_train_errors(tmp_path, extra, code, match):
    folder = _folder(tmp_path, n=1)
    r = CliRunner().invoke(train_command, [str(folder), "-o", str(tmp_path / "m.pt"), *extra])
    assert r.exit_code == code, r.output
    assert match in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "m.pt").exists()


def test_cli_empty_folder_and_bad_info(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(train_command, [str(empty), "-o", str(tmp_path / "m.pt"), "--mimic",
                                           "sharpen"])
    assert r.exit_code == 1 and "no images found" in r.output and ".png" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    r = CliRunner().invoke(info_command, [str(bad)])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and str(bad) in r.output


# --- processes: Ctrl-C and torchrun ------------------------------------------------------------
def _wait_for_epochs(proc: subprocess.Popen, log: Path, n: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= n:
            return
        time.sleep(0.02)


def test_killed_or_interrupted_training_resumes(tmp_path):
    """SIGKILL at an arbitrary moment (checkpoints written every step, so likely mid-write)
    leaves a readable checkpoint; Ctrl-C saves one and exits 130; --resume finishes."""
    folder = _folder(tmp_path, n=3)
    out = tmp_path / "m.pt"
    base = [sys.executable, "-m", "convkit.learn.train", str(folder), "-o", str(out),
            "--mimic", "sharpen", "--patch", "16", "--batch-size", "2", "--depth", "3",
            "--width", "4", "--val", "1", "--epoch-steps", "3", "--no-strip", "-q"]
    ckpt, log = sidecar(out, "last.ckpt"), sidecar(out, "log.jsonl")
    proc = subprocess.Popen([*base, "--steps", "100000", "--save-every", "1"], env=ENV,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(proc, log, 1)
    time.sleep(0.13)
    proc.kill()
    proc.communicate(timeout=30)
    killed_at = LF.read_model_file(ckpt)["train_state"]["step"]  # intact, whenever it died
    assert killed_at >= 1
    loud = [a for a in base if a != "-q"]
    proc = subprocess.Popen([*loud, "--resume"], env=ENV, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(proc, log, killed_at // 3 + 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"resuming {ckpt} at step {killed_at}" in err
    assert "stopped by Ctrl-C" in err and "--resume" in err
    step = LF.read_model_file(ckpt)["train_state"]["step"]
    assert step > killed_at
    done = subprocess.run([*base, "--resume", "--steps", str(step + 2)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert LF.read_model_file(ckpt)["train_state"]["step"] == step + 2
    assert not [f for f in os.listdir(tmp_path) if is_temp_name(f)]  # stale temp files removed


def test_torchrun_two_cpu_processes(tmp_path):
    folder = _folder(tmp_path, n=3)
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "convkit.learn.train", str(folder), "-o", str(out),
           "--mimic", "gaussian(sigma=1)", "--arch", "linear", "--kernel", "7", "--steps", "6",
           "--epoch-steps", "3", "--patch", "24", "--batch-size", "4", "--val", "1",
           "--device", "cpu", "--no-strip", "-q", "--json"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports and writes
    m = convkit.load_model(out)
    assert m.provenance["processes"] == 2
    # comparable to one process: both recover OpenCV's gaussian to the targets' precision
    single = train(folder, tmp_path / "one.pt", chain="gaussian(sigma=1)", arch="linear",
                   kernel=7, **_quick(steps=6, patch=24, batch_size=4))
    g = cv2.getGaussianKernel(7, 1.0)
    expect = torch.from_numpy((g @ g.T).astype(np.float32))
    for model in (m, convkit.load_model(tmp_path / "one.pt")):
        torch.testing.assert_close(model.conv.weight[0, 0], expect, atol=1.5e-3, rtol=0)
    assert m.metrics["val_psnr"] > 50 and abs(m.metrics["val_psnr"] -
                                               single.metrics["val_psnr"]) < 5


def test_learned_without_a_path_is_a_value_error():
    with pytest.raises(ValueError, match=r"learned: give path=MODEL_FILE \(--path"):
        convkit.chain("learned")


# --- the first hour: what training shows ------------------------------------------------------
def test_time_limit_ends_training_as_a_normal_end(tmp_path):
    folder = _folder(tmp_path, n=3)
    out = tmp_path / "tl.pt"
    t0 = time.monotonic()
    res = train(folder, out, chain="gaussian(sigma=1)", time_limit=1.5,
                **_quick(steps=10**6, epoch_steps=5))
    assert time.monotonic() - t0 < 30
    assert res.notes and res.notes[-1].startswith("stopped at the time limit of 1.5 s")
    assert out.exists() and res.metrics["step"] < 10**6
    assert convkit.load_model(out).metrics["val_psnr"] == res.metrics["val_psnr"]
    for p in res.pictures:
        assert Path(p).exists()


def test_progress_bar_only_on_a_terminal(tmp_path):
    folder = _folder(tmp_path, n=3)
    r = subprocess.run([sys.executable, "-m", "convkit", "train", str(folder), "-o",
                        str(tmp_path / "m.pt"), "--mimic", "sharpen", "--arch", "linear",
                        "--steps", "30", "--epoch-steps", "15", "--patch", "16", "--val", "1"],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "step/s" not in r.stderr and "\r" not in r.stderr  # no tqdm lines in a log


def test_linear_mimic_sizes_its_kernel_to_the_chain(tmp_path):
    folder = _folder(tmp_path, n=3)
    out = tmp_path / "lin.pt"
    res = CliRunner().invoke(train_command, [str(folder), "-o", str(out), "--mimic",
                                             "gaussian(sigma=1) | sharpen", "--arch", "linear",
                                             "--steps", "3", "--epoch-steps", "3", "--patch",
                                             "24", "-q"])
    assert res.exit_code == 0, res.output
    assert convkit.load_model(out).config.kernel == 9  # 7x7 gaussian then 3x3 sharpen
    shown = CliRunner().invoke(cli_main, ["show", "learned", f"path={out}"])
    assert "linear learned filter, one 9x9 kernel" in shown.output
    assert "non-linear" not in shown.output


def test_tick_labels_tell_narrow_ranges_apart():
    from convkit.learn.plots import _fmt, _labels

    values = [1.7e-4 + i * 1e-8 for i in range(5)]  # a linear model's flat loss
    assert len({_fmt(v) for v in values}) == 1  # the plain format repeats itself...
    labels = _labels(values, _fmt)
    assert len(set(labels)) == 5 and labels[0] == "0.00017"  # ...these do not


def test_training_pictures_show_scores_and_scale(tmp_path):
    folder = _folder(tmp_path, n=3)
    res = train(folder, tmp_path / "m.pt", chain="gaussian(sigma=1)",
                **_quick(steps=4, epoch_steps=2, strip=True))
    with Image.open(tmp_path / "m.curves.png") as im:
        assert im.size == (1380, 400)  # three panels: loss, PSNR, SSIM
    with Image.open(tmp_path / "m.kernels.png") as im:
        assert im.height > 56  # the grid and its colour bar
    assert {p.name for p in res.pictures} >= {"m.curves.png", "m.kernels.png", "m.strip.png"}
