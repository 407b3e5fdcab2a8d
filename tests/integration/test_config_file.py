"""``PONDER_CONFIG`` as an operator runs it: a real API process (uvicorn) and a real
Celery worker read pools and tenant limits from a YAML file, and SIGHUP reloads it
without dropping a job.

Two simulators stand for two model servers. The file first points ``small`` at the old
one; a long job (three sequential calls, each slow) starts there; the file is changed to
point ``small`` at the new one, with a new price and a new default budget, and the
process gets SIGHUP. The long job's later calls still go to the old server (it holds
its client) and it succeeds; a job submitted after runs on the new one. A broken file
on SIGHUP is logged in one sentence naming its line and changes nothing.
"""

from __future__ import annotations

import asyncio
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

from core.runtime import Runtime
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.processes import free_port, wait_healthy
from tests.fixtures.worker import (  # noqa: F401 - redis_url is a fixture
    ROOT,
    WorkerProcess,
    purge_redis_prefix,
    redis_url,
    unique_prefix,
    wait_until,
    worker_settings,
)
from workers.celery_app import configure
from workers.enqueue import enqueue_job

SLOW = "slowly"
# Three samples, one after another (each takes 1 s): two are issued after the reload.
LONG_JOB = {
    "kind": "self_consistency",
    "n": 4,  # unanimous: the vote is settled after three
    "adaptive": True,
    "batch_size": 1,
    "min_samples": 3,
    "system": f"Answer {SLOW}.",
}


def script(answer: int) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small"],
        rules=[
            Rule(match=SLOW, replies=[f"The answer is {answer}."], latency=Latency(ttft_ms=1000)),
            Rule(replies=[f"The answer is {answer}."]),
        ],
    )


def pool_file(url: str, price: float, max_tokens: int) -> str:
    return f"""\
# ponder.yaml, as the tests write it
pools:
  small:
    endpoints: ["{url}"]
    model: sim-small
    kind: simulator
    api_key: ${{SIM_KEY}}
    price_input_per_1k: {price}
    price_output_per_1k: {price}
api:
  limits:
    default_budget: {{max_tokens: {max_tokens}, max_seconds: 120}}
"""


BROKEN = """\
pools:
  small:
    endpoints: ["http://127.0.0.1:1"]
    model: sim-small
    max_concurrency: 0
"""
BROKEN_SENTENCE = "line 5: pools.small.max_concurrency: Input should be greater than or equal to 1"


@pytest.fixture
def new_simulator() -> Iterator[Simulator]:
    with Simulator(script(7)) as sim:
        yield sim


def wait_log(path: Path, text: str, count: int = 1, timeout: float = 60) -> None:
    # Generous: a reload restarts worker processes, which took over 15 s on a loaded
    # 2-core machine (CI beside an evaluation); only a failing test waits this long.
    wait_until(lambda: path.read_text(errors="replace").count(text) >= count, timeout, repr(text))


