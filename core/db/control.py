"""Repository functions for job control: leases, heartbeats, cancel requests, the reaper.

Every state change here is a compare-and-set ``UPDATE ... WHERE <expected state>`` whose
row count says whether it happened, so that workers, the reaper and the API can race on
one job on either backend (SQLite has no ``SELECT ... FOR UPDATE``) and exactly one wins.
Like ``core.db.repo``, nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Engine, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import live
from core.db.models import Job, JobStatus, utcnow

CANCELLED_ERROR = {"code": "cancelled", "message": "cancelled on request"}


def worker_lost_error(attempts: int, worker: str | None) -> dict[str, Any]:
    """The error of a job given up on because its workers kept dying."""
    return {
        "code": "worker_lost",
        "message": f"the worker running this job died or stopped responding; {attempts} "
        "runs were started (worker.max_attempts), so it is not retried again",
        "worker": worker,
    }


def _count(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def claimable(*, stale_before: datetime, max_attempts: int) -> ColumnElement[bool]:
    """A job a worker may take: queued, or running with a heartbeat older than
    ``stale_before`` and runs left; never one with a cancel request."""
    return and_(
        Job.cancel_requested_at.is_(None),
        or_(
            Job.status == JobStatus.QUEUED,
            and_(
                Job.status == JobStatus.RUNNING,
                Job.heartbeat_at < stale_before,
                Job.attempts < max_attempts,
            ),
        ),
    )


async def claim_job(
    session: AsyncSession,
    job_id: str,
    *,
    worker: str,
    stale_before: datetime,
    max_attempts: int,
) -> bool:
    """Take the job's lease: a queued job, or a running one whose heartbeat went stale
    (unless it has used up ``max_attempts``: the reaper then fails it).

    A running job with a fresh heartbeat belongs to a live worker; a redelivered message
    for it must not start a second run. A job with a cancel request is never claimed.
    """
    now = utcnow()
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, claimable(stale_before=stale_before, max_attempts=max_attempts))
        .values(
            status=JobStatus.RUNNING,
            worker=worker,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=now,
            finished_at=None,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    return _count(result) == 1


async def take_over_job(
    session: AsyncSession,
    job_id: str,
    *,
    worker: str,
    previous: str,
    attempts: int | None = None,
) -> bool:
    """Take the lease from ``previous``, a holder known to be dead (see ``core.cancel``)
    or a run known to have ended (``core.runner.ReleasedLease``). ``attempts`` fences the
    take-over: it fails if anybody claimed the job since."""
    now = utcnow()
    fence = [Job.attempts == attempts] if attempts is not None else []
    result = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.worker == previous,
            Job.cancel_requested_at.is_(None),
            *fence,
        )
        .values(
            worker=worker,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=now,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    return _count(result) == 1


async def finish_owned_job(
    session: AsyncSession,
    job_id: str,
    *,
    worker: str,
    status: str,
    result: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> bool:
    """Save a run's outcome if ``worker`` still holds the lease (False: someone took it)."""
    done = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(status=status, result=result, usage=usage, error=error, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return await _finished(session, job_id, _count(done) == 1)


async def cancel_queued_job(session: AsyncSession, job_id: str) -> bool:
    """Cancel a job that has not started; it then never runs."""
    now = utcnow()
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.CANCELLED,
            cancel_requested_at=func.coalesce(Job.cancel_requested_at, now),
            finished_at=now,
            error=CANCELLED_ERROR,
        )
        .execution_options(synchronize_session=False)
    )
    return await _finished(session, job_id, _count(result) == 1)


async def request_cancel(session: AsyncSession, job_id: str) -> bool:
    """Flag an unfinished job for cancellation (kept if already flagged). False if final."""
    result = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        )
        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, utcnow()))
        .execution_options(synchronize_session=False)
    )
    return _count(result) == 1


async def heartbeat(session: AsyncSession, job_ids: Collection[str], *, worker: str) -> set[str]:
    """Stamp the heartbeat of those jobs ``worker`` still runs; returns their ids."""
    if not job_ids:
        return set()
    rows = await session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(heartbeat_at=utcnow())
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return {row[0] for row in rows}


