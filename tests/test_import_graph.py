"""The modules of ``pushsvc`` import each other without a cycle.

Every import counts: module level, under ``if TYPE_CHECKING:``, and inside functions (a
back edge, even one only the type checker follows, means the cut between two layers is in
the wrong place). ``from pushsvc.x import y`` is an edge to ``pushsvc.x.y`` when that is a
module, else to ``pushsvc.x``; a package's ``__init__`` is a node of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pushsvc

ROOT = Path(pushsvc.__file__).parent

# Known cycles in parts another change is reworking, as (module, module) edges to ignore.
# Empty: an entry here needs a comment saying who removes it.
ALLOWED_EDGES: set[tuple[str, str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        modules[".".join(parts)] = (path, package)
    return modules


def import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, (path, package) in modules.items():
        here = name if package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges.update(known(a.name) for a in node.names if a.name.startswith("pushsvc"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source != "pushsvc" and not source.startswith("pushsvc."):
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    edges.add(full if full in modules else known(source))
        edges.discard(name)
        graph[name] = {e for e in edges if (name, e) not in ALLOWED_EDGES}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found is not None:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found is not None:
                return found
    return None


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "pushsvc.protocol.session" in graph["pushsvc.session"]  # module level
    assert "pushsvc.protocol.wires" in graph["pushsvc.metrics"]  # under TYPE_CHECKING
    assert "pushsvc.protocol" in graph  # a package's __init__ is a node


def test_find_cycle_reports_the_path() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_pushsvc_modules_import_each_other_without_a_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
