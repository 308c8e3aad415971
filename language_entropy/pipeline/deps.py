"""The files a stage runs: its script and every package module it imports, followed transitively.

Read from the source (AST), never by importing it, so the answer is the same for DVC (`dvc.yaml`'s
deps, kept equal to it by a test) and for the train stage's resume fingerprint, which hashes exactly
these files: editing code the train stage does not run never invalidates an interrupted run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "language_entropy"
ROOT = Path(__file__).resolve().parents[2]  # the checkout this package was imported from


def _module_file(root: Path, module: str) -> Path | None:
    """The file that importing `module` runs, if it is a module or regular package of ours."""
    if module.split(".")[0] != PACKAGE:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a namespace package (no __init__.py) runs no file; a name inside a module is not one


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name `path` imports, anywhere in the file (lazy imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from package import module`
    return names


def stage_files(script: str | Path, root: Path = ROOT) -> list[Path]:
    """`script` and the package files it runs, relative to `root`, sorted."""
    seen: set[Path] = set()
    todo = [root / script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then a/b/c
                found = _module_file(root, ".".join(parts[:depth]))
                if found is not None:
                    todo.append(found)
    return sorted(path.relative_to(root) for path in seen)
