"""The package's import graph: no circles inside `sow`, and only the CLI imports the CLI.

The graph is read from the source with `ast`. Imports under `if TYPE_CHECKING:` count too
(issue 24): a cycle that exists only for the type checker still ties two modules together, so
neither can be read, moved or tested without the other. An import `from sow.x import y` where `y`
is a submodule counts as an edge to `sow.x.y`; an import of a package counts as an edge
to its `__init__`, which is why modules inside `sow` import names from the module that
defines them rather than from `sow` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOW = Path(__file__).resolve().parents[1] / "sow"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_checking: bool = True):
    """Yield (module, names) of every import in `tree`, at any depth (with `type_checking` False,
    not those under `if TYPE_CHECKING:`)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, ()
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module, tuple(a.name for a in child.names)
            stack.append(child)


def import_graph(root: Path = SOW, type_checking: bool = True) -> dict[str, set[str]]:
    """Map every module of the package under `root` to the package modules it imports
    (with `type_checking` False, leaving out the imports made only for the type checker)."""
    package = root.name
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for module, names in _imports(ast.parse(path.read_text(), filename=str(path)), type_checking):
            if module != package and not module.startswith(package + "."):
                continue
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in files]
            if submodules:
                edges.update(submodules)
                if len(submodules) < len(names):
                    edges.add(module)
            else:
                edges.add(module)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_imports_the_cli():
    graph = import_graph()
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if not (module == "sow.cli" or module.startswith("sow.cli.") or module == "sow.__main__")
        for target in targets
        if target == "sow.cli" or target.startswith("sow.cli.")
    )
    assert offenders == []


def test_every_subpackage_says_what_it_holds_and_may_import():
    for init in SOW.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 15, f"{init.relative_to(SOW.parent)} needs a docstring"
        if init.parent != SOW:
            assert "import" in doc, f"{init.relative_to(SOW.parent)}: say what it may import"


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def test_a_planted_cycle_is_found(tmp_path):
    root = _plant(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "def f():\n    import pkg.c\n",
        "c.py": "from pkg import a\n",
    })
    assert find_cycle(import_graph(root)) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]


def test_type_checking_imports_are_edges(tmp_path):
    root = _plant(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
    })
    assert find_cycle(import_graph(root)) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle(import_graph(root, type_checking=False)) is None


@pytest.mark.parametrize("text", ["import pkg.a\n", "from pkg.a import thing\n", "from pkg import a\n"])
def test_every_import_form_is_an_edge(tmp_path, text):
    root = _plant(tmp_path, {"__init__.py": "", "a.py": "thing = 1\n", "b.py": text})
    assert import_graph(root)["pkg.b"] == {"pkg.a"}
