"""The package's layering and the absence of import cycles, read from the source with ``ast``.

Layers, bottom to top (a module may import its own layer and the layers below, never one above):

0. ``errors``, ``utils`` (and the package's ``__init__``);
1. ``data``, ``ops``, ``diffusion``;
2. ``nn``, ``evaluate``;
3. ``kinds`` (what differs between kinds of model: objective, inputs, prediction);
4. ``models`` (each registry entry points to its kind);
5. ``train``, ``predict``;
6. ``study``, ``bench``, ``demo`` (orchestrators: train, predict and evaluate);
7. ``cli`` (the thin command-line layer over everything).

Every import counts, wherever it is written (module level, inside a function, under ``if TYPE_CHECKING``),
and so do dynamic ones: ``importlib.import_module("mddose.x")`` and any string constant that names a module
of the package (a table of ``"mddose.data.formats.nifti"`` read by a lazy loader); an f-string
``f"mddose.x.{name}"`` counts as an import of the package ``mddose.x``. A cycle is any set of modules that
reach each other through these imports (found with Tarjan's algorithm), lazy imports included.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mddose"

LAYERS: dict[str, int] = {
    "__init__": 0, "errors": 0, "utils": 0,
    "data": 1, "ops": 1, "diffusion": 1,
    "nn": 2, "evaluate": 2,
    "kinds": 3,
    "models": 4,
    "train": 5, "predict": 5,
    "study": 6, "bench": 6, "demo": 6,      # orchestrators: train, predict, evaluate
    "cli": 7, "__main__": 7,
}


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line`` (``how``: "import", "dynamic" or "f-string")."""

    source: str
    target: str
    line: int
    how: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}" + ("" if self.how == "import" else f" ({self.how})")


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (``pkg/__init__.py`` → ``pkg``)."""
    files = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


MODULES = module_files()


def layer_of(module: str) -> int:
    """The layer of a dotted module name of the package (``KeyError`` for a part not in :data:`LAYERS`)."""
    parts = module.split(".")
    return LAYERS["__init__" if len(parts) == 1 else parts[1]]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a (possibly relative) ``from ... import``."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _own(name: str) -> str | None:
    """The package module that importing ``name`` loads (the longest existing prefix), or None if foreign."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) or None


def _is_get_logger(node: ast.Call) -> bool:
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "getLogger") or (
        isinstance(func, ast.Name) and func.id == "getLogger")


def imports_of(module: str) -> list[Edge]:
    """Every import of a package module by ``module`` (see the module docstring), self-imports left out."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    logger_names = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call) and _is_get_logger(node)
                    for arg in node.args}
    edges: list[Edge] = []

    def add(target: str | None, node: ast.AST, how: str) -> None:
        if target is not None and target != module:
            edges.append(Edge(module, target, node.lineno, how))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_own(alias.name), node, "import")
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in MODULES else _own(base), node, "import")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
            if id(node) not in logger_names and node.value.startswith(f"{PACKAGE}."):
                add(node.value, node, "dynamic")
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            head = str(node.values[0].value)
            if head.startswith(f"{PACKAGE}.") and head.endswith(".") and head[:-1] in MODULES:
                add(head[:-1], node, "f-string")
    return sorted(set(edges), key=lambda e: (e.line, e.target, e.how))


GRAPH: dict[str, list[Edge]] = {m: imports_of(m) for m in MODULES}


def strongly_connected_components(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted({e.target for e in graph[root]})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted({e.target for e in graph.get(child, [])}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def describe_cycle(component: list[str], graph: dict[str, list[Edge]]) -> str:
    """The members of one import cycle and the imports that join them."""
    members = set(component)
    edges = [str(e) for m in component for e in graph[m] if e.target in members]
    return " ↔ ".join(component) + ":\n    " + "\n    ".join(edges)


# ---------------------------------------------------------------------------------------------- tests
def test_every_module_has_a_layer():
    unknown = sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYERS))
    assert not unknown, f"give these parts of {PACKAGE} a layer in tests/test_layering.py: {unknown}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_of_a_higher_layer(module):
    up = [f"{e} (layer {layer_of(e.target)} above {layer_of(module)})" for e in GRAPH[module]
          if layer_of(e.target) > layer_of(module)]
    assert not up, "imports of a higher layer:\n  " + "\n  ".join(up)


def test_no_import_cycle():
    cycles = strongly_connected_components(GRAPH)
    assert not cycles, f"{len(cycles)} import cycle(s) in {PACKAGE}:\n  " + "\n  ".join(
        describe_cycle(c, GRAPH) for c in cycles)


# ------------------------------------------------------------------ the checker itself can fail
@pytest.mark.parametrize("source, target", [
    ("mddose.models.registry", "mddose.cli.main"), ("mddose.models.md_dose", "mddose.train.config"),
    ("mddose.kinds.base", "mddose.models.registry"), ("mddose.train.trainer", "mddose.study.runner"),
    ("mddose.predict.patient", "mddose.bench.model"), ("mddose.study.runner", "mddose.cli.study"),
    ("mddose.demo", "mddose.cli.main"), ("mddose.evaluate.run", "mddose.predict.batch"),
])
def test_an_import_up_the_floors_would_fail(source, target):
    """The top of the house has floors too: e.g. a model importing the command line is refused."""
    assert source in MODULES and target in MODULES
    assert layer_of(target) > layer_of(source)



def _edges(pairs: dict[str, str]) -> dict[str, list[Edge]]:
    graph: dict[str, list[Edge]] = {}
    for source, targets in pairs.items():
        graph[source] = [Edge(source, t, 1, "import") for t in targets.split()]
    return graph


@pytest.mark.parametrize("pairs, cycles", [
    ({"a": "b", "b": "c", "c": ""}, []),
    ({"a": "b", "b": "a"}, [["a", "b"]]),
    ({"a": "b", "b": "c", "c": "a", "d": "a"}, [["a", "b", "c"]]),
    ({"a": "b", "b": "a", "c": "d", "d": "c", "e": "a c"}, [["a", "b"], ["c", "d"]]),
])
def test_cycle_finder(pairs, cycles):
    assert strongly_connected_components(_edges(pairs)) == cycles


def test_lazy_relative_and_dynamic_imports_are_seen(tmp_path, monkeypatch):
    pkg = tmp_path / PACKAGE
    (pkg / "data").mkdir(parents=True)
    (pkg / "train").mkdir()
    for f in ("__init__.py", "data/__init__.py", "train/__init__.py", "train/checkpoint.py"):
        (pkg / f).write_text("")
    (pkg / "data" / "io.py").write_text(
        "def f():\n    from ..train import checkpoint\n"
        "TABLE = {'x': ('mddose.train.checkpoint', 'load')}\n"
        "import logging\nlog = logging.getLogger('mddose.train')\n")
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    monkeypatch.setitem(globals(), "MODULES", module_files())
    edges = imports_of("mddose.data.io")
    assert [(e.target, e.line, e.how) for e in edges] == [("mddose.train.checkpoint", 2, "import"),
                                                        ("mddose.train.checkpoint", 3, "dynamic")]
