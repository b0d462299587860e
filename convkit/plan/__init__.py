"""Torch-free planning: a filter chain as operations on NumPy kernels.

* :mod:`~convkit.plan.ops`: the operations (linear kernel, median, gradient magnitude, module);
* :mod:`~convkit.plan.fuse`: fusion of consecutive kernels and the CPU cost model;
* :mod:`~convkit.plan.rules`: the method rule and the engine's options;
* :mod:`~convkit.plan.specs`: a plan straight from a spec string, without building modules.

Nothing here imports torch; the command line plans with it and imports torch only when the
plan needs it (see :func:`convkit.plan.specs.needs_torch`).
"""
