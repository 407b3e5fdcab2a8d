"""A database outage costs a job one retry interval after it ends, however long it
lasts (up to ``worker.infra_retry_window_s``), not the reaper's five minutes.

The worker reaches PostgreSQL through a TCP proxy this test runs itself and cuts: every
open connection is dropped and new ones are refused, as when the server restarts or the
network under it fails. Redis is the broker, the simulator the model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from core.runtime import Runtime
from core.simulator.config import Latency, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.proxy import CuttableProxy
from tests.fixtures.worker import (  # noqa: F401 - redis_url is a fixture
    WorkerProcess,
    purge_redis_prefix,
    redis_url,
    unique_prefix,
    worker_settings,
)
from tests.integration.test_worker import submit, wait_status
from workers.celery_app import configure

RECOVERY_S = 30.0
"""Every job must finish this soon after the outage ends, however long it lasted."""


@pytest.fixture
def proxy(pg_database_url: str) -> Iterator[CuttableProxy]:
    url = make_url(pg_database_url)
    server = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("outage_s", [10.0, 45.0])
async def test_jobs_finish_soon_after_a_database_outage_ends(
    outage_s: float,
    proxy: CuttableProxy,
    pg_database_url: str,
    redis_url: str,  # noqa: F811 - the fixture
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    prefix = unique_prefix()
    direct = worker_settings(
        database_url=pg_database_url, broker_url=redis_url, data_dir=tmp_path,
        sim_url=simulator.url, key_prefix=prefix,
        stale_after_s=30.0, heartbeat_s=5.0,
    )  # fmt: skip
    via_proxy = make_url(pg_database_url).set(host="127.0.0.1", port=proxy.port)
    behind_proxy = direct.model_copy(
        update={"database_url": via_proxy.render_as_string(hide_password=False)}
    )
    configure(direct)
    # Each call takes 2 s, so the cut lands mid-run for the jobs the worker has claimed:
    # their retries must take over the lease the failed run left, not wait 30 s (the
    # production stale_after_s, set here) for it to go stale.
    simulator.set_config(SimulatorConfig(latency=Latency(ttft_ms=2000)))
    worker = WorkerProcess(behind_proxy, tmp_path / "worker.log", concurrency=2)
    try:
        with worker:
            async with Runtime(direct, roles={"small"}) as rt:
                jobs = [
                    await submit(rt, {"kind": "direct"}, question=f"What is {i} + 3?")
                    for i in range(6)
                ]
                await wait_status(rt, jobs[0], {"running"}, timeout=30)
                await asyncio.sleep(0.5)
                proxy.cut()
                await asyncio.sleep(outage_s)
                proxy.restore()
                restored = time.monotonic()
                for job_id in jobs:
                    job = await wait_status(rt, job_id, {"succeeded", "failed"}, timeout=RECOVERY_S)
                    assert job.status == "succeeded", job.error
                recovered_s = time.monotonic() - restored
            assert "infrastructure failure" in worker.log()
    finally:
        purge_redis_prefix(redis_url, prefix)
    print(f"6 jobs finished {recovered_s:.1f} s after a {outage_s:.0f} s database outage ended")
