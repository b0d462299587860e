"""``convkit.engine`` is :mod:`convkit.backends.engine` (the name users import, kept where
the module moved): ``from convkit.engine import options`` works as before."""

import sys

from .backends import engine as _module

sys.modules[__name__] = _module
