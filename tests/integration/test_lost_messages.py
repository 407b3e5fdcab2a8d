"""A broker that loses its messages (Redis restarted without append-only) costs seconds,
not the reaper's ``queued_timeout_s``: the reaper sees which queued jobs no queue and no
worker holds and publishes them again. A private ``redis-server`` the test starts and
restarts itself plays the broker; PostgreSQL keeps the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.runtime import Runtime
from core.simulator.server import Simulator
from tests.fixtures.worker import WorkerProcess, wait_until, worker_settings
from tests.integration.test_worker import job_row, submit, wait_status
from workers.broker_inventory import held_job_ids
from workers.celery_app import configure
from workers.reaper import Reaper


class PrivateRedis:
    """``redis-server`` on a free port with no persistence at all: a restart loses
    every message, as a production Redis without append-only would."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            with contextlib.suppress(redis.RedisError):
                return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
            return False

        wait_until(up, 10, "the private Redis to answer")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
async def test_jobs_lost_by_a_redis_restart_finish_within_seconds(
    private_redis: PrivateRedis, pg_database_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    settings = worker_settings(
        database_url=pg_database_url, broker_url=private_redis.url, data_dir=tmp_path,
        sim_url=simulator.url, unheld_after_s=0.5,
    )  # fmt: skip
    assert settings.worker.queued_timeout_s == 300  # the old way out: five minutes
    configure(settings)
    published: list[str] = []

    def record(job_id: str, **_: object) -> None:
        published.append(job_id)

    async with Runtime(settings, roles={"small"}) as rt:
        jobs = [
            await submit(rt, {"kind": "direct"}, question=f"What is {i} + 3?") for i in range(5)
        ]
        assert held_job_ids(settings) == set(jobs)
        await asyncio.sleep(0.6)
        # Held in the queue: a backlog, not a loss. Nothing is published twice.
        assert not (await Reaper(rt.sessions, settings, publish=record).sweep()).republished

        private_redis.kill()  # every message is gone with it
        private_redis.start()
        assert held_job_ids(settings) == set()
        restarted = time.monotonic()

        worker = WorkerProcess(settings, tmp_path / "worker.log", reaper=True)
        with worker:
            for job_id in jobs:
                job = await wait_status(rt, job_id, {"succeeded", "failed"}, timeout=30)
                assert job.status == "succeeded", job.error
            recovered_s = time.monotonic() - restarted
            assert "republished" in worker.log()
        for job_id in jobs:
            assert (await job_row(rt, job_id)).attempts == 1  # each ran once
    assert published == []
    print(f"5 jobs lost by a Redis restart finished {recovered_s:.1f} s after it")
