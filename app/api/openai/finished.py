"""The finished job a chat completion answers from: what its run here saved, or its row.

When the interactive lane (``app.api.interactive``) ran the job in this process and the
run saved its outcome, the answer needs nothing more from the database: the run's
``core.runner.RunOutcome`` holds what it wrote to the row (status, result, usage,
error) and the submitted job the rest (id, conversation, creation time). That spares
the request the two reads after every run (its status, then the row).

Every other end is read from the row, which stays the source of truth: the lane was
full and a worker ran the job; a retry found a job started earlier; the run skipped the
job (another process holds it, or it had finished), lost its lease (the row holds the
new holder's outcome), crashed, or was cancelled with the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from app.api.executor import JobRun
from core.db.models import Job, JobStatus


class Finished(Protocol):
    """What the OpenAI face reads of a finished job: a ``Job`` row, or a ``RanHere``."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def result(self) -> dict[str, Any] | None: ...
    @property
    def usage(self) -> dict[str, Any] | None: ...
    @property
    def error(self) -> dict[str, Any] | None: ...
    @property
    def conversation(self) -> dict[str, Any] | None: ...
    @property
    def created_at(self) -> datetime: ...


@dataclass(frozen=True)
class RanHere:
    """A job as its run in this process saved it."""

    id: str
    status: str
    result: dict[str, Any] | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    conversation: dict[str, Any] | None
    created_at: datetime


def ran_here(job: Job, run: JobRun) -> RanHere | None:
    """The outcome ``run`` saved for ``job``, if the run has ended and saved one; None
    when only the row can tell (see the module doc)."""
    if not run.done() or run.cancelled() or run.exception() is not None:
        return None
    outcome = run.result()
    if (
        outcome is None
        or outcome.job_id != job.id
        or outcome.status not in JobStatus.FINAL
        or "skipped" in outcome.extra
        or outcome.extra.get("lease_lost")
    ):
        return None
    return RanHere(
        id=job.id,
        status=outcome.status,
        result=outcome.result,
        usage=outcome.usage,
        error=outcome.error,
        conversation=job.conversation,
        created_at=job.created_at,
    )
