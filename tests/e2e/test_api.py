"""The API as an operator runs it: ``uvicorn app.api.main:app`` in its own process,
configured only by ``PONDER_*`` variables, with keys made by ``ponder keys create``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from ponder_client import JobFinishedEvent, PonderClient

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def env(simulator: Simulator, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    return {
        **base,
        "PONDER_DATABASE_URL": f"sqlite:///{tmp_path / 'ponder.db'}",
        "PONDER_DATA_DIR": str(tmp_path),
        "PONDER_POOLS__SMALL__ENDPOINTS": json.dumps([simulator.url]),
        "PONDER_POOLS__SMALL__MODEL": "sim-small",
        "PONDER_POOLS__SMALL__KIND": "simulator",
        # No broker in this test: jobs run inside the API process.
        "PONDER_API_EXECUTOR": "in-process",
        # The key made mid-test must be required at once, not after the key cache's 2 s
        # (whether the CLI took longer than that decided the test before).
        "PONDER_API_KEY_CACHE_S": "0",
    }


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.api.main:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "api.log").read_text())
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def ponder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_keys_from_the_cli_then_a_job_through_rest_and_openai(
    server: str, env: dict[str, str], simulator: Simulator
) -> None:
    simulator.set_config(
        SimulatorConfig(models=["sim-small"], rules=[Rule(replies=["The answer is 5."])])
    )
    # Open while no key exists.
    assert httpx.get(f"{server}/v1/jobs").status_code == 200
    made = ponder(env, "keys", "create", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("pk_") and "shown only this once" in made.stderr
    assert ponder(env, "keys", "create", "--tenant", "no spaces").returncode == 2

    assert httpx.get(f"{server}/v1/jobs").status_code == 401
    with PonderClient(server, api_key=key) as jobs:
        job = jobs.submit("2 + 3?", strategy="direct")
        assert jobs.wait(job.id, timeout=20).answer == "5"
        events = list(jobs.events(job.id))
    assert isinstance(events[-1], JobFinishedEvent) and events[-1].status == "succeeded"

    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=f"{server}/v1", api_key=key) as chat_client:
        chat = chat_client.chat.completions.create(
            model="ponder/direct", messages=[{"role": "user", "content": "2 + 3?"}]
        )
    assert chat.choices[0].message.content == "The answer is 5."
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    with (
        openai.OpenAI(base_url=f"{server}/v1", api_key="pk_wrong") as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.models.list()
