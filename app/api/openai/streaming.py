"""What a streamed chat completion sends while its job runs, and what closing it does.

Progress (the ``ponder`` extension of chat.completion.chunk). While a job runs, each
``sample`` and ``vote`` event of its trace (``strategies``' ``ctx.trace``) becomes one
chunk whose delta is empty content and whose ``ponder.progress`` is::

    {"samples": 5, "leader": "72", "leader_votes": 4, "share": 0.8, "votes": {"72": 4, "71": 1}}

``samples`` counts the samples drawn so far (all of the job's, a composed strategy's
children included), ``leader`` is the answer with most votes so far (None before any
sample gave an answer), ``share`` its votes over ``samples``; a ``vote`` event replaces
the tally with the vote the strategy counted. Events are read from the trace by ``seq``,
as ``GET /v1/jobs/{id}/events`` reads them (``app.api.sse``): pushed on PostgreSQL
(``core.live``), polled elsewhere. Strategies that neither sample nor vote (``direct``)
send no progress chunks; keep-alive comments then hold the connection open.

Closing the stream cancels the job: a stream the client stops reading is the user's
stop (the openai SDK never retries a stream it has begun to read), so the job is
cancelled through the path ``POST /v1/jobs/{id}/cancel`` takes (``services.jobs.cancel``:
the row is flagged; the process running the job, a worker or this API's interactive
lane, stops it within its monitor's poll and saves it ``cancelled`` with its trace).
A request that is not streamed keeps its job when the connection drops: that is how a
client timeout looks, and the retry that follows attaches to the job
(``app.api.openai.retries``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from app.api.deps import ApiState
from app.api.executor import JobRun
from app.api.openai.finished import Finished, ran_here
from app.api.services import jobs
from app.api.sse import KEEPALIVE_S
from core.db import repo
from core.db.models import Job, JobStatus, Span

log = logging.getLogger(__name__)

PROGRESS_EVENTS = frozenset({"sample", "vote"})

_cancels: set[asyncio.Task[None]] = set()
"""Cancels started as streams closed: held until done (a task nobody holds may vanish)."""


@dataclass
class Tally:
    """The vote so far, as progress chunks report it."""

    samples: int = 0
    votes: Counter[str] = field(default_factory=Counter)
    first_seen: dict[str, int] = field(default_factory=dict)

    def add(self, span: Span) -> bool:
        """Count one trace event; True when it is progress worth a chunk."""
        if span.kind != "event" or span.name not in PROGRESS_EVENTS:
            return False
        attrs = span.attributes or {}
        if span.name == "sample":
            answer = attrs.get("answer")
            if answer is not None:
                self._vote(str(answer), 1)
            self.samples += 1
            return True
        votes = attrs.get("votes")
        if isinstance(votes, dict):
            self.votes.clear()
            for answer, count in votes.items():
                if isinstance(count, int | float):
                    self._vote(str(answer), int(count))
        samples = attrs.get("samples")
        if isinstance(samples, int):
            self.samples = max(self.samples, samples)
        return True

    def _vote(self, answer: str, count: int) -> None:
        self.first_seen.setdefault(answer, self.samples)
        self.votes[answer] += count

    def progress(self) -> dict[str, Any]:
        order = sorted(self.votes.items(), key=lambda kv: (-kv[1], self.first_seen[kv[0]]))
        leader, top = order[0] if order else (None, 0)
        return {
            "samples": self.samples,
            "leader": leader,
            "leader_votes": top,
            "share": round(top / self.samples, 4) if self.samples else 0.0,
            "votes": dict(order),
        }


@dataclass
class Follow:
    """Reads one job's progress until it is final or time is up; ``job`` is then the
    finished job (None: still running at the deadline): what ``run``, the job's run in
    this process, saved, or else the row (``app.api.openai.finished``)."""

    state: ApiState
    submitted: Job
    deadline: float
    run: JobRun | None = None
    job: Finished | None = None
    tally: Tally = field(default_factory=Tally)

    @property
    def job_id(self) -> str:
        return self.submitted.id

    async def events(self) -> AsyncIterator[dict[str, Any] | None]:
        """Progress dicts as events arrive; None when a keep-alive is due."""
        api = self.state.api
        live = self.state.live
        subscription = live.subscribe(self.job_id) if live is not None else None
        with subscription if subscription is not None else contextlib.nullcontext() as woken:
            seq, attempts = 0, None
            delay = api.sse_poll_min_s
            quiet_since = time.monotonic()
            while True:
                if woken is not None:
                    woken.clear()
                async with self.state.sessions() as session:
                    progress = await repo.job_progress(session, self.job_id)
                    if progress is None:
                        return
                    status, tried = progress
                    final = status in JobStatus.FINAL
                    if attempts is not None and tried != attempts:
                        seq, self.tally = 0, Tally()  # re-run from the top: spans rebuilt
                    attempts = tried
                    spans = list(await repo.list_spans_after(session, self.job_id, seq))
                    if final:
                        ended = ran_here(self.submitted, self.run) if self.run else None
                        self.job = ended or await repo.get_job(session, self.job_id)
                moved = False
                for span in spans:
                    if span.seq != seq + 1 and not final:
                        break  # a call still in flight holds the events after it
                    seq = span.seq
                    if self.tally.add(span):
                        moved = True
                        yield self.tally.progress()
                if final:
                    return
                now = time.monotonic()
                if now >= self.deadline:
                    return
                if moved:
                    delay, quiet_since = api.sse_poll_min_s, now
                else:
                    delay = min(delay * 1.5, api.sse_poll_max_s)
                    if now - quiet_since >= KEEPALIVE_S:
                        quiet_since = now
                        yield None
                await self._pause(woken, min(delay, max(self.deadline - now, 0.0)))

    async def _pause(self, woken: asyncio.Event | None, timeout: float) -> None:
        """Until a trace commit (``core.live``), the end of this process's run of the
        job, or ``timeout``."""
        waiters: list[asyncio.Future[Any]] = []
        if woken is not None and self.state.live is not None and self.state.live.pushing:
            waiters.append(asyncio.ensure_future(woken.wait()))
        if self.run is not None and not self.run.done():
            waiters.append(self.run)
        if not waiters:
            await asyncio.sleep(timeout)
            return
        try:
            # asyncio.wait never cancels the run it waits for.
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                if waiter is not self.run:
                    waiter.cancel()


def cancel_when_closed(state: ApiState, tenant: str, job_id: str) -> None:
    """Cancel the job of a stream the client closed. Runs as a task of its own: the
    stream's task is being cancelled, and anything it awaited now would be too."""

    async def cancel() -> None:
        try:
            await jobs.cancel(state, tenant, job_id)
            log.info("job %s cancelled: its chat stream was closed", job_id)
        except Exception:
            log.exception("job %s: cancelling after its chat stream closed failed", job_id)

    task = asyncio.create_task(cancel(), name=f"cancel:{job_id}")
    _cancels.add(task)
    task.add_done_callback(_cancels.discard)
