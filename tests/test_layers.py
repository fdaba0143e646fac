"""The layer contract: jaxpot's modules import only downward, and no import circle exists.

Every ``import`` statement counts, including those inside functions (a function-level import
that goes up a layer is the same knot, only hidden). The layers, from the bottom::

    0  units, files, registry, typing          (no jaxpot imports, or only each other)
    1  system, neighbors, io                   (structures, edges, reading files)
    2  potential, serialization, data          (the potential protocol, model files, datasets)
    3  potentials, descriptors, nn             (physics terms and building blocks)
    4  models                                  (full model families)
    5  train, md, ase, testing, jaxmd, uncertainty  (what runs a model, and how sure it is)
    6  analysis, active, lammps, parallel      (what builds on running models)
    7  demo, cli, __main__                     (applications)

A module may import its own layer or lower ones; within a layer, the import graph must still be
free of circles. The package root (``jaxpot/__init__.py``) is the public namespace, not a layer:
it may import anything, and a module may import ``__version__`` from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jaxpot"

LAYERS = [
    {"units", "files", "registry", "typing", "_version"},
    {"system", "neighbors", "io"},
    {"potential", "serialization", "data"},
    {"potentials", "descriptors", "nn"},
    {"models"},
    {"train", "md", "ase", "testing", "jaxmd", "uncertainty"},
    {"analysis", "active", "lammps", "parallel"},
    {"demo", "cli", "__main__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """jaxpot modules imported anywhere in ``path`` (``from jaxpot import md`` → jaxpot.md)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "jaxpot"}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, path.name == "__init__.py")
            if target.split(".")[0] != "jaxpot":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(name, path, known) if m in known and m != name}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    missing = sorted(m for m in _modules() if m != "jaxpot" and _layer(m) is None)
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


def test_imports_only_go_down():
    graph = _graph()
    upward = []
    for module, targets in graph.items():
        if module == "jaxpot":
            continue
        for target in targets:
            if target != "jaxpot" and _layer(target) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {target} "
                              f"(layer {_layer(target)})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    # The package root imports its submodules by design; leave it out of the circle search.
    graph = {m: t - {"jaxpot"} for m, t in _graph().items() if m != "jaxpot"}
    assert _cycles(graph) == []


def test_the_checks_can_fail():
    """The contract checks really find what they look for."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("jaxpot.train.loop") > _layer("jaxpot.models.gap") > _layer("jaxpot.potential")
    graph = _graph()
    assert "jaxpot.system" in graph["jaxpot.potential"]  # imports are found at all
    node = ast.parse("from ..potential import Potential").body[0]
    assert _resolve(node, "jaxpot.models.gap", False) == "jaxpot.potential"


@pytest.mark.parametrize("name", ["nequip", "mace", "bpnn", "gap", "lennard_jones", "morse",
                                  "with_element_refs", "sum"])
def test_every_family_loads_in_a_fresh_process(name):
    """``from_config`` finds each family without the caller importing its module first."""
    import subprocess
    import sys

    code = ("import jaxpot.registry as r, sys; f = r.factory(sys.argv[1]); "
            "print(f.__module__)")
    out = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("jaxpot.")
