"""Circuit breakers every process can see: workers record each opening and closing of
their breakers (``breaker_events``), and the API reads them back for ``/v1/pools`` and
``/metrics``.

Each process keeps its own breakers (a breaker must react within one request, not one
database round trip); what is shared is the verdict. A worker's report of ``open``
stands for the pool's ``breaker_reset_s``, after which that worker lets a probe request
through (``half_open``) and reports again only if the probe fails (``open``) or a
request succeeds (``closed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db.models import BreakerEvent, utcnow
from core.pools.client import PoolClient
from core.pools.endpoint import BreakerListener, BreakerState

log = logging.getLogger(__name__)


class BreakerReporter:
    """Writes this process's breaker transitions, each in its own short transaction, off
    the model call's path (a task per transition; a failed write is logged, not raised)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], worker: str) -> None:
        self._sessions = sessions
        self._worker = worker
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(self, pools: Mapping[str, PoolClient]) -> None:
        for role, client in pools.items():
            client.add_breaker_listener(self._listener(role))

    def _listener(self, role: str) -> BreakerListener:
        def report(url: str, state: BreakerState, reason: str) -> None:
            task = asyncio.get_running_loop().create_task(self._write(role, url, state, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return report

    async def _write(self, role: str, url: str, state: str, reason: str) -> None:
        try:
            async with self._sessions() as session, session.begin():
                session.add(
                    BreakerEvent(
                        role=role, url=url, worker=self._worker, state=state, reason=reason[:500]
                    )
                )
        except Exception as exc:  # the database may be what is failing
            log.warning("breaker event not recorded (%s: %s)", type(exc).__name__, exc)

    async def flush(self) -> None:
        """Wait for the writes in flight (shutdown, tests)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


@dataclass(frozen=True)
class Report:
    worker: str
    state: BreakerState
    reason: str
    at: datetime


async def open_reports(
    session: AsyncSession, reset_s: Mapping[str, float], now: datetime | None = None
) -> dict[tuple[str, str], list[Report]]:
    """(role, url) -> the workers whose breaker is open or half-open there now: each
    worker's latest event, if it says ``open`` (half-open once ``reset_s[role]`` passed).
    Only events younger than the longest reset window plus a minute are read."""
    now = now or utcnow()
    horizon = now - timedelta(seconds=max(reset_s.values(), default=0.0) + 60)
    latest = (
        select(
            BreakerEvent.role,
            BreakerEvent.url,
            BreakerEvent.worker,
            func.max(BreakerEvent.at).label("at"),
        )
        .where(BreakerEvent.at >= horizon)
        .group_by(BreakerEvent.role, BreakerEvent.url, BreakerEvent.worker)
        .subquery()
    )
    rows = await session.execute(
        select(BreakerEvent).join(
            latest,
            (BreakerEvent.role == latest.c.role)
            & (BreakerEvent.url == latest.c.url)
            & (BreakerEvent.worker == latest.c.worker)
            & (BreakerEvent.at == latest.c.at),
        )
    )
    out: dict[tuple[str, str], list[Report]] = {}
    for event in rows.scalars():
        if event.state != "open" or event.role not in reset_s:
            continue
        expired = (now - event.at).total_seconds() >= reset_s[event.role]
        state: BreakerState = "half_open" if expired else "open"
        report = Report(event.worker, state, event.reason, event.at)
        out.setdefault((event.role, event.url), []).append(report)
    return out


async def transition_counts(session: AsyncSession) -> Iterable[tuple[str, str, int]]:
    """(role, state, count) over every recorded event: ``/metrics``'s counter."""
    rows = await session.execute(
        select(BreakerEvent.role, BreakerEvent.state, func.count()).group_by(
            BreakerEvent.role, BreakerEvent.state
        )
    )
    return [(role, state, int(n)) for role, state, n in rows.all()]
