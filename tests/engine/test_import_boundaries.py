"""Imports flow one way: the engine and the kernels never import ray, and the model (models/,
layers/) never imports the kernels: backends and fast paths are handed to it or swapped in."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_and_kernels_never_import_ray() -> None:
    files = [*(ROOT / "serve_app" / "engine").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]
    assert len(files) > 10
    offenders = [str(path.relative_to(ROOT)) for path in files if "ray" in imported_modules(path)]
    assert offenders == []


def test_models_and_layers_never_import_kernels() -> None:
    engine = ROOT / "serve_app" / "engine"
    files = [*(engine / "models").rglob("*.py"), *(engine / "layers").rglob("*.py")]
    assert len(files) > 5
    offenders = [
        str(path.relative_to(ROOT)) for path in files if "serve_kernels" in imported_modules(path)
    ]
    assert offenders == []
