"""The package's imports (module level and inside functions) go one way, down the layers of DESIGN.md, with no
import cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmrec_gen"
# DESIGN.md: data -> features -> prompting -> models / recsys -> rank / train -> eval -> jobs -> cli. A module may
# import its own layer and the layers below; rank and train are peers that never import each other.
LAYERS = {
    "data": 0, "features": 1, "prompting": 2, "models": 3, "recsys": 4, "rank": 5, "train": 5, "eval": 6,
    "jobs": 7, "prompts": 0,
}  # fmt: skip
TOP = 8  # cli.py, cli_*.py, demo.py, __main__.py


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every mmrec_gen module `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mmrec_gen"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmrec_gen"):
            for alias in node.names:  # `from mmrec_gen.prompting import samples` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):
        return parts[1], LAYERS[parts[1]]
    return "top", TOP


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(files)) - {m} for m, p in files.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        name, level = layer(module)
        for target in targets:
            tname, tlevel = layer(target)
            if tlevel > level or (tlevel == level and tname != name and level < TOP):
                bad.append(f"{module} ({name}) imports {target} ({tname})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_upward_import_between_layers():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("graph", "upward", "cyclic"),
    [
        ({"mmrec_gen.rank.a": {"mmrec_gen.eval.b"}, "mmrec_gen.eval.b": set()}, 1, 0),
        ({"mmrec_gen.rank.a": {"mmrec_gen.train.b"}, "mmrec_gen.train.b": set()}, 1, 0),
        ({"mmrec_gen.models.a": {"mmrec_gen.models.b"}, "mmrec_gen.models.b": {"mmrec_gen.models.a"}}, 0, 1),
        ({"mmrec_gen.cli": {"mmrec_gen.rank.a"}, "mmrec_gen.rank.a": {"mmrec_gen.data.b"}}, 0, 0),
    ],
)
def test_the_checks_catch_what_they_look_for(graph, upward, cyclic):
    assert len(upward_imports(graph)) == upward
    assert len(cycles(graph)) == cyclic
