"""What a user installs is what runs: the wheel, built and installed into a fresh venv
outside the checkout, from another directory, with no path back to the repository.

One test, in steps (each printed with its time): build the wheel; install it (without
the embedded extra: dependencies from the package index or pip's cache); then, from an
empty directory, ``ponder --help`` and ``ponder strategies``, ``ponder simulate`` with
``ponder solve`` against it, and ``uvicorn app.api.main:app`` serving ``/dashboard``,
``/docs`` with every asset it names, and a schema with the bearer key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.processes import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = {"app", "bench", "core", "evals", "migrations", "ponder_client", "strategies",
             "workers"}  # fmt: skip

pytestmark = pytest.mark.slow


def step(what: str, t0: float) -> None:
    print(f"  wheel test: {what} at {time.monotonic() - t0:.1f} s")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(venv bin directory, wheel) of a fresh install outside the checkout."""
    t0 = time.monotonic()
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True, cwd=out,
    )  # fmt: skip
    (wheel,) = out.glob("ponder-*.whl")
    step("built", t0)
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True, cwd=out,
    )  # fmt: skip
    step("installed", t0)
    yield venv / "bin", wheel


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PONDER_", "PYTHON"))}
    env.update(PONDER_DATA_DIR=str(home / "data"), **extra)
    return env


def sim_pools(url: str) -> dict[str, str]:
    env = {}
    for role in ("SMALL", "LARGE"):
        env[f"PONDER_POOLS__{role}__ENDPOINTS"] = json.dumps([url])
        env[f"PONDER_POOLS__{role}__MODEL"] = f"sim-{role.lower()}"
        env[f"PONDER_POOLS__{role}__KIND"] = "simulator"
    return env


def test_the_wheel_holds_what_the_code_reads(installed: tuple[Path, Path]) -> None:
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "app/dashboard/templates/index.html" in names
    assert "core/shipped_presets.json" in names  # every tenant's presets read it
    assert any(n.startswith("app/dashboard/static/") for n in names)
    assert "migrations/env.py" in names and any(n.startswith("migrations/versions/") for n in names)
    assert not [n for n in names if n.startswith("tests/")]
    # The top-level names docs/packaging.md lists and explains: a new one means a new
    # possible clash in a user's environment, so it is added there on purpose.
    top_level = zipfile.ZipFile(wheel).read("ponder-0.1.0.dist-info/top_level.txt").decode()
    assert set(top_level.split()) == TOP_LEVEL
    metadata = zipfile.ZipFile(wheel).read("ponder-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    (site,) = (installed[0].parent / "lib").glob("python3*/site-packages")
    assert (site / "app" / "dashboard" / "templates" / "index.html").is_file()
    assert not (site / "tests").exists()


def test_installed_wheel_runs_from_anywhere(
    installed: tuple[Path, Path], tmp_path: Path, browser: Any
) -> None:
    t0 = time.monotonic()
    bin_dir, _ = installed
    ponder = str(bin_dir / "ponder")
    env = clean_env(tmp_path)

    def run(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ponder, *args], cwd=tmp_path, env={**env, **(extra or {})},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    helped = run("--help")
    assert helped.returncode == 0 and "solve" in helped.stdout, helped.stderr
    listed = run("strategies", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "self_consistency" in listed.stdout
    bench = run("bench", "--quick")  # ships, but runs only from a checkout, and says so
    assert bench.returncode == 2 and "checkout" in bench.stderr, bench.stderr
    upgraded = run("db", "upgrade")  # the migration scripts are found inside the install
    assert upgraded.returncode == 0, upgraded.stderr
    step("--help, strategies, bench, db upgrade", t0)

    port = free_port()
    quiet = subprocess.DEVNULL
    sim = subprocess.Popen(
        [ponder, "simulate", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=quiet, stderr=quiet,
    )  # fmt: skip
    api: subprocess.Popen[bytes] | None = None
    try:
        sim_url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{sim_url}/health", sim)
        pools = sim_pools(sim_url)
        solved = run("solve", "What is 6 * 7?", "--strategy", "direct", "--json", extra=pools)
        assert solved.returncode == 0, solved.stderr
        assert json.loads(solved.stdout)["answer"] == "42"  # the simulator's default reply
        step("simulate + solve", t0)

        api_port = free_port()
        api = subprocess.Popen(
            [str(bin_dir / "uvicorn"), "app.api.main:app", "--port", str(api_port)],
            cwd=tmp_path, env={**env, **pools, "PONDER_API_EXECUTOR": "in-process"},
            stdout=quiet, stderr=quiet,
        )  # fmt: skip
        base = f"http://127.0.0.1:{api_port}"
        wait_healthy(f"{base}/healthz", api)
        dashboard = httpx.get(f"{base}/dashboard", follow_redirects=True)
        assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
        docs = httpx.get(f"{base}/docs")
        assert docs.status_code == 200
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", docs.text)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            assert httpx.get(base + asset).status_code == 200, asset
        schema = httpx.get(f"{base}/openapi.json").json()
        assert "bearer" in schema["components"]["securitySchemes"]
        step("uvicorn: /dashboard, /docs, /openapi.json", t0)

        created = run("keys", "create", "--tenant", "t")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        assert_security_marks_match_enforcement(base, schema, key)
        step("keys create; every operation's security mark matches a request without key", t0)
        listed_presets = httpx.get(f"{base}/v1/presets", headers={"Authorization": f"Bearer {key}"})
        assert any(p["shipped"] for p in listed_presets.json()), listed_presets.text
        step("the shipped presets are read from inside the install", t0)

        assert_docs_render_offline(browser, base)
        step("Chromium: /docs renders with Authorize, every request local", t0)
    finally:
        for proc in (sim, api):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=15)


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    """The table form (``license = {text = ...}``) stops building in February 2027."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    (floor,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert tuple(int(x) for x in floor.split(">=")[1].split(".")) >= (77,)


def assert_security_marks_match_enforcement(base: str, schema: dict[str, Any], key: str) -> None:
    """Once a key exists, an operation marked with the bearer scheme answers 401 without
    it, and an unmarked one does not: the Authorize button tells the truth."""
    with httpx.Client(base_url=base, timeout=10) as client:
        for path, operations in schema["paths"].items():
            url = re.sub(r"\{[^}]+\}", "x", path)
            for method, operation in operations.items():
                body: dict[str, Any] | None = {} if method in ("post", "put") else None
                status = client.request(method, url, json=body).status_code
                marked = operation.get("security") == [{"bearer": []}]
                assert (status == 401) == marked, (method, path, status, marked)
        listed = client.get("/v1/strategies", headers={"Authorization": f"Bearer {key}"})
        assert listed.status_code == 200, listed.text


def assert_docs_render_offline(browser: Any, base: str) -> None:
    """``/docs`` renders the schema in a browser (Swagger UI 4 would show "Unable to render
    this definition" for OpenAPI 3.1) with its Authorize button, and nothing it loads
    comes from anywhere but the server (no CDN, no web fonts). No ReDoc page is served."""
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        page.goto(f"{base}/docs")
        page.wait_for_selector("button.authorize", timeout=20_000)
        page.wait_for_selector(".opblock-tag", timeout=20_000)
        text = page.inner_text("body")
        assert "Unable to render" not in text and "/v1/jobs" in text
    finally:
        page.close()
    assert httpx.get(f"{base}/redoc").status_code == 404
    outside = [u for u in requested if not u.startswith((f"{base}/", f"blob:{base}/"))]
    assert not outside, outside
