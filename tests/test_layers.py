"""The import graph points down the layers only, and no two packages import each other.

Layers, top to bottom (README, *Development*):

1. ``dscmr.cli``
2. demo, benchmarks, experiments and the service
3. retrieval (``dscmr.indexing``)
4. training, evaluation and corpus encoding (``dscmr.train``, ``dscmr.eval``, ``dscmr.vision_tasks``, ``dscmr.corpus``)
5. models, losses, data, encoders, vision models and layers
6. config, errors and utilities

Every import counts, those inside functions too, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dscmr"

LAYERS: dict[str, int] = {
    "cli": 1,
    "demo": 2,
    "benchmarks": 2,
    "experiments": 2,
    "serve": 2,
    "indexing": 3,
    "train": 4,
    "eval": 4,
    "vision_tasks": 4,
    "export": 4,
    "corpus": 4,
    "models": 5,
    "losses": 5,
    "data": 5,
    "encoders": 5,
    "vision": 5,
    "layers": 5,
    "config": 6,
    "errors": 6,
    "utils": 6,
}


def _unit(module: str) -> str | None:
    """``dscmr.indexing.bundle`` -> ``indexing``; ``dscmr`` itself -> None."""
    parts = module.split(".")
    if parts[0] != "dscmr" or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute or relative ``dscmr`` import in the file, with its line number."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "dscmr"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "dscmr":
                if target == "dscmr":  # ``from dscmr import x``: x is the unit
                    found += [(f"dscmr.{alias.name}", node.lineno) for alias in node.names]
                else:
                    found.append((target, node.lineno))
    return found


def _source_files() -> list[Path]:
    # dscmr/indexing and dscmr/cli link to the top-level folders; rglob does not follow links, so walk them too.
    files = list(PACKAGE.rglob("*.py"))
    for link in ("indexing", "cli"):
        real = (PACKAGE / link).resolve()
        files += [PACKAGE / link / p.relative_to(real) for p in real.rglob("*.py")]
    return sorted({f for f in files if "__pycache__" not in f.parts})


def _edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, 'file:line') for every import between two units."""
    edges = []
    for path in _source_files():
        src = _unit(_module_name(path))
        for target, line in _imports(path):
            dst = _unit(target)
            if src is not None and dst is not None and dst != src:
                edges.append((src, dst, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _source_files()} - {None}
    missing = sorted(u for u in units if u not in LAYERS)
    assert not missing, f"give these parts of dscmr a layer in tests/test_layers.py and the README: {missing}"


def test_imports_point_down_the_layers():
    upward = [
        f"{where}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
        for src, dst, where in _edges()
        if src in LAYERS and dst in LAYERS and LAYERS[dst] < LAYERS[src]
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_two_parts_import_each_other():
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for src, dst, loc in _edges():
        graph[src].add(dst)
        where.setdefault((src, dst), loc)
    cycles = []
    for start in sorted(graph):
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    cycles.append(
                        " -> ".join(f"{a} ({where[(a, b)]})" for a, b in zip(trail, trail[1:] + [start], strict=True))
                    )
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    assert not cycles, "import cycles between parts of dscmr:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from dscmr.indexing.bundle import Bundle\n", ["dscmr.indexing.bundle"]),
        ("def f():\n    from dscmr import demo\n", ["dscmr.demo"]),
        ("import dscmr.cli.main\n", ["dscmr.cli.main"]),
        ("from . import metrics\n", ["dscmr.eval"]),
    ],
)
def test_import_scanner_sees_every_form(tmp_path, monkeypatch, source, expected):
    """The scanner must not miss lazy, package-level or relative imports, or the layer tests pass vacuously."""
    pkg = tmp_path / "dscmr" / "eval"
    pkg.mkdir(parents=True)
    path = pkg / "probe.py"
    path.write_text(source, encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "dscmr")
    assert [name for name, _ in _imports(path)] == expected
