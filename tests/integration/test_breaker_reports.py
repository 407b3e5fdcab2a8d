"""A breaker a worker opens is what the API shows: a real ``ponder worker`` process whose
pool has a dead server beside the simulator opens that server's breaker, and the API (a
different process) shows it in ``/v1/pools`` and counts it in ``/metrics``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app.api.executor import CeleryExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.runtime import Runtime
from core.settings import PoolSettings
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer
from tests.fixtures.processes import free_port
from tests.fixtures.worker import (  # noqa: F401 - redis_url is a fixture
    WorkerProcess,
    purge_redis_prefix,
    redis_url,
    unique_prefix,
    worker_settings,
)
from tests.integration.test_worker import submit, wait_status
from workers.celery_app import configure


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_breaker_a_worker_opens_shows_in_pools_and_metrics(
    clean_pg_database_url: str,
    redis_url: str,  # noqa: F811 - the fixture
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    prefix = unique_prefix()
    base = worker_settings(
        database_url=clean_pg_database_url, broker_url=redis_url, data_dir=tmp_path,
        sim_url=simulator.url, key_prefix=prefix,
    )  # fmt: skip
    small = PoolSettings(
        endpoints=[dead, simulator.url],
        model="sim-small",
        kind="simulator",
        breaker_failures=1,
        breaker_reset_s=120,
    )
    settings = base.model_copy(update={"pools": {"small": small}})
    configure(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    api = create_app(
        settings,
        executor=CeleryExecutor(),
        api_settings=ApiSettings(_env_file=None),  # type: ignore[call-arg]
    )
    try:
        with worker, ApiServer(api) as server, httpx.Client(base_url=server.url) as client:
            before = client.get("/v1/pools", params={"probe": "false"}).json()
            assert [e["breaker"] for e in before[0]["endpoints"]] == ["closed", "closed"]
            async with Runtime(settings, roles={"small"}) as rt:
                for i in range(4):  # round-robin reaches the dead server at least once
                    job_id = await submit(rt, {"kind": "direct"}, question=f"{i} + 1?")
                    job = await wait_status(rt, job_id, {"succeeded", "failed"}, timeout=30)
                    assert job.status == "succeeded", job.error  # failed over
            for _ in range(50):  # the report is written off the call's path
                pools = client.get("/v1/pools", params={"probe": "false"}).json()
                by_url = {e["url"]: e for e in pools[0]["endpoints"]}
                if by_url[dead]["breaker"] == "open":
                    break
                await asyncio.sleep(0.1)
            assert by_url[dead]["breaker"] == "open"
            (report,) = by_url[dead]["reported_by_workers"]
            assert report["state"] == "open" and "unreachable" in report["reason"]
            assert by_url[simulator.url]["breaker"] == "closed"
            metrics = client.get("/metrics").text
            assert 'ponder_breaker_transitions_total{role="small",state="open"} 1.0' in metrics
        assert "circuit opened" in worker.log()
    finally:
        purge_redis_prefix(redis_url, prefix)
