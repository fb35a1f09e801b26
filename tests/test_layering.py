"""Who imports whom: reading a run dir must not pull in the trainer or Opacus, and the
service's key store and the audit's report write files without importing training code."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import {module}
loaded = sorted(m for m in sys.modules if m.startswith("metamorphosis.train") or m == "opacus")
print(",".join(loaded))
"""


@pytest.mark.parametrize(
    "module",
    ["metamorphosis.rundir", "metamorphosis.serve.keys", "metamorphosis.io"],
)
def test_module_loads_without_the_trainer_or_opacus(module):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()}"


def test_the_probe_sees_the_trainer_when_it_is_imported():
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module="metamorphosis.train.loop")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "metamorphosis.train.loop" in done.stdout and "opacus" in done.stdout


def _module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (lazy imports inside functions included;
    edges into a package's ``__init__`` left out: it only re-exports)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src"
    files = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (root / "metamorphosis").rglob("*.py")
    }
    packages = {name for name, p in files.items() if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name.split(".") if name in packages else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            deps.update({target} | {f"{target}.{a.name}" for a in node.names})
        graph[name] = {d for d in deps if d in files and d not in packages and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_between_modules():
    graph = _module_graph()
    assert "metamorphosis.audit.sweeps" in graph and graph["metamorphosis.audit.run"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
