"""The reaper: finds jobs that no live worker will finish, and gets them finished.

Every ``worker.reaper_interval_s`` it sweeps the ``jobs`` table:

- ``running`` with a heartbeat older than ``worker.stale_after_s``: the worker died (kill
  -9, OOM, a lost machine) and its message may never come back (a Redis message waits
  an hour for its visibility timeout; the embedded broker loses it). The job goes back to
  ``queued`` and is published again; the new run resumes from the journal, paying for no
  model call twice. If the job was flagged for cancellation it is ``cancelled`` instead,
  and after ``worker.max_attempts`` runs it is ``failed`` (``worker_lost``): a job that
  keeps killing its workers must not take the fleet down with it.
- ``queued`` for longer than ``worker.unheld_after_s`` with no message for it in any
  queue or worker's hands (on Redis, ``workers.broker_inventory``): the broker lost it (a
  restart without append-only) or it was never published. It is published again at
  once, rather than after the timeout below.
- ``queued`` for longer than ``worker.queued_timeout_s`` since its last enqueue: its
  message may never have reached the broker (the submitter died between commit and
  enqueue, Redis lost its data). It is published again; if the first message was only
  waiting in a backlog, the lease makes the second one a no-op.
- ``queued`` with a cancel request never completed: ``cancelled``.

Every change is a compare-and-set on the row, so several reapers (one per ``ponder
worker --reaper``) can run at once; each job is handled by exactly one of them. Messages
are published after the transaction commits, as everywhere else.

Run it with ``ponder worker --reaper`` (beside a worker) or ``python -m workers.reaper``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import control
from core.db.control import CANCELLED_ERROR
from core.db.models import JobStatus, utcnow
from core.logs import configure_logging
from core.runtime import Runtime
from core.settings import Settings
from workers.broker_inventory import held_job_ids

log = logging.getLogger(__name__)

BATCH = 200
"""Jobs handled per kind per sweep; the next sweep takes the rest."""

Publish = Callable[..., None]


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    """Orphaned running jobs sent back to the queue."""
    republished: list[str] = field(default_factory=list)
    """Queued jobs published again: waiting too long, or held by no broker."""
    cancelled: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    """Jobs failed with ``worker_lost`` after ``max_attempts`` runs."""

    def __bool__(self) -> bool:
        return bool(self.requeued or self.republished or self.cancelled or self.gave_up)


class Reaper:
    """Sweeps for orphaned and lost jobs.

    Args:
        sessions: database sessions.
        settings: ``worker.*`` thresholds.
        publish: ``enqueue_job``-like; default ``workers.enqueue.enqueue_job``.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        publish: Publish | None = None,
    ) -> None:
        if publish is None:
            from workers.enqueue import enqueue_job

            publish = enqueue_job
        self.sessions = sessions
        self.settings = settings
        self.publish = publish

    async def sweep(self) -> ReapReport:
        report = ReapReport()
        worker = self.settings.worker
        to_publish: list[tuple[str, str, float | None]] = []
        now = utcnow()
        stale_before = now - timedelta(seconds=worker.stale_after_s)
        async with self.sessions() as session, session.begin():
            for job in await control.stale_running_jobs(
                session, stale_before=stale_before, limit=BATCH
            ):
                holder = job.worker
                if job.cancel_requested_at is not None:
                    if await control.end_stale_job(
                        session,
                        job.id,
                        status=JobStatus.CANCELLED,
                        error=dict(CANCELLED_ERROR),
                        worker=holder,
                        stale_before=stale_before,
                    ):
                        report.cancelled.append(job.id)
                elif job.attempts >= worker.max_attempts:
                    error = control.worker_lost_error(job.attempts, job.worker)
                    if await control.end_stale_job(
                        session,
                        job.id,
                        status=JobStatus.FAILED,
                        error=error,
                        worker=holder,
                        stale_before=stale_before,
                    ):
                        report.gave_up.append(job.id)
                elif await control.requeue_stale_job(
                    session, job.id, worker=holder, stale_before=stale_before
                ):
                    report.requeued.append(job.id)
                    to_publish.append((job.id, job.priority, _max_seconds(job.budget)))
            report.cancelled += await control.cancel_flagged_queued_jobs(session, limit=BATCH)
        held = await self._held_job_ids()
        async with self.sessions() as session, session.begin():
            # Without an inventory, only the long timeout tells a lost message apart.
            seconds = worker.queued_timeout_s if held is None else worker.unheld_after_s
            overdue_before = now - timedelta(seconds=min(seconds, worker.queued_timeout_s))
            timed_out_before = now - timedelta(seconds=worker.queued_timeout_s)
            for job in await control.overdue_queued_jobs(
                session, enqueued_before=overdue_before, limit=BATCH
            ):
                enqueued = job.enqueued_at or job.created_at
                if held is not None and job.id in held and enqueued >= timed_out_before:
                    continue  # waiting in the queue or a worker's hands: a backlog
                if await control.mark_requeued(session, job.id, enqueued_before=overdue_before):
                    report.republished.append(job.id)
                    to_publish.append((job.id, job.priority, _max_seconds(job.budget)))
        # After commit, as the API does: a worker must find the row queued. A publish that
        # fails leaves the job queued with a fresh enqueued_at: the sweep after
        # queued_timeout_s tries again.
        for job_id, priority, max_seconds in to_publish:
            try:
                await asyncio.to_thread(
                    self.publish, job_id, priority=priority, max_seconds=max_seconds
                )
            except Exception:
                log.exception("reaper: could not publish job %s", job_id, extra={"job_id": job_id})
        if report:
            log.warning(
                "reaper: requeued %s, republished %s, cancelled %s, gave up on %s",
                report.requeued,
                report.republished,
                report.cancelled,
                report.gave_up,
            )
        return report

    async def _held_job_ids(self) -> set[str] | None:
        """The broker's inventory, or None (unknowable, or unreadable right now)."""
        try:
            return await asyncio.to_thread(held_job_ids, self.settings)
        except Exception as exc:  # a broker outage: fall back to the timeout this sweep
            log.warning("reaper: could not read the broker's queues (%s); using the timeout", exc)
            return None

    async def run_forever(self, stop: asyncio.Event) -> None:
        interval = self.settings.worker.reaper_interval_s
        log.info("reaper: sweeping every %g s", interval)
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:
                # A database outage must not end the reaper: that is when it is needed next.
                log.exception("reaper: sweep failed; trying again in %g s", interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


def _max_seconds(budget: dict[str, object] | None) -> float | None:
    value = (budget or {}).get("max_seconds")
    return float(value) if isinstance(value, int | float) else None


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Runtime(settings) as runtime:
        from workers.celery_app import configure

        configure(settings)
        await Reaper(runtime.sessions, settings).run_forever(stop)
    log.info("reaper: stopped")


def main() -> None:
    configure_logging()  # PONDER_LOG_FORMAT / PONDER_LOG_LEVEL, as the API and workers
    asyncio.run(_main(Settings()))


if __name__ == "__main__":
    main()
