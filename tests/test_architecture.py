"""The architecture holds: imports run one way, no cycles, short functions, the library free of the CLI.

docs/architecture.md draws the layers; ``RANKS`` below is the same picture as data. A module may
import modules of its own top-level component and of lower ranks, never higher ones, and that
counts imports inside functions too (a late import is still a dependency).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ghostify"

# top-level component of ghostify -> rank (docs/architecture.md, "Layers")
RANKS = {
    "_version": 0, "errors": 0,
    "utils": 1, "_torch": 1,
    "layers": 2, "plan": 2, "data": 2, "runtime": 2, "gates": 2, "forward": 2,
    "models": 3, "policy": 3,
    "fx": 4,
    "transfer": 5, "report": 5, "export": 5,
    "train": 6, "tune": 6,
    "conversion": 7,
    "io": 8, "reproduce": 8,
    "": 9,  # the package root (ghostify/__init__.py): the public API, lazily
    "cli": 10, "__main__": 11,
}
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    """Every ghostify module ``path`` imports, at any depth of the file (functions included)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ghostify")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "ghostify":
            found.add(node.module)
            for alias in node.names:  # `from ghostify.cli import app`: a submodule, if one exists
                sub = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                        (PACKAGE.parent / Path(*sub.split(".")) / "__init__.py").exists():
                    found.add(sub)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_component_has_a_rank() -> None:
    missing = {_component(m) for m in _graph()} - set(RANKS)
    assert not missing, f"add {sorted(missing)} to RANKS (and to docs/architecture.md)"


def test_imports_run_one_way() -> None:
    wrong = []
    for module, imported in _graph().items():
        here = _component(module)
        for target in imported:
            there = _component(target)
            if there != here and RANKS[there] >= RANKS[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports running backwards:\n" + "\n".join(sorted(wrong))


def test_no_library_module_imports_the_cli() -> None:
    offenders = [m for m, imported in _graph().items() if _component(m) not in ("cli", "__main__")
                 and any(_component(t) == "cli" for t in imported)]
    assert not offenders


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_library_functions_are_short() -> None:
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p.parent.name != "cli"),
                         ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_library_errors_speak_in_library_terms(path: Path) -> None:
    """No error the library raises names a command-line flag: the CLI maps arguments to flags."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            text = " ".join(s.value for s in ast.walk(node.exc) if isinstance(s, ast.Constant)
                            and isinstance(s.value, str))
            assert not FLAG.search(text), f"{path.name}:{node.lineno}: {text!r}"


def test_public_names_are_never_shadowed_by_submodules() -> None:
    """Importing a submodule binds it on its package: no public name may be a submodule's name."""
    import importlib

    import ghostify

    for name, module in ghostify._LAZY.items():
        importlib.import_module(module)
        assert not isinstance(getattr(ghostify, name), type(ghostify)), name
