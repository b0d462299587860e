"""The package's import structure: no import cycle among module-level imports, no module
importing the package root (convkit/__init__.py) from inside, and the torch-free modules
importing no torch at module level (checked in a fresh interpreter)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import run_python

PACKAGE = Path(__file__).resolve().parent.parent / "convkit"


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """Each convkit module -> the convkit modules it imports when it is imported (module-level
    statements; `if TYPE_CHECKING:` blocks and imports inside functions are not run then)."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            found = node.body if isinstance(node, ast.Try) else [node]
            for n in found:
                if isinstance(n, ast.Import):
                    deps |= {a.name for a in n.names if a.name.split(".")[0] == "convkit"}
                elif isinstance(n, ast.ImportFrom):
                    base = here[: len(here) - n.level + 1] if n.level else []
                    target = ".".join(base + ([n.module] if n.module else []))
                    for a in n.names:
                        full = f"{target}.{a.name}"
                        deps.add(full if full in modules else target)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_cycle():
    graph = module_imports()
    seen: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(graph[node]):
            if seen.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in seen:
                visit(dep, path + [dep])
        seen[node] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])


def test_no_module_imports_the_package_root():
    graph = module_imports()
    offenders = sorted(m for m, deps in graph.items() if "convkit" in deps and m != "convkit")
    assert offenders == []


# The sub-packages from the bottom up (files, read and written, at the bottom): a module-level
# import may name its own sub-package or one below it. (Imports inside functions may go up
# where a lower module hands work to a higher one late: a module's forward() to the engine,
# the registry to its builders, named by dotted string so that --help stays torch-free.)
LAYERS = ["_version", "io", "kernels", "plan", "nn", "backends", "pipeline", "api", "learn",
          "cli", "__main__", "functional", "engine"]  # (the last two: the public names kept)


def layer(module: str) -> int:
    parts = module.split(".")
    return len(LAYERS) if len(parts) == 1 else LAYERS.index(parts[1])  # the root: on top


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if layer(d) > layer(m))


def test_imports_point_downward():
    graph = module_imports()
    assert {m.split(".")[1] for m in graph if "." in m} <= set(LAYERS), "a sub-package has no layer"
    assert upward_imports(graph) == []


def test_upward_import_is_found():
    """The test above can fail: io importing nn is an upward import."""
    graph = {"convkit.io.images": {"convkit.nn.modules"}, "convkit.nn.modules": set()}
    assert upward_imports(graph) == ["convkit.io.images -> convkit.nn.modules"]


def test_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The test above can fail: a made-up package with a -> b -> a is caught."""
    pkg = tmp_path / "convkit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    try:
        test_no_import_cycle()
    except AssertionError as e:
        assert "convkit.a -> convkit.b -> convkit.a" in str(e)
    else:
        raise AssertionError("the cycle was not found")


def test_torch_free_modules_import_no_torch():
    # every module of kernels/, plan/ and io/, and what the command line's CPU route runs
    torch_free = sorted(m for m in module_imports() if m.split(".")[1:2] in (
        ["kernels"], ["plan"], ["io"])) + [
        "convkit", "convkit.api", "convkit.cli.main", "convkit.backends.opencv",
        "convkit.backends.device", "convkit.pipeline.batches", "convkit.pipeline.memory",
        "convkit.pipeline.streaming"]
    code = ("import importlib, sys\n"
            f"for name in {torch_free!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n")
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def private_uses() -> list[str]:
    """``from .x import _name`` and ``x._name`` (x a convkit module bound by an import), in
    every convkit module: names private to another module."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "")
                                                     .startswith("convkit")):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{path.name}: from {node.module or '.'} import {a.name}")
                    if node.module is None or not a.name[0].isupper():
                        aliases.add(a.asname or a.name)  # (a module or a function)
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names
                            if a.name.startswith("convkit")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    return found


def test_no_private_name_used_across_modules():
    assert private_uses() == []
