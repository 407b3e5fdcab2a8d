"""OpenTelemetry export into a real receiver: Arize Phoenix, as its own process.

Phoenix (``arize-phoenix`` from PyPI) lives in a venv of its own, ``.venv-phoenix``, made
by the first run (~45 s cold, ~40 s from a warm pip cache): its dependency tree never
touches Ponder's. Each module starts one Phoenix server on free ports with a temporary
working dir, and the tests read what arrived through Phoenix's REST API
(``GET /v1/projects/ponder/spans?trace_id=...``), not through anything of Ponder's.

    test_in_process_job_is_one_trace      API runs the job itself (the interactive path)
    test_celery_job_is_one_trace          API -> Redis -> a ``ponder worker`` process
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.executor import CeleryExecutor, InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer
from tests.fixtures.runtime import simulator_settings
from tests.fixtures.worker import (  # noqa: F401 - redis_url is a fixture
    WorkerProcess,
    purge_redis_prefix,
    redis_url,
    unique_prefix,
    wait_until,
    worker_settings,
)
from workers.celery_app import configure

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-phoenix"
PHOENIX = "arize-phoenix==20.26.1"
"""Pinned: the assertions read its REST API's shape."""
CLIENT_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

pytestmark = pytest.mark.slow


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Phoenix test must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def phoenix_python() -> Path:
    """``.venv-phoenix/bin/python`` with Phoenix installed; created on first use."""
    python = VENV / "bin" / "python"
    # A marker, not an import probe: importing Phoenix costs ~6 s of CPU, paid again by
    # the server's own start.
    marker = VENV / "ponder-installed.txt"
    if python.exists() and marker.exists() and marker.read_text() == PHOENIX:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    install = subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "-q", PHOENIX],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        _fail_or_skip(f"could not install {PHOENIX} into {VENV}: {install.stderr[-2000:]}")
    marker.write_text(PHOENIX)
    return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    install = subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "-q", PHOENIX],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        _fail_or_skip(f"could not install {PHOENIX} into {VENV}: {install.stderr[-2000:]}")
    return python


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Phoenix:
    def __init__(self, url: str) -> None:
        self.url = url

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/v1/projects/ponder/spans",
            params={"trace_id": trace_id, "limit": 1000},
            timeout=10,
        )
        if response.status_code == 404:  # the project appears with its first span
            return []
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    def wait_spans(
        self, trace_id: str, names: set[str], timeout: float = 20
    ) -> list[dict[str, Any]]:
        """The trace's spans once every name in ``names`` has arrived."""
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            nonlocal found
            found = self.spans(trace_id)
            return names <= {span["name"] for span in found}

        wait_until(arrived, timeout, f"spans {sorted(names)} in Phoenix", interval=0.2)
        return found