def heartbeat_sync(engine: Engine, job_ids: Collection[str], *, worker: str) -> set[str]:
    """``heartbeat`` on a synchronous engine, for a thread the event loop cannot starve."""
    if not job_ids:
        return set()
    with engine.begin() as connection:
        rows = connection.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.worker == worker, Job.status == JobStatus.RUNNING)
            .values(heartbeat_at=utcnow())
            .returning(Job.id)
        )
        return {row[0] for row in rows}


async def cancel_requested(session: AsyncSession, job_ids: Collection[str]) -> set[str]:
    """Which of ``job_ids`` someone asked to cancel."""
    if not job_ids:
        return set()
    rows = await session.execute(
        select(Job.id).where(Job.id.in_(list(job_ids)), Job.cancel_requested_at.is_not(None))
    )
    return {row[0] for row in rows}


# -- the reaper -------------------------------------------------------------------------


async def stale_running_jobs(
    session: AsyncSession, *, stale_before: datetime, limit: int
) -> Sequence[Job]:
    """Running jobs held by a worker that stopped heartbeating.

    Jobs without a worker (``ponder solve`` runs them in-process, with no heartbeat) are
    not the reaper's: ``ponder resume`` is how a person finishes those.
    """
    rows = await session.execute(
        select(Job)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.worker.is_not(None),
            Job.heartbeat_at < stale_before,
        )
        .order_by(Job.heartbeat_at)
        .limit(limit)
    )
    return rows.scalars().all()


async def requeue_stale_job(
    session: AsyncSession, job_id: str, *, worker: str | None, stale_before: datetime
) -> bool:
    """Put an orphaned running job back to ``queued`` (if nobody re-claimed it meanwhile)."""
    result = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.worker == worker,
            Job.heartbeat_at < stale_before,
        )
        .values(status=JobStatus.QUEUED, enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _count(result) == 1


async def end_stale_job(
    session: AsyncSession,
    job_id: str,
    *,
    worker: str | None,
    stale_before: datetime | None,
    status: str,
    error: dict[str, Any],
) -> bool:
    """Finish an orphaned running job without running it again (cancelled, or given up).

    ``stale_before`` None: the holder is known dead, whatever its last heartbeat.
    """
    conditions = [Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker == worker]
    if stale_before is not None:
        conditions.append(Job.heartbeat_at < stale_before)
    result = await session.execute(
        update(Job)
        .where(*conditions)
        .values(status=status, error=error, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return await _finished(session, job_id, _count(result) == 1)


async def overdue_queued_jobs(
    session: AsyncSession, *, enqueued_before: datetime, limit: int
) -> Sequence[Job]:
    """Queued jobs whose last enqueue (or creation) is older than ``enqueued_before``.

    Either a backlog, or a message that never reached the broker (a submitter that
    died between commit and enqueue, a broker that lost its data); the reaper cannot
    tell which cheaply, and publishes again: the lease makes the spare message a no-op.
    """
    rows = await session.execute(
        select(Job)
        .where(
            Job.status == JobStatus.QUEUED,
            or_(
                and_(Job.enqueued_at.is_(None), Job.created_at < enqueued_before),
                Job.enqueued_at < enqueued_before,
            ),
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return rows.scalars().all()


async def mark_requeued(session: AsyncSession, job_id: str, *, enqueued_before: datetime) -> bool:
    """Stamp ``enqueued_at`` on a still-overdue queued job; True if this caller should publish."""
    result = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.QUEUED,
            or_(
                and_(Job.enqueued_at.is_(None), Job.created_at < enqueued_before),
                Job.enqueued_at < enqueued_before,
            ),
        )
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _count(result) == 1


async def cancel_flagged_queued_jobs(session: AsyncSession, *, limit: int) -> list[str]:
    """Queued jobs with a cancel request that were never finalised (a canceller died
    between flagging and cancelling): cancel them now."""
    rows = await session.execute(
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED, Job.cancel_requested_at.is_not(None))
        .limit(limit)
    )
    done = []
    for (job_id,) in rows.all():
        if await cancel_queued_job(session, job_id):
            done.append(job_id)
    return done


async def _finished(session: AsyncSession, job_id: str, done: bool) -> bool:
    """``done``; when the job was made final, its live streams learn it on commit."""
    if done:
        await live.notify_session(session, [job_id])
    return done
