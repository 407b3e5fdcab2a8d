"""``PONDER_LOG_FORMAT=json`` as an operator runs it: ``ponder serve`` (the API, a
worker and the reaper, each its own process) writes JSON lines, and one job's lines
from the API and the worker share its id, with the request id and tenant on the API's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.processes import free_port, wait_healthy
from tests.integration.test_serve import ROOT, pool_env, run, without


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines; the rest (Celery's start-up banner, ``ponder serve``'s own
    notes on stderr) is not logging."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_one_jobs_lines_from_api_and_worker_share_its_id(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.set_config(
        SimulatorConfig(models=["sim-small"], rules=[Rule(replies=["The answer is 5."])])
    )
    env = {**pool_env(tmp_path, simulator.url), "PONDER_LOG_FORMAT": "json"}
    made = run([sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "acme"], env)
    assert made.returncode == 0, made.stderr
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    port = free_port()
    log_path = tmp_path / "serve.log"
    argv = without(["xllamacpp"], "serve", "--port", str(port))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{url}/healthz", proc, log_path)
            with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
                answer = client.post(
                    "/v1/jobs",
                    json={"question": "What is 2 + 3?", "strategy": {"kind": "direct"}},
                    headers={"X-Request-ID": request_id},
                )
                assert answer.status_code == 202, answer.text
                job_id = answer.json()["id"]
                deadline = time.monotonic() + 30
                while client.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
                    assert time.monotonic() < deadline, "the job did not finish"
                    time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    lines = json_lines(log_path.read_text())
    assert lines, log_path.read_text()[-3000:]
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    mine = [x for x in lines if x.get("job_id") == job_id]
    accepted = [x for x in mine if x["logger"] == "app.api.services.jobs"]
    assert len(accepted) == 1, mine
    assert (accepted[0]["request_id"], accepted[0]["tenant"]) == (request_id, "acme")
    worker = [x for x in mine if x["logger"].startswith(("workers.", "celery."))]
    assert any(f"job {job_id} succeeded" in x["message"] for x in worker), mine
    # Celery's own lines are JSON too (its per-task lines are kept at WARNING: the
    # worker's line above says the same; its start-up lines remain).
    assert any(x["logger"].startswith("celery.") for x in lines), lines
    # A job's OpenTelemetry trace id is its id: a log search and a trace search meet.
    assert all(x.get("trace_id") == job_id for x in mine), mine
