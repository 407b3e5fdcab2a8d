"""Live events pushed, not polled: a trace commit wakes the streams that wait on its job.

The database stays the source of truth. A transaction that writes a job's trace rows
(``TraceWriter``: spans, events and the journal rows they ride with; the runner's finish
with the rest of the trace) or makes a job final (``core.db.repo``, ``control``) also
calls :func:`notify`: on PostgreSQL ``pg_notify('ponder_events', <job id>)``, which the
server delivers only when that transaction commits, never if it rolls back, so it costs
a statement, not a commit. Each API process keeps ONE :class:`LiveEvents`: a dedicated
connection that runs ``LISTEN`` on the channel (reconnecting after a failure) and sets the
wake-up events of the streams subscribed to the job. A woken stream reads the spans
table by seq as before, so order, gap holding and ``Last-Event-ID`` are unchanged; it
still polls slowly as a safety net, so a lost notification delays, never stalls.
Every replica listens, so any replica can serve any job's stream.

Elsewhere (SQLite: ``ponder serve`` and tests) :func:`notify` does nothing and
``pushing`` stays False: the streams poll as they always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from types import TracebackType

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

log = logging.getLogger(__name__)

CHANNEL = "ponder_events"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :job_id)")


def notify(conn: Connection, job_ids: Iterable[str]) -> None:
    """Inside the transaction that writes these jobs' trace rows: wake their streams on
    commit. A no-op except on PostgreSQL."""
    if conn.dialect.name == "postgresql":
        for job_id in sorted(set(job_ids)):
            conn.execute(_NOTIFY, {"job_id": job_id})


async def notify_session(session: AsyncSession, job_ids: Iterable[str]) -> None:
    """:func:`notify` in a session's transaction (a job made final: its streams end)."""
    if session.get_bind().dialect.name == "postgresql":
        conn = await session.connection()
        for job_id in sorted(set(job_ids)):
            await conn.execute(_NOTIFY, {"job_id": job_id})


class LiveEvents:
    """One process's listener: job id -> the wake-up events of the streams reading it.

    Example:
        >>> async with LiveEvents.for_engine(engine) as live:
        ...     with live.subscribe(job_id) as woken:
        ...         woken.clear()  # then read the database, then:
        ...         await asyncio.wait_for(woken.wait(), timeout=0.5)
    """

    def __init__(self, url: str | None, *, retry_s: float = 1.0) -> None:
        """``url``: a libpq URL to listen on; None listens nowhere (never ``pushing``)."""
        self._url = url
        self._retry_s = retry_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[object] | None = None
        self.connections = 0
        """How many times the listener has connected (a test watches it reconnect)."""

    @classmethod
    def for_engine(cls, engine: AsyncEngine | None, *, retry_s: float = 1.0) -> LiveEvents:
        """A listener on the engine's database; one that listens nowhere but on PostgreSQL."""
        if engine is None or engine.dialect.name != "postgresql":
            return cls(None)
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(url, retry_s=retry_s)

    @property
    def pushing(self) -> bool:
        """True while LISTEN is active: a commit will wake its streams."""
        return self._conn is not None

    @property
    def backend_pid(self) -> int | None:
        return self._conn.info.backend_pid if self._conn is not None else None

    async def __aenter__(self) -> LiveEvents:
        if self._url is not None:
            self._task = asyncio.create_task(self._run(self._url), name="live-events")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever a transaction writing this job's trace commits (and
        whenever the listener connects or drops, when notifications may have been lost).
        Clear it *before* reading the database, so a commit during the read still wakes."""
        woken = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(woken)
        try:
            yield woken
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for woken in self._waiters.get(job_id, ()):
            woken.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for woken in waiters:
                woken.set()

    async def _run(self, url: str) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._conn = conn
                    self.connections += 1
                    self._wake_all()  # commits while nobody listened sent nothing here
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except psycopg.Error as exc:
                log.warning("live events: listener lost (%s); reconnecting", exc)
            finally:
                if self._conn is not None:
                    self._conn = None
                    self._wake_all()  # back to polling until the listener returns
            await asyncio.sleep(self._retry_s)
