"""The house's dependency rule: imports point down the layers, never up or sideways.

cli -> api -> (indexer, search, classify, training) -> (models, sources, vectors)
    -> (storage, media) -> (types, errors). `demo` and `samples` sit beside the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import clipdex

PACKAGE = Path(clipdex.__file__).parent

#: Each top-level module or package of clipdex and its layer; a module may import its own
#: package and anything on a lower layer.
LAYERS = {
    "types": 0,
    "errors": 0,
    "defaults": 0,
    "storage": 1,
    "media": 1,
    "models": 2,
    "sources": 2,
    "vectors": 2,
    "indexer": 3,
    "search": 3,
    "classify": 3,
    "training": 3,
    "exchange": 3,
    "api": 4,
    "samples": 4,
    "demo": 5,
    "server": 5,
    "cli": 6,
    "__main__": 7,
    "__init__": 7,
}

#: Modules that must never import these, whatever the layers say.
FORBIDDEN = {"click": {layer for layer in LAYERS if layer not in ("cli", "__main__")}}


def top_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_tops(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports (clipdex.x), not relative ones")
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "clipdex":
                names = [f"clipdex.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "clipdex" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] == "click":
                found.add("click")
    return found


def test_every_module_has_a_layer():
    tops = {top_of(path) for path in PACKAGE.rglob("*.py")}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {tops - set(LAYERS)}"


def test_imports_point_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = top_of(path)
        for target in imported_tops(path):
            if target == "click":
                if here in FORBIDDEN["click"]:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports click")
                continue
            if target != here and LAYERS[target] >= LAYERS[here]:
                wrong.append(f"{path.relative_to(PACKAGE)} ({here}) imports {target}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_no_module_reaches_into_another_modules_private_names():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clipdex"):
                wrong += [
                    f"{path.relative_to(PACKAGE)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not wrong, "private names imported across modules:\n" + "\n".join(wrong)
