"""Imports point one way: app -> workers -> core -> strategies (DESIGN §1).

Every top-level package has a layer and may import only its own layer or those below:

    5  bench, tests     measure and test everything; nothing imports them
    4  app              HTTP face and the ``ponder`` command (loads ``bench`` by name,
                        lazily, for ``ponder bench``: never an import statement)
    3  evals            the eval harness, used by ``ponder eval`` / ``calibrate``
    2  workers          Celery face
    2  ponder_client    the Python client of the jobs API (``ponder eval --url`` uses it);
                        of Ponder it imports ``core.events`` only, the event schema
                        (``test_the_client_imports_only_the_event_schema``)
    1  core, migrations what runs a job; migrations are core's Alembic scripts
                        (``core.db.migrate`` finds them, ``env.py`` reads core's settings)
    0  strategies       pure algorithms
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {
    "strategies": 0,
    "core": 1,
    "migrations": 1,
    "workers": 2,
    "ponder_client": 2,
    "evals": 3,
    "app": 4,
    "bench": 5,
    "tests": 5,
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


def violations(root: Path) -> list[str]:
    found = []
    for package, level in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            for target in imported_packages(path):
                if LAYERS[target] > level:
                    found.append(f"{path.relative_to(root)} imports {target}")
    return found


def test_every_top_level_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - set(LAYERS) == set(), "give the new package a layer in LAYERS"
    assert set(LAYERS) <= packages


def test_no_layer_imports_a_layer_above_it() -> None:
    assert violations(ROOT) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """What the old ``app/cli.py`` did (``from bench import suite``) is caught."""
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "app" / "cli.py").write_text(
        "def parser() -> None:\n    from bench import suite\n    suite.add_parser()\n"
    )
    (tmp_path / "core" / "x.py").write_text("import tests.fixtures\n")
    assert violations(tmp_path) == ["core/x.py imports tests", "app/cli.py imports bench"]


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


CLIENT_MAY_IMPORT = {"core.events"}
"""Pure pydantic. ``app.api.schemas`` is not allowed: it loads FastAPI, SQLAlchemy, the
pools and every strategy, and sits above ``evals``, which uses the client."""


def ponder_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in LAYERS}


def test_the_client_imports_only_the_event_schema() -> None:
    outside = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / "ponder_client").rglob("*.py"))
        for module in ponder_modules(path)
        if module not in CLIENT_MAY_IMPORT and module.split(".")[0] != "ponder_client"
    }
    assert outside == set()
    # And at run time: nothing of the server comes along (a fresh interpreter).
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, ponder_client; print(*sorted(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    server = {"app", "workers", "evals", "strategies", "fastapi", "sqlalchemy", "celery"}
    assert sorted(m for m in loaded if m.split(".")[0] in server) == []
    assert sorted(m for m in loaded if m.startswith("core.")) == ["core.events"]
