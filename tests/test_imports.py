"""The import graph of c4kemi and c4http: no cycle, and the decision core stays apart from the service.

Read from the source with ``ast``, not by importing: every import counts,
at the top of a module or inside a function (a function-local import that
dodges a cycle at import time is still a cycle in the design). Relative
imports are resolved; ``from pkg import name`` is an import of the module
``pkg.name`` when there is one, else of ``pkg``. Only the project's own
modules are nodes.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("c4kemi", "c4http")
# The one c4kemi module that may import c4http: the CLI entry point, to dispatch `c4 serve`.
CLI = "c4kemi.cli"


def project_modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Every module of the packages: dotted name -> (file, is a package's __init__)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _known(name: str, modules) -> str | None:
    """``name`` or its longest prefix that is a project module; None outside the project."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, is_package: bool, modules) -> list[tuple[str, int]]:
    """The project modules ``module`` imports, each with the line of the import."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, modules)
                if target is not None:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _known(base, modules)
                if target is not None:
                    found.append((target, node.lineno))
    return found


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """module -> the modules it imports; (module, imported) -> the first line importing it."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], int] = {}
    for name, (path, is_package) in modules.items():
        for target, line in imports_of(name, path, is_package, modules):
            graph[name].add(target)
            lines.setdefault((name, target), line)
    return graph, lines


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def a_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """One cycle through the first of ``members`` (a strongly connected component), as a path back to it."""
    start, inside = members[0], set(members)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way round
        node = queue.pop(0)
        for child in sorted(graph[node] & inside):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    raise AssertionError(f"{members} is not a cycle")


def cycles(graph: dict[str, set[str]], lines: dict[tuple[str, str], int]) -> list[str]:
    """Each import cycle: its modules, one way round, and the lines that make it."""
    found = []
    for component in strongly_connected(graph):
        if len(component) > 1 or component[0] in graph[component[0]]:
            cycle = a_cycle(graph, component)
            steps = ", ".join(f"{a} imports {b} (line {lines[a, b]})" for a, b in zip(cycle, cycle[1:]))
            found.append(f"cycle among {', '.join(component)}: {' -> '.join(cycle)}; {steps}")
    return found


def c4http_imports(graph: dict[str, set[str]], lines: dict[tuple[str, str], int]) -> list[str]:
    """Each import of c4http by a c4kemi module other than the CLI, and of the CLI by another module of c4kemi."""
    found = [
        f"{module} imports {target} (line {lines[module, target]})"
        for module, targets in sorted(graph.items())
        if module.split(".")[0] == "c4kemi" and module != CLI
        for target in sorted(targets)
        if target.split(".")[0] == "c4http"
    ]
    # ... nor may one reach c4http through the CLI.
    found += [
        f"{module} imports {CLI} (line {lines[module, CLI]}), which imports c4http"
        for module, targets in sorted(graph.items())
        if module.split(".")[0] == "c4kemi" and module != CLI and CLI in targets
    ]
    return found


def test_the_graph_sees_the_packages_and_their_imports():
    """Guards the guard: an empty or blind graph would pass everything below."""
    graph, _ = import_graph()
    assert {"c4kemi", "c4kemi.cli", "c4kemi.db.source", "c4http.app", "c4http.server"} <= set(graph)
    assert "c4kemi.core.decision" in graph["c4kemi"]  # from .core.decision import ... in a package __init__
    assert "c4kemi.core.table" in graph["c4kemi.sources.feed_writer"]  # from ..core.table import ...
    assert "c4kemi.sources.feed" in graph["c4kemi.sources.feed_reader"]  # from .feed import ...
    assert "c4kemi.core.document" in graph["c4kemi.db.source"]  # from ..core.document import ...
    assert "c4http.server" in graph[CLI]  # a function-local import
    assert "c4kemi.core.decision" in graph["c4http.views"]  # an absolute one


def test_the_checks_catch_a_cycle_and_c4kemi_importing_c4http(tmp_path):
    """Guards the guard: on a small tree with both faults, function-local ones included, both checks report them."""
    files = {
        "c4kemi/__init__.py": "from .a import A\n",
        "c4kemi/a.py": "from . import b\nA = 1\n",
        "c4kemi/b.py": "def f():\n    from .a import A  # a cycle dodged at import time is still one\n    return A\n",
        "c4kemi/cli.py": "def serve():\n    from c4http.web import reply\n",
        "c4kemi/core.py": "import c4http.web\n",
        "c4kemi/db/__init__.py": "",
        "c4kemi/db/store.py": "def g():\n    from c4http import web\n    from .. import cli\n",
        "c4http/__init__.py": "",
        "c4http/web.py": "from c4kemi.a import A\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph, lines = import_graph(tmp_path)
    assert cycles(graph, lines) == ["cycle among c4kemi.a, c4kemi.b: c4kemi.a -> c4kemi.b -> c4kemi.a; "
                                    "c4kemi.a imports c4kemi.b (line 1), c4kemi.b imports c4kemi.a (line 2)"]  # fmt: skip
    assert c4http_imports(graph, lines) == [
        "c4kemi.core imports c4http.web (line 1)",
        "c4kemi.db.store imports c4http.web (line 2)",
        "c4kemi.db.store imports c4kemi.cli (line 3), which imports c4http",
    ]


def test_no_import_cycle():
    found = cycles(*import_graph())
    assert not found, "import cycles:\n" + "\n".join(found)


def test_c4kemi_imports_c4http_only_in_the_cli():
    found = c4http_imports(*import_graph())
    assert not found, "only c4kemi/cli.py may import c4http:\n" + "\n".join(found)
