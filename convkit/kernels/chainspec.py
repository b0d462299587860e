"""Chain spec strings: ``"gaussian(sigma=2) | sharpen(amount=1.5) | sobel"``.

Grammar (whitespace is free between tokens)::

    chain   := element ("|" element)*
    element := NAME ["(" [arg ("," arg)*] ")"]      a registered filter
             | PATH | STRING                        a kernel .toml or a model file
    arg     := [NAME "="] value
    value   := NUMBER | true | false | WORD | STRING | "[" [value ("," value)*] "]"

A WORD is any run of characters other than whitespace and ``|()[],="'``; one that reads as
a number is a number, ``true``/``false`` are booleans, anything else is a string (so
``border=replicate`` and ``path=my.toml`` need no quotes). Strings in single or double quotes take
backslash escapes. An element that is a bare word with a ``.`` or ``/`` in it is a file path.

This module does not import torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

_SPECIAL = set('|()[],="\'')
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_WORD_RE = re.compile(r"^[^\s|()\[\],=\"']+$")
MAX_DEPTH = 8


@dataclass
class Call:
    """One parsed element: a filter name with its arguments, or a file path."""

    name: str | None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    pos: int = 0


# The file suffixes a chain element may name as a learned filter's model file.
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".convkit")


def check_path_element(path: str) -> str:
    """``"kernel"`` or ``"model"`` for a file element of a chain; ValueError for any other."""
    low = path.lower()
    if low.endswith(".toml"):
        return "kernel"
    if low.endswith(MODEL_SUFFIXES):
        return "model"
    raise ValueError(
        f"{path}: expected a filter name, a kernel file (.toml) or a model file "
        f"({', '.join(MODEL_SUFFIXES)})"
    )


class SpecError(ValueError):
    """A chain spec that does not parse; the message says where."""


def excerpt(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut to about ``limit`` characters: an error about a
    100 KB spec stays one readable line."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


class _Parser:
    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"a chain spec should be a string. Got {type(text).__name__}")
        self.text = text
        self.i = 0

    def error(self, msg: str, at: int | None = None) -> SpecError:
        at = self.i if at is None else at
        return SpecError(f"invalid chain {excerpt(self.text, 60)} at position {at}: {msg}")

    def skip(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.i] if self.i < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            got = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected {ch!r}, got {got}")
        self.i += 1

    def word(self) -> str:
        self.skip()
        start = self.i
        while (
            self.i < len(self.text)
            and not self.text[self.i].isspace()
            and self.text[self.i] not in _SPECIAL
        ):
            self.i += 1
        return self.text[start : self.i]

    def string(self) -> str:
        quote = self.text[self.i]
        start = self.i
        self.i += 1
        out = []
        while self.i < len(self.text):
            ch = self.text[self.i]
            if ch == "\\" and self.i + 1 < len(self.text):
                out.append(self.text[self.i + 1])
                self.i += 2
                continue
            if ch == quote:
                self.i += 1
                return "".join(out)
            out.append(ch)
            self.i += 1
        raise self.error("unterminated string", start)

    def value(self, depth: int = 0) -> Any:
        ch = self.peek()
        if ch == "[":
            if depth >= MAX_DEPTH:
                raise self.error(f"lists nested deeper than {MAX_DEPTH}")
            self.i += 1
            items = []
            if self.peek() == "]":
                self.i += 1
                return items
            while True:
                items.append(self.value(depth + 1))
                if self.peek() == ",":
                    self.i += 1
                    continue
                self.expect("]")
                return items
        if ch in ("'", '"'):
            return self.string()
        start = self.i
        w = self.word()
        if not w:
            got = repr(ch) if ch else "the end"
            raise self.error(f"expected a value, got {got}", start)
        return parse_word(w)

    def element(self) -> Call:
        self.skip()
        pos = self.i
        ch = self.peek()
        if ch in ("'", '"'):
            return Call(None, path=self.string(), pos=pos)
        name = self.word()
        if not name:
            got = repr(ch) if ch else "the end"
            raise self.error(f"expected a filter name or a file, got {got}")
        if "." in name or "/" in name or "\\" in name:
            if self.peek() == "(":
                raise self.error(f"a file path takes no arguments: {name!r}")
            return Call(None, path=name, pos=pos)
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise self.error(f"invalid filter name {name!r}", pos)
        call = Call(name, pos=pos)
        if self.peek() != "(":
            return call
        self.i += 1
        if self.peek() == ")":
            self.i += 1
            return call
        while True:
            self.skip()
            start = self.i
            save = self.i
            key = self.word() if self.peek() not in ("[", "'", '"') else ""
            if key and self.peek() == "=":
                self.i += 1
                if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                    raise self.error(f"invalid parameter name {key!r}", start)
                if key in call.kwargs:
                    raise self.error(f"parameter {key!r} given twice", start)
                call.kwargs[key] = self.value()
            else:
                self.i = save
                if call.kwargs:
                    raise self.error("a positional value after a named one", start)
                call.args.append(self.value())
            if self.peek() == ",":
                self.i += 1
                continue
            self.expect(")")
            return call

    def chain(self) -> list[Call]:
        calls = [self.element()]
        while self.peek() == "|":
            self.i += 1
            calls.append(self.element())
        if self.peek():
            raise self.error(f"expected '|' or the end, got {self.peek()!r}")
        return calls


def parse_word(w: str) -> Any:
    if _NUMBER_RE.fullmatch(w):
        f = float(w)
        if re.match(r"^[+-]?\d+$", w):
            if len(w) > 40:  # past any sensible parameter; int() refuses 4300 digits anyway
                raise SpecError(f"the number {excerpt(w)} has {len(w)} digits; parameters "
                                "take numbers of at most 40")
            return int(w)
        return f
    low = w.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    return w


def parse_value(text: str) -> Any:
    """One value written as in a chain spec (``[[0,-1,0],[-1,5,-1],[0,-1,0]]``, a number, a
    word, a quoted string); SpecError says where it stops parsing."""
    p = _Parser(text)
    value = p.value()
    if p.peek():
        raise p.error(f"unexpected {p.peek()!r} after the value")
    return value


def parse(text: str) -> list[Call]:
    """Parse a chain spec into calls; SpecError (a ValueError) says where it failed."""
    return _Parser(text).chain()


def format_value(v: Any) -> str:
    """A parameter value as spec text that parses back to the same value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write a non-finite number {v!r} in a chain spec")
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if hasattr(v, "tolist"):
        return format_value(v.tolist())
    s = str(v)
    if _WORD_RE.fullmatch(s) and isinstance(parse_word(s), str):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_call(name: str, params: dict[str, Any]) -> str:
    if not params:
        return name
    inner = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
    return f"{name}({inner})"
