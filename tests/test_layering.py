"""The import layering: no subpackage imports the CLI, deploy/ reads the profile and never sizing/, and the
subpackages import each other without cycles (parsed with ast, so lazy imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trdeploy"
SUBPACKAGES = ("text", "sizing", "quant", "bench", "calibrate", "deploy")


def _imports(path: Path) -> set[str]:
    """Every trdeploy module `path` imports (absolute or relative, at any depth of the file)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return {n for n in found if n == "trdeploy" or n.startswith("trdeploy.")}


def _unit(name: str) -> str:
    """trdeploy.sizing.memory -> sizing; trdeploy.hub -> hub; trdeploy.cli.tune -> cli."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        unit = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else ""
        targets = {_unit(n) for n in _imports(path)} - {unit, ""}
        graph.setdefault(unit, set()).update(targets)
    return graph


def test_the_parser_sees_imports():
    # A check of the check: tuning imports memory; the CLI imports the library.
    assert "trdeploy.sizing.memory" in _imports(PACKAGE / "sizing" / "tuning.py")
    assert "sizing" in _graph()["cli"]


def test_no_subpackage_imports_the_cli():
    for sub in SUBPACKAGES:
        for path in (PACKAGE / sub).rglob("*.py"):
            bad = sorted(n for n in _imports(path) if _unit(n) == "cli")
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_deploy_reads_the_profile_not_sizing():
    for path in (PACKAGE / "deploy").rglob("*.py"):
        bad = sorted(n for n in _imports(path) if _unit(n) == "sizing")
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def _cycle(graph: dict[str, set[str]], units: set[str]) -> list[str] | None:
    """A cycle among `units` in `graph` (depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set()) & units):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for unit in sorted(units):
        if unit not in state and (found := visit(unit, [unit])):
            return found
    return None


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}, {"a", "b", "c"}) is None


def test_no_import_cycles_between_subpackages():
    # Top-level modules (errors.py, hub.py, deployment.py, output.py) are shared below every subpackage.
    graph = _graph()
    cycle = _cycle(graph, set(SUBPACKAGES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
