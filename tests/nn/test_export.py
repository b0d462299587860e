"""Export: every filter of the registry as plain torch layers (to_torch) and as ONNX,
torch.export and TorchScript files, run by onnxruntime and torch against convkit.process on
float tensors at two image sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import convkit
from convkit.cli.main import cli
from convkit.nn.export import BorderPad, to_torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# one spec per registry filter (those that need a value get one), and some chains
NEEDS = {"kernel": "kernel(weights=[[1, 2, 0], [0, 1, -3]], offset=4)",
         "avgpool": "avgpool(size=2)", "maxpool": "maxpool(size=4, stride=2)"}
SPECS = [NEEDS.get(n, n) for n in convkit.list_filters() if n != "learned"] + [
    "gaussian(sigma=[2, 1], border=symmetric) | sobel(dx=1, ksize=5)",
    "unsharp(sigma=2, threshold=4) | median(size=4, border=constant, value=30)",
    "opening(size=4, shape=cross, iterations=2) | laplacian(border=circular)",
    "emboss(border=constant, value=20) | percentile(size=3, q=25)",
    "sobel(ksize=1)", "avgpool(size=4) | gaussian(sigma=5)",
    "maxpool(size=[3, 2], stride=[1, 2]) | sharpen",
]
SIZES = [(36, 52), (64, 48)]  # ((side - size) a multiple of stride for the pooling above;
# the gaussian's pad of 15 after pooling by 4 needs sides of 64 or more for the reflection)
STANDARD = {"Pad", "Conv", "Slice", "Concat", "Constant", "ConstantOfShape", "Cast", "Reshape",
            "Transpose", "Shape", "Gather", "Unsqueeze", "Sub", "Add", "Mul", "Div", "Sqrt",
            "Where", "Greater", "GreaterOrEqual", "Abs", "Min", "Max", "TopK", "AveragePool",
            "MaxPool", "Identity", "Squeeze", "Range", "Neg"}


def _x(h: int, w: int, b: int = 2, c: int = 3) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(h * w))


@pytest.mark.parametrize("spec", SPECS)
def test_onnx_reproduces_process(tmp_path, spec):
    path = convkit.export(spec, tmp_path / "f.onnx")
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert ops <= STANDARD, ops - STANDARD
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)  # no custom operator
    session = ort.InferenceSession(str(path))
    for h, w in SIZES if "avgpool(size=4)" not in spec else [(64, 68), (96, 72)]:
        x = _x(h, w)
        got = session.run(None, {"image": x.numpy()})[0]
        assert np.abs(got - convkit.process(x, spec).numpy()).max() <= 1e-4


@pytest.mark.parametrize("spec", ["sharpen", "gaussian(sigma=2) | sobel", "median(size=5)",
                                  "closing(size=5, shape=ellipse, border=reflect)",
                                  "avgpool(size=2)", "box(size=3, border=symmetric)"])
@pytest.mark.parametrize("suffix", [".pt2", ".ts"])
def test_torch_export_and_torchscript_reproduce_process(tmp_path, spec, suffix):
    path = convkit.export(spec, tmp_path / f"f{suffix}")
    model = torch.export.load(str(path)).module() if suffix == ".pt2" else torch.jit.load(
        str(path))
    for b, (h, w) in zip((1, 3), SIZES, strict=True):  # batch and sides free
        x = _x(h, w, b)
        assert (model(x) - convkit.process(x, spec)).abs().max() <= 1e-4


@pytest.mark.parametrize("cfg", [{"arch": "linear", "kernel": 5}, {}, {"channels": 3},
                                 {"pool": 2}])
def test_learned_filters_export(tmp_path, cfg):
    from convkit.learn import files as LF
    from convkit.learn.model import LearnedFilter, ModelConfig

    torch.manual_seed(0)
    m = LearnedFilter(ModelConfig(**cfg))
    for p in m.parameters():  # (a fresh model is the identity: make it do something)
        torch.nn.init.normal_(p, std=0.1)
    LF.save_model(m, tmp_path / "m.pt", {}, {})
    for suffix in (".onnx", ".pt2", ".ts"):
        path = convkit.export(str(tmp_path / "m.pt"), tmp_path / f"m{suffix}")
        for h, w in SIZES:
            x = _x(h, w)
            if suffix == ".onnx":
                got = torch.from_numpy(ort.InferenceSession(str(path)).run(
                    None, {"image": x.numpy()})[0])
            elif suffix == ".pt2":
                got = torch.export.load(str(path)).module()(x)
            else:
                got = torch.jit.load(str(path))(x)
            assert (got - convkit.process(x, str(tmp_path / "m.pt"))).abs().max() <= 1e-4


def test_to_torch_shows_the_conv_layers_and_can_be_fine_tuned(tmp_path):
    seq = convkit.chain("gaussian(sigma=1) | sharpen").to_torch(channels=4)
    assert str(seq) == str(to_torch("gaussian(sigma=1) | sharpen", channels=4))
    pad, conv = seq[0]
    assert isinstance(pad, BorderPad) and pad.pads == (3, 3, 3, 3)
    assert isinstance(conv, torch.nn.Conv2d) and conv.groups == 4 and conv.in_channels == 4
    assert conv.bias is None and not conv.weight.requires_grad
    # the weights are the filter's: a centred impulse gives the kernel back
    k = convkit.get_filter("sharpen").weight
    assert torch.equal(seq[1][1].weight[2, 0], k)
    seq.requires_grad_(True)
    x = _x(20, 24, 1, 4)
    seq(x).square().mean().backward()
    assert seq[1][1].weight.grad is not None
    # the copy exports as it is, edits and all
    with torch.no_grad():
        seq[1][1].weight.mul_(2)
    path = convkit.export(seq, tmp_path / "tuned.onnx", channels=4)
    got = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - seq(x).detach().numpy()).max() <= 1e-5


def test_border_pad_equals_convkit_borders():
    from convkit.nn.functional import pad

    x = _x(9, 11)
    for border in ("reflect", "replicate", "constant", "circular", "symmetric"):
        got = BorderPad((3, 1, 2, 4), border, 0.3)(x)
        assert torch.equal(got, pad(x, 3, 1, 2, 4, border, 0.3)), border


def test_export_command(tmp_path):
    out = tmp_path / "c.onnx"
    res = CliRunner().invoke(cli, ["export", "gaussian(sigma=2) | sharpen", "-o", str(out)])
    assert res.exit_code == 0, res.output
    x = _x(30, 40)
    got = ort.InferenceSession(str(out)).run(None, {"image": x.numpy()})[0]
    ref = convkit.process(x, "gaussian(sigma=2) | sharpen").numpy()
    assert np.abs(got - ref).max() <= 1e-4
    for args, message in ((["sharpen", "-o", str(tmp_path / "c.xyz")], "expected a file"),
                          (["sharpn", "-o", str(out)], "Did you mean 'sharpen'"),
                          (["sharpen", "-o", str(out), "--channels", "0"], "0")):
        res = CliRunner().invoke(cli, ["export", *args])
        assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "c.xyz").exists()
    # .pt is convkit's model suffix, never overwritten by an export
    res = CliRunner().invoke(cli, ["export", "sharpen", "-o", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and not (tmp_path / "m.pt").exists()
