"""Dependency direction: ``hypergen/`` is the bottom layer; no import cycles; a light CLI.

The graph is read from the source with ``ast``: every ``import`` counts, also those inside
functions (a lazy import still ties the two modules together), except under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hypergen.cli import find_commands, main

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hypergen", "service", "training", "evaluation")
LIBRARY = "hypergen"


def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = project_modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name ``name`` imports (absolute, relative resolved), anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for stmt in node.body
        for child in ast.walk(stmt)
    }
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                candidate = f"{module}.{alias.name}"
                found.add(candidate if candidate in MODULES else module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (the longest project prefix of each name)."""
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for imported in _imported_names(name, path):
            parts = imported.split(".")
            while parts and ".".join(parts) not in MODULES:
                parts.pop()
            if parts and ".".join(parts) != name:
                edges.add(".".join(parts))
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    graph = import_graph()
    assert "hypergen.generator" in graph["service.engine"]
    assert graph["hypergen.cli"] >= {"hypergen.config"}
    # a made-up cycle through a lazy import is found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_imports():
    for name in MODULES:
        importlib.import_module(name)


def test_public_names_resolve():
    import hypergen

    for name in hypergen.__all__:
        assert getattr(hypergen, name) is not None, name


def test_hypergen_never_imports_its_users():
    graph = import_graph()
    back = {
        name: sorted(t for t in targets if t.split(".")[0] != LIBRARY)
        for name, targets in graph.items()
        if name.split(".")[0] == LIBRARY
    }
    assert {k: v for k, v in back.items() if v} == {}, "hypergen/ must not import these"
    # and nothing outside the project's graph sneaks in at run time: import all of hypergen in a
    # fresh interpreter and look at sys.modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {sorted(n for n in MODULES if n.split('.')[0] == LIBRARY)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {PACKAGES[1:]!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_training_evaluation_and_service_share_only_the_library():
    """The three ways in are siblings over hypergen/: what two of them share lives there."""
    graph = import_graph()
    users = ("training", "evaluation", "service")
    crossing = {
        name: sorted(t for t in targets if t.split(".")[0] in users and t.split(".")[0] != top)
        for name, targets in graph.items()
        if (top := name.split(".")[0]) in users
    }
    assert {k: v for k, v in crossing.items() if v} == {}


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], f"import cycles among the project's modules: {found}"


def test_help_and_argument_errors_do_not_import_torch():
    code = (
        "import sys\n"
        "from hypergen.cli import main\n"
        "assert main(['--help']) == 0\n"
        "assert main(['bogus']) == 2\n"
        "for argv in (['generate'], ['generate', '--help'], ['init-checkpoint', '--bogus']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


def test_serve_and_eval_are_found_through_entry_points(capsys):
    commands = find_commands()
    assert {"generate", "init-checkpoint", "serve", "eval"} <= set(commands)
    assert commands["serve"].origin == "service" and commands["eval"].origin == "evaluation"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out and "(from service)" in out and "(from evaluation)" in out
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "not-a-number"])
    assert exit_.value.code == 2 and "hypergen serve" in capsys.readouterr().err
