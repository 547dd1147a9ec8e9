"""The package layout is the architecture: layers, no import circles, backend code only in backends.

Layers, lowest first (docs/architecture.md explains each). A module may import
modules of its own layer or below, never above; imports inside functions count
too, imports only for type checking (``if TYPE_CHECKING:``) do not.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "torchckpt"

#: top-level module or subpackage -> layer
LAYERS: dict[str, int] = {
    "errors": 0,
    "layout": 0,
    "text": 0,
    "hashing": 1,
    "records": 1,
    "rng": 1,
    "fastload": 1,
    "storage": 2,
    "manifest": 3,
    "retention": 3,
    "selectors": 4,
    "lifecycle": 4,
    "formats": 4,
    "saving": 5,
    "restoring": 5,
    "folders": 5,
    "administration": 5,
    "reading": 5,
    "copying": 5,
    "tiers": 5,
    "maintenance": 5,
    "async_save": 5,
    "staging": 5,
    "distributed": 5,
    "export": 5,
    "summary": 5,
    "training": 5,
    "live_objects": 5,
    "manager": 6,
    "transfer": 7,
    "integrations": 8,
    "demo": 8,
    "cli": 9,
    "__init__": 10,
    "__main__": 10,
}
MAX_LINES = 460


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else path.stem


def _qualname(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = ["torchckpt", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, type_only_too: bool = False) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every runtime import of ``path`` (and type-only ones)."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for n in ast.walk(node))
    package = _qualname(path).split(".") if path.name == "__init__.py" else _qualname(path).split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only and not type_only_too:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            out.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
    return out


def test_every_module_has_a_layer_and_a_size_limit() -> None:
    for path in _modules():
        assert _unit(path) in LAYERS, f"{path.relative_to(SRC)}: add its package/module to LAYERS and docs"
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines: split it by concern"


def test_no_import_goes_up_a_layer_and_no_private_names_cross_modules() -> None:
    problems = []
    for path in _modules():
        unit = _unit(path)
        for module, names, line in _imports(path):
            if not module.startswith("torchckpt"):
                continue
            parts = module.split(".")
            # ``from torchckpt import manifest``: the submodules are what is imported
            targets = {n for n in names if n in LAYERS} if len(parts) == 1 else {parts[1]}
            for target in targets or {"__init__"}:
                if target != unit and LAYERS[target] > LAYERS[unit]:
                    problems.append(
                        f"{path.relative_to(SRC)}:{line} imports {module} {names} (layer "
                        f"{LAYERS[target]} > {LAYERS[unit]})"
                    )
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and target != unit:
                problems.append(f"{path.relative_to(SRC)}:{line} imports private {private} from {module}")
    assert not problems, "\n".join(problems)


def test_no_import_circles_between_modules() -> None:
    """Type-only imports count here: a module that needs another only for its types still depends on it."""
    graph: dict[str, set[str]] = defaultdict(set)
    names = {_qualname(p) for p in _modules()}
    for path in _modules():
        me = _qualname(path)
        for module, imported, _ in _imports(path, type_only_too=True):
            if not module.startswith("torchckpt"):
                continue
            targets = {f"{module}.{n}" for n in imported if f"{module}.{n}" in names} or {module}
            graph[me].update(t for t in targets if t in names and t != me and not me.startswith(t + "."))
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(names):
        if node not in seen:
            visit(node)


BACKEND_WORDS = re.compile(
    r"\bis_(local|s3|memory)\b|\bstorage\.fs\b|\.fs\.(open|cat|cat_file|pipe|pipe_file|rm|ls|"
    r"info|exists|makedirs|mv|call_s3|_call_s3)\("
)


def test_backend_differences_and_fs_calls_live_only_in_storage_backends() -> None:
    offenders = [
        f"{p.relative_to(SRC)}:{i}: {line.strip()}"
        for p in _modules()
        if _unit(p) != "storage"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if BACKEND_WORDS.search(line)
    ]
    assert not offenders, "\n".join(offenders)
