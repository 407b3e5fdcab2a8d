"""A job's events as a live Server-Sent Events stream, read from the database.

The spans table is the source of truth, so the stream reads it by ``seq`` — and any API
replica can serve any job's stream, wherever the job runs. On PostgreSQL a commit that
writes the job's trace wakes the stream at once (``core.live``: ``NOTIFY`` inside the
writing transaction, one ``LISTEN`` connection per API process), and the stream polls only
as a safety net, every ``poll_max_s``. Without a listener (SQLite) it polls every
``poll_min_s`` while events flow, backing off to ``poll_max_s`` while the job is quiet.

Order and resumption. Seqs are assigned when a span opens, but a model call's row is
written only when the call ends, so with concurrent calls seq 5 can be visible before
seq 4. The stream therefore emits spans strictly in seq order and holds back everything
after a gap until the gap fills (the gap is a call still in flight). Each span message
carries ``id: <seq>``, and a client that reconnects with ``Last-Event-ID: N`` gets
exactly the spans after N — none twice, none skipped.

Container spans (job, strategy, span groups) are written when they open and updated
when they close: they are sent open, in seq order, and sent again, closed, when they
end. The re-send repeats the id of the last span sent, so it never moves the resume
point; after a reconnect, closes of containers at or before ``Last-Event-ID`` are sent
again (they are states, so a repeat is harmless). The last message is ``job_finished``
with the job's status, result and usage; then the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import repo
from core.db.models import JobStatus, Span
from core.errors import InvalidInput
from core.events import Envelope, JobFinishedEvent, JobRestartedEvent, event_from_span, is_container
from core.live import LiveEvents
from core.trace import now

RETRY_MS = 1000
KEEPALIVE_S = 15.0
"""A comment line after this long without a message keeps proxies from closing the stream."""
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


MAX_EVENT_ID = 2**63 - 1
"""Event ids are the spans' 64-bit ``seq``; a larger one cannot be compared in SQL."""


class BadLastEventId(InvalidInput):
    status = 400


def parse_last_event_id(value: str | None) -> int:
    """The seq to resume after. Called before the stream starts, so a bad header is a
    400 with a JSON body, not a stream that dies after its 200."""
    if value is None:
        return 0
    try:
        seq = int(value.strip())
    except ValueError:
        return 0  # an id from elsewhere: start from the beginning rather than fail
    if not 0 <= seq <= MAX_EVENT_ID:
        raise BadLastEventId(
            f"Last-Event-ID must be an event id this stream sent (0 to {MAX_EVENT_ID})",
            field="Last-Event-ID",
        )
    return seq


def _message(event: Envelope, event_type: str, event_id: int) -> bytes:
    return format_sse_event(
        data_str=event.model_dump_json(), event=event_type, id=str(event_id), retry=RETRY_MS
    )


@dataclass
class _Cursor:
    seq: int
    attempts: int | None = None
    open_containers: dict[str, int] = field(default_factory=dict)


async def job_events(
    sessions: async_sessionmaker[AsyncSession],
    job_id: str,
    *,
    after: int = 0,
    poll_min_s: float = 0.05,
    poll_max_s: float = 0.5,
    live: LiveEvents | None = None,
) -> AsyncIterator[bytes]:
    """Past events after ``after``, then the live tail until the job is final: the
    bytes of an SSE stream. ``live``: the process's listener, to be woken by commits."""
    subscription = live.subscribe(job_id) if live is not None else contextlib.nullcontext()
    with subscription as woken:
        cursor = _Cursor(seq=after)
        delay = poll_min_s
        first = True
        quiet_since = time.monotonic()
        while True:
            sent = 0
            if woken is not None:
                woken.clear()  # before the read: a commit during it wakes the next wait
            async with sessions() as session:
                # Status first, spans second: the runner writes the last spans before it
                # marks the job final, so spans read after a final status are complete.
                progress = await repo.job_progress(session, job_id)
                if progress is None:
                    return  # deleted under us
                status, attempts = progress
                final = status in JobStatus.FINAL
                # attempts 0 -> 1 is the first start, not a restart: the status and the
                # spans are read in separate statements (SQLite gives each its own
                # snapshot), so spans of attempt 1 can be seen while attempts still reads 0.
                if cursor.attempts and attempts != cursor.attempts and cursor.seq:
                    # A worker re-ran the job from the top: its spans were rebuilt.
                    restarted = JobRestartedEvent(
                        job_id=job_id, seq=cursor.seq, ts=now(), attempt=attempts
                    )
                    yield _message(restarted, restarted.type, cursor.seq)
                    cursor = _Cursor(seq=0)
                cursor.attempts = attempts
                rows = list(await repo.list_spans_after(session, job_id, cursor.seq))
                if first and after:
                    # Resuming: containers at or before the resume point may have closed
                    # since; their current state is re-sent once below.
                    resumed = await repo.list_spans_after(session, job_id, 0, limit=after)
                    cursor.open_containers = {
                        s.id: s.seq for s in resumed if is_container(s) and s.seq <= after
                    }
                closed = list(await repo.list_closed_spans(session, list(cursor.open_containers)))
            first = False
            for span in rows:
                if span.seq != cursor.seq + 1 and not final:
                    break  # a call still in flight: wait for its row
                cursor.seq = span.seq
                sent += 1
                yield _span_message(span, cursor.seq)
                if is_container(span):
                    if span.end_ts is None:
                        cursor.open_containers[span.id] = span.seq
                    else:
                        cursor.open_containers.pop(span.id, None)
                        closed = [c for c in closed if c.id != span.id]
            for span in closed:
                if span.id in cursor.open_containers:
                    del cursor.open_containers[span.id]
                    sent += 1
                    yield _span_message(span, cursor.seq)
            if final and (len(rows) < 500 or not rows):
                async with sessions() as session:
                    job = await repo.get_job(session, job_id)
                if job is None:
                    return
                done = JobFinishedEvent(
                    job_id=job_id,
                    seq=cursor.seq,
                    ts=job.finished_at or now(),
                    status=job.status,
                    result=job.result,
                    usage=job.usage,
                    error=job.error,
                )
                yield _message(done, done.type, cursor.seq)
                return
            if sent:
                delay, quiet_since = poll_min_s, time.monotonic()
            else:
                delay = min(delay * 1.5, poll_max_s)
                if time.monotonic() - quiet_since >= KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield KEEPALIVE_COMMENT
            if live is not None and woken is not None:
                # Pushed, the poll is only a safety net for a lost notification. Not
                # (yet), the listener still wakes the stream when it (re)connects.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), poll_max_s if live.pushing else delay)
            else:
                await asyncio.sleep(delay)


def _span_message(span: Span, event_id: int) -> bytes:
    event = event_from_span(span)
    return _message(event, event.type, event_id)
