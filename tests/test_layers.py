"""The package's import contract: layers only import downwards, and nothing imports in a circle.

Every import counts, a lazy one inside a function too (it is still a dependency). Layers, bottom to top:

    0  errors, version, files, config       what everything shares
    1  ops, eval                            geometry, losses, post-processing, metrics
    2  models, data, checkpoint             networks; datasets and pipelines; a model rebuilt from its config
    3  lit                                  training: Lightning modules, the training driver, the run folder
    4  deploy                               what ships: fusion, export, quantisation, exported-model metadata
    5  perf                                 measurement: timing, complexity, memory, benchmarks
    6  predictor, viz                       a trained model on images, and drawing its results
    7  commands                             the command-line tools (``tools/*.py`` are their shims)

A module may import its own layer or one below. ``mnv2_vision/__init__.py`` is the package's face (it re-exports
``load``, ``build_model``, ...) and stands above everything.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mnv2_vision"
LAYERS = {
    "errors": 0, "version": 0, "files": 0, "config": 0, "configs": 0,
    "ops": 1, "eval": 1,
    "models": 2, "data": 2, "checkpoint": 2,
    "lit": 3,
    "deploy": 4,
    "perf": 5,
    "predictor": 6, "viz": 6,
    "commands": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of ``path`` into the package (``from pkg import mod`` → ``pkg.mod``)."""
    module = _module_name(path)
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mnv2_vision"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "mnv2_vision":
                found += [(node.lineno, f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target)
                          for a in node.names]
    return found


def import_graph() -> dict[str, set[tuple[int, str]]]:
    """Module → the package modules it imports (with the line), package faces (``__init__``) left out as sources
    of circles: importing ``mnv2_vision.data`` runs ``data/__init__.py``, which imports nothing above it."""
    graph: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for path in sorted(PKG.rglob("*.py")):
        src = _module_name(path)
        graph[src] |= {(line, t) for line, t in imports_of(path) if t != src}
    return graph


def layer(module: str) -> int:
    return LAYERS[module.split(".")[1]] if module.count(".") else 99


def upward_imports(graph: dict[str, set[tuple[int, str]]]) -> list[str]:
    return sorted(f"{src}:{line} imports {t} (layer {layer(src)} → {layer(t)})"
                  for src, targets in graph.items() for line, t in targets
                  if src != "mnv2_vision" and t != "mnv2_vision" and layer(t) > layer(src))


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def _folder(module: str) -> str:
    """The folder a module lies in (a package's face: the package itself)."""
    return module if (ROOT.joinpath(*module.split(".")) / "__init__.py").is_file() else module.rsplit(".", 1)[0]


def test_every_part_of_the_package_has_a_layer():
    parts = {m.split(".")[1] for m in import_graph() if m.count(".")}
    assert parts <= set(LAYERS), f"give these a layer in LAYERS: {sorted(parts - set(LAYERS))}"


def test_imports_only_point_down():
    ups = upward_imports(import_graph())
    assert not ups, "imports up a layer:\n" + "\n".join(ups)


def test_no_import_circles_between_modules_or_folders():
    graph = import_graph()
    faces = {m for m in graph if _folder(m) == m}  # __init__ modules only re-export what lies below them
    modules = {src: {t for _, t in targets if t not in faces} for src, targets in graph.items() if src not in faces}
    folders: dict[str, set[str]] = defaultdict(set)
    for src, targets in graph.items():
        if src in faces:
            continue
        folders[_folder(src)] |= {_folder(t) for _, t in targets} - {_folder(src)}
    assert not circles(modules), f"modules importing each other: {circles(modules)}"
    # a folder may import its own subfolders (data → data.io) but no two folders may need each other
    nested = {f: {t for t in ts if not t.startswith(f + ".") and not f.startswith(t + ".")}
              for f, ts in folders.items()}
    assert not circles(nested), f"folders importing each other: {circles(nested)}"


def test_the_contract_can_fail():
    """A made-up circle and a made-up upward import are caught (so a green run means something)."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    fake = {"mnv2_vision.data.coco": {(3, "mnv2_vision.lit.common")},
            "mnv2_vision.lit.common": {(9, "mnv2_vision.ops")}}
    assert upward_imports(fake) == ["mnv2_vision.data.coco:3 imports mnv2_vision.lit.common (layer 2 → 3)"]
