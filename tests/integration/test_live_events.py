"""Live events are pushed on PostgreSQL: a trace commit wakes its job's SSE stream.

The streams' safety poll is set to a minute, so an event that arrives within the test's
few seconds came by ``NOTIFY``, not by a poll — no timing asserts needed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from app.api.executor import ExecutorContext
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.db import repo
from core.live import LiveEvents
from core.runtime import Runtime
from core.settings import PoolSettings, Settings
from core.trace import Tracer, TraceWriter
from tests.fixtures.api import ApiServer
from tests.fixtures.database import libpq_url

pytestmark = pytest.mark.postgres

WAIT_S = 10.0
"""Far below the one-minute poll: arriving within it proves the push."""


class IdleExecutor:
    """Accepts jobs and runs none: the test writes the trace itself."""

    name = "idle"

    async def start(self, context: ExecutorContext) -> None:
        return None

    async def submit(self, job_id: str, *, priority: str, max_seconds: float | None = None) -> None:
        return None

    async def ready(self) -> object:
        return None

    async def close(self) -> None:
        return None


async def _read(client: httpx.AsyncClient, job_id: str, seen: asyncio.Queue[str]) -> None:
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                await seen.put(line)


async def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_events_are_pushed_and_the_listener_survives_a_dropped_connection(
    clean_pg_database_url: str, tmp_path: Path
) -> None:
    pool = PoolSettings(endpoints=["http://127.0.0.1:9"], model="m", kind="simulator")
    settings = Settings(
        database_url=clean_pg_database_url, data_dir=tmp_path, pools={"small": pool},
        _env_file=None,  # type: ignore[call-arg]
    )  # fmt: skip
    api = ApiSettings(sse_poll_min_s=60, sse_poll_max_s=60, _env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=IdleExecutor(), api_settings=api)  # type: ignore[arg-type]
    with ApiServer(app) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            Runtime(settings) as rt,
        ):
            live: LiveEvents = app.state.ponder.live
            await _wait_for(lambda: live.pushing, "the listener never connected")
            created = await client.post("/v1/jobs", json={"question": "2+2?", "strategy": "direct"})
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            async with rt.sessions() as session, session.begin():
                job = await repo.get_job(session, job_id)
                assert job is not None
                await repo.mark_running(session, job)
            seen: asyncio.Queue[str] = asyncio.Queue()
            reader = asyncio.create_task(_read(client, job_id, seen))
            assert rt.sync_engine is not None
            writer = TraceWriter(rt.sync_engine)
            writer.start()
            tracer = Tracer(job_id, writer)

            async def event_arrives(i: int) -> None:
                tracer.event("tick", {"i": i})
                await writer.flush()
                line = await asyncio.wait_for(seen.get(), WAIT_S)
                assert f'"i":{i}' in line.replace(" ", "")

            await _wait_for(lambda: job_id in live._waiters, "the stream never subscribed")
            await event_arrives(1)
            await event_arrives(2)  # the stream read event 1, then waited: pushed

            with psycopg.connect(libpq_url(clean_pg_database_url), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (live.backend_pid,))
            await _wait_for(lambda: live.connections == 2, "the listener never reconnected")
            await event_arrives(3)

            await writer.close()
            async with rt.sessions() as session, session.begin():
                job = await repo.get_job(session, job_id)
                assert job is not None
                await repo.finish_job(session, job, status="succeeded", result={}, usage={})
            await asyncio.wait_for(reader, WAIT_S)  # job_finished pushed too: the stream ends
