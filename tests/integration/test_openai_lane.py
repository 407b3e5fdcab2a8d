"""The OpenAI face's interactive lane: a chat completion's job runs in the API process
that took it, journaled and traced like any job, with no broker in the way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.api.executor import CeleryExecutor
from app.api.interactive import LaneExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.db.models import Job
from core.runtime import Runtime
from core.simulator.config import Latency, Rule
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer
from tests.fixtures.processes import free_port, wait_healthy
from tests.fixtures.runtime import simulator_settings
from tests.fixtures.worker import (  # noqa: F401 - redis_url is a fixture
    WorkerProcess,
    purge_redis_prefix,
    redis_url,
    settings_env,
    unique_prefix,
    worker_settings,
)
from tests.integration.test_worker import (
    job_row,
    journal_size,
    running_requests,
    script,
    wait_status,
)
from workers.celery_app import configure

CHAT = {"model": "ponder/direct", "messages": [{"role": "user", "content": "2+3?"}]}


def _broker_down(job_id: str, **_: Any) -> None:
    raise ConnectionError("no broker in this test")


@pytest.fixture
def client(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> Iterator[httpx.Client]:
    # A Celery executor whose every publish fails: what the lane serves never needs it.
    executor = LaneExecutor(CeleryExecutor(enqueue=_broker_down), max_jobs=2)
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    api = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=executor, api_settings=api)
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_a_chat_completion_is_served_without_the_broker(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    answer = client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["content"] == "The answer is 5."
    trace = client.get(f"/v1/jobs/{body['id']}/trace").json()
    assert [e["type"] for e in trace["events"]][:3] == ["job", "strategy", "model_call"]
    assert trace["journal"]["entries"] == 1
    job = client.get(f"/v1/jobs/{body['id']}").json()
    assert job["status"] == "succeeded"

    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
        text = "".join(s.iter_text())
    assert text.rstrip().endswith("data: [DONE]")
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert streamed == "The answer is 5."  # direct's tokens, as they were generated

    # Other jobs still go to the broker: here, a 503 naming the job that was saved.
    queued = client.post("/v1/jobs", json={"question": "q", "strategy": {"kind": "direct"}})
    assert queued.status_code == 503, queued.text


# -- durability: the API process dies mid-run; a worker's reaper resumes from the journal


async def _job_for(rt: Runtime, question: str) -> str | None:
    async with rt.sessions() as session:
        found = await session.scalar(select(Job.id).where(Job.question == question))
    return found


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_lane_job_whose_api_process_dies_is_resumed_from_its_journal(
    redis_url: str,  # noqa: F811 - the fixture
    pg_database_url: str,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    # Three sequential calls of ~0.4 s each; the API is killed during the second.
    simulator.set_config(script(Rule(replies=["The answer is 5."]), latency=Latency(ttft_ms=400)))
    prefix = unique_prefix()
    settings = worker_settings(
        database_url=pg_database_url, broker_url=redis_url, data_dir=tmp_path,
        sim_url=simulator.url, key_prefix=prefix,
    )  # fmt: skip
    configure(settings)
    question = f"lane {prefix}"
    port = free_port()
    log_path = tmp_path / "api.log"
    with log_path.open("ab") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.api.main:app", "--port", str(port)],
            env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    worker = WorkerProcess(settings, tmp_path / "worker.log", reaper=True)
    body = {
        "model": "ponder/self_consistency",
        "messages": [{"role": "user", "content": question}],
        "ponder": {"strategy": {"n": 3, "adaptive": True, "batch_size": 1, "min_samples": 3}},
    }

    def chat() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)

    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", api, log_path)
        async with Runtime(settings, roles={"small"}) as rt:
            request = asyncio.create_task(asyncio.to_thread(chat))
            deadline = time.monotonic() + 20
            job_id = None
            # No worker exists yet: the job can only be running in the API process.
            while (
                job_id is None
                or await journal_size(rt, job_id) < 1
                or (running_requests(simulator) != 1)
            ):
                assert time.monotonic() < deadline, "the job never got going"
                job_id = job_id or await _job_for(rt, question)
                await asyncio.sleep(0.02)
            assert (await job_row(rt, job_id)).status == "running"
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=10)
            await request
            recorded = await journal_size(rt, job_id)

            worker.start()
            job = await wait_status(rt, job_id, {"succeeded", "failed"}, timeout=30)
            assert job.status == "succeeded", job.error
            assert job.usage is not None
            # The re-run answered the journaled calls from the journal, not the model.
            assert job.usage["journal_hits"] == recorded >= 1 and job.usage["live_calls"] >= 1
            assert job.attempts == 2
            assert "reaper: requeued" in worker.log()
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=10)
        worker.stop()
        purge_redis_prefix(redis_url, prefix)
