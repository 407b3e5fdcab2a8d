"""Docs that run: every ```bash example in README.md and docs/api.md is executed against a
live ``ponder serve`` (simulator pools, SQLite, the embedded broker), with the key and
headers it shows. A block that cannot run here is fenced ```bash no-run.

Conventions the examples follow: ``$P`` is the server (``http://127.0.0.1:8000`` in the
text; the test serves on a free port and rewrites it), ``$KEY`` an API key the examples
create themselves, ``$JOB_ID`` and ``$JOB_B`` two finished jobs of that key's tenant,
``$CURSOR`` a page cursor. The blocks of one file run in order in one shell, so what
one block sets the next one uses. Every ``curl`` must succeed with a 2xx
(``--fail-with-body``), every command with exit code 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.processes import free_port, wait_healthy
from tests.fixtures.worker import ROOT, settings_env, wait_until, worker_settings

DOCS = ["README.md", "docs/api.md"]
FENCE = re.compile(r"^( *)```(\S*)([^\n]*)\n(.*?)^\1```$", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    """(info string, code) of every fenced shell block, code dedented."""
    found = []
    for indent, lang, rest, code in FENCE.findall(path.read_text()):
        if lang in ("bash", "sh", "shell", "console"):
            lines = [line[len(indent) :] for line in code.splitlines()]
            found.append((f"{lang}{rest}".strip(), "\n".join(lines)))
    return found


@pytest.fixture(scope="module")
def served(
    simulator_server: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, environment) of a ``ponder serve`` on the simulator."""
    replies = [Rule(replies=["The answer is 51."])]
    simulator_server.set_config(SimulatorConfig(models=["sim-small", "sim-large"], rules=replies))
    data = tmp_path_factory.mktemp("docs-serve")
    settings = worker_settings(
        database_url=f"sqlite:///{data / 'ponder.db'}", broker_url=None, data_dir=data,
        sim_url=simulator_server.url,
    )  # fmt: skip
    env = settings_env(settings)
    # The docs scrape /metrics with the operator's token, as a deployment would.
    env["PONDER_API_METRICS_TOKEN"] = "docs-metrics-token"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    port = free_port()
    log = data / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port),
             "--worker-concurrency", "1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/healthz", serve, log)
        yield base, env
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)


def finished_jobs(base: str, env: dict[str, str], count: int) -> tuple[str, list[str], str]:
    """A key of tenant acme, ``count`` finished jobs of that tenant, and a page cursor."""
    made = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "acme"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = made.stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    ids = []
    # Adaptive, one sample per call: four journaled calls, so "fork from 2" has a past.
    specs = [
        {"kind": "self_consistency", "n": 4, "adaptive": True, "batch_size": 1, "min_samples": 4},
        {"kind": "self_consistency", "n": 2},
    ]
    for spec in specs[:count]:
        body = {"question": "What is 17 * 3?", "strategy": spec}
        created = httpx.post(f"{base}/v1/jobs", json=body, headers=headers)
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])

    def all_succeeded() -> bool:
        return all(
            httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json()["status"] == "succeeded"
            for job_id in ids
        )

    wait_until(all_succeeded, 30, "the jobs", 0.05)
    page = httpx.get(f"{base}/v1/jobs", params={"limit": 1}, headers=headers).json()
    return key, ids, page["next_cursor"]


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_every_shell_example_runs(doc: str, served: tuple[str, dict[str, str]]) -> None:
    base, env = served
    _, (job_id, job_b), cursor = finished_jobs(base, env, 2)
    runnable = [code for info, code in blocks(ROOT / doc) if "no-run" not in info.split()]
    assert runnable, f"{doc} has no runnable example"
    host = base.removeprefix("http://")
    script = "\n".join(
        code.replace("127.0.0.1:8000", host).replace("localhost:8000", host) for code in runnable
    )
    prelude = (
        "set -euo pipefail\n"
        # Every curl of the docs must get a 2xx; --max-time bounds an SSE stream.
        'curl() { command curl --fail-with-body --max-time 30 "$@"; echo; }\n'
    )
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", prelude + script], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**env, "JOB_ID": job_id, "JOB_B": job_b, "CURSOR": cursor},
    )  # fmt: skip
    assert done.returncode == 0, (
        f"{doc}: an example failed (exit {done.returncode})\n"
        f"--- stdout (tail)\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )
    print(f"{doc}: {len(runnable)} blocks ran in {time.monotonic() - started:.1f} s")