class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def submit(self, strategy: dict[str, Any]) -> str:
        answer = self.http.post(
            "/v1/jobs", json={"question": "What is 2 + 3?", "strategy": strategy}
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def wait(self, job_id: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
            time.sleep(0.05)
        return job


@pytest.fixture
def api_process(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> Iterator[tuple[Api, subprocess.Popen[bytes], Path, Path]]:
    config = tmp_path / "ponder.yaml"
    config.write_text(pool_file(simulator.url, 0.001, 5000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env |= {
        "PONDER_CONFIG": str(config),
        "SIM_KEY": "sim-secret",
        "PONDER_DATABASE_URL": sqlite_database_url,
        "PONDER_DATA_DIR": str(tmp_path),
        "PONDER_API_EXECUTOR": "in-process",  # jobs run in the process that reloads
        "PONDER_PYTHON_TOOL": "false",
    }
    port = free_port()
    log_path = tmp_path / "api.log"
    argv = [sys.executable, "-m", "uvicorn", "app.api.main:app", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    api = Api(url)
    try:
        wait_healthy(f"{url}/healthz", proc, log_path)
        yield api, proc, config, log_path
    finally:
        api.http.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_api_reload_on_sighup_swaps_pools_and_budgets_without_dropping_a_job(
    api_process: tuple[Api, subprocess.Popen[bytes], Path, Path],
    simulator: Simulator,
    new_simulator: Simulator,
) -> None:
    api, proc, config, log_path = api_process
    simulator.set_config(script(5))
    before = api.wait(api.submit({"kind": "direct"}))
    assert before["status"] == "succeeded" and before["result"]["answer"] == "5"
    assert before["budget"]["max_tokens"] == 5000  # the file's default budget

    long_job = api.submit(LONG_JOB)
    wait_until(lambda: simulator.stats.requests >= 2, 15, "the long job's first call")
    config.write_text(pool_file(new_simulator.url, 0.002, 6000))
    proc.send_signal(signal.SIGHUP)
    wait_log(log_path, "config reloaded from")
    assert "pools: small; tenant limits" in log_path.read_text()

    after = api.wait(api.submit({"kind": "direct"}))
    assert after["status"] == "succeeded" and after["result"]["answer"] == "7"
    assert after["budget"]["max_tokens"] == 6000
    finished = api.wait(long_job)
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["result"]["answer"] == "5"
    # Every call of the long job went to the old server, two of them after the reload.
    assert simulator.stats.requests == 1 + 3
    assert new_simulator.stats.requests == 1
    # The new price: the same call costs twice as much.
    cost_before, cost_after = before["usage"]["cost"], after["usage"]["cost"]
    assert cost_before and cost_after == pytest.approx(2 * cost_before, rel=0.2)

    config.write_text(BROKEN)
    proc.send_signal(signal.SIGHUP)
    wait_log(log_path, BROKEN_SENTENCE)
    text = log_path.read_text()
    assert f"config not reloaded, keeping the previous one: {config} {BROKEN_SENTENCE}" in text
    kept = api.wait(api.submit({"kind": "direct"}))
    assert kept["status"] == "succeeded" and kept["result"]["answer"] == "7"
    assert new_simulator.stats.requests == 2
    assert proc.poll() is None


# -- a Celery worker -------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
async def test_worker_reload_on_sighup_keeps_running_jobs_on_the_old_pool(
    redis_url: str,  # noqa: F811 - the fixture
    clean_pg_database_url: str,
    simulator: Simulator,
    new_simulator: Simulator,
    tmp_path: Path,
) -> None:
    simulator.set_config(script(5))
    prefix = unique_prefix()
    settings = worker_settings(
        database_url=clean_pg_database_url,
        broker_url=redis_url,
        data_dir=tmp_path,
        sim_url=simulator.url,
        key_prefix=prefix,
    )
    config = tmp_path / "ponder.yaml"
    config.write_text(pool_file(simulator.url, 0.001, 5000))
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log_path, concurrency=2)
    # The pools come from the file alone.
    worker.env = {k: v for k, v in worker.env.items() if not k.startswith("PONDER_POOLS__")}
    worker.env |= {"PONDER_CONFIG": str(config), "SIM_KEY": "sim-secret"}
    configure(settings)
    try:
        with worker:
            async with Runtime(settings, roles={"small"}) as client:

                async def run(strategy: dict[str, Any]) -> str:
                    from core.jobs import submit_job

                    job_id = await submit_job(
                        client.sessions, client.pools, question="What is 2 + 3?",
                        strategy=strategy, seed=7,
                    )  # fmt: skip
                    await asyncio.to_thread(enqueue_job, job_id, priority="default")
                    return job_id

                long_job = await run(LONG_JOB)
                await asyncio.to_thread(
                    wait_until, lambda: simulator.stats.requests >= 1, 20, "the first call"
                )
                config.write_text(pool_file(new_simulator.url, 0.002, 6000))
                assert worker.proc is not None
                worker.proc.send_signal(signal.SIGHUP)
                # Both pool processes reload; the main process checks the file and tells them.
                await asyncio.to_thread(wait_log, log_path, "config reloaded: pools: small", 2)
                after = await run({"kind": "direct"})
                done = {j: await _wait_job(client, j) for j in (long_job, after)}
                assert done[long_job].status == "succeeded", done[long_job].error
                assert done[long_job].result["answer"] == "5"
                assert done[after].status == "succeeded", done[after].error
                assert done[after].result["answer"] == "7"
                assert (simulator.stats.requests, new_simulator.stats.requests) == (3, 1)

                config.write_text(BROKEN)
                worker.proc.send_signal(signal.SIGHUP)
                await asyncio.to_thread(wait_log, log_path, BROKEN_SENTENCE)
                kept = await _wait_job(client, await run({"kind": "direct"}))
                assert kept.status == "succeeded" and kept.result["answer"] == "7"
                assert worker.proc.poll() is None
                # Celery's own SIGHUP handler would have restarted the worker.
                assert "Restarting celery worker" not in log_path.read_text()
                assert "exited with" not in log_path.read_text()  # no pool process was lost
    finally:
        purge_redis_prefix(redis_url, prefix)


async def _wait_job(rt: Runtime, job_id: str, timeout: float = 20) -> Any:
    from core.db import repo

    deadline = time.monotonic() + timeout
    while True:
        async with rt.sessions() as session:
            job = await repo.get_job(session, job_id)
        assert job is not None
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        await asyncio.sleep(0.05)


# -- ponder serve ----------------------------------------------------------------------


def test_ponder_serve_passes_sighup_on_to_its_api_and_worker(
    simulator: Simulator, new_simulator: Simulator, tmp_path: Path
) -> None:
    simulator.set_config(script(5))
    config = tmp_path / "ponder.yaml"
    config.write_text(pool_file(simulator.url, 0.001, 5000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env |= {
        "PONDER_CONFIG": str(config),
        "SIM_KEY": "sim-secret",
        "PONDER_DATA_DIR": str(tmp_path / "data"),
        "PONDER_PYTHON_TOOL": "false",
    }
    port = free_port()
    log_path = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    api = Api(url)
    try:
        wait_healthy(f"{url}/healthz", proc, log_path)
        before = api.wait(api.submit({"kind": "direct"}))
        assert before["result"]["answer"] == "5", before
        # Both pool processes up (one ran the job; the other may still be opening on a
        # loaded machine, and would read the new file at start, reloading nothing).
        wait_log(log_path, "worker runtime ready", 2)
        config.write_text(pool_file(new_simulator.url, 0.002, 6000))
        proc.send_signal(signal.SIGHUP)
        wait_log(log_path, "config reloaded from")  # the API
        wait_log(log_path, "config reloaded: pools: small", 2)  # the worker's two processes
        after = api.wait(api.submit({"kind": "direct"}))  # run by the worker
        assert after["result"]["answer"] == "7", after
        assert after["budget"]["max_tokens"] == 6000
        assert proc.poll() is None
        assert "exited with" not in log_path.read_text()  # no pool process was lost
    finally:
        api.http.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
