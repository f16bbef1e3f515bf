"""Imports inside ``mtljax/`` only point down the layers of DESIGN.md, and no modules import each other
in a circle — function-level imports included (an import that dodges a cycle at run time is still a
cycle in the design)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).parents[1] / "mtljax"

# rank of every top-level part of the package: a module may import its own rank or lower
RANKS = {
    "mtljax.config": 0,
    "mtljax.tasks": 1, "mtljax.stats": 1, "mtljax.cost": 1,
    "mtljax.metrics": 2, "mtljax.optim": 2, "mtljax.parallel": 2,
    "mtljax.data": 3, "mtljax.models": 3, "mtljax.merge": 3,
    "mtljax.trainer": 4,
    "mtljax.commands": 5, "mtljax.__main__": 5, "mtljax": 6,
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("mtljax",) + path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: pathlib.Path, known) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod when that is a module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "mtljax" or t.startswith("mtljax."))
    return found


def _part(module: str) -> str:
    return module if module in ("mtljax", "mtljax.__main__") else ".".join(module.split(".")[:2])


def _graph():
    mods = _modules()
    return {name: {t for t in _imports(name, path, mods) if t in mods and t != name} for name, path in mods.items()}


def test_every_part_has_a_rank():
    assert {_part(m) for m in _modules()} <= set(RANKS), sorted({_part(m) for m in _modules()} - set(RANKS))


def test_imports_point_down():
    upward = [f"{src} -> {dst}" for src, dsts in _graph().items() for dst in dsts
              if RANKS[_part(dst)] > RANKS[_part(src)]]
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
