"""Who runs a job once its row is committed: the production broker, or this process.

The API calls ``submit`` only after the transaction that created the job committed, so
a worker never looks for a row it cannot see yet.

    CeleryExecutor      production: ``workers.enqueue.enqueue_job`` (imported on first
                        use, so the API imports no Celery until it needs it)
    InProcessExecutor   runs ``core.runner.Runner.run`` as a task on the API's own event
                        loop: tests, and single-process demos with no broker
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.cancel import JobMonitor, worker_identity
from core.pools.client import PoolClient
from core.runner import Runner, RunOutcome
from core.settings import WorkerSettings
from core.tools.backends import ToolBackend
from core.trace import SpanListener

log = logging.getLogger(__name__)


JobRun = asyncio.Task[RunOutcome | None]
"""A job's run in this process: its outcome, or None if it crashed (logged)."""


@dataclass(frozen=True)
class ExecutorContext:
    """What an executor may use, handed over when the app starts."""

    sessions: async_sessionmaker[AsyncSession]
    sync_engine: Engine
    pools: Mapping[str, PoolClient]
    broker_url: str | None = None
    worker: WorkerSettings | None = None
    """The workers' lease settings; jobs run here heartbeat as a worker's do, so the
    reaper judges them alike (heartbeats, staleness, attempts, time limits)."""
    tools: Mapping[str, ToolBackend] | None = None
    """The configured tools (None: the built-in ``python`` only)."""


@dataclass(frozen=True)
class Readiness:
    ok: bool
    detail: str


class JobExecutor(Protocol):
    name: str

    async def start(self, context: ExecutorContext) -> None: ...

    async def submit(self, job_id: str, *, priority: str, max_seconds: float | None = None) -> None:
        """Hand a committed job over to be run; raise if it could not be handed over.
        ``max_seconds`` is the job's budget limit, if any (a broker may use it)."""
        ...

    async def ready(self) -> Readiness: ...

    async def close(self) -> None: ...


class CeleryExecutor:
    """Enqueues to the Celery broker (Redis in production)."""

    name = "celery"

    def __init__(self, enqueue: Callable[..., None] | None = None) -> None:
        self._enqueue = enqueue
        self._broker_url: str | None = None

    async def start(self, context: ExecutorContext) -> None:
        self._broker_url = context.broker_url

    def _enqueue_fn(self) -> Callable[..., None]:
        if self._enqueue is None:
            from workers.enqueue import enqueue_job

            self._enqueue = enqueue_job
        return self._enqueue

    async def submit(self, job_id: str, *, priority: str, max_seconds: float | None = None) -> None:
        extra = {"max_seconds": max_seconds} if max_seconds is not None else {}
        # Publishing is blocking network I/O in kombu: keep it off the event loop.
        await asyncio.to_thread(self._enqueue_fn(), job_id, priority=priority, **extra)

    async def ready(self) -> Readiness:
        url = self._broker_url
        if not url:
            return Readiness(True, "no broker URL configured (the worker's default applies)")
        if not url.startswith(("redis://", "rediss://")):
            return Readiness(True, f"{url.split(':', 1)[0]} broker: not probed")
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            await client.ping()
            return Readiness(True, "redis answers PING")
        except Exception as exc:  # any failure to reach the broker means "not ready"
            log.warning("readyz: broker check failed: %s: %s", type(exc).__name__, exc)
            return Readiness(False, f"redis did not answer PING ({type(exc).__name__})")
        finally:
            await client.aclose()

    async def close(self) -> None:
        return None


class InProcessExecutor:
    """Runs each job as an asyncio task in this process (no broker, no durability).

    Example:
        >>> app = create_app(settings, executor=InProcessExecutor())
    """

    name = "in-process"

    def __init__(self, *, cancel_poll_s: float = 0.1) -> None:
        self._runner: Runner | None = None
        self._monitor: JobMonitor | None = None
        self._tasks: set[JobRun] = set()
        self._cancel_poll_s = cancel_poll_s

    async def start(self, context: ExecutorContext) -> None:
        self._runner = Runner(context.sessions, context.pools, context.sync_engine, context.tools)
        # The same monitor a worker uses: cancel requests reach jobs run here too.
        worker = context.worker
        if worker is None:
            self._monitor = JobMonitor(
                context.sessions, worker=worker_identity(), cancel_poll_s=self._cancel_poll_s
            )
            return
        self._monitor = JobMonitor(
            context.sessions,
            worker=worker_identity(),
            cancel_poll_s=min(self._cancel_poll_s, worker.cancel_poll_s),
            heartbeat_s=worker.heartbeat_s,
            stale_after_s=worker.stale_after_s,
            max_attempts=worker.max_attempts,
            time_limit=lambda max_seconds: worker.time_limits(max_seconds)[0],
            heartbeat_engine=context.sync_engine,
        )

    async def submit(self, job_id: str, *, priority: str, max_seconds: float | None = None) -> None:
        self.launch(job_id)

    def launch(self, job_id: str, listeners: list[SpanListener] | None = None) -> JobRun:
        """Start the job's run on this loop; the task ends when the run does, with its
        ``RunOutcome``. ``listeners`` hear the run's progress (the lane: the answer's
        streamed text)."""
        task = asyncio.create_task(self._run(job_id, listeners), name=f"job:{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(
        self, job_id: str, listeners: list[SpanListener] | None = None
    ) -> RunOutcome | None:
        assert self._runner is not None, "executor used before start()"
        try:
            return await self._runner.run(job_id, listeners, monitor=self._monitor)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The runner records every expected failure on the job itself; this is a bug
            # or a lost database, and nobody else would ever see it.
            log.exception("in-process job %s crashed", job_id)
            return None

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def ready(self) -> Readiness:
        return Readiness(True, f"in-process executor, {len(self._tasks)} jobs running")

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._monitor is not None:
            await self._monitor.close()
