"""The torch-free planner: a spec's plan is the plan the engine reads from the modules, and
planning imports no torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_python

import convkit
from convkit.backends import module_plans as fusion
from convkit.plan.ops import GradientOp, LinearOp, MedianOp, ModuleOp, MorphOp
from convkit.plan.specs import plan_spec

# filters that run as torch modules (pooling, morphology, learned), and kernel (needs weights)
MODULE_ONLY = ("avgpool", "maxpool", "learned", "kernel", "minimum", "maximum", "percentile")
FIXED = [n for n in convkit.list_filters() if n not in MODULE_ONLY]
SPECS = [*FIXED, "gaussian(sigma=2.5, strength=0.5)", "sharpen(amount=3, border=constant, value=9)",
         "kernel(weights=[[1,2,0],[0,1,3]], offset=4, negative=offset)", "sobel(dx=1)",
         "scharr(dy=1, negative=clip, border=replicate)", "unsharp(sigma=2, amount=1.5)",
         "gaussian(sigma=1) | sharpen | box(size=5) | emboss", "median(size=4) | edges(sigma=2)",
         "box(size=3, border=circular) | laplacian(border=circular)", "gaussian(sigma=300)",
         "gaussian(sigma=2) | box(size=[5, 3])", "box(size=[4, 3]) | gaussian(sigma=[1, 2])",
         "opening(size=4, shape=cross, iterations=2, border=constant, value=9) | sharpen"]


def _same_linear(a: LinearOp, b: LinearOp) -> None:
    assert np.array_equal(a.kernel, b.kernel)
    assert (a.bias, a.border, a.value, a.method, a.name) == (b.bias, b.border, b.value, b.method,
                                                              b.name)
    assert (a.factors is None) == (b.factors is None)
    if a.factors is not None:
        assert all(np.array_equal(x, y) for x, y in zip(a.factors, b.factors, strict=True))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("fuse", [True, False])
def test_spec_plan_equals_module_plan(spec, fuse):
    mine = plan_spec(spec, fuse)
    ref = fusion.build_plan(convkit.chain(spec), fuse)
    assert mine is not None
    assert mine.negative == ref.negative
    assert [type(o) for o in mine.ops] == [type(o) for o in ref.ops]
    for a, b in zip(mine.ops, ref.ops, strict=True):
        if isinstance(a, LinearOp):
            _same_linear(a, b)
        elif isinstance(a, GradientOp):
            _same_linear(a.gx, b.gx)
            _same_linear(a.gy, b.gy)
        elif isinstance(a, MorphOp):
            assert (a.op, a.iterations, a.border, a.value, a.name) == \
                (b.op, b.iterations, b.border, b.value, b.name)
            assert np.array_equal(a.fp, b.fp)
        else:
            assert isinstance(a, MedianOp)
            assert (a.size, a.border, a.value, a.name) == (b.size, b.border, b.value, b.name)


def test_kernel_file_plans_like_its_module(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text('weights = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]\nsigned = true\n')
    mine = plan_spec(f"{p} | gaussian")
    ref = fusion.build_plan(convkit.chain(f"{p} | gaussian"))
    assert mine.negative == ref.negative == "abs"
    _same_linear(mine.ops[0], ref.ops[0])


@pytest.mark.parametrize("spec", ["avgpool", "maxpool(size=3) | sharpen", "unsharp(threshold=2)",
                                  "model.pt", "sharpen | x.safetensors"])
def test_chains_that_need_torch_have_no_spec_plan(spec):
    assert plan_spec(spec) is None
    if not spec.endswith(("pt", "safetensors")):
        assert any(isinstance(o, ModuleOp) for o in fusion.build_plan(convkit.chain(spec)).ops)


@pytest.mark.parametrize("spec,message", [
    ("gaussian(sigma=-1)", "gaussian: sigma should be >= 0. Got -1"),
    ("sharpn", "Unknown filter 'sharpn'"),
    ("kernel(weights=[[1, 2], [3]])", "all rows should have the same length"),
    ("photo.png", "photo.png: expected a filter name, a kernel file (.toml) or a model file"),
    ("emboss(strength=1e300)", "emboss: the parameters give weights beyond float32's range"),
])
def test_spec_plan_errors_are_chains(spec, message):
    with pytest.raises(ValueError) as mine:
        plan_spec(spec)
    with pytest.raises(ValueError) as ref:
        convkit.chain(spec)
    assert message in str(mine.value)
    assert str(mine.value) == str(ref.value)


def test_planning_imports_no_torch():
    code = ("import sys, convkit; from convkit.plan.specs import plan_spec; "
            "p = plan_spec('gaussian(sigma=2) | sharpen | edges | median(size=5)'); "
            "assert len(p.ops) >= 3; "
            "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    res = run_python(code, timeout=120)
    assert res.returncode == 0, res.stderr


def test_huge_separable_kernels_stay_two_vectors():
    """A 4095-tap gaussian (and its fusion with a box) is planned as two vectors: no dense
    4095x4095 array is made unless something reads it."""
    (op,) = plan_spec("gaussian(ksize=4095) | box(size=[4095, 3])").ops
    assert op.shape == (4097, 8189) and not op.dense and op.rank == 1
    assert op.symmetric and op.box_weight is None and not op.dense
    m = convkit.get_filter("gaussian", ksize=4095)
    assert m.weight.shape == (4095, 4095) and m._built is None  # its copy is not made either
    assert not m.weights_changed()


@pytest.mark.parametrize("spec", ["gaussian(sigma=1.5, ksize=[7, 5])", "box(size=[5, 3])",
                                  "box(size=3) | gaussian(sigma=[2, 1])"])
def test_kernel_made_from_factors_is_the_module_weight(spec):
    """The dense kernel of an unmade op is the float32-rounded products of its factors (for one
    filter, float32 factors: the module's ``weight``), and the properties read from the factors
    are those of that kernel."""
    (op,) = plan_spec(spec).ops
    assert not op.dense
    col, row = op.factors
    expected = (col[:, None] * row[None, :]).astype(np.float32).astype(np.float64)
    dense = LinearOp(expected.copy())  # the same kernel, no factors
    assert (op.shape, op.symmetric, op.box_weight) == (dense.shape, dense.symmetric,
                                                       dense.box_weight)
    assert op.l1 == pytest.approx(dense.l1, rel=1e-6)  # (a bound: products unrounded)
    assert np.array_equal(op.kernel, expected) and op.dense
    if "|" not in spec:
        assert np.array_equal(convkit.chain(spec)[0].weight.numpy(), expected.astype(np.float32))


def test_weights_edited_after_build_are_seen():
    """An in-place edit, ``load_state_dict`` and a dtype change: the first two change the
    weights (the spec becomes a kernel's), the last does not."""
    m = convkit.get_filter("gaussian", sigma=2)
    assert not m.weights_changed() and not m.double().weights_changed()
    m = convkit.get_filter("gaussian", sigma=2)
    with torch.no_grad():
        m.weight[0, 0] += 1
    assert m.weights_changed() and m.spec().startswith("kernel(")
    m2 = convkit.get_filter("gaussian", sigma=2)
    state = convkit.get_filter("gaussian", sigma=2).state_dict()
    m2.load_state_dict(state)
    assert not m2.weights_changed()
    state["weight"][1, 1] = 5
    m2.load_state_dict(state)
    assert m2.weights_changed()
    m3 = convkit.get_filter("gaussian", sigma=2)
    m3.weight.data.mul_(2)  # (.data writes do not count as the tensor's own versions)
    assert m3.weights_changed() and m3.spec().startswith("kernel(")
