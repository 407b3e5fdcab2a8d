"""Stopping jobs: cancel requests, and the monitor that enforces them where a job runs.

The database is the only channel: ``request_cancel`` (the API, a CLI) flags the row, and
the ``JobMonitor`` of the process running the job polls the flags of its jobs every
``cancel_poll_s`` (0.25 s by default) and cancels the strategy's asyncio task. The
cancellation propagates through ``await`` into the pool client, which abandons its HTTP
requests, so in-flight model calls stop and nothing more is spent. The runner then saves
the job as ``cancelled`` with the trace written so far.

Polling rather than Redis pub/sub: it works on every broker (embedded mode has no Redis),
survives a missed message by construction (the flag stays set), and costs one indexed
query per worker process per poll, only while it runs jobs.

The same monitor stamps each job's heartbeat every ``heartbeat_s`` (the reaper's
evidence that the worker is alive) — from a thread of its own when given a synchronous
engine, as workers do, so that strategy code holding the event loop (a deep spec's
validation, a long vote) cannot starve the heartbeat and get a live job reaped —
notices when another worker took a job's lease (the reaper judged this one dead: it stops
its own copy), and enforces a per-run time limit. Each of those ends the strategy the
same way, with a different ``StopReason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import control, repo
from core.db.models import utcnow
from core.errors import NotFound

log = logging.getLogger(__name__)

StopReason = Literal["cancelled", "time_limit", "lease_lost"]


class JobStopped(Exception):
    """The strategy was stopped from outside for ``reason``; raised by the runner's wait."""

    def __init__(self, reason: StopReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CancelResult:
    """What a cancel request did.

    ``status`` is the job's status afterwards: ``cancelled`` when it had not started (it
    never will), ``running`` when its worker has been asked to stop (it becomes
    ``cancelled`` within about half a second), or the final status it already had.
    """

    job_id: str
    status: str
    requested_at: datetime | None


async def request_cancel(
    sessions: async_sessionmaker[AsyncSession], job_id: str, *, tenant: str | None = None
) -> CancelResult:
    """Ask for a job to be cancelled; idempotent, safe to race with workers.

    Args:
        sessions: database sessions (one transaction is used and committed here).
        job_id: the job.
        tenant: when given, a job of another tenant is reported as not found.

    Raises:
        NotFound: no such job (for this tenant).

    Example::

        result = await request_cancel(rt.sessions, job_id, tenant=caller.tenant)
        if result.status == "running": ...  # 202: the worker stops it shortly
    """
    async with sessions() as session, session.begin():
        job = await repo.get_job(session, job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise NotFound(f"job {job_id} not found")
        # Flag first: from here no worker can claim it (claims require no flag), so the
        # second step cannot lose a race with a worker starting the job.
        await control.request_cancel(session, job_id)
        await control.cancel_queued_job(session, job_id)
    async with sessions() as session:
        job = await repo.get_job(session, job_id)
        assert job is not None
        return CancelResult(job.id, job.status, job.cancel_requested_at)


def worker_identity() -> str:
    """``host:pid:nonce`` for this process: the lease holder's name in ``jobs.worker``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(worker: str | None) -> bool:
    """True only when ``worker`` is a process of this host that no longer exists.

    Lets a worker take over at once a job whose previous holder crashed on the same
    machine (a killed prefork child whose message Celery redelivered), instead of
    waiting for its heartbeat to go stale. Other hosts are never judged from here.
    """
    if not worker:
        return False
    parts = worker.split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True  # this process holds no run of it: the job is not attached here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class _Watched:
    task: asyncio.Task[Any]
    reason: StopReason | None = None
    detail: str = ""
    deadline: asyncio.TimerHandle | None = field(default=None, repr=False)


class JobMonitor:
    """Watches the jobs this process runs: cancel flags, heartbeats, leases, time limits.

    One per process (per event loop). The runner attaches a job's strategy task when the
    run starts and detaches it when it ends; while anything is attached, one background
    task polls the database.

    Args:
        sessions: database sessions.
        worker: this process's lease name (``worker_identity()``).
        cancel_poll_s: how often to look for cancel requests.
        heartbeat_s: how often to stamp heartbeats.
        stale_after_s: age after which another worker may take a job's lease.
        max_attempts: runs a job may start; one whose workers keep dying then fails.
        time_limit: the seconds one run may take, given the budget's ``max_seconds``
            (None: no limit).
        heartbeat_engine: a synchronous engine on the same database; when given,
            heartbeats are stamped from a thread, out of the event loop's reach.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        worker: str,
        cancel_poll_s: float = 0.25,
        heartbeat_s: float = 5.0,
        stale_after_s: float = 30.0,
        max_attempts: int = 3,
        time_limit: Callable[[float | None], float] | None = None,
        heartbeat_engine: Engine | None = None,
    ) -> None:
        self.sessions = sessions
        self.worker = worker
        self.max_attempts = max_attempts
        self.cancel_poll_s = cancel_poll_s
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._time_limit = time_limit
        self._jobs: dict[str, _Watched] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._engine = heartbeat_engine
        self._beating: set[str] = set()  # what the heartbeat thread stamps
        self._beating_lock = threading.Lock()
        self._thread_stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None

    # -- what the runner uses -------------------------------------------------------------

    def attach(self, job_id: str, task: asyncio.Task[Any], *, max_seconds: float | None) -> None:
        watched = _Watched(task)
        if self._time_limit is not None:
            limit = self._time_limit(max_seconds)
            watched.deadline = asyncio.get_running_loop().call_later(
                limit, self.stop, job_id, "time_limit", f"the run passed its {limit:g} s limit"
            )
        self._jobs[job_id] = watched
        with self._beating_lock:
            self._beating.add(job_id)
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._loop(), name="job-monitor")
        if self._engine is not None and self._thread is None and not self._closed:
            self._loop_ref = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._beat_thread, name="job-heartbeat", daemon=True
            )
            self._thread.start()
        self._wake.set()

    def detach(self, job_id: str) -> None:
        with self._beating_lock:
            self._beating.discard(job_id)
        watched = self._jobs.pop(job_id, None)
        if watched is not None and watched.deadline is not None:
            watched.deadline.cancel()

    def stop(self, job_id: str, reason: StopReason, detail: str = "") -> bool:
        """Cancel the job's strategy task for ``reason``; False if it does not run here."""
        watched = self._jobs.get(job_id)
        if watched is None or watched.task.done():
            return False
        if watched.reason is None:
            with self._beating_lock:
                self._beating.discard(job_id)
            watched.reason, watched.detail = reason, detail
            log.info("stopping job %s: %s %s", job_id, reason, detail)
            watched.task.cancel(msg=reason)
        return True

    def stopped(self, job_id: str) -> JobStopped | None:
        """Why the job's task was stopped from here, if it was."""
        watched = self._jobs.get(job_id)
        if watched is None or watched.reason is None:
            return None
        return JobStopped(watched.reason, watched.detail)

    @property
    def running(self) -> list[str]:
        return list(self._jobs)

    def stale_before(self) -> datetime:
        return utcnow() - timedelta(seconds=self.stale_after_s)

    async def close(self) -> None:
        self._closed = True
        self._thread_stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
            self._thread = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- the poll ---------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat_s
        failing = False
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._poll_cancels()
                if self._engine is None and loop.time() >= next_beat:
                    next_beat = loop.time() + self.heartbeat_s
                    await self._beat()
                if failing:
                    failing = False
                    log.warning("job monitor poll works again")
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database may be briefly away; the jobs' own writes will fail and be
                # handled by their runs. Keep watching rather than die silently, and log
                # the first failure of a streak only: the poll runs ten times a second.
                if not failing:
                    failing = True
                    log.exception("job monitor poll failed; retrying quietly until it works")
            await asyncio.sleep(self.cancel_poll_s)

    async def _poll_cancels(self) -> None:
        ids = [j for j, w in self._jobs.items() if w.reason is None]
        if not ids:
            return
        async with self.sessions() as session:
            flagged = await control.cancel_requested(session, ids)
        for job_id in flagged:
            self.stop(job_id, "cancelled")

    async def _beat(self) -> None:
        ids = [j for j, w in self._jobs.items() if w.reason is None]
        if not ids:
            return
        async with self.sessions() as session, session.begin():
            alive = await control.heartbeat(session, ids, worker=self.worker)
        self._lost(set(ids) - alive)

    def _beat_thread(self) -> None:
        assert self._engine is not None and self._loop_ref is not None
        failing = False
        while not self._thread_stop.wait(self.heartbeat_s):
            with self._beating_lock:
                ids = set(self._beating)
            if not ids:
                continue
            try:
                alive = control.heartbeat_sync(self._engine, ids, worker=self.worker)
            except Exception:
                if not failing:  # the first of a streak; the rest would repeat it
                    log.exception("heartbeat failed; retrying quietly until it works")
                failing = True
                continue
            if failing:
                failing = False
                log.warning("heartbeat works again")
            if ids - alive:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop_ref.call_soon_threadsafe(self._lost, ids - alive)

    def _lost(self, job_ids: set[str]) -> None:
        for job_id in job_ids:
            # Still attached yet no longer ours: the reaper gave the job to another worker
            # (this process was presumed dead). Stop this copy; the other one finishes.
            if job_id in self._jobs:
                self.stop(job_id, "lease_lost", "another worker holds the job now")
