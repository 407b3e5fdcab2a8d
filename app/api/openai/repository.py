"""The OpenAI face's own queries: finding the job a retried request started."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.db.models import Job


async def newest_with_key_prefix(
    session: AsyncSession, tenant: str, prefix: str, since: datetime
) -> Job | None:
    """The tenant's newest job created after ``since`` whose idempotency key starts with
    ``prefix`` (served by the tenant's (tenant, idempotency_key) and (tenant,
    created_at) indexes)."""
    query = (
        select(Job)
        .where(
            Job.tenant == tenant,
            Job.created_at >= since,
            Job.idempotency_key.startswith(prefix, autoescape=True),
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalars().first()


async def newest_live_replay(session: AsyncSession, tenant: str, parent_id: str) -> Job | None:
    """The newest live replay of ``parent_id``: what a retry made of a failed job."""
    query = (
        select(Job)
        .where(
            Job.tenant == tenant,
            Job.parent_job_id == parent_id,
            Job.replay_mode == "live",
            Job.fork_point.is_(None),
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalars().first()
