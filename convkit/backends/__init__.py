"""Where a plan runs: :mod:`.opencv` runs it on NumPy planes without torch (the CPU path of
the command line and of :func:`convkit.process`); :mod:`.engine` runs it on tensors (any
device, differentiable where autograd asks), with plans read from modules by
:mod:`.module_plans` and the Triton stencil (:mod:`.stencil`) beside it; :mod:`.device` tells
whether a CUDA device may be present without importing torch."""