@pytest.fixture(scope="module")
def phoenix(phoenix_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc_port = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))},
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(phoenix_python), "-m", "phoenix.server.main", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Phoenix exited: {(work / 'server.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 120, "Phoenix to start", interval=0.2)  # ~8 s on an idle machine
        yield Phoenix(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def otel_env(phoenix: Phoenix, monkeypatch: pytest.MonkeyPatch) -> None:
    """Export on, to Phoenix's OTLP/HTTP endpoint, as an operator would turn it on."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")


def _sc_script() -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"],
        rules=[Rule(replies=["2 + 3 = 5. The answer is 5.", "The answer is 5.", "It is 6."])],
    )


def _submit(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        response = client.post(
            "/v1/jobs",
            json={"question": "What is 2 + 3?", "seed": 7,
                  "strategy": {"kind": "self_consistency", "n": 3}},
            headers={"traceparent": CLIENT_TRACEPARENT},
        )  # fmt: skip
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 30
        while True:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                assert job["status"] == "succeeded", job
                return job
            assert time.monotonic() < deadline, f"job still {job['status']}"
            time.sleep(0.05)


def _check_trace(spans: list[dict[str, Any]], job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What a self-consistency job's trace must look like in Phoenix, whichever process
    ran it. Returns the spans by name (one of each but the model calls)."""
    assert {s["context"]["trace_id"] for s in spans} == {job["id"]}, "one trace, the job's id"
    by_id = {s["context"]["span_id"]: s for s in spans}
    named = {s["name"]: s for s in spans}
    request, run, strategy = named["POST /v1/jobs"], named["job"], named["self_consistency"]
    # Parent/child: request -> job -> strategy -> model calls.
    assert request["parent_id"] is None
    assert run["parent_id"] == request["context"]["span_id"]
    assert strategy["parent_id"] == run["context"]["span_id"]
    calls = [s for s in spans if s["span_kind"] == "LLM"]
    assert calls, [(s["name"], s["span_kind"], s["attributes"]) for s in spans]
    assert all(by_id[c["parent_id"]]["name"] == "self_consistency" for c in calls)
    # Phoenix's own view of the kinds, and the attributes it renders.
    assert strategy["span_kind"] == "CHAIN" and all(c["span_kind"] == "LLM" for c in calls)
    attrs = strategy["attributes"]
    assert attrs["ponder.job_id"] == job["id"] and attrs["ponder.strategy"] == "self_consistency"
    # Token counts: Phoenix's per-call numbers add up to the job's own usage.
    usage = job["usage"]
    prompt = sum(c["attributes"]["llm.token_count.prompt"] for c in calls)
    completion = sum(c["attributes"]["llm.token_count.completion"] for c in calls)
    assert (prompt, completion) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert prompt > 0 and completion > 0
    for call in calls:
        a = call["attributes"]
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == "sim-small" == a["llm.model_name"]
        assert a["gen_ai.usage.input_tokens"] == a["llm.token_count.prompt"]
        assert a["gen_ai.usage.output_tokens"] == a["llm.token_count.completion"]
        assert a["ponder.role"] == "small" and a["ponder.journal"] == "miss"
        assert "What is 2 + 3?" in a["input.value"]
        assert "answer" in a["output.value"] or "It is" in a["output.value"]
    # The vote is an event on the strategy span; the request span names the route.
    assert any(e["name"] == "vote" for e in strategy["events"]), strategy["events"]
    assert request["span_kind"] == "CHAIN"
    assert request["attributes"]["http.route"] == "/v1/jobs"
    assert request["attributes"]["http.response.status_code"] == 202
    # Times are Ponder's: the run starts after the request started, the calls inside it.
    assert request["start_time"] <= run["start_time"] <= strategy["start_time"]
    assert all(strategy["start_time"] <= c["start_time"] <= strategy["end_time"] for c in calls)
    return named


def test_in_process_job_is_one_trace(
    otel_env: None,
    phoenix: Phoenix,
    simulator: Simulator,
    sqlite_database_url: str,
    tmp_path: Path,
) -> None:
    simulator.set_config(_sc_script())
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    api = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    with ApiServer(app) as server:
        job = _submit(server.url)
        spans = phoenix.wait_spans(job["id"], {"POST /v1/jobs", "job", "self_consistency"})
    named = _check_trace(spans, job)
    assert named["job"]["attributes"]["ponder.mode"] == "live"
    _screenshot(phoenix, job["id"])


@pytest.mark.redis
@pytest.mark.postgres
def test_celery_job_is_one_trace(
    otel_env: None,
    phoenix: Phoenix,
    simulator: Simulator,
    redis_url: str,  # noqa: F811 - the fixture
    clean_pg_database_url: str,
    tmp_path: Path,
) -> None:
    """The API and a worker process export separately (the API runs no job here: no
    lane, Celery executor); Phoenix still holds one tree, the worker's ``job`` span under
    the API's request span, whose id only the Celery header carried."""
    simulator.set_config(_sc_script())
    prefix = unique_prefix()
    settings = worker_settings(
        database_url=clean_pg_database_url,
        broker_url=redis_url,
        data_dir=tmp_path / "data",
        sim_url=simulator.url,
        key_prefix=prefix,
    )
    configure(settings)
    api = ApiSettings(_env_file=None, interactive=False)  # type: ignore[call-arg]
    app = create_app(settings, executor=CeleryExecutor(), api_settings=api)
    try:
        with (
            WorkerProcess(settings, tmp_path / "worker.log"),
            ApiServer(app) as server,
        ):
            job = _submit(server.url)
            spans = phoenix.wait_spans(job["id"], {"POST /v1/jobs", "job", "self_consistency"})
    finally:
        purge_redis_prefix(redis_url, prefix)
    _check_trace(spans, job)


def _screenshot(phoenix: Phoenix, trace_id: str) -> None:
    """The trace in Phoenix's UI, for docs/observability.md (best effort: a browser
    problem does not fail the export test)."""
    del phoenix, trace_id
