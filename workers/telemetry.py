"""The parent of a job's trace, carried through Celery (``core.telemetry``).

The trace id needs no carrying (it is the job id); the span the job's run hangs under
does. ``before_task_publish``, in the process that enqueues (the API), puts the
``traceparent`` of the request that created the job into the message's headers;
``task_prerun``, in the worker, hands it to the export before the run starts. Celery
keeps headers across redeliveries, so a job run again after a worker died still hangs
under its request; a job the reaper re-enqueues gets no header, and its run becomes a
second root of the same trace.
"""

from __future__ import annotations

from typing import Any

from celery.signals import before_task_publish, task_prerun

from core import telemetry
from workers.celery_app import TASK_RUN_JOB

HEADER = "traceparent"


def _job_id(args: Any, kwargs: Any) -> str | None:
    if isinstance(kwargs, dict) and kwargs.get("job_id"):
        return str(kwargs["job_id"])
    if isinstance(args, list | tuple) and args:
        return str(args[0])
    return None


def _on_publish(
    sender: str | None = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    export = telemetry.active()
    if export is None or sender != TASK_RUN_JOB or headers is None:
        return
    # Protocol 2: the body is (args, kwargs, embed).
    args, kwargs = (
        (body[0], body[1]) if isinstance(body, list | tuple) and len(body) >= 2 else ((), {})
    )
    job_id = _job_id(args, kwargs)
    parent = export.parent_of(job_id) if job_id else None
    if parent is not None:
        headers[HEADER] = telemetry.format_traceparent(parent)


def _on_prerun(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    export = telemetry.active()
    if export is None or getattr(task, "name", None) != TASK_RUN_JOB:
        return
    job_id = _job_id(args, kwargs)
    parent = telemetry.parse_traceparent(getattr(task.request, HEADER, None))
    if job_id and parent is not None:
        export.remember_parent(job_id, parent)


def install() -> None:
    """Connect both hooks (idempotent: Celery keeps one connection per receiver)."""
    before_task_publish.connect(_on_publish, weak=False, dispatch_uid="ponder-otel-publish")
    task_prerun.connect(_on_prerun, weak=False, dispatch_uid="ponder-otel-prerun")
