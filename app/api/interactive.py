"""The OpenAI face's interactive lane: run a chat completion's job here, not via a broker.

An OpenAI client holds its connection open until the answer comes, so the hop through the
broker and a worker, and the polling for the job's result, are pure latency. With the
lane, the API process that took the request runs the job itself, exactly as a worker
does: the row is committed first (``app.api.services.jobs.submit``), then
``core.runner.Runner.run(job_id, monitor=...)`` takes the job's lease under this
process's worker identity, its ``JobMonitor`` stamps heartbeats, and the request awaits
the run's task directly; the task's result is the run's ``RunOutcome``, which answers
the request without reading the row again (``app.api.openai.finished``).

Why the job stays durable: the row and its journal are in the database as for any job.
If this process dies mid-run, its heartbeats stop, a worker's reaper finds the stale
lease and re-enqueues the job, and the new run replays the journal's recorded calls.

    LaneExecutor    wraps the configured executor; a submit made inside ``claim()``
                    runs here if a slot is free (``PONDER_API_INTERACTIVE__MAX_JOBS``),
                    else goes to the wrapped executor as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from app.api.executor import ExecutorContext, InProcessExecutor, JobExecutor, JobRun, Readiness
from core.trace import SpanListener


@dataclass
class Claim:
    """Filled by ``LaneExecutor.submit`` when the lane took the job; ``listeners`` (set
    by the caller before submitting) hear the run, e.g. the answer's streamed text."""

    task: JobRun | None = None
    listeners: list[SpanListener] = field(default_factory=list)


_claim: ContextVar[Claim | None] = ContextVar("ponder_interactive_claim", default=None)


class LaneExecutor:
    """The wrapped executor, plus a bounded in-process lane for claimed submits.

    Example:
        >>> executor = LaneExecutor(CeleryExecutor(), max_jobs=8)
        >>> with executor.claim() as claim:
        ...     job, _ = await jobs.submit(state, tenant, request, None)
        >>> if claim.task is not None:
        ...     outcome = await claim.task  # the run ended (None: it crashed)
    """

    def __init__(self, inner: JobExecutor, *, max_jobs: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_jobs = max_jobs
        self._lane = InProcessExecutor()

    @contextmanager
    def claim(self) -> Iterator[Claim]:
        claim = Claim()
        token = _claim.set(claim)
        try:
            yield claim
        finally:
            _claim.reset(token)

    async def start(self, context: ExecutorContext) -> None:
        await self.inner.start(context)
        await self._lane.start(context)

    async def submit(self, job_id: str, *, priority: str, max_seconds: float | None = None) -> None:
        claim = _claim.get()
        if claim is not None and claim.task is None and self._lane.running < self.max_jobs:
            claim.task = self._lane.launch(job_id, claim.listeners)
            return
        await self.inner.submit(job_id, priority=priority, max_seconds=max_seconds)

    @property
    def running(self) -> int:
        return self._lane.running

    async def ready(self) -> Readiness:
        return await self.inner.ready()

    async def close(self) -> None:
        # Closing cancels the lane's runs; their leases go stale and workers resume them.
        await self._lane.close()
        await self.inner.close()
