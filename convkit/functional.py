"""``convkit.functional`` is :mod:`convkit.nn.functional` (the name users import, kept where
the module moved): ``from convkit.functional import gaussian_blur`` works as before."""

import sys

from .nn import functional as _module

sys.modules[__name__] = _module
