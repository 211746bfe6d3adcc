"""The package layout as a contract: no protocol named outside its package, no private module or name imported
across packages (the import-linter contracts in pyproject.toml check the layering itself)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from stepscope import protocols

PACKAGE = Path(__file__).parents[2] / "stepscope"
NAMES = frozenset(protocols.names())


def modules() -> Iterator[tuple[str, ast.Module]]:
    """`(path under stepscope/, syntax tree)` of every module."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield str(path.relative_to(PACKAGE)), ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def names_a_protocol(node: ast.AST) -> bool:
    """A branch on a protocol's name: a comparison with it, a dict key or a `case` naming it."""
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        return any(isinstance(o, ast.Constant) and o.value in NAMES for o in operands)
    if isinstance(node, ast.Dict):
        return any(isinstance(k, ast.Constant) and k.value in NAMES for k in node.keys)
    if isinstance(node, ast.MatchValue):
        return isinstance(node.value, ast.Constant) and node.value.value in NAMES
    return False


def test_nothing_outside_the_protocols_branches_on_a_protocol() -> None:
    """The engine, exporters, receivers and commands use the registry and its contract: none compares with a
    protocol's name or keys a table by it (protocol classes cannot be named there: lint-imports forbids the
    imports)."""
    assert {"assistants", "agents", "responses"} <= NAMES
    branches = [
        f"{path}:{getattr(node, 'lineno', '?')}"
        for path, tree in modules()
        if not path.startswith(("protocols/", "simulator/"))
        for node in ast.walk(tree)
        if names_a_protocol(node)
    ]
    assert branches == []


def test_no_private_module_or_name_is_imported_from_another_package() -> None:
    """A module or name whose name starts with one underscore is its package's business alone."""
    crossings = []
    for path, tree in modules():
        package = ".".join(("stepscope", *Path(path).parent.parts))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            for name in imported:
                parts = name.split(".")
                private = next((i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")), None)
                if parts[0] == "stepscope" and private is not None and ".".join(parts[:private]) != package:
                    crossings.append(f"{path}:{node.lineno} {name}")
    assert crossings == []
