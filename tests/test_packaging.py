"""The wheel holds what the checkout holds: every sub-package of convkit is listed in
pyproject.toml (setuptools ships only the listed ones; a missing one works in the editable
checkout and fails in the wheel), and the filters' data is mapped into the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_in_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "convkit").rglob("__init__.py")}
    assert found - listed == set(), f"pyproject.toml does not ship {sorted(found - listed)}"
    assert config["package-dir"]["convkit.filters"] == "filters"
    assert "*.toml" in config["package-data"]["convkit.filters"]
