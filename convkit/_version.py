"""convkit's version, in a module of its own so that modules inside the package need not import
the package root for it."""

__version__ = "0.1.0"
