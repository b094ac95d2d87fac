"""The package layout: stages in one direction, no import circles.

The layers, lowest first. A module may import from lower layers and from
its own package; never from a higher layer or a sibling in the same layer.
Imports inside ``if TYPE_CHECKING:`` are annotations, not dependencies.

``python -m tests.test_layout`` prints the module-to-module imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .helpers import REPO

PACKAGE = REPO / "pipeline"
LAYERS = (
    ("errors",),
    ("volume", "bones", "parallel", "memory"),
    ("plan",),
    ("config",),
    ("segment",),
    ("geometry",),
    ("design",),
    ("qa",),
    ("io", "phantom"),
    ("run",),
    ("case",),
    ("batch",),
    ("evaluate", "bench", "bench_peer", "cli"),
    ("__main__",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def modules() -> list[str]:
    """Every module of the package, dotted ("pipeline.segment.labels")."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(module: str) -> set[str]:
    """The pipeline modules ``module`` imports (at any depth of its code)."""
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    is_package = path.name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.ImportFrom):
                base = (package[:len(package) - child.level + 1] if child.level else [])
                target = ".".join(base + (child.module.split(".") if child.module else []))
                if target.split(".")[0] == "pipeline":
                    found.add(target)
                    found.update(f"{target}.{a.name}" for a in child.names
                                 if (REPO / Path(*target.split(".")) / f"{a.name}.py").exists())
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "pipeline")
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(module)
    return found


def unit(module: str) -> str:
    """The layer unit of a module: its stage package, or the top-level module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipeline"


def test_every_module_is_in_a_layer():
    assert {unit(m) for m in modules()} - {"pipeline"} <= set(RANK)


def test_imports_go_down_the_layers_only():
    wrong = []
    for module in modules():
        src = unit(module)
        if src == "pipeline":
            continue  # pipeline/__init__.py imports nothing
        for target in imports_of(module):
            dst = unit(target)
            if dst == "pipeline" or dst == src:
                continue
            if RANK[dst] >= RANK[src]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_between_modules():
    graph = {m: imports_of(m) for m in modules()}
    state: dict[str, int] = {}
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for m in graph:
        if m not in state:
            walk(m, [m])
    assert not cycles, "\n".join(cycles)


def test_every_module_imports_on_its_own():
    """Each module first in a fresh set of pipeline modules: an import circle
    that only bites in one order shows here. One interpreter, the package's
    modules dropped from sys.modules before each import (``__main__`` runs
    the command line when imported, so it is left out)."""
    code = (
        "import importlib, sys\n"
        f"for name in {[m for m in modules() if m != 'pipeline.__main__']!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'pipeline' or m.startswith('pipeline.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


if __name__ == "__main__":
    for m in modules():
        print(f"{m}: {', '.join(sorted(imports_of(m))) or '-'}")
