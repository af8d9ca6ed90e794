"""The import graph of sb_mal: no circle, and no arrow from a lower layer to a higher one.

Every ``import`` of sb_mal code counts, at module level or inside a function (a late import still
ties the two files together). The layers are those of docs/design.md, from the ground up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "sb_mal"

#: From the ground up; a module may import its own layer and those below.
LAYERS = (
    ("foundation", ("sb_mal", "sb_mal.fileio", "sb_mal.devices", "sb_mal.dsp", "sb_mal.allowlist")),
    ("audio, weights, models", ("sb_mal.audio", "sb_mal.weights", "sb_mal.trust", "sb_mal.listening", "sb_mal.models")),
    ("data, metrics, model folders", ("sb_mal.data", "sb_mal.metrics", "sb_mal.model_folder")),
    ("pretrained sources, checkpoints", ("sb_mal.pretrained", "sb_mal.checkpoints")),
    ("losses", ("sb_mal.losses",)),
    ("inference", ("sb_mal.inference",)),
    ("evaluation", ("sb_mal.evaluation",)),
    ("brains", ("sb_mal.brains",)),
    ("recipe skeleton", ("sb_mal.run",)),
    ("entry points", ("sb_mal.demo", "sb_mal.cli")),
)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: the sb_mal modules it imports}``; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for target in targets:
                found = owner(target) if target.startswith("sb_mal") else None
                if found and found != name:
                    graph[name].add(found)
    return graph


def layer_of(name: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in {__file__} (and docs/design.md)")
    return best[0]


def test_the_graph_is_read():
    graph = import_graph()
    assert "sb_mal.models.frozen" in graph["sb_mal.losses.model_taps"]  # a module-level import
    assert "sb_mal.metrics.composite" in graph["sb_mal.metrics.scoring"]  # a function-level one


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_arrow_runs_back_up():
    up = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
          for a, targets in import_graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not up, "\n".join(up)
