"""Imports point one way: app -> workers -> core -> strategies (DESIGN §1)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"strategies": 0, "core": 1, "workers": 2, "evals": 3, "app": 4}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


def test_no_layer_imports_a_layer_above_it() -> None:
    violations = []
    for package, level in LAYERS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in imported_packages(path):
                if LAYERS[target] > level:
                    violations.append(f"{path.relative_to(ROOT)} imports {target}")
    assert violations == []


def test_strategies_stay_pure() -> None:
    """Strategies are algorithms: no SQL, Celery, FastAPI or HTTP."""
    banned = {"sqlalchemy", "celery", "fastapi", "httpx", "starlette", "redis"}
    offenders = []
    for path in sorted((ROOT / "strategies").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            offenders += [f"{path.name}: {n}" for n in names if n in banned]
    assert offenders == []
