"""The package layering of docs/DESIGN.md, checked on every import statement of every module (also the ones
inside functions): utils <- models <- data <- train <- tools <- cli, no import runs upward, and no two
modules import each other (directly or through a longer cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pitvit"
LAYERS = ("utils", "models", "data", "train", "tools", "cli")  # each may import only those before it


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The pitvit modules a file imports, resolved to module names (``from a import b`` counts b when b is a
    module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    known = {_module_name(p) for p in SRC.rglob("*.py")}
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pitvit"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("pitvit"):
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            out.update(subs or [mod])
    return {m for m in out if m != name}


GRAPH = {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_runs_upward():
    bad = []
    for mod, deps in GRAPH.items():
        here = _layer(mod)
        if here is None:
            continue
        bad += [f"{mod} -> {d}" for d in deps if _layer(d) is not None and _layer(d) > here]
        bad += [f"{mod} -> {d} (the top-level package)" for d in deps if d == "pitvit"]
    assert not bad, "imports that run upward:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    # A package's __init__ re-exports its own modules; edges from a module to its own package's __init__
    # (a parent) would make every re-export a cycle, so the check is between modules, not packages.
    def edges(mod: str) -> set[str]:
        return {d for d in GRAPH.get(mod, ()) if not mod.startswith(d + ".") and d in GRAPH}

    cycles = set()
    for start in GRAPH:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges(node):
                if nxt == start:
                    cycles.add(" -> ".join(path + (start,)))
                elif nxt not in seen and not (nxt in GRAPH and start.startswith(nxt + ".")):
                    seen.add(nxt)
                    stack.append((nxt, path + (nxt,)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_is_checked(layer):
    """The checks above see modules in every layer (a renamed folder would silently empty them)."""
    assert any(_layer(m) == LAYERS.index(layer) for m in GRAPH)
