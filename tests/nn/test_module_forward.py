"""module(x) runs the engine's plan: the same numbers as the plain definition, OpenCV on the CPU
without autograd, torch's differentiable methods with it, and the plain definition wherever
torch traces, compiles or exports."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import cv_filter2d

import convkit
from convkit.backends import engine
from convkit.backends import opencv as fastpath
from convkit.nn import functional as KF
from convkit.nn.modules import Kernel2d, reference

SPECS = ["sharpen", "gaussian(sigma=2)", "box(size=15)", "median(size=3)", "median(size=5)",
         "edges", "emboss", "gaussian(sigma=1) | sharpen(amount=1.5) | box(size=3)",
         "unsharp(threshold=4)", "avgpool(size=2)", "sobel(dx=1)", "laplacian"]


@pytest.mark.parametrize("spec", SPECS)
def test_module_equals_plain_definition(spec, rng):
    x = torch.from_numpy(rng.random((2, 3, 37, 41), dtype=np.float32))
    m = convkit.chain(spec)
    with torch.no_grad():
        out = m(x)
        ref = reference(m.double(), x.double())
    m.float()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out.double() - ref).abs().max().item() < 2e-5


def test_module_on_cpu_runs_opencv(monkeypatch, rng):
    calls = []
    real = fastpath.linear
    monkeypatch.setattr(fastpath, "linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    img = (rng.random((45, 50, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    k = convkit.get_filter("sharpen")
    with torch.no_grad():
        out = k(x)
    assert calls, "module(x) without autograd should run OpenCV"
    ref = cv_filter2d(img.astype(np.float32) / 255, [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
                      "reflect")
    assert np.abs(out[0].permute(1, 2, 0).numpy() - ref).max() < 1e-6
    calls.clear()
    y = k(x.clone().requires_grad_())
    assert calls and y.requires_grad, "with autograd on float32 the forward runs OpenCV too"
    calls.clear()
    y = k(x.double().requires_grad_())
    assert not calls and y.requires_grad, "float64 runs torch's methods"


def test_three_dims_and_chain_forward(rng):
    x = torch.from_numpy(rng.random((3, 20, 22), dtype=np.float32))
    ch = convkit.chain("gaussian(sigma=1) | sharpen")
    out = ch(x)
    assert out.shape == x.shape
    ref = reference(ch, x[None])[0]
    assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("method,weights", [
    ("direct", [[1, 2, 0], [-1, 3, 1], [0, 1, -2]]),
    ("separable", np.outer([1, 2, 1], [1, 0, -1, 2])),
    ("lowrank", np.outer([1, 2, 1], [1, 0, -1]) + np.outer([0, 1, 3], [2, 1, 1])),
    ("fft", [[1, 2, 0], [-1, 3, 1], [0, 1, -2]]),
    ("box", np.ones((3, 5))),
])
@pytest.mark.parametrize("border", ["reflect", "constant", "circular"])
def test_gradcheck_every_method(method, weights, border):
    k = Kernel2d(np.asarray(weights, dtype=float), scale=1.0, border=border, value=30.0,
                 offset=7.0)
    k.method = method
    k.double()
    x = torch.rand(1, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    assert engine.explain(k, x.detach())[0][2] == method
    assert torch.autograd.gradcheck(k, (x,))
    # and the gradient is that of the plain definition
    g = torch.rand(1, 2, 9, 11, dtype=torch.float64)
    (a,) = torch.autograd.grad(k(x), x, g)
    (b,) = torch.autograd.grad(reference(k, x), x, g)
    assert (a - b).abs().max().item() < 1e-10


@pytest.mark.parametrize("spec", ["edges", "median(size=3)", "median(size=5)",
                                  "gaussian(sigma=1) | sharpen"])
def test_gradcheck_chains(spec):
    m = convkit.chain(spec).double()
    x = torch.rand(1, 1, 8, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_gradient_magnitude_flat_image_has_zero_gradient():
    m = convkit.get_filter("sobel")
    x = torch.full((1, 1, 6, 6), 0.5, requires_grad=True)
    m(x).sum().backward()
    assert torch.isfinite(x.grad).all()  # sqrt's slope at 0 would make it NaN


def test_tracing_and_compiling_use_plain_definition(rng):
    m = convkit.chain("gaussian(sigma=1) | sharpen")
    x = torch.from_numpy(rng.random((1, 3, 16, 18), dtype=np.float32))
    traced = torch.jit.trace(m, x)
    assert (traced(x) - m(x)).abs().max().item() < 1e-5
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert "aten::_convolution" in kinds or "aten::conv2d" in kinds
    ep = torch.export.export(m, (x,))
    assert (ep.module()(x) - m(x)).abs().max().item() < 1e-5


def test_meta_and_vmap_inputs():
    m = convkit.get_filter("gaussian", sigma=1.0)
    assert m(torch.empty(1, 3, 10, 12, device="meta")).shape == (1, 3, 10, 12)
    x = torch.rand(4, 1, 3, 9, 9)
    out = torch.func.vmap(m)(x)
    ref = torch.stack([reference(m, xi) for xi in x])
    assert (out - ref).abs().max().item() < 1e-6


def test_median_3x3_matches_opencv(rng):
    img = (rng.random((31, 29)) * 255).astype(np.uint8)
    x = torch.from_numpy(img)[None, None].float() / 255
    x.requires_grad_()
    out = convkit.get_filter("median", size=3, border="replicate")(x)
    got = (out.detach()[0, 0] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(got, cv2.medianBlur(img, 3))
    assert KF.median_blur(x.detach(), 3).shape == x.shape


def test_module_errors_unchanged():
    m = convkit.get_filter("sharpen")
    with pytest.raises(TypeError, match="floating point tensor"):
        m(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"shape \(B,C,H,W\) or \(C,H,W\)"):
        m(torch.zeros(4, 4))


@pytest.mark.parametrize("spec", ["sharpen", "gaussian(sigma=3)", "box(size=15)", "sobel",
                                  "emboss(border=replicate)", "laplacian(border=circular)",
                                  "kernel(weights=[[1,2],[3,5]], border=symmetric)",
                                  "sharpen(border=constant, value=20)",
                                  "gaussian(sigma=1) | sharpen | box(size=3)"])
@pytest.mark.parametrize("shape", [(2, 3, 13, 17), (1, 1, 3, 4)])
def test_float32_autograd_on_opencv_equals_dense_gradient(spec, shape, monkeypatch):
    """Training through a fixed filter on the CPU: forward and backward run on OpenCV (the
    adjoint: flipped kernel, border shares folded back), and the gradient is the dense one,
    also on images smaller than the kernel."""
    calls = []
    real = fastpath.linear_adjoint
    monkeypatch.setattr(fastpath, "linear_adjoint",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(1)
    m = convkit.chain(spec)
    x = torch.rand(*shape, generator=gen, requires_grad=True)
    g = torch.rand(*shape, generator=gen)
    (a,) = torch.autograd.grad(m(x), x, g)
    assert calls
    x64 = x.detach().double().requires_grad_()
    (b,) = torch.autograd.grad(reference(m.double(), x64), x64, g.double())
    assert (a.double() - b).abs().max().item() < 1e-5
