"""Every third-party module the code imports is declared in pyproject.toml.

A package that only the developer's machine has (installed by hand) hides a
missing declaration until a new user's ``pytest`` stops at collection. This
reads the imports statically, so it fails even on the machine that has the
package, and it does not trust installed metadata to name the distribution.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "benchmarks")

# Import names whose distribution is spelled differently. Any other import is
# looked up under its own name (``_`` and ``-`` are equivalent in PEP 503).
DISTRIBUTION_OF = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "pytorch_msssim": "pytorch-msssim",
    "prometheus_client": "prometheus-client",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    """``opacus>=1.5`` -> ``opacus``; ``pytest>=8,<10`` -> ``pytest``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot read requirement {requirement!r} in pyproject.toml"
    return _normalise(match.group(1))


def _declared() -> dict[str, set[str]]:
    """Distribution names per group: ``core`` and each optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": {_requirement_name(r) for r in project["dependencies"]}}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        groups[extra] = {_requirement_name(r) for r in requirements}
    return groups


def _first_party() -> set[str]:
    """Our own top-level names: the package, test helpers, benchmark scripts."""
    names = {"metamorphosis", "conftest"}
    for folder in SCANNED:
        names.update(p.stem for p in (ROOT / folder).rglob("*.py"))
    return names


def _imports_in(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _third_party_imports(folder: str) -> dict[str, str]:
    """Import name -> the first file (relative) that imports it."""
    skip = set(sys.stdlib_module_names) | _first_party()
    imports: dict[str, str] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports_in(path) - skip:
            imports.setdefault(name, str(path.relative_to(ROOT)))
    return imports


def _undeclared(folder: str, allowed: set[str]) -> list[str]:
    return [
        f"{name} (imported by {where}, distribution {DISTRIBUTION_OF.get(name, name)!r})"
        for name, where in sorted(_third_party_imports(folder).items())
        if _normalise(DISTRIBUTION_OF.get(name, name)) not in allowed
    ]


def test_the_package_imports_only_core_and_serve_dependencies():
    groups = _declared()
    missing = _undeclared("src", groups["core"] | groups["serve"])
    assert not missing, f"declare in pyproject.toml [project] dependencies or serve: {missing}"


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_tests_and_benchmarks_import_only_declared_packages(folder):
    groups = _declared()
    missing = _undeclared(folder, set().union(*groups.values()))
    assert not missing, f"declare in pyproject.toml (the dev extra for tests): {missing}"


def test_the_check_sees_an_undeclared_import(tmp_path, monkeypatch):
    """The scan itself works: a made-up import in a scanned folder is reported."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("import numpy\nfrom not_declared.sub import y\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    undeclared = _undeclared("tests", {"numpy"})
    assert [entry.split(" ")[0] for entry in undeclared] == ["not_declared"]
