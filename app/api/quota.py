"""Jobs queued or running per tenant (``TenantLimits.max_jobs_in_flight``): the quota
checked by ``POST /v1/jobs`` in the transaction that writes the job."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.errors import TooManyRequests
from app.api.settings import ApiSettings
from core.db.models import Job, JobStatus

_IN_FLIGHT = (
    select(func.count())
    .select_from(Job)
    .where(
        Job.tenant == bindparam("tenant"),
        Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
    )
)


@dataclass
class _Estimate:
    counted_at: float
    count: int
    added: int = 0


class InFlight:
    """Jobs queued or running per tenant, counted in SQL only near the limit.

    A count is trusted for ``fresh_s`` plus this process's own submissions since; while
    that estimate stays under ``margin`` of the limit no query is made (the count was
    one more round trip on every submission). Near the limit every submission counts
    exactly; only other API processes' submissions within ``fresh_s`` can slip past,
    and only while the estimate is under the margin.
    """

    def __init__(self, fresh_s: float = 1.0, margin: float = 0.9) -> None:
        self.fresh_s = fresh_s
        self.margin = margin
        self._estimates: dict[str, _Estimate] = {}

    async def check(self, api: ApiSettings, session: AsyncSession, tenant: str) -> None:
        cap = api.limits_for(tenant).max_jobs_in_flight
        if cap is None:
            return
        now = time.monotonic()
        estimate = self._estimates.get(tenant)
        if (
            estimate is not None
            and now - estimate.counted_at < self.fresh_s
            and estimate.count + estimate.added < cap * self.margin
        ):
            estimate.added += 1
            return
        in_flight = int(await session.scalar(_IN_FLIGHT, {"tenant": tenant}) or 0)
        if in_flight >= cap:
            self._estimates.pop(tenant, None)
            raise TooManyRequests(
                f"this tenant has {in_flight} jobs queued or running, its limit; retry when "
                "some have finished",
                code="too_many_jobs",
                retry_after_s=1,
                limit=cap,
            )
        self._estimates[tenant] = _Estimate(now, in_flight, added=1)
